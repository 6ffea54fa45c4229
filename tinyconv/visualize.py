"""Look inside a checkpoint: python -m tinyconv.visualize CHECKPOINT --out DIR [--help].

Writes DIR/filters.png (the learned conv1 filters) and DIR/feature_maps.png (what each layer
makes of one input: a test image, or your own with --image, prepared as predict does).
Needs matplotlib (pip install 'tinyconv[pictures]'); --image also needs Pillow.
"""

import argparse
import sys
from pathlib import Path

from tinyconv import plots
from tinyconv.checkpoint import CheckpointError
from tinyconv.data import DataError, load_mnist
from tinyconv.interop import MissingDependencyError
from tinyconv.cli import set_threads
from tinyconv.predict import (
    CLASSIFIER_HELP,
    ImageError,
    load_classifier,
    mnist_digit,
    model_inputs,
)

DEFAULTS = {"index": 0}
# backbone output index -> what it is; each is a tanh output, so it lies in [-1, 1]
STAGES = ((1, "conv1 + tanh"), (3, "pool + tanh"), (5, "conv2 + tanh"), (7, "pool + tanh"),
          (9, "conv3 + tanh"), (12, "fc1 + tanh"))


def visualize(model, config, digit, name, out_dir):
    """Write filters.png and feature_maps.png for a uint8 (28, 28) digit; returns the paths."""
    out_dir = Path(out_dir)
    x = model_inputs(digit[None], config)
    outputs = model.activations(x)
    probabilities = model.probabilities(x)[0]
    guess = int(probabilities.argmax())
    stages = [(f"backbone.{index}\n{label}", outputs[index][0]) for index, label in STAGES]
    title = (f"{name}: predicted {guess} ({probabilities[guess]:.3f}); "
             "red positive, blue negative")
    return [plots.filters(model.state_dict()["backbone.0.weight"], out_dir / "filters.png",
                          "conv1 (backbone.0): the six learned 5x5 filters"),
            plots.feature_maps(x[0, 0], stages, probabilities, out_dir / "feature_maps.png",
                               title)]


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m tinyconv.visualize",
        description="Draw a checkpoint's conv1 filters (filters.png) and the feature maps of "
                    "every layer for one input (feature_maps.png). Needs matplotlib.")
    parser.add_argument("checkpoint", help=CLASSIFIER_HELP)
    parser.add_argument("--out", required=True, metavar="DIR", help="where the PNGs go")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--image", help="your own digit image (needs Pillow), prepared as "
                        "python -m tinyconv.predict does")
    source.add_argument("--index", type=int, default=DEFAULTS["index"],
                        help="which MNIST test image to show (default %(default)s)")
    parser.add_argument("--data-dir", help="directory holding the MNIST files "
                        "(default: TINYCONV_DATA, the bundled data/mnist, then the cache)")
    parser.add_argument("--threads", type=int, help="Numba threads (default: all cores)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not plots.available("picture"):
        return 2
    try:
        set_threads(args.threads)
        model, config = load_classifier(args.checkpoint)
        if args.image:
            digit, name = mnist_digit(args.image), Path(args.image).name
        else:
            images, labels = load_mnist("test", args.data_dir)
            if not 0 <= args.index < len(images):
                raise ValueError(f"--index must lie in 0..{len(images) - 1}, found {args.index}")
            digit = images[args.index]
            name = f"test image {args.index} (a {labels[args.index]})"
    except (CheckpointError, DataError, ImageError, MissingDependencyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        paths = visualize(model, config, digit, name, args.out)
    except OSError as exc:
        print(f"error: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
