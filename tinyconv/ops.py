"""Validated entry points to the CPU kernels: same names and arguments, checked first.

The kernels trust their arguments (a wrong shape there reads out of bounds); these wrappers
check rank, shape agreement, dtype, contiguity and label range, and raise a ValueError that
names the op, the argument, what was expected and what was found. Arguments follow the kernel
contract: outputs, saved tensors, inputs, parameters, sizes; activations are batch-last, as
the kernels take them: images (C,H,W,N), features (IN,N), logits (V,N).
"""

import numpy as np

from tinyconv.kernels import adam_scalars, cpu


def _array(op, name, arr, layout, dtype=np.float32):
    """Check a C-contiguous ndarray of the dtype with dims named by layout (None: any rank)."""
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{op}: {name} must be a numpy array, found {type(arr).__name__}")
    if layout is not None and arr.ndim != len(layout):
        raise ValueError(f"{op}: {name} must have {len(layout)} dimensions {layout}, "
                         f"found {arr.ndim} (shape {arr.shape})")
    if arr.dtype != dtype:
        raise ValueError(f"{op}: {name} must be {np.dtype(dtype).name}, found {arr.dtype.name}")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{op}: {name} must be C-contiguous, found a strided view "
                         f"(strides {arr.strides}); pass np.ascontiguousarray({name})")
    return arr.shape


def _shape(op, name, arr, expected, layout):
    """Check that arr has exactly the expected shape, given its dimension names."""
    _array(op, name, arr, layout)
    if arr.shape != tuple(expected):
        raise ValueError(f"{op}: {name} must have shape {layout} = {tuple(expected)}, "
                         f"found {arr.shape}")


def _labels(op, labels, n, classes):
    """Check integer labels: shape (n,), int64, every value in [0, classes)."""
    _array(op, "labels", labels, ("N",), dtype=np.int64)
    if labels.shape != (n,):
        raise ValueError(f"{op}: labels must have shape (N,) = ({n},), found {labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= classes):
        bad = labels[(labels < 0) | (labels >= classes)][0]
        raise ValueError(f"{op}: labels must lie in [0, {classes}), found {bad}")


def _conv_shapes(op, inp, weight):
    C, H, W, N = _array(op, "inp", inp, ("C", "H", "W", "N"))
    OC, WC, KH, KW = _array(op, "weight", weight, ("OC", "C", "KH", "KW"))
    if WC != C:
        raise ValueError(f"{op}: weight must have C = {C} input channels to match inp "
                         f"{inp.shape}, found {WC} (weight shape {weight.shape})")
    if KH > H or KW > W or KH < 1 or KW < 1:
        raise ValueError(f"{op}: kernel (KH, KW) must lie between 1 and the input size "
                         f"(H, W) = ({H}, {W}), found ({KH}, {KW})")
    return N, C, H, W, OC, KH, KW


def conv2d_forward(out, inp, weight, bias):
    """Cross-correlation, stride 1, no padding, with bias (torch.nn.functional.conv2d)."""
    op = "conv2d_forward"
    N, C, H, W, OC, KH, KW = _conv_shapes(op, inp, weight)
    _shape(op, "bias", bias, (OC,), ("OC",))
    _shape(op, "out", out, (OC, H - KH + 1, W - KW + 1, N), ("OC", "OH", "OW", "N"))
    cpu.conv2d_forward(out, inp, weight, bias)


def conv2d_backward(dinp, dweight, dbias, dout, inp, weight):
    """Overwrite dinp (skipped when None), dweight, dbias with conv2d_forward's gradients."""
    op = "conv2d_backward"
    N, C, H, W, OC, KH, KW = _conv_shapes(op, inp, weight)
    _shape(op, "dout", dout, (OC, H - KH + 1, W - KW + 1, N), ("OC", "OH", "OW", "N"))
    if dinp is not None:
        _shape(op, "dinp", dinp, inp.shape, ("C", "H", "W", "N"))
    _shape(op, "dweight", dweight, weight.shape, ("OC", "C", "KH", "KW"))
    _shape(op, "dbias", dbias, (OC,), ("OC",))
    cpu.conv2d_backward(dinp, dweight, dbias, dout, inp, weight)


def _pool_shapes(op, inp_name, inp, k):
    C, H, W, N = _array(op, inp_name, inp, ("C", "H", "W", "N"))
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"{op}: k must be a positive int, found {k!r}")
    if H % k or W % k:
        raise ValueError(f"{op}: {inp_name} height and width must be divisible by k = {k}, "
                         f"found (H, W) = ({H}, {W})")
    return C, H // k, W // k, N


