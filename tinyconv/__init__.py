"""tinyconv: LeNet-5 on MNIST with hand-written NumPy/Numba kernels, checked against torch."""
