"""tinyconv.data: the bundled MNIST, IDX validation, locating and downloading, batches."""

import ast
import functools
import gzip
import hashlib
import json
import struct
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from tinyconv import data
from tinyconv.data import DataError

TRAIN_IMAGES = "train-images-idx3-ubyte"
TEST_IMAGES, TEST_LABELS = data.SPLIT_FILES["test"]
SYNTHETIC_COUNT = 6
NORMALISED_ZERO = -data.MNIST_MEAN / data.MNIST_STD


# ---------------------------------------------------------------- helpers


def idx_bytes(array, type_code=0x08):
    """Encode array as an IDX file: magic, big-endian sizes, big-endian data."""
    array = np.asarray(array)
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(data.IDX_DTYPES[type_code]).tobytes()


def synthetic_mnist(seed=0):
    """Return {file name: decompressed bytes} of a tiny, structurally valid MNIST look-alike."""
    rng = np.random.default_rng(seed)
    files = {}
    for image_name, label_name in data.SPLIT_FILES.values():
        images = rng.integers(0, 256, (SYNTHETIC_COUNT, 28, 28), dtype=np.uint8)
        files[image_name] = idx_bytes(images)
        files[label_name] = idx_bytes(np.arange(SYNTHETIC_COUNT) % 10)
    return files


