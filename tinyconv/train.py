"""Train LeNet-5 (or another network: --arch) on MNIST with tinyconv's kernels:
python -m tinyconv.train [--help].

Four recipes: "default" (30 epochs, 99.51% mean test accuracy over 3 seeds) and "best" (100
epochs, 99.52%), both chosen on a validation split (bench/recipes.py), "plain" (the earlier
default: 20 epochs, shifts only, 99.22%) and "report" (the original PyTorch report exactly).
Any flag overrides the recipe.
Each epoch writes RUN_DIR/last.npz, RUN_DIR/best.npz when the test accuracy improves and a
line of RUN_DIR/metrics.jsonl; with matplotlib, RUN_DIR/curves.png is redrawn after the first
and the last epoch and otherwise at most every CURVES_EVERY seconds. --resume RUN_DIR
continues where the last epoch ended.
"""

import argparse
import contextlib
import inspect
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm  # a widget in a notebook, text elsewhere

from tinyconv import archs, checkpoint, cli, plots, warmup
from tinyconv.atomicio import atomic_write
from tinyconv.checkpoint import CheckpointError, load_run, save_run
from tinyconv.data import augmentation, iterate_batches, load_mnist, num_batches
from tinyconv.evaluation import check_classifier, evaluate
from tinyconv.interop import CHECKPOINT_HELP, load_model
from tinyconv.nn import LossLog
from tinyconv.optim import (
    EMA,
    OPTIMIZER_NAMES,
    OPTIMIZERS,
    CosineAnnealingLR,
    StepLR,
    make_optimizer,
)

RECIPES = {
    # chosen on 5,000 held-out training images (bench/recipes.py, README "Accuracy"): AdamW
    # (decoupled weight decay 0.05) along a cosine from 3e-3 over 30 epochs, LeNet's own zero
    # padding, inputs standardised, random affine distortions (rotation, scale, shear,
    # sub-pixel shifts), label smoothing 0.1 and the weights' moving average evaluated;
    # lr_step and lr_gamma go unused with the cosine
    "default": {"epochs": 30, "batch_size": 128, "lr": 3e-3, "lr_step": 4, "lr_gamma": 0.5,
                "weight_decay": 0.05, "flip": False, "translate": 2.5, "resize": "pad",
                "normalize": "standard", "seed": 0, "schedule": "cosine", "rotate": 12.0,
                "scale": 0.12, "shear": 0.12, "ema": 0.999, "label_smoothing": 0.1,
                "optimizer": "adamw"},
    # the same, over 100 epochs with elastic distortions too and a slower average
    "best": {"epochs": 100, "batch_size": 128, "lr": 3e-3, "lr_step": 4, "lr_gamma": 0.5,
             "weight_decay": 0.05, "flip": False, "translate": 2.5, "resize": "pad",
             "normalize": "standard", "seed": 0, "schedule": "cosine", "rotate": 12.0,
             "scale": 0.12, "shear": 0.12, "elastic": [20.0, 4.0], "ema": 0.9995,
             "label_smoothing": 0.1, "optimizer": "adamw"},
    # the default until December 2026, the study's and the speed benches' base (no warp, no
    # average): Adam 2e-3 halved every 4 epochs, shifts of up to 2 whole pixels (no flips: a
    # mirrored 2 or 7 is not a digit)
    "plain": {"epochs": 20, "batch_size": 128, "lr": 2e-3, "lr_step": 4, "lr_gamma": 0.5,
              "weight_decay": 0.0, "flip": False, "translate": 2, "resize": "pad",
              "normalize": "standard", "seed": 0},
    # the original report as written: Adam 1e-5 halved every 20 epochs, 300 epochs, batch 128,
    # shuffled, random horizontal flips, Resize(32) (bilinear), ToTensor's [0, 1] scaling
    "report": {"epochs": 300, "batch_size": 128, "lr": 1e-5, "lr_step": 20, "lr_gamma": 0.5,
               "weight_decay": 0.0, "flip": True, "translate": 0, "resize": "bilinear",
               "normalize": "unit", "seed": 0},
}
# what a resumed run may change; the rest must stay as the run started for a faithful replay
RESUME_OVERRIDABLE = ("epochs", "threads", "device", "data_dir")
# a run's settings beside its recipe's, when no flag gives them
RUN_DEFAULTS = {"arch": "lenet5", "optimizer": "adam", "schedule": "step", "dataset": "mnist",
                "limit_train": None, "limit_test": None, "threads": None, "device": "cpu",
                "data_dir": None, "init_from": None}
