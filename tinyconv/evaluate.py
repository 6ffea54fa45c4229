"""Evaluate a checkpoint on the 10,000 MNIST test images: python -m tinyconv.evaluate CKPT.

Prints the accuracy, the per-class accuracy and the confusion matrix (rows: true digit,
columns: predicted digit); --json prints the same as one JSON object for machines; --plots DIR
also draws DIR/confusion.png and DIR/mistakes.png (needs matplotlib).
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from tinyconv import plots
from tinyconv.checkpoint import CheckpointError
from tinyconv.data import DataError, iterate_batches, load_mnist
from tinyconv.interop import (
    CHECKPOINT_HELP,
    TORCH_PREPROCESSING,
    TRUST_PICKLE_HELP,
    MissingDependencyError,
    load_model,
)
from tinyconv.cli import compile_notice, set_threads
from tinyconv.kernels import BACKENDS, DeviceUnavailable
from tinyconv.data import NUM_CLASSES as CLASSES

DEFAULTS = {"batch_size": 1000}


def evaluate(model, images, labels, resize, normalize, batch_size=DEFAULTS["batch_size"]):
    """Mean loss, accuracy, predictions and confusion matrix of a model on uint8 images."""
    predictions = np.empty(len(labels), np.int64)
    loss_sum, start = 0.0, 0
    batches = iterate_batches(images, labels, batch_size, shuffle=False, resize=resize,
                              normalize=normalize)
    notice = compile_notice()
    for x, y in batches:
        loss, logits = model.loss(x, y)
        notice.cancel()  # the first batch has compiled the forward kernels
        loss_sum += loss * len(y)
        predictions[start:start + len(y)] = logits.argmax(axis=1)
        start += len(y)
    confusion = np.zeros((CLASSES, CLASSES), np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    return {"loss": loss_sum / len(labels), "accuracy": float(np.mean(predictions == labels)),
            "predictions": predictions, "confusion": confusion}


def draw_plots(model, images, labels, result, resize, normalize, out_dir, batch_size):
    """Write confusion.png and mistakes.png (with each mistake's probability) to out_dir."""
    wrong = np.flatnonzero(result["predictions"] != labels)
    batches = iterate_batches(images[wrong], labels[wrong], batch_size, shuffle=False,
                              resize=resize, normalize=normalize)
    confidence = np.concatenate([[]] + [model.probabilities(x).max(axis=1) for x, _ in batches])
    return [plots.confusion(result["confusion"], out_dir / "confusion.png"),
            plots.mistakes(images[wrong], labels[wrong], result["predictions"][wrong],
                           confidence, out_dir / "mistakes.png", len(labels))]


def per_class_accuracy(confusion):
    """Fraction of each true class predicted correctly (NaN for a class with no samples)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.diag(confusion) / confusion.sum(axis=1)


def format_report(result, checkpoint_path, count):
    """The human-readable report: accuracy, per-class accuracy, confusion matrix."""
    confusion = result["confusion"]
    lines = [f"checkpoint {checkpoint_path}",
             f"test images {count}   loss {result['loss']:.4f}   "
             f"accuracy {100 * result['accuracy']:.2f}% "
             f"({int(np.trace(confusion))}/{count})",
             "",
             "class  accuracy  count"]
    for digit, acc in enumerate(per_class_accuracy(confusion)):
        lines.append(f"{digit:>5}  {100 * acc:>7.2f}%  {confusion[digit].sum():>5}")
    lines += ["", "confusion matrix (rows: true, columns: predicted)",
              "true " + "".join(f"{p:>6}" for p in range(CLASSES))]
    for digit, row in enumerate(confusion):
        lines.append(f"{digit:>4} " + "".join(f"{c:>6}" for c in row))
    return "\n".join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m tinyconv.evaluate",
        description="Evaluate a tinyconv checkpoint (e.g. runs/NAME/best.npz) on the MNIST "
                    "test set: accuracy, per-class accuracy and the confusion matrix.")
    parser.add_argument("checkpoint", help=CHECKPOINT_HELP)
    parser.add_argument("--trust-pickle", action="store_true", help=TRUST_PICKLE_HELP)
    parser.add_argument("--resize", choices=("pad", "bilinear"), help="28 -> 32 pixels "
                        "(default: the checkpoint's recipe; for a PyTorch file the report's, "
                        f"{TORCH_PREPROCESSING['resize']})")
    parser.add_argument("--normalize", choices=("standard", "unit", "none"), help="pixel "
                        "scaling (default: the checkpoint's recipe; for a PyTorch file the "
                        f"report's, {TORCH_PREPROCESSING['normalize']})")
    parser.add_argument("--data-dir", help="directory holding the MNIST files "
                        "(default: TINYCONV_DATA, the bundled data/mnist, then the cache)")
    parser.add_argument("--limit", type=int, metavar="N",
                        help="evaluate the first N test images only")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"],
                        help="images per forward pass (default %(default)s)")
    parser.add_argument("--threads", type=int, help="Numba threads (default: all cores)")
    parser.add_argument("--device", choices=BACKENDS, default="cpu", help="where the kernels "
                        "run: cpu (default) or cuda, an NVIDIA GPU (pip install 'tinyconv[cuda]')")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.add_argument("--plots", metavar="DIR", type=Path, help="also write DIR/confusion.png "
                        "(row-normalised, counts shown) and DIR/mistakes.png (the misclassified "
                        "digits, most confident first); needs matplotlib")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        for flag, value in (("--limit", args.limit), ("--batch-size", args.batch_size)):
            if value is not None and value < 1:
                raise ValueError(f"{flag} must be at least 1, found {value}")
        set_threads(args.threads)
        model, header = load_model(args.checkpoint, args.trust_pickle)
        model = model.to(args.device)
        images, labels = load_mnist("test", args.data_dir)
    except (CheckpointError, DataError, MissingDependencyError, DeviceUnavailable,
            ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    saved = header["config"] if header else TORCH_PREPROCESSING
    resize, normalize = args.resize or saved["resize"], args.normalize or saved["normalize"]
    if header is None and not (args.resize and args.normalize):
        print(f"note: a PyTorch file records no preprocessing; evaluating with --resize "
              f"{resize} --normalize {normalize} (the report's where not given)",
              file=sys.stderr)
    images, labels = images[:args.limit], labels[:args.limit]
    result = evaluate(model, images, labels, resize, normalize, args.batch_size)
    if args.json:
        confusion = result["confusion"]
        print(json.dumps({"checkpoint": str(args.checkpoint),
                          "epoch": header["epoch"] if header else None,
                          "resize": resize, "normalize": normalize,
                          "count": len(labels), "loss": result["loss"],
                          "accuracy": result["accuracy"],
                          "per_class_accuracy": per_class_accuracy(confusion).tolist(),
                          "confusion": confusion.tolist()}))
    else:
        print(format_report(result, args.checkpoint, len(labels)))
    if args.plots and plots.available("confusion.png or mistakes.png"):
        try:
            paths = draw_plots(model, images, labels, result, resize, normalize, args.plots,
                               args.batch_size)
        except OSError as exc:
            print(f"error: cannot write {args.plots}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        for path in paths:
            print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
