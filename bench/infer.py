"""Inference at every batch size, tinyconv against onnxruntime and torch:
python bench/infer.py [--help].

The three libraries run the same network with the same weights (a seeded init, or a
checkpoint's) on the same real MNIST test images: tinyconv's Sequential in eval mode,
onnxruntime on the graph tinyconv exports (CPUExecutionProvider: what a user deploying the
network would pick, and the peer of the main table), and torch eager under inference_mode on
tinyconv's torch twin. Before any timing, each batch size's logits must agree to 1e-4 of the
largest.

Each library runs in a process of its own (as bench/train.py explains, their OpenMP runtimes
disturb each other in one process) and times its own blocks of calls, so that no pipe round
trip (longer than onnxruntime's whole batch-1 call) enters a figure. The three take
turns, block by block, in alternating order.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # bench.common and tinyconv, from any directory

from bench.common import (  # noqa: E402
    SETTLE,
    Row,
    Worker,
    answer,
    busy_cores,
    busy_warning,
    format_header,
    format_row,
    format_table_head,
    make_header,
    positive,
    write_json,
)

ARCH = "lenet5"
THREADS = 2  # the same for every library
BATCH_SIZES = (1, 4, 16, 64, 128, 1000)
ROUNDS = 10  # timed blocks per library and batch size; min and median are over them
BLOCK_IMAGES = 4000  # images per timed block: a block of batch 1 is 4000 calls, of 1000 four
WARMUP = 5  # untimed calls per library and batch size before its first block
BATCHES = 4  # distinct batches of each size, cycled
MAX_BATCH = 10000 // BATCHES
CHECK_RTOL = 1e-4  # the logits' largest difference, relative to the largest logit
SEED = 0
LIBRARIES = ("tinyconv", "onnxruntime", "torch")  # the first is measured, the others peers


# ---- each library's forward, in its own process


def tinyconv_forward(model, threads, batch_last=False):
    """The model's eval-mode forward on Numba's `threads` threads, and its thread count; with
    batch_last, through the batch-last kernels at every batch size (no small-batch kernel)."""
    import numba

    if batch_last:
        model.samples_below = 0
    numba.set_num_threads(threads)
    model.eval()
    return model.forward, numba.get_num_threads()


def onnxruntime_forward(model, threads, batch_last=False):
    """onnxruntime's session on the model's exported graph, `threads` intra-op threads."""
    import onnxruntime

    from tinyconv import interop

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = onnxruntime.InferenceSession(interop.onnx_model(model).SerializeToString(),
                                           options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return (lambda x: session.run(None, {name: x})[0]), threads


def torch_forward(model, threads, batch_last=False):
    """torch's twin of the model with its weights, eval mode, under inference_mode."""
    import torch

    from tinyconv import interop

    torch.set_num_threads(threads)
    module = interop.torch_module(model.spec())
    module.load_state_dict({name: torch.from_numpy(value)
                            for name, value in model.state_dict().items()})
    module.eval()

    def forward(x):
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()

    return forward, torch.get_num_threads()


FORWARDS = {"tinyconv": tinyconv_forward, "onnxruntime": onnxruntime_forward,
            "torch": torch_forward}


def load_network(arch, checkpoint):
    """The network: a checkpoint's (a run directory means its best.npz), or `arch` seeded."""
    from tinyconv import archs, interop

    if checkpoint:
        return interop.load(checkpoint)
    return archs.build(archs.find_spec(arch), seed=SEED)


def test_batches(sizes, count):
    """For each batch size, `count` batches of real MNIST test images, preprocessed as
    training's test pass does (padded to 32x32, standardised), drawn with a fixed seed."""
    from tinyconv import iterate_batches, load_mnist

    images, labels = load_mnist("test")
    batches = {}
    for size in sizes:
        drawn = iterate_batches(images, labels, size, rng=np.random.default_rng([SEED, size]),
                                shuffle=True, drop_last=True)
        batches[size] = [np.ascontiguousarray(x) for x, _ in
                         (next(drawn) for _ in range(count))]
    return batches


