"""Checkpoints: an .npz of arrays plus a JSON header, written atomically, read without pickle.

Layout inside the .npz (np.load with allow_pickle=False reads it; nothing in it can run code):
  "__header__"        uint8 bytes of a UTF-8 JSON object: format, version, and whatever the
                      caller stores (epoch, optimizer and schedule settings, config, ...)
  "<name>"            arrays: parameters and buffers as "model/backbone.0.weight" (float32,
                      buffers in their own dtypes), the optimizer's state buffers as
                      "optimizer/m", "optimizer/momentum_buffer", ...

save/load handle any such file; save_run/load_run store and restore a whole training run
(model, optimizer, schedule, the weights' moving average if one is kept) in it. With a moving
average (--ema), "model/<name>" holds the average, which is what every tool evaluates, and
"trained/<name>" the weights the optimizer trains, from which a resume goes on. A run's header
holds the network's spec under "arch", from which load_run rebuilds it, and the optimizer's
kind and settings under "optimizer". Version 1 files, written before networks were specs, hold
LeNet-5; versions 1 and 2, written before there were other optimizers, hold Adam's settings
under "adam" and its moments as "adam/m", "adam/v".
"""

import contextlib
import json
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from tinyconv.archs import build
from tinyconv.atomicio import atomic_write
from tinyconv.optim import EMA, OPTIMIZERS, load_optimizer, load_schedule

FORMAT = "tinyconv-checkpoint"
VERSION = 4
# 1: no "arch", the network is LeNet-5; 1 and 2: Adam under "adam"; 4 may hold a moving average
# under model/ and the trained weights under trained/, which version 3's readers would resume
# from the average
READS = (1, 2, 3, 4)
HEADER = "__header__"


class CheckpointError(ValueError):
    """A checkpoint file is missing, damaged or not one of tinyconv's."""


def save(path, arrays, header):
    """Write arrays ({name: ndarray}) and a JSON-able header dict to path, atomically."""
    document = json.dumps({"format": FORMAT, "version": VERSION, **header}, sort_keys=True)
    payload = {HEADER: np.frombuffer(document.encode(), np.uint8), **arrays}
    atomic_write(path, lambda file: np.savez(file, **payload))


def load(path):
    """Read a checkpoint written by save(): returns (arrays, header).

    Raises CheckpointError naming the file for a missing, truncated or foreign file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint, expected an .npz archive written "
                              f"by tinyconv, found damaged or foreign data ({exc})") from exc
    if HEADER not in arrays:
        raise CheckpointError(f"{path}: not a tinyconv checkpoint, expected a '{HEADER}' "
                              f"entry, found entries {sorted(arrays)[:6]}")
    try:
        header = json.loads(arrays.pop(HEADER).tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: damaged checkpoint header ({exc})") from exc
    found = header.get("format") if isinstance(header, dict) else header
    if found != FORMAT:
        raise CheckpointError(f"{path}: not a tinyconv checkpoint, expected format '{FORMAT}', "
                              f"found {found!r}")
    if header.get("version") not in READS:
        raise CheckpointError(f"{path}: checkpoint version {header.get('version')}, this "
                              f"tinyconv reads versions {', '.join(map(str, READS))}")
    return arrays, header


# ---- a training run: model, optimizer and schedule in one checkpoint


class Run(NamedTuple):
    """A training run as load_run reads it back: the model with the weights it trains, its
    optimizer and schedule, the checkpoint's header, and the weights' moving average (an
    optim.EMA) or None."""

    model: object
    optimizer: object
    schedule: object
    header: dict
    ema: object = None


def save_run(path, model, opt, sched, header, ema=None):
    """Write the network (spec, parameters, buffers, training steps: Dropout's masks go on
    from there), the optimizer's and the schedule's state, the moving average ema (if given)
    and header fields to path, atomically."""
    settings = opt.state_dict()
    trained = model.state_dict()
    arrays = _named("model", trained if ema is None else ema.averaged_state())
    if ema is not None:
        arrays.update(_named("trained", trained))
        header = {**header, "ema": ema.state_dict()}
    arrays.update((f"optimizer/{buffer}", settings.pop(buffer)) for buffer in opt.buffers)
    save(path, arrays, {**header, "arch": model.spec(), "steps": model.steps,
                        "optimizer": settings, "schedule": sched.state_dict()})


def _named(prefix, state):
    return {f"{prefix}/{name}": value for name, value in state.items()}


def _entries(arrays, prefix):
    """The {name: array} saved under prefix/."""
    return {name[len(prefix) + 1:]: value for name, value in arrays.items()
            if name.startswith(prefix + "/")}


def load_network(arrays, header, device="cpu"):
    """The network of a run checkpoint's arrays and header, on `device`, with the weights
    tools evaluate (the moving average, where the run kept one); a KeyError or ValueError for
    what is missing or wrong (load_run and load_evaluated name the file)."""
    arch = header["arch"] if header["version"] >= 2 else "lenet5"  # version 1: LeNet-5
    model = build(arch, header["config"]["seed"], device)
    model.load_state_dict(_entries(arrays, "model"))
    model.steps = int(header.get("steps", 0))  # absent before Dropout: nothing to replay
    return model


def optimizer_state(arrays, header):
    """The optimizer's state_dict() in a run checkpoint's arrays and header."""
    if header["version"] < 3:  # Adam's, as "adam" and "adam/m", "adam/v"
        settings, prefix = {"kind": "Adam", **header["adam"]}, "adam/"
    else:
        settings, prefix = header["optimizer"], "optimizer/"
    kind = OPTIMIZERS.get(settings["kind"])
    buffers = kind.buffers if kind else ()  # an unknown kind: load_optimizer names it
    return {**settings, **{buffer: arrays[prefix + buffer] for buffer in buffers}}


def load_run(path, device="cpu"):
    """Read a run checkpoint to go on training: a Run (model, optimizer, schedule, header,
    ema), the model, the optimizer's state and the average on `device` ("cpu" or "cuda"),
    whichever device wrote it."""
    arrays, header = load(path)
    with _named_errors(path):
        model = load_network(arrays, header, device)
        ema = None
        if "ema" in header:  # model/ holds the average, trained/ what the optimizer trains
            ema = EMA(model, header["ema"]["decay"])
            ema.load_state_dict(header["ema"], model.state_dict())
            model.load_state_dict(_entries(arrays, "trained"))
        opt = load_optimizer(model, optimizer_state(arrays, header))
        sched = load_schedule(opt, header["schedule"])
    return Run(model, opt, sched, header, ema)


def load_evaluated(path, device="cpu"):
    """(network, header) of a run checkpoint, with the weights to evaluate: the moving
    average where the run kept one."""
    arrays, header = load(path)
    with _named_errors(path):
        return load_network(arrays, header, device), header


@contextlib.contextmanager
def _named_errors(path):
    """A KeyError or ValueError in reading path's contents, as a CheckpointError naming it."""
    try:
        yield
    except KeyError as exc:
        raise CheckpointError(f"{path}: incomplete tinyconv checkpoint, missing {exc}") from exc
    except CheckpointError:
        raise
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
