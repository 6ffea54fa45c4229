"""Properties of the compiled kernels, on the calls the registry's cases make: float32 only,
deterministic, free of the thread count and of the arrays' alignment; and the host arrays and
model buffers they are given, aligned.

Every kernel-calling case of tests/registry.py (layers, the loss, Adam) runs at batch 32 and
37 (37: rows that start anywhere on a 4-byte grid), its kernel calls recorded by
tests/harness.py and replayed here on fresh copies: whatever a layer asks of a kernel is what
gets checked.
"""

import dataclasses
import functools
import re
import sys

import numba
import numpy as np
import pytest
from numba import njit, prange
from numba.core.registry import CPUDispatcher

from tests.harness import draw, layer_results, recorded_calls
from tests.registry import KERNEL_CASES, REGISTRY
from tinyconv import LeNet5
from tinyconv.kernels import KERNELS, get_backend, host
from tinyconv.kernels.cpu import to_batch_last
from tinyconv.kernels.host import ALIGNMENT
from tinyconv.nn import _Arena
from tinyconv.optim import Adam

CPU = get_backend("cpu")


@functools.cache
def calls_at(n):
    """{case name: its recorded kernel calls} for every kernel-calling case at batch n."""
    return {name: recorded_calls(case.at_batch(n)) for name, case in KERNEL_CASES.items()}