# the settings beside the recipe's that only some runs have
OPTIONAL_SETTINGS = ("momentum", "nesterov", "warmup_epochs", "per_step", "no_decay_norm_bias",
                     "rotate", "scale", "shear", "elastic", "val", "label_smoothing",
                     "ema")
# the flags that say what to do rather than how to train
NOT_SETTINGS = ("run_dir", "resume", "start_from", "quiet", "trust_pickle", "list_archs")
# drawing curves.png takes about 0.3 s, which after every epoch of 1.7 s made the default run
# 15% longer; one drawing in 10 s of training costs 3%
CURVES_EVERY = 10.0  # seconds
# on a GPU the steps' losses are read back (a wait for it) this often, and at an epoch's end:
# a divergence is then found up to this late, after the updates queued meanwhile (named at the
# step where it happened; nothing is saved after it)
LOSS_READ_EVERY = 0.2  # seconds


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss); the message says where and what is kept.
    The command's exit status 1: the job ran and failed."""


# ---- the training loop


def train_epoch(model, opt, images, labels, config, epoch, quiet, after_step=None,
                position=None, ema=None):
    """One pass over the training images, moving the average ema (an optim.EMA, if given)
    and calling after_step() (if given) after each update, and counting the steps in
    position (a Position, if given); returns the mean loss per sample."""
    rng = np.random.default_rng([config["seed"], epoch])  # replayable: same seed, same epoch
    translate, distortions = augmentation(config)
    batches = iterate_batches(images, labels, config["batch_size"], rng=rng, shuffle=True,
                              resize=config["resize"], flip=config["flip"],
                              translate=translate, normalize=config["normalize"],
                              distortions=distortions)
    total = num_batches(len(labels), config["batch_size"], drop_last=False)
    bar = tqdm(batches, total=total, desc=f"epoch {epoch + 1}/{config['epochs']}",
               unit="batch", leave=False, disable=quiet, file=sys.stderr)
    log = LossLog(model, total)  # the steps' losses, read back a few times a second
    read_every = loss_read_interval(model)
    sums, seen, shown, start = [], 0, 0.0, time.perf_counter()
    last_read = start
    first_update = opt.step_count + 1  # the optimizer's count at this epoch's first step

    def read():  # keeps the sums written since the last read, returns their total; stops
        first, fresh = log.read, log.new()  # at a non-finite one
        bad = np.flatnonzero(~np.isfinite(fresh))
        if bad.size:
            at = first + bad[0] + 1  # the step, from 1
            raise TrainingError(f"loss is {fresh[bad[0]]} at epoch {epoch + 1}, step {at} of "
                                f"{total} (update {first_update + at - 1} overall)")
        sums.append(fresh)
        return fresh.sum()

    notice = cli.compile_notice(enabled=not quiet)
    try:
        for step, (x, y) in enumerate(bar, 1):
            if position is not None:
                position.step = step
            _, grads = model.loss_and_grads(x, y, config.get("label_smoothing", 0.0), log)
            seen += len(y)
            now = time.perf_counter()
            if not read_every or now - last_read >= read_every:  # before the update
                shown += read()
                last_read = now
                bar.set_postfix(loss=f"{shown / seen:.4f}",
                                samples_s=f"{seen / (now - start):,.0f}", refresh=False)
            opt.step(grads)
            if ema is not None:
                ema.update()
            if after_step is not None:
                after_step()
            notice.cancel()  # the first step has compiled every kernel training needs
        if log.read < log.written:  # the steps since the last read
            read()
    finally:  # an interrupt or a bad loss leaves no bar and no pending notice behind
        notice.cancel()
        bar.close()
    # exactly rounded, so the figure does not depend on when the reads happened
    return math.fsum(np.concatenate(sums)) / seen


def loss_read_interval(model):
    """Seconds between reads of the steps' losses: 0 (every step, before its update) where
    the network's arrays are the host's, since reading costs nothing there; else
    LOSS_READ_EVERY."""
    return 0.0 if model.device == "cpu" else LOSS_READ_EVERY


