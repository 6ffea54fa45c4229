"""CUDA kernel launches per training step, counted without a GPU: python bench/launches.py.

The CUDA backend runs under Numba's simulator (NUMBA_ENABLE_CUDASIM=1, set here before numba
is imported) with every launch replaced by a counter, so no kernel runs: what is counted is
what a step asks of the GPU, per kernel, for each named architecture at batch 128 (a
training step as train.py runs it: forward, loss, backward, the Adam update, the loss kept on
the device; and an inference pass), with the device-array views built, the copies between
host and device and the waits for the GPU (a copy back is one) per step, and the host-side
microseconds of the Python that issues them (the launchers, their views and the layer code).
The simulator's arrays are NumPy arrays, so those microseconds leave out the driver's own cost
per launch (a few microseconds each on a real GPU: multiply the launches) and numba-cuda's
per view (its device arrays are built in Python: count the views).
"""

import argparse
import collections
import os
import sys
import time
from pathlib import Path

os.environ["NUMBA_ENABLE_CUDASIM"] = "1"  # before numba is imported

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tinyconv from anywhere

import numpy as np  # noqa: E402
from numba.cuda.simulator import kernel as simulated  # noqa: E402
from numba.cuda.simulator.cudadrv import devicearray  # noqa: E402

from tinyconv import archs, nn  # noqa: E402
from tinyconv.optim import Adam  # noqa: E402

# the simulator's device array methods that build a view, copy in, copy back (and wait)
VIEWS = ("reshape", "ravel", "view", "__getitem__")
COPIES = {"copy_to_device": "copies in", "copy_to_host": "copies back"}


def counting(launches):
    """A FakeCUDAKernel.__getitem__ that counts the launch by kernel name and runs nothing."""
    def configure(kernel, _configuration):
        def launch(*args):
            launches[kernel.fn.__name__] += 1
        return launch
    return configure


def counted(method, events, name):
    """A FakeCUDAArray method that also counts its calls under `name` in events."""
    def call(self, *args, **kwargs):
        events[name] += 1
        return method(self, *args, **kwargs)
    return call


def measure(arch, batch, steps):
    """(launches per training step, per inference pass, {views, copies in, copies back} per
    training step, host µs per training step)."""
    model = archs.build(arch, seed=0, device="cuda").train()
    opt = Adam(model, lr=1e-3)
    log = nn.LossLog(model, steps + 1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *model.input_shape)).astype(np.float32)
    y = rng.integers(0, model.output_shape[0], batch)
    train, infer, events = collections.Counter(), collections.Counter(), collections.Counter()
    simulated.FakeCUDAKernel.__getitem__ = counting(train)
    opt.step(model.loss_and_grads(x, y, into=log)[1])  # the first step also carves buffers
    train.clear()
    array = devicearray.FakeCUDAArray
    originals = {name: getattr(array, name) for name in (*VIEWS, *COPIES)}
    for name, method in originals.items():
        setattr(array, name, counted(method, events, COPIES.get(name, "views")))
    began = time.perf_counter()
    for _ in range(steps):
        opt.step(model.loss_and_grads(x, y, into=log)[1])
    host_us = (time.perf_counter() - began) / steps * 1e6
    for name, method in originals.items():
        setattr(array, name, method)
    simulated.FakeCUDAKernel.__getitem__ = counting(infer)
    model.eval().loss(x, y)
    return ({k: v // steps for k, v in train.items()}, dict(infer),
            {k: v / steps for k, v in events.items()}, host_us)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--detail", action="store_true", help="each kernel's launches too")
    args = parser.parse_args(argv)
    print(f"| network | launches per training step | per inference pass | views built, copies "
          f"in, copies back per step | host µs per step (simulator arrays, batch "
          f"{args.batch_size}) |\n| --- | --- | --- | --- | --- |")
    for arch in archs.ARCHS:
        train, infer, events, host_us = measure(arch, args.batch_size, args.steps)
        moved = ", ".join(f"{events.get(name, 0):g}" for name in ("views", *COPIES.values()))
        print(f"| {arch} | {sum(train.values())} | {sum(infer.values())} | {moved} | "
              f"{host_us:.0f} |")
        if args.detail:
            print("|  | " + ", ".join(f"{k} {v}" for k, v in sorted(train.items())) + " | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
