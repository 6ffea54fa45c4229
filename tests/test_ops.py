"""Every op against torch autograd: the NumPy reference in float64, the kernels in float32.

One checker (check_op) runs an op three ways on the same seeded inputs and the same random
upstream gradient (torch autograd, tinyconv.kernels.reference, the validated kernels in
tinyconv.ops) and compares the forward output and every gradient by name. Cases are written
batch-first as torch takes them; the kernel adapters move the batch axis last and back.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tinyconv import ops
from tinyconv.kernels import reference as ref

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


def rel_err(ours, theirs):
    """max |ours - theirs| over max |theirs| (absolute where theirs is all zeros)."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, f"shape {ours.shape} != torch's {theirs.shape}"
    return np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30)


# ---- each op three ways: f(inputs, dout) -> {tensor name: array}; inputs is a dict of arrays


def _leaves(inputs):
    """Torch tensors of the array inputs (float ones track gradients); sizes pass as they are."""
    return {k: torch.from_numpy(v).requires_grad_(v.dtype.kind == "f")
            if isinstance(v, np.ndarray) else v for k, v in inputs.items()}


def _torch_run(fn, inputs, dout, grad_names):
    leaves = _leaves(inputs)
    out = fn(*leaves.values())  # in the order the case lists them
    out.backward(torch.as_tensor(dout, dtype=out.dtype))
    grads = {f"d{k}": leaves[k].grad.numpy() for k in grad_names}
    return {"out": out.detach().numpy(), **grads}


def _empty(shape):
    return np.empty(shape, np.float32)


def batch_last(a):
    """(N, ...) -> (..., N), contiguous: the kernels' layout."""
    return np.ascontiguousarray(np.moveaxis(a, 0, -1))


def batch_first(a):
    """(..., N) -> (N, ...): back to torch's layout for comparison."""
    return np.moveaxis(a, -1, 0)


def _run_batch_last(forward, backward, inputs, dout, params=(), sizes=()):
    """Run a kernel pair on batch-last copies of inp and dout; results batch-first again."""
    inp, dout = batch_last(inputs["inp"]), batch_last(dout)
    params = [inputs[name] for name in params]
    out, dinp = _empty(dout.shape), _empty(inp.shape)
    dparams = [_empty(p.shape) for p in params]
    saved = (inp, params[0]) if params else ()  # a layer with weights needs inp and weight
    forward(out, inp, *params, *sizes)
    backward(dinp, *dparams, dout, *saved, *sizes)
    return out, dinp, dparams


class WeightedLayer:
    """A layer with a weight and a bias (conv2d, linear), run the three ways."""

    def __init__(self, torch_fn, ref_forward, ref_backward, forward, backward):
        self.torch_fn, self.ref_forward, self.ref_backward = torch_fn, ref_forward, ref_backward
        self.forward, self.backward = forward, backward

    def torch(self, inputs, dout):
        return _torch_run(self.torch_fn, inputs, dout, ("inp", "weight", "bias"))

    def reference(self, inputs, dout):
        dinp, dweight, dbias = self.ref_backward(dout, inputs["inp"], inputs["weight"])
        return {"out": self.ref_forward(**inputs), "dinp": dinp, "dweight": dweight,
                "dbias": dbias}

    def kernel(self, inputs, dout):
        out, dinp, (dweight, dbias) = _run_batch_last(
            self.forward, self.backward, inputs, dout, params=("weight", "bias"))
        return {"out": batch_first(out), "dinp": batch_first(dinp), "dweight": dweight,
                "dbias": dbias}


Conv2d = WeightedLayer(F.conv2d, ref.conv2d_forward, ref.conv2d_backward, ops.conv2d_forward,
                       ops.conv2d_backward)
Linear = WeightedLayer(F.linear, ref.linear_forward, ref.linear_backward, ops.linear_forward,
                       ops.linear_backward)


class AvgPool2d:
    @staticmethod
    def torch(inputs, dout):
        return _torch_run(F.avg_pool2d, inputs, dout, ("inp",))

    @staticmethod
    def reference(inputs, dout):
        k = inputs["k"]
        return {"out": ref.avgpool2d_forward(inputs["inp"], k),
                "dinp": ref.avgpool2d_backward(dout, k)}

    @staticmethod
    def kernel(inputs, dout):
        out, dinp, _ = _run_batch_last(ops.avgpool2d_forward, ops.avgpool2d_backward, inputs,
                                       dout, sizes=(inputs["k"],))
        return {"out": batch_first(out), "dinp": batch_first(dinp)}


