"""The data pipeline's distortions, measured: python bench/augment.py [--help].

Samples/s of the training batches (shuffled, padded to 32x32, normalised) over the 60,000
MNIST training images at batch 128: the plain recipe's whole-pixel shifts, the random
affine warp (rotation 12 degrees, scale 0.12, shear 0.2, shifts of 2.5 px), and the affine
plus elastic warp (alpha 20, sigma 4); the elastic warp's two kernels on one batch (the blur
of its displacement fields, the warp); then one plain-recipe training epoch (LeNet-5, test
pass excluded) with the plain shifts, with the affine warp and with the affine plus elastic
warp, taking turns, and how much longer the warped ones are. tinyconv alone: no other
library has these kernels to compare.
"""

import argparse
import sys
import time
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
    write_json,
)

AFFINE = {"rotate": 12, "scale": 0.12, "shear": 0.2, "translate": 2.5}
ELASTIC = {**AFFINE, "elastic": [20.0, 4.0]}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="Numba threads")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each case, alternating")
    parser.add_argument("--json", metavar="PATH", help="also write the header and rows as JSON")
    return parser.parse_args(argv)


def pipeline_rate(images, labels, config, rounds):
    """Best samples/s over rounds of one pass of the training batches of config."""
    from tinyconv.data import augmentation, iterate_batches

    translate, distortions = augmentation(config)
    best = 0.0
    for round_index in range(rounds + 1):  # the first pass compiles and warms up
        rng = np.random.default_rng([0, round_index])
        start = time.perf_counter()
        for _ in iterate_batches(images, labels, 128, rng=rng, translate=translate,
                                 distortions=distortions):
            pass
        if round_index:
            best = max(best, len(labels) / (time.perf_counter() - start))
    return best


def kernel_rows(images, rounds):
    """Rows of the elastic warp's two kernels on one batch of 128: the blur of its
    displacement fields (with its GFLOP/s, counting the taps inside the canvas only, the ones
    it computes) and the warp."""
    from tinyconv.data import (
        NORMALIZATIONS,
        Distortions,
        affine_matrices,
        elastic_fields,
        gaussian_weights,
    )
    from tinyconv.kernels import cpu_augment

    n, size, (alpha, sigma) = 128, 32, ELASTIC["elastic"]
    rng = np.random.default_rng(0)
    noise = rng.uniform(-1, 1, (size, size, 2 * n)).astype(np.float32)
    blurred, tmp = np.empty_like(noise), np.empty_like(noise)
    weights = gaussian_weights(sigma)
    raw = images[:n]  # the warp reads the uint8 digits, as the training batches' does
    distortions = Distortions(rotate=AFFINE["rotate"], scale=AFFINE["scale"],
                              shear=AFFINE["shear"], translate=AFFINE["translate"])
    matrices = affine_matrices(n, rng, size, distortions)
    fields = elastic_fields(n, rng, size, alpha, sigma)
    out = np.empty((n, size, size), np.float32)
    scale, offset = NORMALIZATIONS["standard"]
    blur, warp = alternate(
        [lambda: cpu_augment.gaussian_blur(blurred, tmp, noise, weights, np.float32(alpha)),
         lambda: cpu_augment.warp_bilinear(out, raw, matrices, fields, scale, offset)],
        rounds, 200)
    radius = len(weights) // 2
    taps = sum(min(size - 1, x + radius) - max(0, x - radius) + 1 for x in range(size))
    flops = 2 * 2 * size * taps * 2 * n  # two passes, each S lines of `taps` FMAs per map
    return [Row("elastic fields' blur, 256 maps", "32x32, sigma 4", blur.min * 1e6, None,
                "us"),
            Row("elastic fields' blur", "32x32, sigma 4", flops / blur.min / 1e9, None,
                "GFLOP/s"),
            Row("affine + elastic warp, 128 samples", "32x32", warp.min * 1e6, None, "us")]


def epoch_seconds(images, labels, configs, rounds):
    """Per config, the best seconds of one training epoch over rounds, taking turns."""
    from tinyconv import LeNet5
    from tinyconv.train import make_optimizer, train_epoch

    best = [float("inf")] * len(configs)
    for round_index in range(rounds):
        for index, config in enumerate(configs):
            model = LeNet5(seed=0)
            opt = make_optimizer(model, config)
            start = time.perf_counter()
            train_epoch(model, opt, images, labels, config, round_index, quiet=True)
            best[index] = min(best[index], time.perf_counter() - start)
    return best


def main(argv=None):
    args = parse_args(argv)
    busy = busy_cores()
    import numba

    from tinyconv.data import load_mnist
    from tinyconv.train import RECIPES, RUN_DEFAULTS

    numba.set_num_threads(args.threads)
    header = make_header("bench/augment.py: the distortions' kernels in the data pipeline",
                         {"tinyconv (numba)": args.threads},
                         f"the best of {args.rounds} rounds after one warm-up pass; the "
                         "epochs take turns", busy, peer=None, packages=("numpy", "numba"))
    print(format_header(header))
    warning = busy_warning(busy)
    if warning:
        print(warning)
    print(format_table_head("-"))
    images, labels = load_mnist("train")
    base = {**RECIPES["plain"], **RUN_DEFAULTS}
    rows = []
    for name, settings in (("shifts (plain recipe)", {}), ("affine warp", AFFINE),
                           ("affine + elastic warp", ELASTIC)):
        rate = pipeline_rate(images, labels, {**base, **settings}, args.rounds)
        rows.append(Row(f"batches, {name}", "60000x28x28", rate, None, "samples/s"))
        print(format_row(rows[-1]), flush=True)
    for row in kernel_rows(images, args.rounds):
        rows.append(row)
        print(format_row(row), flush=True)
    plain, *warped = epoch_seconds(images, labels, [base, {**base, **AFFINE},
                                                    {**base, **ELASTIC}], args.rounds)
    for name, seconds in zip(("shifts", "affine", "affine + elastic"), (plain, *warped),
                             strict=True):
        rows.append(Row(f"training epoch, {name}", "LeNet-5, b128", seconds, None, "s"))
        print(format_row(rows[-1]), flush=True)
    for name, seconds in zip(("affine", "affine+elastic"), warped, strict=True):
        rows.append(Row(f"epoch lengthened by {name}", "", 100 * (seconds / plain - 1),
                        None, "%"))
        print(format_row(rows[-1]))
    if args.json:
        write_json(args.json, header, rows)


if __name__ == "__main__":
    main()
