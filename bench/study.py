"""The report's section 3.4, measured: python bench/study.py [--help].

The report kept tanh and average pooling for fidelity and guessed that ReLU or SiLU, batch norm
or a residual structure would do better. This trains every variant with the same data,
recipe, budget and seeds and reports what each reached:

- architectures: activation (tanh, relu, silu) x pooling (avg, max) x batch norm (off, on),
  each archs.lenet5_layers' variant (tanh-avg is the report's LeNet-5, relu-max lenet5-relu,
  relu-max-bn lenet5-bn), plus resnet-mini, all with Adam at the plain recipe's lr 2e-3;
- optimizers, on the report's LeNet-5: SGD, SGD with momentum 0.9, Adagrad, Adam and AdamW
  (torch's default weight decay 1e-2), each at its own lr, tuned first: every candidate of
  TUNING trains for --tune-epochs from seed 0 on the first 50,000 training images, and the
  one with the best accuracy on the other 10,000 (held out, never the test set) is chosen.

Every run: batch 128, the plain recipe's data (LeNet's zero padding, standardised inputs,
random shifts of up to 2 pixels), a cosine schedule from the lr to 0 over --epochs (so the
budget is the only setting of the schedule), the test accuracy after each epoch. The results
go to OUT/study.json after each run, atomically, and a run already there is not redone: a
stopped study resumes where it stopped, and --seeds 5 after --seeds 3 adds two seeds. Then
OUT/study.png: the final test accuracy of each variant with its spread, and the mean
test-accuracy curves.
"""

import argparse
import fnmatch
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # bench.common and tinyconv, from any directory

from bench.common import commit, cpu_model, network_flops  # noqa: E402
from tinyconv import archs, cli, plots  # noqa: E402
from tinyconv.atomicio import atomic_write  # noqa: E402
from tinyconv.data import DATASETS, load_mnist, num_batches  # noqa: E402
from tinyconv.evaluation import evaluate  # noqa: E402
from tinyconv.train import RECIPES, make_optimizer, make_schedule, train_epoch  # noqa: E402

# the recipe every run shares; lr and optimizer are the variant's
RECIPE = {**RECIPES["plain"], "schedule": "cosine", "optimizer": "adam", "weight_decay": 0.0}
VALIDATION = 10_000  # the last training images, held out while tuning
# lr candidates per optimizer, half a decade apart around each one's usual range
TUNING = {
    "sgd": (0.01, 0.03, 0.1, 0.3),
    "sgd-momentum": (0.003, 0.01, 0.03, 0.1),
    "adagrad": (0.003, 0.01, 0.03, 0.1),
    "adam": (3e-4, 1e-3, 3e-3, 1e-2),
    "adamw": (3e-4, 1e-3, 3e-3, 1e-2),
}
# each optimizer's settings in train's config besides the lr
OPTIMIZER_SETTINGS = {
    "sgd": {"optimizer": "sgd"},
    "sgd-momentum": {"optimizer": "sgd", "momentum": 0.9},
    "adagrad": {"optimizer": "adagrad"},
    "adam": {"optimizer": "adam"},
    "adamw": {"optimizer": "adamw", "weight_decay": 1e-2},
}


@dataclass(frozen=True)
class Variant:
    """One network and optimizer of the grid: its name, group, spec and settings; lr None
    means tuned (its optimizer's TUNING candidates)."""

    name: str
    group: str
    spec: dict
    settings: dict = field(default_factory=dict)
    tuned: str | None = None  # the TUNING key whose chosen lr this variant trains at

    def config(self, lr, seed, epochs):
        return {**RECIPE, **self.settings, "lr": lr, "seed": seed, "epochs": epochs}


