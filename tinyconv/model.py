"""LeNet-5: parameters in one flat buffer, forward and backward as a walk over its layers.

The layer list mirrors the `nn.Sequential` called `backbone` in the original report's PyTorch
module, index for index, so parameter names (`backbone.0.weight`, ...) and shapes match a
torch state_dict exactly. The public methods take NCHW batches and return (N, 10) logits, as
torch does; inside, activations are batch-last float32 ((C,H,W,N), then (features, N)), the
layout the kernels are fast in, allocated once per batch size.

The device ("cpu" or "cuda") picks the backend once: its kernels, and helpers that make and move
its arrays. Parameters, gradients, activations (and Adam's moments, in optim.py) live where the
kernels run, so a CUDA training step copies only the batch in and the per-sample losses out.
"""

import itertools

import numpy as np

from tinyconv.kernels import get_backend, host
from tinyconv.kernels.host import ALIGNMENT, to_batch_last

# backbone index -> (layer kind, parameter shapes (weight, bias) or None)
LAYERS = (
    ("conv", ((6, 1, 5, 5), (6,))),       # 0: (1,32,32,N) -> (6,28,28,N)
    ("tanh", None),                       # 1
    ("pool", None),                       # 2: -> (6,14,14,N)
    ("tanh", None),                       # 3
    ("conv", ((16, 6, 5, 5), (16,))),     # 4: -> (16,10,10,N)
    ("tanh", None),                       # 5
    ("pool", None),                       # 6: -> (16,5,5,N)
    ("tanh", None),                       # 7
    ("conv", ((120, 16, 5, 5), (120,))),  # 8: -> (120,1,1,N)
    ("tanh", None),                       # 9
    ("flatten", None),                    # 10: -> (120,N), features in torch's (c,h,w) order
    ("linear", ((84, 120), (84,))),       # 11: -> (84,N)
    ("tanh", None),                       # 12
    ("linear", ((10, 84), (10,))),        # 13: -> (10,N) logits
)
INPUT_SHAPE = (1, 32, 32)
CLASSES = 10
POOL = 2

PARAM_SHAPES = {
    f"backbone.{index}.{kind}": shape
    for index, (_, shapes) in enumerate(LAYERS) if shapes
    for kind, shape in zip(("weight", "bias"), shapes, strict=True)
}


def _flat_views(flat):
    """Named views into a flat buffer (host or device) laid out in PARAM_SHAPES order."""
    views, offset = {}, 0
    for name, shape in PARAM_SHAPES.items():
        size = int(np.prod(shape))
        views[name] = flat[offset:offset + size].reshape(shape)
        offset += size
    return views


def _flatten(arrays):
    """A flat float32 host buffer holding a {name: array} mapping with PARAM_SHAPES' names."""
    flat = host.empty(PARAM_COUNT)  # aligned, so the CPU's to_device takes it as it is
    for name, view in _flat_views(flat).items():
        view[...] = arrays[name]
    return flat


PARAM_COUNT = sum(int(np.prod(shape)) for shape in PARAM_SHAPES.values())