def serve(library, threads, arch, checkpoint, sizes, batch_last, connection):
    """A worker process: build the library's forward, then answer requests until sent None.

    ("threads",): the library's thread count. ("logits", size): the logits of the first batch
    of that size. ("block", size, calls): one untimed call, then `calls` calls timed as one
    block; the seconds per call. Each answers ("ok", result) or ("error", traceback).
    """
    forward, found_threads = FORWARDS[library](load_network(arch, checkpoint), threads,
                                               batch_last)
    batches = test_batches(sizes, BATCHES)
    warmed = set()

    def block(size, calls):
        inputs = batches[size]
        if size not in warmed:
            for index in range(WARMUP):
                forward(inputs[index % BATCHES])
            warmed.add(size)
        forward(inputs[-1])  # wakes this library's threads (bench/train.py: SETTLE)
        start = time.perf_counter()
        for index in range(calls):
            forward(inputs[index % BATCHES])
        return (time.perf_counter() - start) / calls

    requests = {"threads": lambda: found_threads,
                "logits": lambda size: forward(batches[size][0]),
                "block": block}
    answer(connection, requests)


# ---- checks, timing, rows


def check_logits(workers, sizes):
    """The largest difference of each peer's logits from tinyconv's, relative to the largest
    logit, over every batch size; exits over CHECK_RTOL."""
    largest = {}
    for size in sizes:
        ours = workers["tinyconv"]("logits", size)
        for library in LIBRARIES[1:]:
            theirs = workers[library]("logits", size)
            error = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
            if not error <= CHECK_RTOL:
                sys.exit(f"error: at batch {size}, tinyconv's logits differ from {library}'s "
                         f"by {error:.3g} of the largest (allowed {CHECK_RTOL:g}); not timing "
                         "libraries that compute different things")
            largest[library] = max(largest.get(library, 0.0), error)
    return largest


def time_size(workers, size, rounds):
    """{library: [seconds per call of each block]} at one batch size, the libraries taking
    turns block by block, their order reversed every other round."""
    calls = max(1, BLOCK_IMAGES // size)
    seconds = {library: [] for library in LIBRARIES}
    for round_index in range(rounds):
        order = LIBRARIES[::-1] if round_index % 2 else LIBRARIES
        for library in order:
            time.sleep(SETTLE)
            seconds[library].append(workers[library]("block", size, calls))
    return seconds


def rows_of(size, seconds, peer):
    """tinyconv against `peer` at one batch size: us per call (min, median), images/s."""
    ours, theirs = np.array(seconds["tinyconv"]), np.array(seconds[peer])
    shape = f"{size}x1x32x32"
    return [Row(f"batch {size}, min", shape, ours.min() * 1e6, theirs.min() * 1e6, "us", peer),
            Row(f"batch {size}, median", shape, np.median(ours) * 1e6,
                np.median(theirs) * 1e6, "us", peer),
            Row(f"batch {size}", shape, size / np.median(ours), size / np.median(theirs),
                "samples/s", peer)]


def batch_sizes(text):
    """argparse type: comma-separated batch sizes, each 1 to MAX_BATCH."""
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, found "
                                         f"{text!r}") from None
    if not all(1 <= size <= MAX_BATCH for size in sizes):
        raise argparse.ArgumentTypeError(f"each batch size must lie in 1..{MAX_BATCH} "
                                         f"({BATCHES} distinct batches of the 10,000 test "
                                         f"images), found {text!r}")
    return sizes


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python bench/infer.py",
        description="Time inference in tinyconv, onnxruntime (the peer: tinyconv's exported\n"
                    "graph) and torch eager at each batch size, on the same weights, MNIST\n"
                    "test images and thread count, after checking that all three compute the\n"
                    "same logits. One table against each peer; ratio > 1: tinyconv is ahead.",
        epilog="Examples:\n"
               "  python bench/infer.py                          # every batch size, ~1 min\n"
               "  python bench/infer.py --batch-sizes 1,16 --rounds 5\n"
               "  python bench/infer.py --checkpoint runs/NAME --json infer.json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default=ARCH, metavar="NAME|FILE.json",
                        help=f"the network: a name of tinyconv.archs.ARCHS or a spec file "
                             f"(default {ARCH}), seeded init")
    parser.add_argument("--checkpoint", metavar="PATH",
                        help="a tinyconv checkpoint or run directory instead of --arch")
    parser.add_argument("--threads", type=positive, default=THREADS,
                        help=f"threads for every library (default {THREADS})")
    parser.add_argument("--batch-sizes", type=batch_sizes, default=BATCH_SIZES, metavar="N,N",
                        help="images per call, comma-separated (default "
                             f"{','.join(map(str, BATCH_SIZES))})")
    parser.add_argument("--rounds", type=positive, default=ROUNDS,
                        help=f"timed blocks per library and batch size (default {ROUNDS})")
    parser.add_argument("--batch-last", action="store_true",
                        help="tinyconv through its batch-last kernels at every batch size, "
                             "without the small-batch kernel (to measure where it pays: "
                             "Sequential.samples_below)")
    parser.add_argument("--json", metavar="PATH",
                        help="also write the header and the rows as JSON to PATH")
    args = parser.parse_args(argv)
    if args.threads > os.cpu_count():
        parser.error(f"--threads must be at most the {os.cpu_count()} cores, "
                     f"found {args.threads}")
    try:
        network = load_network(args.arch, args.checkpoint)
    except (ValueError, OSError) as exc:
        parser.error(f"--{'checkpoint' if args.checkpoint else 'arch'}: {exc}")
    if tuple(network.input_shape) != (1, 32, 32):
        parser.error(f"the bench feeds 32x32 MNIST digits, so needs an input (1, 32, 32); "
                     f"found {network.input_shape}")
    args.network_name = network.name or "network"
    return args


