"""Layers as self-contained units, and Sequential: any chain of them as one trainable network.

A layer is configuration (a frozen dataclass whose fields are torch.nn's constructor
arguments, so its spec rebuilds it here and in torch) plus a few small methods, never arrays:

  out_shape(in_shape)   its output's shape from its input's (batch left out), or ShapeError
  params(in_shape)      {name: shape} of its float32 parameters, in torch's order
  buffers(in_shape)     {name: (shape, dtype)} of its state that is not trained (BatchNorm's
                        running statistics): saved in state_dict, never seen by the optimizer
  workspace(in_shape, batch)       {name: shape} of float32 arrays of its own for one batch
  grad_workspace(in_shape, batch)  (a padded input; a Residual's inner activations), carved
                        beside the activations (what the forward saves) and beside the
                        gradients (the backward's scratch); both reach the layer as t.work
  check_pass(in_shape, batch, training)   refuse a batch the layer cannot take (BatchNorm in
                        training needs two values per channel), before any kernel runs
  init(views, rng)      torch's default initialisation, into host views of both
  forward(k, t, p, run)      calls of the backend's kernels k on t (a Tensors: the batch's
  backward(k, t, p, g, run)  inp, out, dinp, dout, work), p its parameters and buffers, g
                             their gradients, run the Pass (training or eval mode, and the
                             random stream of a layer that draws: Dropout); what the forward
                             saves for the backward is what the backward reads of t
  onnx(make_node, inp, out, names)   its ONNX node(s), names mapping its parameters and buffers
                                     to the graph's initializers
  plan(plan, in_shape, src, p)   its eval-mode step(s) in the small-batch whole-network
                        kernel (a SamplePlan; cpu.sequential_forward), from one sample's input
                        at scratch offset src; returns its output's offset
  spec()                {"kind": class name, **arguments}: JSON, and torch.nn's constructor call

Sequential owns the memory: one flat parameter buffer with named views (torch's names, with an
optional prefix: backbone.0.weight), gradients of the same layout, buffers apart, and the
activations of every batch size carved from two arenas (activations, gradients). Activations
are batch-last float32: images (C,H,W,N), features (F,N), as the kernels take them; the public
methods take and return batch-first arrays, as torch does.

Fusion is a plan Sequential makes once (fusion_plan): a run of adjacent layers that a unit of
FUSIONS stands for (Conv2d, Tanh, AvgPool2d(2), Tanh: LeNet-5's blocks) runs as that unit's
fused kernels in training steps and batch-last passes, the same bits as the layers' own;
the layers stay what the network is (its spec, names, ONNX graph, activations()), and
`fuse = False` runs them one by one.
"""

import dataclasses
import itertools
import math
import operator

import numpy as np

from tinyconv.kernels import cpu, get_backend, host
from tinyconv.kernels.cpu import to_batch_last
from tinyconv.kernels.host import ALIGNMENT


class ShapeError(ValueError):
    """A layer cannot take the input shape it is given; the message says what it needs."""


@dataclasses.dataclass
class Tensors:
    """One layer's arrays for one batch: its input and output (batch-last), once a backward
    has run their gradients (dinp None for the network's input, whose gradient nobody needs),
    and its workspace arrays by name."""

    inp: object
    out: object
    dinp: object = None
    dout: object = None
    work: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Pass:
    """What a forward and its backward run under, as one layer sees them: the mode, and the
    random stream of a layer that draws (Dropout's mask hashes seed, step and the element)."""

    training: bool
    seed: int = 0  # uint32: the network's seed mixed with the layer's place in it
    step: int = 0  # the network's training-mode forward passes before this one

    def child(self, index):
        """The pass of the index-th layer inside this one (a Residual's body)."""
        return Pass(self.training, _stream(self.seed, index), self.step)


def _stream(seed, index):
    """A uint32 seed for the index-th layer under seed: distinct layers draw distinct masks."""
    return (seed * 0x9E3779B1 + index + 1) % 2**32


def _flat(k, array):
    """A contiguous array as a 1-D view, by backend k's view (made once a buffer on a GPU):
    the elementwise kernels take any rank, but Numba compiles them once per rank, and each
    compile lengthens the cold start."""
    return k.view(array, (array.size,))


