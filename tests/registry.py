"""Every layer kind of tinyconv.nn with its reference, its cases and its tolerances.

The op checks (test_ops), the kernel properties (test_kernels: determinism, alignment, the
float64 scan), the CUDA simulator and GPU checks (test_cuda), the ONNX check
(test_onnx_layers) and bench/kernels.py iterate over this table, most of them through the
kernel calls a case's layer makes (tests/harness.py records them); a kind of nn.LAYERS
without an entry here, without cases, without a CUDA twin of its kernels or without an ONNX
export fails test_registry.py. Adding a layer kind is: its class in nn.py, its kernels
(reference, cpu, cuda), and an entry here.

A case is a layer and the batch-first shape of its input, torch's (N, *in_shape); the torch
twin of a layer is built from its spec (interop.torch_layer), so it needs no entry. The loss
and Adam are kernels but not layers: their cases (LOSS_CASES, ADAM_CASES) are listed apart.
"""

from dataclasses import dataclass, field, replace

import numpy as np

from tinyconv import archs, nn
from tinyconv.kernels import reference as ref


@dataclass(frozen=True)
class Case:
    """A layer and its input's shape, with flags saying which checks also run it."""

    layer: nn.Layer
    shape: tuple  # the input's, batch first: (N, C, H, W) or (N, F)
    scale: float = 2.0  # inputs are scale * standard normal (tanh: +-4 reaches its flat tails)
    # above 0: inputs rounded to multiples of it, so that many are exactly 0 (ReLU's kink) or
    # equal (ties); no finite differences there
    grid: float = 0.0
    # False: the network's first layer, whose input gradient nobody needs (its backward gets
    # dinp None, as Sequential calls LeNet-5's conv1)
    dinp: bool = True
    lenet: bool = False  # one of LeNet-5's layers at its training batch (GPU checks, bench)
    simulator: bool = False  # small enough for the CUDA simulator: a few blocks a kernel

    def at_batch(self, n):
        """The same case at batch n (the kernel properties run at 32 and 37)."""
        return replace(self, shape=(n, *self.shape[1:]))


@dataclass(frozen=True)
class LossCase:
    """The softmax cross-entropy kernels on (N, V) logits, scale * standard normal (large ones
    test the maximum taken out before exp), and random labels."""

    batch: int
    classes: int
    scale: float = 2.0
    lenet: bool = False
    simulator: bool = False

    def at_batch(self, n):
        return replace(self, batch=n)


@dataclass(frozen=True)
class AdamCase:
    """One adam_update over `size` parameters at step `step` (moments as after a few steps)."""

    size: int
    step: int = 3
    weight_decay: float = 0.01
    lenet: bool = False
    simulator: bool = False

    def at_batch(self, n):
        """Adam has no batch: the same case."""
        return self


# Error is max|ours - torch| / max|torch| over a tensor. The reason for each bound:
TOLERANCE = {
    # the reference does the same sums as torch in another order: float64 rounding only
    ("reference", "forward"): 1e-10,
    ("reference", "backward"): 1e-10,
    # float32 sums of up to a few hundred products (conv2d forward) or tens of thousands
    # (dweight over batch and positions), plus the rational tanh's few ulp
    ("kernel", "forward"): 1e-5,
    ("kernel", "backward"): 1e-4,
}


@dataclass(frozen=True)
class Entry:
    # reference(layer, inp, params, dout) -> {"out", "dinp", "d<param>"...}, batch first, NumPy
    reference: object
    cases: dict = field(default_factory=dict)  # case name -> Case
    tolerance: dict = field(default_factory=lambda: dict(TOLERANCE))


def _conv2d(layer, inp, params, dout):
    dinp, dweight, dbias = ref.conv2d_backward(dout, inp, params["weight"])
    return {"out": ref.conv2d_forward(inp, params["weight"], params["bias"]), "dinp": dinp,
            "dweight": dweight, "dbias": dbias}


def _avgpool2d(layer, inp, params, dout):
    k = layer.kernel_size
    return {"out": ref.avgpool2d_forward(inp, k), "dinp": ref.avgpool2d_backward(dout, k)}


def _maxpool2d(layer, inp, params, dout):
    k = layer.kernel_size
    return {"out": ref.maxpool2d_forward(inp, k), "dinp": ref.maxpool2d_backward(dout, inp, k)}


def _tanh(layer, inp, params, dout):
    out = ref.tanh_forward(inp)
    return {"out": out, "dinp": ref.tanh_backward(dout, out)}


def _relu(layer, inp, params, dout):
    out = ref.relu_forward(inp)
    return {"out": out, "dinp": ref.relu_backward(dout, out)}


def _silu(layer, inp, params, dout):
    return {"out": ref.silu_forward(inp), "dinp": ref.silu_backward(dout, inp)}


