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


# Register blocking. A loop that adds one weight times one input row to one output row
# (out[n] += w * inp[n]) spends two loads and a store on each FMA and runs at 20-35 GFLOP/s on
# one core here, bound by memory traffic. The conv kernels instead update two output rows from
# five input rows in one pass (_madd_rows): 7 loads and 2 stores feed 10 FMAs, with the ten
# weights held in registers, which measured 2-3x faster on the LeNet shapes. Five divides the
# LeNet kernel width and its channel counts (6, 16, 120 are even, 120 is 24 fives); a shorter
# last group is padded with zero weights, an odd last channel runs alone.
_TAPS = 5


@njit(**_HELPER)
def _five(values):
    # values (T,), 1 <= T <= 5, padded with zeros to a 5-tuple
    T = values.size
    return (values[0],
            values[min(1, T - 1)] * np.float32(T > 1), values[min(2, T - 1)] * np.float32(T > 2),
            values[min(3, T - 1)] * np.float32(T > 3), values[min(4, T - 1)] * np.float32(T > 4))


@njit(**_HELPER)
def _five_indices(first, last):
    # first, first+1, ..., first+4, none past last: the rows of a tap group (padding repeats last)
    return (first, min(first + 1, last), min(first + 2, last), min(first + 3, last),
            min(first + 4, last))


@njit(**_HELPER)
def _madd_rows(dst0, dst1, w0, w1, rows, pair):
    # dst0 (N,) += sum over t of w0[t] * rows[t] (N,), for 5 weights and rows; likewise dst1 with
    # w1 when pair is true (dst1 is then another row than dst0, and is ignored otherwise)
    x0, x1, x2, x3, x4 = rows
    a0, a1, a2, a3, a4 = w0
    b0, b1, b2, b3, b4 = w1
    if pair:
        for n in range(dst0.size):
            dst0[n] += a0 * x0[n] + a1 * x1[n] + a2 * x2[n] + a3 * x3[n] + a4 * x4[n]
            dst1[n] += b0 * x0[n] + b1 * x1[n] + b2 * x2[n] + b3 * x3[n] + b4 * x4[n]
    else:
        for n in range(dst0.size):
            dst0[n] += a0 * x0[n] + a1 * x1[n] + a2 * x2[n] + a3 * x3[n] + a4 * x4[n]


