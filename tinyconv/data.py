"""MNIST and the data sets in its format (Fashion-MNIST, KMNIST): read and validate IDX
files, locate or download them, and serve float32 batches.

Shapes: N samples; images stay uint8 (N,28,28) in memory and labels int64 (N,); batches are
float32 (n,1,32,32), made on the fly, because LeNet-5 expects 32x32 inputs.

Checksum rule: MD5s are enforced for the copies tinyconv manages (the bundled data/mnist/ of
a checkout, the per-user cache, fresh downloads), where anything but the data set means
damage: MNIST's of the decompressed bytes (data/mnist/MD5SUMS), the others' of the .gz files
as their projects publish them (a raw file in the cache, whose MD5 nobody publishes, is
checked for structure only). A directory the user names (data_dir argument, --data-dir,
TINYCONV_DATA) is validated for structure only, so any look-alike with MNIST's file names
loads from there.
"""

import dataclasses
import hashlib
import math
import os
import struct
import sys
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

import numpy as np

# MD5 of each decompressed file, as in data/mnist/MD5SUMS (the checksums other loaders use).
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "data" / "mnist"
# PyTorch's first mirror, then the original site (often slow or refusing).
DEFAULT_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
DOWNLOAD_TIMEOUT_S = 30
HOW_TO_SUPPLY = (
    "Download the four files ({urls}) and supply them (raw or .gz) with --data-dir DIR or "
    "TINYCONV_DATA=DIR, or copy them into {cache}; mirrors can be set with {env}=URL,URL."
)


@dataclass(frozen=True)
class Dataset:
    """A data set in MNIST's format: 28x28 uint8 images and labels 0-9 in MNIST's four file
    names. md5 maps each file name to its checksum, of the decompressed bytes when
    md5_of_gz is False (MNIST's), of the .gz file as served when True."""

    name: str  # as --dataset takes it
    title: str
    mirrors: tuple  # base URLs, tried in order
    md5: dict
    md5_of_gz: bool
    classes: tuple  # what each label means
    bundled: bool = False  # a checkout holds it in data/mnist/ (BUNDLED_DIR)

    @property
    def mirrors_variable(self):
        """The environment variable that replaces the mirrors: TINYCONV_KMNIST_MIRRORS."""
        return f"TINYCONV_{self.name.upper().replace('-', '_')}_MIRRORS"


