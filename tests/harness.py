"""Running a registry case: its seeded values, its layer (or the loss, or an optimizer) on a
backend with every output NaN first, its torch twin, and the kernel calls it makes, recorded so
that the kernel checks (test_kernels, test_cuda) replay exactly what the layers ask for.

Values are drawn in float64 but rounded to float32 first, so the float32 kernels and the
float64 reference and torch see the same numbers. Arrays handed to a backend are batch-last
and 64-byte aligned, as Sequential's are; results come back batch first, as torch's.
"""

import dataclasses
import functools
import inspect

import numpy as np

from tests.registry import REGISTRY, Case, LossCase, OptimizerCase
from tinyconv import interop, nn
from tinyconv.kernels import KERNELS, get_backend, host
from tinyconv.optim import EMA, OPTIMIZERS


def rel_err(ours, theirs):
    """max |ours - theirs| over max |theirs| (absolute where theirs is all zeros), float64."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, f"shape {ours.shape} != expected {theirs.shape}"
    return np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30)


def aligned(array, dtype=None):
    """A C-contiguous, 64-byte aligned copy (in dtype, if given), as the model's arrays are."""
    copy = host.empty(np.shape(array), dtype or array.dtype)
    copy[...] = array
    return copy


def nans(shape):
    """An aligned float32 array of NaN: an output that a kernel leaves unwritten, or adds
    into instead of overwriting, stays NaN."""
    array = host.empty(shape)
    array[...] = np.nan
    return array


def batch_last(array):
    """(N, ...) -> (..., N), float32, aligned: the kernels' layout."""
    return aligned(np.moveaxis(array, 0, -1), np.float32)


def batch_first(array):
    """(..., N) -> (N, ...): torch's layout, for comparison."""
    return np.moveaxis(array, -1, 0)


# ---- seeded values (float32 numbers held in float64)


def _normal(rng):
    return lambda shape, scale=1.0: (scale * rng.standard_normal(shape)).astype(
        np.float32).astype(np.float64)


def draw(case, seed=0):
    """(inp, state, dout) of a layer case, batch first: the input scale * N(0, 1), the
    parameters and the upstream gradient N(0, 1) (drawn rather than the layer's init, whose
    small weights would hide a wrong one), and its buffers as a few steps into training
    would leave them (floats in [0.5, 1.5], positive as a variance must be; counts 3). state
    holds the parameters then the buffers, by their local names."""
    rng = np.random.default_rng(seed)
    normal = _normal(rng)
    in_shape = case.shape[1:]
    inp = normal(case.shape, case.scale)
    if case.grid:
        inp = np.round(inp / case.grid) * case.grid
    state = {name: normal(shape) for name, shape in case.layer.params(in_shape).items()}
    dout = normal((case.shape[0], *case.layer.out_shape(in_shape)))
    for name, (shape, dtype) in case.layer.buffers(in_shape).items():
        state[name] = (rng.uniform(0.5, 1.5, shape).astype(np.float32).astype(np.float64)
                       if np.dtype(dtype).kind == "f" else np.full(shape, 3, dtype))
    return inp, state, dout


def draw_loss(case, seed=0):
    """(logits (N, V), labels (N,) int64, dloss) of a loss case."""
    rng = np.random.default_rng(seed)
    logits = _normal(rng)((case.batch, case.classes), case.scale)
    labels = rng.integers(0, case.classes, size=case.batch).astype(np.int64)
    return logits, labels, np.float32(rng.uniform(0.5, 2.0))




# ---- running on a backend


