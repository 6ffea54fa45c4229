"""Atomic file writes: a temporary file beside the target, fsynced, then renamed into place.

Used by checkpoints, pictures and exports; it imports nothing of tinyconv (and so no Numba).
"""

import os
import tempfile
from pathlib import Path

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