DATASETS = {dataset.name: dataset for dataset in (
    Dataset("mnist", "MNIST", DEFAULT_MIRRORS, MNIST_MD5, False, tuple("0123456789"),
            bundled=True),
    # github.com/zalandoresearch/fashion-mnist, README, "Get the Data": its links and MD5s
    Dataset("fashion-mnist", "Fashion-MNIST",
            ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
            {"train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
             "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
             "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
             "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310"}, True,
            ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
             "Sneaker", "Bag", "Ankle boot")),
    # github.com/rois-codh/kmnist, README, "Kuzushiji-MNIST": its links; the README gives no
    # checksums, so these are torchvision's (torchvision.datasets.KMNIST.resources)
    Dataset("kmnist", "Kuzushiji-MNIST", ("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
            {"train-images-idx3-ubyte": "bdb82020997e1d708af4cf47b453dcf7",
             "train-labels-idx1-ubyte": "e144d726b3acfaa3e44228e80efcd344",
             "t10k-images-idx3-ubyte": "5c965bf0a639b31b8f53240b1b52f4d7",
             "t10k-labels-idx1-ubyte": "7320c461ea6c1c855c0b718fb2a4b134"}, True,
            ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")),
)}


def dataset_of(name):
    """The Dataset of a name in DATASETS; a ValueError listing them otherwise."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}, expected one of {', '.join(DATASETS)}")
    return DATASETS[name]

# IDX data-type codes (third magic byte); every multi-byte type is big-endian.
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
IMAGE_SIZE = 28
INPUT_SIZE = 32
NUM_CLASSES = 10
# Mean and std of the MNIST training pixels scaled to [0,1] (the torchvision example values).
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
RESIZE_MODES = ("pad", "bilinear")
NORMALIZE_MODES = ("standard", "unit", "none")


DEFLATE_MOST = 1032  # the most bytes deflate makes of one byte of its stream
GZIP_MAGIC = b"\x1f\x8b"
GZIP_PIECE = 1 << 16  # compressed bytes gunzip takes at a time
GZIP_OUT = 1 << 20  # and the most bytes it makes of them at a time


class DataError(ValueError):
    """A data file is missing, damaged, or not what was expected."""


def gunzip(raw, source):
    """Decompress gzip bytes into a uint8 array an IDX parse can share, reporting a damaged
    stream as a DataError naming source.

    The stream is decompressed a piece at a time into one buffer sized from its ISIZE
    trailer, so a data set's images are never held twice (whole bytes, then an array copied
    from them). The trailer is only a hint: a multi-member stream's gives its last member's
    size (the buffer then grows), a damaged one can say anything, and np.empty's untouched
    pages take no memory, only address space, which deflate's ratio bounds."""
    if bytes(raw[:2]) != GZIP_MAGIC:
        raise DataError(f"{source}: corrupt gzip stream (Not a gzipped file "
                        f"({bytes(raw[:2])!r}))")
    size = min(int.from_bytes(raw[-4:], "little"), DEFLATE_MOST * len(raw))
    out, filled = np.empty(size, np.uint8), 0
    pending = memoryview(raw)
    try:
        while pending:  # a member a pass
            member = zlib.decompressobj(wbits=31)  # 31: a gzip header, its CRC and size checked
            while pending and not member.eof:
                piece, pending = pending[:GZIP_PIECE], pending[GZIP_PIECE:]
                while piece and not member.eof:  # at most GZIP_OUT bytes a call
                    out, filled = _appended(out, filled, member.decompress(piece, GZIP_OUT))
                    piece = member.unconsumed_tail
            if not member.eof:
                raise DataError(f"{source}: corrupt gzip stream (Compressed file ended before "
                                "the end-of-stream marker was reached)")
            pending = memoryview(member.unused_data + bytes(pending))  # the next member's
    except zlib.error as exc:
        raise DataError(f"{source}: corrupt gzip stream ({exc})") from exc
    return out[:filled]


def _appended(out, filled, chunk):
    """(out, filled) with chunk's bytes after out's first `filled`, out grown if need be."""
    end = filled + len(chunk)
    if end > out.size:
        grown = np.empty(max(end, 2 * out.size), np.uint8)
        grown[:filled] = out[:filled]
        out = grown
    out[filled:end] = np.frombuffer(chunk, np.uint8)
    return out, end


def read_file_bytes(path, decompress=True):
    """Return the contents of an IDX file, decompressed when its name ends in .gz (unless
    not decompress)."""
    path = Path(path)
    try:
        with open(path, "rb") as file:  # into a bytearray, which an array can share
            raw = bytearray(os.fstat(file.fileno()).st_size)
            del raw[file.readinto(raw):]
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such file") from exc
    if not raw:
        raise DataError(f"{path}: file is empty (0 bytes), expected an IDX file")
    return gunzip(raw, path) if decompress and path.suffix == ".gz" else raw


