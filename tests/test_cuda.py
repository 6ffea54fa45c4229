"""The CUDA backend: every kernel call of the registry's simulator cases against the CPU
kernels, and training steps of a small network against the same network on the CPU, in
Numba's CUDA simulator; the compiled PTX free of float64; clear errors where CUDA cannot run;
and, marked gpu, the same comparisons on a real GPU at LeNet-5's shapes.

The simulator must be switched on (NUMBA_ENABLE_CUDASIM=1) before numba is first imported,
and the rest of the suite needs numba as it is, so test_in_simulator runs this file again in
a child pytest process with the variable set: there the simulator cases run and the others
are skipped, here the reverse. The simulator runs blocks one after another, a Python thread
per CUDA thread (a few thousand threads a second, some 30 ms a block), so its cases use tiny
shapes; it also does float32 maths in float64 and hides races, which is why the PTX is
checked on its own. The kernel calls are recorded on the CPU (tests/harness.py), outputs NaN,
so a CUDA kernel that leaves an element unwritten fails.
"""

import functools
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.harness import KernelSpy, recorded_calls, rel_err
from tests.registry import KERNEL_CASES
from tinyconv import LeNet5, checkpoint, nn
from tinyconv.kernels import DeviceUnavailable, get_backend, host
from tinyconv.optim import Adam, StepLR

REPO_ROOT = Path(__file__).resolve().parent.parent
HAVE_NUMBA_CUDA = importlib.util.find_spec("numba_cuda") is not None
SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
if HAVE_NUMBA_CUDA:
    from numba import cuda

    from tinyconv.kernels import cuda as cuda_kernels
    from tinyconv.kernels import cuda_host, kernel_modules

    # every name of the CUDA kernel files (cuda.py, cuda_blocks.py): launchers and kernels
    CUDA_NAMES = {name: obj for module in kernel_modules("cuda") for name, obj in
                  vars(module).items()}
REAL_GPU = HAVE_NUMBA_CUDA and not SIMULATOR and cuda.is_available()

# without numba-cuda, which the test extra installs, test_registry.py's CUDA twin checks fail
# and these cannot run
pytestmark = pytest.mark.skipif(not HAVE_NUMBA_CUDA, reason="numba-cuda is not installed")
in_simulator = pytest.mark.skipif(not SIMULATOR, reason="runs in test_in_simulator's child "
                                  "process, under NUMBA_ENABLE_CUDASIM=1")
outside_simulator = pytest.mark.skipif(SIMULATOR, reason="checks numba-cuda itself, not the "
                                       "simulator")
needs_gpu = pytest.mark.skipif(not REAL_GPU, reason="needs an NVIDIA GPU")


# ---- the kernels: each recorded call of a registry case, on the CPU and on CUDA


def run_both(call):
    """A recorded kernel call (tests/harness.py: its outputs still NaN) run on the CPU and on
    the CUDA backend, each from its own copy of the arguments; {argument: (cpu array, cuda
    array copied to the host)} for every array argument."""
    on_cpu = call.copies()
    getattr(get_backend("cpu"), call.kernel)(*on_cpu)
    on_device = [cuda.to_device(a) if isinstance(a, np.ndarray) else a for a in call.args]
    getattr(get_backend("cuda"), call.kernel)(*on_device)
    return {name: (ours, theirs.copy_to_host()) for name, ours, theirs
            in zip(call.names, on_cpu, on_device, strict=True) if isinstance(ours, np.ndarray)}


def check_case(name, forward_bound, backward_bound):
    """Every kernel call of a registry case: each array argument of the CUDA run written (no
    NaN left) and within the bound of the CPU kernel's, but a scratch, whose use is each
    backend's own (linear_backward's: the CPU's transposed input, unused on CUDA); returns
    the largest relative error."""
    calls = recorded_calls(KERNEL_CASES[name])
    assert calls, f"{name} calls no kernel"
    worst = 0.0
    for call in calls:
        bound = backward_bound if "backward" in call.kernel else forward_bound
        for arg, (expected, got) in run_both(call).items():
            if arg == "scratch":
                continue
            what = f"{name}: {call.kernel} {arg}"
            assert not np.isnan(got).any(), f"{what}: elements left unwritten (NaN) on CUDA"
            err = rel_err(got, expected)
            assert err <= bound, f"{what} differs from the CPU kernel by {err:.3g} > {bound}"
            worst = max(worst, err)
    return worst


