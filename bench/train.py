"""LeNet-5 (or another network, --arch) end to end, tinyconv against PyTorch eager:
python bench/train.py [--help].

A training step (forward, loss, backward, Adam update) at each --batch-size, its GFLOP/s and
their share of the machine's measured float32 multiply-add peak (a register-only loop, run
here on tinyconv's threads), inference (forward only), each checked against torch before it
is timed, and a whole epoch of the plain recipe, the two libraries taking turns; then the
time from process start to the first finished training step (cold and warm Numba cache) and
the peak resident memory of training.

Each library runs in a process of its own, as in a program that uses only it: tinyconv (Numba)
and torch both run on OpenMP's libgomp, and in one process they share one runtime, which
measurably changes their speed (torch's training step 3x slower when Numba loads the system's
libgomp first; tinyconv's 10% faster on torch's). So tinyconv and torch are imported inside the
functions that use them, never at the top: the processes import this file and must load only
the library they measure.

--device cuda runs both on one NVIDIA GPU: tinyconv's numba.cuda kernels against torch eager on
CUDA, the batch copied to the device inside each timed step on both sides, and each step
ending only when the device has finished it.
"""

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import NamedTuple

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # bench.common and tinyconv, from any directory

from bench.common import (  # noqa: E402
    SETTLE,
    Row,
    Worker,
    alternate,
    answer,
    busy_cores,
    busy_warning,
    format_header,
    format_row,
    format_table_head,
    make_header,
    positive,
    timing_rows,
    train_step_flops,
    write_json,
)

ARCH = "lenet5"  # the network, a name in tinyconv.archs.ARCHS or a spec file
DEVICE = "cpu"
THREADS = 2  # the same for both libraries
# images per training step: the default recipe's first (it also sizes the epoch, start-up and
# memory cases), then issue 16's other two
BATCH_SIZES = (128, 32, 512)
INFER_BATCH_SIZE = 1000
ROUNDS = 20  # timed rounds per case; in each, each library runs STEPS calls in a row
STEPS = 10
WARMUP = 3  # untimed calls per library before the rounds
TRAIN_BATCHES = 30  # real MNIST batches each worker prepares up front and cycles: not timed
EPOCH_ROUNDS = 2  # timed epochs per library (one each per round)
INFER_BATCHES = 5
CHECK_STEPS = 5  # training steps from equal weights whose losses must agree...
CHECK_RTOL = 1e-4  # ...to this relative difference (tests/test_training.py's), as must logits
MEMORY_STEPS = 50  # training steps of the peak-memory children
SEED = 0
LR = 1e-3
# issue 16's memory target (peak resident memory under 250 MB) is for this training command,
# of the bench's --arch
TRAIN_LIMIT, TEST_LIMIT = 12800, 1000
TRAIN_COMMAND = ("-m", "tinyconv.train", "--epochs", "1", "--limit-train", str(TRAIN_LIMIT),
                 "--limit-test", str(TEST_LIMIT), "--quiet")
# what a child process runs: python -c CHILD_CODE LIBRARY BATCHES_NPZ THREADS STEPS DEVICE ARCH
CHILD_CODE = "import sys; from bench.train import child; child(*sys.argv[1:])"
# python -c PEAK_RSS_LAUNCHER COMMAND...: runs COMMAND, then prints its peak resident memory
# (KiB). Linux carries a process's peak across fork and exec, so a child started straight from
# this bench (hundreds of MB) reports at least the bench's own peak, even from
# getrusage(RUSAGE_SELF); started from this small launcher, at least the launcher's (~13 MiB).
PEAK_RSS_LAUNCHER = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
                     "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
                     "sys.exit(code)")


class Side(NamedTuple):
    """One library's network: its training step and forward on NumPy batches."""

    train_step: Callable  # (x, y) -> the batch's mean loss, after one Adam update
    forward: Callable  # x -> logits as a NumPy array, no gradients
    get_threads: Callable  # () -> the thread count the library will use