def grid():
    """Every variant, the architectures first."""
    variants = []
    for activation in archs.ACTIVATIONS:
        for pooling in archs.POOLINGS:
            for batch_norm in (False, True):
                name = f"{activation}-{pooling}{'-bn' if batch_norm else ''}"
                layers = archs.lenet5_layers(activation, pooling, batch_norm)
                variants.append(Variant(name, "architecture", archs.spec_of(name, layers)))
    variants.append(Variant("resnet-mini", "architecture", archs.ARCHS["resnet-mini"]))
    for optimizer, settings in OPTIMIZER_SETTINGS.items():
        variants.append(Variant(f"lenet5-{optimizer}", "optimizer", archs.ARCHS["lenet5"],
                                settings, tuned=optimizer))
    return variants


# ---- training


def train_run(variant, lr, seed, epochs, train_set, eval_set):
    """Train variant at lr from seed for epochs on train_set, evaluating on eval_set after
    each epoch; yields the records of the epochs so far after each."""
    config = variant.config(lr, seed, epochs)
    model = archs.build(variant.spec, seed=seed).train()
    opt = make_optimizer(model, config)
    sched = make_schedule(opt, config, num_batches(len(train_set[1]), config["batch_size"],
                                                   False))
    records = []
    for epoch in range(epochs):
        began = time.perf_counter()
        loss = train_epoch(model, opt, *train_set, config, epoch, quiet=True)
        seconds = time.perf_counter() - began
        sched.step()
        result = evaluate(model, *eval_set, config["resize"], config["normalize"],
                          config["batch_size"])
        records.append({"epoch": epoch + 1, "train_loss": loss, "accuracy": result["accuracy"],
                        "seconds": seconds})
        yield records


def run_key(variant, seed):
    return f"{variant.name}/seed{seed}"


def tune_key(optimizer, lr):
    return f"{optimizer}/lr{lr:g}"


def chosen_lr(results, optimizer):
    """The TUNING candidate with the best validation accuracy (the smaller lr on a tie)."""
    tried = [(results["tuning"][tune_key(optimizer, lr)]["accuracy"], -lr)
             for lr in TUNING[optimizer]]
    return -max(tried)[1]


# ---- the study's file


def settings_of(args):
    """What must stay the same for a resumed study's runs to belong together."""
    return {"dataset": args.dataset, "epochs": args.epochs, "tune_epochs": args.tune_epochs,
            "limit_train": args.limit_train, "limit_test": args.limit_test, "recipe": RECIPE,
            "tuning": {name: list(lrs) for name, lrs in TUNING.items()}}


def open_results(path, settings):
    """The results so far in path (or a new study), refusing one of other settings."""
    if not path.exists():
        return {"settings": settings, "tuning": {}, "runs": {}}
    try:
        results = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a study's results ({exc}); move it away or choose "
                         "another --out") from None
    if results.get("settings") != settings:
        differing = sorted(key for key in settings
                           if results.get("settings", {}).get(key) != settings[key])
        raise ValueError(f"{path} holds a study with other settings ({', '.join(differing)}): "
                         "give the same settings to resume it, or choose another --out")
    return results


def save_results(path, results, machine):
    results["machine"] = machine  # of the latest session that added runs
    text = json.dumps(results, indent=1) + "\n"
    atomic_write(path, lambda file: file.write(text.encode()))


# ---- the summary


def summarize(results, variants):
    """Per variant with finished runs: group, seeds, parameters, final test accuracy (mean,
    sample standard deviation, min, max), seconds per epoch, lr, the mean curve."""
    rows = []
    for variant in variants:
        runs = [run for run in results["runs"].values() if run["variant"] == variant.name]
        if not runs:
            continue
        finals = [run["epochs"][-1]["accuracy"] for run in runs]
        curve = np.mean([[record["accuracy"] for record in run["epochs"]] for run in runs], 0)
        rows.append({
            "variant": variant.name, "group": variant.group, "seeds": len(runs),
            "params": runs[0]["params"], "lr": runs[0]["lr"],
            "mean": statistics.fmean(finals),
            "std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
            "min": min(finals), "max": max(finals),
            "seconds_per_epoch": statistics.fmean(r["seconds"] for run in runs
                                                  for r in run["epochs"]),
            "curve": curve.tolist()})
    return rows