def main(argv=None):
    args = parse_args(argv)
    busy = busy_cores()
    warning = busy_warning(busy)
    if warning:
        print(warning, file=sys.stderr)
    workers = {library: Worker(library, serve,
                               (library, args.threads, args.arch, args.checkpoint,
                                args.batch_sizes, args.batch_last))
               for library in LIBRARIES}
    try:
        threads = {library: worker("threads") for library, worker in workers.items()}
        if set(threads.values()) != {args.threads}:
            sys.exit(f"error: asked every library for {args.threads} threads, found {threads}")
        errors = check_logits(workers, args.batch_sizes)
        header = make_header(
            f"bench/infer.py: {args.network_name} inference, tinyconv vs onnxruntime and torch "
            "eager, each in a process of its own", threads,
            f"per call, timed inside each library's process, min and median over "
            f"{args.rounds} blocks of {BLOCK_IMAGES} images per library and batch size, "
            f"alternating, after {WARMUP} warm-up calls, each block after a "
            f"{SETTLE * 1e3:.0f} ms pause and one untimed call; samples/s at the median",
            busy, peer="onnxruntime",
            packages=("numpy", "numba", "onnxruntime", "torch"))
        header["weights"] = args.checkpoint or f"{args.arch}, seed {SEED}"
        header["tinyconv path"] = ("batch-last kernels at every size" if args.batch_last else
                                   "the small-batch kernel below the network's "
                                   "samples_below images, the batch-last kernels from there")
        header["check"] = ", ".join(f"{library}'s logits within {error:.1e} of the largest"
                                    for library, error in errors.items())
        print(format_header(header), end="\n\n")
        seconds = {size: time_size(workers, size, args.rounds) for size in args.batch_sizes}
    finally:
        for worker in workers.values():
            worker.close()
    rows = []
    for peer in LIBRARIES[1:]:
        print(format_table_head(peer))
        for size in args.batch_sizes:
            for row in rows_of(size, seconds[size], peer):
                print(format_row(row))
                rows.append(row)
        print()
    if args.json:
        write_json(args.json, header, rows)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
