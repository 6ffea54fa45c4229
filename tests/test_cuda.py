"""The CUDA backend: every kernel against the CPU kernels and a training step of the model
against the CPU model, in Numba's CUDA simulator; the compiled PTX free of float64; clear
errors where CUDA cannot run; and, marked gpu, the same comparisons on a real GPU.

The simulator must be switched on (NUMBA_ENABLE_CUDASIM=1) before numba is first imported,
and the rest of the suite needs numba as it is, so test_in_simulator runs this file again in
a child pytest process with the variable set: there the simulator cases run and the others
are skipped, here the reverse. The simulator runs blocks one after another, a Python thread
per CUDA thread (a few thousand threads a second, some 30 ms a block), so its cases use tiny
shapes; it also does float32 maths in float64 and hides races, which is why the PTX is
checked on its own.
"""

import importlib.util
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import tinyconv.model
from tinyconv import checkpoint
from tinyconv.kernels import KERNELS, DeviceUnavailable, adam_scalars, cpu, get_backend
from tinyconv.model import LeNet5
from tinyconv.optim import Adam, StepLR

REPO_ROOT = Path(__file__).resolve().parent.parent
HAVE_NUMBA_CUDA = importlib.util.find_spec("numba_cuda") is not None
SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
if HAVE_NUMBA_CUDA:
    from numba import cuda

    from tinyconv.kernels import cuda as cuda_kernels
REAL_GPU = HAVE_NUMBA_CUDA and not SIMULATOR and cuda.is_available()

pytestmark = pytest.mark.skipif(not HAVE_NUMBA_CUDA, reason="numba-cuda is not installed "
                                "(pip install -e '.[test]' brings it)")
in_simulator = pytest.mark.skipif(not SIMULATOR, reason="runs in test_in_simulator's child "
                                  "process, under NUMBA_ENABLE_CUDASIM=1")
outside_simulator = pytest.mark.skipif(SIMULATOR, reason="checks numba-cuda itself, not the "
                                       "simulator")
needs_gpu = pytest.mark.skipif(not REAL_GPU, reason="needs an NVIDIA GPU")

# how many leading arguments of each kernel are outputs (filled with NaN before the call, so a
# kernel that leaves any element unwritten fails); adam_update updates its first three in place
OUTPUTS = {"conv2d_forward": 1, "conv2d_backward": 3, "avgpool2d_forward": 1,
           "avgpool2d_backward": 1, "tanh_forward": 1, "tanh_backward": 1, "linear_forward": 1,
           "linear_backward": 3, "softmax_xent_forward": 2, "softmax_xent_backward": 1,
           "adam_update": 0}


# ---- kernel arguments: (kernel, arguments) by case name, at the simulator's or LeNet's sizes


def _conv(rng, N, C, H, W, OC, KH, KW, dinp=True):
    f32 = _normal(rng)
    OH, OW = H - KH + 1, W - KW + 1
    return {"conv2d_forward": (f32(OC, OH, OW, N), f32(C, H, W, N), f32(OC, C, KH, KW),
                               f32(OC)),
            "conv2d_backward": (f32(C, H, W, N) if dinp else None, f32(OC, C, KH, KW), f32(OC),
                                f32(OC, OH, OW, N), f32(C, H, W, N), f32(OC, C, KH, KW))}


