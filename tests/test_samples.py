"""The small-batch inference path (kernels.cpu.sequential_forward, nn.SamplePlan): every
layer kind's step, the named architectures and the fusions give the batch-last kernels'
outputs (the oracle, checked against torch elsewhere) and torch's; a sample's output depends
on nothing but the sample; float32 only.

Sequential.forward takes this path in eval mode below the network's samples_below images;
the tests get the batch-last path for the same call by setting samples_below to 0.
"""

import dataclasses

import numba
import numpy as np
import pytest

from tests.registry import CASES
from tests.test_kernels import compile_afresh, double_math_lines
from tinyconv import archs, interop, nn
from tinyconv.kernels import cpu, get_backend

# both paths are float32 with their own summation orders: each within the kernels' forward
# bound (registry.TOLERANCE) of the truth, so within twice it of each other
BOUND = 2e-5
BATCHES = (1, 3, "the largest")  # "the largest": the network's samples_below - 1


def randomised(model, seed=0):
    """The model with random parameters and batch norm statistics (a fresh one's are 0 and 1,
    which would hide a mean or a variance read from the wrong place), in eval mode."""
    rng = np.random.default_rng(seed)
    state = {}
    for name, value in model.state_dict().items():
        if name.endswith("running_var"):
            state[name] = rng.uniform(0.5, 2.0, value.shape).astype(np.float32)
        elif name.endswith("num_batches_tracked"):
            state[name] = value
        else:
            scale = 0.3 if name.endswith("weight") and value.ndim > 1 else 0.5
            state[name] = (scale * rng.standard_normal(value.shape)).astype(np.float32)
    model.load_state_dict(state)
    return model.eval()


def batch_last(model, x):
    """model.forward(x) through the batch-last kernels."""
    chosen, model.samples_below = model._samples_below, 0
    try:
        return model.forward(x)
    finally:
        model.samples_below = chosen  # what was set, or the network's own rule


def inputs(model, batch, seed=1, scale=2.0):
    rng = np.random.default_rng(seed)
    return (scale * rng.standard_normal((batch, *model.input_shape))).astype(np.float32)


def relative_error(got, expected):
    return float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-30))


def assert_paths_agree(model, what):
    for batch in BATCHES:
        batch = model.samples_below - 1 if batch == "the largest" else batch
        x = inputs(model, batch)
        got = model.forward(x)
        assert model._sample_plan() is not None, f"{what}: no small-batch plan"
        error = relative_error(got, batch_last(model, x))
        assert error < BOUND, f"{what} at batch {batch}: {error:.3g} from the batch-last path"


@pytest.mark.parametrize("name", CASES)
def test_each_layer_kinds_step_gives_the_batch_last_output(name):
    kind, case = CASES[name]
    # a fused unit, which no Sequential holds, as the layers it stands for
    layers = case.layer.layers if kind in nn.FUSIONS else (case.layer,)
    model = randomised(nn.Sequential(*layers, input_shape=case.shape[1:]))
    assert_paths_agree(model, name)


@pytest.mark.parametrize("kind", nn.LAYERS)
def test_every_layer_kind_has_a_small_batch_step(kind):
    assert nn.LAYERS[kind].plan is not nn.Layer.plan, (
        f"{kind} has no plan(): networks holding it lose the small-batch path")


@pytest.mark.parametrize("arch", archs.ARCHS)
def test_named_architectures_match_torch_in_float64(arch):
    torch = pytest.importorskip("torch")
    model = randomised(archs.build(arch, seed=0))
    assert_paths_agree(model, arch)
    twin = interop.torch_module(model.spec()).double().eval()
    twin.load_state_dict({name: torch.from_numpy(value.astype(np.float64)
                                                 if value.dtype == np.float32 else value)
                          for name, value in model.state_dict().items()})
    x = inputs(model, 5)
    with torch.no_grad():
        expected = twin(torch.from_numpy(x.astype(np.float64))).numpy()
    error = relative_error(model.forward(x), expected)
    assert error < 1e-5, f"{arch}: {error:.3g} from torch in float64"


def test_the_lenets_run_as_fused_steps():
    model = archs.build("lenet5").eval()
    assert model._sample_plan().names == [
        "conv2d+tanh+avgpool2d+tanh", "conv2d+tanh+avgpool2d+tanh", "linear+tanh",
        "linear+tanh", "linear"]
    relu = archs.build("lenet5-relu").eval()
    assert relu._sample_plan().names == ["conv2d+relu+maxpool2d", "conv2d+relu+maxpool2d",
                                         "linear+relu", "linear+relu", "linear"]
    # a batch norm after a convolution goes into its step, before the activation
    bn = archs.build("lenet5-bn").eval()
    assert bn._sample_plan().names == [
        "conv2d+batchnorm+relu+maxpool2d", "conv2d+batchnorm+relu+maxpool2d", "linear",
        "batchnorm+relu", "linear", "batchnorm+relu", "linear"]