def parse_idx(data, source, ndim=None):
    """Parse IDX bytes into a native-endian array, checking the header against the data."""
    if len(data) < 4:
        raise DataError(f"{source}: {len(data)} bytes, expected at least the 4-byte IDX magic")
    zero0, zero1, type_code, found_ndim = bytes(data[:4])  # Python ints, whatever data is
    if zero0 or zero1:
        raise DataError(
            f"{source}: bad IDX magic, expected first two bytes 0x00 0x00, "
            f"found 0x{zero0:02X} 0x{zero1:02X}"
        )
    if type_code not in IDX_DTYPES:
        known = ", ".join(f"0x{code:02X}" for code in IDX_DTYPES)
        raise DataError(
            f"{source}: unsupported IDX data type code 0x{type_code:02X}, expected one of {known}"
        )
    header_size = 4 + 4 * found_ndim
    if len(data) < header_size:
        raise DataError(
            f"{source}: header of {found_ndim} dimensions needs {header_size} bytes, "
            f"found {len(data)}"
        )
    shape = struct.unpack(f">{found_ndim}I", data[4:header_size])
    if ndim is not None and found_ndim != ndim:
        raise DataError(
            f"{source}: expected a {ndim}-dimensional array, found {found_ndim} dimensions {shape}"
        )
    dtype = IDX_DTYPES[type_code]
    expected_size = header_size + math.prod(shape) * dtype.itemsize
    if len(data) != expected_size:
        excess = len(data) - expected_size
        fault = "truncated" if excess < 0 else f"{excess} trailing bytes"
        raise DataError(
            f"{source}: shape {shape} of {dtype.name} needs {expected_size} bytes, "
            f"found {len(data)} ({fault})"
        )
    # A writable buffer (gunzip's array, read_file_bytes' bytearray) of single bytes (uint8 and
    # int8: MNIST's images) is shared, not copied; otherwise astype copies into native byte
    # order, leaving a writable array
    array = np.frombuffer(data, dtype, offset=header_size).reshape(shape)
    shared = array.flags.writeable and dtype.itemsize == 1
    return array if shared else array.astype(dtype.newbyteorder("="))


def read_idx(path, ndim=None):
    """Read a raw or .gz IDX file, validating it; ndim, if given, is the required rank."""
    return parse_idx(read_file_bytes(path), path, ndim)


def mnist_cache_dir(dataset="mnist"):
    """Return a data set's per-user download cache: $XDG_CACHE_HOME/tinyconv/NAME, else
    ~/.cache/tinyconv/NAME."""
    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_home) / "tinyconv" / dataset_of(dataset).name


def mnist_file(directory, name):
    """Return the path of file name in directory, compressed (.gz) or raw, or None."""
    for path in (Path(directory) / f"{name}.gz", Path(directory) / name):
        if path.is_file():
            return path
    return None


def missing_files(directory):
    """Return the names of the four files of MNIST's format that directory lacks."""
    return [name for name in MNIST_MD5 if mnist_file(directory, name) is None]


def user_data_dir(data_dir):
    """Return (directory, where it came from) that the user chose, or (None, None)."""
    if data_dir is not None:
        return Path(data_dir).expanduser(), "the data_dir argument"
    if os.environ.get("TINYCONV_DATA"):
        return Path(os.environ["TINYCONV_DATA"]).expanduser(), "TINYCONV_DATA"
    return None, None


def mirror_list(dataset, mirrors):
    """Return the mirrors to try: the argument, else the data set's TINYCONV_..._MIRRORS,
    else its defaults."""
    variable = dataset.mirrors_variable
    if mirrors is None and os.environ.get(variable):
        mirrors = os.environ[variable].split(",")
    if mirrors is None:
        mirrors = dataset.mirrors
    return [mirror.strip() for mirror in mirrors if mirror.strip()]


def md5_mismatch(dataset, name, gz_bytes, data):
    """What is wrong with a file's checksum ("MD5 of ... is X, expected Y"), or None; gz_bytes
    is the file as stored (None for a raw file), data its decompressed bytes."""
    expected = dataset.md5[name]
    if not dataset.md5_of_gz:
        found, what = hashlib.md5(data).hexdigest(), "the decompressed data"
    elif gz_bytes is not None:
        found, what = hashlib.md5(gz_bytes).hexdigest(), "the .gz file"
    else:
        return None  # a raw copy of a data set whose publishers give the .gz's MD5 only
    return None if found == expected else f"MD5 of {what} is {found}, expected {expected}"


