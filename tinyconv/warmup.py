"""A training run's kernels compiled on every core at once, before its first step.

Numba compiles one kernel at a time, on one core: an empty cache (a first run, a new
machine) costs a training run seconds before its first step, one core busy and the others
idle. compile_kernels finds the kernels and signatures a run's step and test pass will call
(by running them once on a throwaway copy of the network, with a backend that records the
calls instead of making them), asks Numba's cache which of them it lacks, and compiles those
in this process and in child processes (`python -m tinyconv.warmup`), each taking the next
kernel nobody has claimed; Numba's cache hands the children's to this process at the first
step. With every kernel cached it costs one probe of the cache per kernel. Where anything
goes wrong in a child, the first step compiles what is still missing, as it would without
this.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from tinyconv.kernels import KERNELS, get_backend

MAX_PROCESSES = 4  # beyond this the largest kernel, not their number, bounds the wall time
# the settings of a run that decide which kernels it calls, with which argument types
SETTINGS = ("optimizer", "lr", "weight_decay", "no_decay_norm_bias", "momentum", "nesterov",
            "batch_size", "label_smoothing", "ema")
# ... and those that decide which data kernels its batches call (data.augmentation's)
DATA_SETTINGS = ("resize", "flip", "translate", "normalize", "rotate", "scale", "shear",
                 "elastic")


def kernel_calls(spec, config):
    """The (kernel name, argument types) pairs, in first-call order, of one training step,
    its optimizer update, its moving average (config["ema"]) and an eval-mode loss, for a
    network `spec` trained as `config` says (train.py's keys: optimizer, lr, weight_decay,
    batch_size, label_smoothing, ema, ...)."""
    import numba

    from tinyconv import nn
    from tinyconv.optim import EMA, make_optimizer

    model = nn.Sequential.from_spec(spec)  # a throwaway: the recorded calls run nothing
    calls = {}

    def recorder(name):
        def record(*args):
            calls.setdefault((name, tuple(numba.typeof(arg) for arg in args)), None)
        return record

    model.kernels = SimpleNamespace(**{**vars(model.kernels),
                                       **{name: recorder(name) for name in KERNELS}})
    opt = make_optimizer(model, {"weight_decay": 0.0, **config})
    ema = EMA(model, config["ema"]) if config.get("ema") else None
    batch = config["batch_size"]
    x = np.zeros((batch, *model.input_shape), np.float32)
    y = np.zeros(batch, np.int64)
    _, grads = model.loss_and_grads(x, y, config.get("label_smoothing", 0.0),
                                    nn.LossLog(model, 1))
    opt.step(grads)
    if ema is not None:
        ema.update()
    model.eval().loss(x, y, reduction="none")  # no mean of losses that nothing computed
    return list(calls)


def _missing(calls):
    """The indices of the calls whose kernel Numba's cache lacks for those types: looked up
    in each kernel's cache index, without loading the code (numba.core.caching's own steps,
    private to Numba: a test holds them to a real step's)."""
    backend = get_backend("cpu")
    missing = []
    for index, (name, types) in enumerate(calls):
        kernel = getattr(backend, name)
        cache = kernel._cache
        key = cache._index_key(types, kernel.targetctx.codegen())
        if key not in cache._cache_file._load_index():
            missing.append(index)
    return missing


def _prepare_a_batch(config):
    """Two blank images through the run's batch preparation: its data kernels compiled."""
    from tinyconv.data import augmentation, iterate_batches

    translate, distortions = augmentation(config)
    for _ in iterate_batches(np.zeros((2, 28, 28), np.uint8), np.zeros(2, np.int64), 2,
                             rng=np.random.default_rng(0), resize=config["resize"],
                             flip=config["flip"], translate=translate,
                             normalize=config["normalize"], distortions=distortions):
        pass


def _compile_unclaimed(calls, missing, claims, config):
    """Compile the missing calls of each kernel no other process has claimed, claiming it
    first: an exclusively created file in the directory claims, one per kernel, so that the
    processes share the work as they get free, whatever each kernel costs, and no two write
    one kernel's cache index at once (Numba rewrites it unlocked); last, if config says how
    batches are made, the data kernels."""
    backend = get_backend("cpu")
    by_kernel = {}
    for index in missing:
        by_kernel.setdefault(calls[index][0], []).append(calls[index][1])
    data = all(key in config for key in DATA_SETTINGS[:4])
    for job in [*by_kernel, *(["data"] if data else [])]:
        try:
            os.close(os.open(os.path.join(claims, job), os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            continue
        if job == "data":
            _prepare_a_batch(config)
        else:
            for types in by_kernel[job]:
                getattr(backend, job).compile(types)


def compile_kernels(model, config, processes=None):
    """Compile the kernels a CPU training run of `model` as `config` says will call, that
    Numba's cache lacks, on `processes` cores at once (default: those this process may use,
    at most MAX_PROCESSES), and then the data kernels its batches call; returns how many
    (kernel, signature) pairs were missing (0: all cached, or the model is not on the CPU).
    A child that fails leaves its share to the first step; an exception here (an interrupt)
    stops the children."""
    if model.device != "cpu":
        return 0
    spec = model.spec()
    config = {key: config[key] for key in (*SETTINGS, *DATA_SETTINGS) if key in config}
    calls = kernel_calls(spec, config)
    missing = _missing(calls)
    if not missing:  # a warm cache: the data kernels are taken to be cached too
        return 0
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    kernels = len({calls[index][0] for index in missing})
    workers = max(1, min(processes or available, MAX_PROCESSES, kernels))
    claims = tempfile.mkdtemp(prefix="tinyconv-warmup-")
    request = json.dumps({"spec": spec, "config": config, "missing": missing,
                          "claims": claims})
    # the children import this tinyconv, wherever it was imported from (a checkout on
    # sys.path, as the benches put it there)
    package_parent = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [package_parent, *filter(None, [os.environ.get("PYTHONPATH")])])}
    children = []
    finished = False
    try:
        for _ in range(workers - 1):
            child = subprocess.Popen([sys.executable, "-m", "tinyconv.warmup"], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, text=True)
            children.append(child)
            try:
                child.stdin.write(request)
                child.stdin.close()
            except BrokenPipeError:  # it died at once: its share falls to the others
                pass
        _compile_unclaimed(calls, missing, claims, config)
        finished = True
    finally:
        for child in children:
            if not finished:
                child.terminate()
            child.wait()
        shutil.rmtree(claims, ignore_errors=True)
    return len(missing)


def main():
    """A child: `python -m tinyconv.warmup`, compile_kernels' request on stdin."""
    request = json.loads(sys.stdin.read())
    calls = kernel_calls(request["spec"], request["config"])
    _compile_unclaimed(calls, request["missing"], request["claims"], request["config"])


if __name__ == "__main__":
    main()
