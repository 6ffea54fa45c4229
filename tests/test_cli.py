"""python -m tinyconv.train and python -m tinyconv.evaluate, on small slices of MNIST."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tinyconv import checkpoint, evaluate, train
from tinyconv.model import LeNet5

QUICK = ["--limit-train", "640", "--limit-test", "200", "--batch-size", "64", "--quiet"]


def run_train(run_dir, *flags):
    return train.main([*QUICK, "--run-dir", str(run_dir), *flags])


def final_arrays(run_dir):
    arrays, _ = checkpoint.load(run_dir / "last.npz")
    return arrays


def assert_same_arrays(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]), f"{name} differs"


def test_same_seed_same_run_bit_for_bit(tmp_path):
    assert run_train(tmp_path / "a", "--epochs", "1") == 0
    assert run_train(tmp_path / "b", "--epochs", "1") == 0
    assert_same_arrays(final_arrays(tmp_path / "a"), final_arrays(tmp_path / "b"))
    assert run_train(tmp_path / "c", "--epochs", "1", "--seed", "1") == 0
    c = final_arrays(tmp_path / "c")
    assert not np.array_equal(c["model/backbone.0.weight"],
                              final_arrays(tmp_path / "a")["model/backbone.0.weight"])


def test_resume_is_bit_identical_to_a_straight_run(tmp_path):
    flags = ["--lr-step", "1", "--lr-gamma", "0.5"]  # the schedule state must survive too
    assert run_train(tmp_path / "straight", "--epochs", "2", *flags) == 0
    assert run_train(tmp_path / "split", "--epochs", "1", *flags) == 0
    assert train.main(["--resume", str(tmp_path / "split"), "--epochs", "2", "--quiet"]) == 0
    assert_same_arrays(final_arrays(tmp_path / "straight"), final_arrays(tmp_path / "split"))
    log = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").open()]
    assert [m["epoch"] for m in log] == [1, 2] and log[1]["lr"] == log[0]["lr"] / 2
    _, header = checkpoint.load(tmp_path / "split" / "last.npz")
    assert header["epoch"] == 2 and header["adam"]["step"] == 2 * 10


def test_resume_refuses_changed_settings(tmp_path, capsys):
    assert run_train(tmp_path / "run", "--epochs", "1") == 0
    assert train.main(["--resume", str(tmp_path / "run"), "--lr", "0.1"]) == 1
    assert "only --epochs, --threads, --device and --data-dir may change, found ['--lr']" in \
        capsys.readouterr().err


def test_existing_run_is_not_overwritten(tmp_path, capsys):
    assert run_train(tmp_path / "run", "--epochs", "1") == 0
    before = (tmp_path / "run" / "last.npz").read_bytes()
    assert run_train(tmp_path / "run", "--epochs", "1") == 1
    assert "already holds a run" in capsys.readouterr().err
    assert (tmp_path / "run" / "last.npz").read_bytes() == before


def test_checkpoints_hold_everything_and_best_tracks_accuracy(tmp_path):
    assert run_train(tmp_path / "run", "--epochs", "2") == 0
    arrays, header = checkpoint.load(tmp_path / "run" / "last.npz")
    assert {"adam/m", "adam/v", "model/backbone.13.bias"} <= arrays.keys()
    assert header["config"]["limit_train"] == 640 and header["schedule"]["epoch"] == 2
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    best_epoch = max(log, key=lambda m: m["test_accuracy"])["epoch"]
    _, best = checkpoint.load(tmp_path / "run" / "best.npz")
    assert best["epoch"] == best_epoch
    assert not list((tmp_path / "run").glob(".*tmp"))  # no temporary files left behind


def test_nan_loss_stops_with_step_and_keeps_last_checkpoint(tmp_path, capsys, monkeypatch):
    assert run_train(tmp_path / "run", "--epochs", "1") == 0
    kept = (tmp_path / "run" / "last.npz").read_bytes()
    real = LeNet5.loss_and_grads
    calls = []

    def diverging(self, x, y):  # the 4th step of the resumed epoch goes non-finite
        loss, grads = real(self, x, y)
        calls.append(1)
        return (float("nan") if len(calls) == 4 else loss), grads

    monkeypatch.setattr(LeNet5, "loss_and_grads", diverging)
    assert train.main(["--resume", str(tmp_path / "run"), "--epochs", "2", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "loss is nan at epoch 2, step 4 of 10 (update 14 overall)" in err
    assert f"the last good checkpoint, {tmp_path / 'run' / 'last.npz'} (epoch 1), is kept" in err
    assert (tmp_path / "run" / "last.npz").read_bytes() == kept


def test_exploding_lr_stops_before_any_checkpoint(tmp_path, capsys):
    # lr 1e37 throws the weights to about +-1e37 an update: within a few steps the logits
    # overflow float32 and the loss turns NaN
    assert run_train(tmp_path / "run", "--epochs", "1", "--lr", "1e37") == 1
    err = capsys.readouterr().err
    assert re.search(r"loss is (nan|inf) at epoch 1, step [2-9] of 10", err), err
    assert "no checkpoint was written before it" in err


def test_evaluate_reports_accuracy_classes_and_confusion(tmp_path, capsys):
    assert run_train(tmp_path / "run", "--epochs", "1") == 0
    capsys.readouterr()
    assert evaluate.main([str(tmp_path / "run" / "best.npz"), "--limit", "300", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    confusion = np.array(report["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == 300 == report["count"]
    assert report["accuracy"] == pytest.approx(np.trace(confusion) / 300)
    assert len(report["per_class_accuracy"]) == 10
    assert evaluate.main([str(tmp_path / "run" / "best.npz"), "--limit", "300"]) == 0
    text = capsys.readouterr().out
    assert "accuracy" in text and "confusion matrix (rows: true, columns: predicted)" in text


@pytest.mark.parametrize("damage, message", [
    ("missing", "no such checkpoint file"),
    ("truncated", "unreadable checkpoint"),
    ("foreign", "not a tinyconv checkpoint, expected a '__header__' entry"),
    ("text", "unreadable checkpoint"),
])
def test_bad_checkpoints_get_a_clear_error(tmp_path, capsys, damage, message):
    path = tmp_path / "model.npz"
    if damage != "missing":
        assert run_train(tmp_path / "run", "--epochs", "1") == 0
        good = (tmp_path / "run" / "last.npz").read_bytes()
        content = {"truncated": good[:len(good) // 2], "text": b"hello, not a checkpoint\n"}
        if damage == "foreign":
            np.savez(path, weights=np.zeros(3))
        else:
            path.write_bytes(content[damage])
    capsys.readouterr()
    assert evaluate.main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: ") and message in err
    assert "Traceback" not in err


@pytest.mark.parametrize("flags, message", [
    (["--limit", "0"], "--limit must be at least 1, found 0"),
    (["--batch-size", "0"], "--batch-size must be at least 1, found 0"),
])
def test_evaluate_refuses_bad_flags(tmp_path, capsys, flags, message):
    assert evaluate.main([str(tmp_path / "any.npz"), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_import_and_train_never_import_torch(tmp_path):
    code = ("import sys, tinyconv, tinyconv.train, tinyconv.evaluate; "
            f"tinyconv.train.main({[*QUICK, '--epochs', '1', '--run-dir', str(tmp_path)]!r}); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "--epochs must be at least 1, found 0"),
    (["--limit-train", "0"], "--limit-train must be at least 1, found 0"),
    (["--lr", "-1"], "--lr must be positive, found -1.0"),
])
def test_bad_settings_are_refused(tmp_path, capsys, flags, message):
    assert train.main([*flags, "--run-dir", str(tmp_path / "run")]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_help_explains_the_flags():
    out = subprocess.run([sys.executable, "-m", "tinyconv.train", "--help"], check=True,
                         capture_output=True, text=True).stdout
    for flag in ("--recipe", "--epochs", "--batch-size", "--lr", "--lr-step", "--lr-gamma",
                 "--seed", "--threads", "--data-dir", "--run-dir", "--flip", "--translate",
                 "--resize", "--limit-train", "--limit-test", "--resume", "--device"):
        assert flag in out


def test_atomic_write_replaces_whole_and_keeps_the_usual_mode(tmp_path):
    target = tmp_path / "out.bin"
    checkpoint.atomic_write(target, lambda f: f.write(b"old"))

    def fail_midway(file):
        file.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        checkpoint.atomic_write(target, fail_midway)
    assert target.read_bytes() == b"old"  # the failed write left the old file whole
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]  # and no temporary behind
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would, not mkstemp's 0600


def test_unwritable_run_directory_is_a_message_not_a_traceback(tmp_path, capsys):
    (tmp_path / "taken").write_text("a file where the run directory should be")
    code = train.main(["--epochs", "1", "--limit-train", "256", "--limit-test", "100",
                       "--quiet", "--run-dir", str(tmp_path / "taken")])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot make the run directory {tmp_path / 'taken'}: ")


def test_checkpoint_write_failure_stops_with_the_path(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").mkdir()  # a directory where the metrics log should be appended to
    code = train.main(["--epochs", "1", "--limit-train", "256", "--limit-test", "100",
                       "--quiet", "--run-dir", str(run)])
    assert code == 1
    err = capsys.readouterr().err
    assert "error: cannot write epoch 1's results in" in err and "Is a directory" in err
    assert (run / "last.npz").exists()  # what was written before the failure is whole