def download_file(dataset, url, name, directory):
    """Fetch url into directory as name.gz if its MD5 matches; else raise."""
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
        raw = response.read()
    mismatch = md5_mismatch(dataset, name, raw, gunzip(raw, url))
    if mismatch:
        raise DataError(mismatch)
    # A bad download never reaches the disk; a good one lands under a temporary name and is
    # renamed only once synced, so the final name never holds a partial file.
    directory.mkdir(parents=True, exist_ok=True)
    descriptor, part = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".part")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(raw)
            file.flush()
            os.fsync(file.fileno())
        os.replace(part, directory / f"{name}.gz")
    except BaseException:
        os.unlink(part)
        raise


def download_mnist(dataset, directory, mirrors, tried):
    """Download the files of dataset that directory lacks, trying mirrors in order per file."""
    missing = missing_files(directory)
    print(f"tinyconv: downloading {dataset.title} {', '.join(missing)} into {directory}",
          file=sys.stderr)
    for name in missing:
        for mirror in mirrors:
            url = f"{mirror.rstrip('/')}/{name}.gz"
            try:
                download_file(dataset, url, name, directory)
                break
            except (OSError, ValueError, HTTPException) as exc:
                tried.append(f"{url}: {exc}")
        else:
            return False
    return True


def find_mnist_dir(data_dir=None, *, download=True, mirrors=None, dataset="mnist"):
    """Return the directory holding the four files of dataset (a name in DATASETS),
    downloading them if allowed.

    Search order: data_dir, then TINYCONV_DATA (either one, when given, must hold the files:
    no fallback), then, for MNIST, the checkout's bundled data/mnist/, then the per-user
    cache, which a download fills from the mirrors (argument, else the data set's
    TINYCONV_..._MIRRORS, else its defaults).
    """
    dataset = dataset_of(dataset)
    chosen, origin = user_data_dir(data_dir)
    if chosen is not None:
        missing = missing_files(chosen)
        if missing:
            raise DataError(
                f"{chosen} (from {origin}) lacks {', '.join(missing)}, expected the four "
                f"{dataset.title} files there (each raw or .gz)"
            )
        return chosen
    cache = mnist_cache_dir(dataset.name)
    tried = []
    for directory in (BUNDLED_DIR, cache) if dataset.bundled else (cache,):
        missing = missing_files(directory)
        if not missing:
            return directory
        tried.append(f"{directory}: lacks {', '.join(missing)}")
    mirrors = mirror_list(dataset, mirrors)
    if download and download_mnist(dataset, cache, mirrors, tried):
        return cache
    places = "\n  ".join(tried)
    urls = ", ".join(f"{mirrors[0].rstrip('/')}/{name}.gz" for name in MNIST_MD5) if mirrors \
        else "no mirror is set"
    raise DataError(f"{dataset.title} not found; tried:\n  {places}\n" + HOW_TO_SUPPLY.format(
        urls=urls, cache=cache, env=dataset.mirrors_variable))


def load_mnist_file(path, ndim, verify):
    """Read one file of MNIST's format as a uint8 array, checking its MD5 first against
    those of the Dataset verify (None: no check)."""
    path = Path(path)
    stored = read_file_bytes(path, decompress=False)
    data = gunzip(stored, path) if path.suffix == ".gz" else stored
    if verify is not None:
        mismatch = md5_mismatch(verify, path.name.removesuffix(".gz"),
                                stored if path.suffix == ".gz" else None, data)
        if mismatch:
            raise DataError(f"{path}: {mismatch}; the file is damaged: delete it and run "
                            "again to download a fresh copy")
    array = parse_idx(data, path, ndim)
    if array.dtype != np.uint8:
        raise DataError(f"{path}: expected IDX type 0x08 (uint8) as in MNIST, found {array.dtype}")
    return array