class Tanh:
    @staticmethod
    def torch(inputs, dout):
        return _torch_run(torch.tanh, inputs, dout, ("inp",))

    @staticmethod
    def reference(inputs, dout):
        out = ref.tanh_forward(inputs["inp"])
        return {"out": out, "dinp": ref.tanh_backward(dout, out)}

    @staticmethod
    def kernel(inputs, dout):
        res = {"out": _empty(dout.shape), "dinp": _empty(dout.shape)}
        ops.tanh_forward(res["out"], inputs["inp"])
        ops.tanh_backward(res["dinp"], res["out"], dout)
        return res


class SoftmaxXent:
    @staticmethod
    def torch(inputs, dout):
        return _torch_run(lambda logits, labels: F.cross_entropy(logits, labels), inputs, dout,
                          ("logits",))

    @staticmethod
    def reference(inputs, dout):
        loss, probs = ref.softmax_xent_forward(inputs["logits"], inputs["labels"])
        return {"out": loss, "dlogits": ref.softmax_xent_backward(probs, inputs["labels"], dout)}

    @staticmethod
    def kernel(inputs, dout):
        logits, labels = batch_last(inputs["logits"]), inputs["labels"]
        losses, probs, dlogits = _empty(len(labels)), _empty(logits.shape), _empty(logits.shape)
        loss = ops.softmax_xent_forward(losses, probs, logits, labels)
        ops.softmax_xent_backward(dlogits, probs, labels, float(dout))
        return {"out": np.float32(loss), "dlogits": batch_first(dlogits)}


# ---- shapes: LeNet-5's at batch 128, then the odd ones the kernels must also get right


def conv_case(N, C, H, W, OC, KH, KW):
    return Conv2d, {"inp": (N, C, H, W), "weight": (OC, C, KH, KW), "bias": (OC,)}, \
        (N, OC, H - KH + 1, W - KW + 1)