@njit(**_JIT)
def conv2d_forward(out, inp, weight, bias):
    # inp (C,H,W,N), weight (OC,C,KH,KW), bias (OC,) -> out (OC,OH,OW,N), OH=H-KH+1, OW=W-KW+1
    # out[oc,i,j,n] = bias[oc] + sum over c, kh, kw of weight[oc,c,kh,kw] * inp[c,i+kh,j+kw,n];
    # each task owns a pair of output channels in one output row, the taps go five along kw
    C, H, W, N = inp.shape
    OC, _, KH, KW = weight.shape
    OH, OW = H - KH + 1, W - KW + 1
    for task in prange((OC + 1) // 2 * OH):
        oc0, i = task // OH * 2, task % OH
        oc1 = min(oc0 + 1, OC - 1)
        for j in range(OW):
            dst0, dst1 = out[oc0, i, j], out[oc1, i, j]
            dst0[:] = bias[oc0]
            dst1[:] = bias[oc1]
            for c in range(C):
                for kh in range(KH):
                    row = inp[c, i + kh]  # (W,N)
                    for kw in range(0, KW, _TAPS):
                        kw_end = min(kw + _TAPS, KW)
                        r0, r1, r2, r3, r4 = _five_indices(j + kw, j + kw_end - 1)
                        _madd_rows(dst0, dst1, _five(weight[oc0, c, kh, kw:kw_end]),
                                   _five(weight[oc1, c, kh, kw:kw_end]),
                                   (row[r0], row[r1], row[r2], row[r3], row[r4]), oc1 != oc0)


@njit(**_JIT)
def conv2d_backward(dinp, dweight, dbias, dout, inp, weight):
    # overwrites dinp (C,H,W,N) unless it is None (conv1's: nobody needs it), dweight
    # (OC,C,KH,KW), dbias (OC,); dout (OC,OH,OW,N)
    C, H, W, N = inp.shape
    OC, _, KH, KW = weight.shape
    OH, OW = H - KH + 1, W - KW + 1
    # dinp[c,h,x,n] = sum over oc, kh, kw of weight[oc,c,kh,kw] * dout[oc,h-kh,x-kw,n], the
    # taps limited to those whose output position (h-kh, x-kw) exists; gathered, so each task
    # owns a pair of input channels in one row. The taps go five along oc.
    if dinp is not None:
        for task in prange((C + 1) // 2 * H):
            c0, h = task // H * 2, task % H
            c1 = min(c0 + 1, C - 1)
            for x in range(W):
                dst0, dst1 = dinp[c0, h, x], dinp[c1, h, x]
                dst0[:] = _ZERO
                dst1[:] = _ZERO
                for kh in range(max(0, h - OH + 1), min(KH, h + 1)):
                    for kw in range(max(0, x - OW + 1), min(KW, x + 1)):
                        i, j = h - kh, x - kw
                        for oc in range(0, OC, _TAPS):
                            oc_end = min(oc + _TAPS, OC)
                            r0, r1, r2, r3, r4 = _five_indices(oc, oc_end - 1)
                            _madd_rows(dst0, dst1, _five(weight[oc:oc_end, c0, kh, kw]),
                                       _five(weight[oc:oc_end, c1, kh, kw]),
                                       (dout[r0, i, j], dout[r1, i, j], dout[r2, i, j],
                                        dout[r3, i, j], dout[r4, i, j]), c1 != c0)
    # dweight[oc,c,kh,kw] = sum over i, j, n of dout[oc,i,j,n] * inp[c,i+kh,j+kw,n]: for fixed
    # (i, kw) the (j, n) pairs are one contiguous stretch of both rows, so ten dot products of
    # length OW*N (two output channels, five kw) share their loads; a task owns (oc pair, c, kh)
    for task in prange((OC + 1) // 2 * C * KH):
        oc0, rest = task // (C * KH) * 2, task % (C * KH)
        c, kh = rest // KH, rest % KH
        oc1 = min(oc0 + 1, OC - 1)
        length = OW * N
        for kw in range(0, KW, _TAPS):
            k0, k1, k2, k3, k4 = _five_indices(kw, min(kw + _TAPS, KW) - 1)
            a0 = a1 = a2 = a3 = a4 = b0 = b1 = b2 = b3 = b4 = _ZERO
            for i in range(OH):
                grad0, grad1 = dout[oc0, i].ravel(), dout[oc1, i].ravel()  # (OW*N,)
                row = inp[c, i + kh].ravel()  # (W*N,): tap kw starts at kw*N
                x0, x1 = row[k0 * N:k0 * N + length], row[k1 * N:k1 * N + length]
                x2, x3 = row[k2 * N:k2 * N + length], row[k3 * N:k3 * N + length]
                x4 = row[k4 * N:k4 * N + length]
                for m in range(length):
                    g0, g1 = grad0[m], grad1[m]
                    a0 += g0 * x0[m]
                    a1 += g0 * x1[m]
                    a2 += g0 * x2[m]
                    a3 += g0 * x3[m]
                    a4 += g0 * x4[m]
                    b0 += g1 * x0[m]
                    b1 += g1 * x1[m]
                    b2 += g1 * x2[m]
                    b3 += g1 * x3[m]
                    b4 += g1 * x4[m]
            sums0, sums1 = (a0, a1, a2, a3, a4), (b0, b1, b2, b3, b4)
            for t in range(min(_TAPS, KW - kw)):
                dweight[oc0, c, kh, kw + t] = sums0[t]
                dweight[oc1, c, kh, kw + t] = sums1[t]  # the same sums again when oc1 == oc0
    # dbias[oc] = sum over i, j, n of dout[oc,i,j,n]
    for oc in prange(OC):
        acc = _ZERO
        grad = dout[oc].ravel()
        for m in range(grad.size):
            acc += grad[m]
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
