"""The commands: train and evaluate on small slices of MNIST, the flags and exit statuses they
share (tinyconv.cli), atomic writes."""

import json
import math
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

import tinyconv
from tinyconv import (
    LeNet5,
    atomicio,
    checkpoint,
    cli,
    evaluate,
    export,
    nn,
    predict,
    serve,
    train,
    visualize,
    warmup,
)
from tinyconv.evaluation import evaluate as evaluate_model
from tinyconv.nn import Sequential
from tinyconv.optim import Adam, StepLR

# the plain recipe's step schedule lets a run resume with more epochs than it started with
QUICK = ["--recipe", "plain", "--limit-train", "640", "--limit-test", "200", "--batch-size",
         "64", "--quiet"]


def run_train(run_dir, *flags):
    return train.main([*QUICK, "--run-dir", str(run_dir), *flags])


def final_arrays(run_dir):
    arrays, _ = checkpoint.load(run_dir / "last.npz")
    return arrays


def assert_same_arrays(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]), f"{name} differs"


def test_same_seed_same_run_bit_for_bit(tmp_path):
    assert run_train(tmp_path / "a", "--epochs", "1") == 0
    assert run_train(tmp_path / "b", "--epochs", "1") == 0
    assert_same_arrays(final_arrays(tmp_path / "a"), final_arrays(tmp_path / "b"))
    assert run_train(tmp_path / "c", "--epochs", "1", "--seed", "1") == 0
    c = final_arrays(tmp_path / "c")
    assert not np.array_equal(c["model/backbone.0.weight"],
                              final_arrays(tmp_path / "a")["model/backbone.0.weight"])


def test_resume_is_bit_identical_to_a_straight_run(tmp_path):
    flags = ["--lr-step", "1", "--lr-gamma", "0.5"]  # the schedule state must survive too
    assert run_train(tmp_path / "straight", "--epochs", "2", *flags) == 0
    assert run_train(tmp_path / "split", "--epochs", "1", *flags) == 0
    assert train.main(["--resume", str(tmp_path / "split"), "--epochs", "2", "--quiet"]) == 0
    assert_same_arrays(final_arrays(tmp_path / "straight"), final_arrays(tmp_path / "split"))
    log = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").open()]
    assert [m["epoch"] for m in log] == [1, 2] and log[1]["lr"] == log[0]["lr"] / 2
    _, header = checkpoint.load(tmp_path / "split" / "last.npz")
    assert header["epoch"] == 2 and header["optimizer"]["step"] == 2 * 10


SPEC = {"name": "dropout-mlp", "input_shape": [1, 32, 32], "prefix": "",
        "layers": [{"kind": "Flatten"}, {"kind": "Linear", "in_features": 1024,
                                          "out_features": 32},
                   {"kind": "BatchNorm1d", "num_features": 32}, {"kind": "ReLU"},
                   {"kind": "Dropout", "p": 0.3},
                   {"kind": "Linear", "in_features": 32, "out_features": 10}]}


@pytest.mark.parametrize("arch", ["lenet5-relu", "lenet5-bn", "resnet-mini", "spec file"])
def test_every_architecture_trains_resumes_evaluates_and_exports(arch, tmp_path, capsys):
    # a named network, or a spec file holding a Dropout (whose masks a resume must replay)
    if arch == "spec file":
        arch = str(tmp_path / "net.json")
        (tmp_path / "net.json").write_text(json.dumps(SPEC))
    flags = ["--recipe", "plain", "--limit-train", "256", "--limit-test", "64", "--batch-size",
             "64", "--quiet", "--arch", arch]
    assert train.main([*flags, "--run-dir", str(tmp_path / "straight"), "--epochs", "2"]) == 0
    assert train.main([*flags, "--run-dir", str(tmp_path / "split"), "--epochs", "1"]) == 0
    assert train.main(["--resume", str(tmp_path / "split"), "--epochs", "2", "--quiet"]) == 0
    assert_same_arrays(final_arrays(tmp_path / "straight"), final_arrays(tmp_path / "split"))
    _, header = checkpoint.load(tmp_path / "split" / "last.npz")
    assert header["steps"] == 2 * 4 and header["config"]["arch"] == arch
    best = tmp_path / "split" / "best.npz"
    assert evaluate.main([str(best), "--limit", "64"]) == 0
    assert "accuracy" in capsys.readouterr().out
    onnx_path = tmp_path / "net.onnx"
    assert export.main([str(best), "--onnx", str(onnx_path)]) == 0
    import onnxruntime

    model = tinyconv.load(best).eval()
    x = np.random.default_rng(0).standard_normal((5, 1, 32, 32)).astype(np.float32)
    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input": x})
    expected = model.forward(x)
    assert np.abs(logits - expected).max() <= 1e-5 * np.abs(expected).max()


@pytest.mark.parametrize("optimizer", ["sgd", "adamw", "adagrad"])
def test_every_optimizer_trains_checkpoints_and_resumes_bit_for_bit(optimizer, tmp_path):
    extra = ["--momentum", "0.9", "--nesterov", "--lr", "0.05"] if optimizer == "sgd" else []
    flags = [*QUICK, "--optimizer", optimizer, *extra, "--weight-decay", "0.01"]
    assert train.main([*flags, "--run-dir", str(tmp_path / "straight"), "--epochs", "2"]) == 0
    assert train.main([*flags, "--run-dir", str(tmp_path / "split"), "--epochs", "1"]) == 0
    assert train.main(["--resume", str(tmp_path / "split"), "--epochs", "2", "--quiet"]) == 0
    assert_same_arrays(final_arrays(tmp_path / "straight"), final_arrays(tmp_path / "split"))
    arrays, header = checkpoint.load(tmp_path / "split" / "last.npz")
    kind = train.OPTIMIZER_NAMES[optimizer]
    assert header["optimizer"]["kind"] == kind and header["optimizer"]["weight_decay"] == 0.01
    assert header["optimizer"]["step"] == 2 * 10
    if optimizer == "sgd":
        assert header["optimizer"]["momentum"] == 0.9 and header["optimizer"]["nesterov"]
    buffers = {"sgd": ["momentum_buffer"], "adamw": ["m", "v"], "adagrad": ["state_sum"]}
    assert {f"optimizer/{name}" for name in buffers[optimizer]} <= arrays.keys()
    assert np.abs(arrays[f"optimizer/{buffers[optimizer][0]}"]).max() > 0