def _activation_shapes(batch):
    """Batch-last shapes of the input and of every layer's output for a batch size."""
    shapes = [(*INPUT_SHAPE, batch)]
    for kind, params in LAYERS:
        *rest, n = shapes[-1]
        if kind == "conv":
            (oc, _, kh, kw), _ = params
            shapes.append((oc, rest[1] - kh + 1, rest[2] - kw + 1, n))
        elif kind == "pool":
            shapes.append((rest[0], rest[1] // POOL, rest[2] // POOL, n))
        elif kind == "flatten":
            shapes.append((int(np.prod(rest)), n))
        elif kind == "linear":
            shapes.append((params[0][0], n))
        else:  # tanh keeps the shape
            shapes.append(shapes[-1])
    return shapes


_ALIGN = ALIGNMENT // 4  # float32 values in 64 bytes


class _Arena:
    """A block of float32 memory that hands out contiguous arrays, from its start each time.

    Only one batch is in flight at a time, so the buffers of every batch size can share it: a
    training run uses 128 (the batch), 96 (the last of 60,000) and 16 (the last of the 10,000
    test images), and keeps one set of buffers instead of three (24 MB less).
    """

    def __init__(self, empty):
        self.empty = empty  # the backend's allocator: host or device memory
        self.memory = empty(0)

    def carve(self, shapes):
        """Arrays of these shapes, one after another, each starting on a 64-byte boundary
        (the block does: see kernels.host); a larger need gets a new block (the arrays already
        handed out keep the old one)."""
        sizes = [int(np.prod(shape)) for shape in shapes]
        # Python ints: numba-cuda's allocator takes no numpy integer as a size
        starts = [0, *itertools.accumulate(-(-size // _ALIGN) * _ALIGN for size in sizes)]
        if starts[-1] > self.memory.size:
            self.memory = self.empty(starts[-1])
        return [self.memory[start:start + size].reshape(shape)
                for shape, size, start in zip(shapes, sizes, starts[:-1], strict=True)]


class _Buffers:
    """Every activation for one batch size, and on first need their gradients.

    They are views into the model's two arenas (activations, gradients), shared by all batch
    sizes. Flatten is a view of the layer before. tanh gets buffers of its own: run in place
    (out is inp) it would be correct, but the compiler then cannot rule out overlap and drops
    to a scalar loop, 7x slower (measured). Gradient buffers wait for the first backward, so
    evaluation never pays for them.
    """

    def __init__(self, batch, backend, acts_arena, grads_arena):
        self.shapes = _activation_shapes(batch)
        self.grads_arena = grads_arena
        self.acts = self._chain(acts_arena)
        self.dacts = None
        self.losses = backend.empty(batch)
        self.probs = backend.empty((CLASSES, batch))
        # where the labels go when they must be copied: to a GPU, or (CPU) from unaligned memory
        self.labels = backend.empty(batch, np.int64)
        # the batch in the kernels' layout on the host: the input buffer itself when the backend's
        # arrays are host arrays, else a staging copy for the one transfer a step makes
        self.host_input = (self.acts[0] if isinstance(self.acts[0], np.ndarray)
                           else np.empty(self.shapes[0], np.float32))

    def _chain(self, arena, with_input=True):
        """A float32 buffer per layer boundary; flatten's is a view of the one before. Without
        the input, the first entry is None."""
        owned = [index + 1 for index, (kind, _) in enumerate(LAYERS) if kind != "flatten"]
        owned = [0] + owned if with_input else owned
        arrays = dict(zip(owned, arena.carve([self.shapes[i] for i in owned]), strict=True))
        arrays.setdefault(0, None)
        for index, (kind, _) in enumerate(LAYERS):
            if kind == "flatten":
                arrays[index + 1] = arrays[index].reshape(self.shapes[index + 1])
        return [arrays[index] for index in range(len(self.shapes))]

    def gradients(self):
        """The activation gradient buffers, carved on the first call; none for the image, whose
        gradient nothing needs (conv1's backward gets dinp None and skips it)."""
        if self.dacts is None:
            self.dacts = self._chain(self.grads_arena, with_input=False)
        return self.dacts


def _flat(array):
    """A contiguous array as a 1-D view. The elementwise kernels take any rank, but Numba
    compiles them once per rank: fed 4-D and 2-D arrays, tanh's two kernels compiled four times,
    0.8 s more of the cold start."""
    return array.reshape(-1)


def _mean(losses):
    """The batch's mean loss from the per-sample losses, summed in float64."""
    return float(losses.mean(dtype=np.float64))


class LeNet5:
    """LeNet-5 as in the original report, trained with tinyconv's kernels."""

    def __init__(self, seed=0, device="cpu"):
        self.device = device
        self.kernels = get_backend(device)  # kernels and array helpers; raises if unusable
        init = host.empty(PARAM_COUNT)
        init_views = _flat_views(init)
        rng = np.random.default_rng(seed)
        # torch's default for Conv2d and Linear: weight and bias uniform in +-1/sqrt(fan_in)
        for index, (_, shapes) in enumerate(LAYERS):
            if shapes:
                bound = 1.0 / np.sqrt(np.prod(shapes[0][1:]))
                for kind in ("weight", "bias"):
                    view = init_views[f"backbone.{index}.{kind}"]
                    view[...] = rng.uniform(-bound, bound, view.shape)
        self.flat_params = self.kernels.to_device(init)  # on the CPU: init itself
        self.flat_grads = self.kernels.zeros(PARAM_COUNT)
        self.params = _flat_views(self.flat_params)
        self.grads = _flat_views(self.flat_grads)
        self._arenas = (_Arena(self.kernels.empty), _Arena(self.kernels.empty))  # acts, grads
        self._buffers = {}  # batch size -> _Buffers

    # ---- parameters

    def to(self, device):
        """This model on another device ("cpu" or "cuda"): a new LeNet5 with the same
        parameters, or self when it is there already."""
        if device == self.device:
            return self
        moved = LeNet5(device=device)
        moved.load_state_dict(self.state_dict())
        return moved

    @classmethod
    def from_torch(cls, path, trust_pickle=False):
        """A model with a PyTorch file's weights (state_dict or the report's checkpoint)."""
        from tinyconv.interop import load_torch_into  # interop imports this module

        return load_torch_into(cls(), path, trust_pickle)

    def state_dict(self):
        """A host copy of the parameters: {name: float32 array}, named and shaped as torch's."""
        host = self.kernels.to_host(self.flat_params)
        return {name: view.copy() for name, view in _flat_views(host).items()}

    def load_state_dict(self, state):
        """Copy parameters in from a {name: array} mapping with exactly LeNet-5's names."""
        missing = [name for name in PARAM_SHAPES if name not in state]
        unexpected = [name for name in state if name not in PARAM_SHAPES]
        if missing or unexpected:
            raise ValueError(f"load_state_dict: expected the keys {list(PARAM_SHAPES)}; "
                             f"missing {missing}, unexpected {unexpected}")
        for name, shape in PARAM_SHAPES.items():
            value = np.asarray(state[name])
            if value.shape != shape:
                raise ValueError(f"load_state_dict: {name} must have shape {shape}, "
                                 f"found {value.shape}")
            if value.dtype.kind != "f":
                raise ValueError(f"load_state_dict: {name} must hold floats, "
                                 f"found {value.dtype.name}")
        self.kernels.copy_in(self.flat_params, _flatten(state))

    def flatten_grads(self, grads):
        """The flat gradient buffer for a {name: array} mapping, copying only if it is foreign."""
        if all(grads.get(name) is view for name, view in self.grads.items()):
            return self.flat_grads
        for name, shape in PARAM_SHAPES.items():
            if name not in grads or np.shape(grads[name]) != shape:
                raise ValueError(f"gradient {name}: expected shape {shape}, found "
                                 f"{np.shape(grads[name]) if name in grads else 'nothing'}")
        return self.kernels.to_device(_flatten(grads))

    # ---- forward and backward

    def _check_input(self, x):
        if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[1:] != INPUT_SHAPE:
            found = x.shape if isinstance(x, np.ndarray) else type(x).__name__
            raise ValueError(f"LeNet5: x must be an array (N, 1, 32, 32), found {found}")
        if x.shape[0] == 0:
            raise ValueError("LeNet5: x must hold at least one image, found an empty batch")
        return x

    def _run_forward(self, x):
        """Fill the batch size's activation buffers from NCHW x; returns them (logits last)."""
        batch = x.shape[0]
        if batch not in self._buffers:
            self._buffers[batch] = _Buffers(batch, self.kernels, *self._arenas)
        buf = self._buffers[batch]
        k = self.kernels
        # (N,1,32,32) -> (1,32,32,N) float32 on the host, then to the device (CPU: nothing to do)
        to_batch_last(buf.host_input.reshape(-1, batch),
                      np.ascontiguousarray(x, np.float32).reshape(batch, -1))
        k.copy_in(buf.acts[0], buf.host_input)
        for index, (kind, _) in enumerate(LAYERS):
            inp, out = buf.acts[index], buf.acts[index + 1]
            if kind == "conv":
                k.conv2d_forward(out, inp, *self._layer_params(index))
            elif kind == "linear":
                k.linear_forward(out, inp, *self._layer_params(index))
            elif kind == "tanh":  # flat views: one compiled tanh for every rank (see _flat)
                k.tanh_forward(_flat(out), _flat(inp))
            elif kind == "pool":
                k.avgpool2d_forward(out, inp, POOL)
            # flatten: out is already a view of inp
        return buf

    def _layer_params(self, index):
        return self.params[f"backbone.{index}.weight"], self.params[f"backbone.{index}.bias"]

    def _layer_grads(self, index):
        return self.grads[f"backbone.{index}.weight"], self.grads[f"backbone.{index}.bias"]

    def forward(self, x):
        """Logits (N, 10) for a float32 batch (N, 1, 32, 32)."""
        return self.kernels.to_host(self._run_forward(self._check_input(x)).acts[-1]).T.copy()

    def probabilities(self, x):
        """Softmax class probabilities (N, 10), float64, for a float32 batch (N, 1, 32, 32)."""
        logits = self.forward(x).astype(np.float64)
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)

    def activations(self, x):
        """Each backbone layer's output for a batch x, batch first: a list, index = layer."""
        buf = self._run_forward(self._check_input(x))
        return [np.moveaxis(self.kernels.to_host(act), -1, 0).copy() for act in buf.acts[1:]]

    def loss(self, x, y):
        """Mean cross-entropy and the logits (N, 10), without gradients."""
        x, y = self._check_input(x), self._check_labels(y, len(x))
        buf = self._run_forward(x)
        k = self.kernels
        k.softmax_xent_forward(buf.losses, buf.probs, buf.acts[-1], k.to_device(y, buf.labels))
        return _mean(k.to_host(buf.losses)), k.to_host(buf.acts[-1]).T.copy()

    def _check_labels(self, y, batch):
        y = np.asarray(y)
        if y.shape != (batch,) or y.dtype.kind not in "iu":
            raise ValueError(f"LeNet5: y must be {batch} integer labels, found "
                             f"{y.dtype.name} array of shape {y.shape}")
        if batch and (y.min() < 0 or y.max() >= CLASSES):
            raise ValueError(f"LeNet5: labels must lie in [0, {CLASSES}), found "
                             f"{y[(y < 0) | (y >= CLASSES)][0]}")
        return np.ascontiguousarray(y, dtype=np.int64)

    def loss_and_grads(self, x, y):
        """Mean cross-entropy of a batch and its gradients, keyed like state_dict().

        The gradients are views into the model's flat gradient buffer, overwritten by the
        next call: copy them to keep them.
        """
        x, y = self._check_input(x), self._check_labels(y, len(x))
        buf = self._run_forward(x)
        dacts = buf.gradients()
        k = self.kernels
        labels = k.to_device(y, buf.labels)  # on the CPU: y itself if aligned
        k.softmax_xent_forward(buf.losses, buf.probs, buf.acts[-1], labels)
        k.softmax_xent_backward(dacts[-1], buf.probs, labels, np.float32(1.0))
        for index in reversed(range(len(LAYERS))):
            kind = LAYERS[index][0]
            dinp, dout = dacts[index], dacts[index + 1]
            if kind == "conv":
                # conv1's dinp, the image's gradient, is None: the kernel skips it
                k.conv2d_backward(dinp, *self._layer_grads(index), dout, buf.acts[index],
                                  self.params[f"backbone.{index}.weight"])
            elif kind == "linear":
                k.linear_backward(dinp, *self._layer_grads(index), dout, buf.acts[index],
                                  self.params[f"backbone.{index}.weight"])
            elif kind == "tanh":
                k.tanh_backward(_flat(dinp), _flat(buf.acts[index + 1]), _flat(dout))
            elif kind == "pool":
                k.avgpool2d_backward(dinp, dout, POOL)
            # flatten: dinp is already a view of dout
        return _mean(k.to_host(buf.losses)), self.grads