# the registry's tiny cases: a few blocks a kernel, some with sums longer than a reduction
# block (kernels.cuda.REDUCE_THREADS)
SIMULATOR_CASES = [name for name, case in KERNEL_CASES.items() if case.simulator]


@in_simulator
@pytest.mark.parametrize("name", SIMULATOR_CASES)
def test_kernels_match_cpu_in_simulator(name):
    worst = check_case(name, 1e-5, 1e-5)
    print(f"{name}: max relative error against the CPU kernels {worst:.2e}")


# ---- a network: training steps against the same network on the CPU


def tiny_lenet(device):
    """LeNet-5's chain of layers (the same kinds at the same indexes, so the same parameter
    names) shrunk to an 8x8 input, so that a step runs in the simulator in seconds; at LeNet's
    own sizes its weight gradients take some 60,000 blocks, half an hour in the simulator."""
    return nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.Tanh(),     # 0: (1,8,8) -> (2,6,6)
        nn.AvgPool2d(2), nn.Tanh(),        # 2: -> (2,3,3)
        nn.Conv2d(2, 3, 2), nn.Tanh(),     # 4: -> (3,2,2)
        nn.AvgPool2d(2), nn.Tanh(),        # 6: -> (3,1,1)
        nn.Conv2d(3, 4, 1), nn.Tanh(),     # 8: -> (4,1,1)
        nn.Flatten(),                      # 10: -> (4,)
        nn.Linear(4, 5), nn.Tanh(),        # 11: -> (5,)
        nn.Linear(5, 10),                  # 13: -> (10,) logits
        input_shape=(1, 8, 8), seed=0, device=device, prefix="backbone.")


def refuse_host_arrays(kernel, args):
    """A step keeps everything on the device: a CUDA kernel given a host array fails."""
    hosts = [i for i, a in enumerate(args) if isinstance(a, np.ndarray)]
    assert not hosts, f"{kernel}: host arrays as arguments {hosts}"


def compare_training(make_model, batch, steps, bound, param_bound):
    """The same network, make_model(device), and batches on the CPU and on CUDA (whose
    kernels may take device arrays only), Adam and StepLR on both: losses, gradients and
    each sample's loss and logits must agree within bound, parameters and Adam's moments
    within param_bound; returns both sides (models, optimizers, schedules)."""
    rng = np.random.default_rng(0)
    models = [make_model("cpu"), make_model("cuda")]
    models[1].kernels = KernelSpy(models[1].kernels, refuse_host_arrays)
    opts = [Adam(model, lr=1e-2) for model in models]
    scheds = [StepLR(opt, 1, 0.5) for opt in opts]
    classes = models[0].output_shape[0]
    for step in range(steps):
        x = rng.standard_normal((batch, *models[0].input_shape)).astype(np.float32)
        y = rng.integers(0, classes, size=batch)
        (loss, grads), (gpu_loss, gpu_grads) = (model.loss_and_grads(x, y) for model in models)
        assert abs(gpu_loss - loss) <= bound * abs(loss), f"step {step}: loss"
        for name, grad in grads.items():
            err = rel_err(cuda_host.to_host(gpu_grads[name]), grad)
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
    (losses, logits), (gpu_losses, gpu_logits) = (model.loss(x, y, reduction="none")
                                                  for model in models)
    assert rel_err(gpu_losses, losses) <= bound, "per-sample losses differ"
    assert rel_err(gpu_logits, logits) <= bound, "logits differ"
    return models, opts, scheds


@in_simulator
def test_network_steps_match_cpu_in_simulator(tmp_path):
    models, opts, scheds = compare_training(tiny_lenet, batch=2, steps=2, bound=1e-5,
                                            param_bound=1e-5)
    # a checkpoint of the CUDA run (copied to the host) rebuilds the network from its spec
    # and loads on either device
    path = tmp_path / "last.npz"
    header = {"epoch": 1, "config": {"seed": 0, "lr_step": 1, "lr_gamma": 0.5}}
    checkpoint.save_run(path, models[1], opts[1], scheds[1], header)
    for device in ("cpu", "cuda"):
        model, opt, _, _, _ = checkpoint.load_run(path, device)
        assert model.spec() == models[1].spec(), device
        for name, value in models[1].state_dict().items():
            assert np.array_equal(model.state_dict()[name], value), f"{device}: {name}"
        assert np.array_equal(opt.state_dict()["v"], opts[1].state_dict()["v"]), device