def redraw_curves(run_dir):
    """Draw run_dir/curves.png from its metrics.jsonl; a failure is a one-line warning."""
    path = run_dir / "curves.png"
    try:
        plots.curves(plots.read_metrics(run_dir / "metrics.jsonl"), path, run_dir.name)
    except Exception as exc:  # a picture must never end a long run: OSError, matplotlib's own
        reason = (exc.strerror if isinstance(exc, OSError) and exc.strerror
                  else " ".join(f"{type(exc).__name__}: {exc}".split()))
        print(f"warning: cannot draw {path}: {reason}; training goes on", file=sys.stderr,
              flush=True)


def make_schedule(opt, config, steps_per_epoch):
    """The run's schedule: StepLR (--lr-step, --lr-gamma) per epoch, or a cosine from the lr
    to 0 over the epochs after --warmup-epochs of linear warm-up, moved each epoch or, with
    config["per_step"], each of the epoch's steps_per_epoch steps."""
    if config["schedule"] == "step":
        return StepLR(opt, config["lr_step"], config["lr_gamma"])
    unit = steps_per_epoch if config.get("per_step") else 1  # schedule steps per epoch
    warmup = config.get("warmup_epochs", 0)
    return CosineAnnealingLR(opt, T_max=max(config["epochs"] - warmup, 1) * unit,
                             warmup=warmup * unit)


@dataclass
class Position:
    """Where a run is: the epoch under way (from 1; 0 before the first), its step of steps,
    and what it is doing."""

    epoch: int = 0
    step: int = 0
    steps: int = 0
    phase: str = "training"

    def __str__(self):
        if not self.epoch:
            return "before the first step"
        if self.phase == "training":
            return f"epoch {self.epoch}, step {self.step} of {self.steps}"
        return f"epoch {self.epoch}, in {self.phase}"


def new_model(config, trust_pickle):
    """A new run's network: config["arch"] from the seed's weights, or the network of the
    checkpoint config["init_from"] with its weights; in training mode."""
    if config.get("init_from"):
        model = load_model(config["init_from"], trust_pickle, config["device"])[0]
        return check_classifier(model, config["init_from"], labelled=True).train()
    spec = archs.find_spec(config["arch"])
    model = archs.build(spec, seed=config["seed"], device=config["device"])
    return check_classifier(model, f"--arch {config['arch']}", labelled=True).train()


def resumable(run_dir, start_from):
    """The path and header of the checkpoint a resume starts from: RUN/last.npz, or
    RUN/best.npz with start_from "best". A damaged last.npz is an error that names a whole
    best.npz, its epoch, and how to continue from it."""
    path = run_dir / f"{start_from}.npz"
    try:
        return path, checkpoint.load(path)[1]
    except CheckpointError as exc:
        best = run_dir / "best.npz"
        if start_from != "last" or not best.is_file():
            raise
        try:
            epoch = checkpoint.load(best)[1]["epoch"]
        except CheckpointError:
            raise exc from None
        raise CheckpointError(f"{exc}; {best} (epoch {epoch}) is whole: continue from it with "
                              f"--resume {run_dir} --from best") from None


