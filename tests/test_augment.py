"""The data pipeline's distortions (tinyconv.kernels.cpu_augment, data.Distortions): each
kernel against its NumPy reference, identity parameters, known transforms, determinism."""

import numba
import numpy as np
import pytest

from tinyconv import data, train
from tinyconv.kernels import cpu_augment, cpu_blocks
from tinyconv.kernels import reference as ref

SIZE = 32
KEEP_SCALE = data.NORMALIZATIONS["none"]  # the warp's scale and offset: values as they are
STRONG = data.Distortions(rotate=15, scale=0.15, shear=0.3, translate=2.5, elastic_alpha=34,
                          elastic_sigma=4)


def canvases(count=5, seed=0):
    """Digits on LeNet's 32x32 canvas, 0-255 float32, as prepare_batch makes them."""
    images, _ = data.load_mnist("test")
    return data.resized(images[seed:seed + count], "pad")


class Extremes:
    """An rng whose uniform draws are all at the top of their range: the transform is known."""

    def uniform(self, low, high, size):
        return np.broadcast_to(np.asarray(high, np.float64), size).copy()


def test_the_warp_matches_its_reference():
    rng = np.random.default_rng(1)
    src = canvases()
    matrices = data.affine_matrices(len(src), rng, SIZE, STRONG)
    fields = data.elastic_fields(len(src), rng, SIZE, 34, 4)
    for with_fields in (None, fields):
        out = np.empty_like(src)
        given = fields if with_fields is not None else np.empty((SIZE, SIZE, 0, 2), np.float32)
        cpu_augment.warp_bilinear(out, src, matrices, given, *KEEP_SCALE)
        expected = ref.warp_bilinear(src, matrices, with_fields)
        assert np.abs(out - expected).max() < 1e-3  # of 255: float32 coordinates
        assert not np.array_equal(out, src)


def test_the_warp_from_the_uint8_digits_pads_and_normalises_as_numpy_does():
    # the training batches' path: straight from the 28x28 digits, the normalisation fused
    images, _ = data.load_mnist("test")
    raw, rng = images[:7], np.random.default_rng(3)
    matrices = data.affine_matrices(len(raw), rng, SIZE, STRONG)
    fields = data.elastic_fields(len(raw), rng, SIZE, 34, 4)
    scale, offset = data.NORMALIZATIONS["standard"]
    out = np.empty((len(raw), SIZE, SIZE), np.float32)
    cpu_augment.warp_bilinear(out, raw, matrices, fields, scale, offset)
    canvas = data.resized(raw, "pad")  # the digits on the 32x32 canvas, 2 pixels of zeros
    expected = ref.warp_bilinear(canvas, matrices, fields) * scale - offset
    assert np.abs(out - expected).max() < 1e-3 * scale * 255
    assert np.abs(out[:, 0, 0] + offset).max() < 1e-6  # the corners: the zero fill, normalised


def test_the_blur_and_the_noise_match_their_references():
    noise = np.empty((SIZE, SIZE, 6), np.float32)
    cpu_blocks.elastic_noise(noise.ravel(), 12345)
    # the same hash, rounded to float32 on the way (the kernel's steps are float32 ones)
    assert np.abs(noise.ravel() - ref.elastic_noise(noise.size, 12345)).max() < 1e-6
    assert -1 <= noise.min() and noise.max() <= 1 and abs(noise.mean()) < 0.05
    weights = data.gaussian_weights(4)
    assert len(weights) == 25 and abs(weights.sum() - 1) < 1e-6
    out, tmp = np.empty_like(noise), np.empty_like(noise)
    cpu_augment.gaussian_blur(out, tmp, noise, weights, np.float32(1))
    assert np.abs(out - ref.gaussian_blur(noise.astype(np.float64), weights)).max() < 1e-6


@numba.njit(fastmath={"contract"}, error_model="numpy")
def blur_one_tap_at_a_time(out, tmp, inp, weights, scale):
    # the blur as it was first written, one tap a pass: the kernel must give its bits
    S, _, M = inp.shape
    R = weights.size // 2
    for source, into, along_x in ((inp, tmp, True), (tmp, out, False)):
        for y in range(S):
            for x in range(S):
                at = x if along_x else y
                into[y, x] = 0
                for k in range(max(0, R - at), min(weights.size, S + R - at)):
                    line = source[y, x + k - R] if along_x else source[y + k - R, x]
                    for i in range(M):
                        into[y, x, i] = into[y, x, i] + weights[k] * line[i]
    out *= scale