def run_layer(k, layer, inp, state, dout, dinp=True, training=True):
    """One layer's forward then backward on backend k in training mode (or eval), from
    batch-last float32 inp (..., N), its state (parameters and buffers, which it may update)
    and dout; returns (Tensors, gradients). The buffers are laid out as Sequential lays
    them: out, dinp (None when dinp is False), the workspace and the gradients NaN first; a
    view layer's out is a reshape of inp, and its dout a reshape of dinp holding dout's
    values."""
    in_shape, batch = inp.shape[:-1], inp.shape[-1]
    out_shape = (*layer.out_shape(in_shape), batch)
    if layer.is_view:
        t = nn.Tensors(inp, inp.reshape(out_shape), nans(inp.shape))
        t.dout = t.dinp.reshape(out_shape)
        t.dout[...] = dout
    else:
        t = nn.Tensors(inp, nans(out_shape), nans(inp.shape) if dinp else None, dout)
    work = {**layer.workspace(in_shape, batch), **layer.grad_workspace(in_shape, batch)}
    t.work = {name: nans(shape) for name, shape in work.items()}
    grads = {name: nans(shape) for name, shape in layer.params(in_shape).items()}
    run = nn.Pass(training)
    layer.forward(k, t, state, run)
    layer.backward(k, t, state, grads, run)
    return t, grads


def layer_results(k, case, inp, state, dout):
    """The case's layer on backend k in float32, from draw()'s values: {"out", "dinp" (unless
    case.dinp is False), "d<param>"..., each buffer after the pass}, batch first, keyed as
    torch_results."""
    state = {name: aligned(value, np.float32 if value.dtype.kind == "f" else None)
             for name, value in state.items()}
    t, grads = run_layer(k, case.layer, batch_last(inp), state, batch_last(dout), case.dinp,
                         case.training)
    results = {"out": batch_first(t.out)}
    if t.dinp is not None:
        results["dinp"] = batch_first(t.dinp)
    results.update((f"d{name}", grad) for name, grad in grads.items())
    results.update((name, state[name]) for name in case.layer.buffers(case.shape[1:]))
    return results


def loss_results(k, logits, labels, dloss, smoothing=0.0):
    """The loss kernels on backend k from batch-first logits (N, V), with label smoothing:
    {"losses" (N,), "loss" (their mean, from their float32 sum by loss_sum, as training
    logs it), "probs", "dlogits" (N, V)}."""
    batch, classes = logits.shape
    losses, probs, dlogits = nans(batch), nans((classes, batch)), nans((classes, batch))
    labels, smoothing = aligned(labels), np.float32(smoothing)
    k.softmax_xent_forward(losses, probs, batch_last(logits), labels, smoothing)
    k.softmax_xent_backward(dlogits, probs, labels, dloss, smoothing)
    sums = aligned(np.full(3, -1.0, np.float32))  # a step's sum goes in its own slot only
    k.loss_sum(sums, losses, 1)
    assert (sums[[0, 2]] == -1).all(), "loss_sum wrote outside its slot"
    return {"losses": losses, "loss": float(sums[1]) / batch,
            "probs": batch_first(probs), "dlogits": batch_first(dlogits)}


class FlatModel:
    """What an optimizer and an EMA use of a Sequential: its backend, flat parameters and
    (no) buffers; gradients given flat."""

    def __init__(self, kernels, flat_params):
        self.kernels, self.flat_params, self.buffers = kernels, flat_params, {}

    def flatten_grads(self, grads):
        return grads


def optimizer_results(k, case, seed=0):
    """The case's optimizer on backend k for case.steps steps from seeded float32 parameters
    and gradients, and its moving average if it has one: (optimizer, {"params", each state
    buffer, "ema" (the average's parameters)}) after them."""
    normal = _normal(np.random.default_rng(seed))
    params = k.to_device(aligned(normal(case.size), np.float32))
    model = FlatModel(k, params)
    opt = OPTIMIZERS[case.optimizer](model, **dict(case.options))
    ema = EMA(model, case.ema) if case.ema else None
    for _ in range(case.steps):
        opt.step(k.to_device(aligned(normal(case.size), np.float32)))
        if ema is not None:
            ema.update()
    averaged = {} if ema is None else {"ema": ema.flat_params}
    return opt, {"params": params, **{buffer: getattr(opt, buffer) for buffer in opt.buffers},
                 **averaged}


# ---- torch