def fma_peak_gflops(threads, rounds=7, repeats=100_000):
    """The float32 multiply-add peak of `threads` Numba threads (already set), GFLOP/s, the
    best of `rounds`: each thread runs chains of 32 dependent multiply-adds on four vectors of
    lanes at a time, which stay in registers (one load and one store per 32), enough
    independent chains to keep every FMA unit busy through its latency (one chain cannot;
    eight no longer vectorise)."""
    import numba
    from numba import njit, prange

    lanes = 256  # each thread's: four chains of 64 lanes

    @njit(fastmath=True, inline="always")
    def eight(v, a, b):
        v = v * a + b
        v = v * a + b
        v = v * a + b
        v = v * a + b
        v = v * a + b
        v = v * a + b
        v = v * a + b
        return v * a + b

    @njit(fastmath=True, parallel=True)
    def chains(values, a, b, repeats):
        # values (threads, lanes): a thread's row, a quarter of it per chain
        for t in prange(values.shape[0]):
            row = values[t]
            q = row.size // 4
            for _ in range(repeats):
                for j in range(q):
                    v0, v1, v2, v3 = row[j], row[j + q], row[j + 2 * q], row[j + 3 * q]
                    for _ in range(4):
                        v0, v1 = eight(v0, a, b), eight(v1, a, b)
                        v2, v3 = eight(v2, a, b), eight(v3, a, b)
                    row[j], row[j + q], row[j + 2 * q], row[j + 3 * q] = v0, v1, v2, v3

    if numba.get_num_threads() != threads:
        raise RuntimeError(f"the peak needs {threads} Numba threads, found "
                           f"{numba.get_num_threads()}")
    values = np.ones((threads, lanes), np.float32)
    a, b = np.float32(0.999), np.float32(0.001)  # a fixed point at 1: no overflow
    chains(values, a, b, 1)  # compiles
    best = math.inf
    for _ in range(rounds):
        start = time.perf_counter()
        chains(values, a, b, repeats)
        best = min(best, time.perf_counter() - start)
    return 2 * 32 * lanes * threads * repeats / best / 1e9


def tinyconv_side(threads, device=DEVICE, arch=ARCH):
    """tinyconv's network `arch` (a name or spec file, seeded init) with Adam on a device, on
    `threads` Numba threads."""
    import numba

    import tinyconv
    from tinyconv import archs, warmup

    numba.set_num_threads(threads)  # starts Numba's thread pool, on an OpenMP runtime
    model = archs.build(archs.find_spec(arch), seed=SEED, device=device)
    # as python -m tinyconv.train does: an empty cache's kernels compiled on every core
    warmup.compile_kernels(model, {"optimizer": "adam", "lr": LR, "batch_size": BATCH_SIZES[0]})
    opt = tinyconv.Adam(model, lr=LR)

    def train_step(x, y):
        loss, grads = model.loss_and_grads(x, y)
        opt.step(grads)
        model.kernels.synchronize()  # a GPU's update is only queued until this returns
        return loss

    def forward(x):  # inference: eval mode (batch norm's running statistics)
        out = model.eval().forward(x)
        model.train()
        return out

    return Side(train_step, forward, numba.get_num_threads)


def torch_side(threads, like=None, device=DEVICE, arch=ARCH):
    """torch's twin of the network `arch` with Adam on a device and `threads` threads: a copy
    of tinyconv model `like`'s weights, or torch's own seeded init."""
    import torch

    from tinyconv import archs, interop

    torch.set_num_threads(threads)
    torch.manual_seed(SEED)
    module = interop.torch_module(archs.find_spec(arch))  # LeNet-5: the report's, layer for layer
    if like is not None:
        module.load_state_dict({k: torch.from_numpy(v) for k, v in like.state_dict().items()})
    module = module.to(device)
    opt = torch.optim.Adam(module.parameters(), lr=LR)

    def train_step(x, y):
        opt.zero_grad()
        # from_numpy shares the memory and .to("cpu") copies nothing: no copy timed on the CPU
        logits = module(torch.from_numpy(x).to(device))
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y).to(device))
        loss.backward()
        opt.step()
        return loss.item()  # on a GPU, a copy queued after opt.step's kernels: waits for them

    def forward(x):  # inference: eval mode (batch norm's running statistics)
        module.eval()
        with torch.no_grad():
            out = module(torch.from_numpy(x).to(device)).cpu().numpy()
        module.train()
        return out

    return Side(train_step, forward, torch.get_num_threads)


SIDES = {"tinyconv": tinyconv_side, "torch": torch_side}


