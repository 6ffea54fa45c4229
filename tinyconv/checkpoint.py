"""Checkpoints: an .npz of arrays plus a JSON header, written atomically, read without pickle.

Layout inside the .npz (np.load with allow_pickle=False reads it; nothing in it can run code):
  "__header__"        uint8 bytes of a UTF-8 JSON object: format, version, and whatever the
                      caller stores (epoch, optimizer and schedule settings, config, ...)
  "<name>"            arrays: parameters and buffers as "model/backbone.0.weight" (float32,
                      buffers in their own dtypes), the optimizer's state buffers as
                      "optimizer/m", "optimizer/momentum_buffer", ...

save/load handle any such file; save_run/load_run store and restore a whole training run
(model, optimizer, schedule) in it. A run's header holds the network's spec under "arch", from
which load_run rebuilds it, and the optimizer's kind and settings under "optimizer". Version 1
files, written before networks were specs, hold LeNet-5; versions 1 and 2, written before
there were other optimizers, hold Adam's settings under "adam" and its moments as "adam/m",
"adam/v".
"""

import json
import zipfile
from pathlib import Path

import numpy as np

from tinyconv.archs import build
from tinyconv.atomicio import atomic_write
from tinyconv.optim import OPTIMIZERS, load_optimizer, load_schedule

FORMAT = "tinyconv-checkpoint"
VERSION = 3
READS = (1, 2, 3)  # 1: no "arch", the network is LeNet-5; 1 and 2: Adam under "adam"
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


def save_run(path, model, opt, sched, header):
    """Write the network (spec, parameters, buffers, training steps: Dropout's masks go on
    from there), the optimizer's and the schedule's state plus header fields to path,
    atomically."""
    settings = opt.state_dict()
    arrays = {f"model/{name}": value for name, value in model.state_dict().items()}
    arrays.update((f"optimizer/{buffer}", settings.pop(buffer)) for buffer in opt.buffers)
    save(path, arrays, {**header, "arch": model.spec(), "steps": model.steps,
                        "optimizer": settings, "schedule": sched.state_dict()})


def load_network(arrays, header, device="cpu"):
    """The network of a run checkpoint's arrays and header, on `device` (a KeyError or
    ValueError for what is missing or wrong; load_run names the file)."""
    arch = header["arch"] if header["version"] >= 2 else "lenet5"  # version 1: LeNet-5
    model = build(arch, header["config"]["seed"], device)
    prefix = "model/"
    model.load_state_dict({name[len(prefix):]: value for name, value in arrays.items()
                           if name.startswith(prefix)})
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
    """Read a run checkpoint: returns (model, optimizer, schedule, header), the model and
    the optimizer's state on `device` ("cpu" or "cuda"), whichever device wrote it."""
    arrays, header = load(path)
    try:
        model = load_network(arrays, header, device)
        opt = load_optimizer(model, optimizer_state(arrays, header))
        sched = load_schedule(opt, header["schedule"])
    except KeyError as exc:
        raise CheckpointError(f"{path}: incomplete tinyconv checkpoint, missing {exc}") from exc
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    return model, opt, sched, header
