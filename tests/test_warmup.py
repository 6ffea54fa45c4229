"""tinyconv.warmup: the calls it records are the ones a real step makes, with the same types,
and its children fill an empty cache so that the first step compiles nothing."""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from tinyconv import archs, nn, warmup
from tinyconv.kernels import get_backend
from tinyconv.optim import EMA, make_optimizer

CONFIG = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.01, "batch_size": 8,
          "label_smoothing": 0.1, "ema": 0.99}


def test_the_recorded_calls_are_those_a_step_and_a_test_pass_make():
    spec = archs.ARCHS["lenet5-bn"]
    recorded = warmup.kernel_calls(spec, CONFIG)
    backend = get_backend("cpu")
    model = nn.Sequential.from_spec(spec)
    opt, ema = make_optimizer(model, CONFIG), EMA(model, CONFIG["ema"])
    x = np.random.default_rng(0).standard_normal((8, 1, 32, 32)).astype(np.float32)
    _, grads = model.loss_and_grads(x, np.arange(8) % 10, CONFIG["label_smoothing"])
    opt.step(grads)
    ema.update()
    model.eval().loss(x, np.arange(8) % 10)
    names = {name for name, _ in recorded}
    assert {"conv2d_backward", "batchnorm_forward", "batchnorm_eval_forward", "adam_update",
            "ema_update", "softmax_xent_backward"} <= names
    for name, types in recorded:  # each compiled (or loaded) under exactly these types
        assert types in getattr(backend, name).signatures, (name, types)
    assert model.steps == 1  # the recording ran on a throwaway copy


CHILD = """
import json, sys, numpy as np
from tinyconv import nn, warmup
spec = {"input_shape": [6], "layers": [{"kind": "Linear", "in_features": 6, "out_features": 4},
        {"kind": "ReLU"}, {"kind": "Linear", "in_features": 4, "out_features": 3}]}
config = {"optimizer": "sgd", "lr": 0.1, "batch_size": 5}
model = nn.Sequential.from_spec(spec)
compiled = warmup.compile_kernels(model, config, processes=int(sys.argv[1]))
calls = warmup.kernel_calls(spec, config)
print(json.dumps({"compiled": compiled, "calls": len(calls),
                  "missing": warmup._missing(calls)}))
"""


def test_children_fill_an_empty_cache(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}

    def run(processes):
        done = subprocess.run([sys.executable, "-c", CHILD, str(processes)], env=env,
                              capture_output=True, text=True, timeout=600, check=True)
        return json.loads(done.stdout)

    cold = run(2)
    assert cold["compiled"] == cold["calls"] > 4 and cold["missing"] == []
    assert run(2)["compiled"] == 0  # warm: nothing to do
    leftovers = [name for name in os.listdir(tempfile.gettempdir())
                 if name.startswith("tinyconv-warmup-")]
    assert not leftovers, leftovers
