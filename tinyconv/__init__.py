"""tinyconv: LeNet-5 on MNIST with hand-written NumPy/Numba kernels, checked against torch."""

from tinyconv import nn
from tinyconv.archs import LeNet5
from tinyconv.data import DataError, iterate_batches, load_mnist
from tinyconv.interop import load
from tinyconv.optim import EMA, SGD, Adagrad, Adam, AdamW, CosineAnnealingLR, StepLR

__all__ = ["nn", "EMA", "SGD", "Adagrad", "Adam", "AdamW", "CosineAnnealingLR", "DataError",
           "LeNet5", "StepLR", "evaluate", "fit", "iterate_batches", "load", "load_mnist"]


def __getattr__(name):
    """fit and evaluate, imported on first use: they live in the modules of the commands
    (tinyconv.train, tinyconv.evaluate, whose module is itself the callable evaluate), which
    `python -m` must find not yet imported."""
    if name == "fit":
        from tinyconv.train import fit
        return fit
    if name == "evaluate":
        import tinyconv.evaluate
        return tinyconv.evaluate
    raise AttributeError(f"module 'tinyconv' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *__all__})