@in_simulator
def test_a_loss_log_on_the_device_matches_the_cpu_losses():
    # the training loop's path on a GPU: each step's summed loss written on the device and
    # read back later, a NaN naming its step
    rng = np.random.default_rng(0)
    models = [tiny_lenet("cpu"), tiny_lenet("cuda")]
    log = nn.LossLog(models[1], 4)
    expected = []
    for step in range(3):
        x = rng.standard_normal((3, 1, 8, 8)).astype(np.float32)
        if step == 2:
            x[0, 0, 0, 0] = np.nan
        y = rng.integers(0, 10, size=3)
        expected.append(models[0].loss_and_grads(x, y)[0] * 3)
        assert models[1].loss_and_grads(x, y, into=log)[0] is None
    sums = log.new()
    np.testing.assert_allclose(sums[:2], expected[:2], rtol=1e-5)
    assert np.isnan(sums[2]) and np.isnan(expected[2])
    assert log.new().size == 0


@in_simulator
def test_device_views_are_made_once_and_staging_sends_one_block():
    array = cuda.device_array((2, 3, 4), np.float32)
    flat = cuda_host.view(array, (24,))
    assert cuda_host.view(array, (24,)) is flat and flat.shape == (24,)
    array.copy_to_device(np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    assert np.array_equal(cuda_host.view(array, (2, 5), 7).copy_to_host(),
                          np.arange(7, 17).reshape(2, 5))
    staging = cuda_host.Staging([((3, 2), np.float32), ((2,), np.int64)])
    images, labels = staging.writable()
    images[...], labels[...] = 1.5, 7
    staging.send(2)
    images[...], labels[...] = 2.5, 8
    staging.send(1)  # the images alone
    images_on_device, labels_on_device = (a.copy_to_host() for a in staging.device)
    assert (images_on_device == 2.5).all() and (labels_on_device == 7).all()


def tiny_blocks(device):
    """The new blocks in one network small enough for the simulator: a padded conv, batch
    norms, a residual block, max pooling, two dropouts. (Each batch norm after an activation:
    straight after a conv or linear layer it makes their bias gradients 0 up to rounding,
    where a relative error says nothing.)"""
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(2),   # (1,4,4) -> (2,4,4)
        nn.Residual(nn.Conv2d(2, 2, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(2),
                    nn.Dropout(0.3)),
        nn.MaxPool2d(2), nn.Flatten(),                                  # -> (8,)
        nn.Linear(8, 5), nn.SiLU(), nn.BatchNorm1d(5), nn.Dropout(0.5),
        nn.Linear(5, 3),
        input_shape=(1, 4, 4), seed=1, device=device)


@in_simulator
def test_blocks_network_steps_match_cpu_in_simulator():
    # the same dropout masks on both (the hash), the same running statistics after each step
    models, _, _ = compare_training(tiny_blocks, batch=3, steps=2, bound=1e-5, param_bound=1e-5)
    # two steps and the last loss compare_training takes, a training-mode pass too
    for model in models:
        assert model.state_dict()["2.num_batches_tracked"] == 3 == model.steps


# ---- the PTX: no float64 arithmetic (the simulator would not show it)

PTX_CC = (9, 0)  # the H100's compute capability


def cuda_kernels_defined():
    """The names of the CUDA files' kernels (their @cuda.jit functions that are not device
    functions)."""
    from numba.cuda.dispatcher import CUDADispatcher

    return sorted(name for name, obj in CUDA_NAMES.items()
                  if isinstance(obj, CUDADispatcher) and not obj.targetoptions["device"])


@functools.cache
def launched_signatures():
    """{kernel name: numba argument types} of every CUDA kernel the launchers start for the
    registry's simulator cases, read off the launches themselves (the launch is intercepted,
    nothing runs), so a new layer's kernels are scanned without a table to keep."""
    import numba
    from numba.cuda.dispatcher import CUDADispatcher

    signatures = {}

    def configure(dispatcher, _config):
        def launch(*args):
            signatures[dispatcher.py_func.__name__] = tuple(numba.typeof(a) for a in args)
        return launch

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(CUDADispatcher, "__getitem__", configure)
        if not REAL_GPU:  # the launchers' own device arrays (segment sums) on the host
            patch.setattr(cuda_kernels, "empty", host.empty)
            patch.setattr(cuda_kernels, "_PARTIALS", {})
        for name in SIMULATOR_CASES:
            for call in recorded_calls(KERNEL_CASES[name]):
                CUDA_NAMES[call.kernel](*call.copies())
    return signatures


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
    """Skip unless numba-cuda finds a compiler here (NVVM, libdevice and NVRTC; no GPU is
    needed). Only their absence skips: any other failure of a first compilation fails."""
    from cuda.pathfinder import DynamicLibNotFoundError
    from numba import types
    from numba.cuda.cudadrv.error import NvrtcSupportError, NvvmSupportError
    from numba.cuda.cudadrv.nvvm import MISSING_LIBDEVICE_FILE_MSG

    def scale(out, inp):
        out[0] = inp[0]

    try:
        float64_lines(scale, (types.float32[::1], types.float32[::1]))
    except (NvvmSupportError, NvrtcSupportError, DynamicLibNotFoundError) as exc:
        pytest.skip(f"no CUDA compiler here ({type(exc).__name__}: {exc}): pip install -e "
                    "'.[cuda13]' (or '.[cuda12]') brings NVVM and NVRTC")
    except RuntimeError as exc:
        if str(exc) != MISSING_LIBDEVICE_FILE_MSG:
            raise
        pytest.skip("no libdevice here: pip install -e '.[cuda13]' (or '.[cuda12]') brings it")


@outside_simulator
def test_every_cuda_kernel_is_launched_by_some_case():
    assert sorted(launched_signatures()) == cuda_kernels_defined()


def run_child(code):
    """python -c code in a fresh interpreter, from the repository; it must succeed."""
    return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                          text=True, check=True)