@pytest.mark.parametrize("side, sigma, maps", [(32, 4.0, 256), (13, 2.7, 7), (9, 1.0, 33)])
def test_the_blur_gives_the_bits_of_one_tap_at_a_time(side, sigma, maps):
    noise = np.random.default_rng(side).uniform(-1, 1, (side, side, maps)).astype(np.float32)
    weights, alpha = data.gaussian_weights(sigma), np.float32(20)
    out, tmp = np.empty_like(noise), np.empty_like(noise)
    cpu_augment.gaussian_blur(out, tmp, noise, weights, alpha)
    expected, expected_tmp = np.empty_like(noise), np.empty_like(noise)
    blur_one_tap_at_a_time(expected, expected_tmp, noise, weights, alpha)
    assert np.array_equal(tmp, expected_tmp) and np.array_equal(out, expected)


# kernels of fewer taps than the blur's 5 a pass, of a multiple of 5 and not, wider than the
# canvas, at odd canvas sides
@pytest.mark.parametrize("side, sigma", [(32, 4.0), (9, 1.0), (5, 0.3), (4, 7.0), (13, 2.5),
                                         (3, 1.5)])
def test_the_blur_matches_its_reference_at_odd_sizes(side, sigma):
    noise = np.random.default_rng(side).uniform(-1, 1, (side, side, 7)).astype(np.float32)
    weights = data.gaussian_weights(sigma)
    out, tmp = np.full_like(noise, np.nan), np.full_like(noise, np.nan)
    cpu_augment.gaussian_blur(out, tmp, noise, weights, np.float32(2.5))
    expected = 2.5 * ref.gaussian_blur(noise.astype(np.float64), weights.astype(np.float64))
    assert np.abs(out - expected).max() < 1e-5


def test_identity_parameters_give_the_input_back_exactly():
    src = canvases()
    matrices = data.affine_matrices(len(src), np.random.default_rng(0), SIZE,
                                    data.Distortions())
    out = np.empty_like(src)
    cpu_augment.warp_bilinear(out, src, matrices, np.zeros((SIZE, SIZE, len(src), 2),
                                                           np.float32), *KEEP_SCALE)
    assert np.array_equal(out, src)
    assert not data.Distortions()  # and none is no warp at all


def test_known_transforms_move_the_pixels_where_they_should():
    src = canvases(3)
    warp = data.affine_matrices
    # a whole-pixel shift of (+2, +2): zero fill where it came from
    shifted = data.distorted(src, Extremes(), data.Distortions(translate=2))
    assert np.array_equal(shifted[:, 2:, 2:], src[:, :-2, :-2])
    assert not shifted[:, :2].any() and not shifted[:, :, :2].any()
    # a quarter turn about the centre, by the transform's matrix
    quarter = warp(3, Extremes(), SIZE, data.Distortions(rotate=90))
    out = np.empty_like(src)
    cpu_augment.warp_bilinear(out, src, quarter, np.empty((SIZE, SIZE, 0, 2), np.float32),
                              *KEEP_SCALE)
    assert np.abs(out - np.rot90(src, k=-1, axes=(1, 2))).max() < 1e-2
    # scaling by 1 + 0.5 about the centre makes the digit's ink spread wider
    grown = data.distorted(src, Extremes(), data.Distortions(scale=0.5))
    assert (grown > 0).sum() > 1.5 * (src > 0).sum()


def test_a_composed_transform_is_shear_then_scale_then_rotation_then_shift():
    d = data.Distortions(rotate=30, scale=0.2, shear=0.3, translate=1.5)
    angle = np.deg2rad(30)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    forward = rotation @ (1.2 * np.eye(2)) @ np.array([[1, 0.3], [0, 1]])
    centre = np.full(2, (SIZE - 1) / 2)
    matrix = data.affine_matrices(1, Extremes(), SIZE, d)[0]
    for point in ([0.0, 0.0], [31.0, 5.0], [12.5, 20.0]):  # output (x, y) -> its source
        source = matrix[:, :2] @ point + matrix[:, 2]
        moved = forward @ (source - centre) + centre + 1.5  # the source, transformed forward
        assert np.abs(moved - point).max() < 1e-4