def rewind_metrics(run_dir, epoch):
    """Keep metrics.jsonl's lines up to epoch (a resume from best.npz goes on from there);
    the later ones move to metrics.replaced.jsonl, so no line is lost."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines(keepends=True) if line.strip()]
    kept = [line for line in lines if json.loads(line)["epoch"] <= epoch]
    if len(kept) == len(lines):
        return
    with open(run_dir / "metrics.replaced.jsonl", "a") as replaced:
        replaced.writelines(line for line in lines if line not in kept)
    atomic_write(path, lambda file: file.write("".join(kept).encode()))


def train(config, run_dir, resume=False, quiet=False, trust_pickle=False, model=None,
          start_from="last"):
    """Run (or, with resume, continue from run_dir's last.npz, or best.npz if start_from
    says so) a training run; returns the metrics of each epoch it trained.

    A new run trains `model` if given, else new_model(config); with config["ema"], an
    exponential moving average of its weights is what each epoch evaluates and saves as the
    model, and what the model holds when the run ends. run_dir None writes nothing; else each
    epoch writes last.npz, best.npz when the test accuracy improves and a line of
    metrics.jsonl, together: a SIGINT or SIGTERM during the writing stops the run right after
    it. An interrupt raises cli.Interrupted saying where the run stopped, which checkpoint is
    intact and the command that continues.
    """
    run_dir = None if run_dir is None else Path(run_dir)
    if not resume and run_dir is not None and (run_dir / "last.npz").exists():
        raise ValueError(f"{run_dir} already holds a run (last.npz): continue it with "
                         f"--resume {run_dir}, or choose another --run-dir")
    (train_images, train_labels), validation, test = run_data(config)
    steps = num_batches(len(train_labels), config["batch_size"], drop_last=False)
    if resume:
        path, _ = resumable(run_dir, start_from)
        model, opt, sched, header, ema = load_run(path, config["device"])
        start_epoch, best = header["epoch"], header["best"]
    else:
        model = new_model(config, trust_pickle) if model is None else model.train()
        opt = make_optimizer(model, config)
        sched = make_schedule(opt, config, steps)
        ema = EMA(model, config["ema"]) if config.get("ema") else None
        start_epoch, best = 0, {"accuracy": -1.0, "epoch": 0}
    if run_dir is not None:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise cli.WriteError(f"cannot make the run directory {run_dir}: "
                                 f"{cli.os_reason(exc)}") from None
    per_step = config.get("per_step", False)
    history, position, saved = [], Position(steps=steps), start_epoch
    # the checkpoint that holds epoch `saved`: best.npz, from which a --from best resume
    # started, until the first epoch it trains is written (and metrics.jsonl cut back)
    kept = start_from if resume else "last"
    draw_curves = run_dir is not None and plots.available("curves.png", quiet)
    drawn = -math.inf  # when curves.png was last drawn
    try:
        if start_epoch < config["epochs"]:  # an empty cache's kernels, compiled on every core
            notice = cli.compile_notice(enabled=not quiet)
            try:
                warmup.compile_kernels(model, config)
            finally:
                notice.cancel()
        for epoch in range(start_epoch, config["epochs"]):
            position.epoch, position.step, position.phase = epoch + 1, 0, "training"
            began, lr = time.perf_counter(), opt.lr
            try:
                train_loss = train_epoch(model, opt, train_images, train_labels, config, epoch,
                                         quiet, sched.step if per_step else None, position,
                                         ema)
            except TrainingError as exc:
                intact = (f"the last good checkpoint, {run_dir / f'{kept}.npz'} (epoch "
                          f"{saved}), is kept intact" if saved else "no checkpoint was written "
                          "before it")
                raise TrainingError(f"training stopped: {exc}; {intact}") from None
            if not per_step:
                sched.step()
            position.phase = "the test pass"
            metrics = {"epoch": epoch + 1, "train_loss": train_loss,
                       **scores(model, config, test, validation, ema), "lr": lr,
                       "seconds": time.perf_counter() - began}
            history.append(metrics)
            # the best epoch by validation where there is one: the test set chooses nothing
            judged = "val" if validation else "test"
            if metrics[f"{judged}_accuracy"] > best["accuracy"]:
                best = {"accuracy": metrics[f"{judged}_accuracy"], "epoch": epoch + 1,
                        "on": judged}
            if run_dir is not None:
                position.phase = "writing its checkpoint"
                with cli.interrupts_held():  # an interrupt in here stops the run after it
                    if kept == "best":
                        rewind_metrics(run_dir, start_epoch)
                    write_epoch(run_dir, model, opt, sched, config, best, metrics, ema)
                    saved, kept = epoch + 1, "last"
                if draw_curves and (epoch + 1 == config["epochs"]
                                    or time.perf_counter() - drawn >= CURVES_EVERY):
                    redraw_curves(run_dir)  # the whole run so far, resumed epochs included
                    drawn = time.perf_counter()
            if not quiet:
                print(epoch_line(metrics, config["epochs"]), flush=True)
    except cli.Interrupted as exc:
        raise exc.again(interrupted(exc, position, run_dir, saved, kept)) from None
    if ema is not None:  # the weights every epoch was judged by
        model.load_state_dict(ema.averaged_state())
    return history


def run_data(config):
    """(train, validation or None, test) (images, labels) pairs of a run: the first
    limit_train training images less the last config["val"], held out as validation, and
    the first limit_test test images."""
    dataset, where = config.get("dataset", "mnist"), config.get("data_dir")
    images, labels = (a[:config["limit_train"]] for a in load_mnist("train", where,
                                                                    dataset=dataset))
    test = tuple(a[:config["limit_test"]] for a in load_mnist("test", where, dataset=dataset))
    held_out = config.get("val", 0)
    if not held_out:
        return (images, labels), None, test
    if held_out >= len(labels):
        raise ValueError(f"--val {held_out} must leave images to train on: the run has "
                         f"{len(labels)} training images")
    return (images[:-held_out], labels[:-held_out]), (images[-held_out:],
                                                       labels[-held_out:]), test


def scores(model, config, test, validation, ema=None):
    """test_loss and test_accuracy, and val_loss and val_accuracy with a validation set: of
    the moving average ema where there is one."""
    figures = {}
    with ema.applied() if ema is not None else contextlib.nullcontext():
        for name, (images, labels) in (("test", test), *((("val", validation),) if validation
                                                         else ())):
            # at the training batch size, so the pass fits in the training buffers' memory
            result = evaluate(model, images, labels, config["resize"], config["normalize"],
                              config["batch_size"])
            figures.update({f"{name}_loss": result["loss"],
                            f"{name}_accuracy": result["accuracy"]})
    return figures


def epoch_line(metrics, epochs):
    """What an epoch prints: its losses, accuracies, lr and seconds."""
    val = (f"val loss {metrics['val_loss']:.4f}  val acc {100 * metrics['val_accuracy']:.2f}%  "
           if "val_loss" in metrics else "")
    return (f"epoch {metrics['epoch']:>3}/{epochs}  train loss {metrics['train_loss']:.4f}  "
            f"{val}test loss {metrics['test_loss']:.4f}  test acc "
            f"{100 * metrics['test_accuracy']:.2f}%  lr {metrics['lr']:.3g}  "
            f"{metrics['seconds']:.1f}s")


def write_epoch(run_dir, model, opt, sched, config, best, metrics, ema=None):
    """An epoch's results: last.npz, best.npz if the epoch is the best, a metrics line; the
    checkpoints' model is the moving average ema where there is one."""
    epoch = metrics["epoch"]
    header = {"epoch": epoch, "config": config, "best": best, "metrics": metrics,
              "rng": {"seed": config["seed"],
                      "scheme": "epoch e draws from np.random.default_rng([seed, e])"}}
    try:  # each checkpoint is written atomically: a failure leaves the previous one whole
        save_run(run_dir / "last.npz", model, opt, sched, header, ema)
        if best["epoch"] == epoch:
            save_run(run_dir / "best.npz", model, opt, sched, header, ema)
        with open(run_dir / "metrics.jsonl", "a") as log:
            log.write(json.dumps(metrics) + "\n")
    except OSError as exc:
        raise cli.WriteError(f"cannot write epoch {epoch}'s results in {run_dir}: "
                             f"{cli.os_reason(exc)} ({exc.filename or run_dir}); the "
                             "checkpoints written before it are intact") from None