@pytest.mark.parametrize("flags, message", [
    (["--momentum", "0.9"], "error: --momentum: only --optimizer sgd takes it"),
    (["--warmup-epochs", "2"], "error: --warmup-epochs: only --schedule cosine takes it"),
    (["--per-step", "--warmup-epochs", "1"],
     "error: --warmup-epochs and --per-step: only --schedule cosine takes them"),
    (["--optimizer", "adam", "--nesterov", "--momentum", "0.5"],
     "error: --momentum and --nesterov: only --optimizer sgd takes them"),
    (["--optimizer", "sgd", "--nesterov"],
     "error: SGD: Nesterov momentum needs a momentum and zero dampening, found momentum=0.0, "
     "dampening=0.0"),
    (["--label-smoothing", "1.5"], "error: --label-smoothing must lie in [0, 1], found 1.5"),
    (["--no-decay-norm-bias"], "error: --no-decay-norm-bias: the run has no weight decay to "
     "exempt them from; give --weight-decay (or --optimizer adamw)"),
    (["--optimizer", "adamw", "--weight-decay", "0", "--no-decay-norm-bias"],
     "error: --no-decay-norm-bias: the run has no weight decay to exempt them from; give "
     "--weight-decay (or --optimizer adamw)"),
])
def test_optimizer_settings_that_cannot_go_together_are_refused(flags, message, tmp_path,
                                                                 capsys):
    assert run_train(tmp_path / "run", *flags) == 2
    assert capsys.readouterr().err.strip() == message
    assert not (tmp_path / "run").exists()


def test_a_per_step_cosine_moves_the_lr_after_every_batch(tmp_path):
    # 640 images in batches of 64: 10 steps an epoch; 3 epochs, 1 of warm-up (10 steps)
    flags = ["--schedule", "cosine", "--warmup-epochs", "1", "--per-step", "--epochs", "3"]
    assert run_train(tmp_path / "run", *flags) == 0
    _, opt, sched, header, _ = checkpoint.load_run(tmp_path / "run" / "last.npz")
    assert (sched.epoch, sched.T_max, sched.warmup) == (30, 20, 10)
    assert header["config"]["per_step"] is True
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    lr = 2e-3  # each epoch's first step's: lr/11 to start, then lr, then half-way down
    expected = [lr / 11, lr, lr * (1 + math.cos(math.pi * 10 / 20)) / 2]
    assert [m["lr"] for m in log] == pytest.approx(expected, rel=1e-12)
    assert opt.lr == pytest.approx(0.0, abs=1e-18)  # at the end of the cosine


def test_a_validation_split_is_held_out_and_chooses_the_best_epoch(tmp_path):
    run = tmp_path / "run"
    assert run_train(run, "--epochs", "3", "--val", "128") == 0
    log = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    assert all({"val_loss", "val_accuracy", "test_loss", "test_accuracy"} <= m.keys()
               for m in log)
    best = max(log, key=lambda m: (m["val_accuracy"], -m["epoch"]))
    header = checkpoint.load(run / "best.npz")[1]
    assert header["best"] == {"accuracy": best["val_accuracy"], "epoch": best["epoch"],
                              "on": "val"}
    # the last 128 of the 640 images are the validation set, never trained on: 8 steps of 64
    (fit, _), validation, _ = train.run_data({**header["config"], "data_dir": None})
    assert len(fit) == 512 and len(validation[0]) == 128
    assert checkpoint.load(run / "last.npz")[1]["epoch"] == 3
    _, opt, _, _, _ = checkpoint.load_run(run / "last.npz")
    assert opt.step_count == 3 * 8


def test_a_validation_split_must_leave_training_images(tmp_path, capsys):
    assert run_train(tmp_path / "run", "--val", "640") == 2
    assert capsys.readouterr().err == ("error: --val 640 must leave images to train on: the "
                                       "run has 640 training images\n")


def test_an_optimizer_brings_its_own_default_weight_decay():
    # another optimizer than the recipe's takes its own default; the recipe's keeps its decay
    plain = ("--recipe", "plain")  # Adam, no decay
    assert config_of(*plain, "--optimizer", "adamw")["weight_decay"] == 1e-2  # torch's AdamW's
    assert config_of(*plain, "--optimizer", "adamw", "--weight-decay", "0")[
        "weight_decay"] == 0.0
    assert config_of("--optimizer", "sgd")["weight_decay"] == 0.0
    assert config_of("--optimizer", "adam")["weight_decay"] == 0.0
    assert config_of()["weight_decay"] == 0.05  # the default recipe's, for its AdamW
    assert config_of("--optimizer", "adamw")["weight_decay"] == 0.05
    assert config_of(*plain, "--optimizer", "adam")["weight_decay"] == 0.0


def test_no_decay_for_norms_and_biases_trains_and_resumes_bit_for_bit(tmp_path):
    flags = ["--arch", "lenet5-bn", "--optimizer", "adamw", "--weight-decay", "0.5",
             "--limit-train", "128"]
    assert run_train(tmp_path / "straight", *flags, "--no-decay-norm-bias", "--epochs",
                     "2") == 0
    assert run_train(tmp_path / "split", *flags, "--no-decay-norm-bias", "--epochs", "1") == 0
    assert train.main(["--resume", str(tmp_path / "split"), "--epochs", "2", "--quiet"]) == 0
    assert_same_arrays(final_arrays(tmp_path / "straight"), final_arrays(tmp_path / "split"))
    model, opt, _, _, _ = checkpoint.load_run(tmp_path / "split" / "last.npz")
    assert opt.no_decay == tuple(model.norm_and_bias_names())
    # against decaying everything: the exempt parameters end elsewhere, the others too
    assert run_train(tmp_path / "decay-all", *flags, "--epochs", "2") == 0
    exempt, every = final_arrays(tmp_path / "straight"), final_arrays(tmp_path / "decay-all")
    assert checkpoint.load(tmp_path / "decay-all" / "last.npz")[1]["optimizer"]["no_decay"] == []
    name = "model/backbone.1.weight"  # the first batch norm's scale
    assert not np.array_equal(exempt[name], every[name])