def _is_count(value, least=1):
    """Whether value is an int (Python's or numpy's, not a bool) of at least `least`."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= least


def _pair(value, name):
    """An int or a pair of ints as a tuple (kh, kw) of positive Python ints."""
    pair = (value, value) if _is_count(value, least=-math.inf) else value
    if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not all(map(_is_count, pair)):
        raise ValueError(f"{name} must be a positive int or a pair of them, found {value!r}")
    return tuple(int(v) for v in pair)


def _positive(layer, **values):
    """Check that each named field of a layer is a positive int, and store it as a Python
    int (numpy's would reach the spec's JSON and the allocators)."""
    for name, value in values.items():
        if not _is_count(value):
            raise ValueError(f"{type(layer).__name__}: {name} must be a positive int, "
                             f"found {value!r}")
        object.__setattr__(layer, name, int(value))


def _fraction(layer, name, need, low=0.0, high=1.0, low_included=True):
    """Check that a field of a layer is a real number (not a bool) from low to high, low
    itself only if low_included, and store it as a Python float; need says the range in
    the error."""
    value = getattr(layer, name)
    real = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
    if not (real and (low <= value if low_included else low < value) and value <= high):
        raise ValueError(f"{type(layer).__name__}: {name} must be {need}, found {value!r}")
    object.__setattr__(layer, name, float(value))


class Layer:
    """What every layer kind shares; each kind is a frozen dataclass subclass (see _layer)."""

    # whether the output is the input reshaped (Flatten): no buffer and no kernel of its own
    is_view = False
    # which of its activations ("inp", "out") its backward reads: those keep memory of their
    # own through a training step, the others take turns (see _Buffers); a kind names fewer
    backward_reads = ("inp", "out")

    def out_shape(self, in_shape):
        return in_shape

    def params(self, in_shape):
        return {}

    def buffers(self, in_shape):
        return {}

    def is_norm_or_bias(self, name):
        """Whether parameter `name` (local) is a bias or a normalisation's: what an optimizer's
        no_decay commonly exempts from weight decay."""
        return name == "bias"

    def workspace(self, in_shape, batch):
        return {}

    def grad_workspace(self, in_shape, batch):
        return {}

    def check_pass(self, in_shape, batch, training):
        """Raise ValueError if the layer cannot run on this batch in this mode."""

    def init(self, views, rng):
        """torch's default initialisation of the parameters and buffers (host views)."""

    def forward(self, k, t, p, run):
        """Fill t.out from t.inp."""
        raise NotImplementedError(f"{type(self).__name__} has no forward")

    def backward(self, k, t, p, g, run):
        """Overwrite t.dinp (when not None) and the gradients in g from t.dout."""
        raise NotImplementedError(f"{type(self).__name__} has no backward")

    def onnx(self, make_node, inp, out, names):
        """The ONNX node(s) that compute out from inp."""
        raise NotImplementedError(f"{type(self).__name__} has no ONNX export")

    def plan(self, plan, in_shape, src, p):
        """Add the eval-mode step(s) to the small-batch plan; the output's scratch offset."""
        raise NotImplementedError(f"{type(self).__name__} has no small-batch step")

    @classmethod
    def from_arguments(cls, args, where):
        """The layer of a spec's arguments (the spec without its kind)."""
        return cls(**args)

    def spec(self):
        """The layer as JSON: its kind (torch.nn's class name) and constructor arguments."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {"kind": type(self).__name__,
                **{k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}}

    def __repr__(self):  # as constructed: Conv2d(1, 6, 5), Conv2d(16, 16, 3, padding=1)
        shown = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.default is dataclasses.MISSING:
                shown.append(repr(value))
            elif value != f.default:
                shown.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    def _expect(self, in_shape, rank, what):
        """Raise ShapeError unless the input has `rank` dimensions, as `what` describes."""
        if len(in_shape) != rank:
            raise ShapeError(f"needs an input {what}, found {tuple(in_shape)}")


# ---- the layer kinds

# a layer kind: its fields are its constructor's arguments; frozen, since a layer is configuration
_layer = dataclasses.dataclass(frozen=True, repr=False)


@_layer
class Conv2d(Layer):
    """torch.nn.Conv2d(in_channels, out_channels, kernel_size, padding=0): stride 1, bias,
    `padding` zeros on every side (0 to the kernel's smaller side less one).

    A padded convolution copies its input into a padded buffer (pad2d_forward) and runs the
    unpadded kernels on it; its backward crops the padded input's gradient (pad2d_backward).
    The copy costs little next to the convolution, and the unpadded path (LeNet-5's) has no
    branch of it.
    https://pytorch.org/docs/stable/generated/torch.nn.Conv2d.html
    """

    in_channels: int
    out_channels: int
    kernel_size: object  # an int or (kh, kw)
    padding: int = 0

    def __post_init__(self):
        _positive(self, in_channels=self.in_channels, out_channels=self.out_channels)
        kernel = _pair(self.kernel_size, "Conv2d: kernel_size")
        object.__setattr__(self, "kernel_size", kernel[0] if kernel[0] == kernel[1] else kernel)
        if not _is_count(self.padding, least=0) or self.padding >= min(kernel):
            raise ValueError(f"Conv2d: padding must be an int from 0 to {min(kernel) - 1} (less "
                             f"than the kernel's side {min(kernel)}), found {self.padding!r}")
        object.__setattr__(self, "padding", int(self.padding))

    @property
    def kernel(self):
        """(kh, kw), whichever way kernel_size was given."""
        k = self.kernel_size
        return (k, k) if isinstance(k, int) else k

    def out_shape(self, in_shape):
        (kh, kw), c, pad = self.kernel, self.in_channels, self.padding
        self._expect(in_shape, 3, f"({c}, H, W)")
        channels, height, width = in_shape
        if channels != c or height + 2 * pad < kh or width + 2 * pad < kw:
            sides = f"H >= {kh - 2 * pad} and W >= {kw - 2 * pad}"
            raise ShapeError(f"needs an input ({c}, H, W) with {sides}, found {tuple(in_shape)}")
        return (self.out_channels, height + 2 * pad - kh + 1, width + 2 * pad - kw + 1)

    def params(self, in_shape):
        return {"weight": (self.out_channels, self.in_channels, *self.kernel),
                "bias": (self.out_channels,)}

    def _padded(self, in_shape, batch):
        channels, height, width = in_shape
        return (channels, height + 2 * self.padding, width + 2 * self.padding, batch)

    def workspace(self, in_shape, batch):
        # the padded input, which the backward reads too
        return {"padded": self._padded(in_shape, batch)} if self.padding else {}

    def grad_workspace(self, in_shape, batch):
        # the padded input's gradient, cropped into dinp; a whole-input convolution's
        # scratch, as Linear's
        if self.padding:
            return {"dpadded": self._padded(in_shape, batch)}
        if tuple(in_shape[1:3]) == self.kernel:
            return {"scratch": (batch, math.prod(in_shape))}
        return {}

    def init(self, views, rng):
        _fan_in_uniform(views, rng)

    def forward(self, k, t, p, run):
        inp = t.inp
        if self.padding:
            inp = t.work["padded"]
            k.pad2d_forward(inp, t.inp, self.padding)
        elif _covers(self, inp):
            k.linear_forward(*_as_linear(k, t.out, inp, p["weight"]), p["bias"])
            return
        k.conv2d_forward(t.out, inp, p["weight"], p["bias"])

    @property
    def backward_reads(self):
        return () if self.padding else ("inp",)  # a padded input: its workspace copy

    def backward(self, k, t, p, g, run):
        # reads the forward's (padded) input; dinp None (the network's input) skips its
        # gradient
        if not self.padding and _covers(self, t.inp):
            dout, inp, weight = _as_linear(k, t.dout, t.inp, p["weight"])
            dweight = k.view(g["weight"], weight.shape)
            dinp = None if t.dinp is None else k.view(t.dinp, inp.shape)
            k.linear_backward(dinp, dweight, g["bias"], t.work["scratch"], dout, inp, weight)
            return
        if not self.padding:
            k.conv2d_backward(t.dinp, g["weight"], g["bias"], t.dout, t.inp, p["weight"])
            return
        dpadded = None if t.dinp is None else t.work["dpadded"]
        k.conv2d_backward(dpadded, g["weight"], g["bias"], t.dout, t.work["padded"],
                          p["weight"])
        if t.dinp is not None:
            k.pad2d_backward(t.dinp, dpadded, self.padding)

    def onnx(self, make_node, inp, out, names):
        return [make_node("Conv", [inp, names["weight"], names["bias"]], [out],
                          kernel_shape=list(self.kernel), pads=[self.padding] * 4)]

    def plan(self, plan, in_shape, src, p):
        (kh, kw), pad = self.kernel, self.padding
        channels, height, width = in_shape
        if pad:
            height, width = height + 2 * pad, width + 2 * pad
            src = plan.step("pad2d", src, channels * height * width,
                            sizes=(*in_shape, pad))
        oc, oh, ow = self.out_shape(in_shape)
        weight, bias = plan.param(p["weight"]), plan.param(p["bias"])
        if oh == ow == 1:  # the kernel covers the whole input: a linear layer on it, flattened
            return plan.step("linear", src, oc, a=weight, b=bias,
                             sizes=(channels * height * width, oc))
        wide = cpu.wide_size(oh, ow, width)
        work = plan.alloc(oc * wide)  # the wide output (cpu._conv2d)
        return plan.step("conv2d", src, oc * oh * ow, a=weight, b=bias, work=work, wide=wide,
                         sizes=(channels, height, width, oc, kh, kw))


def _covers(conv, inp):
    """Whether an unpadded convolution's kernel covers its whole input (C,H,W,N): LeNet-5's
    conv3, a linear layer on the flattened input."""
    return inp.shape[1:3] == conv.kernel


def _as_linear(k, out, inp, weight):
    """A whole-input convolution's out (OC,1,1,N), inp (C,H,W,N) and weight (OC,C,H,W) as the
    linear kernels' (OC,N), (C*H*W,N) and (OC,C*H*W): the same multiply-adds, and with a
    kernel width of five the same taps in the same order, so the same bits as conv2d's
    kernels, which on this shape would split the work into tasks of one output position
    each."""
    c, h, w, n = inp.shape  # (a device array's shape takes no negative index)
    flat = c * h * w
    return (k.view(out, (out.shape[0], n)), k.view(inp, (flat, n)),
            k.view(weight, (weight.shape[0], flat)))


@_layer
class _Pool2d(Layer):
    """What the pooling kinds share: non-overlapping k x k windows, stride k. Height and width
    must be multiples of k (torch drops the remainder; here it is an error)."""

    kernel_size: int

    def __post_init__(self):
        _positive(self, kernel_size=self.kernel_size)

    def out_shape(self, in_shape):
        k = self.kernel_size
        self._expect(in_shape, 3, "(C, H, W)")
        channels, height, width = in_shape
        if height % k or width % k:
            raise ShapeError(f"needs a height and width divisible by {k}, found "
                             f"{tuple(in_shape)}")
        return (channels, height // k, width // k)

    def plan(self, plan, in_shape, src, p):
        channels, height, width = self.out_shape(in_shape)
        return plan.pool(self.step_name, src, channels * height * width, in_shape,
                         self.kernel_size)


@_layer
class AvgPool2d(_Pool2d):
    """torch.nn.AvgPool2d(kernel_size): the mean of each k x k window, stride k.

    https://pytorch.org/docs/stable/generated/torch.nn.AvgPool2d.html
    """

    step_name = "avgpool2d"

    def forward(self, k, t, p, run):
        k.avgpool2d_forward(t.out, t.inp, self.kernel_size)

    backward_reads = ()

    def backward(self, k, t, p, g, run):
        # reads nothing the forward saw: each pixel gets 1/k^2 of its window's gradient
        k.avgpool2d_backward(t.dinp, t.dout, self.kernel_size)

    def onnx(self, make_node, inp, out, names):
        k = self.kernel_size
        return [make_node("AveragePool", [inp], [out], kernel_shape=[k, k], strides=[k, k])]


@_layer
class MaxPool2d(_Pool2d):
    """torch.nn.MaxPool2d(kernel_size): the largest of each k x k window, stride k.

    The backward sends a window's gradient to its largest element, the first in row-major
    order where several are equal (as after a ReLU), as torch does. It finds that element
    again from the saved input and output (the first element equal to the window's maximum)
    rather than keeping indices: no buffer of its own.
    https://pytorch.org/docs/stable/generated/torch.nn.MaxPool2d.html
    """

    step_name = "maxpool2d"

    def forward(self, k, t, p, run):
        k.maxpool2d_forward(t.out, t.inp, self.kernel_size)

    def backward(self, k, t, p, g, run):
        # reads the forward's output and input: where each window's maximum lies
        k.maxpool2d_backward(t.dinp, t.out, t.inp, t.dout, self.kernel_size)

    def onnx(self, make_node, inp, out, names):
        k = self.kernel_size
        return [make_node("MaxPool", [inp], [out], kernel_shape=[k, k], strides=[k, k])]


@_layer
class Tanh(Layer):
    """torch.nn.Tanh(), elementwise, any shape."""

    def forward(self, k, t, p, run):
        k.tanh_forward(_flat(k, t.out), _flat(k, t.inp))

    backward_reads = ("out",)

    def backward(self, k, t, p, g, run):
        # reads the forward's output: d tanh(x)/dx = 1 - tanh(x)^2
        k.tanh_backward(_flat(k, t.dinp), _flat(k, t.out), _flat(k, t.dout))

    def onnx(self, make_node, inp, out, names):
        return [make_node("Tanh", [inp], [out])]

    def plan(self, plan, in_shape, src, p):
        return plan.activation("tanh", src, math.prod(in_shape))


@_layer
class ReLU(Layer):
    """torch.nn.ReLU(): max(x, 0) elementwise; the gradient at exactly 0 is torch's, 0."""

    def forward(self, k, t, p, run):
        k.relu_forward(_flat(k, t.out), _flat(k, t.inp))

    backward_reads = ("out",)

    def backward(self, k, t, p, g, run):
        # reads the forward's output: the gradient passes where it is positive
        k.relu_backward(_flat(k, t.dinp), _flat(k, t.out), _flat(k, t.dout))

    def onnx(self, make_node, inp, out, names):
        return [make_node("Relu", [inp], [out])]

    def plan(self, plan, in_shape, src, p):
        return plan.activation("relu", src, math.prod(in_shape))


@_layer
class SiLU(Layer):
    """torch.nn.SiLU(): x * sigmoid(x) elementwise."""

    def forward(self, k, t, p, run):
        k.silu_forward(_flat(k, t.out), _flat(k, t.inp))

    backward_reads = ("inp",)

    def backward(self, k, t, p, g, run):
        # reads the forward's input: sigmoid(x) * (1 + x * (1 - sigmoid(x)))
        k.silu_backward(_flat(k, t.dinp), _flat(k, t.inp), _flat(k, t.dout))

    def onnx(self, make_node, inp, out, names):
        # opset 17 has no SiLU: x * Sigmoid(x)
        sigmoid = f"{out}.sigmoid"
        return [make_node("Sigmoid", [inp], [sigmoid], name=sigmoid),
                make_node("Mul", [inp, sigmoid], [out], name=f"{out}.mul")]

    def plan(self, plan, in_shape, src, p):
        return plan.activation("silu", src, math.prod(in_shape))


@_layer
class Flatten(Layer):
    """torch.nn.Flatten(): (C, H, W) -> (C*H*W,), features in torch's (c, h, w) order.

    Batch-last, (C,H,W,N) is already (C*H*W, N) in memory: the output is a view of the input,
    and the gradient a view of the output's.
    """

    is_view = True

    def out_shape(self, in_shape):
        return (math.prod(in_shape),)

    def forward(self, k, t, p, run):
        """Nothing to compute: the output is a view of the input."""

    backward_reads = ()

    def backward(self, k, t, p, g, run):
        """Nothing to compute: the input's gradient is a view of the output's."""

    def onnx(self, make_node, inp, out, names):
        return [make_node("Flatten", [inp], [out], axis=1)]

    def plan(self, plan, in_shape, src, p):
        return src  # one sample's (C, H, W) is its (C*H*W,) already


@_layer
class Linear(Layer):
    """torch.nn.Linear(in_features, out_features): x @ weight.T + bias.

    https://pytorch.org/docs/stable/generated/torch.nn.Linear.html
    """

    in_features: int
    out_features: int

    def __post_init__(self):
        _positive(self, in_features=self.in_features, out_features=self.out_features)

    def out_shape(self, in_shape):
        if tuple(in_shape) != (self.in_features,):
            raise ShapeError(f"needs an input ({self.in_features},), found {tuple(in_shape)}"
                             + ("; put a Flatten() before it" if len(in_shape) > 1 else ""))
        return (self.out_features,)

    def params(self, in_shape):
        return {"weight": (self.out_features, self.in_features), "bias": (self.out_features,)}

    def init(self, views, rng):
        _fan_in_uniform(views, rng)

    def forward(self, k, t, p, run):
        k.linear_forward(t.out, t.inp, p["weight"], p["bias"])

    def grad_workspace(self, in_shape, batch):
        return {"scratch": (batch, self.in_features)}  # the input transposed (cpu's kernel)

    backward_reads = ("inp",)

    def backward(self, k, t, p, g, run):
        # reads the forward's input; dinp None (the network's input) skips its gradient
        k.linear_backward(t.dinp, g["weight"], g["bias"], t.work["scratch"], t.dout, t.inp,
                          p["weight"])

    def onnx(self, make_node, inp, out, names):
        return [make_node("Gemm", [inp, names["weight"], names["bias"]], [out], transB=1)]

    def plan(self, plan, in_shape, src, p):
        return plan.step("linear", src, self.out_features, a=plan.param(p["weight"]),
                         b=plan.param(p["bias"]), sizes=(self.in_features, self.out_features))


@_layer
class _BatchNorm(Layer):
    """What BatchNorm2d and BatchNorm1d share: torch's semantics over the (C, M) view of a
    channel-first, batch-last activation, where a row holds one channel's M values.

    Training mode normalises by the batch's mean and biased variance, and moves the running
    statistics momentum of the way to the mean and the unbiased variance (num_batches_tracked
    counts the steps); eval mode normalises by the running statistics. The training backward
    goes through the batch statistics. Buffers and their dtypes are torch's, so a state_dict
    loads into torch.nn.BatchNorm2d unchanged.
    """

    num_features: int
    eps: float = 1e-5
    momentum: float = 0.1

    def __post_init__(self):
        _positive(self, num_features=self.num_features)
        _fraction(self, "eps", "a positive number", high=math.inf, low_included=False)
        _fraction(self, "momentum", "in [0, 1]")

    def out_shape(self, in_shape):
        c = self.num_features
        if len(in_shape) not in self.ranks or in_shape[0] != c:
            expected = " or ".join(text.replace("C", str(c)) for text in self.rank_texts)
            raise ShapeError(f"needs an input {expected}, found {tuple(in_shape)}")
        return in_shape

    def params(self, in_shape):
        return {"weight": (self.num_features,), "bias": (self.num_features,)}

    def is_norm_or_bias(self, name):
        return True  # the scale and the shift

    def buffers(self, in_shape):
        c = self.num_features
        return {"running_mean": ((c,), np.float32), "running_var": ((c,), np.float32),
                "num_batches_tracked": ((), np.int64)}

    def workspace(self, in_shape, batch):
        # the statistics the forward normalised by, which the backward reads
        return {"mean": (self.num_features,), "invstd": (self.num_features,)}

    def check_pass(self, in_shape, batch, training):
        if training and batch * math.prod(in_shape[1:]) < 2:
            raise ValueError(f"in training mode needs more than one value per channel, found a "
                             f"batch of {batch} (eval() runs single samples)")

    def init(self, views, rng):
        views["weight"][...] = 1
        views["bias"][...] = 0
        views["running_mean"][...] = 0
        views["running_var"][...] = 1
        views["num_batches_tracked"][...] = 0

    def _rows(self, k, array):
        return k.view(array, (self.num_features, array.size // self.num_features))

    def forward(self, k, t, p, run):
        out, inp, mean, invstd = self._rows(k, t.out), self._rows(k, t.inp), t.work["mean"], \
            t.work["invstd"]
        eps = np.float32(self.eps)
        if run.training:
            k.batchnorm_forward(out, mean, invstd, p["running_mean"], p["running_var"],
                                k.view(p["num_batches_tracked"], (1,)), inp, p["weight"],
                                p["bias"], np.float32(self.momentum), eps)
        else:
            k.batchnorm_eval_forward(out, mean, invstd, inp, p["running_mean"], p["running_var"],
                                     p["weight"], p["bias"], eps)

    backward_reads = ("inp",)

    def backward(self, k, t, p, g, run):
        # reads the forward's input and the statistics it saved in its workspace
        dinp = None if t.dinp is None else self._rows(k, t.dinp)
        k.batchnorm_backward(dinp, g["weight"], g["bias"], self._rows(k, t.dout),
                             self._rows(k, t.inp), t.work["mean"], t.work["invstd"], p["weight"],
                             run.training)

    def onnx(self, make_node, inp, out, names):
        # inference: the running statistics; ONNX's momentum weighs the old value (1 - torch's)
        return [make_node("BatchNormalization",
                          [inp, names["weight"], names["bias"], names["running_mean"],
                           names["running_var"]], [out], epsilon=self.eps,
                          momentum=1.0 - self.momentum)]

    def plan(self, plan, in_shape, src, p):
        # eval mode: the running statistics, copied into the plan's state at each call
        c, values = self.num_features, math.prod(in_shape[1:])
        return plan.batchnorm(src, c, values, plan.param(p["weight"]), plan.param(p["bias"]),
                              plan.state(p["running_mean"], p["running_var"]), self.eps)


@_layer
class BatchNorm2d(_BatchNorm):
    """torch.nn.BatchNorm2d(num_features, eps=1e-5, momentum=0.1): per channel of (C, H, W).

    https://pytorch.org/docs/stable/generated/torch.nn.BatchNorm2d.html
    """

    ranks, rank_texts = (3,), ("(C, H, W)",)


@_layer
class BatchNorm1d(_BatchNorm):
    """torch.nn.BatchNorm1d(num_features, eps=1e-5, momentum=0.1): per feature of (F,) (or
    per channel of (C, L)).

    https://pytorch.org/docs/stable/generated/torch.nn.BatchNorm1d.html
    """

    ranks, rank_texts = (1, 2), ("(C,)", "(C, L)")


@_layer
class Dropout(Layer):
    """torch.nn.Dropout(p=0.5): in training, each element zeroed with probability p and the
    others scaled by 1/(1-p) (inverted dropout); in eval, the identity.

    The mask is not drawn from a generator but hashed from (the layer's seed, the network's
    training step, the element's index) (kernels.reference.dropout_bits): the same bits on the
    CPU and the GPU, recomputed by the backward instead of stored, and replayed exactly by a
    resumed run. torch draws its own masks, so only the maths matches torch's, not the mask.
    https://pytorch.org/docs/stable/generated/torch.nn.Dropout.html
    """

    p: float = 0.5

    def __post_init__(self):
        _fraction(self, "p", "a probability in [0, 1]")

    def _mask(self, run):
        """(threshold, scale, seed, step) of the kernels: keep all, unscaled, in eval. The
        threshold is round(p * 2^32) as a uint32 (a 64-bit compare halves the kernels' vector
        width: 1.6x slower), at most 2^32 - 1, where p = 1's scale 0 drops the rest."""
        if not run.training:
            return np.uint32(0), np.float32(1.0), np.uint32(0), np.uint32(0)
        scale = np.float32(1.0 / (1.0 - self.p)) if self.p < 1 else np.float32(0.0)
        return (np.uint32(min(round(self.p * 2**32), 2**32 - 1)), scale, np.uint32(run.seed),
                np.uint32(run.step % 2**32))

    def forward(self, k, t, p, run):
        k.dropout_forward(_flat(k, t.out), _flat(k, t.inp), *self._mask(run))

    backward_reads = ()

    def backward(self, k, t, p, g, run):
        # reads nothing the forward saw: the mask is hashed again from the same stream
        k.dropout_backward(_flat(k, t.dinp), _flat(k, t.dout), *self._mask(run))

    def onnx(self, make_node, inp, out, names):
        return [make_node("Identity", [inp], [out])]  # inference: no dropout

    def plan(self, plan, in_shape, src, p):
        return src  # eval mode: the identity


@_layer
class Residual(Layer):
    """Residual(*body): y = x + body(x), for a body (a chain of layers) that keeps the shape.

    Its body's parameters and buffers are named body.<j>.<name> (the torch twin,
    interop.torch_layer, is a module with a `body` Sequential). The backward runs the body's
    backward from dout, then adds the skip's share: dinp = dbody_input + dout, with the
    contract's summing kernel `add`, since every backward overwrites its outputs.
    """

    body: tuple

    def __init__(self, *body):
        if not body:
            raise ValueError("Residual: needs a body of at least one layer")
        for j, layer in enumerate(body):
            _check_layer(layer, f"Residual: body layer {j}")
        object.__setattr__(self, "body", tuple(body))

    def __repr__(self):
        return f"Residual({', '.join(map(repr, self.body))})"

    def spec(self):
        return {"kind": "Residual", "body": [layer.spec() for layer in self.body]}

    @classmethod
    def from_arguments(cls, args, where):
        if set(args) != {"body"} or not isinstance(args["body"], list):
            raise ValueError(f"Residual takes one argument, 'body': a list of layer specs; "
                             f"found {sorted(args)}")
        return cls(*(layer_from_spec(layer, f"body layer {j}")
                     for j, layer in enumerate(args["body"])))

    def _shapes(self, in_shape):
        """The shapes at the body's boundaries, its input's first."""
        shapes = [tuple(in_shape)]
        for j, layer in enumerate(self.body):
            try:
                shapes.append(tuple(layer.out_shape(shapes[-1])))
            except ShapeError as exc:
                raise ShapeError(f"body layer {j} {layer!r}: {exc}") from None
        return shapes

    def out_shape(self, in_shape):
        shapes = self._shapes(in_shape)
        if shapes[-1] != tuple(in_shape):
            raise ShapeError(f"needs a body that keeps its input's shape {tuple(in_shape)}, "
                             f"found {shapes[-1]} after it (the skip adds the two)")
        return shapes[-1]

    def _named(self, in_shape, each):
        """{body.<j>.<name>: value} of each(layer, its input shape) over the body."""
        shapes = self._shapes(in_shape)
        return {f"body.{j}.{name}": value for j, layer in enumerate(self.body)
                for name, value in each(layer, shapes[j]).items()}

    def params(self, in_shape):
        return self._named(in_shape, lambda layer, shape: layer.params(shape))

    def is_norm_or_bias(self, name):
        _, j, local = name.split(".", 2)  # body.<j>.<local>
        return self.body[int(j)].is_norm_or_bias(local)

    def buffers(self, in_shape):
        return self._named(in_shape, lambda layer, shape: layer.buffers(shape))

    def workspace(self, in_shape, batch):
        # each body layer's output (a view layer's is a reshape, the output's gradient is
        # dout's), and the body's own workspaces
        shapes = self._shapes(in_shape)
        acts = {f"act{j + 1}": (*shapes[j + 1], batch)
                for j, layer in enumerate(self.body) if not layer.is_view}
        return {**acts, **self._named(in_shape, lambda layer, shape: layer.workspace(shape,
                                                                                     batch))}

    def grad_workspace(self, in_shape, batch):
        # the gradients at the body's boundaries but the last (dout's), taking turns in two
        # flat buffers as _Buffers' do (a body layer's backward reads one, writes the other)
        # (a view layer's input gradient is a reshape of its output's: no memory of its own)
        shapes = self._shapes(in_shape)
        sizes = [math.prod(shapes[j]) * batch for j, layer in enumerate(self.body)
                 if not layer.is_view]
        turns = {f"dturn{turn}": (max(sizes[turn::2], default=0),) for turn in (0, 1)}
        return {**turns, **self._named(in_shape, lambda layer, shape: layer.grad_workspace(
            shape, batch))}

    def check_pass(self, in_shape, batch, training):
        for j, (layer, shape) in enumerate(zip(self.body, self._shapes(in_shape), strict=False)):
            try:
                layer.check_pass(shape, batch, training)
            except ValueError as exc:
                raise ValueError(f"body layer {j} {layer!r}: {exc}") from None

    def init(self, views, rng):
        for j, layer in enumerate(self.body):
            layer.init(_local(views, f"body.{j}."), rng)

    def _tensors(self, k, t):
        """The body's Tensors for t's batch, from t and its workspace (views by backend k's
        view)."""
        *in_shape, batch = t.inp.shape  # a tuple (the CUDA simulator's shapes index no -1)
        shapes = [shape + (batch,) for shape in self._shapes(in_shape)]
        acts, dacts = [t.inp], [None] * len(self.body) + [t.dout]
        for j, layer in enumerate(self.body):
            acts.append(k.view(acts[j], shapes[j + 1]) if layer.is_view else t.work[f"act{j + 1}"])
        if t.dout is not None:
            owned = [j for j, layer in enumerate(self.body) if not layer.is_view]
            for j in reversed(range(len(self.body))):
                if self.body[j].is_view:
                    dacts[j] = k.view(dacts[j + 1], shapes[j])
                else:
                    dacts[j] = k.view(t.work[f"dturn{owned.index(j) % 2}"], shapes[j])
            if t.dinp is None and not self.body[0].is_view:
                dacts[0] = None  # nobody needs the input's gradient
        return [Tensors(acts[j], acts[j + 1], dacts[j], dacts[j + 1],
                        _local(t.work, f"body.{j}.")) for j in range(len(self.body))]

    def forward(self, k, t, p, run):
        tensors = self._tensors(k, t)
        _forward_chain(k, list(enumerate(self.body)), tensors, self._split(p), run)
        k.add(_flat(k, t.out), _flat(k, t.inp), _flat(k, tensors[-1].out))

    # the body's first layer may read the input; the body's own activations are in the
    # workspace, and the sum reads nothing
    backward_reads = ("inp",)

    def backward(self, k, t, p, g, run):
        tensors = self._tensors(k, t)
        _backward_chain(k, list(enumerate(self.body)), tensors, self._split(p),
                        self._split(g), run)
        if t.dinp is not None:  # the skip's gradient, dout, added to the body's
            k.add(_flat(k, t.dinp), _flat(k, tensors[0].dinp), _flat(k, t.dout))

    def _split(self, named):
        """A {body.<j>.<name>: array} mapping as one {name: array} per body layer."""
        return [_local(named, f"body.{j}.") for j in range(len(self.body))]

    def onnx(self, make_node, inp, out, names):
        outputs = [f"{out}.body.{j}" for j in range(len(self.body))]
        nodes = _onnx_chain(make_node, self.body, inp, outputs,
                            [_local(names, f"body.{j}.") for j in range(len(self.body))])
        return [*nodes, make_node("Add", [inp, outputs[-1]], [out], name=f"{out}.add")]

    def plan(self, plan, in_shape, src, p):
        plan.pin(src)  # the skip reads the input after the body: no activation fuses into it
        current, shapes = src, self._shapes(in_shape)
        for j, layer in enumerate(self.body):
            current = layer.plan(plan, shapes[j], current, _local(p, f"body.{j}."))
        count = math.prod(in_shape)
        return plan.step("add", src, count, a=current, sizes=(count,))


# ---- fusions: one unit that Sequential runs in place of a run of adjacent layers


@_layer
class Conv2dTanhAvgPool2dTanh(Layer):
    """Conv2d(in_channels, out_channels, kernel_size) (unpadded), Tanh, AvgPool2d(2), Tanh:
    LeNet-5's convolution block as one unit, which Sequential runs in place of those four
    layers (see fusion_plan), torch's maths exactly.

    Its forward is one kernel (conv2d_tanh_avgpool2d_tanh_forward) that pools each pair of
    output rows while they are in cache, its backward one elementwise pass from the block's
    output gradient to the convolution's (tanh_avgpool2d_tanh_backward), then the
    convolution's own backward. It keeps the first tanh's output (its workspace `act`) and
    its own, all the four layers' backwards read, and never stores the convolution's or the
    pooling's output. The same sums in the same order as the four layers' kernels: the same
    bits, with three kernel launches and passes over memory fewer in the forward, two in the
    backward.
    """

    in_channels: int
    out_channels: int
    kernel_size: object  # an int or (kh, kw), as Conv2d's

    def __post_init__(self):  # Conv2d's checks, and its form of kernel_size
        try:
            conv = self.layers[0]
        except ValueError as exc:
            raise ValueError(f"{type(self).__name__}: {str(exc).split(': ', 1)[1]}") from None
        object.__setattr__(self, "kernel_size", conv.kernel_size)

    # the kinds of the layers it stands for
    kinds = (Conv2d, Tanh, AvgPool2d, Tanh)

    @classmethod
    def fusing(cls, layers):
        """The fused unit of these layers, or None where they are not its four (or the
        convolution is padded, or the pooling's window is not 2)."""
        if tuple(map(type, layers[:4])) != cls.kinds:
            return None
        conv, _, pool, _ = layers[:4]
        if conv.padding or pool.kernel_size != 2:
            return None
        return cls(conv.in_channels, conv.out_channels, conv.kernel_size)

    @property
    def layers(self):
        """The four layers it stands for."""
        return (Conv2d(self.in_channels, self.out_channels, self.kernel_size), Tanh(),
                AvgPool2d(2), Tanh())

    def _conv_shape(self, in_shape):
        return self.layers[0].out_shape(in_shape)

    def out_shape(self, in_shape):
        return self.layers[2].out_shape(self._conv_shape(in_shape))

    def params(self, in_shape):
        return self.layers[0].params(in_shape)

    def workspace(self, in_shape, batch):
        return {"act": (*self._conv_shape(in_shape), batch)}  # tanh(conv): the backward's

    def grad_workspace(self, in_shape, batch):
        return {"dconv": (*self._conv_shape(in_shape), batch)}  # the convolution's dout

    def init(self, views, rng):
        _fan_in_uniform(views, rng)

    def forward(self, k, t, p, run):
        k.conv2d_tanh_avgpool2d_tanh_forward(t.out, t.work["act"], t.inp, p["weight"],
                                             p["bias"])

    def backward(self, k, t, p, g, run):
        # reads the forward's input, output and act
        dconv = t.work["dconv"]
        k.tanh_avgpool2d_tanh_backward(dconv, t.work["act"], t.out, t.dout)
        k.conv2d_backward(t.dinp, g["weight"], g["bias"], dconv, t.inp, p["weight"])

    def plan(self, plan, in_shape, src, p):
        # its layers' steps, which the small-batch plan fuses into one of its own
        for layer in self.layers:
            src = layer.plan(plan, in_shape, src, p)
            in_shape = layer.out_shape(in_shape)
        return src

    def onnx(self, make_node, inp, out, names):
        outputs = [f"{out}.{j}" for j in range(3)] + [out]
        return _onnx_chain(make_node, self.layers, inp, outputs, [names] * 4)


# what Sequential may fuse, tried in order at each layer
FUSIONS = {cls.__name__: cls for cls in (Conv2dTanhAvgPool2dTanh,)}


def _check_layer(layer, where):
    """Raise ValueError, saying so at `where`, unless layer is one of tinyconv.nn's kinds (a
    fused unit is not: the Sequential makes those from the layers they stand for)."""
    if not isinstance(layer, Layer):
        raise ValueError(f"{where} must be a tinyconv.nn layer, found {type(layer).__name__}")
    if type(layer) in FUSIONS.values():
        raise ValueError(f"{where}: {layer!r} is a fused unit, which Sequential makes itself; "
                         f"give its layers: {', '.join(map(repr, layer.layers))}")


def fusion_plan(layers):
    """The (index, layer) units a chain of layers runs as: each run of layers that a fusion of
    FUSIONS takes as one unit (indexed by its first layer), the other layers as they are."""
    units, index = [], 0
    while index < len(layers):
        fused = next((found for fusion in FUSIONS.values()
                      if (found := fusion.fusing(layers[index:])) is not None), None)
        units.append((index, fused or layers[index]))
        index += len(fused.kinds) if fused else 1
    return units


def _onnx_chain(make_node, layers, inp, outputs, names):
    """The ONNX nodes of layers one after another from inp, layer j writing outputs[j] (its
    nodes named so where they have no name of their own) with the initializers names[j]."""
    nodes = []
    for layer, output, named in zip(layers, outputs, names, strict=True):
        for node in layer.onnx(make_node, inp, output, named):
            node.name = node.name or output
            nodes.append(node)
        inp = output
    return nodes


def _local(named, head):
    """The entries of a {full name: value} mapping under head, by their names after it."""
    return {name[len(head):]: value for name, value in named.items() if name.startswith(head)}


def _forward_chain(k, units, tensors, params, run):
    """Each unit's forward in order: units are (index, layer) pairs (a Sequential's plan, a
    Residual's body), tensors one per unit, params by the index, which also draws the
    layer's random stream (a fused unit takes its first layer's)."""
    for (index, layer), t in zip(units, tensors, strict=True):
        layer.forward(k, t, params[index], run.child(index))


def _backward_chain(k, units, tensors, params, grads, run):
    """Each unit's backward in reverse order, but a parameter-less one's whose input needs
    no gradient (the network's first layers, before any parameter)."""
    for (index, layer), t in zip(reversed(units), reversed(tensors), strict=True):
        if t.dinp is not None or grads[index]:
            layer.backward(k, t, params[index], grads[index], run.child(index))


def _fan_in_uniform(views, rng):
    """torch's default for Conv2d and Linear: weight, then bias, uniform in +-1/sqrt(fan_in)
    (kaiming_uniform with a = sqrt(5) gives the weight's bound; the bias takes the same)."""
    bound = 1.0 / np.sqrt(np.prod(views["weight"].shape[1:]))
    for name in ("weight", "bias"):
        views[name][...] = rng.uniform(-bound, bound, views[name].shape)


# every layer kind by its name: what a spec's "kind" may say
LAYERS = {cls.__name__: cls for cls in (Conv2d, AvgPool2d, MaxPool2d, Tanh, ReLU, SiLU, Flatten,
                                        Linear, BatchNorm2d, BatchNorm1d, Dropout, Residual)}


def layer_from_spec(spec, where="layer"):
    """The layer a spec() describes; a ValueError naming `where` for an unknown kind or bad
    arguments."""
    if not isinstance(spec, dict) or not isinstance(spec.get("kind"), str):
        raise ValueError(f"{where}: expected a dict with a 'kind', found {spec!r}")
    kind = spec["kind"]
    if kind not in LAYERS:
        raise ValueError(f"{where}: unknown layer kind {kind!r}, expected one of "
                         f"{', '.join(LAYERS)}")
    args = {k: v for k, v in spec.items() if k != "kind"}
    try:
        return LAYERS[kind].from_arguments(args, where)
    except TypeError as exc:  # a missing or unexpected argument (bad values: ValueError)
        names = [f.name for f in dataclasses.fields(LAYERS[kind])]
        raise ValueError(f"{where}: {kind} takes the arguments {names}, found {sorted(args)} "
                         f"({exc})") from None
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


# ---- memory

_ALIGN = ALIGNMENT // 4  # float32 values in 64 bytes


class _Arena:
    """A block of float32 memory that hands out contiguous arrays, from its start each time.

    Only one batch is in flight at a time, so the buffers of every batch size can share it: a
    training run uses 128 (the batch), 96 (the last of 60,000) and 16 (the last of the 10,000
    test images), and keeps one set of buffers' memory instead of three. A larger need gets
    a new block, and the buffers carved from the old one are stale (see _Buffers.current):
    they are carved again from the new block when next used, and the old block is freed.
    """

    def __init__(self, empty):
        self.empty = empty  # the backend's allocator: host or device memory
        self.memory = empty(0)

    def carve(self, groups):
        """For each group of shapes, arrays on top of one another (buffers never in use at the
        same time), the groups one after another, each array starting on a 64-byte boundary
        (the block does: see kernels.host); a larger need gets a new block (the arrays already
        handed out keep the old one)."""
        sizes = [max((_aligned(math.prod(shape)) for shape in group), default=0)
                 for group in groups]
        # Python ints: numba-cuda's allocator takes no numpy integer as a size
        starts = [0, *itertools.accumulate(sizes)]
        if starts[-1] > self.memory.size:
            self.memory = self.empty(starts[-1])
        return [[self.memory[start:start + math.prod(shape)].reshape(shape) for shape in group]
                for group, start in zip(groups, starts[:-1], strict=True)]


def _aligned(size):
    """size float32 values rounded up to whole 64-byte lines."""
    return -(-size // _ALIGN) * _ALIGN


def _one_after_another(span, shapes):
    """Arrays of these shapes one after another in the flat array span, each on a 64-byte
    boundary (span's own start being one)."""
    starts = [0, *itertools.accumulate(_aligned(math.prod(shape)) for shape in shapes)]
    return [span[start:start + math.prod(shape)].reshape(shape)
            for shape, start in zip(shapes, starts[:-1], strict=True)]


class _Buffers:
    """Every activation of one batch size, and on first need their gradients, at the
    boundaries of the units the pass runs (Sequential.units: a fused unit counts as one
    layer here; with keep "all", every layer is one).

    Views into the model's two arenas (activations, gradients), shared by all batch sizes. A
    view layer's output is a reshape of its input. Elementwise layers get buffers of their own:
    run in place (out is inp) they would be correct, but the compiler then cannot rule out
    overlap and drops to a scalar loop, several times slower. Gradient buffers wait for
    the first backward, so evaluation never pays for them. Each layer's workspace is carved
    with the activations, its gradient workspace with the gradients.

    Which buffers keep memory of their own is `keep`'s: "all" (activations() returns every
    one), "read" (a training step's: the activations a backward reads, as each layer kind's
    backward_reads says, directly or through the view layers after them) or "none" (a pass
    no backward follows, and always the gradients). The rest take turns: a buffer is live
    only while the layer before and the layer after it run, so consecutive ones alternate
    between two regions; where keep is "none" the layers' workspaces share a third (a
    backward reads only its own layer's gradient workspace). An eval-mode pass then holds
    two activations, not all of them.
    """

    def __init__(self, model, batch, keep, acts_arena, grads_arena):
        self.model, self.batch, self.grads_arena = model, batch, grads_arena
        # the (index, layer) units run: every layer where activations() keeps each output
        self.units = model.units(fused=keep != "all")
        self.layers = [layer for _, layer in self.units]
        self.unbatched = [model.shapes[index] for index, _ in self.units] + [model.shapes[-1]]
        self.shapes = [(*shape, batch) for shape in self.unbatched]
        backend = model.kernels
        self.carved = []  # (arena, the block carved from), for current()
        # the batch in the kernels' layout and its labels: written on the host, sent to the
        # device in one copy a step (on the CPU they are the device arrays: nothing moves)
        self.staging = backend.Staging([(self.shapes[0], np.float32), ((batch,), np.int64)])
        self.acts, work = self._chain(acts_arena, self.staging.device[0], "workspace", keep)
        self.labels = self.staging.device[1]
        self.tensors = [Tensors(*self.acts[i:i + 2], work=work[i])
                        for i in range(len(self.layers))]
        self.has_gradients = False
        self.losses = backend.empty(batch)
        self.probs = backend.empty(self.shapes[-1])

    def current(self):
        """Whether every block these buffers were carved from is still its arena's."""
        return all(arena.memory is block for arena, block in self.carved)

    def _chain(self, arena, first, workspace, keep):
        """A float32 buffer per layer boundary, the first one `first` (the input's; None for
        the gradients: the first entry and every view of it are then None), a view layer's
        a reshape of the one before, and each unit's `workspace` (its method of that name)
        as {name: array}: carved in one go, as keep says (see the class)."""
        layers = self.layers
        owned = [i + 1 for i, layer in enumerate(layers) if not layer.is_view]
        kept = {"all": owned, "read": [i for i in owned if self._read_by_a_backward(i)],
                "none": []}[keep]
        turned = [i for i in owned if i not in kept]
        work = [getattr(layer, workspace)(self.unbatched[i], self.batch)
                for i, layer in enumerate(layers)]
        # each layer's workspace as one span, its arrays one after another
        spans = [(sum(_aligned(math.prod(shape)) for shape in shapes.values()),)
                 for shapes in work]
        span_groups = [spans] if keep == "none" else [[span] for span in spans]
        groups = arena.carve([[self.shapes[i]] for i in kept]
                             + [[self.shapes[i] for i in turned[turn::2]] for turn in (0, 1)]
                             + span_groups)
        self.carved.append((arena, arena.memory))
        arrays = {i: group[0] for i, group in zip(kept, groups, strict=False)}
        turns = groups[len(kept):len(kept) + 2]
        arrays.update((i, turns[n % 2][n // 2]) for n, i in enumerate(turned))
        spanned = groups[len(kept) + 2:]
        span_arrays = spanned[0] if keep == "none" else [group[0] for group in spanned]
        arrays[0] = first
        for i, layer in enumerate(layers):
            if layer.is_view:
                before = arrays[i]
                arrays[i + 1] = None if before is None else before.reshape(self.shapes[i + 1])
        work = [dict(zip(shapes, _one_after_another(span, list(shapes.values())),
                          strict=True))
                for shapes, span in zip(work, span_arrays, strict=True)]
        return [arrays[i] for i in range(len(self.shapes))], work

    def _read_by_a_backward(self, boundary):
        """Whether a backward reads the activation at this owned boundary: as the output of
        the layer before it or as the input of the first layer after it and its views."""
        layers = self.layers
        end = boundary
        while end < len(layers) and layers[end].is_view:
            end += 1
        return ("out" in layers[boundary - 1].backward_reads
                or (end < len(layers) and "inp" in layers[end].backward_reads))

    def gradients(self):
        """The activation gradients, carved on the first call: dacts[i] is the gradient of
        acts[i], None for the network's input."""
        if not self.has_gradients:
            dacts, work = self._chain(self.grads_arena, None, "grad_workspace", "none")
            for i, tensors in enumerate(self.tensors):
                tensors.dinp, tensors.dout = dacts[i], dacts[i + 1]
                tensors.work.update(work[i])
            self.has_gradients = True
        return [self.tensors[0].dinp] + [t.dout for t in self.tensors]


class SamplePlan:
    """The steps of the small-batch inference kernel (kernels.cpu.sequential_forward) for one
    network, as its layers' plan() methods add them; built once per network, on the CPU.

    One sample's scratch row holds the input at offset 0, then each step's output (and a
    convolution's wide output) at an offset of its own, 64-byte aligned. An activation that
    follows a step which nothing else reads becomes that step's epilogue: applied as the step
    stores its output, and a batch norm or a pooling that follows a convolution becomes part
    of its step (the fusion: conv -> tanh -> avgpool -> tanh is one step, and so is conv ->
    batchnorm -> relu -> maxpool). Parameters are read in place in
    the network's flat buffer; buffers (batch norm's running statistics) are copied into
    `state` before each call, since training and load_state_dict replace their values.
    """

    # the steps an activation fuses into, by op code
    FUSES_INTO = {cpu.PLAN_OPS[name] for name in ("conv2d", "linear", "avgpool2d",
                                                  "maxpool2d", "batchnorm", "add")}

    def __init__(self, flat_params, input_size):
        self.flat_params = flat_params
        self.rows, self.eps, self.names = [], [], []
        self.size = 0  # floats of one sample's scratch row
        self.input = self.alloc(input_size)
        self.state_views = []  # the buffers state holds, in order
        self.state_size = 0
        self.pinned = {self.input}  # offsets read after the step that follows them

    def alloc(self, count):
        """The offset of `count` fresh floats in the scratch row, aligned to 64 bytes, and
        followed by cpu.LANES spare floats of their own: the kernel's loops of whole vectors
        read and write up to that far past a region's end ("Whole vectors" in cpu.py)."""
        offset = self.size
        self.size += _aligned(count) + cpu.LANES
        return offset

    def param(self, view):
        """A parameter view's offset in the network's flat parameter buffer."""
        offset, remainder = divmod(view.ctypes.data - self.flat_params.ctypes.data, 4)
        assert remainder == 0 and 0 <= offset <= self.flat_params.size - view.size
        return offset

    def state(self, *views):
        """The offset in `state` where these buffers (float32, one after another) will be."""
        offset = self.state_size
        self.state_views.extend(views)
        self.state_size += sum(view.size for view in views)
        return offset

    def pin(self, offset):
        """Mark a step's output as read again later (a residual's input): nothing fuses into
        the step that makes it."""
        self.pinned.add(offset)

    def step(self, name, src, count, a=0, b=0, work=0, wide=0, sizes=(), eps=0.0):
        """Add a step of op `name` reading scratch offset src, writing `count` fresh floats;
        returns their offset."""
        dst = self.alloc(count)
        row = dict.fromkeys(cpu.PLAN_COLUMNS, 0)
        row.update(op=cpu.PLAN_OPS[name], src=src, dst=dst, a=a, b=b, work=work, wide=wide)
        row.update(zip(("s0", "s1", "s2", "s3", "s4", "s5")[:len(sizes)], sizes, strict=True))
        self.rows.append(row)
        self.eps.append(eps)
        self.names.append(name)
        return dst

    def _fusing(self, src):
        """The last step, if it wrote src and nothing else reads src; else None."""
        if self.rows and self.rows[-1]["dst"] == src and src not in self.pinned:
            return self.rows[-1]
        return None

    def activation(self, name, src, count):
        """Apply activation `name` to the `count` floats at src: fused into the step that
        wrote them if it can take it, else a step of its own; returns the output's offset."""
        last = self._fusing(src)
        if last is not None and last["op"] in self.FUSES_INTO:
            slot = "act2" if last["pool"] else "act"
            if last[slot] == cpu.PLAN_ACTIVATIONS["none"]:
                last[slot] = cpu.PLAN_ACTIVATIONS[name]
                self.names[-1] += f"+{name}"
                return src
        dst = self.step("activation", src, count, sizes=(count,))
        self.rows[-1]["act"] = cpu.PLAN_ACTIVATIONS[name]
        self.names[-1] = name
        return dst

    def batchnorm(self, src, channels, values, weight, bias, statistics, eps):
        """Normalise the (channels, values) at src by the running statistics at `statistics`
        in state, scale and shift at `weight` and `bias`: fused into the convolution that
        made them if it can take it (before its activation), else a step of its own; returns
        the output's offset."""
        last = self._fusing(src)
        if (last is not None and last["op"] == cpu.PLAN_OPS["conv2d"] and not last["norm"]
                and last["act"] == cpu.PLAN_ACTIVATIONS["none"] and not last["pool"]):
            last.update(norm=1, norm_weight=weight, norm_bias=bias, norm_state=statistics)
            self.eps[-1] = eps
            self.names[-1] += "+batchnorm"
            return src
        return self.step("batchnorm", src, channels * values, a=weight, b=bias,
                         work=statistics, sizes=(channels, values), eps=eps)

    def pool(self, name, src, count, in_shape, k):
        """Pool the image (C, H, W) at src in k x k windows (op `name`, `count` outputs):
        fused into the convolution that made it if it can take it, else a step of its own;
        returns the output's offset."""
        last = self._fusing(src)
        if last is not None and last["op"] == cpu.PLAN_OPS["conv2d"] and not last["pool"]:
            last["pool"], last["k"] = cpu.PLAN_OPS[name], k
            if k == 2 and last["s2"] % 2 == 0:  # pairs along even rows: in vectors (cpu._conv2d)
                last["pairs"] = self.alloc(last["s3"] * last["wide"] // 2)
            self.names[-1] += f"+{name}"
            return src  # the convolution's output space, which the pooled output fits
        return self.step(name, src, count, sizes=(*in_shape, k))

    def finish(self, output, output_size):
        """Freeze the table, the network's output at scratch offset `output`."""
        self.output, self.output_size = output, output_size
        self.multiply_adds = sum(self._multiply_adds(row) for row in self.rows)
        self.table = np.array([[row[name] for name in cpu.PLAN_COLUMNS] for row in self.rows],
                              np.int64).reshape(-1, len(cpu.PLAN_COLUMNS))
        self.eps_table = np.array(self.eps, np.float32)
        self.state_buffer = np.empty(max(self.state_size, 1), np.float32)
        return self

    @staticmethod
    def _multiply_adds(row):
        """A step's multiply-adds for one sample: a convolution's or a linear step's."""
        if row["op"] == cpu.PLAN_OPS["linear"]:
            return row["s0"] * row["s1"]
        if row["op"] == cpu.PLAN_OPS["conv2d"]:
            c, h, w, oc, kh, kw = (row[f"s{i}"] for i in range(6))
            return oc * (h - kh + 1) * (w - kw + 1) * c * kh * kw
        return 0

    def refresh_state(self):
        """Copy the buffers' current values into state."""
        offset = 0
        for view in self.state_views:
            self.state_buffer[offset:offset + view.size] = view.ravel()
            offset += view.size


def _mean(losses):
    """The batch's mean loss from the per-sample losses, summed in float64."""
    return float(losses.mean(dtype=np.float64))


class LossLog:
    """The summed loss of each of up to `steps` training steps, kept where the network's
    arrays live (device memory on a GPU): Sequential.loss_and_grads(..., into=log) writes a
    step's sum with a kernel (loss_sum), so that no step waits for the GPU to read its loss.
    new() copies back the sums written since it last ran, waiting for their steps: the
    training loop calls it a few times a second and at the end of an epoch, and the first
    non-finite sum names the step where the loss diverged."""

    def __init__(self, model, steps):
        self.kernels = model.kernels
        self.sums = model.kernels.empty(steps)
        self.written = self.read = 0  # steps written, and read back by new()

    def write(self, losses):
        """Queue the sum of a step's per-sample losses (N,) into the next slot."""
        if self.written == len(self.sums):
            raise ValueError(f"LossLog: all {len(self.sums)} steps are written; make a new "
                             "log for more")
        self.kernels.loss_sum(self.sums, losses, self.written)
        self.written += 1

    def new(self):
        """The sums (float64, in step order) written since the last call; the first of them
        is step `read` (from 0) before the call."""
        if self.read == self.written:
            return np.empty(0)
        fresh = self.kernels.to_host(self.sums[self.read:self.written]).astype(np.float64)
        self.read = self.written
        return fresh


# ---- the network


class Sequential:
    """A chain of layers trained with tinyconv's kernels, as torch.nn.Sequential runs them.

    Sequential(*layers, input_shape=(C, H, W), seed=0, device="cpu", prefix=""): the shapes
    are checked once here (an error names the layer that cannot take its input); parameters
    are initialised as torch does, from np.random.default_rng(seed); names are torch's,
    f"{prefix}{index}.{name}".
    """

    def __init__(self, *layers, input_shape, seed=0, device="cpu", prefix="", name=None):
        for index, layer in enumerate(layers):
            _check_layer(layer, f"Sequential: layer {index}")
        if not layers:
            raise ValueError("Sequential: needs at least one layer")
        if (not isinstance(input_shape, (tuple, list)) or not input_shape
                or not all(map(_is_count, input_shape))):
            raise ValueError(f"Sequential: input_shape must be the input's positive sides "
                             f"without the batch, (C, H, W) or (F,), found {input_shape!r}")
        if not isinstance(prefix, str) or prefix and not prefix.endswith("."):
            raise ValueError(f"Sequential: prefix must be a string ending in '.' (as "
                             f"'backbone.'), or '', found {prefix!r}")
        self.layers, self.prefix, self.name = tuple(layers), prefix, name
        self.input_shape = tuple(int(side) for side in input_shape)
        self.seed, self.device = seed, device
        self.shapes = [self.input_shape]  # batch-less, at each layer boundary
        param_shapes, buffer_specs = {}, {}
        for index, layer in enumerate(self.layers):
            try:
                out_shape = tuple(layer.out_shape(self.shapes[-1]))
            except ShapeError as exc:
                raise ShapeError(f"layer {prefix}{index} {layer!r}: {exc}") from None
            for local, shape in layer.params(self.shapes[-1]).items():
                param_shapes[f"{prefix}{index}.{local}"] = tuple(shape)
            for local, (shape, dtype) in layer.buffers(self.shapes[-1]).items():
                buffer_specs[f"{prefix}{index}.{local}"] = (tuple(shape), np.dtype(dtype))
            self.shapes.append(out_shape)
        self.param_shapes, self.buffer_specs = param_shapes, buffer_specs
        self.param_count = sum(math.prod(shape) for shape in param_shapes.values())
        self.training = True
        # training-mode forward passes so far: the step in Dropout's mask (checkpoints keep it)
        self.steps = 0
        self.kernels = get_backend(device)  # kernels and array helpers; raises if unusable
        init = host.empty(self.param_count)  # aligned, so the CPU's to_device takes it as it is
        host_params = self.flat_views(init)
        host_buffers = {name: host.zeros(shape, dtype)
                        for name, (shape, dtype) in buffer_specs.items()}
        rng = np.random.default_rng(seed)
        for index, layer in enumerate(self.layers):
            layer.init(self._local(index, {**host_params, **host_buffers}), rng)
        self.flat_params = self.kernels.to_device(init)  # on the CPU: init itself
        self.flat_grads = self.kernels.zeros(self.param_count)
        self.params = self.flat_views(self.flat_params)
        self.grads = self.flat_views(self.flat_grads)
        self.buffers = {name: self.kernels.to_device(value)
                        for name, value in host_buffers.items()}
        # per layer: its parameters and buffers, and its gradients, by their local names
        self._layer_params = [self._local(i, {**self.params, **self.buffers})
                              for i in range(len(self.layers))]
        self._layer_grads = [self._local(i, self.grads) for i in range(len(self.layers))]
        self._arenas = (_Arena(self.kernels.empty), _Arena(self.kernels.empty))  # acts, grads
        self._buffers = {}  # (batch size, keep) -> _Buffers
        # the (index, layer) units that training and batch-last passes run, fused or not
        self._units = {True: fusion_plan(self.layers), False: list(enumerate(self.layers))}
        self._fuse = True
        self._plan = None  # the small-batch SamplePlan, False where there is none
        self._samples_below = None  # samples_below as set, None for the network's own rule
        self._scratch = np.empty((0, 0), np.float32)  # its scratch rows, one per sample

    @property
    def fuse(self):
        """Whether training steps and batch-last passes run adjacent layers that a fusion of
        FUSIONS takes (Conv2d, Tanh, AvgPool2d(2), Tanh) as one unit: True by default.
        False runs every layer's own kernels, the oracle the fused ones are held to (the same
        bits). activations(), which keeps every layer's output, never fuses."""
        return self._fuse

    @fuse.setter
    def fuse(self, value):
        if not isinstance(value, bool):
            raise ValueError(f"Sequential.fuse: expected True or False, found {value!r}")
        if value != self._fuse:
            self._fuse = value
            self._buffers = {}  # carved for the other units

    def units(self, fused=True):
        """The (index, layer) units a pass runs: with fused (and fuse set), fusion_plan's;
        otherwise each layer."""
        return self._units[fused and self._fuse]

    def _local(self, index, named):
        """{local name: array} of layer index's entries in a {full name: array} mapping."""
        return _local(named, f"{self.prefix}{index}.")

    def flat_views(self, flat):
        """Named views into a flat buffer (host or device) laid out in param_shapes order."""
        views, offset = {}, 0
        for name, shape in self.param_shapes.items():
            size = math.prod(shape)
            views[name] = flat[offset:offset + size].reshape(shape)
            offset += size
        return views

    # ---- description

    def spec(self):
        """The network as JSON: rebuilt by Sequential.from_spec, saved in checkpoints."""
        spec = {"input_shape": list(self.input_shape), "prefix": self.prefix,
                "layers": [layer.spec() for layer in self.layers]}
        return {"name": self.name, **spec} if self.name else spec

    @classmethod
    def from_spec(cls, spec, seed=0, device="cpu"):
        """The network a spec() describes (freshly initialised from seed)."""
        if not isinstance(spec, dict) or not isinstance(spec.get("layers"), list):
            raise ValueError(f"architecture spec: expected a dict with a 'layers' list, found "
                             f"{type(spec).__name__}")
        if "input_shape" not in spec:
            raise ValueError("architecture spec: missing 'input_shape' (C, H, W)")
        layers = [layer_from_spec(layer, f"architecture spec, layer {index}")
                  for index, layer in enumerate(spec["layers"])]
        return cls(*layers, input_shape=spec["input_shape"], seed=seed, device=device,
                   prefix=spec.get("prefix", ""), name=spec.get("name"))

    @property
    def output_shape(self):
        return self.shapes[-1]

    def __repr__(self):
        lines = [f"  ({self.prefix}{index}): {layer!r}" for index, layer in enumerate(self.layers)]
        title = f"Sequential[{self.name}]" if self.name else "Sequential"
        return f"{title}(input_shape={self.input_shape},\n" + "\n".join(lines) + "\n)"

    def summary(self):
        """A table: each layer, its output shape (batch first, N) and its parameter count."""
        rows = [("layer", "output", "parameters"), ("input", f"(N, {_dims(self.input_shape)})",
                                                    "")]
        for index, layer in enumerate(self.layers):
            count = sum(math.prod(shape) for shape in layer.params(self.shapes[index]).values())
            output = f"(N, {_dims(self.shapes[index + 1])})"
            rows.append((f"{self.prefix}{index} {layer!r}", output, f"{count:,}" if count else ""))
        rows.append(("total", "", f"{self.param_count:,}"))
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        return "\n".join(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}".rstrip()
                         for a, b, c in rows)

    def norm_and_bias_names(self):
        """The parameters that are biases or normalisations' scales and shifts, by name: the
        usual no_decay of an optimizer (train --no-decay-norm-bias)."""
        return [f"{self.prefix}{index}.{local}" for index, layer in enumerate(self.layers)
                for local in layer.params(self.shapes[index]) if layer.is_norm_or_bias(local)]

    # ---- mode, device and state

    def train(self, mode=True):
        """Training mode (or, with mode False, evaluation mode), as torch's; returns self."""
        self.training = bool(mode)
        return self

    def eval(self):
        """Evaluation mode: layers that behave differently in training (batch norm, dropout)
        use their evaluation behaviour. Returns self."""
        return self.train(False)

    def to(self, device):
        """This network on another device ("cpu" or "cuda"): a new Sequential with the same
        layers, parameters, buffers, mode, steps, samples_below and fuse as set, or self when
        it is there already."""
        if device == self.device:
            return self
        moved = Sequential(*self.layers, input_shape=self.input_shape, seed=self.seed,
                           device=device, prefix=self.prefix, name=self.name)
        moved.load_state_dict(self.state_dict())
        moved.steps = self.steps
        moved.samples_below = self._samples_below
        moved.fuse = self.fuse
        return moved.train(self.training)

    def state_dict(self):
        """Host copies of the parameters (float32) and buffers, named and shaped as torch's."""
        to_host = self.kernels.to_host
        state = {name: view.copy() for name, view in
                 self.flat_views(to_host(self.flat_params)).items()}
        state.update((name, to_host(value).copy()) for name, value in self.buffers.items())
        return {name: state[name] for name in self._state_names()}

    def _state_names(self):
        """Every state_dict name in torch's order: module by module (a Residual's body layers
        inside it), each one's parameters then its buffers."""
        names = [*self.param_shapes, *self.buffer_specs]
        return sorted(names, key=lambda name: [int(part) for part in
                                               name[len(self.prefix):].split(".")
                                               if part.isdigit()])

    def load_state_dict(self, state):
        """Copy parameters and buffers in from a {name: array} mapping with exactly this
        network's names and shapes (floats for parameters, the buffers' own kinds)."""
        expected = self._state_names()
        missing = [name for name in expected if name not in state]
        unexpected = [name for name in state if name not in expected]
        if missing or unexpected:
            raise ValueError(f"load_state_dict: expected the keys {expected}; missing "
                             f"{missing}, unexpected {unexpected}")
        kinds = {**{name: (shape, "f") for name, shape in self.param_shapes.items()},
                 **{name: (shape, dtype.kind) for name, (shape, dtype)
                    in self.buffer_specs.items()}}
        for name, (shape, kind) in kinds.items():
            value = np.asarray(state[name])
            if value.shape != shape:
                raise ValueError(f"load_state_dict: {name} must have shape {shape}, "
                                 f"found {value.shape}")
            if value.dtype.kind != kind and not (kind == "i" and value.dtype.kind == "u"):
                raise ValueError(f"load_state_dict: {name} must hold "
                                 f"{'floats' if kind == 'f' else 'integers'}, found "
                                 f"{value.dtype.name}")
        self.kernels.copy_in(self.flat_params, self.flat_buffer(state))
        for name, value in self.buffers.items():
            self.kernels.copy_in(value, state[name])

    def flat_buffer(self, arrays):
        """A flat float32 host buffer holding a {name: array} mapping of the parameters."""
        flat = host.empty(self.param_count)
        for name, view in self.flat_views(flat).items():
            view[...] = arrays[name]
        return flat

    def flatten_grads(self, grads):
        """The flat gradient buffer for a {name: array} mapping, copying only if it is foreign."""
        if all(grads.get(name) is view for name, view in self.grads.items()):
            return self.flat_grads
        for name, shape in self.param_shapes.items():
            if name not in grads or np.shape(grads[name]) != shape:
                raise ValueError(f"gradient {name}: expected shape {shape}, found "
                                 f"{np.shape(grads[name]) if name in grads else 'nothing'}")
        return self.kernels.to_device(self.flat_buffer(grads))

    # ---- forward and backward

    def _check_input(self, x):
        if (not isinstance(x, np.ndarray) or x.ndim != len(self.input_shape) + 1
                or x.shape[1:] != self.input_shape):
            found = x.shape if isinstance(x, np.ndarray) else type(x).__name__
            raise ValueError(f"{self._title()}: x must be an array (N, {_dims(self.input_shape)})"
                             f", found {found}")
        if x.shape[0] == 0:
            raise ValueError(f"{self._title()}: x must hold at least one sample, found an "
                             "empty batch")
        return x

    def _title(self):
        """What error messages call this network: its name, or Sequential."""
        return self.name or "Sequential"

    def _run_forward(self, x, training, y=None, keep="none"):
        """Fill the batch size's activation buffers from batch-first x, in training mode or
        not, its labels y (checked by the caller) sent with it when given; returns the
        buffers, with the Pass that the backward must run under. keep: which activations
        stay, as _Buffers takes it ("none": only the last is sure to)."""
        batch = x.shape[0]
        if training:  # before any kernel runs: a refused batch changes no running statistic
            for index, (layer, shape) in enumerate(zip(self.layers, self.shapes, strict=False)):
                try:
                    layer.check_pass(shape, batch, training)
                except ValueError as exc:
                    raise ValueError(f"{self._title()}: layer {self.prefix}{index} {layer!r}: "
                                     f"{exc}") from None
        buf = self._buffers.get((batch, keep))
        if buf is None or not buf.current():
            buf = self._buffers[batch, keep] = _Buffers(self, batch, keep, *self._arenas)
            self._drop_stale_buffers()
        k = self.kernels
        # (N, ...) -> (..., N) float32 on the host, then with the labels to the device in one
        # copy (CPU: nothing to send)
        host_input, host_labels = buf.staging.writable()
        to_batch_last(host_input.reshape(-1, batch),
                      np.ascontiguousarray(x, np.float32).reshape(batch, -1))
        if y is not None:
            host_labels[...] = y
        buf.staging.send(1 if y is None else 2)
        buf.run = Pass(training, int(self.seed or 0) % 2**32, self.steps)
        _forward_chain(k, buf.units, buf.tensors, self._layer_params, buf.run)
        self.steps += training
        return buf

    def _drop_stale_buffers(self):
        """Forget the buffers carved from a block its arena has replaced, which frees it."""
        self._buffers = {key: buf for key, buf in self._buffers.items() if buf.current()}

    def _batch_first(self, array):
        """A host copy of a batch-last array, batch first: (..., N) -> (N, ...)."""
        return np.moveaxis(self.kernels.to_host(array), -1, 0).copy()

    def forward(self, x):
        """The last layer's output, batch first (logits (N, V) for a classifier), for a batch
        (N, *input_shape), in the current mode.

        In eval mode, batches of fewer than samples_below images take the CPU's
        whole-network kernel, one sample per thread (see _sample_plan): a sample's output is
        then the same bits whatever the batch around it, and may differ in the last bits from
        the same sample's in a larger batch.
        """
        x = self._check_input(x)
        if not self.training and len(x) < self.samples_below:
            return self._forward_samples(x)
        return self._batch_first(self._run_forward(x, self.training).acts[-1])

    @property
    def samples_below(self):
        """The batch size from which eval-mode forward takes the batch-last kernels, below
        which the whole-network kernel: kernels.cpu.samples_below of the network's
        multiply-adds per sample (31 images for LeNet-5, 13 for resnet-mini); 0 where there is
        no whole-network kernel (the CUDA backend, a layer kind without a step). Settable:
        0 keeps every batch on the batch-last kernels, None restores the rule."""
        if self._samples_below == 0:  # no plan needed
            return 0
        plan = self._sample_plan()
        if not plan:
            return 0
        if self._samples_below is not None:
            return self._samples_below
        return cpu.samples_below(plan.multiply_adds)

    @samples_below.setter
    def samples_below(self, value):
        # ints and NumPy integers (operator.index), not floats or bools
        if value is not None and (isinstance(value, bool) or not hasattr(value, "__index__")
                                  or operator.index(value) < 0):
            raise ValueError(f"Sequential.samples_below: expected an int >= 0 or None, found "
                             f"{value!r}")
        self._samples_below = None if value is None else operator.index(value)

    def _sample_plan(self):
        """The small-batch plan (a SamplePlan), made on first need; None where the backend
        has no whole-network kernel or a layer has no step in it (a kind defined outside
        tinyconv.nn)."""
        if self._plan is None:
            self._plan = False
            if self.kernels.sequential_forward is not None:
                plan = SamplePlan(self.flat_params, math.prod(self.input_shape))
                current = plan.input
                try:
                    for index, layer in enumerate(self.layers):
                        current = layer.plan(plan, self.shapes[index], current,
                                             self._layer_params[index])
                except NotImplementedError:
                    return None
                self._plan = plan.finish(current, math.prod(self.output_shape))
        return self._plan or None

    def _forward_samples(self, x):
        """forward(x) in eval mode through the whole-network kernel."""
        plan, batch = self._plan, len(x)
        if self._scratch.shape[0] < batch:
            self._scratch = host.empty(batch * plan.size).reshape(batch, plan.size)
        plan.refresh_state()
        out = np.empty((batch, plan.output_size), np.float32)
        serial = self.kernels.sequential_forward_serial
        kernel = serial if batch == 1 and serial is not None else self.kernels.sequential_forward
        kernel(out, self._scratch[:batch], np.ascontiguousarray(x, np.float32).reshape(batch, -1),
               self.flat_params, plan.state_buffer, plan.table, plan.eps_table, plan.output)
        return out.reshape(batch, *self.output_shape)

    def probabilities(self, x):
        """Softmax class probabilities (N, V), float64, for a batch (N, *input_shape)."""
        logits = self.forward(x).astype(np.float64)
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)

    def activations(self, x):
        """Each layer's output for a batch x, batch first: a list, index = layer."""
        buf = self._run_forward(self._check_input(x), self.training, keep="all")
        return [self._batch_first(act) for act in buf.acts[1:]]

    def _check_labels(self, y, batch):
        if len(self.output_shape) != 1:
            raise ValueError(f"{self._title()}: the loss needs an output of class scores (V,), "
                             f"found an output {self.output_shape}; end with a Linear layer")
        classes = self.output_shape[0]
        y = np.asarray(y)
        if y.shape != (batch,) or y.dtype.kind not in "iu":
            raise ValueError(f"{self._title()}: y must be {batch} integer labels, found "
                             f"{y.dtype.name} array of shape {y.shape}")
        if y.min() < 0 or y.max() >= classes:
            raise ValueError(f"{self._title()}: labels must lie in [0, {classes}), found "
                             f"{y[(y < 0) | (y >= classes)][0]}")
        return np.ascontiguousarray(y, dtype=np.int64)

    def _loss(self, x, y, training, label_smoothing, keep):
        """Forward (keep as _run_forward's) and the per-sample cross-entropy; returns the
        buffers (the labels sent with the batch among them) and the smoothing as the
        kernels take it."""
        x = self._check_input(x)
        y = self._check_labels(y, len(x))
        if not (isinstance(label_smoothing, (int, float)) and 0 <= label_smoothing <= 1):
            raise ValueError(f"{self._title()}: label_smoothing must be a number in [0, 1], "
                             f"found {label_smoothing!r}")
        smoothing = np.float32(label_smoothing)
        buf = self._run_forward(x, training, y, keep)
        self.kernels.softmax_xent_forward(buf.losses, buf.probs, buf.acts[-1], buf.labels,
                                          smoothing)
        return buf, smoothing

    def loss(self, x, y, reduction="mean", label_smoothing=0.0):
        """Cross-entropy of a batch (torch's, label_smoothing included) and its logits
        (N, V), without gradients, in the current mode: the mean (a float), or with
        reduction "none" each sample's (N,) float32."""
        if reduction not in ("mean", "none"):
            raise ValueError(f"loss: reduction must be 'mean' or 'none', found {reduction!r}")
        buf, _ = self._loss(x, y, self.training, label_smoothing, keep="none")
        losses = self.kernels.to_host(buf.losses)
        return (_mean(losses) if reduction == "mean" else losses.copy(),
                self._batch_first(buf.acts[-1]))

    def loss_and_grads(self, x, y, label_smoothing=0.0, into=None):
        """Mean cross-entropy of a batch (torch's CrossEntropyLoss, label_smoothing included)
        and its gradients, keyed like the parameters of state_dict(), in the current mode.

        The gradients are views into the model's flat gradient buffer, overwritten by the
        next call: copy them to keep them. With `into` (a LossLog) the batch's summed loss
        goes there instead, and None stands for the mean: on a GPU nothing then waits for
        the step to finish.
        """
        buf, smoothing = self._loss(x, y, self.training, label_smoothing, keep="read")
        k = self.kernels
        buf.gradients()
        self._drop_stale_buffers()  # the gradients' arena may have grown
        k.softmax_xent_backward(buf.tensors[-1].dout, buf.probs, buf.labels, np.float32(1.0),
                                smoothing)
        _backward_chain(k, buf.units, buf.tensors, self._layer_params, self._layer_grads,
                        buf.run)
        if into is not None:
            into.write(buf.losses)
            return None, self.grads
        return _mean(k.to_host(buf.losses)), self.grads


def _dims(shape):
    """A shape's sides for messages: (1, 32, 32) -> '1, 32, 32'."""
    return ", ".join(map(str, shape))