def interrupted(exc, position, run_dir, saved, kept="last"):
    """The line an interrupted run ends with: where, what is kept (epoch `saved`, in
    kept.npz), how to go on."""
    where = f"{exc} at {position}"
    if run_dir is None:
        return where
    if not saved:
        return (f"{where}; no epoch had finished, so no checkpoint was written: run the same "
                "command again to start over")
    again = " --from best" if kept == "best" else ""
    return (f"{where}; {run_dir / f'{kept}.npz'} (epoch {saved}) is intact; continue with: "
            f"python -m tinyconv.train --resume {run_dir}{again}")


def fit(model, epochs=None, recipe="default", run_dir=None, quiet=False, **overrides):
    """Train model (a Sequential from digits to class scores) as python -m tinyconv.train
    does: the recipe's settings ("default", "best", "plain" or "report"), with epochs and any
    of the CLI's settings by their config names (lr=1e-3, optimizer="adamw",
    schedule="cosine", limit_train=6000, ...) overriding them. With run_dir, each epoch is
    checkpointed there as the CLI does, and `python -m tinyconv.train --resume RUN_DIR`
    continues the run. Returns
    the per-epoch metrics, a list of dicts (epoch, train_loss, test_loss, test_accuracy, lr,
    seconds). With ema=DECAY the model ends holding the moving average of its weights, which
    every epoch was evaluated by. The progress bar is a notebook widget in a notebook.
    """
    if recipe not in RECIPES:
        raise ValueError(f"fit: recipe must be one of {', '.join(RECIPES)}, found {recipe!r}")
    known = {*RECIPES[recipe], *RUN_DEFAULTS, *OPTIONAL_SETTINGS} - {"arch", "init_from",
                                                                      "device"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"fit: unknown settings {unknown}; the settings are "
                         f"{', '.join(sorted(known))}")
    model = check_classifier(model, "fit: the model", labelled=True)
    given = {**overrides, **({"epochs": epochs} if epochs is not None else {})}
    try:
        config = {**settings(recipe, given, name=str), "arch": model.name or "the model given "
                  "to fit", "device": model.device}
    except ValueError as exc:
        raise ValueError(f"fit: {exc}") from None
    cli.set_threads(config["threads"])
    return train(config, run_dir, quiet=quiet, model=model)