def run_epoch(side, batch_size, data, epoch):
    """One epoch of python -m tinyconv.train --recipe plain on a library's side: every
    training image once, shuffled and augmented as the recipe says (seeded by the epoch), a
    training step per batch, then the test pass at the same batch size. The batches are made
    inside the clock, as in training, by the same NumPy code for both libraries."""
    from tinyconv import iterate_batches
    from tinyconv.train import RECIPES

    recipe = RECIPES["plain"]
    augment = {name: recipe[name] for name in ("resize", "flip", "translate", "normalize")}
    (train_images, train_labels), (test_images, test_labels) = data
    for x, y in iterate_batches(train_images, train_labels, batch_size, shuffle=True,
                                rng=np.random.default_rng([SEED, epoch]), **augment):
        side.train_step(x, y)
    for x, _ in iterate_batches(test_images, test_labels, batch_size, shuffle=False,
                                resize=augment["resize"], normalize=augment["normalize"]):
        side.forward(x)


def mnist_batches(split, batch_size, count):
    """`count` full batches of real MNIST (x, y), drawn once with a fixed seed."""
    from tinyconv import iterate_batches, load_mnist

    images, labels = load_mnist(split)
    batches = iterate_batches(images, labels, batch_size, rng=np.random.default_rng(SEED),
                              drop_last=True)
    return list(itertools.islice(batches, count))


# ---- one process per library, called in turns


def serve(library, threads, batch_sizes, infer_batch_size, device, arch, connection):
    """A worker process: build the library's side, then answer calls until sent None. The
    epoch runs at the first of batch_sizes; tinyconv's worker also measures the FMA peak.

    A call (name, *args) answers ("ok", result) or ("error", traceback). Every worker draws
    the same batches (mnist_batches is seeded) and starts from tinyconv's seeded weights
    (torch's through torch_copy), so the two compute the same thing.
    """
    if library == "torch":
        from tinyconv import archs  # the weights to copy; Numba's thread pool stays unstarted

        like = archs.build(archs.find_spec(arch), seed=SEED)
        side = torch_side(threads, like=like, device=device, arch=arch)
    else:
        side = tinyconv_side(threads, device, arch)
    from tinyconv import load_mnist  # only the data: neither torch nor Numba's threads

    train = {size: mnist_batches("train", size, TRAIN_BATCHES) for size in batch_sizes}
    infer = mnist_batches("test", infer_batch_size, INFER_BATCHES)
    data = (load_mnist("train"), load_mnist("test"))  # whole, for the epoch case
    calls = {"threads": side.get_threads,
             "train_step": lambda size, at: side.train_step(*train[size][at % len(train[size])]),
             "forward": lambda index: side.forward(infer[index % len(infer)][0]),
             "epoch": lambda index: run_epoch(side, batch_sizes[0], data, index)}
    if library == "tinyconv":
        calls["fma_peak"] = lambda: fma_peak_gflops(threads)
    answer(connection, calls)


def cycling(worker, name, *args):
    """A no-argument callable: worker's `name` (after args) on batch 0, then 1, 2, ...
    (wrapping round)."""
    indices = itertools.count()
    return lambda: worker(name, *args, next(indices))


# ---- correctness, before any timing


def check_threads(ours, theirs, threads):
    """Both libraries' thread counts, as they report them; exits unless both are `threads`."""
    found = {"tinyconv (numba)": ours("threads"), "torch": theirs("threads")}
    if set(found.values()) != {threads}:
        sys.exit(f"error: asked both libraries for {threads} threads, found {found}")
    return found


def check_inference(ours, theirs):
    """The logits' largest difference relative to the largest logit; exits over CHECK_RTOL."""
    ours_logits, theirs_logits = ours("forward", 0), theirs("forward", 0)
    error = np.abs(ours_logits - theirs_logits).max() / np.abs(theirs_logits).max()
    if not error <= CHECK_RTOL:
        sys.exit(f"error: tinyconv's logits differ from torch's by {error:.3g} of the largest "
                 f"(allowed {CHECK_RTOL:g}) at batch {len(ours_logits)}; not timing a model "
                 "that computes something else")
    return error


