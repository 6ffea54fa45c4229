"""A run's claimed test accuracy, recounted by torch: python bench/torch_check.py RUN_DIR...

For each run directory (or checkpoint file) of a LeNet-5 run, this reads the final
checkpoint's weights with NumPy alone (the .npz's model/ arrays: the evaluated weights, the
moving average where the run kept one), loads them into the report's PyTorch module
(tests/torch_lenet.py), reads MNIST's 10,000 test images from the IDX files with gzip and
NumPy, prepares them as the run's config says (LeNet's zero padding, standardised inputs) in
torch, and counts the correct predictions in float32 and in float64. Nothing of tinyconv
runs: the figures are torch's own. Each is set beside the test accuracy the run's
metrics.jsonl reported for the same epoch. Prints a Markdown table; --json FILE writes it
with the figures.
"""

import argparse
import gzip
import json
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # bench.common and tests.torch_lenet, from any directory

from bench.common import commit  # noqa: E402

MNIST = REPO_ROOT / "data" / "mnist"
MEAN, STD = 0.1307, 0.3081  # MNIST's training pixels, as torchvision's Normalize examples


def idx_array(path):
    """An IDX file (gzip) as a NumPy array: the magic's last byte is the rank, then the
    big-endian int32 sizes, then uint8 data."""
    raw = gzip.open(path).read()
    rank = raw[3]
    shape = np.frombuffer(raw, ">i4", count=rank, offset=4)
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * rank).reshape(shape)


def torch_inputs(images, config):
    """uint8 (N,28,28) -> float (N,1,32,32) as the run's config prepared them."""
    import torch

    if (config.get("resize"), config.get("normalize")) != ("pad", "standard"):
        raise SystemExit(f"torch_check: only runs with --resize pad --normalize standard are "
                         f"recounted, found {config.get('resize')}, {config.get('normalize')}")
    pixels = torch.from_numpy(images.astype(np.float32))[:, None] / 255
    return torch.nn.functional.pad((pixels - MEAN) / STD, (2, 2, 2, 2), value=-MEAN / STD)


def checkpoint_file(path):
    """A run directory's last.npz, or the checkpoint given."""
    path = Path(path)
    return path / "last.npz" if path.is_dir() else path


def recount(path, images, labels):
    """One run's row: torch's correct predictions in float32 and float64, and the run's own."""
    import torch

    from tests.torch_lenet import LeNet5

    with np.load(checkpoint_file(path), allow_pickle=False) as archive:
        header = json.loads(archive["__header__"].tobytes().decode())
        weights = {name.removeprefix("model/"): torch.from_numpy(archive[name])
                   for name in archive.files if name.startswith("model/")}
    arch = header.get("arch", {}).get("name", "lenet5")  # the network's spec, by its name
    if arch != "lenet5":
        raise SystemExit(f"{path}: a {arch} run; torch_check recounts LeNet-5's")
    module = LeNet5()
    module.load_state_dict(weights)
    inputs = torch_inputs(images, header["config"])
    correct = {}
    with torch.no_grad():
        for dtype in (torch.float32, torch.float64):
            predicted = module.to(dtype)(inputs.to(dtype)).argmax(1).numpy()
            correct[str(dtype).removeprefix("torch.")] = int((predicted == labels).sum())
    run_dir = checkpoint_file(path).parent
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    claimed = next(m["test_accuracy"] for m in logged if m["epoch"] == header["epoch"])
    return {"run": f"{run_dir.name}/{checkpoint_file(path).name}", "epoch": header["epoch"],
            "ema": "ema" in header, "claimed": claimed, **correct}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories or .npz")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the rows here")
    args = parser.parse_args(argv)
    images = idx_array(MNIST / "t10k-images-idx3-ubyte.gz")
    labels = idx_array(MNIST / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    rows = [recount(path, images, labels) for path in args.runs]
    lines = ["| run | epoch | the run's test accuracy | torch float32 | torch float64 |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {row['run']} | {row['epoch']} | {100 * row['claimed']:.2f} | "
              f"{row['float32'] / 100:.2f} | {row['float64'] / 100:.2f} |" for row in rows]
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "commit": commit()}, indent=1) + "\n")
    agree = all(row["float32"] == round(row["claimed"] * len(labels)) for row in rows)
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
