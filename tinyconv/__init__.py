"""tinyconv: LeNet-5 on MNIST with hand-written NumPy/Numba kernels, checked against torch."""

from tinyconv import nn
from tinyconv.archs import LeNet5
from tinyconv.data import DataError, iterate_batches, load_mnist
from tinyconv.interop import load
from tinyconv.optim import SGD, Adagrad, Adam, AdamW, CosineAnnealingLR, StepLR

__all__ = ["nn", "SGD", "Adagrad", "Adam", "AdamW", "CosineAnnealingLR", "DataError", "LeNet5",
           "StepLR", "iterate_batches", "load", "load_mnist"]
