"""The CPU backend's array helpers: its device memory is the host's, so nothing moves.

The same names as cuda_host.py's, so a model allocates and moves its arrays without
knowing where they live; here moving in and out copies nothing (unless an array is not
aligned).

Alignment: every array made here starts on a 64-byte boundary, a cache line and one AVX-512
vector. numpy's large arrays start 16 bytes past one (malloc's mmap chunks; small ones land
anywhere on a 16-byte grid), and then every vector load of a kernel's inner loop straddles two
cache lines: conv2's forward measured 15% slower on such inputs. A kernel's rows start every
N*4 bytes, so they all share the array's alignment only when the batch N is a multiple of 16
(LeNet's 128, the test pass's 16); at other batch sizes some rows straddle whatever the start.
"""

import math

import numpy as np

ALIGNMENT = 64  # bytes


def empty(shape, dtype=np.float32):
    """An uninitialised C-contiguous array, starting on a 64-byte boundary."""
    dtype = np.dtype(dtype)
    shape = tuple(shape) if np.ndim(shape) else (shape,)
    if any(side < 0 for side in shape):
        raise ValueError(f"negative dimensions are not allowed: {shape}")
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGNMENT, np.uint8)
    skip = -raw.ctypes.data % ALIGNMENT
    return raw[skip:skip + nbytes].view(dtype).reshape(shape)


def zeros(shape, dtype=np.float32):
    """An array of zeros, starting on a 64-byte boundary."""
    array = empty(shape, dtype)
    array[...] = 0
    return array


def aligned(array):
    """Whether the kernels can take array as it is: C-contiguous, on a 64-byte boundary."""
    return array.flags.c_contiguous and array.ctypes.data % ALIGNMENT == 0


def copy_in(dst, src):
    """Copy an array (any strides, any real dtype) into dst, casting as it goes (nothing to
    do when src is dst)."""
    if src is not dst:
        dst[...] = src


def staging_spans(arrays):
    """The byte spans [(start, stop)] of arrays [(shape, dtype)] laid one after another in a
    block, each from a 64-byte boundary, and the block's size."""
    spans, start = [], 0
    for shape, dtype in arrays:
        stop = start + math.prod(shape) * np.dtype(dtype).itemsize
        spans.append((start, stop))
        start = -(-stop // ALIGNMENT) * ALIGNMENT
    return spans, start


def staged_views(block, arrays, spans):
    """The arrays [(shape, dtype)] as views of a byte block (host or device) at their spans."""
    return [block[start:stop].view(dtype).reshape(shape)
            for (shape, dtype), (start, stop) in zip(arrays, spans, strict=True)]


class Staging:
    """What a step sends to the device, written on the host: arrays [(shape, dtype)] (a
    batch and its labels) in one block, so that one copy sends them (send). Here the host
    arrays are the device arrays: nothing moves. CUDA's Staging, of the same name and
    methods, copies the block from pinned memory, asynchronously."""

    def __init__(self, arrays):
        self.spans, size = staging_spans(arrays)
        self.host = self.device = staged_views(empty(size, np.uint8), arrays, self.spans)

    def writable(self):
        """The host arrays, once the last send has read them."""
        return self.host

    def send(self, count):
        """Send the first `count` arrays to their device arrays."""


def to_device(host, out=None):
    """host itself, no copy, when it is aligned (see aligned); else a copy of it in aligned
    memory: `out` when given (an aligned array of its shape and dtype), or a new array."""
    if aligned(host):
        return host
    if out is None:
        out = empty(host.shape, host.dtype)
    out[...] = host
    return out


def view(array, shape, start=0):
    """The elements of a C-contiguous array from `start` on (in C order), as an array of
    `shape`, no copy (numpy's views cost nothing to make: CUDA's helper of this name keeps
    them)."""
    size = math.prod(shape)
    if start == 0 and array.size == size:
        return array.reshape(shape)
    return array.reshape(array.size)[start:start + size].reshape(shape)


def to_host(array):
    """array itself, no copy."""
    return array


def synchronize():
    """Nothing to wait for: a CPU kernel returns when its work is done."""
