"""The CUDA backend's array helpers: host.py's names, on an NVIDIA GPU's memory.

Device arrays are made once (a Sequential's arenas, an optimizer's state) and moved only
where a step begins (Staging: the batch and its labels in one asynchronous copy) and where a
result is read (to_host, which waits for the work queued before it). view keeps the views
the launchers and layers need, since numba-cuda builds each in Python.
"""

import weakref

import numpy as np
from numba import cuda

from tinyconv.kernels import host

# id(array) -> (a weak reference to the array, {(shape, start): that view of it})
_VIEWS = {}


def view(array, shape, start=0):
    """The elements of a C-contiguous device array from `start` on (in C order), as an array
    of `shape`, no copy: made on first need and kept while array lives. numba-cuda builds a
    device array's view in Python, microseconds each, and a step's arrays are the same every
    step: each view is made once per buffer set."""
    if start == 0 and array.shape == shape:
        return array
    key = id(array)
    entry = _VIEWS.get(key)
    if entry is None or entry[0]() is not array:
        entry = _VIEWS[key] = (weakref.ref(array, lambda _, key=key: _VIEWS.pop(key, None)), {})
    views = entry[1]
    if (shape, start) not in views:  # made as host.view makes numpy's (the same methods)
        views[shape, start] = host.view(array, shape, start)
    return views[shape, start]


def empty(shape, dtype=np.float32):
    """An uninitialised device array."""
    return cuda.device_array(shape, dtype)


def zeros(shape, dtype=np.float32):
    """A device array of zeros."""
    return cuda.to_device(np.zeros(shape, dtype))


def copy_in(dst, src):
    """Copy a host array (any strides, any real dtype) into the device array dst."""
    dst.copy_to_device(np.ascontiguousarray(src, dst.dtype))


def to_device(host, out=None):
    """host copied to the device: into `out` (a device array of its shape) when given, so
    that nothing is allocated, else into a new device array."""
    if out is None:
        out = empty(host.shape, host.dtype)
    copy_in(out, host)
    return out


class Staging(host.Staging):
    """host.Staging on a GPU: the host arrays in pinned memory, sent in one asynchronous copy
    on the default stream, in order with the kernels; writable() waits until the last copy
    has read them, so the host runs at most about a step ahead of the GPU (a second block
    used in turn would let it run further)."""

    def __init__(self, arrays):
        self.spans, size = host.staging_spans(arrays)
        pinned, self._block = cuda.pinned_array(size, np.uint8), cuda.device_array(size, np.uint8)
        self.host, self.device = (host.staged_views(block, arrays, self.spans)
                                  for block in (pinned, self._block))
        # the block's first `count` arrays, host and device side, by count: views made once
        self._parts = {count: (pinned[:stop], self._block[:stop])
                       for count, (_, stop) in enumerate(self.spans, 1)}
        self._stream, self._sent = cuda.default_stream(), cuda.event()
        self._sent.record(self._stream)

    def writable(self):
        self._sent.synchronize()
        return self.host

    def send(self, count):
        source, target = self._parts[count]
        target.copy_to_device(source, stream=self._stream)
        self._sent.record(self._stream)


def to_host(array):
    """A host copy of a device array (waits for the work queued before it)."""
    return array.copy_to_host()


def synchronize():
    """Wait until the GPU has finished all the work queued so far."""
    cuda.synchronize()