def torch_twin(layer, state):
    """The layer's torch twin (its registry entry's, else interop.torch_layer of its spec),
    float parts in float64, holding state (parameters and buffers)."""
    import torch

    make = REGISTRY[type(layer).__name__].twin or interop.torch_layer
    module = make(layer.spec()).double()
    theirs = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    assert theirs.keys() == state.keys(), (
        f"{layer!r}: torch's state is {list(theirs)}, ours {list(state)}")
    with torch.no_grad():
        for name, value in state.items():
            assert theirs[name].shape == value.shape, (
                f"{layer!r}: {name} is {tuple(theirs[name].shape)} in torch, ours {value.shape}")
            theirs[name].copy_(torch.from_numpy(np.asarray(value)))
    return module


def torch_results(case, inp, state, dout):
    """torch autograd on the case's twin in float64 in the case's mode, from draw()'s values:
    {"out", "dinp" (unless case.dinp is False), "d<param>"..., each buffer after the pass},
    batch first."""
    import torch

    module = torch_twin(case.layer, state).train(case.training)
    x = torch.from_numpy(inp).requires_grad_(case.dinp)
    out = module(x)
    out.backward(torch.from_numpy(dout))
    results = {"out": out.detach().numpy()}
    if case.dinp:
        results["dinp"] = x.grad.numpy()
    results.update((f"d{name}", param.grad.numpy()) for name, param in module.named_parameters())
    results.update((name, value.numpy()) for name, value in module.named_buffers())
    return results


# ---- recording the kernel calls


class KernelSpy:
    """A backend whose kernels call on_call(kernel, args) before they run; its array helpers
    pass through. Records what a layer asks of the kernels, or checks it."""

    def __init__(self, backend, on_call):
        self._backend, self._on_call = backend, on_call

    def __getattr__(self, name):
        attr = getattr(self._backend, name)
        if name not in KERNELS:
            return attr

        def call(*args):
            self._on_call(name, args)
            attr(*args)

        return call


@dataclasses.dataclass(frozen=True, eq=False)
class Call:
    """A kernel call as a case made it: the kernel's name and copies of its arguments taken
    just before it ran (so its outputs are still NaN, an optimizer's in-place ones as they
    were)."""

    kernel: str
    args: tuple

    @property
    def names(self):
        """The kernel's argument names."""
        kernel = getattr(get_backend("cpu"), self.kernel)
        return tuple(inspect.signature(kernel.py_func).parameters)

    def copies(self):
        """Fresh aligned copies of the array arguments (the others as they are), to run on."""
        return [aligned(a) if isinstance(a, np.ndarray) else a for a in self.args]


def _record_layer(k, case, seed):
    layer_results(k, case, *draw(case, seed))


def _record_loss(k, case, seed):
    loss_results(k, *draw_loss(case, seed), case.smoothing)


def _record_optimizer(k, case, seed):
    optimizer_results(k, case, seed)


_RECORD = {Case: _record_layer, LossCase: _record_loss, OptimizerCase: _record_optimizer}


def recorded_calls(case, seed=0):
    """The kernel calls, in order, that a registry case (layer, loss or optimizer) makes on
    the CPU backend: a list of Call."""
    calls = []

    def record(kernel, args):
        calls.append(Call(kernel, tuple(aligned(a) if isinstance(a, np.ndarray) else a
                                        for a in args)))

    _RECORD[type(case)](KernelSpy(get_backend("cpu"), record), case, seed)
    return calls


@functools.cache
def kernels_called(case):
    """The names of the kernels a case calls, in order (a tuple)."""
    return tuple(call.kernel for call in recorded_calls(case))


def lockstep(model, opt, module, torch_opt, x, y):
    """One Adam step of a tinyconv model and of its torch twin on the same batch; returns
    both mean losses."""
    import torch

    loss, grads = model.loss_and_grads(x, y)
    opt.step(grads)
    torch_opt.zero_grad()
    torch_loss = torch.nn.functional.cross_entropy(module(torch.from_numpy(x)),
                                                   torch.from_numpy(y))
    torch_loss.backward()
    torch_opt.step()
    return loss, torch_loss.item()
