"""Classify your own digit images: python -m tinyconv.predict CHECKPOINT IMAGE... [--help].

Each image becomes an MNIST digit the way MNIST itself was made (LeCun et al.): grey levels,
light ink on a dark background, cropped to the digit, scaled to fit a 20x20 box keeping the
aspect ratio (antialiased), placed in a 28x28 field with its centre of mass at the centre.
Then it goes 28 -> 32 and is normalised exactly as the checkpoint's training run did, by the
functions the training batches use. Reading images needs Pillow (pip install 'tinyconv[pictures]').
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from tinyconv.checkpoint import CheckpointError
from tinyconv.data import IMAGE_SIZE, prepare_batch
from tinyconv.interop import (
    CHECKPOINT_HELP,
    TORCH_PREPROCESSING,
    MissingDependencyError,
    load_model,
)
from tinyconv.cli import set_threads

DEFAULTS = {"top": 3}
FIT_SIZE = 20          # MNIST: each digit scaled to fit a 20x20 box, keeping the aspect ratio
CENTRE = 14.0          # ... and moved so its centre of mass is pixel (14, 14) (MNIST's mean)
BORDER_FRACTION = 0.05  # the frame whose median grey level is taken as the background
BLANK_LEVELS = 16      # ink must stand at least this many of 255 grey levels off the background
NOISE_FLOOR = 0.1      # ink below this fraction of the strongest is background (noise, JPEG)
INSTALL_HINT = "pip install 'tinyconv[pictures]'"
# the CHECKPOINT help of the tools that read it with load_classifier (predict, visualize)
CLASSIFIER_HELP = f"{CHECKPOINT_HELP}; a PyTorch file is read with the report's preprocessing"


class ImageError(ValueError):
    """An image file cannot be read or holds no digit; the message names the file."""


def pillow():
    """The PIL.Image module, or an ImageError saying how to install Pillow."""
    try:
        from PIL import Image
    except ImportError:
        raise ImageError(f"reading images needs Pillow, which is not installed: "
                         f"{INSTALL_HINT}") from None
    return Image


def read_gray(path):
    """Read an image file as float64 grey levels (H, W) on a 0-255 scale.

    EXIF rotation is applied (phone photos). Transparent pixels take the grey level opposite
    to the opaque ones, so ink drawn on a transparent background stands out whatever its colour.
    """
    Image = pillow()
    from PIL import ImageOps
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise ImageError(f"{path}: file is empty (0 bytes), expected an image (PNG, JPEG, BMP)")
    try:
        with Image.open(path) as image:
            image.load()  # decode now, so truncated data fails here
            image = ImageOps.exif_transpose(image)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, expected an image file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{path}: unreadable image, expected PNG, JPEG, BMP or another "
                         f"format Pillow reads, found damaged or foreign data ({exc})") from None
    if image.mode.startswith(("I", "F")):  # 16-bit, 32-bit or float grey: "L" would clip
        gray = np.asarray(image, np.float64)
        return gray / 257.0 if image.mode.startswith("I;16") or gray.max() > 255 else gray
    if not image.has_transparency_data:
        return np.asarray(image.convert("L"), np.float64)
    rgba = np.asarray(image.convert("RGBA"), np.float64)
    opacity = rgba[..., 3] / 255.0
    # ITU-R 601-2 luma, the weights of Pillow's own "L" conversion
    luma = rgba[..., :3] @ np.array([0.299, 0.587, 0.114])
    if opacity.sum() == 0:
        raise ImageError(f"{path}: no digit found, every pixel is fully transparent")
    ink_level = np.average(luma, weights=opacity)
    backdrop = 255.0 if ink_level < 127.5 else 0.0
    return luma * opacity + backdrop * (1.0 - opacity)


def ink_of(gray, source):
    """Ink strength in [0, 1] (H, W): light-on-dark, background 0, strongest stroke 1.

    The polarity comes from the background, the median grey level of a frame around the
    image: light there means dark ink on light paper, which is inverted, as MNIST's digits
    are light on dark.
    """
    height, width = gray.shape
    band = max(1, round(BORDER_FRACTION * min(height, width)))
    frame = np.concatenate([gray[:band].ravel(), gray[-band:].ravel(),
                            gray[:, :band].ravel(), gray[:, -band:].ravel()])
    background = np.median(frame)
    dark_on_light = background > (gray.min() + gray.max()) / 2
    ink = np.clip(background - gray if dark_on_light else gray - background, 0.0, None)
    if ink.max() < BLANK_LEVELS:
        raise ImageError(f"{source}: no digit found, the image is blank (every pixel lies "
                         f"within {ink.max():.0f} of 255 grey levels of the background "
                         f"{background:.0f}; expected ink at least {BLANK_LEVELS} levels off it)")
    ink /= ink.max()
    ink[ink < NOISE_FLOOR] = 0.0
    return ink


def centred_digit(ink):
    """MNIST-style uint8 (28, 28) from ink (H, W): crop, fit 20x20, centre of mass to (14, 14)."""
    Image = pillow()
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    crop = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    scale = FIT_SIZE / max(crop.shape)
    height, width = (max(1, round(side * scale)) for side in crop.shape)
    # Pillow's Lanczos filter widens with the reduction factor: antialiased downscaling; in
    # float ("F") so faint strokes survive, clipped where its negative lobes ring
    fitted = Image.fromarray(crop.astype(np.float32), "F").resize(
        (width, height), Image.Resampling.LANCZOS)
    fitted = np.clip(np.asarray(fitted, np.float64), 0.0, None)
    fitted *= 255.0 / fitted.max()  # thin strokes of a large drawing fade when shrunk
    ys, xs = np.indices(fitted.shape)
    mass = fitted.sum()
    top = round(CENTRE - (ys * fitted).sum() / mass)
    left = round(CENTRE - (xs * fitted).sum() / mass)
    digit = np.zeros((IMAGE_SIZE, IMAGE_SIZE))
    # paste at (top, left), clipped where the 28x28 field ends
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + height, IMAGE_SIZE), min(left + width, IMAGE_SIZE)
    digit[y0:y1, x0:x1] = fitted[y0 - top:y1 - top, x0 - left:x1 - left]
    return np.round(digit).astype(np.uint8)


def mnist_digit(path):
    """The MNIST-style uint8 (28, 28) digit of an image file; ImageError if there is none."""
    return centred_digit(ink_of(read_gray(path), path))


def load_classifier(path):
    """(model, preprocessing config) of a checkpoint, a run directory (its best.npz) or a
    PyTorch state_dict file (which records no preprocessing: the report's is assumed)."""
    model, header = load_model(path)
    return model, header["config"] if header else TORCH_PREPROCESSING


def model_inputs(digits, config):
    """Float32 (N, 1, 32, 32) network inputs of uint8 (N, 28, 28) digits, as training made them."""
    return prepare_batch(np.asarray(digits, np.uint8), None, config["resize"], False, 0,
                         config["normalize"])


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
            best = np.argsort(-row, kind="stable")[:top]
            record["top"] = [{"class": int(c), "probability": float(row[c])} for c in best]
            record["digit"] = digit
    return records


def save_digit(digit, path):
    """Write a uint8 (28, 28) digit as a PNG, atomically."""
    from tinyconv.atomicio import atomic_write
    image = pillow().fromarray(digit)
    atomic_write(path, lambda file: image.save(file, format="PNG"))


def percent(probability):
    """A probability as a percentage with one decimal, '<0.1%' below that."""
    return f"{100 * probability:.1f}%" if probability >= 0.0005 else "<0.1%"


def format_record(record):
    """One line for a classified image: 'FILE: 7 (98.1%), 1 (1.2%), 2 (0.3%)'."""
    guesses = ", ".join(f"{g['class']} ({percent(g['probability'])})" for g in record["top"])
    return f"{record['file']}: {guesses}"


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m tinyconv.predict",
        description="Classify digit images (PNG, JPEG, BMP, ...) with a tinyconv checkpoint. "
                    "Each image is made MNIST-like first: grey levels, dark-on-light inverted "
                    "(decided from the background at the image's border), transparent pixels "
                    "set against the ink, cropped to the digit, fit into 20x20 keeping the "
                    "aspect ratio, centred by centre of mass in 28x28, then padded or resized "
                    "and normalised as the checkpoint's training was. Needs Pillow: "
                    f"{INSTALL_HINT}.",
        epilog="Exit status: 0 when every image was classified, 1 when some were not (each "
               "gets an error line; the others are still classified), 2 when nothing could "
               "run (bad checkpoint, no Pillow) or a --save-inputs file cannot be written.")
    parser.add_argument("checkpoint", help=CLASSIFIER_HELP)
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files, one digit each")
    parser.add_argument("--top", type=int, default=DEFAULTS["top"],
                        help="how many classes to list per image, 1-10 (default %(default)s)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object: the checkpoint and a record per image")
    parser.add_argument("--save-inputs", metavar="DIR", help="also write the 28x28 digit the "
                        "network saw for each image to DIR/<position>-<name>.mnist.png, "
                        "position being the image's place among the IMAGE arguments (from 1), "
                        "so that images of the same name in different folders stay apart")
    parser.add_argument("--threads", type=int, help="Numba threads (default: all cores)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        if not 1 <= args.top <= 10:
            raise ValueError(f"--top must lie in 1..10, found {args.top}")
        pillow()
        set_threads(args.threads)
        model, config = load_classifier(args.checkpoint)
    except (CheckpointError, ImageError, MissingDependencyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    records = classify(model, config, args.images, args.top)
    for position, record in enumerate(records, 1):
        digit = record.pop("digit", None)
        if args.save_inputs and digit is not None:
            path = Path(args.save_inputs) / f"{position}-{Path(record['file']).name}.mnist.png"
            try:
                save_digit(digit, path)
            except OSError as exc:
                print(f"error: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
                return 2
        if "error" in record:
            print(f"error: {record['error']}", file=sys.stderr)
        elif not args.json:
            print(format_record(record))
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "images": records}))
    return 1 if any("error" in record for record in records) else 0


if __name__ == "__main__":
    sys.exit(main())