def table(rows, dataset):
    """The summary as a Markdown table, best first within each group."""
    lines = [f"| variant ({DATASETS[dataset].title}) | lr | test accuracy, mean ± std (min-max)"
             " | parameters | s/epoch |", "| --- | --- | --- | --- | --- |"]
    for group in ("architecture", "optimizer"):
        for row in sorted((r for r in rows if r["group"] == group), key=lambda r: -r["mean"]):
            lines.append(f"| {row['variant']} | {row['lr']:g} | {100 * row['mean']:.2f} ± "
                         f"{100 * row['std']:.2f} ({100 * row['min']:.2f}-{100 * row['max']:.2f})"
                         f" | {row['params']:,} | {row['seconds_per_epoch']:.1f} |")
    return "\n".join(lines)


def picture(rows, path, title):
    """Final test accuracy per variant (each seed a dot, the mean a bar with +-1 std), and
    the mean test-accuracy curves, architectures and optimizers apart."""
    figure = plots.new_figure((11.0, 0.3 * len(rows) + 1.6))
    figure.suptitle(title)
    finals, curves = figure.subplots(1, 2, width_ratios=(1, 1.2))
    ordered = sorted(rows, key=lambda r: (r["group"], r["mean"]))
    positions = np.arange(len(ordered))
    colours = ["tab:blue" if r["group"] == "architecture" else "tab:orange" for r in ordered]
    finals.barh(positions, [100 * r["mean"] for r in ordered],
                xerr=[100 * r["std"] for r in ordered], color=colours, alpha=0.6, capsize=2)
    low = min(r["min"] for r in ordered)
    finals.set(yticks=positions, yticklabels=[r["variant"] for r in ordered],
               xlabel="final test accuracy (%): mean, ±1 std",
               xlim=(100 * low - 0.3 * (100 - 100 * low) - 0.05, 100))
    finals.grid(axis="x", alpha=0.3)
    for row in ordered:
        curve = 100 * np.asarray(row["curve"])
        style = "-" if row["group"] == "architecture" else "--"
        curves.plot(np.arange(1, len(curve) + 1), curve, style, lw=1.2, label=row["variant"])
    curves.set(xlabel="epoch", ylabel="test accuracy (%), mean over seeds",
               ylim=(max(90.0, 100 * low - 2.0), 100))
    curves.grid(alpha=0.3)
    curves.legend(fontsize="x-small", ncol=2, loc="lower right")
    return plots.save(figure, path)


# ---- command line


def parser():
    parser = argparse.ArgumentParser(
        description="Train the grid of architectures and optimizers the report's section 3.4 "
                    "asks about, with one recipe and budget, and tabulate them.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--epochs", type=cli.count(1), default=8, help="the budget of each run")
    parser.add_argument("--seeds", type=cli.count(1), default=3,
                        help="runs per variant, from seeds 0, 1, ...")
    parser.add_argument("--tune-epochs", type=cli.count(1), default=3,
                        help="the budget of each lr candidate's run while tuning")
    parser.add_argument("--dataset", choices=DATASETS, default="mnist")
    parser.add_argument("--only", metavar="PATTERN", action="append",
                        help="only the variants whose name matches this shell pattern (e.g. "
                             "'relu-*', 'lenet5-sgd*'); may repeat")
    parser.add_argument("--out", type=Path, help="where study.json and study.png go "
                        "(default runs/study-DATASET)")
    parser.add_argument("--limit-train", type=cli.count(10), metavar="N",
                        help="the first N training images only (a quick look; when tuning, "
                             "the last fifth of them validates)")
    parser.add_argument("--limit-test", type=cli.count(1), metavar="N",
                        help="the first N test images only")
    parser.add_argument("--list", action="store_true", help="print the variants and exit")
    cli.add_threads(parser)
    cli.add_data_dir(parser)
    return parser


def pending_work(variants, results, seeds):
    """[(what, key, variant, seed or lr)] not yet in results, the tuning before its runs."""
    work = []
    for variant in variants:
        if variant.tuned:
            work += [("tune", tune_key(variant.tuned, lr), variant, lr)
                     for lr in TUNING[variant.tuned]
                     if tune_key(variant.tuned, lr) not in results["tuning"]]
        work += [("run", run_key(variant, seed), variant, seed) for seed in range(seeds)
                 if run_key(variant, seed) not in results["runs"]]
    return work


