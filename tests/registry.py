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
and the optimizers are kernels but not layers: their cases (LOSS_CASES, OPTIMIZER_CASES) are
listed apart.
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
    training: bool = True  # the mode of the forward (BatchNorm, Dropout: eval differs)

    def at_batch(self, n):
        """The same case at batch n (the kernel properties run at 32 and 37)."""
        return replace(self, shape=(n, *self.shape[1:]))


@dataclass(frozen=True)
class LossCase:
    """The softmax cross-entropy kernels on (N, V) logits, scale * standard normal (large ones
    test the maximum taken out before exp), and random labels; smoothing is torch's
    label_smoothing."""

    batch: int
    classes: int
    scale: float = 2.0
    smoothing: float = 0.0
    lenet: bool = False
    simulator: bool = False

    def at_batch(self, n):
        return replace(self, batch=n)


@dataclass(frozen=True)
class OptimizerCase:
    """`steps` steps of an optimizer of tinyconv.optim (its class, so its own kernel calls)
    over `size` parameters, from seeded parameters and gradients."""

    optimizer: str  # a name in tinyconv.optim.OPTIMIZERS
    size: int
    options: tuple = ()  # (name, value) pairs of the constructor's keyword arguments
    steps: int = 3
    ema: float = 0.0  # above 0: an optim.EMA of this decay moves after each step
    lenet: bool = False
    simulator: bool = False

    def at_batch(self, n):
        """An optimizer has no batch: the same case."""
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
    # reference(case, inp, state, dout) -> {"out", "dinp", "d<param>"..., each buffer after
    # the pass}, batch first, NumPy; state holds the parameters and buffers by local name
    reference: object
    cases: dict = field(default_factory=dict)  # case name -> Case
    tolerance: dict = field(default_factory=lambda: dict(TOLERANCE))
    # twin(spec) -> the torch module to check against, where interop.torch_layer's cannot be
    twin: object = None


def _conv2d(case, inp, params, dout):
    pad = case.layer.padding
    padded = ref.pad2d_forward(inp, pad)
    dpadded, dweight, dbias = ref.conv2d_backward(dout, padded, params["weight"])
    return {"out": ref.conv2d_forward(padded, params["weight"], params["bias"]),
            "dinp": ref.pad2d_backward(dpadded, pad), "dweight": dweight, "dbias": dbias}


def _avgpool2d(case, inp, params, dout):
    k = case.layer.kernel_size
    return {"out": ref.avgpool2d_forward(inp, k), "dinp": ref.avgpool2d_backward(dout, k)}


def _maxpool2d(case, inp, params, dout):
    k = case.layer.kernel_size
    return {"out": ref.maxpool2d_forward(inp, k), "dinp": ref.maxpool2d_backward(dout, inp, k)}


def _tanh(case, inp, params, dout):
    out = ref.tanh_forward(inp)
    return {"out": out, "dinp": ref.tanh_backward(dout, out)}


def _relu(case, inp, params, dout):
    out = ref.relu_forward(inp)
    return {"out": out, "dinp": ref.relu_backward(dout, out)}


def _silu(case, inp, params, dout):
    return {"out": ref.silu_forward(inp), "dinp": ref.silu_backward(dout, inp)}


def _flatten(case, inp, params, dout):
    return {"out": inp.reshape(len(inp), -1), "dinp": dout.reshape(inp.shape)}


def _batchnorm(case, inp, state, dout):
    layer, count = case.layer, inp.size // inp.shape[1]
    weight, bias = state["weight"], state["bias"]
    mean, var = state["running_mean"], state["running_var"]
    running = {name: state[name] for name in ("running_mean", "running_var")}
    tracked = state["num_batches_tracked"]
    if case.training:
        out, mean, var = ref.batchnorm_forward(inp, weight, bias, layer.eps)
        running = dict(zip(running, ref.batchnorm_running_update(
            *running.values(), mean, var, count, layer.momentum), strict=True))
        tracked = tracked + 1
    else:
        out = ref.batchnorm_eval_forward(inp, mean, var, weight, bias, layer.eps)
    dinp, dweight, dbias = ref.batchnorm_backward(dout, inp, mean, var, weight, layer.eps,
                                                  case.training)
    return {"out": out, "dinp": dinp, "dweight": dweight, "dbias": dbias, **running,
            "num_batches_tracked": tracked}


