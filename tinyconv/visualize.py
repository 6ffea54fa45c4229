"""Look inside a checkpoint: python -m tinyconv.visualize CHECKPOINT --out DIR [--help].

Writes DIR/filters.png (the filters of the network's first Conv2d layer) and
DIR/feature_maps.png (what the layers make of one input: a test image, or your own with
--image, prepared as predict does). Needs matplotlib (pip install 'tinyconv[pictures]');
--image also needs Pillow.
"""

import sys
from pathlib import Path

import numpy as np

from tinyconv import cli, plots
from tinyconv.data import augmentation, distorted, load_mnist, randomly_flipped, resized
from tinyconv.digits import mnist_digit
from tinyconv.evaluation import model_inputs
from tinyconv.interop import MissingDependencyError
from tinyconv.nn import Conv2d

DEFAULTS = {"index": 0}


def shown_layers(model):
    """The indices of the layers whose outputs feature_maps.png shows, each with the kinds of
    the layers that made it from the previous row's: [(index, "Conv2d + Tanh"), ...].

    A row is the output of a run of layers that ends where the shape changes: a convolution
    and its activation (or batch norm, dropout: same-shape layers) make one row, the output
    the next stage sees, since the values before the activation only say the same in another
    scale. Views (Flatten) show no new values, and the last layer's output is drawn as the
    class probabilities instead.
    """
    rows, kinds = [], []
    for index, layer in enumerate(model.layers[:-1]):
        if not layer.is_view:
            kinds.append(type(layer).__name__)
        following = model.layers[index + 1]
        if kinds and (following.is_view or model.shapes[index + 2] != model.shapes[index + 1]):
            rows.append((index, " + ".join(kinds)))
            kinds = []
    return rows


def feature_rows(model, x):
    """[(label, activations of the one input in x)] for the shown_layers of model."""
    outputs = model.activations(x)
    return [(f"{model.prefix}{index}\n{kinds}", outputs[index][0])
            for index, kinds in shown_layers(model)]


def first_conv(model):
    """(index, layer) of the network's first Conv2d layer, or None."""
    return next(((index, layer) for index, layer in enumerate(model.layers)
                 if isinstance(layer, Conv2d)), None)


def visualize(model, config, digit, name, out_dir):
    """Write filters.png (if the network has a Conv2d layer) and feature_maps.png for a uint8
    (28, 28) digit; returns the paths written."""
    out_dir = Path(out_dir)
    x = model_inputs(digit[None], config)
    probabilities = model.probabilities(x)[0]
    guess = int(probabilities.argmax())
    title = (f"{name}: predicted {guess} ({probabilities[guess]:.3f}); "
             "red positive, blue negative")
    paths = []
    conv = first_conv(model)
    if conv is None:
        print(f"note: the network has no Conv2d layer, so no {out_dir / 'filters.png'} is "
              "drawn", file=sys.stderr)
    else:
        index, layer = conv
        weight = model.state_dict()[f"{model.prefix}{index}.weight"]
        kh, kw = layer.kernel
        paths.append(plots.filters(weight, out_dir / "filters.png",
                                   f"{model.prefix}{index} {layer!r}: the {len(weight)} "
                                   f"learned {kh}x{kw} filters"))
    paths.append(plots.feature_maps(x[0], feature_rows(model, x), probabilities,
                                    out_dir / "feature_maps.png", title))
    return paths


def run_distortions(header, args):
    """The Distortions the checkpoint's run trained with; a ValueError if none."""
    config = header["config"] if header else {}
    distortions = augmentation(config)[1] if "translate" in config else None
    if distortions is None:
        raise ValueError(f"--augment: the run of {args.checkpoint} trained with no distortion "
                         "(train with --rotate, --scale, --shear, --elastic or a fractional "
                         "--translate)")
    return distortions


def augment_picture(header, args, distortions, path, digits=6, draws=8):
    """augment.png: the first training digits, each as it is and as `draws` draws of the
    run's flips (if it flipped) and distortions give it (seed 0)."""
    config = header["config"]
    images, _ = load_mnist("train", args.data_dir, dataset=cli.dataset_of_run(args, header))
    resize = config.get("resize", "pad")
    rng = np.random.default_rng(0)
    raw = images[:digits]
    variants = [distorted(resized(randomly_flipped(raw, rng) if config.get("flip") else raw,
                                  resize), rng, distortions) for _ in range(draws)]
    canvas = resized(raw, resize)
    d = distortions
    settings = [f"{name} {value:g}" for name, value in (("rotate", d.rotate), ("scale", d.scale),
                ("shear", d.shear), ("translate", d.translate)) if value]
    if d.elastic_alpha:
        settings.append(f"elastic {d.elastic_alpha:g},{d.elastic_sigma:g}")
    return plots.augmented(np.stack([canvas, *variants], axis=1), path,
                           "training's distortions: " + ", ".join(settings))


def parser():
    parser = cli.parser(
        "python -m tinyconv.visualize",
        "Draw the filters of a checkpoint's first Conv2d layer (filters.png) and, for one "
        "input, the feature maps of its layers and the class probabilities "
        "(feature_maps.png). Needs matplotlib.",
        examples=["python -m tinyconv.visualize runs/NAME/best.npz --out pictures/",
                  "python -m tinyconv.visualize runs/NAME --image my-digit.png --out pictures/"])
    cli.add_inference_flags(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="where the PNGs go")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--image", metavar="FILE", help="your own digit image (needs Pillow), "
                        "prepared as python -m tinyconv.predict does")
    source.add_argument("--index", type=cli.count(0), default=DEFAULTS["index"],
                        help="which test image of the data set to show (default %(default)s)")
    parser.add_argument("--augment", action="store_true",
                        help="also draw DIR/augment.png: training images under the distortions "
                             "of the checkpoint's run (--rotate, --scale, --shear, --translate, "
                             "--elastic), 8 draws each")
    cli.add_dataset(parser, "the one the checkpoint was trained on")
    cli.add_data_dir(parser)
    return parser


def command(args):
    if not plots.available("picture", quiet=True):
        raise MissingDependencyError(plots.MISSING.format("picture"))
    cli.set_threads(args.threads)
    model, config, header = cli.classifier_from_flags(args)
    if args.image:
        digit, name = mnist_digit(args.image), Path(args.image).name
    else:
        images, labels = load_mnist("test", args.data_dir,
                                    dataset=cli.dataset_of_run(args, header))
        if args.index >= len(images):
            raise ValueError(f"--index must lie in 0..{len(images) - 1}, found {args.index}")
        digit = images[args.index]
        name = f"test image {args.index} (a {labels[args.index]})"
    distortions = run_distortions(header, args) if args.augment else None  # before any file
    with cli.writing(args.out):
        paths = visualize(model, config, digit, name, args.out)
        if args.augment:
            paths.append(augment_picture(header, args, distortions,
                                         Path(args.out) / "augment.png"))
    for path in paths:
        print(f"wrote {path}")


def main(argv=None):
    return cli.run(parser(), command, argv)


if __name__ == "__main__":
    sys.exit(main())
