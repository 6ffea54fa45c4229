"""bench/recipes.py's record of a stage: a run of some candidates (--only) keeps the rows of
those run before, in the group's order, each row naming its commit."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import recipes  # noqa: E402


def row(candidate, mean):
    return {"candidate": candidate, "seeds": [0], "epochs": 100, "finals": [mean],
            "mean": mean, "std": 0.0, "minutes": 5.0}


def test_a_stage_record_keeps_the_rows_of_candidates_run_before(tmp_path, monkeypatch):
    path = tmp_path / "val-best.json"
    first, second, third = list(recipes.CANDIDATES["best"])[:3]
    monkeypatch.setattr(recipes, "commit", lambda: "aaaaaaa")
    recipes.record(path, "best", "val", [row(third, 99.48), row(second, 99.46)], "acc", 1)
    monkeypatch.setattr(recipes, "commit", lambda: "bbbbbbb")
    recipes.record(path, "best", "val", [row(first, 99.28), row(third, 99.50)], "acc", 2)
    written = json.loads(path.read_text())
    assert [(r["candidate"], r["mean"], r["commit"], r["threads"]) for r in written["rows"]] == [
        (first, 99.28, "bbbbbbb", 2), (second, 99.46, "aaaaaaa", 1),
        (third, 99.50, "bbbbbbb", 2)]  # the group's order; the rerun's row replaced the old
    assert written["table"].splitlines()[2:] == [
        f"| {first} | 100 | 99.28 ± 0.00 (99.28) | 5.0 |",
        f"| {second} | 100 | 99.46 ± 0.00 (99.46) | 5.0 |",
        f"| {third} | 100 | 99.50 ± 0.00 (99.50) | 5.0 |"]
    assert recipes.chosen(tmp_path, "best") == third