@outside_simulator
def test_the_low_occupancy_warning_is_silenced_by_its_own_class():
    # numba-cuda's dispatcher warns with its own NumbaPerformanceWarning, not numba's, its
    # text in a terminal colour; in a child, as pytest drops the filters set while collecting
    code = ("import warnings, tinyconv.kernels.cuda\n"
            "from numba.cuda.core.errors import NumbaPerformanceWarning as W\n"
            "warnings.warn(W('Grid size 1 will likely result in GPU under-utilization due to "
            "low occupancy.'))\n"
            "warnings.warn(W('another performance warning'))\n")
    done = run_child(code)
    assert "another performance warning" in done.stderr and "Grid size" not in done.stderr


@outside_simulator
def test_a_gpu_without_a_compiler_says_what_to_install(monkeypatch):
    from cuda.pathfinder import DynamicLibNotFoundError
    from numba.cuda.cudadrv import nvvm

    from tinyconv.kernels import _require_compiler

    def not_found(self):  # what cuda.bindings raises when no libNVVM is installed
        raise DynamicLibNotFoundError("Failure finding libnvvm.so")

    monkeypatch.setattr(nvvm.NVVM, "get_ir_version", not_found)
    with pytest.raises(DeviceUnavailable, match=r"a GPU is here, but numba-cuda cannot compile "
                       r"kernels for it: the CUDA toolkit's NVVM and libdevice are missing "
                       r"\(Failure finding libnvvm.so\); pip install 'tinyconv\[cuda\]'"):
        _require_compiler()


@outside_simulator
def test_a_toolkit_newer_than_the_driver_says_which_extra_fits(monkeypatch, ptx_compiler):
    from cuda import bindings
    from numba.cuda.cudadrv import driver

    from tinyconv.kernels import _require_compiler

    monkeypatch.setattr(bindings, "__version__", "13.0.2")
    monkeypatch.setattr(driver.driver, "get_version", lambda: (12, 4))
    with pytest.raises(DeviceUnavailable, match=r"the installed CUDA 13 packages make code this "
                       r"driver \(CUDA 12.4\) cannot run: pip install 'tinyconv\[cuda12\]'"):
        _require_compiler()
    monkeypatch.setattr(driver.driver, "get_version", lambda: (13, 1))
    _require_compiler()  # NVVM and libdevice are found here, and the versions fit


@outside_simulator
def test_unravel4_is_numpys_unravel_index():
    shape = (3, 5, 2, 7)
    for idx in range(np.prod(shape)):
        assert cuda_kernels._unravel4.py_func(idx, *shape[1:]) == np.unravel_index(idx, shape)


