"""tinyconv.warmup: the calls it records are the ones a real step makes, with the same types,
and its children fill an empty cache so that the first step compiles nothing."""

import json
import os
import subprocess
import sys
import warnings

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
    # as training steps, the losses summed into a LossLog
    _, grads = model.loss_and_grads(x, np.arange(8) % 10, CONFIG["label_smoothing"],
                                    nn.LossLog(model, 1))
    opt.step(grads)
    ema.update()
    model.eval().loss(x, np.arange(8) % 10)
    names = {name for name, _ in recorded}
    assert {"conv2d_backward", "batchnorm_forward", "batchnorm_eval_forward", "adam_update",
            "ema_update", "softmax_xent_backward"} <= names
    for name, types in recorded:  # each compiled (or loaded) under exactly these types
        assert types in getattr(backend, name).signatures, (name, types)


def test_recording_reads_no_value_of_the_kernels_it_does_not_run(monkeypatch):
    # the recorded calls run nothing, so their buffers keep whatever memory held: here +inf
    # and -inf in turn, whose mean NumPy warns about ("invalid value"), as a warm-up once did
    # in CI from real garbage
    infinities = np.array([np.inf, -np.inf], np.float32).view(np.uint8)
    real_empty, spoiled = np.empty, []

    def garbage(shape, dtype=float):
        raw = real_empty(shape, dtype)
        if raw.dtype == np.uint8:
            raw[:] = np.resize(infinities, raw.size)
            spoiled.append(raw.size)
        return raw

    monkeypatch.setattr(np, "empty", garbage)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warmup.kernel_calls(archs.ARCHS["lenet5"], CONFIG)
    assert spoiled  # the model's buffers came from np.empty (uint8 blocks), spoiled


CHILD = """
import json, sys, numpy as np
from tinyconv import nn, warmup
from tinyconv.kernels import KERNELS, get_backend
from tinyconv.optim import make_optimizer
spec = {"input_shape": [1, 8, 8], "layers": [{"kind": "Flatten"},
        {"kind": "Linear", "in_features": 64, "out_features": 4}, {"kind": "ReLU"},
        {"kind": "Linear", "in_features": 4, "out_features": 3}]}
config = {"optimizer": "sgd", "lr": 0.1, "batch_size": 5, "resize": "pad", "flip": False,
          "translate": 2, "normalize": "standard"}
model = nn.Sequential.from_spec(spec)
compiled = warmup.compile_kernels(model, config, processes=int(sys.argv[1]))
backend = get_backend("cpu")
def misses():  # compilations so far, of every kernel (a load from the cache is a hit)
    return sum(sum(getattr(backend, name).stats.cache_misses.values()) for name in KERNELS)
before = misses()
_, grads = model.loss_and_grads(np.zeros((5, 1, 8, 8), np.float32), np.arange(5) % 3)
make_optimizer(model, {"weight_decay": 0.0, **config}).step(grads)
model.eval().loss(np.zeros((5, 1, 8, 8), np.float32), np.arange(5) % 3)
print(json.dumps({"compiled": compiled, "calls": len(warmup.kernel_calls(spec, config)),
                  "first step compiled": misses() - before}))
"""


def test_children_fill_an_empty_cache_and_the_first_step_compiles_nothing(tmp_path):
    temp = tmp_path / "temp"
    temp.mkdir()
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"), "TMPDIR": str(temp)}

    def run(processes):
        done = subprocess.run([sys.executable, "-c", CHILD, str(processes)], env=env,
                              capture_output=True, text=True, timeout=600, check=True)
        return json.loads(done.stdout)

    cold = run(2)
    assert cold["compiled"] == cold["calls"] > 4, cold  # an empty cache lacks every one
    assert cold["first step compiled"] == 0, cold  # the recorded types are the real ones
    warm = run(2)
    assert warm["compiled"] == 0 and warm["first step compiled"] == 0, warm
    assert not list(temp.iterdir())  # the claims' directory is gone
