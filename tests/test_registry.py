"""Nothing half-added: every layer kind of tinyconv.nn has a registry entry with cases, its
kernels are called by the cases (so every check that replays them sees them), have CUDA twins
with the same signatures and a simulator case, and it exports to ONNX."""

import importlib.util
import inspect

import pytest
from onnx import helper

from tests.harness import kernels_called
from tests.registry import CASES, KERNEL_CASES, LOSS_CASES, OPTIMIZER_CASES, REGISTRY
from tinyconv import nn
from tinyconv.kernels import KERNELS, get_backend
from tinyconv.optim import OPTIMIZERS

# what calls kernels, in groups: each layer kind's cases, the loss's and Adam's
GROUPS = {**{kind: list(entry.cases.values()) for kind, entry in REGISTRY.items()},
          "loss": list(LOSS_CASES.values()),
          **{name: [case for case in OPTIMIZER_CASES.values() if case.optimizer == name]
             for name in OPTIMIZERS}}


def _has_params(case):
    return bool(case.layer.params(case.shape[1:]))


@pytest.mark.parametrize("kind", [*nn.LAYERS, *nn.FUSIONS])
def test_every_layer_kind_has_cases(kind):
    assert kind in REGISTRY, f"{kind} has no entry in tests/registry.py"
    assert REGISTRY[kind].cases, f"{kind}: its registry entry has no cases"


def test_the_registry_holds_only_layer_kinds():
    kinds = {*nn.LAYERS, *nn.FUSIONS}
    assert set(REGISTRY) <= kinds, f"not in nn.LAYERS or nn.FUSIONS: {set(REGISTRY) - kinds}"


@pytest.mark.parametrize("name", CASES)
def test_a_case_is_of_its_kind_and_fits_its_layer(name):
    kind, case = CASES[name]
    assert type(case.layer).__name__ == kind, f"{name}: a {type(case.layer).__name__} under {kind}"
    case.layer.out_shape(case.shape[1:])  # a ShapeError names what the layer needs
    # dinp None is how Sequential calls a first layer with parameters, and only such a layer
    assert case.dinp or _has_params(case), f"{name}: no input gradient and no parameters"


@pytest.mark.parametrize("kind", [kind for kind, entry in REGISTRY.items()
                                  if any(map(_has_params, entry.cases.values()))])
def test_a_kind_with_parameters_has_a_first_layer_case(kind):
    # as a network's first layer its backward gets dinp None: the kernels must take it
    assert any(not case.dinp for case in REGISTRY[kind].cases.values()), (
        f"{kind}: no case with dinp=False (the network's first layer)")


@pytest.mark.parametrize("kind", REGISTRY)
def test_a_view_layer_calls_no_kernel_and_the_others_do(kind):
    # a view layer's output is its input reshaped (Sequential gives it no buffer): a kernel
    # writing it would overwrite the layer before
    for name, case in REGISTRY[kind].cases.items():
        called = kernels_called(case)
        if case.layer.is_view:
            assert not called, f"{name}: a view layer calls {called}"
        else:
            assert called, f"{name}: the layer calls no kernel"


def test_every_kernel_is_called_by_a_case():
    called = {kernel for case in KERNEL_CASES.values() for kernel in kernels_called(case)}
    assert not set(KERNELS) - called, f"no registry case calls {set(KERNELS) - called}"
    assert called <= set(KERNELS), f"not in kernels.KERNELS: {called - set(KERNELS)}"


@pytest.mark.parametrize("group", GROUPS)
def test_kernels_have_simulator_cases(group):
    # a kernel the simulator never runs is a CUDA twin nobody checks; a group's kernels may be
    # another's (a Residual's body calls its layers'), but each group has a simulator case
    called = {kernel for case in GROUPS[group] for kernel in kernels_called(case)}
    simulated = {kernel for cases in GROUPS.values() for case in cases if case.simulator
                 for kernel in kernels_called(case)}
    assert called <= simulated, f"{group}: no simulator case calls {called - simulated}"
    assert not called or any(case.simulator for case in GROUPS[group]), (
        f"{group}: no simulator case")


@pytest.mark.parametrize("group", GROUPS)
def test_kernels_have_cuda_twins_with_the_same_signature(group):
    # the network picks a backend once and calls every kernel the same way; without
    # numba-cuda (the test extra brings it) nothing checks the CUDA backend: a failure
    assert importlib.util.find_spec("numba_cuda") is not None, (
        "numba-cuda is not installed, so the CUDA twins go unchecked: pip install -e '.[test]'")
    from tinyconv.kernels import kernel_modules

    cuda = {name: obj for module in kernel_modules("cuda") for name, obj in vars(module).items()}
    for kernel in sorted({k for case in GROUPS[group] for k in kernels_called(case)}):
        assert kernel in cuda, f"{group}: {kernel} has no twin in kernels/cuda*.py"
        ours = inspect.signature(getattr(get_backend("cpu"), kernel).py_func)
        theirs = inspect.signature(cuda[kernel])
        assert theirs == ours, f"{group}: cuda.{kernel}{theirs} differs from cpu's {ours}"


@pytest.mark.parametrize("kind", REGISTRY)
def test_every_kind_exports_to_onnx(kind):
    for name, case in REGISTRY[kind].cases.items():
        names = {local: f"{name}.{local}" for local in [*case.layer.params(case.shape[1:]),
                                                         *case.layer.buffers(case.shape[1:])]}
        try:
            nodes = case.layer.onnx(helper.make_node, "input", "output", names)
        except NotImplementedError as exc:
            pytest.fail(f"{name}: {kind} has no ONNX export ({exc})")
        assert nodes, f"{name}: {kind}.onnx gives no node"
