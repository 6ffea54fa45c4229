"""The recipes behind README's accuracy figures, chosen on validation: python bench/recipes.py
[--help].

Each group is a target with its candidate recipes (python -m tinyconv.train's flags over
--recipe plain, the default until the default recipe was chosen here):
- default: the report's exact LeNet-5 in at most 30 epochs;
- best: the report's exact LeNet-5 (tanh, average pooling) in at most 15 minutes on 2 cores;
- variant: the study's strongest cheap variant, relu-avg-bn (README, "The report's question").

--stage val trains each candidate of the group with --val 5000 (the last 5,000 training
images held out, never trained on) and a token test set of 16 images, so the test set chooses
nothing; the candidate with the best mean final validation accuracy over the seeds is the
group's recipe. --stage final trains that recipe on all 60,000 training images with seeds 0,
1, 2 and reports the final test accuracy, once. Every run is a run directory of
python -m tinyconv.train under OUT/<stage>/<candidate>-seed<k>; a finished one is not
redone and a stopped one resumes, so the script can be stopped and run again. It prints a
Markdown table of the stage's runs and writes it with the figures to OUT/<stage>-<group>.json,
where the rows of candidates run before (--only) are kept, each with its commit.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # bench.common and tinyconv, from any directory

from bench.common import commit, cpu_model  # noqa: E402
from tinyconv import archs, checkpoint, cli, train  # noqa: E402
from tinyconv.atomicio import atomic_write  # noqa: E402

COSINE = ["--schedule", "cosine", "--lr", "3e-3"]
# random affine distortions: the probe of issue 19's (rotation, scale, shear, sub-pixel shifts)
AFFINE = ["--translate", "2.5", "--rotate", "12", "--scale", "0.12", "--shear", "0.12"]
ELASTIC = ["--elastic", "20,4"]  # Simard et al. 2003's deformations, at alpha 20, sigma 4
VARIANT = "relu-avg-bn"  # the study's best variant at 3.4 s an epoch (resnet-mini: 85 s)

EMA, SLOW_EMA = ["--ema", "0.999"], ["--ema", "0.9995"]  # the weights' moving average
SMOOTH = ["--label-smoothing", "0.1"]
ADAMW = ["--optimizer", "adamw", "--weight-decay", "0.05"]  # decoupled weight decay


def epochs(count):
    return ["--epochs", str(count)]


# group -> {candidate: flags}
CANDIDATES = {
    "default": {
        "plain": [],  # 20 epochs, StepLR, whole-pixel shifts of up to 2 px
        "affine-30": [*COSINE, *AFFINE, *epochs(30)],
        "affine-ema-30": [*COSINE, *AFFINE, *EMA, *epochs(30)],
        "affine-ema-ls-30": [*COSINE, *AFFINE, *EMA, *SMOOTH, *epochs(30)],
        "elastic-ema-30": [*COSINE, *AFFINE, *ELASTIC, *EMA, *epochs(30)],
        "affine-ema-20": [*COSINE, *AFFINE, *EMA, *epochs(20)],
        # AdamW's decay, which made best's recipe
        "affine-ema-ls-adamw-30": [*COSINE, *AFFINE, *EMA, *SMOOTH, *ADAMW, *epochs(30)],
    },
    "best": {
        "affine-ema-100": [*COSINE, *AFFINE, *SLOW_EMA, *epochs(100)],
        "elastic-ema-100": [*COSINE, *AFFINE, *ELASTIC, *SLOW_EMA, *epochs(100)],
        "elastic-ema-ls-100": [*COSINE, *AFFINE, *ELASTIC, *SLOW_EMA, *SMOOTH, *epochs(100)],
        # two and three times as long, and Simard's own alpha of 34
        "elastic-ema-ls-200": [*COSINE, *AFFINE, *ELASTIC, *SLOW_EMA, *SMOOTH, *epochs(200)],
        "elastic-ema-ls-300": [*COSINE, *AFFINE, *ELASTIC, *SLOW_EMA, *SMOOTH, *epochs(300)],
        "elastic34-ema-ls-100": [*COSINE, *AFFINE, "--elastic", "34,4", *SLOW_EMA, *SMOOTH,
                                 *epochs(100)],
        # validation peaked mid-run and fell as the cosine reached 0 in the longer runs: a
        # constant lr under the moving average, or AdamW's decay, against that late fit
        "elastic-ema-ls-const-100": ["--lr", "2e-3", "--lr-gamma", "1", *AFFINE, *ELASTIC,
                                     *SLOW_EMA, *SMOOTH, *epochs(100)],
        "elastic-ema-ls-adamw-100": [*COSINE, *AFFINE, *ELASTIC, *SLOW_EMA, *SMOOTH, *ADAMW,
                                     *epochs(100)],
    },
    "variant": {  # the best group's strongest candidates, on the variant
        "bn-elastic-ema-100": [*COSINE, *AFFINE, *ELASTIC, *SLOW_EMA, *epochs(100)],
        "bn-elastic-ema-ls-100": [*COSINE, *AFFINE, *ELASTIC, *SLOW_EMA, *SMOOTH,
                                  *epochs(100)],
        # and with AdamW's decay, the best group's choice since
        "bn-elastic-ema-adamw-100": [*COSINE, *AFFINE, *ELASTIC, *SLOW_EMA, *ADAMW,
                                     *epochs(100)],
        "bn-elastic-ema-ls-adamw-100": [*COSINE, *AFFINE, *ELASTIC, *SLOW_EMA, *SMOOTH,
                                        *ADAMW, *epochs(100)],
    },
}
VAL = 5000
VAL_SEEDS = {"default": (0, 1), "best": (0, 1), "variant": (0,)}
FINAL_SEEDS = (0, 1, 2)


def arch_flags(group, out):
    """The --arch of a group's runs: LeNet-5, or the variant's spec written to a file."""
    if group != "variant":
        return []
    path = out / f"{VARIANT}.json"
    if not path.exists():
        layers = archs.lenet5_layers("relu", "avg", batch_norm=True)
        spec = archs.spec_of(VARIANT, layers)
        atomic_write(path, lambda file: file.write(json.dumps(spec, indent=1).encode()))
    return ["--arch", str(path)]


def run(run_dir, flags, threads):
    """Train (or resume, or leave alone when finished) one run directory; its metrics."""
    metrics = run_dir / "metrics.jsonl"
    if (run_dir / "last.npz").exists():
        header = checkpoint.load(run_dir / "last.npz")[1]
        if header["epoch"] < header["config"]["epochs"]:
            status = train.main(["--resume", str(run_dir), "--quiet", "--threads",
                                 str(threads)])
            if status:
                raise SystemExit(f"{run_dir}: the resumed run failed ({status})")
    else:
        began = time.strftime("%H:%M:%S")
        print(f"{began} {run_dir.name}: {' '.join(flags)}", flush=True)
        status = train.main([*flags, "--run-dir", str(run_dir), "--quiet", "--threads",
                             str(threads)])
        if status:
            raise SystemExit(f"{run_dir}: the run failed ({status})")
    return [json.loads(line) for line in metrics.open()]


def chosen(out, group):
    """The candidate the validation stage chose: the best mean final validation accuracy
    among the group's candidates run with all of the stage's seeds."""
    path = out / f"val-{group}.json"
    if not path.exists():
        raise SystemExit(f"{path}: no validation results for {group}; run --stage val first")
    rows = [row for row in json.loads(path.read_text())["rows"]
            if row["candidate"] in CANDIDATES[group] and row["seeds"] == list(VAL_SEEDS[group])]
    if not rows:
        raise SystemExit(f"{path}: no candidate of {group} was run with seeds "
                         f"{', '.join(map(str, VAL_SEEDS[group]))}; run --stage val first")
    return max(rows, key=lambda row: row["mean"])["candidate"]


def summary(name, seeds, logs, key, threads):
    finals = [100 * log[-1][key] for log in logs]
    seconds = [sum(m["seconds"] for m in log) for log in logs]
    return {"candidate": name, "seeds": list(seeds), "epochs": len(logs[0]), "finals": finals,
            "mean": statistics.mean(finals),
            "std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
            "minutes": statistics.mean(seconds) / 60, "threads": threads}


def run_threads(run_dir):
    """The thread count a finished run trained with (its config's)."""
    return checkpoint.load(run_dir / "last.npz")[1]["config"]["threads"]


def table(rows, what):
    lines = [f"| recipe | epochs | {what}, mean ± std (each seed) | minutes a run |",
             "| --- | --- | --- | --- |"]
    lines += [f"| {r['candidate']} | {r['epochs']} | {r['mean']:.2f} ± {r['std']:.2f} "
              f"({', '.join(f'{a:.2f}' for a in r['finals'])}) | {r['minutes']:.1f} |"
              for r in rows]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--group", choices=CANDIDATES, required=True)
    parser.add_argument("--stage", choices=("val", "final"), required=True)
    parser.add_argument("--only", metavar="CANDIDATE", action="append",
                        help="run just this candidate (repeatable; the table shows those done)")
    parser.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                        help="only these of the stage's seeds (two processes can share a stage)")
    parser.add_argument("--threads", type=cli.count(1), default=1)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "runs" / "recipes")
    parser.add_argument("--limit-train", type=cli.count(1), metavar="N",
                        help="the first N training images only (a quick check of the script)")
    args = parser.parse_args(argv)
    out, group = args.out, args.group
    unknown = sorted(set(args.only or ()) - set(CANDIDATES[group]))
    if unknown:
        parser.error(f"--only: {group} has no candidate {', '.join(unknown)}; its candidates: "
                     f"{', '.join(CANDIDATES[group])}")
    (out / args.stage).mkdir(parents=True, exist_ok=True)
    base = ["--recipe", "plain", *arch_flags(group, out),
            *(["--limit-train", str(args.limit_train)] if args.limit_train else [])]
    if args.stage == "val":
        candidates, stage_seeds = CANDIDATES[group], VAL_SEEDS[group]
        base += ["--val", str(VAL), "--limit-test", "16"]  # the test set chooses nothing
    else:
        name = chosen(out, group)
        candidates, stage_seeds = {name: CANDIDATES[group][name]}, FINAL_SEEDS
    seeds = [seed for seed in stage_seeds if not args.seeds or seed in args.seeds]
    if not seeds:
        parser.error(f"--seeds: the {args.stage} stage of {group} runs seeds "
                     f"{', '.join(map(str, stage_seeds))}, none of "
                     f"{' '.join(map(str, args.seeds))}")
    key = "val_accuracy" if args.stage == "val" else "test_accuracy"
    rows = []
    for name, flags in candidates.items():
        if args.only and name not in args.only:
            continue
        dirs = [out / args.stage / f"{name}-seed{seed}" for seed in seeds]
        logs = [run(run_dir, [*base, *flags, "--seed", str(seed)], args.threads)
                for run_dir, seed in zip(dirs, seeds, strict=True)]
        rows.append(summary(name, seeds, logs, key, [run_threads(d) for d in dirs]))
    what = "validation accuracy (5,000 held out)" if args.stage == "val" else "test accuracy"
    print(table(rows, what))
    if not args.seeds:  # each row whole: all of the stage's seeds
        record(out / f"{args.stage}-{group}.json", group, args.stage, rows, what)
    return 0


def record(path, group, stage, rows, what):
    """Write the stage's rows to path, with its table: those of candidates run before (by an
    --only run, or another commit) are kept. Each row names the checkout and machine that
    recorded it (its runs may be older: a finished run is read, not redone) and each seed's
    thread count."""
    here = {"commit": commit(), "cpu": cpu_model()}
    kept = json.loads(path.read_text())["rows"] if path.exists() else []
    done = {row["candidate"]: row for row in kept} | {
        row["candidate"]: {**row, **here} for row in rows}
    order = [name for name in CANDIDATES[group] if name in done]
    merged = [done[name] for name in order] + [row for name, row in done.items()
                                               if name not in order]
    text = table(merged, what)
    content = {"group": group, "stage": stage, "rows": merged, "table": text,
               "arch": VARIANT if group == "variant" else "lenet5"}
    atomic_write(path, lambda file: file.write(json.dumps(content, indent=1).encode()))


if __name__ == "__main__":
    sys.exit(main())