# ---- command line


def parser():
    parser = cli.parser(
        "python -m tinyconv.train",
        "Train LeNet-5 on MNIST with tinyconv's hand-written kernels. With no flags: the "
        "default recipe (30 epochs, about 99.5% test accuracy) on the bundled MNIST, writing "
        "checkpoints to runs/<time>-<recipe>/. The flags from --epochs to --normalize override "
        "the recipe's settings.",
        examples=["python -m tinyconv.train --epochs 2 --limit-train 6000   # a quick look",
                  "python -m tinyconv.train --recipe report                 # the original report",
                  "python -m tinyconv.train --resume runs/NAME              # continue a run",
                  "python -m tinyconv.evaluate runs/NAME/best.npz           # test a checkpoint"],
        failed="when training stopped at a non-finite loss (the last good checkpoint is kept)")
    recipe_help = "; ".join(f"{name}: " + ", ".join(f"{k}={v}" for k, v in recipe.items())
                            for name, recipe in RECIPES.items())
    parser.add_argument("--recipe", choices=RECIPES,
                        help=f"starting settings that the flags below override (default: "
                             f"default; {recipe_help})")
    parser.add_argument("--arch", metavar="NAME|FILE.json",
                        help=f"the network to train: one of {', '.join(archs.ARCHS)} (default "
                             f"lenet5, the report's), or a spec file (README, 'Layers and "
                             f"networks'); from (N, 1, 32, 32) digits to 10 class scores")
    parser.add_argument("--list-archs", action="store_true",
                        help="print each named network's layers, output shapes and parameter "
                             "counts, then exit")
    parser.add_argument("--epochs", type=cli.count(1), help="passes over the training set")
    parser.add_argument("--batch-size", type=cli.count(1), help="images per optimizer step")
    parser.add_argument("--optimizer", choices=OPTIMIZER_NAMES,
                        help="torch.optim's update rule, by its class's name (default: the "
                             "recipe's; adamw for default and best, adam for plain and report)")
    parser.add_argument("--momentum", type=float, help="SGD's momentum (default 0)")
    parser.add_argument("--nesterov", action="store_true", default=None,
                        help="SGD's Nesterov momentum (needs --momentum)")
    parser.add_argument("--lr", type=cli.positive, help="the initial learning rate")
    parser.add_argument("--schedule", choices=("step", "cosine"),
                        help="the lr per epoch: step, StepLR by --lr-step and --lr-gamma "
                             "(default), or cosine, CosineAnnealingLR from the lr to 0 over the "
                             "epochs after --warmup-epochs")
    parser.add_argument("--warmup-epochs", type=cli.count(0), metavar="N",
                        help="with --schedule cosine: N epochs of linear warm-up from "
                             "lr/(N+1) to lr first (default 0); the cosine's length is set when "
                             "the run starts (a resume to more epochs goes on along it)")
    parser.add_argument("--per-step", action="store_true", default=None,
                        help="with --schedule cosine: move the lr after every batch instead of "
                             "every epoch (the warm-up too)")
    parser.add_argument("--lr-step", type=cli.count(1), help="multiply the lr by --lr-gamma "
                        "every this many epochs (StepLR step_size)")
    parser.add_argument("--lr-gamma", type=float, help="the StepLR factor")
    parser.add_argument("--weight-decay", type=float, help="the optimizer's weight decay "
                        "(L2 in the gradient; AdamW's decoupled); default the recipe's (0.05 "
                        "for default and best, 0 for plain and report), or with --optimizer "
                        "naming another than the recipe's, that one's own (torch's: AdamW's "
                        "1e-2, the others' 0)")
    parser.add_argument("--label-smoothing", type=cli.non_negative, metavar="E",
                        help="train against targets (1 - E) one-hot + E / classes, torch's "
                             "CrossEntropyLoss(label_smoothing=E), E in [0, 1]; the test and "
                             "validation losses stay plain cross-entropy (default 0)")
    parser.add_argument("--ema", type=float, metavar="DECAY",
                        help="evaluate and save an exponential moving average of the weights, "
                             "moved 1 - DECAY of the way after each step (torch's AveragedModel "
                             "with get_ema_multi_avg_fn(DECAY), batch norm's statistics "
                             "averaged too), DECAY in (0, 1), e.g. 0.999; 0 for none "
                             "(default: none)")
    parser.add_argument("--no-decay-norm-bias", action="store_true", default=None,
                        help="no weight decay for biases and batch norm's scales and shifts "
                             "(default: decay every parameter, as torch.optim does)")
    parser.add_argument("--seed", type=int, help="initial weights, order and augmentation")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction,
                        help="random horizontal flips, p=0.5 (the report's augmentation)")
    parser.add_argument("--translate", type=cli.non_negative, metavar="PIXELS",
                        help="random shifts of up to PIXELS in each direction (0: none): whole "
                             "pixels, unless PIXELS is fractional or a distortion below is "
                             "given, which shift by any fraction within it")
    parser.add_argument("--rotate", type=cli.non_negative, metavar="DEGREES",
                        help="random rotations of up to DEGREES either way")
    parser.add_argument("--scale", type=cli.non_negative, metavar="F",
                        help="random scaling by a factor within 1 +- F (F below 1)")
    parser.add_argument("--shear", type=cli.non_negative, metavar="F",
                        help="random shears x += s y, s within +-F")
    parser.add_argument("--elastic", type=cli.number_pair, metavar="ALPHA,SIGMA",
                        help="random elastic deformations (Simard et al. 2003): per-pixel "
                             "noise smoothed by a Gaussian of SIGMA pixels, times ALPHA (e.g. "
                             "20,4); all distortions are one bilinear warp per sample")
    cli.add_preprocessing(parser, lambda key: "the recipe's")
    parser.add_argument("--limit-train", type=cli.count(1), metavar="N", help="use the first N "
                        "training images only (quick runs)")
    parser.add_argument("--limit-test", type=cli.count(1), metavar="N", help="evaluate on the "
                        "first N test images only")
    parser.add_argument("--val", type=cli.count(0), metavar="N",
                        help="hold the last N training images out as a validation set, which "
                             "training never sees: each epoch reports its loss and accuracy, "
                             "and best.npz is the epoch best on it, not on the test set "
                             "(5000 for choosing a recipe; default 0, none)")
    cli.add_threads(parser)
    cli.add_device(parser, default=None, note="; with --resume, the run's")
    cli.add_dataset(parser, "mnist")
    cli.add_data_dir(parser)
    parser.add_argument("--run-dir", help="where checkpoints and metrics.jsonl go "
                        "(default: runs/<time>-<recipe>)")
    parser.add_argument("--init-from", metavar="PATH", help="start from this network and its "
                        f"weights instead of LeNet-5 from the seed's: {CHECKPOINT_HELP}; the "
                        "optimizer's state starts afresh")
    cli.add_trust_pickle(parser)
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from "
                        "its last.npz; only --epochs, --threads, --device and --data-dir may "
                        "change, other flags may be given if they equal the run's")
    parser.add_argument("--from", dest="start_from", choices=("last", "best"),
                        help="with --resume: continue from last.npz (default) or from best.npz "
                             "(metrics.jsonl is cut back to its epoch; the later lines move to "
                             "metrics.replaced.jsonl)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or epoch lines")
    return parser