def load_mnist(split, data_dir=None, download=True, mirrors=None, dataset="mnist"):
    """Return (images uint8 (N,28,28), labels int64 (N,)) of split "train" or "test" of
    dataset, a name in DATASETS: MNIST or another data set in its format.

    Finds the files with find_mnist_dir. MD5 checksums are verified only in the locations
    tinyconv manages (bundled, cache, download); a data_dir or TINYCONV_DATA directory is
    checked for structure only, so look-alike data sets with MNIST's file names load.
    """
    if split not in SPLIT_FILES:
        raise ValueError(f"load_mnist: split must be one of {list(SPLIT_FILES)}, got {split!r}")
    directory = find_mnist_dir(data_dir, download=download, mirrors=mirrors, dataset=dataset)
    verify = dataset_of(dataset) if user_data_dir(data_dir)[0] is None else None
    image_path, label_path = (mnist_file(directory, name) for name in SPLIT_FILES[split])
    images = load_mnist_file(image_path, 3, verify)
    labels = load_mnist_file(label_path, 1, verify)
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        height, width = images.shape[1:]
        raise DataError(f"{image_path}: expected 28x28 MNIST images, found {height}x{width}")
    out_of_range = np.flatnonzero(labels >= NUM_CLASSES)
    if out_of_range.size:
        first = out_of_range[0]
        raise DataError(
            f"{label_path}: expected labels 0-9, found {labels[first]} at index {first} "
            f"({out_of_range.size} out of range)"
        )
    if len(images) != len(labels):
        raise DataError(
            f"{image_path} holds {len(images)} images but {label_path} holds {len(labels)} "
            "labels, expected one label per image"
        )
    return images, labels.astype(np.int64)


def bilinear_matrix(in_size, out_size):
    """Return the (out_size, in_size) matrix of bilinear resizing with align_corners=False.

    Matches torch.nn.functional.interpolate(mode="bilinear", align_corners=False), which
    torchvision's Resize uses: output pixel centres map to source = (o + 0.5) * in/out - 0.5,
    clamped at 0, and the two nearest source pixels share the weight linearly.
    """
    source = np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0)
    lower = np.floor(source).astype(np.int64)
    upper = np.minimum(lower + 1, in_size - 1)
    upper_weight = source - lower
    matrix = np.zeros((out_size, in_size))
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, lower), 1.0 - upper_weight)
    np.add.at(matrix, (rows, upper), upper_weight)
    return matrix.astype(np.float32)


BILINEAR_28_TO_32 = bilinear_matrix(IMAGE_SIZE, INPUT_SIZE)


def num_batches(n, batch_size, drop_last):
    """Return how many batches iterate_batches yields for n samples."""
    return n // batch_size if drop_last else -(-n // batch_size)


def resized(raw, mode):
    """Return uint8 (n,28,28) as float32 (n,32,32) on the 0-255 scale, padded or resized."""
    if mode == "bilinear":
        # rows then columns: (32,28) @ (n,28,28) @ (28,32)
        return BILINEAR_28_TO_32 @ raw.astype(np.float32) @ BILINEAR_28_TO_32.T
    # LeNet-5's own way: a 2-pixel zero border around the 28x28 digit
    margin = (INPUT_SIZE - IMAGE_SIZE) // 2
    canvas = np.zeros((len(raw), INPUT_SIZE, INPUT_SIZE), np.float32)
    canvas[:, margin : margin + IMAGE_SIZE, margin : margin + IMAGE_SIZE] = raw
    return canvas


def randomly_flipped(raw, rng):
    """Return raw (n,H,W) with each sample mirrored left-right with probability 0.5."""
    flip = rng.random(len(raw)) < 0.5
    # a boolean-masked copy is 3x faster here than np.where over the whole batch
    flipped = raw.copy()
    flipped[flip] = raw[flip, :, ::-1]
    return flipped


def padded_and_shifted(raw, rng, shift, normalize):
    """uint8 (n,28,28) as the normalised float32 (n,32,32) canvas with a 2-pixel border,
    each sample moved by whole pixels in [-shift, shift] (zero fill, before normalising): what
    resized(raw, "pad"), randomly_translated and normalized make, bit for bit, from the same
    draws, in one pass (a Numba kernel)."""
    from tinyconv.kernels import cpu_augment

    n = len(raw)
    shifts = (rng.integers(-shift, shift + 1, size=(2, n)).T.copy() if shift
              else np.zeros((n, 2), np.int64))
    out = np.empty((n, INPUT_SIZE, INPUT_SIZE), np.float32)
    table = normalized(np.arange(256, dtype=np.float32), normalize)  # each uint8's value
    cpu_augment.pad_shift_normalize(out, np.ascontiguousarray(raw), shifts, table)
    return out


