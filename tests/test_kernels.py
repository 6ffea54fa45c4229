"""Properties of the compiled kernels: float32 only, deterministic, free of the thread count."""

import re

import numba
import numpy as np
import pytest
from numba import njit, prange

from tinyconv.kernels import COMPILE_NOTICE, KERNELS, compile_notice, cpu, host
from tinyconv.kernels.host import ALIGNMENT, to_batch_last
from tinyconv.model import LeNet5, _Arena
from tinyconv.optim import Adam


def kernel_args(name, seed=0, n=37):
    """Random float32 arguments for one kernel call (batch-last, batch n), at shapes that split
    across threads; tanh's flat, as the model calls it."""
    rng = np.random.default_rng(seed)

    def f32(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    labels = rng.integers(0, 10, size=n).astype(np.int64)
    scalars = [np.float32(s) for s in (0.01, 0.9, 0.1, 0.999, 0.001, 1e-8, 0.01)]
    return {
        "conv2d_forward": (f32(16, 10, 10, n), f32(6, 14, 14, n), f32(16, 6, 5, 5), f32(16)),
        "conv2d_backward": (f32(6, 14, 14, n), f32(16, 6, 5, 5), f32(16), f32(16, 10, 10, n),
                            f32(6, 14, 14, n), f32(16, 6, 5, 5)),
        "avgpool2d_forward": (f32(6, 14, 14, n), f32(6, 28, 28, n), 2),
        "avgpool2d_backward": (f32(6, 28, 28, n), f32(6, 14, 14, n), 2),
        "tanh_forward": (f32(6 * 28 * 28 * n), f32(6 * 28 * 28 * n)),
        "tanh_backward": (f32(6 * 28 * 28 * n), f32(6 * 28 * 28 * n), f32(6 * 28 * 28 * n)),
        "linear_forward": (f32(84, n), f32(120, n), f32(84, 120), f32(84)),
        "linear_backward": (f32(120, n), f32(84, 120), f32(84), f32(84, n), f32(120, n),
                            f32(84, 120)),
        "softmax_xent_forward": (f32(n), f32(10, n), f32(10, n), labels),
        "softmax_xent_backward": (f32(10, n), np.abs(f32(10, n)), labels, np.float32(1.0)),
        "adam_update": (f32(5001), f32(5001), np.abs(f32(5001)), f32(5001), *scalars),
    }[name]


def placed(array, offset):
    """A C-contiguous copy of array whose data starts `offset` bytes past a 64-byte boundary."""
    raw = np.empty(array.nbytes + 2 * ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % ALIGNMENT + offset
    copy = raw[start:start + array.nbytes].view(array.dtype).reshape(array.shape)
    copy[...] = array
    return copy


def run_kernel(name, threads, offset=0, n=37):
    """Call a kernel on fresh copies of its arguments at batch n, placed `offset` bytes past a
    64-byte boundary, with a thread count; return them all."""
    args = [placed(a, offset) if isinstance(a, np.ndarray) else a
            for a in kernel_args(name, n=n)]
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        getattr(cpu, name)(*args)
    finally:
        numba.set_num_threads(previous)
    return [a for a in args if isinstance(a, np.ndarray)]


@pytest.mark.parametrize("name", KERNELS)
def test_bit_identical_across_calls_and_threads(name):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs at least 2 Numba threads to compare 1 against 2")
    first, again, single = (run_kernel(name, t) for t in (2, 2, 1))
    for a, b, c in zip(first, again, single, strict=True):
        assert np.array_equal(a, b), f"{name}: two calls with 2 threads differ"
        assert np.array_equal(a, c), f"{name}: 1 thread and 2 threads differ"


# float64 arithmetic, conversions to double and calls returning double, in LLVM IR
DOUBLE_MATH = re.compile(r"\b(fadd|fsub|fmul|fdiv|frem|fcmp)\b[^=]*\bdouble\b|\bfpext\b"
                         r"|\bto double\b|= call [^@]*double @")


def double_math_lines(dispatcher, args):
    """Lines of float64 arithmetic in a kernel's compiled code, Python-call wrapper excluded."""
    # cached kernels cannot be inspected, so compile the same Python function afresh, with the
    # kernel's own options (targetoptions leaves out cache; njit sets nopython itself)
    options = {k: v for k, v in dispatcher.targetoptions.items() if k != "nopython"}
    fresh = njit(**options)(dispatcher.py_func)
    fresh(*args)
    hits = []
    for ir in fresh.inspect_llvm().values():
        for function in re.split(r"\n(?=define )", ir):
            # the wrapper unboxes Python scalars through PyFloat_AsDouble: not kernel maths
            if function.startswith("define") and "cpython" not in function.split("(")[0]:
                hits += [line.strip() for line in function.splitlines()
                         if DOUBLE_MATH.search(line)]
    return hits


@pytest.mark.parametrize("n", [32, 37])
@pytest.mark.parametrize("name", KERNELS)
def test_results_do_not_depend_on_alignment(name, n):
    # the same values from arrays on a 64-byte boundary (as the model's are) and from arrays
    # 4, 16 or 36 bytes past one (as a user's or numpy's may be); at batch 32 every row of the
    # first starts on a boundary too, at 37 they fall anywhere on a 4-byte grid
    threads = numba.get_num_threads()
    reference = run_kernel(name, threads, n=n)
    for offset in (4, 16, 36):
        for ours, theirs in zip(run_kernel(name, threads, offset, n), reference, strict=True):
            assert np.array_equal(ours, theirs, equal_nan=True), offset


def compiled_parts(name):
    """(kernel, arguments) for each piece of compiled code behind a kernel: itself, and for
    conv2d_backward the input and parameter parts it calls (compiled apart, not inlined)."""
    args = kernel_args(name)
    parts = [(getattr(cpu, name), args)]
    if name == "conv2d_backward":
        dinp, dweight, dbias, dout, inp, weight = args
        parts += [(cpu._conv2d_backward_input, (dinp, dout, weight)),
                  (cpu._conv2d_backward_params, (dweight, dbias, dout, inp))]
    return parts


@pytest.mark.parametrize("name", KERNELS)
def test_no_float64_arithmetic(name):
    for kernel, args in compiled_parts(name):
        hits = double_math_lines(kernel, args)
        assert not hits, f"{kernel.__name__} computes in float64: {hits[:3]}"


def test_conv2d_backward_without_dinp():
    # conv1's call: dinp None skips the input gradient; the rest must be bit for bit the same
    full = [a.copy() for a in kernel_args("conv2d_backward")]
    cpu.conv2d_backward(*full)
    partial = [None] + [a.copy() for a in kernel_args("conv2d_backward")[1:]]
    cpu.conv2d_backward(*partial)
    for name, a, b in zip(("dweight", "dbias"), full[1:3], partial[1:3], strict=True):
        assert np.array_equal(a, b), f"conv2d_backward without dinp: {name} differs"


def test_float64_scan_catches_an_upcast():
    # the classic slip: a Python float constant turns float32 maths into float64
    @njit(parallel=True, cache=False)
    def scale(out, inp):
        for i in prange(inp.size):
            out[i] = inp[i] * 0.1

    x = np.ones(8, np.float32)
    assert double_math_lines(scale, (np.empty_like(x), x))


def test_compile_notice_prints_only_when_the_step_is_slow(capsys):
    slow = compile_notice(after=0.01)
    slow.join(timeout=5)  # a step still running after `after` seconds: the notice appears
    assert capsys.readouterr().err.strip() == COMPILE_NOTICE
    fast = compile_notice(after=0.5)
    fast.cancel()  # the step finished in time: nothing is printed
    fast.join(timeout=5)
    quiet = compile_notice(enabled=False, after=0.01)
    assert not quiet.is_alive()
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("shape", [(128, 1024), (37, 50), (1, 3)])
def test_to_batch_last_is_the_transpose(shape):
    inp = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    out = np.full(shape[::-1], np.nan, np.float32)  # every value must be written
    to_batch_last(out, inp)
    assert np.array_equal(out, inp.T)


@pytest.mark.parametrize("shape", [(), 0, 7, (3, 5), (6, 14, 14, 37)])
@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_host_arrays_start_on_a_cache_line(shape, dtype):
    for array in (host.empty(shape, dtype), host.zeros(shape, dtype)):
        assert array.shape == np.empty(shape).shape and array.dtype == dtype
        assert array.flags.c_contiguous
        assert array.ctypes.data % ALIGNMENT == 0 or array.size == 0  # no data, no address
    assert not host.zeros(shape, dtype).any()


def test_to_device_copies_only_what_is_not_aligned():
    values = np.arange(60, dtype=np.float32).reshape(3, 20)
    ready = placed(values, 0)
    assert host.to_device(ready) is ready  # nothing to do: the array itself
    for unready in (placed(values, 4), np.asfortranarray(ready), ready[:, ::2]):
        copy = host.to_device(unready)
        assert copy is not unready and host.aligned(copy)
        assert np.array_equal(copy, unready)
    out = host.empty(values.shape)
    assert host.to_device(placed(values, 16), out) is out and np.array_equal(out, values)


@pytest.mark.parametrize("batch", [1, 7, 128])
def test_model_buffers_start_on_a_cache_line(batch):
    model = LeNet5(seed=0)
    opt = Adam(model)
    x = np.random.default_rng(0).standard_normal((batch, 1, 32, 32)).astype(np.float32)
    model.loss_and_grads(x, np.zeros(batch, np.int64))
    buffers = model._buffers[batch]
    for array in [*buffers.acts, *buffers.gradients()[1:], buffers.losses, buffers.probs,
                  model.flat_params, model.flat_grads, opt.m, opt.v]:
        assert array.ctypes.data % ALIGNMENT == 0, array.shape


def test_arena_sizes_are_python_ints():
    # numba-cuda's device_array takes an int or a tuple, not a numpy integer (the simulator's
    # takes both, so only this catches it)
    sizes = []

    def allocate(size):
        sizes.append(size)
        assert type(size) is int, type(size)
        return host.empty(size)

    arena = _Arena(allocate)
    views = arena.carve([(6, 28, 28, 7), (3,), (16, 5, 5, 7)])
    assert [view.shape for view in views] == [(6, 28, 28, 7), (3,), (16, 5, 5, 7)]
    assert len(sizes) == 2 and all(view.ctypes.data % ALIGNMENT == 0 for view in views)