def test_elastic_fields_are_the_blurred_noise_times_alpha():
    fields = data.elastic_fields(3, np.random.default_rng(5), SIZE, 20.0, 4.0)
    seed = np.random.default_rng(5).integers(0, 2**32)  # the seed the fields drew
    noise = ref.elastic_noise(SIZE * SIZE * 3 * 2, seed).reshape(SIZE, SIZE, 6)
    expected = 20.0 * ref.gaussian_blur(noise, data.gaussian_weights(4.0).astype(np.float64))
    assert np.abs(fields.reshape(SIZE, SIZE, 6) - expected).max() < 1e-4


def test_a_seed_replays_the_same_distortions_whatever_the_threads():
    images, labels = data.load_mnist("test")
    images, labels = images[:300], labels[:300]

    def batches(threads, seed):
        numba.set_num_threads(threads)
        rng = np.random.default_rng(seed)
        return np.concatenate([x for x, _ in data.iterate_batches(
            images, labels, 128, rng=rng, distortions=STRONG)])

    limit = numba.config.NUMBA_NUM_THREADS
    if limit < 2:
        pytest.skip("needs at least 2 Numba threads to compare 1 against more")
    try:
        first = batches(limit, 7)
        assert np.array_equal(first, batches(1, 7))
        assert not np.array_equal(first, batches(limit, 8))
    finally:
        numba.set_num_threads(limit)


@pytest.mark.parametrize("settings, message", [
    ({"rotate": -1}, "rotate must be a number >= 0"),
    ({"scale": 1.0}, "scale must be below 1"),
    ({"elastic_alpha": 10}, "an elastic deformation needs both alpha and sigma"),
])
def test_bad_distortions_are_named(settings, message):
    with pytest.raises(ValueError, match=message):
        data.Distortions(**settings)


def test_training_with_distortions_resumes_bit_for_bit(tmp_path):
    flags = ["--recipe", "plain", "--limit-train", "384", "--limit-test", "100", "--batch-size",
             "64", "--quiet",
             "--rotate", "10", "--scale", "0.1", "--shear", "0.2", "--translate", "1.5",
             "--elastic", "20,4"]
    assert train.main([*flags, "--epochs", "2", "--run-dir", str(tmp_path / "straight")]) == 0
    assert train.main([*flags, "--epochs", "1", "--run-dir", str(tmp_path / "split")]) == 0
    assert train.main(["--resume", str(tmp_path / "split"), "--epochs", "2", "--quiet"]) == 0
    from tinyconv import checkpoint

    ours, theirs = (checkpoint.load(tmp_path / name / "last.npz") for name in ("straight",
                                                                            "split"))
    for name in ours[0]:
        assert np.array_equal(ours[0][name], theirs[0][name]), name
    assert ours[1]["config"]["elastic"] == [20.0, 4.0] and ours[1]["config"]["translate"] == 1.5
    assert data.augmentation(ours[1]["config"]) == (0, data.Distortions(
        rotate=10, scale=0.1, shear=0.2, translate=1.5, elastic_alpha=20, elastic_sigma=4))
    assert data.augmentation({"translate": 2.0}) == (2, None)  # the plain recipe's shifts


def test_visualize_draws_the_runs_distortions(tmp_path, capsys):
    from PIL import Image

    from tinyconv import visualize

    run = tmp_path / "run"
    assert train.main(["--recipe", "plain",
                       "--limit-train", "128", "--limit-test", "50", "--epochs", "1",
                       "--quiet", "--rotate", "10", "--run-dir", str(run)]) == 0
    assert visualize.main([str(run / "last.npz"), "--out", str(tmp_path / "pictures"),
                           "--augment"]) == 0
    with Image.open(tmp_path / "pictures" / "augment.png") as picture:
        assert picture.size == (720, 520)  # 9 columns, 6 rows of 0.8 inches at 100 dpi
    assert train.main(["--recipe", "plain",
                       "--limit-train", "128", "--limit-test", "50", "--epochs", "1",
                       "--quiet", "--run-dir", str(tmp_path / "plain")]) == 0
    capsys.readouterr()
    assert visualize.main([str(tmp_path / "plain" / "last.npz"), "--out",
                           str(tmp_path / "pictures"), "--augment"]) == 2
    assert "--augment: the run of" in capsys.readouterr().err
