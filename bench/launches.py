"""CUDA kernel launches per training step, counted without a GPU: python bench/launches.py.

The CUDA backend runs under Numba's simulator (NUMBA_ENABLE_CUDASIM=1, set here before numba
is imported) with every launch replaced by a counter, so no kernel runs: what is counted is
what a step asks of the GPU, per kernel, for each named architecture at batch 128 (a
training step: forward, loss, backward, the Adam update; and an inference pass), and the
host-side microseconds of the Python that issues them (the launchers, their views and the
layer code). The simulator's arrays are NumPy arrays, so those microseconds leave out the
driver's own cost per launch (a few microseconds each on a real GPU: multiply the launches).
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

from tinyconv import archs  # noqa: E402
from tinyconv.optim import Adam  # noqa: E402


def counting(launches):
    """A FakeCUDAKernel.__getitem__ that counts the launch by kernel name and runs nothing."""
    def configure(kernel, _configuration):
        def launch(*args):
            launches[kernel.fn.__name__] += 1
        return launch
    return configure


def measure(arch, batch, steps):
    """(launches per training step, per inference pass, host µs per training step)."""
    model = archs.build(arch, seed=0, device="cuda").train()
    opt = Adam(model, lr=1e-3)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *model.input_shape)).astype(np.float32)
    y = rng.integers(0, model.output_shape[0], batch)
    train, infer = collections.Counter(), collections.Counter()
    simulated.FakeCUDAKernel.__getitem__ = counting(train)
    opt.step(model.loss_and_grads(x, y)[1])  # the first step also carves the buffers
    train.clear()
    began = time.perf_counter()
    for _ in range(steps):
        opt.step(model.loss_and_grads(x, y)[1])
    host_us = (time.perf_counter() - began) / steps * 1e6
    simulated.FakeCUDAKernel.__getitem__ = counting(infer)
    model.eval().loss(x, y)
    return ({k: v // steps for k, v in train.items()}, dict(infer), host_us)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--detail", action="store_true", help="each kernel's launches too")
    args = parser.parse_args(argv)
    print(f"| network | launches per training step | per inference pass | host µs per step "
          f"(simulator arrays, batch {args.batch_size}) |\n| --- | --- | --- | --- |")
    for arch in archs.ARCHS:
        train, infer, host_us = measure(arch, args.batch_size, args.steps)
        print(f"| {arch} | {sum(train.values())} | {sum(infer.values())} | {host_us:.0f} |")
        if args.detail:
            print("|  | " + ", ".join(f"{k} {v}" for k, v in sorted(train.items())) + " | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
