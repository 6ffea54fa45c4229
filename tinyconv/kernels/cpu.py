"""Numba CPU kernels: float32, parallel, one flat function per op and direction.

Letters: N batch, C input channels, OC output channels, H/W input height and width,
OH/OW output height and width, KH/KW kernel height and width, k pooling window,
IN/OUT linear features, V classes, P parameter count.

The contract (DESIGN.md section 2): outputs first, then what the forward saved, then inputs,
then parameters, then sizes. Kernels allocate nothing, check nothing (tinyconv.ops validates)
and return nothing. Every backward OVERWRITES its outputs; none accumulates.

Determinism: every prange iteration owns the outputs it writes and sums in a fixed order, so
results are bit-identical across runs and thread counts (no reductions across iterations).
float32 throughout: constants are np.float32 and no float64 value enters (tests scan the IR).
"""

import numpy as np
from numba import njit, prange

# reassoc lets float reductions vectorise; contract allows FMA. No nnan/ninf: NaN checks stay
# meaningful. error_model="numpy" drops the division-by-zero check that blocks vectorisation.
_JIT = dict(parallel=True, fastmath={"reassoc", "contract"}, error_model="numpy", cache=True)
_HELPER = dict(fastmath={"reassoc", "contract"}, error_model="numpy", cache=True, inline="always")

_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)

# tanh(x) ~ x * P(x^2) / Q(x^2) on [-TANH_CLAMP, TANH_CLAMP], beyond which float32 tanh is +-1
# to within an ulp: Eigen's 13/6 rational approximation, a few ulp from the true value.
_TANH_CLAMP = np.float32(7.90531110763549805)
_TANH_P = tuple(np.float32(a) for a in (
    -2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11, 5.12229709037114e-08,
    1.48572235717979e-05, 6.37261928875436e-04, 4.89352455891786e-03))
_TANH_Q = tuple(np.float32(b) for b in (
    1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03))


@njit(**_HELPER)
def _tanh32(x):
    # written as comparisons, not min/max, so that a NaN passes through instead of clamping
    if x > _TANH_CLAMP:
        x = _TANH_CLAMP
    elif x < -_TANH_CLAMP:
        x = -_TANH_CLAMP
    x2 = x * x
    p = _TANH_P[0]
    for a in _TANH_P[1:]:
        p = p * x2 + a
    q = _TANH_Q[0]
    for b in _TANH_Q[1:]:
        q = q * x2 + b
    return x * p / q


@njit(**_JIT)
def conv2d_forward(out, inp, weight, bias):
    # inp (N,C,H,W), weight (OC,C,KH,KW), bias (OC,) -> out (N,OC,OH,OW), OH=H-KH+1, OW=W-KW+1
    # out[n,oc,i,j] = bias[oc] + sum over c, kh, kw of weight[oc,c,kh,kw] * inp[n,c,i+kh,j+kw]
    N, C, H, W = inp.shape
    OC, _, KH, KW = weight.shape
    OH, OW = H - KH + 1, W - KW + 1
    for job in prange(N * OC):
        n, oc = job // OC, job % OC
        plane = out[n, oc]
        plane[:, :] = bias[oc]
        # one weight tap at a time, added into a whole contiguous output row (vectorises on j)
        for c in range(C):
            for kh in range(KH):
                for kw in range(KW):
                    w = weight[oc, c, kh, kw]
                    for i in range(OH):
                        for j in range(OW):
                            plane[i, j] += w * inp[n, c, i + kh, j + kw]


@njit(**_JIT)
def conv2d_backward(dinp, dweight, dbias, dout, inp, weight):
    # overwrites dinp (N,C,H,W), dweight (OC,C,KH,KW), dbias (OC,); dout (N,OC,OH,OW)
    N, C, H, W = inp.shape
    OC, _, KH, KW = weight.shape
    OH, OW = H - KH + 1, W - KW + 1
    # dinp[n,c,i+kh,j+kw] += weight[oc,c,kh,kw] * dout[n,oc,i,j]: scatter each output gradient
    # back through every tap; one sample per iteration, so no two iterations share a pixel
    for n in prange(N):
        dinp[n, :, :, :] = _ZERO
        for oc in range(OC):
            for c in range(C):
                for kh in range(KH):
                    for kw in range(KW):
                        w = weight[oc, c, kh, kw]
                        for i in range(OH):
                            for j in range(OW):
                                dinp[n, c, i + kh, j + kw] += w * dout[n, oc, i, j]
    # dweight[oc,c,kh,kw] = sum over n, i, j of dout[n,oc,i,j] * inp[n,c,i+kh,j+kw]
    for job in prange(OC * C):
        oc, c = job // C, job % C
        for kh in range(KH):
            for kw in range(KW):
                acc = _ZERO
                for n in range(N):
                    for i in range(OH):
                        for j in range(OW):
                            acc += dout[n, oc, i, j] * inp[n, c, i + kh, j + kw]
                dweight[oc, c, kh, kw] = acc
    # dbias[oc] = sum over n, i, j of dout[n,oc,i,j]
    for oc in prange(OC):
        acc = _ZERO
        for n in range(N):
            for i in range(OH):
                for j in range(OW):
                    acc += dout[n, oc, i, j]
        dbias[oc] = acc


