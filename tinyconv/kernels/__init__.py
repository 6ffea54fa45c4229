"""The backend table: each backend offers the same kernels and array helpers by name."""

import functools
import importlib
import importlib.util
import sys
import threading
from types import SimpleNamespace

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
# make, fill and read a backend's arrays (see host.py and the end of cuda.py)
HELPERS = ("empty", "zeros", "to_device", "to_host", "copy_in", "synchronize")
# backend name -> (module of its KERNELS, module of its HELPERS)
BACKENDS = {"cpu": ("cpu", "host"), "cuda": ("cuda", "cuda")}


class DeviceUnavailable(RuntimeError):
    """A backend cannot run here; the message says what is missing and how to get it."""


def require_cuda():
    """Raise DeviceUnavailable unless numba-cuda is installed and finds a GPU (or runs its
    simulator: NUMBA_ENABLE_CUDASIM=1)."""
    if importlib.util.find_spec("numba_cuda") is None:
        raise DeviceUnavailable(
            "device 'cuda' needs the numba-cuda package, which is not installed: "
            "pip install 'tinyconv[cuda]' (or pip install numba-cuda), or use --device cpu")
    from numba import cuda

    if not cuda.is_available():
        from numba.cuda.cudadrv.driver import driver

        reason = " ".join(str(driver.initialization_error or "no CUDA device").split())
        raise DeviceUnavailable(
            f"device 'cuda': numba-cuda is installed but finds no usable NVIDIA GPU ({reason}); "
            "check the GPU and its driver with nvidia-smi, or use --device cpu "
            "(NUMBA_ENABLE_CUDASIM=1 runs the CUDA kernels in Numba's simulator, for tests)")


@functools.cache
def get_backend(name):
    """A backend by name, "cpu" or "cuda": its KERNELS and HELPERS as attributes.

    The kernels compile on first use. "cuda" first checks that it can run (require_cuda).
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown device {name!r}: expected one of {', '.join(BACKENDS)}")
    if name == "cuda":
        require_cuda()
    kernels, helpers = (importlib.import_module(f"{__name__}.{module}")
                        for module in BACKENDS[name])
    return SimpleNamespace(**{kernel: getattr(kernels, kernel) for kernel in KERNELS},
                           **{helper: getattr(helpers, helper) for helper in HELPERS})


def adam_scalars(lr, beta1, beta2, eps, weight_decay, step):
    """adam_update's scalar arguments after `step` steps (counted from 1), as float32.

    They are worked out in float64 from Python floats, as torch.optim.Adam does, and only
    then rounded, so the float32 kernels see the same coefficients torch's do.
    """
    step_size = lr / (1 - beta1**step)  # the first moment's bias correction folded into lr
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    return tuple(np.float32(s) for s in (step_size, bias_correction2_sqrt, 1 - beta1, beta2,
                                         1 - beta2, eps, weight_decay))


COMPILE_NOTICE = ("tinyconv: compiling the kernels for this machine (the first run takes about "
                  "20 s; Numba caches them for later runs)")


def compile_notice(enabled=True, after=1.0):
    """A started timer that prints COMPILE_NOTICE unless cancelled within `after` seconds.

    Start it before a model's first step and cancel it after: a step takes milliseconds, so
    one that is still running a second later is compiling kernels (on a first run, or after
    the kernel files changed).
    """
    from tqdm import tqdm  # writes above any progress bar on the screen

    timer = threading.Timer(after, tqdm.write, [COMPILE_NOTICE], {"file": sys.stderr})
    timer.daemon = True
    if enabled:
        timer.start()
    return timer


def set_threads(threads):
    """Use that many Numba threads (None: leave Numba's default, all cores)."""
    if threads is None:
        return
    limit = numba.config.NUMBA_NUM_THREADS
    if not 1 <= threads <= limit:
        raise ValueError(f"--threads must lie between 1 and {limit} (NUMBA_NUM_THREADS), "
                         f"found {threads}")
    numba.set_num_threads(threads)
