"""The backend table: each backend module offers the same kernel names and signatures."""

import importlib

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