def check_training(ours, theirs, batch_size):
    """The losses' largest relative difference over CHECK_STEPS steps at batch_size; exits
    over CHECK_RTOL."""
    largest = 0.0
    for step in range(CHECK_STEPS):
        ours_loss, theirs_loss = (worker("train_step", batch_size, step)
                                  for worker in (ours, theirs))
        error = abs(ours_loss - theirs_loss) / abs(theirs_loss)
        if not error <= CHECK_RTOL:
            sys.exit(f"error: training step {step + 1} from equal weights: tinyconv's loss "
                     f"{ours_loss:.7g}, torch's {theirs_loss:.7g}, relative difference "
                     f"{error:.3g} (allowed {CHECK_RTOL:g}); not timing a model that "
                     "computes something else")
        largest = max(largest, error)
    return largest


# ---- child processes: time to the first step, peak memory


def child(library, batches_path, threads, steps, device, arch):
    """A child process's work: train on the saved batches; print when the first step ended."""
    saved = np.load(batches_path)
    xs, ys = saved["x"], saved["y"]
    side = SIDES[library](int(threads), device=device, arch=arch)
    for step in range(int(steps)):
        side.train_step(xs[step % len(xs)], ys[step % len(ys)])
        if step == 0:
            print(time.time(), flush=True)


def run_child(argv, env):
    """Run a command to its end and return its stdout; exit with its stderr if it fails."""
    done = subprocess.run(argv, cwd=REPO_ROOT, env={**os.environ, **env}, capture_output=True,
                          text=True)
    if done.returncode:
        sys.exit(f"error: child process {argv} exited with {done.returncode}:\n"
                 f"{done.stderr[-3000:]}")
    return done.stdout


def first_step_seconds(library, threads, batches_path, device, arch, env):
    """Seconds from a child's start to the end of its first training step."""
    start = time.time()
    stdout = run_child([sys.executable, "-c", CHILD_CODE, library, str(batches_path),
                        str(threads), "1", device, arch], env)
    return float(stdout.split()[-1]) - start


def peak_mib(argv, env):
    """A command's peak resident memory in MiB, as its small launcher process sees it."""
    stdout = run_child([sys.executable, "-c", PEAK_RSS_LAUNCHER, *argv], env)
    return int(stdout.split()[-1]) / 1024  # ru_maxrss is in KiB on Linux


def subprocess_rows(args):
    """Yield the start-up (cold and warm Numba cache) and peak-memory rows, from children."""
    shape = f"N={args.batch_sizes[0]}"
    batches = mnist_batches("train", args.batch_sizes[0], TRAIN_BATCHES)
    with tempfile.TemporaryDirectory(prefix="tinyconv-bench-") as tmp:
        tmp = Path(tmp)
        batches_path = tmp / "batches.npz"
        np.savez(batches_path, x=np.stack([x for x, _ in batches]),
                 y=np.stack([y for _, y in batches]))
        # an empty cache: the first tinyconv child compiles every kernel, later ones load them
        env = {"NUMBA_CACHE_DIR": str(tmp / "numba-cache")}
        for cache in ("cold", "warm"):
            ours, theirs = (first_step_seconds(library, args.threads, batches_path,
                                               args.device, args.arch, env)
                            for library in ("tinyconv", "torch"))
            yield Row(f"start to 1st step, {cache} cache", shape, ours, theirs, "s")
        ours, theirs = (peak_mib([sys.executable, "-c", CHILD_CODE, library, str(batches_path),
                                  str(args.threads), str(MEMORY_STEPS), args.device, args.arch],
                                 env)
                        for library in ("tinyconv", "torch"))
        yield Row(f"peak RSS, {MEMORY_STEPS} train steps", shape, ours, theirs, "MiB")
        command = [sys.executable, *TRAIN_COMMAND, "--threads", str(args.threads),
                   "--device", args.device, "--arch", args.arch, "--run-dir"]
        # a first run compiles the kernels the steps did not use (compiling takes memory of
        # its own); the one measured finds every kernel cached, as every run but a user's first
        run_child([*command, str(tmp / "first-run")], env)
        yield Row("peak RSS, python -m tinyconv.train", f"1 epoch of {TRAIN_LIMIT}, cached",
                  peak_mib([*command, str(tmp / "run")], env), None, "MiB")