@njit(**_JIT)
def avgpool2d_forward(out, inp, k):
    # inp (N,C,H,W), H and W divisible by k -> out (N,C,H/k,W/k): mean of each k x k window
    N, C, OH, OW = out.shape
    scale = _ONE / np.float32(k * k)
    for plane in prange(N * C):
        n, c = plane // C, plane % C
        for i in range(OH):
            for j in range(OW):
                acc = _ZERO
                for a in range(k):
                    for b in range(k):
                        acc += inp[n, c, i * k + a, j * k + b]
                out[n, c, i, j] = acc * scale


@njit(**_JIT)
def avgpool2d_backward(dinp, dout, k):
    # overwrites dinp (N,C,H,W); dout (N,C,H/k,W/k)
    # every pixel of a window contributed 1/(k*k) of its mean, so it gets 1/(k*k) of the gradient
    N, C, OH, OW = dout.shape
    scale = _ONE / np.float32(k * k)
    for plane in prange(N * C):
        n, c = plane // C, plane % C
        for i in range(OH):
            for j in range(OW):
                share = dout[n, c, i, j] * scale
                for a in range(k):
                    for b in range(k):
                        dinp[n, c, i * k + a, j * k + b] = share


@njit(**_JIT)
def tanh_forward(out, inp):
    # inp (any shape, C-contiguous) -> out (same shape)
    flat_out, flat_inp = out.ravel(), inp.ravel()
    for idx in prange(flat_inp.size):
        flat_out[idx] = _tanh32(flat_inp[idx])


@njit(**_JIT)
def tanh_backward(dinp, out, dout):
    # overwrites dinp; out is the forward's saved output, all the same shape
    # d tanh(x)/dx = 1 - tanh(x)^2, read from the saved output instead of recomputing tanh
    flat_dinp, flat_out, flat_dout = dinp.ravel(), out.ravel(), dout.ravel()
    for idx in prange(flat_out.size):
        y = flat_out[idx]
        flat_dinp[idx] = flat_dout[idx] * (_ONE - y * y)


@njit(**_JIT)
def linear_forward(out, inp, weight, bias):
    # inp (N,IN), weight (OUT,IN), bias (OUT,) -> out (N,OUT) = inp @ weight.T + bias
    N, IN = inp.shape
    OUT = weight.shape[0]
    for n in prange(N):
        for o in range(OUT):
            acc = _ZERO
            for i in range(IN):
                acc += inp[n, i] * weight[o, i]
            out[n, o] = acc + bias[o]


@njit(**_JIT)
def linear_backward(dinp, dweight, dbias, dout, inp, weight):
    # overwrites dinp (N,IN), dweight (OUT,IN), dbias (OUT,); dout (N,OUT)
    N, IN = inp.shape
    OUT = weight.shape[0]
    # dinp = dout @ weight: each output's gradient spread over the inputs by its weight row
    for n in prange(N):
        dinp[n, :] = _ZERO
        for o in range(OUT):
            d = dout[n, o]
            for i in range(IN):
                dinp[n, i] += d * weight[o, i]
    # dweight = dout.T @ inp and dbias = dout summed over the batch, one output row each
    for o in prange(OUT):
        dweight[o, :] = _ZERO
        acc = _ZERO
        for n in range(N):
            d = dout[n, o]
            acc += d
            for i in range(IN):
                dweight[o, i] += d * inp[n, i]
        dbias[o] = acc


@njit(**_JIT)
def softmax_xent_forward(losses, probs, logits, labels):
    # logits (N,V), labels (N,) ints in [0,V) -> losses (N,) per sample, probs (N,V) saved
    # losses[n] = logsumexp(logits[n]) - logits[n, labels[n]], with the row max taken out first
    # so that exp never overflows; the caller takes the mean over the batch
    N, V = logits.shape
    for n in prange(N):
        row_max = logits[n, 0]
        for v in range(1, V):
            row_max = max(row_max, logits[n, v])
        total = _ZERO
        for v in range(V):
            e = np.exp(logits[n, v] - row_max)
            probs[n, v] = e
            total += e
        for v in range(V):
            probs[n, v] /= total
        losses[n] = np.log(total) + row_max - logits[n, labels[n]]


@njit(**_JIT)
def softmax_xent_backward(dlogits, probs, labels, dloss):
    # overwrites dlogits (N,V); probs (N,V) saved by the forward, dloss the mean loss's gradient
    # d mean_n(loss_n) / d logits[n,v] = (probs[n,v] - [v == labels[n]]) / N
    N, V = probs.shape
    scale = dloss / np.float32(N)
    for n in prange(N):
        for v in range(V):
            dlogits[n, v] = probs[n, v] * scale
        dlogits[n, labels[n]] -= scale


@njit(**_JIT)
def adam_update(params, m, v, grads, step_size, bias_correction2_sqrt, one_minus_beta1, beta2,
                one_minus_beta2, eps, weight_decay):
    # updates params, m, v (P,) in place from grads (P,), as torch.optim.Adam's step does;
    # the caller works the scalars out in float64 from lr, betas and the step, as torch does:
    # step_size = lr / (1 - beta1**step), bias_correction2_sqrt = sqrt(1 - beta2**step)
    for idx in prange(params.size):
        g = grads[idx] + weight_decay * params[idx]  # L2 weight decay, folded into the gradient
        m[idx] += one_minus_beta1 * (g - m[idx])  # first moment, torch's lerp
        v[idx] = beta2 * v[idx] + one_minus_beta2 * g * g  # second moment
        denom = np.sqrt(v[idx]) / bias_correction2_sqrt + eps  # eps after the square root
        params[idx] -= step_size * (m[idx] / denom)