def _flatten(layer, inp, params, dout):
    return {"out": inp.reshape(len(inp), -1), "dinp": dout.reshape(inp.shape)}


def _linear(layer, inp, params, dout):
    dinp, dweight, dbias = ref.linear_backward(dout, inp, params["weight"])
    return {"out": ref.linear_forward(inp, params["weight"], params["bias"]), "dinp": dinp,
            "dweight": dweight, "dbias": dbias}


def _conv(N, C, H, W, OC, KH, KW, **flags):
    return Case(nn.Conv2d(C, OC, (KH, KW)), (N, C, H, W), **flags)


def _pool(N, C, H, W, k=2, **flags):
    return Case(nn.AvgPool2d(k), (N, C, H, W), **flags)


def _fc(N, IN, OUT, **flags):
    return Case(nn.Linear(IN, OUT), (N, IN), **flags)


def _random_cases(seed=1234, draws=3):
    """A few seeded random shapes on top of the hand-picked ones: {kind: {name: Case}}."""
    rng = np.random.default_rng(seed)
    cases = {"Conv2d": {}, "AvgPool2d": {}, "Linear": {}}
    for i in range(draws):
        N, C, OC = (int(v) for v in rng.integers(1, 9, size=3))
        KH, KW = (int(v) for v in rng.integers(1, 6, size=2))
        H, W = KH + int(rng.integers(0, 9)), KW + int(rng.integers(0, 9))
        cases["Conv2d"][f"conv_random{i}"] = _conv(N, C, H, W, OC, KH, KW)
        k = int(rng.integers(1, 4))
        cases["AvgPool2d"][f"pool_random{i}"] = _pool(N, C, k * H, k * W, k)
        cases["Linear"][f"linear_random{i}"] = _fc(N, H * W, OC)
    return cases


_RANDOM = _random_cases()