@outside_simulator
@pytest.mark.parametrize("kernel", cuda_kernels_defined() if HAVE_NUMBA_CUDA else [])
def test_ptx_has_no_float64(kernel, ptx_compiler):
    signature = launched_signatures().get(kernel)
    assert signature, f"{kernel}: no registry case launches it"
    hits = float64_lines(CUDA_NAMES[kernel].py_func, signature)
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
    shape, message, cuda_modules = run_child(code).stdout.splitlines()
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

    # an unavailable device stops every command with exit status 2 (tinyconv.cli's STOPPED)
    done = run("tinyconv.train", "--device", "cuda", "--run-dir", str(tmp_path / "run"))
    assert done.returncode == 2
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


def simulator_tests():
    """The node ids of this file's tests that the simulator run must pass: all but those
    marked outside_simulator or gpu."""
    ids = []
    for name, function in globals().items():
        marks = getattr(function, "pytestmark", [])
        if (not name.startswith("test_") or outside_simulator.mark in marks
                or any(mark.name == "gpu" for mark in marks)):
            continue
        parametrized = [mark for mark in marks if mark.name == "parametrize"]
        params = parametrized[0].args[1] if parametrized else [None]
        ids += [name if p is None else f"{name}[{p}]" for p in params]
    return sorted(ids)


@outside_simulator
def test_in_simulator(tmp_path):
    """Run this file under NUMBA_ENABLE_CUDASIM=1 in a child pytest: exactly the simulator
    tests must pass, none skipped or missing."""
    report_file = tmp_path / "simulator.xml"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", "-m", "not gpu",
         "-p", "no:cacheprovider", f"--junitxml={report_file}"],
        cwd=REPO_ROOT, env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}, capture_output=True,
        text=True, timeout=600)
    report = done.stdout[-6000:] + done.stderr[-2000:]
    assert done.returncode == 0, f"the simulator run failed:\n{report}"
    import xml.etree.ElementTree as ElementTree

    passed = sorted(case.get("name") for case in ElementTree.parse(report_file).iter("testcase")
                    if not len(case))  # a skip, failure or error is a child element
    expected = simulator_tests()
    # the cases, the two networks' steps, the loss log, the views and staging, and the
    # device-name check
    assert len(expected) == len(SIMULATOR_CASES) + 5, expected
    assert passed == expected, (f"the simulator run passed {passed}, expected {expected}:\n"
                                f"{report}")


@outside_simulator
def test_the_gpu_check_script_parses_and_its_bench_flags_exist():
    # bench/gpu_check.sh runs once, on a machine lent for it: no typo may cost that run
    script = REPO_ROOT / "bench" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    commands = script.read_text().replace("\\\n", " ").splitlines()  # continued lines joined
    for bench in ("train", "kernels"):
        line = next(line for line in commands if line.startswith("step")
                    and f"bench/{bench}.py" in line)
        flags = set(re.findall(r"(--[a-z-]+)", line))
        usage = subprocess.run([sys.executable, f"bench/{bench}.py", "--help"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True).stdout
        assert flags and all(flag in usage for flag in flags), (bench, flags)


# ---- on a real GPU (skipped without one): LeNet's shapes, determinism, a training run

LENET_CASES = [name for name, case in KERNEL_CASES.items() if case.lenet]


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("name", LENET_CASES)
def test_kernels_match_cpu_on_gpu(name):
    # long float32 sums (100,352 terms in conv1's dweight) in other orders: test_ops's bounds,
    # 1e-5 forward, 1e-4 for gradients
    check_case(name, 1e-5, 1e-4)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("name", LENET_CASES)
def test_kernels_are_deterministic_on_gpu(name):
    for call in recorded_calls(KERNEL_CASES[name]):
        first, again = (run_both(call) for _ in range(2))
        for arg in first.keys() - {"scratch"}:  # (unused on CUDA: see check_case)
            assert np.array_equal(first[arg][1], again[arg][1]), (
                f"{name}: {call.kernel} {arg} varies from run to run")


@pytest.mark.gpu
@needs_gpu
def test_training_matches_cpu_on_gpu():
    # twenty Adam steps at batch 128 from the same weights, gradients within test_ops's 1e-4;
    # Adam's division by sqrt(v) lets rounding grow in a few weights (test_training's note),
    # hence 1e-3 for single parameters
    compare_training(lambda device: LeNet5(seed=0, device=device), batch=128, steps=20,
                     bound=1e-4, param_bound=1e-3)
