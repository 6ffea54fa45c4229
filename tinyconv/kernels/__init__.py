"""The backend table: each backend offers the same kernels and array helpers by name."""

import functools
import importlib
import importlib.util
from types import SimpleNamespace

KERNELS = (
    "conv2d_forward", "conv2d_backward",
    "conv2d_tanh_avgpool2d_tanh_forward", "tanh_avgpool2d_tanh_backward",
    "avgpool2d_forward", "avgpool2d_backward",
    "maxpool2d_forward", "maxpool2d_backward",
    "tanh_forward", "tanh_backward",
    "relu_forward", "relu_backward",
    "silu_forward", "silu_backward",
    "pad2d_forward", "pad2d_backward",
    "add",
    "batchnorm_forward", "batchnorm_eval_forward", "batchnorm_backward",
    "dropout_forward", "dropout_backward",
    "linear_forward", "linear_backward",
    "softmax_xent_forward", "softmax_xent_backward", "loss_sum",
    "adam_update", "sgd_update", "adagrad_update", "ema_update",
)
# kernels that only some backends have, None in the others: the whole-network small-batch
# inference kernel and its one-thread twin for a single sample (the end of cpu.py); a backend
# without them runs the batch-last kernels at every batch size
OPTIONAL = ("sequential_forward", "sequential_forward_serial")
# make, fill and read a backend's arrays (see host.py and cuda_host.py)
HELPERS = ("empty", "zeros", "view", "Staging", "to_device", "to_host", "copy_in",
           "synchronize")
# backend name -> (modules of its KERNELS, module of its HELPERS)
BACKENDS = {"cpu": (("cpu", "cpu_blocks", "cpu_optim"), "host"),
            "cuda": (("cuda", "cuda_blocks", "cuda_optim"), "cuda_host")}


class DeviceUnavailable(RuntimeError):
    """A backend cannot run here; the message says what is missing and how to get it."""


# the extras that bring numba-cuda with a CUDA toolkit's compiler (NVVM, libdevice, NVRTC), by
# the toolkit's major version: a driver runs code of its own CUDA version and older ones
TOOLKIT_EXTRAS = {12: "cuda12", 13: "cuda13"}
INSTALL = ("pip install 'tinyconv[cuda]' (CUDA 12's compiler, which any driver from 525 on "
           "runs) or 'tinyconv[cuda13]' (a driver from 580)")


def require_cuda():
    """Raise DeviceUnavailable, saying what to install or check, unless numba-cuda is
    installed, finds a GPU and can compile kernels for it: NVVM and libdevice found, from a
    CUDA toolkit no newer than the driver. Numba's simulator (NUMBA_ENABLE_CUDASIM=1) needs
    no GPU and no compiler."""
    if importlib.util.find_spec("numba_cuda") is None:
        raise DeviceUnavailable(
            f"device 'cuda' needs the numba-cuda package, which is not installed: {INSTALL}; "
            "or use --device cpu")
    from numba import cuda

    if not cuda.is_available():
        from numba.cuda.cudadrv.driver import driver

        reason = " ".join(str(driver.initialization_error or "no CUDA device").split())
        raise DeviceUnavailable(
            f"device 'cuda': numba-cuda is installed but finds no usable NVIDIA GPU ({reason}); "
            "check the GPU and its driver with nvidia-smi, or use --device cpu "
            "(NUMBA_ENABLE_CUDASIM=1 runs the CUDA kernels in Numba's simulator, for tests)")
    from numba.cuda import config

    if not config.ENABLE_CUDASIM:
        _require_compiler()


def _require_compiler():
    """The CUDA toolkit parts numba-cuda compiles with: there, and no newer than the driver."""
    from cuda import bindings
    from numba.cuda.cudadrv import nvvm
    from numba.cuda.cudadrv.driver import driver
    from numba.cuda.cudadrv.error import NvvmSupportError

    try:
        nvvm.NVVM()
        nvvm.LibDevice()
    except (NvvmSupportError, RuntimeError) as exc:  # RuntimeError: cuda.pathfinder's
        # DynamicLibNotFoundError (no libNVVM to load), or no libdevice file
        reason = " ".join(str(exc).split())[:160]
        raise DeviceUnavailable(
            f"device 'cuda': a GPU is here, but numba-cuda cannot compile kernels for it: "
            f"the CUDA toolkit's NVVM and libdevice are missing ({reason}); {INSTALL}") from None
    toolkit, (major, minor) = int(bindings.__version__.split(".")[0]), driver.get_version()
    if toolkit > major:
        raise DeviceUnavailable(
            f"device 'cuda': the installed CUDA {toolkit} packages make code this driver "
            f"(CUDA {major}.{minor}) cannot run: pip install "
            f"'tinyconv[{TOOLKIT_EXTRAS.get(major, 'cuda12')}]' in a fresh environment, or "
            "update the driver")


@functools.cache
def get_backend(name):
    """A backend by name, "cpu" or "cuda": its KERNELS, OPTIONAL and HELPERS as attributes.

    The kernels compile on first use. "cuda" first checks that it can run (require_cuda).
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown device {name!r}: expected one of {', '.join(BACKENDS)}")
    if name == "cuda":
        require_cuda()
    found = {}
    for module in kernel_modules(name):
        found.update(vars(module))
    helpers = importlib.import_module(f"{__name__}.{BACKENDS[name][1]}")
    return SimpleNamespace(**{kernel: found[kernel] for kernel in KERNELS},
                           **{kernel: found.get(kernel) for kernel in OPTIONAL},
                           **{helper: getattr(helpers, helper) for helper in HELPERS})


def kernel_modules(name):
    """The modules that hold a backend's kernels, imported (the CUDA ones import without a
    GPU: the tests read their kernels' code)."""
    return [importlib.import_module(f"{__name__}.{module}") for module in BACKENDS[name][0]]
