"""bench/infer.py on two small batch sizes: every library answers, the rows and the JSON hold
each size against each peer, and logits that differ stop the bench before any timing."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import infer  # noqa: E402


def test_the_bench_times_each_size_against_each_peer(tmp_path, capsys):
    out = tmp_path / "infer.json"
    infer.main(["--batch-sizes", "1,3", "--rounds", "1", "--threads", "1", "--json", str(out)])
    document = json.loads(out.read_text())
    assert document["header"]["peer"] == "onnxruntime"
    assert "within" in document["header"]["check"]
    rows = document["rows"]
    for peer in ("onnxruntime", "torch"):
        for size in (1, 3):
            mine = [row for row in rows if row["against"] == peer
                    and row["case"].startswith(f"batch {size}")]
            assert {row["unit"] for row in mine} == {"us", "samples/s"}, (peer, size)
            assert all(row["tinyconv"] > 0 and row["peer"] > 0 and row["ratio"] > 0
                       for row in mine)
    printed = capsys.readouterr().out
    assert "| onnxruntime |" in printed and "|       torch |" in printed


class Answers:
    """A worker stand-in: the logits it was given, whatever the batch size."""

    def __init__(self, logits):
        self.logits = logits

    def __call__(self, name, size):
        assert name == "logits"
        return self.logits


def test_different_logits_stop_the_bench():
    logits = np.random.default_rng(0).standard_normal((3, 10)).astype(np.float32)
    workers = {"tinyconv": Answers(logits), "onnxruntime": Answers(logits),
               "torch": Answers(logits * 1.01)}
    with pytest.raises(SystemExit, match="differ from torch's"):
        infer.check_logits(workers, (3,))
    workers["torch"] = Answers(logits + 1e-7)
    errors = infer.check_logits(workers, (3,))
    assert errors["onnxruntime"] == 0 and 0 < errors["torch"] < infer.CHECK_RTOL


def test_the_crossover_bench_times_both_paths_and_names_the_rules_cut(tmp_path, capsys):
    from bench import crossover

    out = tmp_path / "crossover.json"
    crossover.main(["--arch", "lenet5", "--batch-sizes", "1", "3", "--rounds", "1",
                    "--threads", "1", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [row["case"] for row in rows] == ["lenet5, batch 1", "lenet5, batch 3"]
    assert all(row["tinyconv"] > 0 and row["peer"] > 0 and row["unit"] == "us"
               for row in rows)
    from tinyconv import archs

    cut = archs.build("lenet5").eval().samples_below
    assert f"the network's rule hands over at {cut}" in capsys.readouterr().out