def residual_network():
    # an activation opening a residual body must not fuse into the convolution before it
    # (the skip reads that convolution's output unactivated); the ReLU after it fuses into
    # the sum; a padded conv, a pooling after a batch norm (no fusion) and a 1x1 output
    return nn.Sequential(
        nn.Conv2d(2, 3, 3), nn.Residual(nn.ReLU(), nn.Conv2d(3, 3, 3, padding=1)), nn.ReLU(),
        nn.BatchNorm2d(3), nn.AvgPool2d(3), nn.SiLU(), nn.Conv2d(3, 4, 3), nn.Tanh(),
        nn.Flatten(), nn.Dropout(0.3), nn.Linear(4, 5), input_shape=(2, 11, 11))


def test_fusion_stops_where_another_step_reads_the_output():
    model = randomised(residual_network())
    assert model._sample_plan().names == [
        "conv2d", "relu", "pad2d", "conv2d", "add+relu", "batchnorm", "avgpool2d+silu",
        "linear+tanh", "linear"]
    assert_paths_agree(model, "residual network")


def test_new_weights_and_statistics_reach_a_made_plan():
    model = randomised(archs.build("lenet5-bn"), seed=0)
    x = inputs(model, 2)
    before = model.forward(x)
    randomised(model, seed=1)  # load_state_dict into the same buffers the plan reads
    after = model.forward(x)
    assert not np.allclose(after, before)
    assert relative_error(after, batch_last(model, x)) < BOUND


def test_a_samples_output_depends_only_on_the_sample():
    model = randomised(archs.build("resnet-mini"))
    x = inputs(model, model.samples_below - 1)
    x[4, 0, 3, 3] = np.nan  # a NaN spoils its own sample's logits, no other's
    together = model.forward(x)
    assert np.isnan(together[4]).all() and np.isfinite(np.delete(together, 4, 0)).all()
    for index in (0, 4, len(x) - 1):
        alone = model.forward(x[index:index + 1])
        assert np.array_equal(alone[0], together[index], equal_nan=True), index
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs at least 2 Numba threads to compare 1 against more")
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        single = model.forward(x)
    finally:
        numba.set_num_threads(previous)
    assert np.array_equal(single, together, equal_nan=True)


def edge_networks():
    """Small networks whose steps take the kernel's loops of whole vectors to their edges: a
    pooled row longer than a vector, rows shorter than one, a padded convolution with batch
    norm, an odd input width (pooled row by row), and a convolution as the last step (its
    output compacted into the row's last region)."""
    return {
        "pad-bn-relu-maxpool, pooled rows of 18": nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(3 * 3 * 18, 4), input_shape=(2, 6, 36)),
        "tanh-avgpool, rows of 12 and 5": nn.Sequential(
            nn.Conv2d(3, 5, 3), nn.Tanh(), nn.AvgPool2d(2), nn.Tanh(), nn.Flatten(),
            nn.Linear(5 * 4 * 5, 3), input_shape=(3, 10, 12)),
        "odd width, pooled row by row": nn.Sequential(
            nn.Conv2d(1, 4, 4), nn.ReLU(), nn.MaxPool2d(2), input_shape=(1, 9, 11)),
        "a convolution last": nn.Sequential(nn.Conv2d(2, 3, 3), input_shape=(2, 7, 9)),
        "a pooled convolution last": nn.Sequential(
            nn.Conv2d(2, 3, 3), nn.ReLU(), nn.MaxPool2d(2), input_shape=(2, 6, 36)),
    }


@pytest.mark.parametrize("name", list(edge_networks()))
def test_edge_shapes_give_the_batch_last_output(name):
    assert_paths_agree(randomised(edge_networks()[name]), name)


NETWORKS = ("lenet5", "lenet5-relu", "lenet5-bn", "resnet-mini", *edge_networks())


def network(name):
    """A network of NETWORKS by name: an edge network, or a named architecture."""
    edges = edge_networks()
    return edges[name] if name in edges else archs.build(name)


@pytest.mark.parametrize("name", NETWORKS)
@pytest.mark.parametrize("batch", [1, 3])
def test_the_kernel_stays_in_its_rows_and_reads_nothing_stale(name, batch):
    # the loops of whole vectors read and write past rows and regions (cpu.py, "Whole
    # vectors"): with the scratch full of NaN, no output may change, and a guard row after
    # the batch's rows must keep its values
    model = randomised(network(name))
    x = inputs(model, batch)
    clean = model.forward(x)
    size = model._sample_plan().size
    model._scratch = np.full((batch + 1, size), np.nan, np.float32)
    model._scratch[batch] = 1234.5
    assert np.array_equal(model.forward(x), clean)
    assert (model._scratch[batch] == np.float32(1234.5)).all(), "a write past the batch's rows"


