"""The Python API a notebook uses: tinyconv.fit, tinyconv.evaluate, tinyconv.load, and the
example that shows them."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tinyconv as tc
from tinyconv import checkpoint, evaluate, train

QUICK = {"limit_train": 640, "limit_test": 200, "batch_size": 64}
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "notebook.py"


def test_fit_runs_the_clis_loop(tmp_path):
    history = tc.fit(tc.LeNet5(seed=0), epochs=2, run_dir=tmp_path / "fit", quiet=True, **QUICK)
    assert train.main(["--limit-train", "640", "--limit-test", "200", "--batch-size", "64",
                       "--epochs", "2", "--quiet", "--run-dir", str(tmp_path / "cli")]) == 0
    logged = [json.loads(line) for line in (tmp_path / "cli" / "metrics.jsonl").open()]
    assert [{k: v for k, v in m.items() if k != "seconds"} for m in history] == \
        [{k: v for k, v in m.items() if k != "seconds"} for m in logged]
    ours, theirs = (checkpoint.load(tmp_path / name / "last.npz")[0] for name in ("fit", "cli"))
    for name in theirs:
        assert np.array_equal(ours[name], theirs[name]), f"{name} differs"
    # the CLI continues a run that fit started
    assert train.main(["--resume", str(tmp_path / "fit"), "--epochs", "3", "--quiet"]) == 0
    assert checkpoint.load(tmp_path / "fit" / "last.npz")[1]["epoch"] == 3


def test_fit_without_a_run_dir_writes_nothing_and_trains_the_model_given(tmp_path,
                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = tc.nn.Sequential.from_spec(tc.archs.ARCHS["lenet5-bn"], seed=3)
    before = model.state_dict()["backbone.1.running_mean"].copy()
    history = tc.fit(model, epochs=1, quiet=True, optimizer="sgd", momentum=0.9, lr=0.05,
                     **QUICK)
    assert len(history) == 1 and not list(tmp_path.iterdir())
    assert not np.array_equal(model.state_dict()["backbone.1.running_mean"], before)
    assert tc.evaluate(model, limit=200)["accuracy"] == history[0]["test_accuracy"]


@pytest.mark.parametrize("off", [0, None])
def test_a_recipes_moving_average_can_be_turned_off(tmp_path, off):
    model = tc.LeNet5(seed=0)
    tc.fit(model, epochs=1, recipe="best", ema=off, run_dir=tmp_path / "run", quiet=True,
           **QUICK)
    run = checkpoint.load_run(tmp_path / "run" / "last.npz")
    assert run.ema is None and "ema" not in run.header
    for name, value in model.state_dict().items():  # the trained weights, not an average
        assert np.array_equal(run.model.state_dict()[name], value), name


@pytest.mark.parametrize("call, message", [
    (lambda m: tc.fit(m, lrr=0.1), r"fit: unknown settings \['lrr'\]; the settings are "),
    (lambda m: tc.fit(m, arch="lenet5"), r"fit: unknown settings \['arch'\]"),
    (lambda m: tc.fit(m, recipe="fast"),
     r"fit: recipe must be one of default, best, plain, report"),
    (lambda m: tc.fit(m, momentum=0.9), r"fit: momentum: only optimizer sgd takes it"),
    (lambda m: tc.evaluate(m, split="val"), r"evaluate: split must be one of train, test"),
])
def test_bad_calls_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call(tc.LeNet5())


def test_evaluate_is_the_commands_figures(tmp_path, capsys):
    assert train.main(["--limit-train", "640", "--epochs", "1", "--quiet", "--run-dir",
                       str(tmp_path / "run")]) == 0
    model = tc.load(tmp_path / "run")  # a run directory: its best.npz
    result = tc.evaluate(model, limit=500)
    capsys.readouterr()
    assert evaluate.main([str(tmp_path / "run"), "--json", "--limit", "500"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert result["accuracy"] == report["accuracy"] and result["count"] == 500
    assert result["per_class_accuracy"].tolist() == report["per_class_accuracy"]
    assert result["confusion"].tolist() == report["confusion"]
    assert tc.evaluate is evaluate and callable(evaluate)  # the module is the function


def test_the_example_runs(tmp_path):
    assert len(EXAMPLE.read_text().splitlines()) < 15
    done = subprocess.run([sys.executable, str(EXAMPLE), "600"], cwd=tmp_path,
                          capture_output=True, text=True, check=True)
    lines = done.stdout.splitlines()[-3:]  # after the epoch lines, as the CLI prints them
    assert re.fullmatch(r"epoch 2: \d+\.\d\d% test accuracy", lines[0])
    assert re.fullmatch(r"per class:( \d+\.\d%){10}", lines[1])
    run_dir = next((tmp_path / "runs").iterdir())
    assert lines[2].startswith(f"best.npz in runs/{run_dir.name}: ")
    assert (run_dir / "best.npz").exists() and (run_dir / "metrics.jsonl").exists()