def test_an_ema_run_evaluates_and_saves_the_average_and_resumes_bit_for_bit(tmp_path):
    flags = ["--arch", "lenet5-bn", "--ema", "0.8", "--limit-train", "256"]  # 4 steps an epoch
    assert run_train(tmp_path / "straight", *flags, "--epochs", "2") == 0
    assert run_train(tmp_path / "split", *flags, "--epochs", "1") == 0
    assert train.main(["--resume", str(tmp_path / "split"), "--epochs", "2", "--quiet"]) == 0
    assert_same_arrays(final_arrays(tmp_path / "straight"), final_arrays(tmp_path / "split"))
    arrays, header = checkpoint.load(tmp_path / "split" / "last.npz")
    assert header["ema"] == {"decay": 0.8, "updates": 8}
    model, _, _, _, ema = checkpoint.load_run(tmp_path / "split" / "last.npz")
    trained, averaged = model.state_dict(), ema.averaged_state()
    for name, value in trained.items():  # model/ holds the average, trained/ the weights
        assert np.array_equal(arrays[f"trained/{name}"], value), name
        assert np.array_equal(arrays[f"model/{name}"], averaged[name]), name
    assert not np.array_equal(averaged["backbone.0.weight"], trained["backbone.0.weight"])
    assert not np.array_equal(averaged["backbone.1.running_var"],
                              trained["backbone.1.running_var"])
    # what the epoch reported is the average's accuracy, which evaluate gives back
    log = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").open()]
    loaded = tinyconv.load(tmp_path / "split" / "last.npz")
    config = header["config"]
    images, labels = (a[:200] for a in tinyconv.data.load_mnist("test"))
    result = evaluate_model(loaded, images, labels, config["resize"], config["normalize"], 64)
    assert result["accuracy"] == log[-1]["test_accuracy"]
    assert result["loss"] == pytest.approx(log[-1]["test_loss"], rel=1e-12)
    with ema.applied():
        assert_same_arrays(model.state_dict(), loaded.state_dict())


def test_a_cosine_schedule_warms_up_then_anneals_and_is_kept(tmp_path):
    # 3 epochs, 1 of warm-up: lr/2, then the cosine over the other 2 from lr: lr, lr/2
    assert run_train(tmp_path / "run", "--epochs", "3", "--schedule", "cosine",
                     "--warmup-epochs", "1") == 0
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    lr = 2e-3  # the default recipe's
    assert [m["lr"] for m in log] == pytest.approx([lr / 2, lr, lr / 2], rel=1e-12)
    _, opt, sched, _, _ = checkpoint.load_run(tmp_path / "run" / "last.npz")
    assert type(sched).__name__ == "CosineAnnealingLR" and sched.epoch == 3
    assert (sched.T_max, sched.warmup) == (2, 1) and opt.lr == pytest.approx(0.0, abs=1e-18)


def test_list_archs_prints_every_network(capsys):
    assert train.main(["--list-archs"]) == 0
    out = capsys.readouterr().out
    for name in ("lenet5", "lenet5-relu", "lenet5-bn", "resnet-mini"):
        model = tinyconv.archs.build(name)
        assert f"{name}: {model.param_count:,} parameters\n{model.summary()}" in out
    assert tinyconv.archs.build("resnet-mini").param_count < 100_000


def test_resume_accepts_the_same_command_line_and_names_each_real_change(tmp_path, capsys):
    run = str(tmp_path / "run")
    started = [*QUICK, "--run-dir", run, "--lr", "0.002", "--recipe", "default", "--arch",
               "lenet5", "--translate", "2"]
    assert train.main([*started, "--epochs", "1"]) == 0
    # the command that started it, with --resume added and more epochs: it goes on
    assert train.main([*started, "--epochs", "2", "--resume", run]) == 0
    assert checkpoint.load(tmp_path / "run" / "last.npz")[1]["epoch"] == 2
    capsys.readouterr()
    assert train.main(["--resume", run, "--lr", "0.1", "--translate", "2", "--flip",
                       "--recipe", "report"]) == 2
    err = capsys.readouterr().err
    assert err == ("error: --resume continues a run with its own settings; only --epochs, "
                   "--threads, --device and --data-dir may change, and these differ: --recipe "
                   "(saved 'default', given 'report'); --lr (saved 0.002, given 0.1); --flip "
                   "(saved False, given True)\n")
    assert train.main(["--resume", run, "--run-dir", str(tmp_path / "other")]) == 2
    assert f"--run-dir (resuming {run}, given {tmp_path / 'other'})" in capsys.readouterr().err
    assert train.main(["--from", "best", "--run-dir", str(tmp_path / "new")]) == 2
    assert capsys.readouterr().err == "error: --from: only --resume takes it\n"