def randomly_translated(canvas, rng, shift):
    """Return canvas (n,S,S) with each sample moved by whole pixels in [-shift, shift], zero fill.

    Gathers every window from a zero-bordered copy with one flat take: output pixel (r, c) of
    sample i reads bordered[i, r + shift - dy_i, c + shift - dx_i], so content moves by +dy, +dx.
    """
    n, size = len(canvas), canvas.shape[1]
    side = size + 2 * shift
    bordered = np.zeros((n, side, side), canvas.dtype)
    bordered[:, shift : shift + size, shift : shift + size] = canvas
    dy, dx = rng.integers(-shift, shift + 1, size=(2, n))
    starts = np.arange(n) * side * side + (shift - dy) * side + (shift - dx)
    window = (np.arange(size)[:, None] * side + np.arange(size)).ravel()
    return bordered.ravel().take(starts[:, None] + window).reshape(n, size, size)


@dataclass(frozen=True)
class Distortions:
    """Random distortions of each sample, drawn per sample: a rotation by up to `rotate`
    degrees, a scaling by a factor within 1 +- `scale`, a shear (x += shear * y) within
    +-`shear`, a shift of up to `translate` pixels per axis (sub-pixel), and with
    elastic_alpha an elastic deformation (Simard et al. 2003: uniform noise per pixel,
    smoothed by a Gaussian of elastic_sigma pixels, scaled by elastic_alpha). All become one
    bilinear warp of the 32x32 canvas with zero fill (tinyconv.kernels.cpu_augment)."""

    rotate: float = 0.0
    scale: float = 0.0
    shear: float = 0.0
    translate: float = 0.0
    elastic_alpha: float = 0.0
    elastic_sigma: float = 0.0

    def __post_init__(self):
        for name, value in vars(self).items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"Distortions: {name} must be a number >= 0, found {value!r}")
        if self.scale >= 1:
            raise ValueError(f"Distortions: scale must be below 1 (factors 1 +- scale), "
                             f"found {self.scale}")
        if (self.elastic_alpha > 0) != (self.elastic_sigma > 0):
            raise ValueError(f"Distortions: an elastic deformation needs both alpha and sigma "
                             f"above 0, found alpha={self.elastic_alpha}, "
                             f"sigma={self.elastic_sigma}")

    def __bool__(self):
        return any(vars(self).values())


def affine_matrices(n, rng, size, distortions):
    """(n, 2, 3) float32 inverse maps, output pixel to source, of n random affine transforms
    about the canvas centre: shear, then scale, then rotation, then the shift."""
    d = distortions
    angle = np.deg2rad(rng.uniform(-d.rotate, d.rotate, n))
    zoom = rng.uniform(1 - d.scale, 1 + d.scale, n)
    shear = rng.uniform(-d.shear, d.shear, n)
    shift = rng.uniform(-d.translate, d.translate, (n, 2))
    # forward (x, y) -> A (x - c, y - c) + c + shift, A = zoom rotation(angle) [[1, shear],
    # [0, 1]]; its inverse in closed form, [[1, -shear], [0, 1]] rotation(-angle) / zoom, and
    # the source of (x, y) is A^-1 (x, y) + c - A^-1 (c + shift)
    cos, sin = np.cos(angle) / zoom, np.sin(angle) / zoom
    maps = np.empty((n, 2, 3))
    maps[:, 0, 0], maps[:, 0, 1] = cos + shear * sin, sin - shear * cos
    maps[:, 1, 0], maps[:, 1, 1] = -sin, cos
    centre = (size - 1) / 2
    moved = centre + shift  # (n, 2): where the centre goes
    maps[:, :, 2] = centre - (maps[:, :, 0] * moved[:, :1] + maps[:, :, 1] * moved[:, 1:])
    return maps.astype(np.float32)


