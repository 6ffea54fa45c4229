"""Classify your own digit images: python -m tinyconv.predict CHECKPOINT IMAGE... [--help].

Each image becomes an MNIST digit (tinyconv.digits), then goes 28 -> 32 and is normalised
exactly as the checkpoint's training run did, by the functions the training batches use.
Reading images needs Pillow (pip install 'tinyconv[pictures]').
"""

import json
import sys
from pathlib import Path

import numpy as np

from tinyconv import cli
from tinyconv.digits import INSTALL_HINT, ImageError, mnist_digit, pillow, save_digit
from tinyconv.evaluation import model_inputs

DEFAULTS = {"top": 3}


def classify(model, config, paths, top=DEFAULTS["top"]):
    """One record per path: {"file", "top": [{"class", "probability"}...], "digit"} or
    {"file", "error"}; unreadable or blank images get an error and the rest go on."""
    records, digits = [], []
    for path in paths:
        try:
            digits.append(mnist_digit(path))
            records.append({"file": str(path)})
        except ImageError as exc:
            records.append({"file": str(path), "error": str(exc)})
    good = [record for record in records if "error" not in record]
    if good:
        probabilities = model.probabilities(model_inputs(np.stack(digits), config))
        for record, digit, row in zip(good, digits, probabilities, strict=True):
            record["top"] = top_classes(row, top)
            record["digit"] = digit
    return records


def top_classes(probabilities, top):
    """The `top` most probable classes of one image's probabilities, most probable first
    (the lower class on a tie): [{"class", "probability"}, ...]."""
    best = np.argsort(-probabilities, kind="stable")[:top]
    return [{"class": int(c), "probability": float(probabilities[c])} for c in best]


def percent(probability):
    """A probability as a percentage with one decimal, '<0.1%' below that."""
    return f"{100 * probability:.1f}%" if probability >= 0.0005 else "<0.1%"


def format_record(record):
    """One line for a classified image: 'FILE: 7 (98.1%), 1 (1.2%), 2 (0.3%)'."""
    guesses = ", ".join(f"{g['class']} ({percent(g['probability'])})" for g in record["top"])
    return f"{record['file']}: {guesses}"


def parser():
    parser = cli.parser(
        "python -m tinyconv.predict",
        "Classify digit images (PNG, JPEG, BMP, ...) with a tinyconv checkpoint. Each image is "
        "made MNIST-like first: grey levels, dark-on-light inverted (decided from the "
        "background at the image's border), transparent pixels set against the ink, cropped "
        "to the digit, fit into 20x20 keeping the aspect ratio, centred by centre of mass in "
        "28x28, then padded or resized and normalised as the checkpoint's training was. Needs "
        f"Pillow: {INSTALL_HINT}.",
        examples=["python -m tinyconv.predict runs/NAME/best.npz my-digit.png",
                  "python -m tinyconv.predict runs/NAME *.png --json --save-inputs seen/"],
        failed="when some images could not be classified (each gets an error line; the "
               "others are still classified)")
    cli.add_inference_flags(parser)
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files, one digit each")
    parser.add_argument("--top", type=cli.count(1), default=DEFAULTS["top"], metavar="N",
                        help="how many classes to list per image, at most the network's class "
                             "count (default %(default)s)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object: the checkpoint and a record per image")
    parser.add_argument("--save-inputs", metavar="DIR", help="also write the 28x28 digit the "
                        "network saw for each image to DIR/<position>-<name>.mnist.png, "
                        "position being the image's place among the IMAGE arguments (from 1), "
                        "so that images of the same name in different folders stay apart")
    return parser


def command(args):
    pillow()  # before loading anything: without Pillow no image can be read
    cli.set_threads(args.threads)
    model, config, _ = cli.classifier_from_flags(args)
    classes = model.output_shape[0]
    if args.top > classes:
        raise ValueError(f"--top must be at most the network's {classes} classes, found "
                         f"{args.top}")
    records = classify(model, config, args.images, args.top)
    for position, record in enumerate(records, 1):
        digit = record.pop("digit", None)
        if args.save_inputs and digit is not None:
            path = Path(args.save_inputs) / f"{position}-{Path(record['file']).name}.mnist.png"
            with cli.writing(path):
                save_digit(digit, path)
        if "error" in record:
            cli.report(record["error"], cli.FAILED)
        elif not args.json:
            print(format_record(record))
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "images": records}))
    return cli.FAILED if any("error" in record for record in records) else cli.DONE


def main(argv=None):
    return cli.run(parser(), command, argv)


if __name__ == "__main__":
    sys.exit(main())
