"""Numba CPU kernels: float32, parallel, batch-last, one flat function per op and direction.

Letters: N batch, C input channels, OC output channels, H/W input height and width,
OH/OW output height and width, KH/KW kernel height and width, k pooling window,
IN/OUT linear features, V classes, P parameter count.

Layout: the batch is the LAST axis of every activation: images (C,H,W,N), features (IN,N),
logits (V,N). Every inner loop then runs over N contiguous samples with one weight held in
a register, which vectorises (8 floats a step with AVX2) and reuses the weight N times.
Measured at batch 128 against the same loops in NCHW: conv2 forward 11 ms -> 1.6 ms, conv3
forward (a 1x1 output, so a 1-long inner loop in NCHW) 27 ms -> 0.2 ms. Weights keep torch's
layout.
tinyconv.model transposes the NCHW input once per batch and the logits once back.

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
    # inp (C,H,W,N), weight (OC,C,KH,KW), bias (OC,) -> out (OC,OH,OW,N), OH=H-KH+1, OW=W-KW+1
    # out[oc,i,j,n] = bias[oc] + sum over c, kh, kw of weight[oc,c,kh,kw] * inp[c,i+kh,j+kw,n]
    C, H, W, N = inp.shape
    OC, _, KH, KW = weight.shape
    OH, OW = H - KH + 1, W - KW + 1
    for row in prange(OC * OH):
        oc, i = row // OH, row % OH
        for j in range(OW):
            acc = out[oc, i, j]
            acc[:] = bias[oc]
            for c in range(C):
                for kh in range(KH):
                    for kw in range(KW):
                        w = weight[oc, c, kh, kw]
                        src = inp[c, i + kh, j + kw]
                        for n in range(N):
                            acc[n] += w * src[n]


@njit(**_JIT)
def conv2d_backward(dinp, dweight, dbias, dout, inp, weight):
    # overwrites dinp (C,H,W,N), dweight (OC,C,KH,KW), dbias (OC,); dout (OC,OH,OW,N)
    C, H, W, N = inp.shape
    OC, _, KH, KW = weight.shape
    OH, OW = H - KH + 1, W - KW + 1
    # dinp[c,h,w,n] = sum over oc, kh, kw of weight[oc,c,kh,kw] * dout[oc,h-kh,w-kw,n], the
    # taps limited to those whose output position (h-kh, w-kw) exists; gathered, so each
    # iteration owns one input row and no two iterations write the same pixel
    for row in prange(C * H):
        c, h = row // H, row % H
        for x in range(W):
            acc = dinp[c, h, x]
            acc[:] = _ZERO
            for oc in range(OC):
                for kh in range(max(0, h - OH + 1), min(KH, h + 1)):
                    for kw in range(max(0, x - OW + 1), min(KW, x + 1)):
                        w = weight[oc, c, kh, kw]
                        src = dout[oc, h - kh, x - kw]
                        for n in range(N):
                            acc[n] += w * src[n]
    # dweight[oc,c,kh,kw] = sum over i, j, n of dout[oc,i,j,n] * inp[c,i+kh,j+kw,n]
    for pair in prange(OC * C):
        oc, c = pair // C, pair % C
        for kh in range(KH):
            for kw in range(KW):
                acc = _ZERO
                for i in range(OH):
                    for j in range(OW):
                        grad, src = dout[oc, i, j], inp[c, i + kh, j + kw]
                        for n in range(N):
                            acc += grad[n] * src[n]
                dweight[oc, c, kh, kw] = acc
    # dbias[oc] = sum over i, j, n of dout[oc,i,j,n]
    for oc in prange(OC):
        acc = _ZERO
        for i in range(OH):
            for j in range(OW):
                grad = dout[oc, i, j]
                for n in range(N):
                    acc += grad[n]
        dbias[oc] = acc


@njit(**_JIT)
def avgpool2d_forward(out, inp, k):
    # inp (C,H,W,N), H and W divisible by k -> out (C,H/k,W/k,N): mean of each k x k window
    C, OH, OW, N = out.shape
    scale = _ONE / np.float32(k * k)
    for row in prange(C * OH):
        c, i = row // OH, row % OH
        for j in range(OW):
            acc = out[c, i, j]
            acc[:] = _ZERO
            for a in range(k):
                for b in range(k):
                    src = inp[c, i * k + a, j * k + b]
                    for n in range(N):
                        acc[n] += src[n]
            for n in range(N):
                acc[n] *= scale


@njit(**_JIT)
def avgpool2d_backward(dinp, dout, k):
    # overwrites dinp (C,H,W,N); dout (C,H/k,W/k,N)
    # every pixel of a window contributed 1/(k*k) of its mean, so it gets 1/(k*k) of the gradient
    C, OH, OW, N = dout.shape
    scale = _ONE / np.float32(k * k)
    for row in prange(C * OH):
        c, i = row // OH, row % OH
        for j in range(OW):
            grad = dout[c, i, j]
            for a in range(k):
                for b in range(k):
                    dst = dinp[c, i * k + a, j * k + b]
                    for n in range(N):
                        dst[n] = grad[n] * scale


@njit(**_JIT)
def tanh_forward(out, inp):
    # inp (any shape, C-contiguous) -> out (same shape); out may be inp (in place)
    flat_out, flat_inp = out.ravel(), inp.ravel()
    for idx in prange(flat_inp.size):
        flat_out[idx] = _tanh32(flat_inp[idx])


@njit(**_JIT)
def tanh_backward(dinp, out, dout):
    # overwrites dinp (which may be dout: in place); out is the forward's saved output, all the
    # same shape
    # d tanh(x)/dx = 1 - tanh(x)^2, read from the saved output instead of recomputing tanh
    flat_dinp, flat_out, flat_dout = dinp.ravel(), out.ravel(), dout.ravel()
    for idx in prange(flat_out.size):
        y = flat_out[idx]
        flat_dinp[idx] = flat_dout[idx] * (_ONE - y * y)


@njit(**_JIT)
def linear_forward(out, inp, weight, bias):
    # inp (IN,N), weight (OUT,IN), bias (OUT,) -> out (OUT,N) = weight @ inp + bias
    # (torch's x @ W.T + b with the batch last)
    IN, N = inp.shape
    OUT = weight.shape[0]
    for o in prange(OUT):
        acc = out[o]
        acc[:] = bias[o]
        for i in range(IN):
            w = weight[o, i]
            src = inp[i]
            for n in range(N):
                acc[n] += w * src[n]


@njit(**_JIT)
def linear_backward(dinp, dweight, dbias, dout, inp, weight):
    # overwrites dinp (IN,N), dweight (OUT,IN), dbias (OUT,); dout (OUT,N)
    IN, N = inp.shape
    OUT = weight.shape[0]
    # dinp = weight.T @ dout: each input feature collects every output's gradient by its weight
    for i in prange(IN):
        acc = dinp[i]
        acc[:] = _ZERO
        for o in range(OUT):
            w = weight[o, i]
            grad = dout[o]
            for n in range(N):
                acc[n] += w * grad[n]
    # dweight = dout @ inp.T and dbias = dout summed over the batch, one output row each
    for o in prange(OUT):
        grad = dout[o]
        for i in range(IN):
            src = inp[i]
            acc = _ZERO
            for n in range(N):
                acc += grad[n] * src[n]
            dweight[o, i] = acc
        acc = _ZERO
        for n in range(N):
            acc += grad[n]
        dbias[o] = acc


@njit(**_JIT)
def softmax_xent_forward(losses, probs, logits, labels):
    # logits (V,N), labels (N,) ints in [0,V) -> losses (N,) per sample, probs (V,N) saved
    # losses[n] = logsumexp(logits[:,n]) - logits[labels[n],n], with the column max taken out
    # first so that exp never overflows; the caller takes the mean over the batch
    V, N = logits.shape
    for n in prange(N):
        col_max = logits[0, n]
        for v in range(1, V):
            col_max = max(col_max, logits[v, n])
        total = _ZERO
        for v in range(V):
            e = np.exp(logits[v, n] - col_max)
            probs[v, n] = e
            total += e
        for v in range(V):
            probs[v, n] /= total
        losses[n] = np.log(total) + col_max - logits[labels[n], n]


@njit(**_JIT)
def softmax_xent_backward(dlogits, probs, labels, dloss):
    # overwrites dlogits (V,N); probs (V,N) saved by the forward, dloss the mean loss's gradient
    # d mean_n(loss_n) / d logits[v,n] = (probs[v,n] - [v == labels[n]]) / N
    V, N = probs.shape
    scale = dloss / np.float32(N)
    for v in prange(V):
        for n in range(N):
            dlogits[v, n] = probs[v, n] * scale
    for n in range(N):
        dlogits[labels[n], n] -= scale


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
