"""The CPU backend's array helpers: its device memory is the host's, so nothing moves.

The same names as at the end of cuda.py, so a model allocates and moves its arrays without
knowing where they live; here moving in and out copies nothing.
"""

import numpy as np


def empty(shape, dtype=np.float32):
    """An uninitialised array."""
    return np.empty(shape, dtype)


def zeros(shape, dtype=np.float32):
    """An array of zeros."""
    return np.zeros(shape, dtype)


def copy_in(dst, src):
    """Copy an array (any strides, any real dtype) into dst, casting as it goes."""
    dst[...] = src


def to_device(host, out=None):
    """host itself, no copy: the CPU kernels take it as it is (C-contiguous, the kernel's
    dtype); `out`, the buffer a GPU backend would copy into, is not needed."""
    return host


def to_host(array):
    """array itself, no copy."""
    return array


def synchronize():
    """Nothing to wait for: a CPU kernel returns when its work is done."""
