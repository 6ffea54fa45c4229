"""bench/train.py: the flops it credits a training step with are torch's own count, and one
short run times every batch size and reports its GFLOP/s and share of the FMA peak it
measured, each row consistent with the others."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from bench import train as bench_train  # noqa: E402
from tinyconv import archs, interop, nn  # noqa: E402

# networks whose first layers have no parameters, or sit in a residual block: no gradient
# reaches them, so only the first layer with parameters goes without its dinp
LEADING = {
    "tanh-flatten-linear": [nn.Tanh(), nn.Flatten(), nn.Linear(1024, 10)],
    "maxpool-conv-linear": [nn.MaxPool2d(2), nn.Conv2d(1, 4, 3), nn.Flatten(),
                            nn.Linear(4 * 14 * 14, 10)],
    "residual-first": [nn.Residual(nn.Conv2d(1, 1, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(1, 1, 3, padding=1)),
                       nn.Conv2d(1, 2, 5), nn.Flatten(), nn.Linear(2 * 28 * 28, 10)],
    "batchnorm-first": [nn.BatchNorm2d(1), nn.Conv2d(1, 2, 5), nn.Flatten(),
                        nn.Linear(2 * 28 * 28, 10)],
    "bare-residual-first": [nn.Residual(nn.ReLU()), nn.Conv2d(1, 2, 5), nn.Flatten(),
                            nn.Linear(2 * 28 * 28, 10)],
}


@pytest.mark.parametrize("arch", ["lenet5", "lenet5-bn", "resnet-mini", *LEADING])
def test_a_steps_flops_are_those_torch_counts(arch):
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode

    spec = archs.spec_of(arch, LEADING[arch]) if arch in LEADING else archs.find_spec(arch)
    module = interop.torch_module(spec)
    x, y = torch.randn(6, 1, 32, 32), torch.arange(6) % 10
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(module(x), y).backward()
    model = archs.build(spec)
    assert common.train_step_flops(model.layers, model.input_shape, 6) == (
        counter.get_total_flops())


def test_the_bench_reports_each_batch_size_against_the_measured_peak(tmp_path):
    out = tmp_path / "train.json"
    bench_train.main(["--batch-size", "16", "8", "--infer-batch-size", "16", "--rounds", "1",
                      "--steps", "1", "--epoch-rounds", "0", "--skip-subprocess",
                      "--json", str(out)])
    rows = {(row["case"], row["shape"], row["unit"]): row
            for row in json.loads(out.read_text())["rows"]}
    (peak,) = [row["tinyconv"] for (case, _, _), row in rows.items()
               if case == "FMA peak, register-only loop"]
    assert peak > 0
    model = archs.build(archs.find_spec("lenet5"))
    for size in (16, 8):
        shape = f"{size}x1x32x32"
        median = rows[("train step, median", shape, "ms")]
        rate = rows[("train step", shape, "GFLOP/s")]
        share = rows[("train step, share of FMA peak", shape, "% of peak")]
        gflop = common.train_step_flops(model.layers, model.input_shape, size) / 1e9
        for side in ("tinyconv", "peer"):
            assert rate[side] == pytest.approx(gflop / (median[side] / 1e3))
            assert share[side] == pytest.approx(100 * rate[side] / peak)
        assert share["ratio"] == pytest.approx(median["peer"] / median["tinyconv"])
    assert ("inference", "16x1x32x32", "samples/s") in rows
