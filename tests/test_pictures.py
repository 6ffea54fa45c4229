"""predict on image files, curves.png from training, evaluate --plots, visualize."""

import json
import sys

import numpy as np
import pytest
from PIL import Image

from tinyconv import digits, evaluate, plots, predict, train, visualize
from tinyconv.checkpoint import save_run
from tinyconv.data import load_mnist
from tinyconv.evaluation import load_classifier, model_inputs
from tinyconv.nn import AvgPool2d, Conv2d, Flatten, Linear, Sequential, Tanh
from tinyconv.optim import Adam, StepLR

REDRAWN = 200
QUICK_TRAIN = ["--recipe", "plain", "--epochs", "1", "--limit-train", "640", "--limit-test", "100"]


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """A briefly trained run: 2 epochs of 16,000 images (250 Adam steps, about 97%)."""
    run = tmp_path_factory.mktemp("pictures") / "run"
    assert train.main(["--recipe", "plain",
                       "--epochs", "2", "--limit-train", "16000", "--limit-test", "1000",
                       "--quiet", "--run-dir", str(run)]) == 0
    return run


@pytest.fixture(scope="session")
def test_digits():
    return load_mnist("test")


def assert_picture(path, inches):
    """A valid PNG of inches * DPI pixels with some drawing in it."""
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == tuple(round(side * plots.DPI) for side in inches)
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    colours, counts = np.unique(pixels, axis=0, return_counts=True)
    assert len(colours) > 10, f"{path}: {len(colours)} colours"
    assert counts.max() < 0.99 * len(pixels), f"{path}: almost all one colour"
    assert not list(path.parent.glob(".*.tmp"))  # written atomically: no temporary left


def redraw(digit, rng, style):
    """An MNIST digit as a user's image: enlarged 2-4x, off-centre on a larger canvas."""
    scale = int(rng.integers(2, 5))
    side = 28 * scale
    enlarged = np.asarray(Image.fromarray(digit).resize((side, side), Image.Resampling.BILINEAR))
    height, width = rng.integers(side + 10, side + 150, size=2)
    top, left = rng.integers(0, height - side), rng.integers(0, width - side)
    canvas = np.zeros((height, width), np.uint8)
    canvas[top:top + side, left:left + side] = enlarged
    if style == "dark-on-light":  # grey pencil on off-white paper
        return Image.fromarray(np.round(235 - canvas * (200 / 255)).astype(np.uint8))
    if style == "light-on-dark":
        return Image.fromarray(canvas)
    ink = np.zeros((height, width, 4), np.uint8)  # dark blue ink, transparent background
    ink[..., :3] = (20, 30, 120)
    ink[..., 3] = canvas
    return Image.fromarray(ink, "RGBA")