def pool_case(N, C, H, W, k=2):
    return AvgPool2d, {"inp": (N, C, H, W), "k": k}, (N, C, H // k, W // k)


def linear_case(N, IN, OUT):
    return Linear, {"inp": (N, IN), "weight": (OUT, IN), "bias": (OUT,)}, (N, OUT)


def xent_case(N, V):
    return SoftmaxXent, {"logits": (N, V), "labels": V}, ()


CASES = {
    "conv1": conv_case(128, 1, 32, 32, 6, 5, 5),
    "conv2": conv_case(128, 6, 14, 14, 16, 5, 5),
    "conv3": conv_case(128, 16, 5, 5, 120, 5, 5),
    "conv_batch1": conv_case(1, 3, 9, 9, 4, 3, 3),
    "conv_h_ne_w": conv_case(3, 2, 7, 12, 5, 3, 3),
    "conv_rect_kernel": conv_case(2, 3, 9, 8, 4, 2, 5),
    "conv_k_eq_input": conv_case(4, 3, 6, 6, 7, 6, 6),
    "conv_c32": conv_case(3, 32, 8, 8, 5, 3, 3),
    "conv_batch37": conv_case(37, 3, 10, 7, 5, 4, 4),
    "conv_k1": conv_case(2, 4, 5, 3, 3, 1, 1),
    "pool1": pool_case(128, 6, 28, 28),
    "pool2": pool_case(128, 16, 10, 10),
    "pool_batch1": pool_case(1, 1, 4, 6),
    "pool_k3": pool_case(37, 32, 9, 6, 3),
    "pool_k1": pool_case(2, 3, 5, 7, 1),
    "pool_whole": pool_case(3, 2, 4, 4, 4),
    "pool_tiny": pool_case(1, 2, 6, 3, 3),
    "tanh_conv1": (Tanh, {"inp": (128, 6, 28, 28)}, (128, 6, 28, 28)),
    "tanh_wide": (Tanh, {"inp": (37, 1001)}, (37, 1001)),
    "tanh_1d": (Tanh, {"inp": (1,)}, (1,)),
    "fc1": linear_case(128, 120, 84),
    "fc2": linear_case(128, 84, 10),
    "linear_batch1": linear_case(1, 7, 3),
    "linear_batch37": linear_case(37, 33, 1),
    "xent_lenet": xent_case(128, 10),
    "xent_batch1": xent_case(1, 10),
    "xent_batch37": xent_case(37, 3),
    "xent_one_class": xent_case(5, 1),
}

# a few seeded random draws on top of the hand-picked shapes
_draw = np.random.default_rng(1234)
for _i in range(3):
    _N, _C, _OC = (int(v) for v in _draw.integers(1, 9, size=3))
    _KH, _KW = (int(v) for v in _draw.integers(1, 6, size=2))
    _H, _W = _KH + int(_draw.integers(0, 9)), _KW + int(_draw.integers(0, 9))
    CASES[f"conv_random{_i}"] = conv_case(_N, _C, _H, _W, _OC, _KH, _KW)
    _k = int(_draw.integers(1, 4))
    CASES[f"pool_random{_i}"] = pool_case(_N, _C, _k * _H, _k * _W, _k)
    CASES[f"linear_random{_i}"] = linear_case(_N, _H * _W, _OC)


def make_inputs(spec, out_shape, dtype, seed):
    """Seeded inputs for a case; tanh inputs spread to +-4 to reach its flat tails."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for name, shape in spec.items():
        if name == "k":
            inputs[name] = shape
        elif name == "labels":
            inputs[name] = rng.integers(0, shape, size=spec["logits"][0]).astype(np.int64)
        else:
            inputs[name] = (2 * rng.standard_normal(shape)).astype(dtype)
    dout = rng.standard_normal(out_shape).astype(dtype)
    return inputs, dout


def check_op(case, impl, dtype, seed=0):
    op, spec, out_shape = CASES[case]
    inputs, dout = make_inputs(spec, out_shape, dtype, seed)
    expected = op.torch(inputs, dout)
    got = getattr(op, impl)(inputs, dout)
    assert got.keys() == expected.keys()
    for name in expected:
        err = rel_err(got[name], expected[name])
        direction = "forward" if name == "out" else "backward"
        bound = TOLERANCE[(impl, direction)]
        assert err < bound, f"{case}: {impl} {name} differs from torch by {err:.3g} > {bound}"


@pytest.mark.parametrize("case", CASES)
def test_reference_float64_matches_torch(case):
    check_op(case, "reference", np.float64)


@pytest.mark.parametrize("case", CASES)
def test_kernel_float32_matches_torch(case):
    check_op(case, "kernel", np.float32)


# ---- the oracle against finite differences, so that it is not only "agrees with torch"

FD_CASES = ["conv_batch1", "conv_rect_kernel", "pool_tiny", "tanh_1d", "linear_batch1",
            "xent_batch37"]


@pytest.mark.parametrize("case", FD_CASES)
def test_reference_matches_finite_differences(case):
    op, spec, out_shape = CASES[case]
    inputs, dout = make_inputs(spec, out_shape, np.float64, seed=7)
    got = op.reference(inputs, dout)

    def objective():  # the scalar whose gradient the backward computes: <out, dout>
        return float(np.sum(op.reference(inputs, dout)["out"] * dout))

    h = 1e-6
    for name, arr in inputs.items():
        if not isinstance(arr, np.ndarray) or arr.dtype != np.float64:
            continue
        numeric = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            saved = arr[idx]
            arr[idx] = saved + h
            up = objective()
            arr[idx] = saved - h
            down = objective()
            arr[idx] = saved
            numeric[idx] = (up - down) / (2 * h)
        err = rel_err(got[f"d{name}"], numeric)
        assert err < 1e-7, f"{case}: d{name} differs from finite differences by {err:.3g}"


# ---- Adam against torch.optim.Adam


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_adam_matches_torch(impl, weight_decay):
    dtype = np.float32 if impl == "kernel" else np.float64
    bound = 1e-6 if impl == "kernel" else 1e-10
    rng = np.random.default_rng(3)
    size, steps = 1237, 30
    params = rng.standard_normal(size).astype(dtype)
    grads = [rng.standard_normal(size).astype(dtype) for _ in range(steps)]
    hyper = dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)

    theirs = torch.tensor(params.copy(), requires_grad=True)
    opt = torch.optim.Adam([theirs], lr=1e-2, **hyper)
    ours, m, v = params.copy(), np.zeros_like(params), np.zeros_like(params)
    for step in range(1, steps + 1):
        lr = 1e-2 if step <= steps // 2 else 3e-3  # changed mid-way, as a scheduler would
        opt.param_groups[0]["lr"] = lr
        theirs.grad = torch.from_numpy(grads[step - 1].copy())
        opt.step()
        args = (lr, 0.9, 0.999, 1e-8, weight_decay, step)
        if impl == "kernel":
            ops.adam_update(ours, m, v, grads[step - 1], *args)
        else:
            ours, m, v = ref.adam_update(ours, m, v, grads[step - 1], *args)
        state = opt.state[theirs]
        for name, mine, torchs in [("params", ours, theirs.detach()),
                                   ("m", m, state["exp_avg"]), ("v", v, state["exp_avg_sq"])]:
            err = rel_err(mine, torchs.numpy())
            assert err < bound, f"step {step}: {name} differs from torch by {err:.3g}"
