"""bench/recipes.py's record of a stage: a run of some candidates (--only) keeps the rows of
those run before, in the group's order, each row naming its commit; the validation stage's
choice counts only rows of the group's candidates run with all of its seeds."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import recipes  # noqa: E402


def row(candidate, mean, seeds=(0, 1)):
    return {"candidate": candidate, "seeds": list(seeds), "epochs": 100,
            "finals": [mean] * len(seeds), "mean": mean, "std": 0.0, "minutes": 5.0,
            "threads": [1] * len(seeds)}


def test_a_stage_record_keeps_the_rows_of_candidates_run_before(tmp_path, monkeypatch):
    path = tmp_path / "val-best.json"
    first, second, third = list(recipes.CANDIDATES["best"])[:3]
    monkeypatch.setattr(recipes, "commit", lambda: "aaaaaaa")
    recipes.record(path, "best", "val", [row(third, 99.48), row(second, 99.46)], "acc")
    monkeypatch.setattr(recipes, "commit", lambda: "bbbbbbb")
    recipes.record(path, "best", "val", [row(first, 99.28), row(third, 99.50)], "acc")
    written = json.loads(path.read_text())
    assert [(r["candidate"], r["mean"], r["commit"]) for r in written["rows"]] == [
        (first, 99.28, "bbbbbbb"), (second, 99.46, "aaaaaaa"),
        (third, 99.50, "bbbbbbb")]  # the group's order; the rerun's row replaced the old
    mean = "99.28 ± 0.00 (99.28, 99.28)"
    assert written["table"].splitlines()[2] == f"| {first} | 100 | {mean} | 5.0 |"
    assert recipes.chosen(tmp_path, "best") == third


def test_the_choice_counts_whole_rows_of_the_groups_candidates(tmp_path):
    first, second = list(recipes.CANDIDATES["best"])[:2]
    rows = [row(first, 99.40), row(second, 99.70, seeds=(0,)),  # one lucky seed
            row("removed-since", 99.90)]  # no longer a candidate: it cannot be run
    recipes.record(tmp_path / "val-best.json", "best", "val", rows, "acc")
    assert recipes.chosen(tmp_path, "best") == first
    recipes.record(tmp_path / "val-best.json", "best", "val", [row(first, 99.4, (0,))], "acc")
    with pytest.raises(SystemExit, match="no candidate of best was run with seeds 0, 1"):
        recipes.chosen(tmp_path, "best")


def test_an_unknown_candidate_is_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        recipes.main(["--group", "best", "--stage", "val", "--only", "elastic-ema-l-100",
                      "--out", str(tmp_path)])
    assert stopped.value.code == 2
    assert "--only: best has no candidate elastic-ema-l-100" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # before any run
