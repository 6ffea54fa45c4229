"""Image files made MNIST digits, the way MNIST itself was made (LeCun et al.).

Grey levels, light ink on a dark background, cropped to the digit, scaled to fit a 20x20 box
keeping the aspect ratio (antialiased), placed in a 28x28 field with its centre of mass at the
centre. Reading and writing images needs Pillow (pip install 'tinyconv[pictures]'), imported
only when an image is read or written.
"""

import io
from pathlib import Path

import numpy as np

from tinyconv.atomicio import atomic_write
from tinyconv.data import IMAGE_SIZE
from tinyconv.plots import INSTALL_HINT

FIT_SIZE = 20          # MNIST: each digit scaled to fit a 20x20 box, keeping the aspect ratio
CENTRE = 14.0          # ... and moved so its centre of mass is pixel (14, 14) (MNIST's mean)
BORDER_FRACTION = 0.05  # the frame whose median grey level is taken as the background
BLANK_LEVELS = 16      # ink must stand at least this many of 255 grey levels off the background
NOISE_FLOOR = 0.1      # ink below this fraction of the strongest is background (noise, JPEG)


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


def read_gray(path, source=None):
    """Read an image file (a path, or the file's bytes, named source in errors) as float64
    grey levels (H, W) on a 0-255 scale.

    EXIF rotation is applied (phone photos). Transparent pixels take the grey level opposite
    to the opaque ones, so ink drawn on a transparent background stands out whatever its colour.
    """
    Image = pillow()
    from PIL import ImageOps
    if isinstance(path, bytes):
        source, empty, path = source or "the image", not path, io.BytesIO(path)
    else:
        path = source = Path(path)
        empty = path.is_file() and path.stat().st_size == 0
    if empty:
        raise ImageError(f"{source}: file is empty (0 bytes), expected an image (PNG, JPEG, "
                         "BMP)")
    try:
        with Image.open(path) as image:
            image.load()  # decode now, so truncated data fails here
            image = ImageOps.exif_transpose(image)
    except FileNotFoundError:
        raise ImageError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{source}: is a directory, expected an image file") from None
    except Image.UnidentifiedImageError:  # its message names a file object, not the source
        raise ImageError(f"{source}: unreadable image, expected PNG, JPEG, BMP or another "
                         "format Pillow reads, found data of no image format") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{source}: unreadable image, expected PNG, JPEG, BMP or another "
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
        raise ImageError(f"{source}: no digit found, every pixel is fully transparent")
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


def mnist_digit(path, source=None):
    """The MNIST-style uint8 (28, 28) digit of an image file (a path, or its bytes named
    source); ImageError if there is none."""
    return centred_digit(ink_of(read_gray(path, source), source or path))


def save_digit(digit, path):
    """Write a uint8 (28, 28) digit as a PNG, atomically."""
    image = pillow().fromarray(digit)
    atomic_write(path, lambda file: image.save(file, format="PNG"))