def build_config(args):
    """The run's settings: the recipe's, overridden by the flags given (which the parser has
    checked)."""
    given = given_settings(args)
    return settings(given.pop("recipe", "default"), given)


def flag(key):
    """The command's flag of a config key: "weight_decay" -> "--weight-decay"."""
    return f"--{key.replace('_', '-')}"


def settings(recipe, given, name=flag):
    """A run's config: the recipe's settings and RUN_DEFAULTS, overridden by given
    ({config key: value}), once checked to go together; errors name each setting by
    name(key), the command's flag by default (fit passes its arguments' names)."""
    if given.get("arch") and given.get("init_from"):
        raise ValueError(f"{name('arch')} and {name('init_from')}: a run started from a "
                         "checkpoint trains the checkpoint's own network; give one of them")
    # a recipe may set more than the keys every recipe has
    own = {**RUN_DEFAULTS, **RECIPES[recipe], "recipe": recipe}
    if given.get("optimizer", own["optimizer"]) != own["optimizer"] and \
            "weight_decay" not in given:  # another optimizer: its own default decay
        given["weight_decay"] = inspect.signature(
            OPTIMIZERS[OPTIMIZER_NAMES[given["optimizer"]]]).parameters["weight_decay"].default
    chosen = {**own, **given}
    for keys, needed, value in ((("warmup_epochs", "per_step"), "schedule", "cosine"),
                                (("momentum", "nesterov"), "optimizer", "sgd")):
        only = [name(key) for key in keys if key in given]
        if only and chosen[needed] != value:
            raise ValueError(f"{' and '.join(only)}: only {name(needed)} {value} takes "
                             f"{'them' if len(only) > 1 else 'it'}")
    if given.get("ema") is not None and not 0 <= given["ema"] < 1:
        raise ValueError(f"{name('ema')} is the average's decay, in (0, 1) (as 0.999), or 0 "
                         f"for none, found {given['ema']}")
    if not 0 <= given.get("label_smoothing", 0) <= 1:
        raise ValueError(f"{name('label_smoothing')} must lie in [0, 1], found "
                         f"{given['label_smoothing']}")
    try:
        augmentation(chosen)
    except ValueError as exc:  # Distortions names the setting and its range
        distortions = ", ".join(map(name, ("rotate", "scale", "shear", "elastic")))
        raise ValueError(f"{distortions}: {exc}") from None
    if given.get("no_decay_norm_bias") and not chosen["weight_decay"]:
        raise ValueError(f"{name('no_decay_norm_bias')}: the run has no weight decay to exempt "
                         f"them from; give {name('weight_decay')} (or {name('optimizer')} "
                         "adamw)")
    return chosen


