"""bench/study.py on a tiny slice: its grid, its tuning on the held-out split, resuming, the
summary and the picture."""

import json
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import study  # noqa: E402
from tinyconv import archs  # noqa: E402

TINY = ["--epochs", "2", "--seeds", "1", "--tune-epochs", "1", "--limit-train", "320",
        "--limit-test", "100", "--threads", "1"]


def test_the_grid_is_the_reports_question():
    variants = {variant.name: variant for variant in study.grid()}
    architectures = [v for v in variants.values() if v.group == "architecture"]
    assert len(architectures) == 3 * 2 * 2 + 1  # activation x pooling x batch norm, resnet
    # the named networks are cells of it
    for cell, name in (("tanh-avg", "lenet5"), ("relu-max", "lenet5-relu"),
                       ("relu-max-bn", "lenet5-bn"), ("resnet-mini", "resnet-mini")):
        assert variants[cell].spec["layers"] == archs.ARCHS[name]["layers"]
    kinds = {layer["kind"] for layer in variants["silu-avg-bn"].spec["layers"]}
    assert {"SiLU", "AvgPool2d", "BatchNorm2d", "BatchNorm1d"} <= kinds
    assert "Tanh" not in kinds and "MaxPool2d" not in kinds
    optimizers = [v for v in variants.values() if v.group == "optimizer"]
    assert {v.tuned for v in optimizers} == set(study.TUNING)
    assert all(v.spec is archs.ARCHS["lenet5"] for v in optimizers)


def test_a_slice_trains_summarizes_and_resumes(tmp_path, capsys, monkeypatch):
    out = tmp_path / "study"
    argv = [*TINY, "--only", "tanh-avg", "--only", "relu-max-bn", "--out", str(out)]
    study.main(argv)
    results = json.loads((out / "study.json").read_text())
    assert sorted(results["runs"]) == ["relu-max-bn/seed0", "tanh-avg/seed0"]
    assert results["tuning"] == {}  # no optimizer variant asked for
    for run in results["runs"].values():
        assert [record["epoch"] for record in run["epochs"]] == [1, 2]
        assert all(0 <= record["accuracy"] <= 1 and record["seconds"] > 0
                   for record in run["epochs"])
        assert run["lr"] == study.RECIPE["lr"]
    summary = json.loads((out / "summary.json").read_text())
    rows = {row["variant"]: row for row in summary["rows"]}
    final = results["runs"]["relu-max-bn/seed0"]["epochs"][-1]["accuracy"]
    assert rows["relu-max-bn"]["mean"] == final and rows["relu-max-bn"]["params"] == 62_158
    table = capsys.readouterr().out
    assert f"| relu-max-bn | 0.002 | {100 * final:.2f} ± 0.00" in table
    assert (out / "study.png").stat().st_size > 0  # matplotlib is a test extra

    # a second call finds everything done and trains nothing; a new seed trains one run
    def forbidden(*args):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(study, "train_run", forbidden)
    study.main(argv)
    monkeypatch.undo()
    study.main([*TINY, "--seeds", "2", "--only", "relu-max-bn", "--out", str(out)])
    again = json.loads((out / "study.json").read_text())
    assert sorted(again["runs"]) == ["relu-max-bn/seed0", "relu-max-bn/seed1", "tanh-avg/seed0"]
    assert again["runs"]["tanh-avg/seed0"] == results["runs"]["tanh-avg/seed0"]
    finals = [again["runs"][f"relu-max-bn/seed{seed}"]["epochs"][-1]["accuracy"]
              for seed in (0, 1)]
    row = next(r for r in json.loads((out / "summary.json").read_text())["rows"]
               if r["variant"] == "relu-max-bn")
    assert row["mean"] == pytest.approx(statistics.fmean(finals))
    assert row["std"] == pytest.approx(statistics.stdev(finals))

    # other settings in the same place are refused, naming them
    with pytest.raises(ValueError, match=r"holds a study with other settings \(epochs\)"):
        study.main([*argv, "--epochs", "3"])


def test_an_optimizer_trains_at_the_lr_its_tuning_chose(tmp_path):
    out = tmp_path / "study"
    study.main([*TINY, "--epochs", "1", "--only", "lenet5-adagrad", "--out", str(out)])
    results = json.loads((out / "study.json").read_text())
    tried = {entry["lr"]: entry["accuracy"] for key, entry in results["tuning"].items()
             if key.startswith("adagrad/")}
    assert sorted(tried) == sorted(study.TUNING["adagrad"])
    best = max(tried.values())
    chosen = min(lr for lr, accuracy in tried.items() if accuracy == best)
    assert results["runs"]["lenet5-adagrad/seed0"]["lr"] == chosen


def test_an_unmatched_slice_is_refused():
    with pytest.raises(SystemExit, match=r"--only nothing-\* matches no variant"):
        study.main(["--only", "nothing-*", "--list"])