def test_a_damaged_last_checkpoint_points_to_best_which_resumes(tmp_path, capsys):
    run = tmp_path / "run"
    assert run_train(run, "--epochs", "1") == 0
    first = (run / "best.npz").read_bytes()
    assert train.main(["--resume", str(run), "--epochs", "3", "--quiet"]) == 0
    (run / "best.npz").write_bytes(first)  # as if epochs 2 and 3 had scored lower
    best_epoch = 1
    (run / "last.npz").write_bytes((run / "last.npz").read_bytes()[:1000])  # cut short
    capsys.readouterr()
    assert train.main(["--resume", str(run), "--epochs", "4", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {run / 'last.npz'}: unreadable checkpoint") and \
        err.endswith(f"; {run / 'best.npz'} (epoch {best_epoch}) is whole: continue from it "
                     f"with --resume {run} --from best\n")
    log = (run / "metrics.jsonl").read_text().splitlines()
    # interrupted before its first epoch, a resume from best.npz leaves the run as it was, and
    # says the way back is through best.npz still (update 12: epoch 2's second step)
    done = interrupted_run(run, "step", 12, signal.SIGINT, "--resume", str(run), "--from",
                           "best", "--epochs", "4")
    assert done.returncode == 130 and done.stderr.splitlines()[-1].endswith(
        f"{run / 'best.npz'} (epoch 1) is intact; continue with: python -m tinyconv.train "
        f"--resume {run} --from best")
    assert (run / "metrics.jsonl").read_text().splitlines() == log
    assert not (run / "metrics.replaced.jsonl").exists()
    assert train.main(["--resume", str(run), "--from", "best", "--epochs", "4", "--quiet"]) == 0
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").open()]
    assert epochs == [*range(1, best_epoch + 1), *range(best_epoch + 1, 5)]
    replaced = (run / "metrics.replaced.jsonl").read_text().splitlines()
    assert replaced == log[best_epoch:]  # the lines of the abandoned epochs, kept
    assert checkpoint.load(run / "last.npz")[1]["epoch"] == 4


# a child that trains and sends itself `signum` after optimizer update `at` (write: during
# the at-th file write instead), as a Ctrl-C or a kill would arrive
INTERRUPTING = """
import os, sys
import tinyconv.checkpoint
from tinyconv import train
from tinyconv.optim import Optimizer
where, at, signum = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
update, atomic_write, writes = Optimizer.step, tinyconv.checkpoint.atomic_write, []
def step(self, grads):
    update(self, grads)
    if where == "step" and self.step_count == at:
        os.kill(os.getpid(), signum)
def write(path, fill):
    def interrupted_fill(file):
        writes.append(path)
        if where == "write" and len(writes) == at:
            os.kill(os.getpid(), signum)
        fill(file)
    atomic_write(path, interrupted_fill)
Optimizer.step, tinyconv.checkpoint.atomic_write = step, write
sys.exit(train.main(sys.argv[4:]))
"""


def interrupted_run(run_dir, where, at, signum, *flags):
    argv = [*QUICK, "--run-dir", str(run_dir), *flags]
    return subprocess.run([sys.executable, "-c", INTERRUPTING, where, str(at), str(signum),
                           *argv], capture_output=True, text=True)


@pytest.mark.parametrize("signum, status, name", [(signal.SIGINT, 130, "SIGINT"),
                                                  (signal.SIGTERM, 143, "SIGTERM")])
def test_an_interrupted_run_says_where_and_how_to_go_on(tmp_path, signum, status, name):
    run = tmp_path / "run"
    # 640 images in batches of 64: update 14 is epoch 2's fourth step
    done = interrupted_run(run, "step", 14, signum, "--epochs", "3")
    assert done.returncode == status
    assert done.stderr.splitlines()[-1] == (
        f"stopped: interrupted by {name} at epoch 2, step 4 of 10; {run / 'last.npz'} (epoch 1) "
        f"is intact; continue with: python -m tinyconv.train --resume {run}")
    assert "Traceback" not in done.stderr
    assert sorted(path.name for path in run.iterdir()) == ["best.npz", "curves.png", "last.npz",
                                                           "metrics.jsonl"]
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").open()] == [1]
    # the printed command finishes it, as if it had never stopped
    assert train.main(["--resume", str(run), "--quiet"]) == 0
    assert run_train(tmp_path / "straight", "--epochs", "3") == 0
    assert_same_arrays(final_arrays(run), final_arrays(tmp_path / "straight"))


def test_the_default_recipe_resumes_bit_for_bit_after_an_interrupt(tmp_path):
    # its cosine, affine warps, label smoothing and moving average all pick up where they were
    flags = ["--epochs", "3", "--recipe", "default"]
    done = interrupted_run(tmp_path / "run", "step", 14, signal.SIGINT, *flags)
    assert done.returncode == 130, done.stderr
    assert train.main(["--resume", str(tmp_path / "run"), "--quiet"]) == 0
    assert run_train(tmp_path / "straight", *flags) == 0
    assert_same_arrays(final_arrays(tmp_path / "run"), final_arrays(tmp_path / "straight"))
    header = checkpoint.load(tmp_path / "run" / "last.npz")[1]
    assert header["ema"] == {"decay": 0.999, "updates": 30}
    assert header["config"]["schedule"] == "cosine" and header["config"]["rotate"] == 12.0


def test_an_interrupt_while_writing_lets_the_epoch_finish_writing(tmp_path):
    run = tmp_path / "run"
    # writes: epoch 1's last.npz and best.npz, then epoch 2's last.npz: interrupted in it
    done = interrupted_run(run, "write", 3, signal.SIGINT, "--epochs", "3")
    assert done.returncode == 130
    assert done.stderr.splitlines()[-1] == (
        f"stopped: interrupted by SIGINT at epoch 2, in writing its checkpoint; "
        f"{run / 'last.npz'} (epoch 2) is intact; continue with: python -m tinyconv.train "
        f"--resume {run}")
    header = checkpoint.load(run / "last.npz")[1]
    assert header["epoch"] == 2 and checkpoint.load(run / "best.npz")[1]["epoch"] == 2
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").open()] == [1, 2]
    assert not [path for path in run.iterdir() if path.name.startswith(".")], "a temporary file"


def test_an_interrupt_before_any_epoch_says_to_start_again(tmp_path):
    run = tmp_path / "run"
    done = interrupted_run(run, "step", 3, signal.SIGINT, "--epochs", "2")
    assert done.returncode == 130
    assert done.stderr.splitlines()[-1] == (
        "stopped: interrupted by SIGINT at epoch 1, step 3 of 10; no epoch had finished, so no "
        "checkpoint was written: run the same command again to start over")
    assert not (run / "last.npz").exists()


def test_other_commands_end_an_interrupt_in_one_line(tmp_path):
    assert run_train(tmp_path / "run", "--epochs", "1") == 0
    code = ("import os, signal, sys\n"
            "from tinyconv import evaluate\n"
            "def stop(*args, **kwargs):\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "evaluate.evaluate = stop\n"
            f"sys.exit(evaluate.main([{str(tmp_path / 'run' / 'best.npz')!r}]))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 130 and done.stderr == "stopped: interrupted by SIGINT\n"


def test_existing_run_is_not_overwritten(tmp_path, capsys):
    assert run_train(tmp_path / "run", "--epochs", "1") == 0
    before = (tmp_path / "run" / "last.npz").read_bytes()
    assert run_train(tmp_path / "run", "--epochs", "1") == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (tmp_path / "run" / "last.npz").read_bytes() == before


def test_checkpoints_hold_everything_and_best_tracks_accuracy(tmp_path):
    assert run_train(tmp_path / "run", "--epochs", "2") == 0
    arrays, header = checkpoint.load(tmp_path / "run" / "last.npz")
    assert {"optimizer/m", "optimizer/v", "model/backbone.13.bias"} <= arrays.keys()
    assert header["config"]["limit_train"] == 640 and header["schedule"]["epoch"] == 2
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    best_epoch = max(log, key=lambda m: m["test_accuracy"])["epoch"]
    _, best = checkpoint.load(tmp_path / "run" / "best.npz")
    assert best["epoch"] == best_epoch
    assert not list((tmp_path / "run").glob(".*tmp"))  # no temporary files left behind


def test_nan_loss_stops_with_step_and_keeps_last_checkpoint(tmp_path, capsys, monkeypatch):
    assert run_train(tmp_path / "run", "--epochs", "1") == 0
    kept = (tmp_path / "run" / "last.npz").read_bytes()
    real = Sequential.loss_and_grads
    calls = []

    def diverging(self, x, y, label_smoothing=0.0, into=None):  # the resumed epoch's 4th
        calls.append(1)                                            # step's input: NaN
        return real(self, np.full_like(x, np.nan) if len(calls) == 4 else x, y,
                    label_smoothing, into)

    monkeypatch.setattr(Sequential, "loss_and_grads", diverging)
    # the kernels are cached by now; the warm-up's recording step would count as a call
    monkeypatch.setattr(warmup, "compile_kernels", lambda model, config: 0)
    assert train.main(["--resume", str(tmp_path / "run"), "--epochs", "2", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "loss is nan at epoch 2, step 4 of 10 (update 14 overall)" in err
    assert f"the last good checkpoint, {tmp_path / 'run' / 'last.npz'} (epoch 1), is kept" in err
    assert (tmp_path / "run" / "last.npz").read_bytes() == kept


@pytest.mark.parametrize("interval", [0.0, float("inf")])
def test_the_losses_are_read_back_every_step_or_at_the_epochs_end(tmp_path, monkeypatch,
                                                                   interval):
    # on the CPU every step is read before its update; a GPU's step waits for nothing, its
    # losses coming back every LOSS_READ_EVERY seconds and at the epoch's end (an infinite
    # interval: the end only), and the logged train loss is their mean all the same
    reads, real_new, real_step = [], nn.LossLog.new, Sequential.loss_and_grads
    means = []

    def new(self):
        reads.append(self.written)
        return real_new(self)

    def step(self, x, y, label_smoothing=0.0, into=None):
        loss, _ = real_step(self, x, y, label_smoothing)  # the mean, for the check
        means.append(loss * len(y))
        return real_step(self, x, y, label_smoothing, into)

    if interval:
        monkeypatch.setattr(train, "loss_read_interval", lambda model: interval)
    monkeypatch.setattr(nn.LossLog, "new", new)
    monkeypatch.setattr(Sequential, "loss_and_grads", step)
    # the warm-up's recording step, which computes nothing, would count as a step
    monkeypatch.setattr(warmup, "compile_kernels", lambda model, config: 0)
    assert run_train(tmp_path / "run", "--epochs", "1", "--quiet") == 0
    # 640 images, batch 64: ten steps
    assert reads == ([10] if interval else list(range(1, 11))), reads
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert log[0]["train_loss"] == pytest.approx(sum(means) / 640, rel=1e-6)


def test_exploding_lr_stops_before_any_checkpoint(tmp_path, capsys):
    # lr 1e37 throws the weights to about +-1e37 an update: within a few steps the logits
    # overflow float32 and the loss turns NaN
    assert run_train(tmp_path / "run", "--epochs", "1", "--lr", "1e37") == 1
    err = capsys.readouterr().err
    assert re.search(r"loss is (nan|inf) at epoch 1, step [2-9] of 10", err), err
    assert "no checkpoint was written before it" in err


def test_evaluate_reports_accuracy_classes_and_confusion(tmp_path, capsys):
    assert run_train(tmp_path / "run", "--epochs", "1") == 0
    capsys.readouterr()
    assert evaluate.main([str(tmp_path / "run" / "best.npz"), "--limit", "300", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    confusion = np.array(report["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == 300 == report["count"]
    assert report["accuracy"] == pytest.approx(np.trace(confusion) / 300)
    assert len(report["per_class_accuracy"]) == 10
    assert evaluate.main([str(tmp_path / "run" / "best.npz"), "--limit", "300"]) == 0
    text = capsys.readouterr().out
    assert "accuracy" in text and "confusion matrix (rows: true, columns: predicted)" in text


@pytest.mark.parametrize("damage, message", [
    ("missing", "no such checkpoint file"),
    ("truncated", "unreadable checkpoint"),
    ("foreign", "not a tinyconv checkpoint, expected a '__header__' entry"),
    ("text", "unreadable checkpoint"),
])
def test_bad_checkpoints_get_a_clear_error(tmp_path, capsys, damage, message):
    path = tmp_path / "model.npz"
    if damage != "missing":
        assert run_train(tmp_path / "run", "--epochs", "1") == 0
        good = (tmp_path / "run" / "last.npz").read_bytes()
        content = {"truncated": good[:len(good) // 2], "text": b"hello, not a checkpoint\n"}
        if damage == "foreign":
            np.savez(path, weights=np.zeros(3))
        else:
            path.write_bytes(content[damage])
    capsys.readouterr()
    assert evaluate.main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: ") and message in err
    assert "Traceback" not in err


@pytest.mark.parametrize("flags, message", [
    (["--limit", "0"], "argument --limit: must be at least 1, found 0"),
    (["--batch-size", "0"], "argument --batch-size: must be at least 1, found 0"),
    (["--batch-size", "many"], "argument --batch-size: expected an integer, found 'many'"),
    (["--resize", "crop"], "argument --resize: invalid choice: 'crop'"),
])
def test_evaluate_refuses_bad_flags(tmp_path, capsys, flags, message):
    assert evaluate.main([str(tmp_path / "any.npz"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1
    assert "(see python -m tinyconv.evaluate --help)" in err


def test_evaluate_runs_the_model_in_eval_mode_and_restores_its_mode():
    model = LeNet5(seed=0)
    modes = []
    real = model.loss

    def spying(x, y):
        modes.append(model.training)
        return real(x, y)

    model.loss = spying
    images, labels = np.zeros((5, 28, 28), np.uint8), np.arange(5)
    for before in (True, False):
        model.train(before)
        result = evaluate_model(model, images, labels, "pad", "standard", batch_size=2)
        assert model.training is before
    assert modes == [False] * 6  # 3 batches each time, all in eval mode
    assert result["confusion"].shape == (10, 10) and result["confusion"].sum() == 5


def test_import_and_train_never_import_torch(tmp_path):
    argv = [*QUICK, "--epochs", "1", "--run-dir", str(tmp_path / "run")]
    code = ("import sys, tinyconv, tinyconv.train, tinyconv.evaluate\n"
            f"assert tinyconv.train.main({argv!r}) == 0, 'the run failed'\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (tmp_path / "run" / "last.npz").exists()


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "argument --epochs: must be at least 1, found 0"),
    (["--limit-train", "0"], "argument --limit-train: must be at least 1, found 0"),
    (["--translate", "-1"], "argument --translate: must be a finite number >= 0, found -1.0"),
    (["--lr", "-1"], "argument --lr: must be positive, found -1.0"),
    (["--lr", "fast"], "argument --lr: expected a number, found 'fast'"),
    (["--threads", "0"], "argument --threads: must be at least 1, found 0"),
    (["--threads", "100000"], "--threads must lie between 1 and"),
    (["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
    (["--ema", "1"], "--ema is the average's decay, in (0, 1) (as 0.999), or 0 for none, "
                     "found 1.0"),
    (["--ema", "-0.5"], "--ema is the average's decay, in (0, 1) (as 0.999), or 0 for none, "
                        "found -0.5"),
])
def test_bad_settings_are_refused(tmp_path, capsys, flags, message):
    assert train.main([*flags, "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


# the report's settings, as its notebook has them (README, "The recipes")
REPORT = {"epochs": 300, "batch_size": 128, "lr": 1e-5, "lr_step": 20, "lr_gamma": 0.5,
          "weight_decay": 0.0, "flip": True, "translate": 0, "resize": "bilinear",
          "normalize": "unit", "seed": 0}
DEFAULT = {"epochs": 30, "batch_size": 128, "lr": 3e-3, "lr_step": 4, "lr_gamma": 0.5,
           "weight_decay": 0.05, "flip": False, "translate": 2.5, "resize": "pad",
           "normalize": "standard", "seed": 0, "schedule": "cosine", "rotate": 12.0,
           "scale": 0.12, "shear": 0.12, "ema": 0.999, "label_smoothing": 0.1,
           "optimizer": "adamw"}
PLAIN = {"epochs": 20, "batch_size": 128, "lr": 2e-3, "lr_step": 4, "lr_gamma": 0.5,
         "weight_decay": 0.0, "flip": False, "translate": 2, "resize": "pad",
         "normalize": "standard", "seed": 0}
RECIPE_SETTINGS = {"default": DEFAULT, "plain": PLAIN, "report": REPORT}


def config_of(*argv):
    return train.build_config(train.parser().parse_args(list(argv)))


@pytest.mark.parametrize("recipe, settings", RECIPE_SETTINGS.items())
def test_recipes_give_their_settings(recipe, settings):
    config = config_of("--recipe", recipe)
    assert {key: config[key] for key in settings} == settings
    assert config["recipe"] == recipe and config["device"] == "cpu"
    assert set(config) == {*settings, "recipe", "arch", "optimizer", "schedule", "dataset",
                           "limit_train", "limit_test", "threads", "device", "data_dir",
                           "init_from"}
    assert config_of(*(["--recipe", recipe] if recipe != "default" else [])) == config


def test_the_best_recipe_brings_its_schedule_distortions_and_average():
    # the recipe bench/recipes.py chose on validation (README, "Accuracy")
    config = config_of("--recipe", "best")
    assert {key: config[key] for key in ("epochs", "lr", "schedule", "translate", "rotate",
                                         "scale", "shear", "elastic", "ema",
                                         "label_smoothing", "optimizer", "weight_decay")} == {
        "epochs": 100, "lr": 3e-3, "schedule": "cosine", "translate": 2.5, "rotate": 12.0,
        "scale": 0.12, "shear": 0.12, "elastic": [20.0, 4.0], "ema": 0.9995,
        "label_smoothing": 0.1, "optimizer": "adamw", "weight_decay": 0.05}
    assert config["arch"] == "lenet5"
    # another optimizer brings its own default decay, not the recipe's
    assert config_of("--recipe", "best", "--optimizer", "adam")["weight_decay"] == 0.0
    # its cosine takes the cosine's flags; a flag still overrides it
    assert config_of("--recipe", "best", "--per-step")["per_step"] is True
    assert config_of("--recipe", "best", "--schedule", "step")["schedule"] == "step"
    with pytest.raises(ValueError, match="--per-step: only --schedule cosine takes it"):
        config_of("--recipe", "best", "--schedule", "step", "--per-step")


@pytest.mark.parametrize("flag, value, key, expected", [
    ("--epochs", "7", "epochs", 7),
    ("--batch-size", "32", "batch_size", 32),
    ("--lr", "0.01", "lr", 0.01),
    ("--lr-step", "3", "lr_step", 3),
    ("--lr-gamma", "0.1", "lr_gamma", 0.1),
    ("--weight-decay", "1e-4", "weight_decay", 1e-4),
    ("--seed", "5", "seed", 5),
    ("--flip", None, "flip", True),
    ("--no-flip", None, "flip", False),
    ("--translate", "3", "translate", 3),
    ("--resize", "pad", "resize", "pad"),
    ("--normalize", "none", "normalize", "none"),
    ("--limit-train", "100", "limit_train", 100),
    ("--limit-test", "50", "limit_test", 50),
    ("--threads", "1", "threads", 1),
    ("--device", "cuda", "device", "cuda"),
    ("--data-dir", "/data", "data_dir", "/data"),
    ("--init-from", "a.pt", "init_from", "a.pt"),
    ("--arch", "lenet5-bn", "arch", "lenet5-bn"),
    ("--optimizer", "adagrad", "optimizer", "adagrad"),
    ("--schedule", "cosine", "schedule", "cosine"),
    ("--dataset", "kmnist", "dataset", "kmnist"),
])
@pytest.mark.parametrize("recipe", RECIPE_SETTINGS)
def test_each_override_flag_reaches_the_config(recipe, flag, value, key, expected):
    config = config_of("--recipe", recipe, flag, *([value] if value else []))
    base = {**RECIPE_SETTINGS[recipe], "recipe": recipe}
    changed = {key}
    if key == "optimizer":  # another optimizer brings its own default decay (Adagrad's 0)
        assert config["weight_decay"] == 0.0
        changed.add("weight_decay")
    assert config[key] == expected
    assert {k: v for k, v in config.items() if k not in changed and k in base} == \
        {k: v for k, v in base.items() if k not in changed}  # and nothing else changes


# every flag of every command, written out: a flag added, renamed or dropped fails here until
# the list (and with it the README) is updated
FLAGS = {
    train: ["-h", "--help", "--recipe", "--arch", "--list-archs", "--epochs", "--batch-size",
            "--optimizer", "--momentum", "--nesterov", "--lr", "--schedule", "--warmup-epochs",
            "--per-step", "--lr-step", "--lr-gamma",
            "--weight-decay", "--label-smoothing", "--ema", "--no-decay-norm-bias", "--seed",
            "--flip",
            "--no-flip",
            "--translate", "--rotate", "--scale", "--shear", "--elastic", "--resize",
            "--normalize", "--limit-train", "--limit-test", "--val",
            "--threads", "--device", "--dataset", "--data-dir", "--run-dir", "--init-from",
            "--trust-pickle", "--resume", "--from", "--quiet"],
    evaluate: ["-h", "--help", "CHECKPOINT", "--trust-pickle", "--device", "--threads",
               "--resize", "--normalize", "--dataset", "--data-dir", "--limit", "--batch-size",
               "--json", "--plots"],
    predict: ["-h", "--help", "CHECKPOINT", "--trust-pickle", "--device", "--threads",
              "--resize", "--normalize", "IMAGE", "--top", "--json", "--save-inputs"],
    visualize: ["-h", "--help", "CHECKPOINT", "--trust-pickle", "--device", "--threads",
                "--resize", "--normalize", "--out", "--image", "--index", "--augment",
                "--dataset", "--data-dir"],
    export: ["-h", "--help", "CHECKPOINT", "--torch", "--onnx", "--trust-pickle"],
    serve: ["-h", "--help", "CHECKPOINT", "--trust-pickle", "--device", "--threads", "--resize",
            "--normalize", "--host", "--port", "--quiet"],
}
# when each command exits with 1 (None: never)
FAILED = {train: "1 when training stopped at a non-finite loss",
          predict: "1 when some images could not be classified", evaluate: None,
          visualize: None, export: None, serve: None}


@pytest.mark.parametrize("command", FLAGS, ids=lambda command: command.__name__)
def test_help_names_every_flag_and_the_exit_statuses(command):
    parser = command.parser()
    actions = [name for action in parser._actions
               for name in (action.option_strings or [action.metavar])]
    assert sorted(actions) == sorted(FLAGS[command])
    text = " ".join(parser.format_help().split())  # unwrapped
    for flag in FLAGS[command]:
        assert flag in text
    for action in parser._actions:
        assert action.help, f"{action.option_strings or action.metavar} has no help"
    assert "exit status: 0 when done; " in text
    assert "2 when its input or environment stopped it" in text
    assert "130 or 143 when interrupted by Ctrl-C (SIGINT) or SIGTERM" in text
    if FAILED[command]:
        assert FAILED[command] in text
    else:
        assert "; 1 when" not in text


@pytest.mark.parametrize("command, argv", [
    (evaluate, ["CKPT"]),
    (predict, ["CKPT", "digit.png"]),
    (visualize, ["CKPT", "--out", "pictures"]),
    (train, ["--init-from", "CKPT", "--quiet"]),
])
def test_commands_pass_device_and_trust_pickle_to_the_loader(command, argv, tmp_path,
                                                             monkeypatch, capsys):
    calls = []

    def loader(path, trust_pickle=False, device="cpu", arch="lenet5"):
        calls.append((path, trust_pickle, device))
        raise ValueError(f"{path}: stop here")

    for module in (cli, train):
        monkeypatch.setattr(module, "load_model", loader)
    if command is train:
        argv = [*argv, "--run-dir", str(tmp_path / "run")]
    assert command.main([*argv, "--device", "cuda", "--trust-pickle"]) == 2
    assert calls == [("CKPT", True, "cuda")]
    assert capsys.readouterr().err == "error: CKPT: stop here\n"


def test_help_runs_from_the_command_line():
    done = subprocess.run([sys.executable, "-m", "tinyconv.train", "--help"],
                          capture_output=True, text=True)
    assert done.returncode == 0 and "--recipe {default,best,plain,report}" in done.stdout


# a child that runs a kernel as a command would (through cli.run) or directly, with a stand-in
# SciPy first on its path whose linalg records that it was imported, then imports that linalg
SCIPY_PROBE = """
import sys
import numpy as np
from tinyconv import cli
from tinyconv.kernels import cpu
def command(_):
    cpu.tanh_forward(np.zeros(4, np.float32), np.ones(4, np.float32))
if sys.argv[1] == "command":
    assert cli.run(cli.parser("probe", "a probe"), command, []) == 0
else:
    command(None)
print("linalg imported by the kernel:", "scipy.linalg" in sys.modules)
import scipy.linalg
print("then imported:", scipy.linalg.IMPORTED)
"""


@pytest.mark.parametrize("how, imported", [("command", False), ("direct", True)])
def test_a_command_loads_numba_without_importing_scipy_linalg(how, imported, tmp_path):
    # Numba's first use imports scipy.linalg, if installed, only to probe its BLAS: the
    # commands skip the probe, and scipy.linalg still imports afterwards; a direct call, the
    # library's way, is the control that shows the probe would see the import
    linalg = tmp_path / "scipy" / "linalg"
    linalg.mkdir(parents=True)
    (tmp_path / "scipy" / "__init__.py").write_text('__version__ = "1.14.0"\n')
    (linalg / "__init__.py").write_text("IMPORTED = True\n")  # no cython_blas: no BLAS
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run([sys.executable, "-c", SCIPY_PROBE, how], capture_output=True,
                          text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"linalg imported by the kernel: {imported}",
                                        "then imported: True"]


def test_only_commands_that_run_kernels_load_numbas_target(monkeypatch, tmp_path):
    loads = []
    monkeypatch.setattr(cli, "load_numba_cpu_target", lambda: loads.append(True))
    parser = cli.parser("prog", "a test command")
    assert cli.run(parser, lambda _: None, [], kernels=False) == 0 and loads == []
    assert cli.run(parser, lambda _: None, []) == 0 and loads == [True]
    # export runs none: it copies the weights out
    model, path = LeNet5(), tmp_path / "run.npz"
    opt = Adam(model)
    checkpoint.save_run(path, model, opt, StepLR(opt, 1),
                        {"epoch": 1, "config": {"seed": 0, "lr_step": 1, "lr_gamma": 0.5}})
    assert export.main([str(path), "--onnx", str(tmp_path / "run.onnx")]) == 0
    assert loads == [True]


def test_errors_are_one_line_with_the_status_of_their_kind(capsys):
    class Diverged(RuntimeError):
        pass

    def failing(error):
        def command(_):
            raise error
        return command

    parser = cli.parser("prog", "a test command")
    cases = [(Diverged("loss is nan"), (Diverged,), 1, "error: loss is nan"),
             (ValueError("bad value\n  spread over\nlines"), (), 2,
              "error: bad value spread over lines"),
             (FileNotFoundError(2, "No such file or directory", "x.npz"), (), 2,
              "error: x.npz: No such file or directory"),
             (cli.WriteError("cannot write out.png: Is a directory"), (), 2,
              "error: cannot write out.png: Is a directory")]
    for error, failed, status, line in cases:
        assert cli.run(parser, failing(error), [], failed) == status
        assert capsys.readouterr().err == line + "\n"
    assert cli.run(parser, lambda _: None, []) == 0
    assert cli.run(parser, lambda _: cli.FAILED, []) == 1
    assert cli.run(parser, lambda _: None, ["--nope"]) == 2
    assert capsys.readouterr().err == "error: unrecognized arguments: --nope (see prog --help)\n"


def test_compile_notice_prints_only_when_the_step_is_slow(capsys):
    slow = cli.compile_notice(after=0.01)
    slow.join(timeout=5)  # a step still running after `after` seconds: the notice appears
    assert capsys.readouterr().err.strip() == cli.COMPILE_NOTICE
    fast = cli.compile_notice(after=0.5)
    fast.cancel()  # the step finished in time: nothing is printed
    fast.join(timeout=5)
    quiet = cli.compile_notice(enabled=False, after=0.01)
    assert not quiet.is_alive()
    assert capsys.readouterr().err == ""


def test_atomic_write_replaces_whole_and_keeps_the_usual_mode(tmp_path):
    target = tmp_path / "out.bin"
    atomicio.atomic_write(target, lambda f: f.write(b"old"))

    def fail_midway(file):
        file.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomicio.atomic_write(target, fail_midway)
    assert target.read_bytes() == b"old"  # the failed write left the old file whole
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]  # and no temporary behind
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would, not mkstemp's 0600


def test_unwritable_run_directory_is_a_message_not_a_traceback(tmp_path, capsys):
    (tmp_path / "taken").write_text("a file where the run directory should be")
    code = train.main(["--epochs", "1", "--limit-train", "256", "--limit-test", "100",
                       "--quiet", "--run-dir", str(tmp_path / "taken")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot make the run directory {tmp_path / 'taken'}: ")


def test_checkpoint_write_failure_stops_with_the_path(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").mkdir()  # a directory where the metrics log should be appended to
    code = train.main(["--epochs", "1", "--limit-train", "256", "--limit-test", "100",
                       "--quiet", "--run-dir", str(run)])
    assert code == 2
    err = capsys.readouterr().err
    assert "error: cannot write epoch 1's results in" in err and "Is a directory" in err
    assert (run / "last.npz").exists()  # what was written before the failure is whole


def test_a_run_without_its_preprocessing_is_one_line(tmp_path, capsys):
    # save_run takes any header: one whose config lacks resize and normalize cannot be fed
    model = LeNet5()
    opt = Adam(model)
    path = tmp_path / "bare.npz"
    checkpoint.save_run(path, model, opt, StepLR(opt, 1),
                        {"epoch": 1, "config": {"seed": 0, "lr_step": 1, "lr_gamma": 0.5}})
    assert evaluate.main([str(path), "--limit", "10"]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {path}: incomplete tinyconv checkpoint, its config records no "
                   "resize or normalize (the preprocessing of its training)\n")
    out = tmp_path / "bare.onnx"
    assert export.main([str(path), "--onnx", str(out)]) == 0  # exporting needs none of it
    assert out.exists()