def given_settings(args):
    """The settings the command line gives explicitly, by config key (no defaults)."""
    return {k: v for k, v in vars(args).items() if v is not None and k not in NOT_SETTINGS}


def resumed_config(args):
    """The saved config of the run to resume, with the few flags a resume may change; any
    other flag must equal the saved value (so the command that started the run, with --resume
    added, continues it), and each real change is named with both values."""
    run_dir = Path(args.resume)
    _, header = resumable(run_dir, args.start_from)
    saved = {**RUN_DEFAULTS, "device": "cpu", **header["config"]}  # older runs lack some keys
    given = given_settings(args)
    changes = [f"{flag(key)} (saved {saved.get(key)!r}, given {value!r})"
               for key, value in given.items()
               if key not in RESUME_OVERRIDABLE and saved.get(key) != value]
    if args.run_dir is not None and Path(args.run_dir).resolve() != run_dir.resolve():
        changes.append(f"--run-dir (resuming {run_dir}, given {args.run_dir})")
    if changes:
        raise ValueError(f"--resume continues a run with its own settings; only --epochs, "
                         f"--threads, --device and --data-dir may change, and these differ: "
                         f"{'; '.join(changes)}")
    return {**saved, **{k: v for k, v in given.items() if k in RESUME_OVERRIDABLE}}


def list_archs():
    """Each named network: its name, parameter count and summary table."""
    for name in archs.ARCHS:
        model = archs.build(name)
        print(f"{name}: {model.param_count:,} parameters\n{model.summary()}\n")


def command(args):
    if args.list_archs:
        list_archs()
        return
    if args.start_from and not args.resume:
        raise ValueError("--from: only --resume takes it")
    args.start_from = args.start_from or "last"
    if args.resume:
        config, run_dir = resumed_config(args), Path(args.resume)
    else:
        config = build_config(args)
        run_dir = Path(args.run_dir or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-"
                                       f"{config['recipe']}")
    cli.set_threads(config["threads"])
    if not args.quiet:
        print(f"run {run_dir}: " + ", ".join(f"{k}={v}" for k, v in config.items()
                                             if v is not None), flush=True)
    history = train(config, run_dir, resume=bool(args.resume), quiet=args.quiet,
                    trust_pickle=args.trust_pickle, start_from=args.start_from)
    if history and not args.quiet:
        metrics = history[-1]
        print(f"done: test accuracy {100 * metrics['test_accuracy']:.2f}% after epoch "
              f"{metrics['epoch']}; checkpoints in {run_dir}")


def main(argv=None):
    return cli.run(parser(), command, argv, failed=(TrainingError,))


if __name__ == "__main__":
    sys.exit(main())
