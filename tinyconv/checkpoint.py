"""Checkpoints: an .npz of arrays plus a JSON header, written atomically, read without pickle.

Layout inside the .npz (np.load with allow_pickle=False reads it; nothing in it can run code):
  "__header__"        uint8 bytes of a UTF-8 JSON object: format, version, and whatever the
                      caller stores (epoch, optimizer and schedule settings, config, ...)
  "<name>"            float32 arrays: parameters as "model/backbone.0.weight", Adam moments...

save/load handle any such file; save_run/load_run store and restore a whole training run
(model, Adam, schedule) in it.
"""

import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from tinyconv.model import PARAM_SHAPES, LeNet5
from tinyconv.optim import Adam, StepLR

FORMAT = "tinyconv-checkpoint"
VERSION = 1
HEADER = "__header__"


class CheckpointError(ValueError):
    """A checkpoint file is missing, damaged or not one of tinyconv's."""


# the process's umask, read once at import (reading it means setting it, briefly)
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _give_usual_mode(file):
    """Give a mkstemp file (private, 0600) the mode open() would: 0666 less the umask.

    Best effort: a file system without Unix permissions (vfat, some network mounts) may
    refuse, and the file is then written as it is.
    """
    try:
        os.fchmod(file.fileno(), 0o666 & ~_UMASK)
    except OSError:
        pass


def atomic_write(path, write):
    """Call write(file) on a temporary file beside path, fsync it, then rename it into place.

    A crash at any moment leaves either the old file or the new one under path, never a mix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                             suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            _give_usual_mode(file)
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    # the rename itself is durable only once the directory entry is on disk
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


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
    if header.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {header.get('version')}, this "
                              f"tinyconv reads version {VERSION}")
    return arrays, header


# ---- a training run: model, Adam and schedule in one checkpoint


def save_run(path, model, opt, sched, header):
    """Write model, Adam and schedule state plus header fields to path, atomically."""
    adam = opt.state_dict()
    arrays = {f"model/{name}": value for name, value in model.state_dict().items()}
    arrays["adam/m"], arrays["adam/v"] = adam.pop("m"), adam.pop("v")
    save(path, arrays, {**header, "adam": adam, "schedule": sched.state_dict()})


def load_run(path, device="cpu"):
    """Read a run checkpoint: returns (model, optimizer, schedule, header), the model and
    Adam's moments on `device` ("cpu" or "cuda"), whichever device wrote it."""
    arrays, header = load(path)
    try:
        config = header["config"]
        model = LeNet5(seed=config["seed"], device=device)
        model.load_state_dict({name: arrays[f"model/{name}"] for name in PARAM_SHAPES})
        opt = Adam(model)
        opt.load_state_dict({**header["adam"], "m": arrays["adam/m"], "v": arrays["adam/v"]})
        sched = StepLR(opt, config["lr_step"], config["lr_gamma"])
        sched.load_state_dict(header["schedule"])
    except KeyError as exc:
        raise CheckpointError(f"{path}: incomplete tinyconv checkpoint, missing {exc}") from exc
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    return model, opt, sched, header