def write_files(directory, files, compress=True):
    """Write {name: decompressed bytes} into directory as name.gz (or raw) and return it."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, payload in files.items():
        if compress:
            (directory / f"{name}.gz").write_bytes(gzip.compress(payload))
        else:
            (directory / name).write_bytes(payload)
    return directory


def decoded(path):
    """Return the decompressed contents of a .gz file."""
    return gzip.decompress(Path(path).read_bytes())


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """Point tinyconv's bundled dir and cache into tmp_path; return the cache dir.

    The default mirror becomes a closed local port, so no test can reach the internet.
    """
    monkeypatch.delenv("TINYCONV_DATA", raising=False)
    monkeypatch.setenv("TINYCONV_MNIST_MIRRORS", "http://127.0.0.1:9/")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-home"))
    monkeypatch.setattr(data, "BUNDLED_DIR", tmp_path / "bundled")
    return data.mnist_cache_dir()


@pytest.fixture
def synthetic(monkeypatch):
    """Return synthetic MNIST files and make their MD5s the known checksums."""
    files = synthetic_mnist()
    for name, payload in files.items():
        monkeypatch.setitem(data.MNIST_MD5, name, hashlib.md5(payload).hexdigest())
    return files


@pytest.fixture
def mirrors(tmp_path):
    """Serve tmp_path/www on 127.0.0.1; return (root, base URL, list of requested paths)."""
    root = tmp_path / "www"
    root.mkdir()
    requested = []

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self):
            requested.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            """Keep the test output quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=root))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_port}", requested
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture(scope="module")
def bundled_mnist():
    """Load both bundled splits once, through the checksum-verifying managed path."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("TINYCONV_DATA", raising=False)
        assert data.find_mnist_dir(download=False) == data.BUNDLED_DIR
        return {split: data.load_mnist(split, download=False) for split in ("train", "test")}


# ---------------------------------------------------------------- the bundled files


def test_bundled_mnist_shapes_and_labels(bundled_mnist):
    train_images, train_labels = bundled_mnist["train"]
    test_images, test_labels = bundled_mnist["test"]
    assert train_images.shape == (60000, 28, 28) and test_images.shape == (10000, 28, 28)
    assert train_images.dtype == test_images.dtype == np.uint8
    assert train_labels.dtype == test_labels.dtype == np.int64
    assert train_labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    # Computed once from data/mnist/t10k-labels-idx1-ubyte.gz with
    # np.bincount(np.frombuffer(gzip.open(path).read(), np.uint8, offset=8)).
    test_counts = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert np.bincount(test_labels, minlength=10).tolist() == test_counts


def test_md5sums_file_matches_checksum_table():
    lines = (data.BUNDLED_DIR / "MD5SUMS").read_text().split("\n")
    listed = dict(reversed(line.split()) for line in lines if line)
    assert listed == data.MNIST_MD5


def test_data_module_imports_only_stdlib_numpy_and_tqdm():
    # at its top; the distortions' Numba kernels are imported where a warp is asked for
    tree = ast.parse(Path(data.__file__).read_text())

    def imports(nodes):
        names = {alias.name for node in nodes if isinstance(node, ast.Import)
                 for alias in node.names}
        return names | {node.module for node in nodes if isinstance(node, ast.ImportFrom)}

    def outside(names):
        return {name for name in names if name.split(".")[0] not in sys.stdlib_module_names}

    assert outside(imports(tree.body)) <= {"numpy", "tqdm"}
    assert outside(imports(ast.walk(tree))) <= {"numpy", "tqdm", "tinyconv.kernels"}


# ---------------------------------------------------------------- IDX reading


@pytest.mark.parametrize("type_code", sorted(data.IDX_DTYPES))
@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trips_every_type(tmp_path, type_code, compress):
    values = np.array([[0, 1, 2], [3, 100, 127]])
    if data.IDX_DTYPES[type_code].kind != "u":
        values = values - 50
    if data.IDX_DTYPES[type_code].kind == "f":
        values = values + 0.25
    path = write_files(tmp_path, {"sample": idx_bytes(values, type_code)}, compress)
    found = data.read_idx(next(path.iterdir()), ndim=2)
    assert found.dtype.isnative and found.dtype.kind == data.IDX_DTYPES[type_code].kind
    np.testing.assert_array_equal(found, values)
    # single bytes share the decompressed buffer, wider types are converted: writable both
    assert (found.base is not None) == (data.IDX_DTYPES[type_code].itemsize == 1)
    found[0, 0] = 1
    assert found[0, 0] == 1


def test_a_gz_file_is_decompressed_into_its_arrays_own_memory(tmp_path):
    # 8 MiB of images held once while they load (the compressed file is a few KiB), where
    # decompressing to bytes and then copying them into an array holds them twice
    import tracemalloc

    values = np.resize(np.arange(251, dtype=np.uint8), (128, 256, 256))
    (tmp_path / "images.gz").write_bytes(gzip.compress(idx_bytes(values)))
    tracemalloc.start()
    try:
        found = data.read_idx(tmp_path / "images.gz")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(found, values)
    assert peak < 1.5 * values.nbytes, f"peak {peak / 2**20:.1f} MiB"


def test_a_multi_member_gzip_decompresses_whole(tmp_path):
    # gunzip sizes its buffer from the last member's ISIZE: here smaller than the stream
    values = np.arange(2 * 70, dtype=np.uint8).reshape(2, 70)
    payload = idx_bytes(values)
    (tmp_path / "two.gz").write_bytes(gzip.compress(payload[:100]) + gzip.compress(payload[100:]))
    np.testing.assert_array_equal(data.read_idx(tmp_path / "two.gz"), values)


def replace_file(name, payload=None, raw=None):
    """Return a corruption that rewrites name.gz from decompressed payload or exact raw bytes."""

    def corrupt(directory):
        path = directory / f"{name}.gz"
        path.write_bytes(gzip.compress(payload) if raw is None else raw)

    return corrupt


def edit_file(name, change):
    """Return a corruption that passes name's decompressed bytes through change."""

    def corrupt(directory):
        path = directory / f"{name}.gz"
        path.write_bytes(gzip.compress(change(decoded(path))))

    return corrupt


def edit_gzip(name, change):
    """Return a corruption that passes name.gz's compressed bytes through change."""

    def corrupt(directory):
        path = directory / f"{name}.gz"
        path.write_bytes(change(path.read_bytes()))

    return corrupt


def flip_middle_bytes(raw):
    """Invert 16 bytes in the middle of a gzip stream's compressed data."""
    middle = len(raw) // 2
    return (
        raw[:middle]
        + bytes(byte ^ 0xFF for byte in raw[middle : middle + 16])
        + raw[middle + 16 :]
    )


def delete_labels(directory):
    """Remove the test labels: a directory with three of the four files."""
    (directory / f"{TEST_LABELS}.gz").unlink()


