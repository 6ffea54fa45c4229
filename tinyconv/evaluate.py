"""Evaluate a checkpoint on the 10,000 test images of MNIST (or of the data set it was trained
on): python -m tinyconv.evaluate CKPT.

Prints the accuracy, the per-class accuracy and the confusion matrix (rows: true class,
columns: predicted class); --json prints the same as one JSON object for machines; --plots DIR
also draws DIR/confusion.png and DIR/mistakes.png (needs matplotlib).

From Python, the module itself is the function: tinyconv.evaluate(model) is
evaluate_split(model), the figures of a model on a split.
"""

import json
import sys
import types
from pathlib import Path

import numpy as np

from tinyconv import cli, plots
from tinyconv.data import DATASETS, SPLIT_FILES, iterate_batches, load_mnist
from tinyconv.evaluation import BATCH_SIZE, check_classifier, evaluate, per_class_accuracy


def evaluate_split(model, split="test", *, dataset="mnist", resize="pad",
                   normalize="standard", limit=None, data_dir=None, batch_size=BATCH_SIZE,
                   after_batch=None):
    """Accuracy, loss, per-class accuracy, confusion matrix (true x predicted) and
    predictions of model on a split ("test" or "train") of dataset, its first `limit`
    images if given, prepared with the preprocessing the model was trained with (the default
    recipe's unless said: the report's is resize="bilinear", normalize="unit"), in eval
    mode; a dict with the count too."""
    if split not in SPLIT_FILES:
        raise ValueError(f"evaluate: split must be one of {', '.join(SPLIT_FILES)}, found "
                         f"{split!r}")
    model = check_classifier(model, "evaluate: the model", labelled=True)
    images, labels = load_mnist(split, data_dir, dataset=dataset)
    images, labels = images[:limit], labels[:limit]
    result = evaluate(model, images, labels, resize, normalize, batch_size, after_batch)
    return {**result, "count": len(labels),
            "per_class_accuracy": per_class_accuracy(result["confusion"])}


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
    notice = cli.compile_notice()
    result = evaluate_split(model, "test", dataset=dataset, **config, limit=args.limit,
                            data_dir=args.data_dir, batch_size=args.batch_size,
                            after_batch=notice.cancel)
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint),
                          "epoch": header["epoch"] if header else None,
                          **config, "dataset": dataset, "count": result["count"],
                          "loss": result["loss"], "accuracy": result["accuracy"],
                          "per_class_accuracy": result["per_class_accuracy"].tolist(),
                          "confusion": result["confusion"].tolist()}))
    else:
        print(format_report(result, args.checkpoint, dataset, result["count"]))
    if args.plots and plots.available("confusion.png or mistakes.png"):
        images, labels = (a[:args.limit] for a in load_mnist("test", args.data_dir,
                                                             dataset=dataset))
        with cli.writing(args.plots):
            paths = draw_plots(model, images, labels, result, config["resize"],
                               config["normalize"], args.plots, args.batch_size)
        for path in paths:
            print(f"wrote {path}", file=sys.stderr)


def main(argv=None):
    return cli.run(parser(), command, argv)


class _CallableModule(types.ModuleType):
    """This module, callable as its library function: tinyconv.evaluate(model, ...) is
    evaluate_split(model, ...), while tinyconv.evaluate.main stays the command (a package
    attribute and a submodule of one name can only be one object)."""

    def __call__(self, *args, **kwargs):
        return evaluate_split(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule


if __name__ == "__main__":
    sys.exit(main())