# LeNet-5's shapes at batch 128 first (conv1 as LeNet-5 calls it: no input gradient), then
# the odd ones the kernels must also get right: batch 1 and 37, H != W, rectangular kernels,
# one channel and many, a kernel the input's size; the simulator's tiny ones last, with sums
# longer than a CUDA reduction block (kernels.cuda.REDUCE_THREADS = 128 threads)
REGISTRY = {
    "Conv2d": Entry(_conv2d, {
        "conv1": _conv(128, 1, 32, 32, 6, 5, 5, dinp=False, lenet=True),
        "conv2": _conv(128, 6, 14, 14, 16, 5, 5, lenet=True),
        "conv3": _conv(128, 16, 5, 5, 120, 5, 5, lenet=True),
        "conv_batch1": _conv(1, 3, 9, 9, 4, 3, 3),
        "conv_h_ne_w": _conv(3, 2, 7, 12, 5, 3, 3),
        "conv_rect_kernel": _conv(2, 3, 9, 8, 4, 2, 5),
        "conv_k_eq_input": _conv(4, 3, 6, 6, 7, 6, 6),
        "conv_c32": _conv(3, 32, 8, 8, 5, 3, 3),
        "conv_batch37": _conv(37, 3, 10, 7, 5, 4, 4),
        "conv_k1": _conv(2, 4, 5, 3, 3, 1, 1),
        **_RANDOM["Conv2d"],
        "conv_sim_square": _conv(2, 2, 5, 5, 2, 3, 3, simulator=True),
        "conv_sim_rect_batch1": _conv(1, 1, 4, 5, 2, 2, 3, simulator=True),
        "conv_sim_k_eq_input": _conv(2, 2, 3, 3, 2, 3, 3, simulator=True),
        "conv_sim_long_sums": _conv(2, 1, 10, 10, 1, 2, 2, simulator=True),  # 162-term sums
        "conv_sim_no_dinp": _conv(2, 2, 4, 4, 2, 2, 2, dinp=False, simulator=True),
    }),
    "AvgPool2d": Entry(_avgpool2d, {
        "pool1": _pool(128, 6, 28, 28, lenet=True),
        "pool2": _pool(128, 16, 10, 10, lenet=True),
        "pool_batch1": _pool(1, 1, 4, 6, simulator=True),
        "pool_k3": _pool(37, 32, 9, 6, 3),
        "pool_k1": _pool(2, 3, 5, 7, 1),
        "pool_whole": _pool(3, 2, 4, 4, 4),
        "pool_tiny": _pool(1, 2, 6, 3, 3, simulator=True),
        **_RANDOM["AvgPool2d"],
        "pool_sim": _pool(2, 2, 4, 6, simulator=True),
    }),
    # ties on purpose: grid 0.5 makes equal maxima common, grid 10 makes every value 0
    "MaxPool2d": Entry(_maxpool2d, {
        "maxpool1": Case(nn.MaxPool2d(2), (128, 6, 28, 28), lenet=True),
        "maxpool2": Case(nn.MaxPool2d(2), (128, 16, 10, 10), lenet=True),
        "maxpool_small": Case(nn.MaxPool2d(2), (2, 3, 4, 6)),
        "maxpool_k3_batch37": Case(nn.MaxPool2d(3), (37, 5, 9, 6)),
        "maxpool_batch1": Case(nn.MaxPool2d(2), (1, 1, 4, 6)),
        "maxpool_ties": Case(nn.MaxPool2d(2), (37, 4, 6, 8), scale=1.0, grid=0.5),
        "maxpool_all_equal": Case(nn.MaxPool2d(3), (5, 2, 6, 9), scale=1.0, grid=10.0),
        "maxpool_sim_ties": Case(nn.MaxPool2d(2), (2, 2, 4, 6), scale=1.0, grid=0.5,
                                 simulator=True),
    }),
    "Tanh": Entry(_tanh, {
        "tanh_conv1": Case(nn.Tanh(), (128, 6, 28, 28), lenet=True),
        "tanh_wide": Case(nn.Tanh(), (37, 1001)),
        "tanh_1d": Case(nn.Tanh(), (1, 1), simulator=True),
        # a third of the inputs past the rational tanh's clamp at 7.9
        "tanh_sim_tails": Case(nn.Tanh(), (2, 3, 4, 2), scale=8.0, simulator=True),
        "tanh_sim_2d": Case(nn.Tanh(), (3, 5), simulator=True),
    }),
    # LeNet-5's shapes with ReLU or SiLU in place of tanh, as the report proposes
    "ReLU": Entry(_relu, {
        "relu_conv1": Case(nn.ReLU(), (128, 6, 28, 28), lenet=True),
        "relu_small": Case(nn.ReLU(), (3, 7)),
        "relu_zeros": Case(nn.ReLU(), (37, 3, 5, 2), grid=0.5),  # a fifth exactly 0
        "relu_sim_zeros": Case(nn.ReLU(), (2, 3, 4, 2), grid=0.5, simulator=True),
    }),
    "SiLU": Entry(_silu, {
        "silu_conv1": Case(nn.SiLU(), (128, 6, 28, 28), lenet=True),
        "silu_small": Case(nn.SiLU(), (3, 7)),
        # past -88, where e^-x overflows float32: the sigmoid must come out 0, not NaN
        "silu_tails": Case(nn.SiLU(), (37, 50), scale=60.0),
        "silu_sim": Case(nn.SiLU(), (2, 3, 4, 2), scale=4.0, simulator=True),
    }),
    "Flatten": Entry(_flatten, {
        "flatten_conv3": Case(nn.Flatten(), (128, 120, 1, 1), lenet=True),
        "flatten_odd": Case(nn.Flatten(), (37, 3, 5, 2)),
        "flatten_tiny": Case(nn.Flatten(), (2, 2, 1, 3)),
    }),
    "Linear": Entry(_linear, {
        "fc1": _fc(128, 120, 84, lenet=True),
        "fc2": _fc(128, 84, 10, lenet=True),
        "linear_batch1": _fc(1, 7, 3, simulator=True),
        "linear_batch37": _fc(37, 33, 1),
        **_RANDOM["Linear"],
        "linear_sim": _fc(2, 7, 5, simulator=True),
        "linear_sim_long_sums": _fc(130, 2, 2, simulator=True),  # 130-term sums over the batch
        "linear_sim_no_dinp": _fc(2, 6, 3, dinp=False, simulator=True),
    }),
}

# every case by its name, with its kind: {name: (kind, Case)}
CASES = {name: (kind, case) for kind, entry in REGISTRY.items()
         for name, case in entry.cases.items()}

# the model's loss, after the last layer: LeNet-5's, one class, one sample, large logits
LOSS_CASES = {
    "xent_lenet": LossCase(128, 10, scale=5.0, lenet=True),
    "xent_batch1": LossCase(1, 10),
    "xent_batch37": LossCase(37, 3),
    "xent_one_class": LossCase(5, 1),
    "xent_sim_large_logits": LossCase(3, 10, scale=20.0, simulator=True),
    "xent_sim_one_sample": LossCase(1, 3, simulator=True),
}

ADAM_CASES = {
    "adam_lenet": AdamCase(archs.LeNet5().param_count, lenet=True),
    "adam_threads": AdamCase(5001),
    "adam_sim": AdamCase(300, simulator=True),
}

# every case that calls kernels, by its name: the layers' (but a view layer's: Flatten calls
# none), the loss's and Adam's
KERNEL_CASES = {**{name: case for name, (_, case) in CASES.items() if not case.layer.is_view},
                **LOSS_CASES, **ADAM_CASES}