# ---- command line


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python bench/train.py",
        description="Time LeNet-5 training and inference in tinyconv and in PyTorch eager on\n"
                    "the same weights, MNIST batches and thread count, after checking that\n"
                    "both compute the same losses and logits; then, in child processes, the\n"
                    "time to the first training step (cold and warm Numba cache) and the peak\n"
                    "memory of training. One row per case; ratio > 1: tinyconv is ahead.\n"
                    "Timings are noisy while other processes run: compare min and median, and\n"
                    "rerun.",
        epilog="Examples:\n"
               "  python bench/train.py                                # every case, ~1.5 min\n"
               "  python bench/train.py --skip-subprocess --rounds 3   # a quick look\n"
               "  python bench/train.py --threads 1 --json one.json    # one thread, saved",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default=ARCH, metavar="NAME|FILE.json",
                        help=f"the network both libraries train: a name of tinyconv.archs.ARCHS "
                             f"or a spec file (default {ARCH}); without Dropout, whose masks "
                             f"torch draws its own way (the check needs equal losses)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=DEVICE,
                        help=f"where both libraries run (default {DEVICE}); cuda: one NVIDIA "
                             "GPU, which needs numba-cuda and a CUDA build of torch")
    parser.add_argument("--threads", type=positive, default=THREADS,
                        help=f"threads for both libraries, numba.set_num_threads and "
                             f"torch.set_num_threads (default {THREADS})")
    parser.add_argument("--batch-size", type=positive, nargs="+", default=BATCH_SIZES,
                        dest="batch_sizes", metavar="N",
                        help="images per training step, each timed (default "
                             f"{' '.join(map(str, BATCH_SIZES))}); the first also sizes the "
                             "epoch, start-up and memory cases")
    parser.add_argument("--infer-batch-size", type=positive, default=INFER_BATCH_SIZE,
                        help=f"images per inference call (default {INFER_BATCH_SIZE})")
    parser.add_argument("--rounds", type=positive, default=ROUNDS,
                        help=f"timed rounds per case; min and median are over rounds "
                             f"(default {ROUNDS})")
    parser.add_argument("--steps", type=positive, default=STEPS,
                        help=f"calls per library per round, timed as one block "
                             f"(default {STEPS})")
    parser.add_argument("--epoch-rounds", type=int, default=EPOCH_ROUNDS, metavar="N",
                        help="timed epochs of the plain recipe per library, alternating "
                             f"(default {EPOCH_ROUNDS}; 0 skips the case)")
    parser.add_argument("--skip-subprocess", action="store_true",
                        help="skip the start-up and memory cases (child processes, about half "
                             "a minute: the first compiles every kernel)")
    parser.add_argument("--json", metavar="PATH",
                        help="also write the header and the rows as JSON to PATH")
    args = parser.parse_args(argv)
    from tinyconv import archs, nn  # the spec only: no kernel, no thread pool

    try:
        spec = archs.find_spec(args.arch)
        network = nn.Sequential.from_spec(spec)
    except ValueError as exc:
        parser.error(f"--arch: {exc}")
    if tuple(network.input_shape) != (1, 32, 32) or network.output_shape != (10,):
        parser.error(f"--arch: the bench trains on 32x32 MNIST digits, so needs an input "
                     f"(1, 32, 32) and 10 classes; found {network.input_shape} -> "
                     f"{network.output_shape}")
    if "Dropout" in json.dumps(spec):
        parser.error("--arch: the network holds a Dropout, whose masks torch draws its own "
                     "way: the check before timing (equal losses from equal weights) cannot pass")
    args.arch_name = spec.get("name") or Path(args.arch).stem
    args.network = network
    if args.epoch_rounds < 0:
        parser.error(f"--epoch-rounds must be at least 0, found {args.epoch_rounds}")
    if args.threads > os.cpu_count():
        parser.error(f"--threads must be at most the {os.cpu_count()} cores, "
                     f"found {args.threads}")
    if max(args.batch_sizes) > 60000 or args.infer_batch_size > 10000:
        parser.error("--batch-size must be at most 60000 (the training images) and "
                     "--infer-batch-size at most 10000 (the test images)")
    return args