def dropout_keep(p, shape, seed=0, step=0):
    """The mask (N, ...) of a Dropout(p) on a batch of this shape, batch first, for a layer's
    stream seed and the network's step (the harness runs layers under nn.Pass(True): seed 0,
    step 0): the hash of each element's index in the batch-last buffer."""
    n, rest = shape[0], shape[1:]
    bits = ref.dropout_bits(int(np.prod(shape)), seed, step).reshape(*rest, n)
    return np.moveaxis(bits >= ref.dropout_threshold(p), -1, 0)


def _dropout(case, inp, state, dout):
    if not case.training:
        return {"out": inp, "dinp": dout}
    keep, p = dropout_keep(case.layer.p, inp.shape), case.layer.p
    return {"out": ref.dropout_forward(inp, keep, p), "dinp": ref.dropout_backward(dout, keep, p)}


def hashed_dropout(p, seed=0, step=lambda: 0):
    """A torch module doing torch's dropout maths, x * mask / (1 - p), on tinyconv's hashed
    mask (torch's own draws another) for a stream seed and the step step() gives; the identity
    in eval mode, as torch.nn.Dropout."""
    import torch

    class HashedDropout(torch.nn.Module):
        def forward(self, x):
            if not self.training:
                return x
            keep = torch.from_numpy(dropout_keep(p, tuple(x.shape), seed, step())).to(x.dtype)
            return x * keep * (1 / (1 - p) if p < 1 else 0.0)

    return HashedDropout()


def _dropout_twin(spec):
    return hashed_dropout(nn.layer_from_spec(spec).p)


def _residual(case, inp, state, dout):
    # the body's layers through their own adapters, as a chain, then the skip: the outputs
    # forward first (a zero dout), then the gradients backward from dout
    body = [(replace(case, layer=layer), f"body.{j}.") for j, layer in enumerate(case.layer.body)]

    def adapter(j, x, grad):
        layer_case, head = body[j]
        local = {name[len(head):]: value for name, value in state.items()
                 if name.startswith(head)}
        layer_case = replace(layer_case, shape=x.shape)
        return REGISTRY[type(layer_case.layer).__name__].reference(layer_case, x, local, grad)

    outs = [inp]
    for j, (layer_case, _) in enumerate(body):
        out_shape = (len(inp), *layer_case.layer.out_shape(outs[j].shape[1:]))
        outs.append(adapter(j, outs[j], np.zeros(out_shape))["out"])
    grad, results = dout, {}
    for j in reversed(range(len(body))):
        got = adapter(j, outs[j], grad)
        grad = got.pop("dinp")
        del got["out"]
        head = body[j][1]
        results.update((f"d{head}{name[1:]}" if name.startswith("d") else f"{head}{name}", value)
                       for name, value in got.items())
    return {"out": inp + outs[-1], "dinp": dout + grad, **results}


def _linear(case, inp, params, dout):
    dinp, dweight, dbias = ref.linear_backward(dout, inp, params["weight"])
    return {"out": ref.linear_forward(inp, params["weight"], params["bias"]), "dinp": dinp,
            "dweight": dweight, "dbias": dbias}


def _conv_block(case, inp, params, dout):
    out, act = ref.conv2d_tanh_avgpool2d_tanh_forward(inp, params["weight"], params["bias"])
    dconv = ref.tanh_avgpool2d_tanh_backward(dout, act, out)
    dinp, dweight, dbias = ref.conv2d_backward(dconv, inp, params["weight"])
    return {"out": out, "dinp": dinp, "dweight": dweight, "dbias": dbias}


