"""The backend table: each backend module offers the same kernel names and signatures."""

import importlib

import numba
import numpy as np

KERNELS = (
    "conv2d_forward", "conv2d_backward",
    "avgpool2d_forward", "avgpool2d_backward",
    "tanh_forward", "tanh_backward",
    "linear_forward", "linear_backward",
    "softmax_xent_forward", "softmax_xent_backward",
    "adam_update",
)
BACKENDS = ("cpu",)


def get_backend(name):
    """The kernel module for a backend name ("cpu"); compiled lazily on first use."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}: expected one of {', '.join(BACKENDS)}")
    return importlib.import_module(f"{__name__}.{name}")


def adam_scalars(lr, beta1, beta2, eps, weight_decay, step):
    """adam_update's scalar arguments after `step` steps (counted from 1), as float32.

    They are worked out in float64 from Python floats, as torch.optim.Adam does, and only
    then rounded, so the float32 kernels see the same coefficients torch's do.
    """
    step_size = lr / (1 - beta1**step)  # the first moment's bias correction folded into lr
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    return tuple(np.float32(s) for s in (step_size, bias_correction2_sqrt, 1 - beta1, beta2,
                                         1 - beta2, eps, weight_decay))


def set_threads(threads):
    """Use that many Numba threads (None: leave Numba's default, all cores)."""
    if threads is None:
        return
    limit = numba.config.NUMBA_NUM_THREADS
    if not 1 <= threads <= limit:
        raise ValueError(f"--threads must lie between 1 and {limit} (NUMBA_NUM_THREADS), "
                         f"found {threads}")
    numba.set_num_threads(threads)