# Each case: how to break a valid synthetic directory, and the message expected.
# 6 images of 28x28 uint8 need 16 + 6*784 = 4720 bytes.
BROKEN_FILES = {
    "wrong magic": (
        edit_file(TEST_IMAGES, lambda b: b"\x01\x02" + b[2:]),
        r"t10k-images-idx3-ubyte\.gz: bad IDX magic, expected first two bytes 0x00 0x00, "
        r"found 0x01 0x02",
    ),
    "bad type code": (
        edit_file(TEST_IMAGES, lambda b: b[:2] + b"\x07" + b[3:]),
        r"t10k-images-idx3-ubyte\.gz: unsupported IDX data type code 0x07, "
        r"expected one of 0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E",
    ),
    "wrong ndim": (
        replace_file(TEST_LABELS, idx_bytes(np.zeros((SYNTHETIC_COUNT, 1), np.uint8))),
        r"t10k-labels-idx1-ubyte\.gz: expected a 1-dimensional array, found 2 dimensions "
        r"\(6, 1\)",
    ),
    "header cut short": (
        replace_file(TEST_IMAGES, bytes([0, 0, 8, 3, 0, 0, 0, 6])),
        r"t10k-images-idx3-ubyte\.gz: header of 3 dimensions needs 16 bytes, found 8",
    ),
    "shorter than the magic": (
        replace_file(TEST_IMAGES, b"\x00\x00"),
        r"t10k-images-idx3-ubyte\.gz: 2 bytes, expected at least the 4-byte IDX magic",
    ),
    "truncated data": (
        edit_file(TEST_IMAGES, lambda b: b[:-10]),
        r"t10k-images-idx3-ubyte\.gz: shape \(6, 28, 28\) of uint8 needs 4720 bytes, "
        r"found 4710 \(truncated\)",
    ),
    "trailing bytes": (
        edit_file(TEST_IMAGES, lambda b: b + b"xyz"),
        r"t10k-images-idx3-ubyte\.gz: shape \(6, 28, 28\) of uint8 needs 4720 bytes, "
        r"found 4723 \(3 trailing bytes\)",
    ),
    "corrupt gzip": (
        edit_gzip(TEST_IMAGES, flip_middle_bytes),
        r"t10k-images-idx3-ubyte\.gz: corrupt gzip stream \(",
    ),
    "truncated gzip": (
        edit_gzip(TEST_IMAGES, lambda raw: raw[: len(raw) // 2]),
        r"t10k-images-idx3-ubyte\.gz: corrupt gzip stream \(Compressed file ended",
    ),
    "not gzip at all": (
        edit_gzip(TEST_IMAGES, gzip.decompress),
        r"t10k-images-idx3-ubyte\.gz: corrupt gzip stream \(Not a gzipped file",
    ),
    "empty file": (
        replace_file(TEST_LABELS, raw=b""),
        r"t10k-labels-idx1-ubyte\.gz: file is empty \(0 bytes\), expected an IDX file",
    ),
    "label out of range": (
        replace_file(TEST_LABELS, idx_bytes(np.array([0, 1, 2, 12, 4, 5]))),
        r"t10k-labels-idx1-ubyte\.gz: expected labels 0-9, found 12 at index 3 "
        r"\(1 out of range\)",
    ),
    "count mismatch": (
        replace_file(TEST_LABELS, idx_bytes(np.arange(SYNTHETIC_COUNT - 1))),
        r"t10k-images-idx3-ubyte\.gz holds 6 images but \S*t10k-labels-idx1-ubyte\.gz "
        r"holds 5 labels, expected one label per image",
    ),
    "images not 28x28": (
        replace_file(TEST_IMAGES, idx_bytes(np.zeros((SYNTHETIC_COUNT, 32, 30), np.uint8))),
        r"t10k-images-idx3-ubyte\.gz: expected 28x28 MNIST images, found 32x30",
    ),
    "not unsigned bytes": (
        replace_file(TEST_IMAGES, idx_bytes(np.zeros((SYNTHETIC_COUNT, 28, 28)), 0x0D)),
        r"t10k-images-idx3-ubyte\.gz: expected IDX type 0x08 \(uint8\) as in MNIST, "
        r"found float32",
    ),
    "missing file": (
        delete_labels,
        r"user \(from the data_dir argument\) lacks t10k-labels-idx1-ubyte, "
        r"expected the four MNIST files there",
    ),
}


@pytest.mark.parametrize("case", BROKEN_FILES)
def test_broken_file_is_reported(isolated, tmp_path, case):
    corrupt, message = BROKEN_FILES[case]
    user_dir = write_files(tmp_path / "user", synthetic_mnist())
    corrupt(user_dir)
    with pytest.raises(DataError, match=message):
        data.load_mnist("test", data_dir=user_dir)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nothing-here\.gz: no such file"):
        data.read_idx(tmp_path / "nothing-here.gz")


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


# ---------------------------------------------------------------- locating and checksums


def test_user_dir_is_checked_for_structure_only(isolated, tmp_path, monkeypatch):
    # Look-alike content under MNIST's names, as Fashion-MNIST ships: no checksum applies.
    files = synthetic_mnist(seed=1)
    user_dir = write_files(tmp_path / "user", files, compress=False)
    images, labels = data.load_mnist("train", data_dir=user_dir)
    assert images.shape == (SYNTHETIC_COUNT, 28, 28) and labels.dtype == np.int64
    monkeypatch.setenv("TINYCONV_DATA", str(user_dir))
    np.testing.assert_array_equal(data.load_mnist("train")[0], images)


@pytest.mark.parametrize("managed", ["bundled", "cache"])
def test_checksum_mismatch_in_managed_dir(isolated, tmp_path, managed):
    files = synthetic_mnist()
    directory = data.BUNDLED_DIR if managed == "bundled" else isolated
    write_files(directory, files)
    found = hashlib.md5(files[TEST_IMAGES]).hexdigest()
    expected = data.MNIST_MD5[TEST_IMAGES]
    message = (
        rf"t10k-images-idx3-ubyte\.gz: MD5 of the decompressed data is {found}, "
        rf"expected {expected}; the file is damaged: delete it and run again"
    )
    with pytest.raises(DataError, match=message):
        data.load_mnist("test", download=False)


def test_explicit_dir_does_not_fall_back(isolated, tmp_path, synthetic, monkeypatch):
    write_files(data.BUNDLED_DIR, synthetic)
    with pytest.raises(DataError, match=r"empty \(from the data_dir argument\) lacks"):
        data.load_mnist("test", data_dir=tmp_path / "empty")
    monkeypatch.setenv("TINYCONV_DATA", str(tmp_path / "empty"))
    with pytest.raises(DataError, match=r"empty \(from TINYCONV_DATA\) lacks"):
        data.load_mnist("test")


def test_bundled_dir_comes_before_cache(isolated, synthetic):
    write_files(data.BUNDLED_DIR, synthetic)
    write_files(isolated, synthetic)
    assert data.find_mnist_dir() == data.BUNDLED_DIR


def test_cache_dir_follows_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.mnist_cache_dir() == tmp_path / "xdg" / "tinyconv" / "mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.mnist_cache_dir() == tmp_path / "home" / ".cache" / "tinyconv" / "mnist"


def test_nothing_found_without_download(isolated):
    with pytest.raises(DataError) as error:
        data.load_mnist("test", download=False)
    message = str(error.value)
    assert f"{data.BUNDLED_DIR}: lacks train-images-idx3-ubyte" in message
    assert f"{isolated}: lacks train-images-idx3-ubyte" in message
    assert "--data-dir" in message and "TINYCONV_DATA" in message
    # what to download: each file at the first mirror (here the isolated one)
    assert "http://127.0.0.1:9/t10k-labels-idx1-ubyte.gz" in message


def test_unknown_split_is_rejected():
    with pytest.raises(ValueError, match=r"split must be one of \['train', 'test'\], got 'val'"):
        data.load_mnist("val")


# ---------------------------------------------------------------- downloading


def publish(root, mirror, files):
    """Put {name: payload} on the local server under /mirror/ as name.gz."""
    write_files(root / mirror, files)


def test_download_lands_in_cache(isolated, synthetic, mirrors, capsys):
    root, base, requested = mirrors
    publish(root, "good", synthetic)
    images, labels = data.load_mnist("test", mirrors=[f"{base}/good/"])
    assert sorted(path.name for path in isolated.iterdir()) == sorted(
        f"{name}.gz" for name in synthetic
    )
    for name, payload in synthetic.items():
        assert decoded(isolated / f"{name}.gz") == payload
    np.testing.assert_array_equal(labels, np.arange(SYNTHETIC_COUNT))
    assert capsys.readouterr().err.count("\n") == 1
    # The cache now answers without another request or message.
    count = len(requested)
    data.load_mnist("test", mirrors=[f"{base}/good/"])
    assert len(requested) == count and capsys.readouterr().err == ""


def tampered(files):
    """Return files with one pixel changed: valid IDX, wrong checksum."""
    changed = bytearray(files[TEST_IMAGES])
    changed[100] ^= 0xFF
    return {**files, TEST_IMAGES: bytes(changed)}


@pytest.mark.parametrize("fault", ["tampered", "truncated", "missing"])
def test_download_falls_back_to_next_mirror(isolated, synthetic, mirrors, fault):
    root, base, requested = mirrors
    publish(root, "good", synthetic)
    (root / "bad").mkdir()
    if fault == "tampered":
        publish(root, "bad", tampered(synthetic))
    if fault == "truncated":
        compressed = gzip.compress(synthetic[TEST_IMAGES])
        (root / "bad" / f"{TEST_IMAGES}.gz").write_bytes(compressed[: len(compressed) // 2])
    data.load_mnist("test", mirrors=[f"{base}/bad", f"{base}/good"])
    assert f"/bad/{TEST_IMAGES}.gz" in requested
    assert requested.index(f"/bad/{TEST_IMAGES}.gz") < requested.index(f"/good/{TEST_IMAGES}.gz")
    assert decoded(isolated / f"{TEST_IMAGES}.gz") == synthetic[TEST_IMAGES]
    assert len(list(isolated.iterdir())) == 4, "a temporary or partial file was left"


def test_download_fetches_only_what_the_cache_lacks(isolated, synthetic, mirrors):
    root, base, requested = mirrors
    publish(root, "good", synthetic)
    write_files(isolated, {name: synthetic[name] for name in data.SPLIT_FILES["test"]})
    data.load_mnist("train", mirrors=[f"{base}/good"])
    assert sorted(requested) == sorted(f"/good/{name}.gz" for name in data.SPLIT_FILES["train"])


def test_all_mirrors_failing_lists_every_place(isolated, synthetic, mirrors):
    root, base, _ = mirrors
    # Files of other content than the (patched) checksum table expects.
    publish(root, "tampered", synthetic_mnist(seed=1))
    urls = [f"{base}/nothing/", f"{base}/tampered/"]
    with pytest.raises(DataError) as error:
        data.load_mnist("test", mirrors=urls)
    message = str(error.value)
    assert f"{data.BUNDLED_DIR}: lacks" in message and f"{isolated}: lacks" in message
    assert f"{base}/nothing/{TRAIN_IMAGES}.gz: HTTP Error 404" in message
    found = hashlib.md5(synthetic_mnist(seed=1)[TRAIN_IMAGES]).hexdigest()
    expected = data.MNIST_MD5[TRAIN_IMAGES]
    assert (
        f"{base}/tampered/{TRAIN_IMAGES}.gz: MD5 of the decompressed data is {found}, "
        f"expected {expected}" in message
    )
    assert "--data-dir" in message and "TINYCONV_DATA" in message
    assert not any(isolated.glob("*")), "nothing may be left in the cache"


def test_mirrors_from_environment(isolated, synthetic, mirrors, monkeypatch):
    root, base, requested = mirrors
    publish(root, "good", synthetic)
    monkeypatch.setenv("TINYCONV_MNIST_MIRRORS", f"{base}/nothing, {base}/good")
    data.load_mnist("test")
    assert requested[:2] == [f"/nothing/{TRAIN_IMAGES}.gz", f"/good/{TRAIN_IMAGES}.gz"]
    assert sorted(requested) == sorted(
        f"/{mirror}/{name}.gz" for mirror in ("nothing", "good") for name in synthetic
    )


# ---------------------------------------------------------------- the other data sets


def gz_files(files):
    """{name: .gz bytes} of {name: decompressed bytes}, reproducibly (no time stamp)."""
    return {name: gzip.compress(payload, mtime=0) for name, payload in files.items()}


@pytest.fixture
def fashion(isolated, mirrors, monkeypatch):
    """Fashion-MNIST look-alikes served on the local mirror as .gz files whose MD5s become
    the data set's published ones: (files, their .gz bytes, its cache, requested paths)."""
    root, base, requested = mirrors
    files = synthetic_mnist(seed=2)
    served = gz_files(files)
    (root / "fashion").mkdir()
    for name, payload in served.items():
        (root / "fashion" / f"{name}.gz").write_bytes(payload)
        monkeypatch.setitem(data.DATASETS["fashion-mnist"].md5, name,
                            hashlib.md5(payload).hexdigest())
    monkeypatch.setenv("TINYCONV_FASHION_MNIST_MIRRORS", f"{base}/fashion")
    return files, served, data.mnist_cache_dir("fashion-mnist"), requested


def test_another_dataset_downloads_into_its_own_cache(fashion, synthetic):
    files, served, cache, requested = fashion
    write_files(data.BUNDLED_DIR, synthetic)  # MNIST's bundled files are not Fashion-MNIST's
    images, labels = data.load_mnist("test", dataset="fashion-mnist")
    assert cache.name == "fashion-mnist" and cache.parent == data.mnist_cache_dir().parent
    assert sorted(requested) == sorted(f"/fashion/{name}.gz" for name in files)
    assert {path.name: path.read_bytes() for path in cache.iterdir()} == {
        f"{name}.gz": payload for name, payload in served.items()}, "stored as served"
    expected = np.frombuffer(files[TEST_IMAGES], np.uint8, offset=16).reshape(-1, 28, 28)
    assert np.array_equal(images, expected)
    assert np.array_equal(labels, np.arange(SYNTHETIC_COUNT) % 10)
    # from the cache now, without the network
    assert np.array_equal(data.load_mnist("test", dataset="fashion-mnist", download=False)[0],
                          expected)


def test_another_dataset_checks_the_published_md5_of_the_gz(fashion, mirrors):
    files, served, cache, _ = fashion
    root, base, _ = mirrors
    other = gz_files(tampered(files))
    (root / "tampered").mkdir()
    for name, payload in other.items():
        (root / "tampered" / f"{name}.gz").write_bytes(payload)
    with pytest.raises(DataError) as error:
        data.load_mnist("test", dataset="fashion-mnist", mirrors=[f"{base}/tampered"])
    found = hashlib.md5(other[TEST_IMAGES]).hexdigest()
    expected = data.DATASETS["fashion-mnist"].md5[TEST_IMAGES]
    assert (f"{base}/tampered/{TEST_IMAGES}.gz: MD5 of the .gz file is {found}, expected "
            f"{expected}") in str(error.value)
    assert "Fashion-MNIST not found" in str(error.value)
    # the good files landed, the bad one did not; a damaged copy in the cache is named, with
    # what to do
    assert sorted(path.name for path in cache.iterdir()) == [f"{TRAIN_IMAGES}.gz",
                                                              "train-labels-idx1-ubyte.gz"]
    for name, payload in {**served, TEST_IMAGES: other[TEST_IMAGES]}.items():
        (cache / f"{name}.gz").write_bytes(payload)
    with pytest.raises(DataError, match=rf"{TEST_IMAGES}.gz: MD5 of the .gz file is {found}, "
                                        rf"expected {expected}; the file is damaged"):
        data.load_mnist("test", dataset="fashion-mnist")


def test_a_raw_copy_of_another_dataset_in_the_cache_is_checked_for_structure(fashion):
    files, _, cache, requested = fashion
    write_files(cache, files, compress=False)  # nobody publishes the raw files' MD5s
    images, _ = data.load_mnist("train", dataset="fashion-mnist")
    assert images.shape == (SYNTHETIC_COUNT, 28, 28) and not requested
    (cache / TEST_IMAGES).write_bytes(files[TEST_IMAGES][:-1])
    with pytest.raises(DataError, match=r"truncated"):
        data.load_mnist("test", dataset="fashion-mnist")


def test_offline_says_what_to_download_and_where(isolated):
    with pytest.raises(DataError) as error:
        data.load_mnist("train", dataset="kmnist", download=False)
    message = str(error.value)
    cache = data.mnist_cache_dir("kmnist")
    assert message.startswith(f"Kuzushiji-MNIST not found; tried:\n  {cache}: lacks")
    assert data.BUNDLED_DIR.name not in message  # only MNIST is bundled
    for name in data.MNIST_MD5:
        assert f"http://codh.rois.ac.jp/kmnist/dataset/kmnist/{name}.gz" in message
    assert f"copy them into {cache}" in message and "TINYCONV_KMNIST_MIRRORS" in message


def test_unknown_dataset_is_named():
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar10', expected one of mnist, "
                                         r"fashion-mnist, kmnist"):
        data.load_mnist("test", dataset="cifar10")


def test_training_on_another_dataset_is_evaluated_on_it(fashion, tmp_path, capsys):
    from tinyconv import checkpoint, evaluate, train

    run = tmp_path / "run"
    assert train.main(["--dataset", "fashion-mnist", "--epochs", "1", "--quiet",
                       "--run-dir", str(run)]) == 0
    assert checkpoint.load(run / "last.npz")[1]["config"]["dataset"] == "fashion-mnist"
    capsys.readouterr()
    assert evaluate.main([str(run / "last.npz"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dataset"] == "fashion-mnist" and report["count"] == SYNTHETIC_COUNT
    assert evaluate.main([str(run / "last.npz")]) == 0
    text = capsys.readouterr().out
    assert "Fashion-MNIST test images 6" in text and "Ankle boot" in text


# ---------------------------------------------------------------- batches


def batch_inputs(count=64, seed=0, margin=0):
    """Return random uint8 images (zero within margin of the edge) and labels 0..count-1."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, 28, 28), np.uint8)
    images[:, margin : 28 - margin, margin : 28 - margin] = rng.integers(
        1, 256, (count, 28 - 2 * margin, 28 - 2 * margin)
    )
    return images, np.arange(count)


def one_batch(images, labels, **options):
    """Return the whole data set as a single batch, in order unless options say otherwise."""
    options = {"shuffle": False, "rng": np.random.default_rng(0), **options}
    return next(data.iterate_batches(images, labels, len(images), **options))


@pytest.mark.parametrize("resize", data.RESIZE_MODES)
def test_batch_shapes_dtypes_and_layout(resize):
    images, labels = batch_inputs(10)
    batches = list(
        data.iterate_batches(
            images,
            labels.astype(np.uint8),
            4,
            resize=resize,
            flip=True,
            translate=2,
            rng=np.random.default_rng(0),
        )
    )
    assert [len(y) for _, y in batches] == [4, 4, 2]
    for x, y in batches:
        assert x.shape == (len(y), 1, 32, 32) and x.dtype == np.float32
        assert x.flags.c_contiguous and y.dtype == np.int64
    assert sorted(np.concatenate([y for _, y in batches]).tolist()) == list(range(10))


@pytest.mark.parametrize(("drop_last", "sizes"), [(False, [4, 4, 2]), (True, [4, 4])])
def test_drop_last(drop_last, sizes):
    images, labels = batch_inputs(10)
    batches = data.iterate_batches(images, labels, 4, drop_last=drop_last)
    assert [len(y) for _, y in batches] == sizes
    assert data.num_batches(10, 4, drop_last) == len(sizes)


def test_same_seed_same_batches_other_seed_other_order():
    images, labels = batch_inputs()
    options = {"flip": True, "translate": 3, "resize": "bilinear"}

    def epoch(seed):
        batches = data.iterate_batches(
            images, labels, 16, rng=np.random.default_rng(seed), **options
        )
        return [(x.copy(), y.copy()) for x, y in batches]

    first, again, other = epoch([7, 0]), epoch([7, 0]), epoch([7, 1])
    for (x1, y1), (x2, y2) in zip(first, again, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    order = np.concatenate([y for _, y in first])
    assert not np.array_equal(order, np.concatenate([y for _, y in other]))
    assert not np.array_equal(order, labels), "shuffle left the order unchanged"


def test_flip_mirrors_some_samples_and_not_the_source():
    images, labels = batch_inputs()
    source = images.copy()
    plain, _ = one_batch(images, labels, normalize="none")
    flipped, _ = one_batch(images, labels, normalize="none", flip=True)
    mirrored = np.array([not np.array_equal(a, b) for a, b in zip(flipped, plain, strict=True)])
    np.testing.assert_array_equal(flipped[mirrored], plain[mirrored][..., ::-1])
    assert 0 < mirrored.sum() < len(images)
    np.testing.assert_array_equal(images, source)


@pytest.mark.parametrize(("shift", "margin"), [(2, 0), (4, 2)])
def test_translate_moves_whole_digits_with_zero_fill(shift, margin):
    # With 2 pixels of padding plus margin >= shift - 2, no content falls off the canvas.
    images, labels = batch_inputs(margin=margin)
    plain, _ = one_batch(images, labels, normalize="none")
    moved, _ = one_batch(images, labels, normalize="none", translate=shift)
    np.testing.assert_array_equal(moved.sum(axis=(1, 2, 3)), plain.sum(axis=(1, 2, 3)))
    offsets = set()
    for before, after in zip(plain[:, 0], moved[:, 0], strict=True):
        matches = [
            (dy, dx)
            for dy in range(-shift, shift + 1)
            for dx in range(-shift, shift + 1)
            if np.array_equal(np.roll(before, (dy, dx), axis=(0, 1)), after)
        ]
        assert matches, "a sample is not a whole-pixel shift of the original"
        offsets.add(matches[0])
    assert len(offsets) > 1


@pytest.mark.parametrize("shift", [0, 1, 3])
@pytest.mark.parametrize("normalize", data.NORMALIZE_MODES)
def test_the_shift_kernel_gives_numpys_padding_shifts_and_normalisation_bit_for_bit(shift,
                                                                                    normalize):
    # padded_and_shifted (one Numba pass, the plain recipe's batches) against the NumPy steps
    # it replaced, from the same draws: runs recorded before it replay unchanged
    raw = batch_inputs()[0]
    fused = data.padded_and_shifted(raw, np.random.default_rng(3), shift, normalize)
    canvas = data.resized(raw, "pad")
    if shift:
        canvas = data.randomly_translated(canvas, np.random.default_rng(3), shift)
    expected = data.normalized(canvas, normalize)
    assert fused.dtype == np.float32 and np.array_equal(fused, expected)


def test_translate_fill_equals_normalised_background():
    images, labels = batch_inputs()
    raw, _ = one_batch(images, labels, normalize="none", translate=2)
    standard, _ = one_batch(images, labels, translate=2)
    # The same rng seed gives the same shifts, so raw zeros mark the padding and the fill.
    assert (raw[:, 0, [0, -1], :] == 0).any()
    np.testing.assert_allclose(standard[raw == 0], NORMALISED_ZERO, atol=1e-6)
    np.testing.assert_allclose(standard, (raw / 255 - data.MNIST_MEAN) / data.MNIST_STD, atol=1e-6)


def test_pad_places_image_in_centre():
    images, labels = batch_inputs()
    x, _ = one_batch(images, labels, normalize="none")
    np.testing.assert_array_equal(x[:, 0, 2:30, 2:30], images)
    x[:, 0, 2:30, 2:30] = 0
    assert not x.any()


def test_normalize_modes():
    images, labels = batch_inputs()
    expected_unit = np.pad(images, ((0, 0), (2, 2), (2, 2)))[:, None] / 255.0
    raw, _ = one_batch(images, labels, normalize="none")
    unit, _ = one_batch(images, labels, normalize="unit")
    standard, _ = one_batch(images, labels)
    np.testing.assert_array_equal(raw[:, 0], np.pad(images, ((0, 0), (2, 2), (2, 2))))
    np.testing.assert_allclose(unit, expected_unit, atol=1e-7)
    expected = (expected_unit - data.MNIST_MEAN) / data.MNIST_STD
    np.testing.assert_allclose(standard, expected, atol=1e-6)
    np.testing.assert_allclose(standard[:, 0, 0, 0], NORMALISED_ZERO, atol=1e-6)


def test_bilinear_matches_torch_interpolate():
    torch = pytest.importorskip("torch")
    images, labels = batch_inputs()
    x, _ = one_batch(images, labels, resize="bilinear", normalize="unit")
    unit = torch.from_numpy(images[:, None].astype(np.float32) / 255)
    expected = torch.nn.functional.interpolate(
        unit, size=(32, 32), mode="bilinear", align_corners=False
    )
    np.testing.assert_allclose(x, expected.numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"resize": "nearest"}, r"resize must be one of \('pad', 'bilinear'\), got 'nearest'"),
        ({"normalize": "max"}, r"normalize must be one of .*, got 'max'"),
        ({"batch_size": 0}, r"batch_size must be an int >= 1, got 0"),
        ({"batch_size": 2.5}, r"batch_size must be an int >= 1, got 2.5"),
        ({"translate": -1}, r"translate must be an int >= 0, got -1"),
        ({"labels": np.arange(5)}, r"labels must be \(10,\) to match images, got \(5,\)"),
        ({"images": np.zeros((10, 32, 32), np.uint8)}, r"images must be \(N,28,28\)"),
        ({"images": np.zeros((10, 28, 28))}, r"images must be uint8 \(0-255\), got float64"),
    ],
)
def test_bad_batch_arguments_fail_at_call(change, message):
    images, labels = batch_inputs(10)
    arguments = {"images": images, "labels": labels, "batch_size": 4, **change}
    with pytest.raises(ValueError, match=f"iterate_batches: {message}"):
        data.iterate_batches(**arguments)