def gaussian_weights(sigma):
    """The normalised Gaussian of sigma, truncated at 3 sigma, as float32 (K,)."""
    radius = max(1, math.ceil(3 * sigma))
    weights = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return (weights / weights.sum()).astype(np.float32)


def elastic_fields(n, rng, size, alpha, sigma):
    """(size, size, n, 2) float32 displacement fields (each sample's dx, dy; batch-last),
    Simard's: uniform noise from a seed the rng draws, smoothed by the Gaussian of sigma,
    times alpha."""
    from tinyconv.kernels import cpu_augment, cpu_blocks

    noise = np.empty((size, size, n, 2), np.float32)
    cpu_blocks.elastic_noise(noise.ravel(), rng.integers(0, 2**32))
    fields, tmp = np.empty_like(noise), np.empty_like(noise)
    maps = (size, size, 2 * n)
    cpu_augment.gaussian_blur(fields.reshape(maps), tmp.reshape(maps), noise.reshape(maps),
                              gaussian_weights(sigma), np.float32(alpha))
    return fields


def distorted(src, rng, distortions, normalize="none"):
    """src (n,H,W), uint8 digits or 0-255 float32 canvases (H, W <= 32, centred), warped by
    per-sample random distortions onto the float32 (n,32,32) canvas (zero fill), then
    normalised ("none": kept on the 0-255 scale), in one kernel pass."""
    from tinyconv.kernels import cpu_augment

    n = len(src)
    matrices = affine_matrices(n, rng, INPUT_SIZE, distortions)
    if distortions.elastic_alpha:
        fields = elastic_fields(n, rng, INPUT_SIZE, distortions.elastic_alpha,
                                distortions.elastic_sigma)
    else:
        fields = np.empty((INPUT_SIZE, INPUT_SIZE, 0, 2), np.float32)
    out = np.empty((n, INPUT_SIZE, INPUT_SIZE), np.float32)
    scale, offset = NORMALIZATIONS[normalize]
    cpu_augment.warp_bilinear(out, np.ascontiguousarray(src), matrices, fields, scale, offset)
    return out


def augmentation(config):
    """(translate, distortions) for iterate_batches from a run's config: --rotate, --scale,
    --shear and --elastic make Distortions, which hold --translate's shifts too, sub-pixel;
    without them a whole --translate stays whole-pixel shifts (the default recipe's, which
    need no warp): (translate, None)."""
    alpha, sigma = config.get("elastic") or (0.0, 0.0)
    distortions = Distortions(rotate=config.get("rotate", 0), scale=config.get("scale", 0),
                              shear=config.get("shear", 0), elastic_alpha=alpha,
                              elastic_sigma=sigma)
    translate = config["translate"]
    if not distortions and float(translate).is_integer():
        return int(translate), None
    return 0, dataclasses.replace(distortions, translate=translate)


# each normalisation as x * scale - offset on the 0-255 scale: (x/255 - mean)/std for
# "standard", x/255 for "unit", x for "none"
NORMALIZATIONS = {"standard": (np.float32(1.0 / (255.0 * MNIST_STD)),
                               np.float32(MNIST_MEAN / MNIST_STD)),
                  "unit": (np.float32(1.0 / 255.0), np.float32(0.0)),
                  "none": (np.float32(1.0), np.float32(0.0))}


def normalized(canvas, mode):
    """Scale a 0-255 float32 canvas in place: "standard", "unit" ([0,1]) or "none"."""
    scale, offset = NORMALIZATIONS[mode]
    canvas *= scale  # a multiply, then a subtraction: two roundings
    canvas -= offset
    return canvas