def _conv_block_twin(spec):
    """torch's Conv2d, Tanh, AvgPool2d(2), Tanh as one module with the convolution's
    parameters under their own names (weight, bias), as the fused unit's are."""
    import torch

    class ConvBlock(torch.nn.Conv2d):
        def forward(self, x):
            return torch.tanh(torch.nn.functional.avg_pool2d(torch.tanh(super().forward(x)), 2))

    return ConvBlock(spec["in_channels"], spec["out_channels"], spec["kernel_size"])


def _conv(N, C, H, W, OC, KH, KW, padding=0, **flags):
    return Case(nn.Conv2d(C, OC, (KH, KW), padding), (N, C, H, W), **flags)


def _block(N, C, H, W, OC, KH, KW, **flags):
    return Case(nn.Conv2dTanhAvgPool2dTanh(C, OC, (KH, KW)), (N, C, H, W), **flags)


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
        # 4,205-term sums: CUDA splits them into two segments (kernels.cuda.TERMS_PER_THREAD)
        "conv_sim_segments": _conv(5, 1, 30, 30, 1, 2, 2, simulator=True),
        "conv_sim_no_dinp": _conv(2, 2, 4, 4, 2, 2, 2, dinp=False, simulator=True),
        # zero padding: a residual block's 3x3 (its LeNet-sized row for the bench), every
        # padding up to the kernel's side less one, rectangular kernels, the first layer
        "conv_pad1_3x3": _conv(128, 16, 10, 10, 16, 3, 3, padding=1, lenet=True),
        "conv_pad2_5x5": _conv(37, 3, 9, 7, 5, 5, 5, padding=2),
        "conv_pad4_5x5": _conv(2, 2, 3, 4, 3, 5, 5, padding=4),  # smaller than the kernel
        "conv_pad1_rect": _conv(3, 2, 6, 5, 4, 2, 5, padding=1),
        "conv_pad_batch1": _conv(1, 1, 5, 5, 2, 3, 3, padding=1),
        "conv_pad_no_dinp": _conv(4, 1, 8, 8, 3, 3, 3, padding=2, dinp=False),
        "conv_sim_pad": _conv(2, 2, 4, 3, 2, 3, 3, padding=1, simulator=True),
        "conv_sim_pad_no_dinp": _conv(1, 1, 3, 3, 2, 2, 2, padding=1, dinp=False,
                                      simulator=True),
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
    # training mode (batch statistics, the running ones updated) and eval mode (the running
    # ones); channels from 1 to 64, a channel's values from 2 to 100,352 (conv1's)
    "BatchNorm2d": Entry(_batchnorm, {
        "bn2d_conv1": Case(nn.BatchNorm2d(6), (128, 6, 28, 28), lenet=True),
        "bn2d_conv2": Case(nn.BatchNorm2d(16), (128, 16, 10, 10), lenet=True),
        "bn2d_eval": Case(nn.BatchNorm2d(6), (37, 6, 5, 3), training=False),
        "bn2d_odd": Case(nn.BatchNorm2d(5), (37, 5, 7, 3), scale=3.0),
        "bn2d_one_channel": Case(nn.BatchNorm2d(1), (3, 1, 4, 6)),
        "bn2d_c64": Case(nn.BatchNorm2d(64), (3, 64, 2, 2)),
        "bn2d_batch1": Case(nn.BatchNorm2d(3), (1, 3, 2, 2)),
        "bn2d_eps_momentum": Case(nn.BatchNorm2d(4, eps=1e-3, momentum=0.3), (5, 4, 3, 3)),
        "bn2d_no_dinp": Case(nn.BatchNorm2d(2), (4, 2, 5, 5), dinp=False),
        "bn2d_sim": Case(nn.BatchNorm2d(3), (2, 3, 4, 5), simulator=True),
        "bn2d_sim_long_sums": Case(nn.BatchNorm2d(2), (3, 2, 10, 10), simulator=True),
        "bn2d_sim_eval": Case(nn.BatchNorm2d(3), (2, 3, 2, 3), training=False, simulator=True),
        "bn2d_sim_no_dinp": Case(nn.BatchNorm2d(2), (2, 2, 3, 3), dinp=False,
                                 simulator=True),
    }),
    "BatchNorm1d": Entry(_batchnorm, {
        "bn1d_fc1": Case(nn.BatchNorm1d(84), (128, 84), lenet=True),
        "bn1d_batch2": Case(nn.BatchNorm1d(3), (2, 3)),  # the fewest values training takes
        "bn1d_batch37": Case(nn.BatchNorm1d(33), (37, 33), scale=5.0),
        "bn1d_length": Case(nn.BatchNorm1d(4), (5, 4, 6)),  # (N, C, L), as torch's
        "bn1d_eval_batch1": Case(nn.BatchNorm1d(7), (1, 7), training=False),
        "bn1d_no_dinp": Case(nn.BatchNorm1d(5), (6, 5), dinp=False),
        "bn1d_sim": Case(nn.BatchNorm1d(5), (130, 5), simulator=True),
        "bn1d_sim_eval": Case(nn.BatchNorm1d(3), (2, 3), training=False, simulator=True),
        "bn1d_sim_no_dinp": Case(nn.BatchNorm1d(2), (3, 2), dinp=False, simulator=True),
    }),
    # the mask is tinyconv's hash (seed 0, step 0 here): torch's maths on it (_dropout_twin)
    "Dropout": Entry(_dropout, {
        "dropout_conv1": Case(nn.Dropout(0.5), (128, 6, 28, 28), lenet=True),
        "dropout_fc": Case(nn.Dropout(0.3), (37, 84)),
        "dropout_p0": Case(nn.Dropout(0.0), (3, 5, 2)),
        "dropout_p1": Case(nn.Dropout(1.0), (3, 5, 2)),
        "dropout_eval": Case(nn.Dropout(0.5), (4, 3, 5, 2), training=False),
        "dropout_sim": Case(nn.Dropout(0.25), (2, 3, 4, 5), simulator=True),
        "dropout_sim_eval": Case(nn.Dropout(0.25), (2, 7), training=False, simulator=True),
    }, twin=_dropout_twin),
    # bodies that keep the shape: padded convs with batch norm (a ResNet block), an MLP's,
    # one starting with a view, a first layer's; the skip's sum is the add kernel
    "Residual": Entry(_residual, {
        # (the ReLU before the batch norm: after a conv, a batch norm makes the conv's bias
        # gradient 0 up to rounding, where a relative error says nothing)
        "residual_block": Case(nn.Residual(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                                           nn.BatchNorm2d(16)), (128, 16, 10, 10), lenet=True),
        "residual_odd": Case(nn.Residual(nn.Conv2d(3, 3, 3, padding=1),
                                         nn.Conv2d(3, 3, (1, 1)), nn.Tanh()), (37, 3, 7, 4)),
        "residual_mlp": Case(nn.Residual(nn.Linear(7, 5), nn.SiLU(), nn.Linear(5, 7)), (5, 7)),
        "residual_eval": Case(nn.Residual(nn.BatchNorm1d(6), nn.Tanh()), (3, 6),
                              training=False),
        "residual_view_first": Case(nn.Residual(nn.Flatten(), nn.Linear(6, 6)), (4, 6)),
        "residual_nested": Case(nn.Residual(nn.Residual(nn.Linear(4, 4)), nn.ReLU()), (3, 4)),
        "residual_no_dinp": Case(nn.Residual(nn.Conv2d(2, 2, 3, padding=1)), (2, 2, 4, 4),
                                 dinp=False),
        "residual_sim": Case(nn.Residual(nn.Conv2d(2, 2, 3, padding=1), nn.ReLU(),
                                         nn.BatchNorm2d(2)), (2, 2, 3, 4), simulator=True),
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
    # the fusion Sequential runs LeNet-5's conv blocks as (nn.FUSIONS): its two blocks at
    # batch 128, an odd number of channels (the kernel's last pair is one channel), rows of
    # several passes where conv2d_forward's pass would be an odd number of positions (54
    # at batch 37: the fused kernel takes whole windows, 54, then 4), 3x3 kernels (taps
    # along c) and a rectangular one, one sample
    "Conv2dTanhAvgPool2dTanh": Entry(_conv_block, {
        "block1": _block(128, 1, 32, 32, 6, 5, 5, dinp=False, lenet=True),
        "block2": _block(128, 6, 14, 14, 16, 5, 5, lenet=True),
        "block_odd_channels": _block(37, 3, 12, 10, 5, 5, 5),
        "block_wide_rows": _block(37, 1, 6, 62, 2, 5, 5),
        "block_3x3_c7": _block(4, 7, 10, 8, 3, 3, 3),
        "block_rect_kernel": _block(3, 2, 9, 12, 4, 2, 5),
        "block_batch1": _block(1, 2, 6, 6, 2, 3, 3),
        "block_sim": _block(2, 2, 6, 6, 3, 3, 3, simulator=True),
        "block_sim_no_dinp": _block(1, 1, 5, 5, 2, 2, 2, dinp=False, simulator=True),
    }, twin=_conv_block_twin),
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
    "xent_smoothed": LossCase(37, 10, smoothing=0.1),
    "xent_lenet_smoothed": LossCase(128, 10, scale=5.0, smoothing=0.05, lenet=True),
    "xent_sim_smoothed": LossCase(3, 10, smoothing=0.3, simulator=True),
}

_LENET_PARAMS = archs.LeNet5().param_count
_SGD_NESTEROV = (("lr", 0.1), ("momentum", 0.9), ("nesterov", True), ("weight_decay", 0.01))
OPTIMIZER_CASES = {
    "adam_lenet": OptimizerCase("Adam", _LENET_PARAMS, (("lr", 1e-2), ("weight_decay", 0.01)),
                                lenet=True),
    "adam_threads": OptimizerCase("Adam", 5001, (("lr", 1e-2),)),
    "adam_sim": OptimizerCase("Adam", 300, (("weight_decay", 0.01),), simulator=True),
    "adam_lenet_ema": OptimizerCase("Adam", _LENET_PARAMS, (("lr", 1e-2),), ema=0.9,
                                    lenet=True),
    "adam_sim_ema": OptimizerCase("Adam", 300, (("lr", 1e-2),), steps=4, ema=0.7,
                                  simulator=True),
    "adamw_lenet": OptimizerCase("AdamW", _LENET_PARAMS, (("lr", 1e-2),), lenet=True),
    "adamw_sim": OptimizerCase("AdamW", 300, (("weight_decay", 0.1),), simulator=True),
    "sgd_lenet": OptimizerCase("SGD", _LENET_PARAMS, (("lr", 0.1), ("momentum", 0.9)),
                               lenet=True),
    "sgd_plain": OptimizerCase("SGD", 5001, (("lr", 0.1), ("weight_decay", 0.01))),
    "sgd_dampened": OptimizerCase("SGD", 777, (("lr", 0.1), ("momentum", 0.5),
                                               ("dampening", 0.3))),
    "sgd_sim_nesterov": OptimizerCase("SGD", 300, _SGD_NESTEROV, simulator=True),
    "sgd_sim_plain": OptimizerCase("SGD", 200, (("lr", 0.1),), simulator=True),
    "adagrad_lenet": OptimizerCase("Adagrad", _LENET_PARAMS, lenet=True),
    "adagrad_sim": OptimizerCase("Adagrad", 300, (("lr_decay", 0.01), ("weight_decay", 0.01)),
                                 simulator=True),
}

# every case that calls kernels, by its name: the layers' (but a view layer's: Flatten calls
# none), the loss's and the optimizers'
KERNEL_CASES = {**{name: case for name, (_, case) in CASES.items() if not case.layer.is_view},
                **LOSS_CASES, **OPTIMIZER_CASES}
