"""Evaluate a checkpoint on the 10,000 test images of MNIST (or of the data set it was trained
on): python -m tinyconv.evaluate CKPT.

Prints the accuracy, the per-class accuracy and the confusion matrix (rows: true class,
columns: predicted class); --json prints the same as one JSON object for machines; --plots DIR
also draws DIR/confusion.png and DIR/mistakes.png (needs matplotlib).
"""

import json
import sys
from pathlib import Path

import numpy as np

from tinyconv import cli, plots
from tinyconv.data import DATASETS, iterate_batches, load_mnist
from tinyconv.evaluation import BATCH_SIZE, evaluate, per_class_accuracy


def draw_plots(model, images, labels, result, resize, normalize, out_dir, batch_size):
    """Write confusion.png and mistakes.png (with each mistake's probability) to out_dir."""
    wrong = np.flatnonzero(result["predictions"] != labels)
    batches = iterate_batches(images[wrong], labels[wrong], batch_size, shuffle=False,
                              resize=resize, normalize=normalize)
    confidence = np.concatenate([[]] + [model.probabilities(x).max(axis=1) for x, _ in batches])
    return [plots.confusion(result["confusion"], out_dir / "confusion.png"),
            plots.mistakes(images[wrong], labels[wrong], result["predictions"][wrong],
                           confidence, out_dir / "mistakes.png", len(labels))]


def format_report(result, checkpoint_path, dataset, count):
    """The human-readable report: accuracy, per-class accuracy, confusion matrix."""
    confusion = result["confusion"]
    lines = [f"checkpoint {checkpoint_path}",
             f"{DATASETS[dataset].title} test images {count}   loss {result['loss']:.4f}   "
             f"accuracy {100 * result['accuracy']:.2f}% "
             f"({int(np.trace(confusion))}/{count})",
             "",
             "class  accuracy  count"]
    names = DATASETS[dataset].classes
    for digit, acc in enumerate(per_class_accuracy(confusion)):
        meaning = f"  {names[digit]}" if digit < len(names) and names[digit] != str(digit) else ""
        lines.append(f"{digit:>5}  {100 * acc:>7.2f}%  {confusion[digit].sum():>5}{meaning}")
    lines += ["", "confusion matrix (rows: true, columns: predicted)",
              "true " + "".join(f"{p:>6}" for p in range(len(confusion)))]
    for digit, row in enumerate(confusion):
        lines.append(f"{digit:>4} " + "".join(f"{c:>6}" for c in row))
    return "\n".join(lines)


def parser():
    parser = cli.parser(
        "python -m tinyconv.evaluate",
        "Evaluate a tinyconv checkpoint (e.g. runs/NAME/best.npz) on the MNIST test set: "
        "accuracy, per-class accuracy and the confusion matrix.",
        examples=["python -m tinyconv.evaluate runs/NAME/best.npz",
                  "python -m tinyconv.evaluate runs/NAME --json --plots pictures/",
                  "python -m tinyconv.evaluate report.pt --trust-pickle"])
    cli.add_inference_flags(parser)
    cli.add_dataset(parser, "the one the checkpoint was trained on")
    cli.add_data_dir(parser)
    parser.add_argument("--limit", type=cli.count(1), metavar="N",
                        help="evaluate the first N test images only")
    parser.add_argument("--batch-size", type=cli.count(1), default=BATCH_SIZE, metavar="N",
                        help="images per forward pass (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.add_argument("--plots", metavar="DIR", type=Path, help="also write DIR/confusion.png "
                        "(row-normalised, counts shown) and DIR/mistakes.png (the misclassified "
                        "digits, most confident first); needs matplotlib")
    return parser


def command(args):
    cli.set_threads(args.threads)
    model, config, header = cli.classifier_from_flags(args, labelled=True)
    dataset = cli.dataset_of_run(args, header)
    images, labels = load_mnist("test", args.data_dir, dataset=dataset)
    images, labels = images[:args.limit], labels[:args.limit]
    notice = cli.compile_notice()
    result = evaluate(model, images, labels, config["resize"], config["normalize"],
                      args.batch_size, after_batch=notice.cancel)
    if args.json:
        confusion = result["confusion"]
        print(json.dumps({"checkpoint": str(args.checkpoint),
                          "epoch": header["epoch"] if header else None,
                          **config, "dataset": dataset, "count": len(labels),
                          "loss": result["loss"],
                          "accuracy": result["accuracy"],
                          "per_class_accuracy": per_class_accuracy(confusion).tolist(),
                          "confusion": confusion.tolist()}))
    else:
        print(format_report(result, args.checkpoint, dataset, len(labels)))
    if args.plots and plots.available("confusion.png or mistakes.png"):
        with cli.writing(args.plots):
            paths = draw_plots(model, images, labels, result, config["resize"],
                               config["normalize"], args.plots, args.batch_size)
        for path in paths:
            print(f"wrote {path}", file=sys.stderr)


def main(argv=None):
    return cli.run(parser(), command, argv)


if __name__ == "__main__":
    sys.exit(main())