@pytest.mark.parametrize("style", ["light-on-dark", "dark-on-light", "ink-on-transparent"])
def test_redrawn_test_digits_are_classified_like_the_originals(
        run_dir, test_digits, tmp_path, capsys, style):
    images, _ = test_digits
    rng = np.random.default_rng(7)
    chosen = rng.choice(len(images), REDRAWN, replace=False)
    model, config = load_classifier(run_dir)
    originals = model.forward(model_inputs(images[chosen], config)).argmax(axis=1)
    paths = []
    for number, index in enumerate(chosen):
        paths.append(tmp_path / f"{number}.png")
        redraw(images[index], rng, style).save(paths[-1])
    assert predict.main([str(run_dir / "best.npz"), *map(str, paths), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [record["file"] for record in report["images"]] == list(map(str, paths))
    top = [record["top"] for record in report["images"]]
    assert all(len(guesses) == 3 and guesses[0]["probability"] >= guesses[1]["probability"]
               for guesses in top)
    agreement = np.mean([guesses[0]["class"] for guesses in top] == originals)
    assert agreement >= 0.95, f"{style}: {agreement:.1%} agree with the original digits"


def test_activations_are_the_layers_outputs_batch_first(run_dir, test_digits):
    model, config = load_classifier(run_dir)
    assert not model.training  # loaded for inference
    x = model_inputs(test_digits[0][:3], config)
    outputs = model.activations(x)
    assert [a.shape for a in outputs[:3]] == [(3, 6, 28, 28)] * 2 + [(3, 6, 14, 14)]
    assert outputs[9].shape == (3, 120, 1, 1) and outputs[10].shape == (3, 120)
    # forward takes the small-batch kernel at 3 images: the same logits to float32 rounding
    logits = model.forward(x)
    assert np.abs(outputs[-1] - logits).max() <= 2e-5 * np.abs(logits).max()
    assert np.allclose(model.probabilities(x).sum(axis=1), 1.0)
    assert np.array_equal(model.probabilities(x).argmax(axis=1), outputs[-1].argmax(axis=1))


def test_ink_polarity_comes_from_the_border_even_for_a_bold_digit():
    gray = np.full((40, 40), 250.0)
    gray[3:37, 3:37] = 10.0  # a dark block covering most of the image, light border
    ink = digits.ink_of(gray, "bold.png")
    assert ink[20, 20] == 1.0 and ink[0, 0] == 0.0
    assert ink.max() == 1.0 and ink[ink > 0].min() >= digits.NOISE_FLOOR


def test_centred_digit_fits_20x20_and_centres_the_mass():
    ink = np.zeros((300, 500))
    ink[40:240, 300:340] = 1.0  # a tall bar far off-centre
    digit = digits.centred_digit(ink)
    rows, cols = np.flatnonzero(digit.any(axis=1)), np.flatnonzero(digit.any(axis=0))
    assert rows[-1] - rows[0] + 1 == digits.FIT_SIZE and cols[-1] - cols[0] + 1 <= 6
    centre = [(axis * digit).sum() / digit.sum() for axis in np.indices(digit.shape)]
    assert np.allclose(centre, digits.CENTRE, atol=0.5), centre


def test_bad_files_get_their_messages_while_the_others_are_classified(
        run_dir, test_digits, tmp_path, capsys):
    images, labels = test_digits
    good = tmp_path / "good.png"
    Image.fromarray(255 - images[0]).save(good)
    good_jpeg, good_16_bit = tmp_path / "good.jpg", tmp_path / "good16.png"
    Image.fromarray(255 - images[0]).save(good_jpeg, quality=85)
    Image.fromarray(images[0].astype(np.uint16) * 257).save(good_16_bit)
    blank = tmp_path / "blank.png"
    Image.new("L", (64, 48), 200).save(blank)
    clear = tmp_path / "clear.png"
    Image.new("RGBA", (32, 32), (0, 0, 0, 0)).save(clear)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(good.read_bytes()[:60] + b"\x00garbage" * 20)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.bmp"
    files = [blank, good, corrupt, good_jpeg, clear, empty, good_16_bit, missing]
    assert predict.main([str(run_dir), *map(str, files), "--save-inputs",
                         str(tmp_path / "inputs")]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        f"{path}: {labels[0]}" for path in (good, good_jpeg, good_16_bit)]
    errors = captured.err.splitlines()
    assert errors == [
        f"error: {blank}: no digit found, the image is blank (every pixel lies within 0 of "
        f"255 grey levels of the background 200; expected ink at least "
        f"{digits.BLANK_LEVELS} levels off it)",
        errors[1],
        f"error: {clear}: no digit found, every pixel is fully transparent",
        f"error: {empty}: file is empty (0 bytes), expected an image (PNG, JPEG, BMP)",
        f"error: {missing}: no such file",
    ]
    assert errors[1].startswith(f"error: {corrupt}: unreadable image, expected PNG, JPEG, BMP")
    with Image.open(tmp_path / "inputs" / "2-good.png.mnist.png") as seen:  # good is 2nd
        assert seen.size == (28, 28)
        assert np.abs(np.asarray(seen, int) - images[0]).mean() < 10  # close to the original


def test_saved_inputs_of_same_named_images_stay_apart(run_dir, test_digits, tmp_path):
    images, _ = test_digits
    files = [tmp_path / folder / "1.png" for folder in ("a", "b")]
    for file, digit in zip(files, images[:2], strict=True):
        file.parent.mkdir()
        Image.fromarray(digit).save(file)
    assert predict.main([str(run_dir), *map(str, files), "--save-inputs",
                         str(tmp_path / "inputs")]) == 0
    saved = sorted(path.name for path in (tmp_path / "inputs").iterdir())
    assert saved == ["1-1.png.mnist.png", "2-1.png.mnist.png"]
    for name, digit in zip(saved, images[:2], strict=True):
        with Image.open(tmp_path / "inputs" / name) as seen:
            assert np.abs(np.asarray(seen, int) - digit).mean() < 10, name


def test_predict_without_pillow_says_how_to_install_it(run_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL now raises ImportError
    assert predict.main([str(run_dir), str(tmp_path / "any.png")]) == 2
    err = capsys.readouterr().err
    assert "reading images needs Pillow" in err and "tinyconv[pictures]" in err


def test_training_draws_curves_png(run_dir):
    assert_picture(run_dir / "curves.png", plots.INCHES["curves"])


def test_evaluate_plots_confusion_and_mistakes(run_dir, tmp_path, capsys):
    out = tmp_path / "plots"
    assert evaluate.main([str(run_dir / "best.npz"), "--limit", "1000", "--json",
                          "--plots", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)  # stdout stays pure JSON
    wrong = report["count"] - np.trace(report["confusion"])
    assert wrong > 0
    assert_picture(out / "confusion.png", plots.INCHES["confusion"])
    assert_picture(out / "mistakes.png", plots.mistakes_inches(wrong))


def feature_maps_inches(model, digit, config):
    """The size feature_maps.png of this model and digit must have: a row for the input and
    for each shown layer."""
    x = model_inputs(digit[None], config)
    return plots.feature_maps_inches([x.shape[1:], *(np.shape(values) for _, values in
                                                     visualize.feature_rows(model, x))])


@pytest.mark.parametrize("source", ["test image", "own image"])
def test_visualize_draws_filters_and_feature_maps(run_dir, test_digits, tmp_path, capsys,
                                                  source):
    flags = ["--index", "3"]
    if source == "own image":
        Image.fromarray(255 - test_digits[0][3]).save(tmp_path / "mine.png")
        flags = ["--image", str(tmp_path / "mine.png")]
    assert visualize.main([str(run_dir), *flags, "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.count("wrote") == 2
    assert_picture(tmp_path / "out" / "filters.png", plots.filters_inches(6))
    model, config = load_classifier(run_dir)
    assert_picture(tmp_path / "out" / "feature_maps.png",
                   feature_maps_inches(model, test_digits[0][3], config))


def test_lenet_rows_are_each_stage_after_its_activation(run_dir):
    model, _ = load_classifier(run_dir)
    assert visualize.shown_layers(model) == [
        (1, "Conv2d + Tanh"), (3, "AvgPool2d + Tanh"), (5, "Conv2d + Tanh"),
        (7, "AvgPool2d + Tanh"), (9, "Conv2d + Tanh"), (12, "Linear + Tanh")]


def custom_checkpoint(path, layers):
    """A Sequential of these layers on MNIST's input, saved as a run checkpoint."""
    model = Sequential(*layers, input_shape=(1, 32, 32), seed=3)
    opt = Adam(model)
    config = {"seed": 3, "lr_step": 1, "lr_gamma": 0.5, "resize": "pad",
              "normalize": "standard", "recipe": "custom"}
    save_run(path, model, opt, StepLR(opt, 1, 0.5), {"epoch": 1, "config": config})
    return model


def test_visualize_follows_the_layers_of_any_network(test_digits, tmp_path, capsys):
    # the first Conv2d at index 1, a pooled input outside [-1, 1], 4 classes
    model = custom_checkpoint(tmp_path / "custom.npz", [
        AvgPool2d(2), Conv2d(1, 4, 3), Tanh(), AvgPool2d(2), Flatten(), Linear(4 * 7 * 7, 4)])
    assert visualize.shown_layers(model) == [(0, "AvgPool2d"), (2, "Conv2d + Tanh"),
                                             (3, "AvgPool2d")]
    out = tmp_path / "out"
    assert visualize.main([str(tmp_path / "custom.npz"), "--index", "0", "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("wrote") == 2
    assert_picture(out / "filters.png", plots.filters_inches(4))
    config = {"resize": "pad", "normalize": "standard"}
    assert_picture(out / "feature_maps.png", feature_maps_inches(model, test_digits[0][0],
                                                                 config))


def test_visualize_without_a_conv_layer_says_so(tmp_path, capsys):
    custom_checkpoint(tmp_path / "linear.npz", [Flatten(), Linear(32 * 32, 10)])
    out = tmp_path / "out"
    assert visualize.main([str(tmp_path / "linear.npz"), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"wrote {out / 'feature_maps.png'}\n"
    assert captured.err == (f"note: the network has no Conv2d layer, so no "
                            f"{out / 'filters.png'} is drawn\n")
    assert not (out / "filters.png").exists()


def test_commands_refuse_a_network_that_does_not_take_mnist(tmp_path, capsys):
    custom_checkpoint(tmp_path / "maps.npz", [Conv2d(1, 2, 5)])  # maps out, no class scores
    for command, argv in ((evaluate, []), (predict, ["any.png"]), (visualize, ["--out", "x"])):
        assert command.main([str(tmp_path / "maps.npz"), *argv]) == 2
        assert capsys.readouterr().err == (
            f"error: {tmp_path / 'maps.npz'}: expected a network from digits (N, 1, 32, 32) "
            "to class scores (N, classes), found one from (N, 1, 32, 32) to (N, 2, 28, 28)\n")


def test_activation_colours_are_tanh_s_range_unless_the_values_leave_it():
    inside = [np.array([-0.5, 0.9]), np.zeros((2, 3, 3))]
    assert plots.activation_limit(inside) == 1.0
    assert plots.activation_limit([*inside, np.array([[-2.5]])]) == 2.5
    assert plots.activation_limit([]) == 1.0


@pytest.mark.parametrize("count, rows, columns", [(1, 1, 1), (6, 1, 6), (16, 2, 8),
                                                  (84, 5, 17), (120, 5, 24)])
def test_grids_are_about_four_times_as_wide_as_tall(count, rows, columns):
    assert plots.grid(count) == (rows, columns)


def test_without_matplotlib_runs_go_on_with_a_one_line_message(run_dir, tmp_path, capsys,
                                                                monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    message = "matplotlib is not installed, so no {} is drawn (pip install 'tinyconv[pictures]')"
    assert train.main([*QUICK_TRAIN, "--run-dir", str(tmp_path / "run")]) == 0
    assert f"tinyconv: {message.format('curves.png')}" in capsys.readouterr().err.splitlines()
    assert train.main([*QUICK_TRAIN, "--quiet", "--run-dir", str(tmp_path / "quiet")]) == 0
    assert capsys.readouterr().err == ""  # --quiet: not even that line
    assert (tmp_path / "quiet" / "best.npz").exists()
    assert not (tmp_path / "quiet" / "curves.png").exists()
    assert evaluate.main([str(run_dir), "--limit", "100", "--plots", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "accuracy" in captured.out
    assert captured.err == f"tinyconv: {message.format('confusion.png or mistakes.png')}\n"
    assert visualize.main([str(run_dir), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: {message.format('picture')}\n"
    assert not list(tmp_path.glob("*.png"))


# ---- where a picture cannot be written


def regular_file(path):
    """A regular file at path, standing where a directory should be."""
    path.write_text("a regular file\n")
    return path


def test_unwritable_saved_input_gets_one_line_and_status_2(run_dir, test_digits, tmp_path,
                                                           capsys):
    Image.fromarray(test_digits[0][0]).save(tmp_path / "seven.png")
    inputs = regular_file(tmp_path / "inputs")
    assert predict.main([str(run_dir), str(tmp_path / "seven.png"), "--save-inputs",
                         str(inputs)]) == 2
    assert capsys.readouterr().err == (f"error: cannot write {inputs}/1-seven.png.mnist.png: "
                                       "File exists\n")


def test_visualize_out_on_a_file_gets_one_line_and_status_2(run_dir, tmp_path, capsys):
    out = regular_file(tmp_path / "out")
    assert visualize.main([str(run_dir), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: cannot write {out}: File exists\n" and not captured.out


def test_evaluate_plots_on_a_file_gets_one_line_and_status_2(run_dir, tmp_path, capsys):
    out = regular_file(tmp_path / "plots")
    assert evaluate.main([str(run_dir), "--limit", "100", "--plots", str(out)]) == 2
    captured = capsys.readouterr()
    assert "accuracy" in captured.out  # the report comes first
    assert captured.err == f"error: cannot write {out}: File exists\n"


@pytest.mark.parametrize("failure, reason", [
    ("a directory named curves.png", "Is a directory"),
    ("matplotlib raising", "ValueError: cannot lay out this figure"),
])
def test_curves_that_cannot_be_drawn_never_stop_training(tmp_path, capsys, monkeypatch, failure,
                                                         reason):
    run = tmp_path / "run"
    if failure.startswith("a directory"):
        (run / "curves.png").mkdir(parents=True)
    else:
        def broken(*_):
            raise ValueError("cannot lay out\nthis figure")

        monkeypatch.setattr(plots, "curves", broken)
    assert train.main([*QUICK_TRAIN, "--epochs", "2", "--quiet", "--run-dir", str(run)]) == 0
    warning = f"warning: cannot draw {run / 'curves.png'}: {reason}; training goes on"
    assert capsys.readouterr().err.splitlines() == [warning] * 2  # one each epoch
    assert len(plots.read_metrics(run / "metrics.jsonl")) == 2 and (run / "last.npz").exists()


@pytest.mark.parametrize("every, drawn", [(0.0, [1, 2, 3, 4, 5, 6]), (1e9, [1, 4, 5, 6])])
def test_curves_are_redrawn_after_the_first_and_last_epoch_and_every_so_often(
        tmp_path, monkeypatch, every, drawn):
    # each drawing's epoch count read from the metrics it drew: with CURVES_EVERY 0 after every
    # epoch, with a day-long one after the first and the last only, and again after the first
    # epoch of a resumed run (its picture catches up)
    pytest.importorskip("matplotlib")  # without it training draws nothing
    epochs = []
    monkeypatch.setattr(train, "CURVES_EVERY", every)
    monkeypatch.setattr(train, "redraw_curves", lambda run: epochs.append(
        len(plots.read_metrics(run / "metrics.jsonl"))))
    run = str(tmp_path / "run")
    assert train.main(["--recipe", "plain",
                       "--epochs", "4", "--limit-train", "256", "--limit-test", "64", "--quiet",
                       "--run-dir", run]) == 0
    assert train.main(["--resume", run, "--epochs", "6", "--quiet"]) == 0
    assert epochs == drawn


def test_evaluate_needs_a_score_per_digit(tmp_path, capsys):
    # visualize and predict show a 4-class network's guesses; evaluate meets labels up to 9
    path = tmp_path / "four.npz"
    custom_checkpoint(path, [Flatten(), Linear(32 * 32, 4)])
    assert evaluate.main([str(path), "--limit", "20"]) == 2
    assert capsys.readouterr().err == (f"error: {path}: MNIST's labels need 10 class scores, "
                                       "the network gives 4\n")