def prepare_batch(raw, rng, resize, flip, translate, normalize, distortions=None):
    """Turn uint8 (n,28,28) into the float32 (n,1,32,32) network input, augmenting on the way:
    flips, then whole-pixel shifts of up to translate, or the warp of distortions (which
    holds its own, sub-pixel shifts)."""
    if flip:
        raw = randomly_flipped(raw, rng)
    # Fill (padding, translation, warps) happens on raw zeros before normalising, so the
    # border equals the normalised background.
    if distortions:  # one kernel pass from the uint8 digits (padding) or the resized canvas
        src = raw if resize == "pad" else resized(raw, resize)
        return distorted(src, rng, distortions, normalize)[:, None]
    if resize == "pad":  # one kernel pass from the uint8 images
        return padded_and_shifted(raw, rng, translate, normalize)[:, None]
    canvas = resized(raw, resize)
    if translate:
        canvas = randomly_translated(canvas, rng, translate)
    return normalized(canvas, normalize)[:, None]


def is_count(value, minimum):
    """Return whether value is an integer (not a bool) of at least minimum."""
    is_integer = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    return is_integer and value >= minimum


def check_batch_arguments(images, labels, batch_size, resize, translate, normalize):
    """Raise ValueError naming the argument, expected and found, for a bad batching request."""
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"iterate_batches: images must be (N,28,28), got {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"iterate_batches: images must be uint8 (0-255), got {images.dtype}")
    if labels.shape != (len(images),):
        raise ValueError(
            f"iterate_batches: labels must be ({len(images)},) to match images, got {labels.shape}"
        )
    if not is_count(batch_size, 1):
        raise ValueError(f"iterate_batches: batch_size must be an int >= 1, got {batch_size!r}")
    if resize not in RESIZE_MODES:
        raise ValueError(f"iterate_batches: resize must be one of {RESIZE_MODES}, got {resize!r}")
    if not is_count(translate, 0):
        raise ValueError(f"iterate_batches: translate must be an int >= 0, got {translate!r}")
    if normalize not in NORMALIZE_MODES:
        raise ValueError(
            f"iterate_batches: normalize must be one of {NORMALIZE_MODES}, got {normalize!r}"
        )


def iterate_batches(
    images,
    labels,
    batch_size,
    *,
    rng=None,
    shuffle=True,
    drop_last=False,
    resize="pad",
    flip=False,
    translate=0,
    normalize="standard",
    distortions=None,
):
    """Yield (x float32 (n,1,32,32) C-contiguous, y int64 (n,)) batches of uint8 (N,28,28) images.

    rng (numpy Generator, caller-owned; a fresh unseeded one if None) draws the order, flips
    and shifts, so np.random.default_rng([seed, epoch]) replays an epoch exactly.
    resize: "pad" (default) puts a 2-pixel zero border around the digit, as LeNet-5 did;
    "bilinear" resizes 28->32 as torchvision's Resize(32). flip mirrors left-right with
    probability 0.5 per sample; translate=t moves each sample by integers in [-t, t] per axis
    with zero fill. normalize: "standard" (default) is (x/255 - 0.1307)/0.3081, zero-centred
    inputs that suit tanh; "unit" is x/255 as ToTensor; "none" keeps 0-255. distortions (a
    Distortions) warps each sample instead of translate's whole-pixel shifts. Padding and fill
    come before normalising, so they equal the normalised background.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    check_batch_arguments(images, labels, batch_size, resize, translate, normalize)
    if distortions is not None and not isinstance(distortions, Distortions):
        raise ValueError(f"iterate_batches: distortions must be a Distortions or None, got "
                         f"{type(distortions).__name__}")
    rng = np.random.default_rng() if rng is None else rng
    return generate_batches(images, labels, batch_size, rng, shuffle, drop_last, resize, flip,
                            translate, normalize, distortions)


def generate_batches(images, labels, batch_size, rng, shuffle, drop_last, resize, flip,
                     translate, normalize, distortions):
    """Yield the batches of iterate_batches, whose arguments are already checked."""
    order = rng.permutation(len(images)) if shuffle else np.arange(len(images))
    for index in range(num_batches(len(images), batch_size, drop_last)):
        chosen = order[index * batch_size : (index + 1) * batch_size]
        x = prepare_batch(images[chosen], rng, resize, flip, translate, normalize,
                          distortions)
        yield x, labels[chosen].astype(np.int64, copy=False)