def device_name(device):
    """The device both libraries will run on, in words; exits with the reason if either cannot.
    Checked here, before the workers start, for a clear message instead of a worker's crash."""
    if device == "cpu":
        return "cpu"
    from tinyconv.kernels import DeviceUnavailable, require_cuda

    try:
        require_cuda()
    except DeviceUnavailable as exc:
        sys.exit(f"error: {exc}")
    import torch

    if not torch.cuda.is_available():
        sys.exit(f"error: --device cuda: torch {torch.__version__} finds no GPU; the comparison "
                 "needs a CUDA build of torch")
    return f"cuda: {torch.cuda.get_device_name()}, numba-cuda {version('numba-cuda')}"


def main(argv=None):
    args = parse_args(argv)
    device = device_name(args.device)
    busy = busy_cores()  # before this bench adds its own load
    warning = busy_warning(busy)
    if warning:
        print(warning, file=sys.stderr)
    rows = []

    def emit(new_rows):
        for row in new_rows:
            print(format_row(row), flush=True)
            rows.append(row)

    worker_args = (args.threads, tuple(dict.fromkeys(args.batch_sizes)),
                   args.infer_batch_size, args.device, args.arch)
    with (Worker("tinyconv", serve, ("tinyconv", *worker_args)) as ours,
          Worker("torch", serve, ("torch", *worker_args)) as theirs):
        threads = check_threads(ours, theirs, args.threads)
        logits_error = check_inference(ours, theirs)
        loss_error = check_training(ours, theirs, args.batch_sizes[0])
        peak = ours("fma_peak")  # and again after the steps: the better of the two
        header = make_header(
            f"bench/train.py: {args.arch_name} end to end, tinyconv vs torch eager, both on "
            f"{args.device}, each in a process of its own", threads,
            f"per call (a pipe round trip to the library's worker), min and median over "
            f"{args.rounds} rounds of {args.steps} calls per library, alternating, after "
            f"{WARMUP} warm-up calls, each block after a {SETTLE * 1e3:.0f} ms pause and one "
            f"untimed call; samples/s and GFLOP/s at the median (a step's convolutions' and "
            f"linear layers' flops, as torch.utils.flop_counter counts them); the FMA peak the "
            f"best of two register-only runs on tinyconv's threads, before and after the "
            f"steps; epochs: {args.epoch_rounds} rounds of one each, alternating",
            busy)
        header["device"] = device
        header["check"] = (f"from equal weights, logits differ by {logits_error:.1e} of the "
                           f"largest, losses over {CHECK_STEPS} steps by {loss_error:.1e} "
                           f"relative (allowed {CHECK_RTOL:g})")
        print(format_header(header), end="\n\n")
        print(format_table_head())
        steps = {}
        for size in dict.fromkeys(args.batch_sizes):
            steps[size] = alternate([cycling(worker, "train_step", size)
                                     for worker in (ours, theirs)],
                                    args.rounds, args.steps, WARMUP)
            emit(timing_rows("train step", f"{size}x1x32x32", steps[size], size, "samples/s"))
        peak = max(peak, ours("fma_peak"))
        emit([Row("FMA peak, register-only loop", f"{args.threads} threads", peak, None,
                  "GFLOP/s")])
        network = args.network
        for size, timings in steps.items():
            gflop = train_step_flops(network.layers, network.input_shape, size) / 1e9
            ours_rate, theirs_rate = (gflop / timing.median for timing in timings)
            shape = f"{size}x1x32x32"
            emit([Row("train step", shape, ours_rate, theirs_rate, "GFLOP/s"),
                  Row("train step, share of FMA peak", shape, 100 * ours_rate / peak,
                      100 * theirs_rate / peak, "% of peak")])
        timings = alternate([cycling(worker, "forward") for worker in (ours, theirs)],
                            args.rounds, args.steps, WARMUP)
        emit(timing_rows("inference", f"{args.infer_batch_size}x1x32x32", timings,
                         args.infer_batch_size, "samples/s"))
        if args.epoch_rounds:  # seconds long: no untimed call needed before each
            mine, other = alternate([cycling(worker, "epoch") for worker in (ours, theirs)],
                                    args.epoch_rounds, 1, warmup=0, prime=False)
            shape = "60000+10000 test"
            emit([Row("epoch, plain recipe, min", shape, mine.min, other.min, "s"),
                  Row("epoch, plain recipe, median", shape, mine.median, other.median, "s")])
    if not args.skip_subprocess:
        emit(subprocess_rows(args))
    if args.json:
        write_json(args.json, header, rows)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