@pytest.mark.parametrize("height, width, kernel", [(12, 34, 5), (12, 40, 5), (11, 11, 4)])
def test_nan_and_infinities_pool_as_on_the_batch_last_path(height, width, kernel):
    # a NaN in a window makes its maximum NaN, an infinity stays one, on both 2x2 paths: the
    # pairs of even rows (pooled rows of 15 and 18) and an odd row, pooled row by row (a
    # kernel 4 wide, whose taps go along the channel and turn infinities into NaN: 0 * inf)
    model = randomised(nn.Sequential(nn.Conv2d(1, 2, kernel), nn.MaxPool2d(2),
                                     input_shape=(1, height, width)))
    x = inputs(model, 2)
    x[0, 0, 2, 5], x[0, 0, 7, width - 3] = np.nan, np.inf
    x[1, 0, 4, 7] = -np.inf
    got, expected = model.forward(x), batch_last(model, x)
    assert np.isnan(got).any() and (kernel != 5 or np.isinf(got).any())
    assert np.array_equal(np.isnan(got), np.isnan(expected))
    assert np.array_equal(np.isinf(got), np.isinf(expected))
    finite = np.isfinite(expected)
    assert relative_error(got[finite], expected[finite]) < BOUND


def test_training_mode_and_large_batches_keep_the_batch_last_path(monkeypatch):
    calls = []
    model = randomised(archs.build("lenet5"))
    kernels = model.kernels  # the backend's table, shared: monkeypatch restores it
    original = kernels.sequential_forward

    def counting(*args):
        calls.append(len(args[0]))
        return original(*args)

    monkeypatch.setattr(kernels, "sequential_forward", counting)
    serial, original_serial = [], kernels.sequential_forward_serial

    def counting_serial(*args):
        serial.append(len(args[0]))
        return original_serial(*args)

    monkeypatch.setattr(kernels, "sequential_forward_serial", counting_serial)
    model.forward(inputs(model, 1))  # one sample: sequential_forward_serial
    model.forward(inputs(model, 3))
    model.forward(inputs(model, model.samples_below - 1))
    model.forward(inputs(model, model.samples_below))
    model.samples_below = 0  # set: every batch batch-last
    model.forward(inputs(model, 1))
    model.samples_below = np.int64(40)  # set above the rule's cut
    model.forward(inputs(model, 35))
    assert model.to("cpu").samples_below == 40 and model.samples_below == 40
    model.samples_below = None  # the rule again
    model.forward(inputs(model, 35))
    model.forward(inputs(model, 2))
    model.train().forward(inputs(model, 3))
    assert calls == [3, model.samples_below - 1, 35, 2] and serial == [1]


def test_the_crossover_falls_with_the_networks_size():
    # LeNet-5's multiply-adds a sample, layer by layer: conv1, conv2, conv3, fc1, fc2
    lenet5 = archs.build("lenet5").eval()
    assert lenet5._sample_plan().multiply_adds == (6 * 28 * 28 * 25 + 16 * 10 * 10 * 150
                                                   + 120 * 400 + 120 * 84 + 84 * 10)
    resnet = archs.build("resnet-mini").eval()
    assert resnet.samples_below < lenet5.samples_below <= cpu.SAMPLES_BELOW_MOST
    sizes = [cpu.samples_below(10.0 ** power) for power in range(3, 10)]
    assert sizes == sorted(sizes, reverse=True)
    assert sizes[0] == cpu.SAMPLES_BELOW_MOST and sizes[-1] == cpu.SAMPLES_BELOW_LARGE
    assert cpu.samples_below(0) == cpu.SAMPLES_BELOW_MOST  # no multiply-adds at all


@pytest.mark.parametrize("value", [-1, 2.5, True, "8"])
def test_a_bad_samples_below_is_named(value):
    model = archs.build("lenet5")
    with pytest.raises(ValueError, match=r"Sequential.samples_below: expected an int >= 0"):
        model.samples_below = value


def test_a_kind_without_a_step_runs_batch_last():
    @dataclasses.dataclass(frozen=True, repr=False)
    class OwnTanh(nn.Tanh):  # a kind defined outside tinyconv.nn: the base Layer's plan()
        plan = nn.Layer.plan

    model = nn.Sequential(nn.Linear(6, 4), OwnTanh(), input_shape=(6,)).eval()
    x = inputs(model, 2)
    assert model._sample_plan() is None and model.samples_below == 0
    assert np.array_equal(model.forward(x), batch_last(model, x))


@pytest.mark.parametrize("name", ["sequential_forward", "sequential_forward_serial"])
def test_no_float64_arithmetic(name):
    kernel = getattr(get_backend("cpu"), name)
    model = randomised(residual_network())
    model.forward(inputs(model, 2))
    model.forward(inputs(model, 1))  # the serial kernel's
    assert kernel.signatures, "the kernel has not run"
    for sig in kernel.signatures:
        hits = double_math_lines(compile_afresh(kernel, sig))
        assert not hits, f"{name}{sig} computes in float64: {hits[:3]}"