def avgpool2d_forward(out, inp, k):
    """Mean over non-overlapping k x k windows (torch.nn.functional.avg_pool2d(x, k))."""
    op = "avgpool2d_forward"
    _shape(op, "out", out, _pool_shapes(op, "inp", inp, k), ("C", "H/k", "W/k", "N"))
    cpu.avgpool2d_forward(out, inp, int(k))


def avgpool2d_backward(dinp, dout, k):
    """Overwrite dinp with the gradient of avgpool2d_forward."""
    op = "avgpool2d_backward"
    _shape(op, "dout", dout, _pool_shapes(op, "dinp", dinp, k), ("C", "H/k", "W/k", "N"))
    cpu.avgpool2d_backward(dinp, dout, int(k))


def _same_shape(op, reference_name, reference, **arrays):
    """Check float32 contiguous arrays of any rank, all shaped like the reference."""
    _array(op, reference_name, reference, None)
    for name, arr in arrays.items():
        _array(op, name, arr, None)
        if arr.shape != reference.shape:
            raise ValueError(f"{op}: {name} must have the shape of {reference_name} "
                             f"{reference.shape}, found {arr.shape}")


def tanh_forward(out, inp):
    """Elementwise tanh, any shape."""
    _same_shape("tanh_forward", "inp", inp, out=out)
    cpu.tanh_forward(out, inp)


def tanh_backward(dinp, out, dout):
    """Overwrite dinp with dout * (1 - out^2), out being tanh_forward's saved output."""
    _same_shape("tanh_backward", "out", out, dout=dout, dinp=dinp)
    cpu.tanh_backward(dinp, out, dout)


def _linear_shapes(op, inp, weight):
    IN, N = _array(op, "inp", inp, ("IN", "N"))
    OUT, WIN = _array(op, "weight", weight, ("OUT", "IN"))
    if WIN != IN:
        raise ValueError(f"{op}: weight must have IN = {IN} columns to match inp {inp.shape}, "
                         f"found {WIN} (weight shape {weight.shape})")
    return N, IN, OUT


def linear_forward(out, inp, weight, bias):
    """out = weight @ inp + bias: torch.nn.functional.linear with the batch last."""
    op = "linear_forward"
    N, IN, OUT = _linear_shapes(op, inp, weight)
    _shape(op, "bias", bias, (OUT,), ("OUT",))
    _shape(op, "out", out, (OUT, N), ("OUT", "N"))
    cpu.linear_forward(out, inp, weight, bias)


def linear_backward(dinp, dweight, dbias, dout, inp, weight):
    """Overwrite dinp, dweight, dbias with the gradients of linear_forward."""
    op = "linear_backward"
    N, IN, OUT = _linear_shapes(op, inp, weight)
    _shape(op, "dout", dout, (OUT, N), ("OUT", "N"))
    _shape(op, "dinp", dinp, inp.shape, ("IN", "N"))
    _shape(op, "dweight", dweight, weight.shape, ("OUT", "IN"))
    _shape(op, "dbias", dbias, (OUT,), ("OUT",))
    cpu.linear_backward(dinp, dweight, dbias, dout, inp, weight)


def softmax_xent_forward(losses, probs, logits, labels):
    """Per-sample cross-entropy into losses, softmax into probs; returns the mean loss."""
    op = "softmax_xent_forward"
    V, N = _array(op, "logits", logits, ("V", "N"))
    _labels(op, labels, N, V)
    _shape(op, "losses", losses, (N,), ("N",))
    _shape(op, "probs", probs, (V, N), ("V", "N"))
    cpu.softmax_xent_forward(losses, probs, logits, labels)
    return float(losses.mean())


def softmax_xent_backward(dlogits, probs, labels, dloss=1.0):
    """Overwrite dlogits with the gradient of the mean loss, scaled by dloss."""
    op = "softmax_xent_backward"
    V, N = _array(op, "probs", probs, ("V", "N"))
    _labels(op, labels, N, V)
    _shape(op, "dlogits", dlogits, (V, N), ("V", "N"))
    cpu.softmax_xent_backward(dlogits, probs, labels, np.float32(dloss))


def adam_update(params, m, v, grads, lr, beta1, beta2, eps, weight_decay, step):
    """One torch.optim.Adam step (amsgrad off) over flat float32 buffers, in place."""
    op = "adam_update"
    _same_shape(op, "params", params, m=m, v=v, grads=grads)
    if params.ndim != 1:
        raise ValueError(f"{op}: params must be flat (P,), found shape {params.shape}")
    if not isinstance(step, (int, np.integer)) or step < 1:
        raise ValueError(f"{op}: step must be an int >= 1 (steps count from 1), found {step!r}")
    cpu.adam_update(params, m, v, grads, *adam_scalars(lr, beta1, beta2, eps, weight_decay, step))
