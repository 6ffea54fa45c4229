"""Where small-batch inference should hand over to the batch-last kernels:
python bench/crossover.py [--help].

For each named network, its eval-mode forward at each batch size through the two paths,
timed in turns in one process (the same model, the same images): the whole-network kernel
(kernels.cpu.sequential_forward, one sample per thread) and the batch-last kernels
(model.samples_below = 0). The ratio is the batch-last time over the small-batch time, so
the small-batch kernel pays while it is above 1; the crossover is the first batch size
where it drops below 1, beside the batch size the network's own rule (Sequential
.samples_below, kernels.cpu.samples_below) hands over at. tinyconv against itself: the
peer column is its batch-last path.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # bench.common and tinyconv, from any directory

from bench.common import (  # noqa: E402
    Row,
    alternate,
    busy_cores,
    busy_warning,
    format_header,
    format_row,
    format_table_head,
    make_header,
    positive,
    write_json,
)

ARCHS = ("lenet5", "lenet5-relu", "lenet5-bn", "resnet-mini")
BATCH_SIZES = (1, 2, 4, 8, 12, 16, 20, 24, 28, 32)
BLOCK_IMAGES = 400  # images per timed block


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--arch", action="append", choices=ARCHS,
                        help="only this network (repeatable; default: all)")
    parser.add_argument("--batch-sizes", type=positive, nargs="+", default=BATCH_SIZES)
    parser.add_argument("--threads", type=positive, default=2, help="Numba threads")
    parser.add_argument("--rounds", type=positive, default=5,
                        help="timed blocks of each path and size; min and median over them")
    parser.add_argument("--json", metavar="PATH", help="also write the header and rows as JSON")
    return parser.parse_args(argv)


def forward_at(model, x, samples_below):
    """A call of the model's forward on x with samples_below set as given."""
    def call():
        model.samples_below = samples_below
        model.forward(x)
    return call


def crossover(model, batch_sizes, rounds):
    """Per batch size, (small-batch, batch-last) Timings of the model's eval-mode forward."""
    rng = np.random.default_rng(0)
    timings = []
    for batch in batch_sizes:
        x = rng.standard_normal((batch, *model.input_shape)).astype(np.float32)
        steps = max(1, BLOCK_IMAGES // batch)
        timings.append(alternate([forward_at(model, x, batch + 1), forward_at(model, x, 0)],
                                 rounds, steps))
    model.samples_below = None
    return timings


def main(argv=None):
    args = parse_args(argv)
    busy = busy_cores()
    import numba

    from tinyconv import archs

    numba.set_num_threads(args.threads)
    header = make_header("bench/crossover.py: small-batch inference against the batch-last "
                         "kernels", {"tinyconv (numba)": args.threads},
                         f"the min over {args.rounds} blocks of about {BLOCK_IMAGES} images "
                         "per path, the paths in turns", busy, peer="the batch-last path",
                         packages=("numpy", "numba"))
    print(format_header(header))
    warning = busy_warning(busy)
    if warning:
        print(warning)
    print(format_table_head("batch-last"))
    rows = []
    for arch in args.arch or ARCHS:
        model = archs.build(arch, seed=0).eval()
        timings = crossover(model, args.batch_sizes, args.rounds)
        for batch, (small, batch_last) in zip(args.batch_sizes, timings, strict=True):
            rows.append(Row(f"{arch}, batch {batch}", "", small.min * 1e6,
                            batch_last.min * 1e6, "us"))
            print(format_row(rows[-1]), flush=True)
        slower = [batch for batch, row in zip(args.batch_sizes, rows[-len(timings):],
                                              strict=True) if row.ratio < 1]
        found = f"{slower[0]} images" if slower else f"above {args.batch_sizes[-1]}"
        print(f"{arch}: the small-batch kernel is slower from {found}; the network's rule "
              f"hands over at {model.samples_below}", flush=True)
    if args.json:
        write_json(args.json, header, rows)


if __name__ == "__main__":
    main()