def placed(array, offset):
    """A C-contiguous copy of array whose data starts `offset` bytes past a 64-byte boundary."""
    raw = np.empty(array.nbytes + 2 * ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % ALIGNMENT + offset
    copy = raw[start:start + array.nbytes].view(array.dtype).reshape(array.shape)
    copy[...] = array
    return copy


def replay(call, offset=0, threads=None):
    """Run a recorded call again on fresh copies of its arguments, placed `offset` bytes past
    a 64-byte boundary, with `threads` Numba threads (default: as set); {argument: array}."""
    args = [placed(a, offset) if isinstance(a, np.ndarray) else a for a in call.args]
    previous = numba.get_num_threads()
    numba.set_num_threads(threads or previous)
    try:
        getattr(CPU, call.kernel)(*args)
    finally:
        numba.set_num_threads(previous)
    return {name: a for name, a in zip(call.names, args, strict=True)
            if isinstance(a, np.ndarray)}


@pytest.mark.parametrize("name", KERNEL_CASES)
def test_bit_identical_across_calls_and_threads(name):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs at least 2 Numba threads to compare 1 against 2")
    for call in calls_at(37)[name]:
        first, again, single = (replay(call, threads=t) for t in (2, 2, 1))
        for arg in first:
            what = f"{name}: {call.kernel} {arg}"
            assert np.array_equal(first[arg], again[arg]), f"{what}: two calls differ"
            assert np.array_equal(first[arg], single[arg]), f"{what}: 1 and 2 threads differ"


@pytest.mark.parametrize("n", [32, 37])
@pytest.mark.parametrize("name", KERNEL_CASES)
def test_results_do_not_depend_on_alignment(name, n):
    # the same values from arrays on a 64-byte boundary (as the model's are) and from arrays
    # 4, 16 or 36 bytes past one (as a user's or numpy's may be); at batch 32 every row of the
    # first starts on a boundary too, at 37 they fall anywhere on a 4-byte grid
    for call in calls_at(n)[name]:
        reference = replay(call)
        for offset in (4, 16, 36):
            for arg, got in replay(call, offset).items():
                assert np.array_equal(got, reference[arg], equal_nan=True), (
                    f"{name}: {call.kernel} {arg} differs {offset} bytes off a boundary")


@pytest.mark.parametrize("kind", [kind for kind, entry in REGISTRY.items()
                                  if any(case.layer.params(case.shape[1:])
                                         for case in entry.cases.values())])
def test_parameter_gradients_do_not_need_dinp(kind):
    # a network's first layer gets dinp None (nobody needs the image's gradient): its
    # parameter gradients must be bit for bit those computed beside an input gradient
    case = next(iter(REGISTRY[kind].cases.values())).at_batch(37)
    values = draw(case)
    full, partial = (layer_results(get_backend("cpu"), dataclasses.replace(case, dinp=dinp),
                                   *values) for dinp in (True, False))
    assert "dinp" in full and "dinp" not in partial
    for name, grad in partial.items():
        if name.startswith("d"):
            assert np.array_equal(grad, full[name]), f"{kind} without dinp: {name} differs"


# ---- no float64 arithmetic in the compiled code

# float64 arithmetic, conversions to double and calls returning double, in LLVM IR
DOUBLE_MATH = re.compile(r"\b(fadd|fsub|fmul|fdiv|frem|fcmp)\b[^=]*\bdouble\b|\bfpext\b"
                         r"|\bto double\b|= call [^@]*double @")


def signature(args):
    return tuple(numba.typeof(a) for a in args)


def compile_afresh(dispatcher, sig):
    """A kernel's Python function compiled anew for the argument types sig, with the kernel's
    own options: a cached kernel's code cannot be inspected (targetoptions leaves out cache;
    njit sets nopython itself). The kernels it calls are compiled, or loaded, on the way."""
    options = {k: v for k, v in dispatcher.targetoptions.items() if k != "nopython"}
    fresh = njit(**options)(dispatcher.py_func)
    fresh.compile(sig)
    return fresh


def double_math_lines(fresh):
    """Lines of float64 arithmetic in a freshly compiled kernel, the Python-call wrapper
    excluded."""
    hits = []
    for ir in fresh.inspect_llvm().values():
        for function in re.split(r"\n(?=define )", ir):
            # the wrapper unboxes Python scalars through PyFloat_AsDouble: not kernel maths
            if function.startswith("define") and "cpython" not in function.split("(")[0]:
                hits += [line.strip() for line in function.splitlines()
                         if DOUBLE_MATH.search(line)]
    return hits


def parallel_callees(kernel):
    """The parallel kernels a kernel calls, compiled apart and not inlined (conv2d_backward's
    and linear_backward's input and parameter parts)."""
    module = sys.modules[kernel.py_func.__module__]  # cpu.py or cpu_blocks.py
    callees = (getattr(module, name, None) for name in kernel.py_func.__code__.co_names)
    return [callee for callee in callees if isinstance(callee, CPUDispatcher)
            and callee.targetoptions.get("parallel")]


def compiled_parts(calls):
    """{(name, signature): fresh compilation} of each piece of code behind calls of one
    kernel: the kernel at each signature it is called with, and its parallel callees at each
    signature they have been compiled for (compiling the kernel afresh compiles them)."""
    kernel = getattr(CPU, calls[0].kernel)
    parts = {(kernel, signature(call.args)): None for call in calls}
    parts = {part: compile_afresh(*part) for part in parts}
    parts.update(((callee, sig), compile_afresh(callee, sig))
                 for callee in parallel_callees(kernel) for sig in callee.signatures)
    return {(dispatcher.__name__, sig): fresh for (dispatcher, sig), fresh in parts.items()}


@pytest.mark.parametrize("kernel", KERNELS)
def test_no_float64_arithmetic(kernel):
    calls = [call for calls in calls_at(37).values() for call in calls if call.kernel == kernel]
    assert calls, f"no registry case calls {kernel}"
    parts = compiled_parts(calls)
    for (name, sig), fresh in parts.items():
        hits = double_math_lines(fresh)
        assert not hits, f"{name}{sig} computes in float64: {hits[:3]}"
    # the code a kernel calls is scanned too, not only its own
    missed = {callee.__name__ for callee in parallel_callees(getattr(CPU, kernel))}
    missed -= {name for name, _ in parts}
    assert not missed, f"{kernel}: the scan misses the kernels it calls: {missed}"


def test_float64_scan_catches_an_upcast():
    # the classic slip: a Python float constant turns float32 maths into float64
    @njit(parallel=True, cache=False)
    def scale(out, inp):
        for i in prange(inp.size):
            out[i] = inp[i] * 0.1

    x = np.ones(8, np.float32)
    assert double_math_lines(compile_afresh(scale, signature((np.empty_like(x), x))))


# ---- the arrays the kernels are given


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
    buffers = model._buffers[batch, "read"]  # (batch, keep: what a backward reads)
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
    groups = arena.carve([[(6, 28, 28, 7)], [(3,), (16, 5, 5, 7)], []])
    views = [view for group in groups for view in group]
    assert [view.shape for view in views] == [(6, 28, 28, 7), (3,), (16, 5, 5, 7)]
    assert len(sizes) == 2 and all(view.ctypes.data % ALIGNMENT == 0 for view in views)