def main(argv=None):
    args = parser().parse_args(argv)
    variants = grid()
    if args.only:
        variants = [v for v in variants if any(fnmatch.fnmatch(v.name, p) for p in args.only)]
        if not variants:
            raise SystemExit(f"error: --only {' '.join(args.only)} matches no variant; "
                             f"see --list")
    if args.list:
        for variant in variants:
            print(f"{variant.name:20} {variant.group:12} "
                  f"{archs.build(variant.spec).param_count:>7,} parameters")
        return
    cli.set_threads(args.threads)
    out = args.out or REPO_ROOT / "runs" / f"study-{args.dataset}"
    path = out / "study.json"
    results = open_results(path, settings_of(args))
    machine = {"cpu": cpu_model(), "threads": args.threads or cli.numba.get_num_threads(),
               "commit": commit()}

    images, labels = (a[:args.limit_train] for a in load_mnist("train", args.data_dir,
                                                               dataset=args.dataset))
    test = tuple(a[:args.limit_test] for a in load_mnist("test", args.data_dir,
                                                         dataset=args.dataset))
    held_out = min(VALIDATION, len(labels) // 5)
    fit = (images[:-held_out], labels[:-held_out])
    validation = (images[-held_out:], labels[-held_out:])

    from tqdm import tqdm  # a run-time dependency of tinyconv

    work = pending_work(variants, results, args.seeds)
    per_image = {v.name: network_flops(archs.build(v.spec).layers, (1, 32, 32), 1)
                 for v in variants}
    epochs_of = {"tune": args.tune_epochs, "run": args.epochs}
    cost = [(what, epochs_of[what] * per_image[variant.name] / 1e6)
            for what, _, variant, _ in work]
    bar = tqdm(total=sum(c for _, c in cost), unit="MFLOP/img-epoch", file=sys.stderr,
               bar_format="{l_bar}{bar}| {percentage:3.0f}% [{elapsed}<{remaining}] {postfix}")
    try:
        for (what, key, variant, value), (_, run_cost) in zip(work, cost, strict=True):
            bar.set_postfix_str(f"{what} {key}")
            if what == "tune":
                lr, seed, data, judge = value, 0, fit, validation
                epochs = args.tune_epochs
            else:
                seed, data, judge, epochs = value, (images, labels), test, args.epochs
                lr = (chosen_lr(results, variant.tuned) if variant.tuned
                      else RECIPE["lr"])
            step = run_cost / epochs
            for records in train_run(variant, lr, seed, epochs, data, judge):  # noqa: B007
                bar.update(step)  # after each epoch; records holds them all
            if what == "tune":
                results["tuning"][key] = {"lr": lr, "accuracy": records[-1]["accuracy"]}
            else:
                results["runs"][key] = {
                    "variant": variant.name, "seed": seed, "lr": lr,
                    "params": archs.build(variant.spec).param_count, "epochs": records}
            save_results(path, results, machine)
    finally:
        bar.close()
    rows = summarize(results, grid())
    if not rows:
        return
    summary = {"rows": rows, "table": table(rows, args.dataset)}
    atomic_write(out / "summary.json",
                 lambda file: file.write((json.dumps(summary, indent=1) + "\n").encode()))
    if plots.available("study.png"):
        picture(rows, out / "study.png",
                f"{DATASETS[args.dataset].title}: {args.epochs} epochs, "
                f"{max(r['seeds'] for r in rows)} seeds")
    print(summary["table"])
    tuned = {name: chosen_lr(results, name) for name in TUNING
             if all(tune_key(name, lr) in results["tuning"] for lr in TUNING[name])}
    if tuned:
        print("tuned lr: " + ", ".join(f"{name} {lr:g}" for name, lr in tuned.items()))
    print(f"results in {path}")


if __name__ == "__main__":
    main()