def _pool(rng, C, H, W, N, k):
    f32 = _normal(rng)
    return {"avgpool2d_forward": (f32(C, H // k, W // k, N), f32(C, H, W, N), k),
            "avgpool2d_backward": (f32(C, H, W, N), f32(C, H // k, W // k, N), k)}


def _tanh(rng, *shape):
    f32 = _normal(rng)
    inp = 3 * f32(*shape)
    inp.flat[:4] = (20.0, -20.0, 0.0, 1e-3)[:inp.size]  # the flat tails and the origin
    return {"tanh_forward": (f32(*shape), inp),
            "tanh_backward": (f32(*shape), np.tanh(inp), f32(*shape))}


def _linear(rng, N, IN, OUT):
    f32 = _normal(rng)
    return {"linear_forward": (f32(OUT, N), f32(IN, N), f32(OUT, IN), f32(OUT)),
            "linear_backward": (f32(IN, N), f32(OUT, IN), f32(OUT), f32(OUT, N), f32(IN, N),
                                f32(OUT, IN))}


def _xent(rng, V, N, spread):
    f32 = _normal(rng)
    labels = rng.integers(0, V, size=N).astype(np.int64)
    logits = spread * f32(V, N)  # spread: large logits test the max taken out before exp
    probs = np.exp(logits - logits.max(axis=0))
    return {"softmax_xent_forward": (f32(N), f32(V, N), logits, labels),
            "softmax_xent_backward": (f32(V, N), (probs / probs.sum(axis=0)).astype(np.float32),
                                      labels, np.float32(0.5))}


def _adam(rng, P):
    f32 = _normal(rng)
    return {"adam_update": (f32(P), f32(P), np.abs(f32(P)), f32(P),
                            *adam_scalars(1e-2, 0.9, 0.999, 1e-8, 0.01, 3))}


def _normal(rng):
    return lambda *shape: rng.standard_normal(shape).astype(np.float32)


def _cases(groups):
    """{case id: (kernel, arguments)} from {group name: {kernel: arguments}}."""
    return {f"{kernel}-{group}": (kernel, args) for group, kernels in groups.items()
            for kernel, args in kernels.items()}


def simulator_cases():
    """Tiny shapes: batch 1-2, a few channels, images up to 10x10, including sums longer than
    a reduction block (162 and 130 terms against REDUCE_THREADS = 128)."""
    rng = np.random.default_rng(0)
    return _cases({
        "square": _conv(rng, N=2, C=2, H=5, W=5, OC=2, KH=3, KW=3),
        "rect_batch1": _conv(rng, N=1, C=1, H=4, W=5, OC=2, KH=2, KW=3),
        "k_is_input": _conv(rng, N=2, C=2, H=3, W=3, OC=2, KH=3, KW=3),
        "long_sums": _conv(rng, N=2, C=1, H=10, W=10, OC=1, KH=2, KW=2),
        "no_dinp": {"conv2d_backward": _conv(rng, 2, 2, 4, 4, 2, 2, 2, False)["conv2d_backward"]},
        "k2": _pool(rng, C=2, H=4, W=6, N=2, k=2),
        "k3_batch1": _pool(rng, C=1, H=6, W=3, N=1, k=3),
        "4d": _tanh(rng, 2, 3, 4, 2),
        "2d": _tanh(rng, 5, 3),
        "small": _linear(rng, N=2, IN=7, OUT=5),
        "long_sums_linear": _linear(rng, N=130, IN=2, OUT=2),
        "ten_classes": _xent(rng, V=10, N=3, spread=20.0),
        "one_sample": _xent(rng, V=3, N=1, spread=1.0),
        "adam": _adam(rng, P=300),
    })


def lenet_cases(batch=128):
    """LeNet-5's shapes at a training batch."""
    rng = np.random.default_rng(0)
    return _cases({
        "conv1": _conv(rng, batch, 1, 32, 32, 6, 5, 5, dinp=False),
        "conv2": _conv(rng, batch, 6, 14, 14, 16, 5, 5),
        "conv3": _conv(rng, batch, 16, 5, 5, 120, 5, 5),
        "pool1": _pool(rng, 6, 28, 28, batch, 2),
        "pool2": _pool(rng, 16, 10, 10, batch, 2),
        "tanh1": _tanh(rng, 6, 28, 28, batch),
        "fc1": _linear(rng, batch, 120, 84),
        "fc2": _linear(rng, batch, 84, 10),
        "xent": _xent(rng, 10, batch, 5.0),
        "adam": _adam(rng, tinyconv.model.PARAM_COUNT),
    })


def run_both(kernel, args):
    """Run a kernel on the CPU and on the CUDA backend from the same arguments, outputs set to
    NaN first; returns {argument name: (cpu array, cuda array on the host)}."""
    outputs = OUTPUTS[kernel]
    fresh = [np.full_like(a, np.nan) if i < outputs and a is not None else a
             for i, a in enumerate(args)]
    host = [a.copy() if isinstance(a, np.ndarray) else a for a in fresh]
    getattr(cpu, kernel)(*host)
    device = [cuda.to_device(a) if isinstance(a, np.ndarray) else a for a in fresh]
    getattr(get_backend("cuda"), kernel)(*device)
    names = inspect.signature(cpu_function(kernel)).parameters
    return {name: (ours, theirs.copy_to_host()) for name, ours, theirs
            in zip(names, host, device, strict=True) if isinstance(ours, np.ndarray)}


def cpu_function(kernel):
    return getattr(cpu, kernel).py_func


def rel_err(ours, theirs):
    """max |ours - theirs| over max |theirs|, in float64."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30)


def check_kernel(kernel, args, bound):
    """Every array argument of the CUDA kernel within bound of the CPU kernel's; returns the
    largest relative error."""
    worst = 0.0
    for name, (expected, got) in run_both(kernel, args).items():
        assert not np.isnan(got).any(), f"{kernel}: {name} has elements left unwritten (NaN)"
        err = rel_err(got, expected)
        assert err <= bound, f"{kernel}: {name} differs from the CPU kernel by {err:.3g}"
        worst = max(worst, err)
    return worst


SIMULATOR_CASES = simulator_cases()


@in_simulator
@pytest.mark.parametrize("case", SIMULATOR_CASES)
def test_kernel_matches_cpu_in_simulator(case):
    kernel, args = SIMULATOR_CASES[case]
    worst = check_kernel(kernel, args, 1e-5)
    print(f"{case}: max relative error against the CPU kernel {worst:.2e}")


def test_every_kernel_has_simulator_cases():
    assert {kernel for kernel, _ in SIMULATOR_CASES.values()} == set(KERNELS)


@outside_simulator
def test_launchers_take_cpu_signatures():
    # the model picks a backend once and calls every kernel the same way
    for kernel in KERNELS:
        ours = inspect.signature(getattr(cuda_kernels, kernel))
        assert ours == inspect.signature(cpu_function(kernel)), f"{kernel}: {ours}"


# ---- the model: a training step against the CPU model


# LeNet-5's layer list shrunk (same kinds, same indexes and so the same parameter names) to an
# 8x8 input, so that a step runs in the simulator in seconds; at LeNet's own sizes its weight
# gradients take some 60,000 blocks, half an hour in the simulator
TINY_LAYERS = (
    ("conv", ((2, 1, 3, 3), (2,))),  # 0: (1,8,8,N) -> (2,6,6,N)
    ("tanh", None), ("pool", None), ("tanh", None),  # -> (2,3,3,N)
    ("conv", ((3, 2, 2, 2), (3,))),  # 4: -> (3,2,2,N)
    ("tanh", None), ("pool", None), ("tanh", None),  # -> (3,1,1,N)
    ("conv", ((4, 3, 1, 1), (4,))),  # 8: -> (4,1,1,N)
    ("tanh", None), ("flatten", None),  # -> (4,N)
    ("linear", ((5, 4), (5,))),  # 11
    ("tanh", None),
    ("linear", ((10, 5), (10,))),  # 13: -> (10,N) logits
)


@pytest.fixture
def tiny_lenet(monkeypatch):
    """tinyconv.model set to TINY_LAYERS, with the parameter table that follows from them."""
    shapes = {f"backbone.{index}.{kind}": shape for index, (_, params) in enumerate(TINY_LAYERS)
              if params for kind, shape in zip(("weight", "bias"), params, strict=True)}
    for name, value in (("LAYERS", TINY_LAYERS), ("INPUT_SHAPE", (1, 8, 8)),
                        ("PARAM_SHAPES", shapes),
                        ("PARAM_COUNT", sum(int(np.prod(s)) for s in shapes.values()))):
        monkeypatch.setattr(tinyconv.model, name, value)
    monkeypatch.setattr(checkpoint, "PARAM_SHAPES", shapes)
    return tinyconv.model.INPUT_SHAPE


@pytest.fixture
def device_arrays_only(monkeypatch):
    """Make every CUDA kernel refuse host arrays: a step must not copy anything per op."""
    backend = get_backend("cuda")

    def checked(kernel):
        def call(*args):
            hosts = [i for i, a in enumerate(args) if isinstance(a, np.ndarray)]
            assert not hosts, f"{kernel.__name__}: host arrays as arguments {hosts}"
            kernel(*args)
        return call

    for name in KERNELS:
        monkeypatch.setattr(backend, name, checked(getattr(backend, name)))


def compare_training(input_shape, batch, steps, bound, param_bound):
    """The same seeded model and batches on the CPU and on CUDA, Adam and StepLR on both:
    losses, gradients and logits must agree within bound, parameters and Adam's moments within
    param_bound; returns both sides (models, optimizers, schedules)."""
    rng = np.random.default_rng(0)
    models = [LeNet5(seed=0), LeNet5(seed=0, device="cuda")]
    opts = [Adam(model, lr=1e-2) for model in models]
    scheds = [StepLR(opt, 1, 0.5) for opt in opts]
    for step in range(steps):
        x = rng.standard_normal((batch, *input_shape)).astype(np.float32)
        y = rng.integers(0, 10, size=batch)
        (loss, grads), (gpu_loss, gpu_grads) = (model.loss_and_grads(x, y) for model in models)
        assert abs(gpu_loss - loss) <= bound * abs(loss), f"step {step}: loss"
        for name, grad in grads.items():
            err = rel_err(cuda_kernels.to_host(gpu_grads[name]), grad)
            assert err <= bound, f"step {step}: gradient {name} differs by {err:.3g}"
        for opt, grad, sched in zip(opts, (grads, gpu_grads), scheds, strict=True):
            opt.step(grad)
            sched.step()
    ours, theirs = (model.state_dict() for model in models)
    for name in ours:
        err = rel_err(theirs[name], ours[name])
        assert err <= param_bound, f"parameters {name} differ by {err:.3g} after {steps} steps"
    for moment in ("m", "v"):
        err = rel_err(opts[1].state_dict()[moment], opts[0].state_dict()[moment])
        assert err <= param_bound, f"Adam's {moment} differs by {err:.3g}"
    assert rel_err(models[1].forward(x), models[0].forward(x)) <= bound
    return models, opts, scheds


@in_simulator
def test_model_steps_match_cpu_in_simulator(tiny_lenet, device_arrays_only, tmp_path):
    models, opts, scheds = compare_training(tiny_lenet, batch=2, steps=2, bound=1e-5,
                                            param_bound=1e-5)
    # a checkpoint of the CUDA run (copied to the host) loads on either device
    path = tmp_path / "last.npz"
    header = {"epoch": 1, "config": {"seed": 0, "lr_step": 1, "lr_gamma": 0.5}}
    checkpoint.save_run(path, models[1], opts[1], scheds[1], header)
    for device in ("cpu", "cuda"):
        model, opt, _, _ = checkpoint.load_run(path, device)
        for name, value in models[1].state_dict().items():
            assert np.array_equal(model.state_dict()[name], value), f"{device}: {name}"
        assert np.array_equal(opt.state_dict()["v"], opts[1].state_dict()["v"]), device


# ---- the PTX: no float64 arithmetic (the simulator would not show it)

PTX_CC = (9, 0)  # the H100's compute capability


def _ptx_signatures():
    from numba import types

    def a(ndim, dtype=types.float32):
        return types.Array(dtype, ndim, "C")

    f32, labels = types.float32, a(1, types.int64)
    return {
        "_conv2d_forward": (a(4), a(4), a(4), a(1)),
        "_conv2d_backward_input": (a(4), a(4), a(4)),
        "_conv2d_backward_params": (a(4), a(1), a(4), a(4)),
        "_avgpool2d_forward": (a(4), a(4), types.int64),
        "_avgpool2d_backward": (a(4), a(4), types.int64),
        "_tanh_forward": (a(1), a(1)),
        "_tanh_backward": (a(1), a(1), a(1)),
        "_linear_forward": (a(2), a(2), a(2), a(1)),
        "_linear_backward_input": (a(2), a(2), a(2)),
        "_softmax_xent_forward": (a(1), a(2), a(2), labels),
        "_softmax_xent_backward": (a(2), a(2), labels, f32),
        "_adam_update": (a(1),) * 4 + (f32,) * 7,
    }


FLOAT64 = re.compile(r"\.f64\b")  # PTX: add.f64, cvt.f64.f32, ld.global.f64, ...


def compile_ptx(function, signature):
    """The PTX of a CUDA kernel for PTX_CC; (ptx, return type)."""
    from numba.cuda import dispatcher

    with pytest.MonkeyPatch.context() as patch:
        if not REAL_GPU:
            # numba-cuda compiles a device function (kernels._unravel4) for the current
            # device's compute capability, asking the driver even inside compile_ptx: without
            # a GPU, name PTX_CC instead
            patch.setattr(dispatcher, "get_current_device",
                          lambda: SimpleNamespace(compute_capability=PTX_CC))
        return cuda.compile_ptx(function, signature, cc=PTX_CC)


def float64_lines(function, signature):
    """The PTX lines of a CUDA kernel that touch float64."""
    ptx, _ = compile_ptx(function, signature)
    return [line.strip() for line in ptx.splitlines() if FLOAT64.search(line)]


@pytest.fixture(scope="module")
def ptx_compiler():
    """Skip unless numba-cuda can compile to PTX here (it needs NVVM and NVRTC, no GPU)."""
    from numba import types

    def scale(out, inp):
        out[0] = inp[0]

    try:
        float64_lines(scale, (types.float32[::1], types.float32[::1]))
    except Exception as exc:  # a missing libnvvm or libnvrtc, in whatever words
        pytest.skip(f"cannot compile PTX here ({type(exc).__name__}: {exc}); the CUDA "
                    "toolkit's libnvvm and pip's nvidia-cuda-nvrtc provide what it needs")


@outside_simulator
def test_ptx_signatures_cover_every_kernel():
    from numba.cuda.dispatcher import CUDADispatcher

    kernels = {name for name, obj in vars(cuda_kernels).items()
               if isinstance(obj, CUDADispatcher) and not obj.targetoptions["device"]}
    assert kernels == set(_ptx_signatures())


@outside_simulator
def test_unravel4_is_numpys_unravel_index():
    shape = (3, 5, 2, 7)
    for idx in range(np.prod(shape)):
        assert cuda_kernels._unravel4.py_func(idx, *shape[1:]) == np.unravel_index(idx, shape)


@outside_simulator
@pytest.mark.parametrize("kernel", sorted(_ptx_signatures()) if HAVE_NUMBA_CUDA else [])
def test_ptx_has_no_float64(kernel, ptx_compiler):
    hits = float64_lines(getattr(cuda_kernels, kernel).py_func, _ptx_signatures()[kernel])
    assert not hits, f"{kernel} computes in float64: {hits[:3]}"


@outside_simulator
def test_ptx_scan_catches_an_upcast(ptx_compiler):
    from numba import types

    def scale(out, inp):  # the classic slip: a Python float turns float32 maths into float64
        i = cuda.grid(1)
        out[i] = inp[i] * 0.1

    assert float64_lines(scale, (types.float32[::1], types.float32[::1]))


# ---- where CUDA cannot run: a clear message, and tinyconv still imports and runs on the CPU


@outside_simulator
@pytest.mark.skipif(REAL_GPU, reason="there is a GPU here")
def test_cuda_without_a_gpu_says_so():
    with pytest.raises(DeviceUnavailable, match="numba-cuda is installed but finds no usable "
                                                "NVIDIA GPU .*--device cpu"):
        LeNet5(device="cuda")


def test_unknown_device_is_refused():
    with pytest.raises(ValueError, match="unknown device 'tpu': expected one of cpu, cuda"):
        LeNet5(device="tpu")


@outside_simulator
def test_tinyconv_needs_no_numba_cuda_and_says_how_to_get_it():
    # a child where numba-cuda cannot be imported (None in sys.modules blocks an import)
    code = ("import sys; sys.modules['numba_cuda'] = None\n"
            "import numpy as np, tinyconv\n"
            "from tinyconv.kernels import DeviceUnavailable\n"
            "print(tinyconv.LeNet5().forward(np.zeros((1, 1, 32, 32), np.float32)).shape)\n"
            "try:\n"
            "    tinyconv.LeNet5(device='cuda')\n"
            "except DeviceUnavailable as exc:\n"
            "    print(exc)\n"
            "print(sorted(m for m in sys.modules if m.startswith(('numba.cuda', 'cuda'))))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                          text=True, check=True)
    shape, message, cuda_modules = done.stdout.splitlines()
    assert shape == "(1, 10)"
    assert message.startswith("device 'cuda' needs the numba-cuda package, which is not "
                              "installed: pip install 'tinyconv[cuda]'")
    assert cuda_modules == "[]"


@outside_simulator
@pytest.mark.skipif(REAL_GPU, reason="there is a GPU here")
def test_clis_stop_at_once_without_a_gpu(tmp_path):
    def run(*argv):
        return subprocess.run([sys.executable, "-m", *argv], cwd=REPO_ROOT, capture_output=True,
                              text=True)

    done = run("tinyconv.train", "--device", "cuda", "--run-dir", str(tmp_path / "run"))
    assert done.returncode == 1
    assert "error: device 'cuda': numba-cuda is installed but finds no usable" in done.stderr
    assert not (tmp_path / "run").exists()
    model = LeNet5(seed=0)
    opt = Adam(model)
    checkpoint.save_run(tmp_path / "cpu.npz", model, opt, StepLR(opt, 1),
                        {"epoch": 1, "config": {"seed": 0, "lr_step": 1, "lr_gamma": 0.1}})
    done = run("tinyconv.evaluate", str(tmp_path / "cpu.npz"), "--device", "cuda")
    assert done.returncode == 2
    assert "error: device 'cuda': numba-cuda is installed but finds no usable" in done.stderr


# ---- the simulator cases, from the normal run


@outside_simulator
def test_in_simulator():
    """Run this file under NUMBA_ENABLE_CUDASIM=1 in a child pytest; it must pass them all."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", "-m", "not gpu",
         "-p", "no:cacheprovider"],
        cwd=REPO_ROOT, env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}, capture_output=True,
        text=True, timeout=600)
    report = done.stdout[-6000:] + done.stderr[-2000:]
    assert done.returncode == 0, f"the simulator run failed:\n{report}"
    passed = re.search(r"(\d+) passed", done.stdout)
    expected = len(SIMULATOR_CASES) + 1  # every kernel case and the model's
    assert passed and int(passed.group(1)) >= expected, f"too few simulator tests:\n{report}"


# ---- on a real GPU (skipped without one): LeNet's shapes, determinism, a training run

LENET_CASES = lenet_cases() if REAL_GPU else {}


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("case", LENET_CASES)
def test_kernel_matches_cpu_on_gpu(case):
    # long float32 sums (100,352 terms in conv1's dweight) in other orders: test_ops's bounds,
    # 1e-5 forward, 1e-4 for gradients
    kernel, args = LENET_CASES[case]
    check_kernel(kernel, args, 1e-4 if "backward" in kernel else 1e-5)


@pytest.mark.gpu
@needs_gpu
def test_kernels_are_deterministic_on_gpu():
    for kernel, args in LENET_CASES.values():
        first, again = (run_both(kernel, args) for _ in range(2))
        for name in first:
            assert np.array_equal(first[name][1], again[name][1]), f"{kernel}: {name} varies"


@pytest.mark.gpu
@needs_gpu
def test_training_matches_cpu_on_gpu(device_arrays_only):
    # twenty Adam steps at batch 128 from the same weights, gradients within test_ops's 1e-4;
    # Adam's division by sqrt(v) lets rounding grow in a few weights (test_training's note),
    # hence 1e-3 for single parameters
    compare_training(tinyconv.model.INPUT_SHAPE, batch=128, steps=20, bound=1e-4,
                     param_bound=1e-3)
