"""Numba CPU kernels of the modern blocks: batch norm, dropout, padding and the residual's sum.

The same layout and contract as cpu.py (whose module docstring says them in full): batch-last
C-contiguous float32 arrays, outputs first, then what the forward saved, then inputs, then
parameters, then sizes; kernels allocate, check and return nothing; every backward
OVERWRITES its outputs. The one kernel that sums two tensors, where the contract needs a sum
(a residual's skip, in both directions), is `add`. Letters as in cpu.py, and M the values of
one channel in a batch (H*W*N, or N for features).

Deterministic as cpu.py's: a prange iteration owns what it writes (a channel, a row, a stretch
of elements) and sums in a fixed order.
"""

import numpy as np
from numba import njit, prange

from tinyconv.kernels.cpu import _HELPER, _JIT, _ONE, _SPAN, _ZERO

_TWO = np.float32(2.0)
_UNIT = np.float32(1.0 / 4294967296.0)  # 2^-32: a uint32 as a fraction of [0, 1]

# ---- pad2d: Conv2d(padding=p) pads its input into a buffer of its own, then runs the
# unpadded kernels (a copy costs far less than the convolution it feeds, and the unpadded
# path, LeNet's, stays as it was)


@njit(**_JIT)
def pad2d_forward(out, inp, p):
    # inp (C,H,W,N) -> out (C,H+2p,W+2p,N): inp in the middle, zeros around
    C, H, W, N = inp.shape
    PH = H + 2 * p
    for row in prange(C * PH):
        c, h = row // PH, row % PH
        dst = out[c, h].ravel()  # ((W+2p)*N,): one padded row, its samples innermost
        if h < p or h >= p + H:
            dst[:] = _ZERO
        else:
            dst[:p * N] = _ZERO
            dst[p * N:(p + W) * N] = inp[c, h - p].ravel()
            dst[(p + W) * N:] = _ZERO


@njit(**_JIT)
def pad2d_backward(dinp, dout, p):
    # overwrites dinp (C,H,W,N) with the middle of dout (C,H+2p,W+2p,N): the border's
    # gradient belongs to no input
    C, H, W, N = dinp.shape
    for row in prange(C * H):
        c, h = row // H, row % H
        dinp[c, h].ravel()[:] = dout[c, h + p].ravel()[p * N:(p + W) * N]


# ---- add


@njit(**_JIT)
def add(out, a, b):
    # out = a + b, all (L,) (any tensor's flat view); out may be a or b
    for idx in prange(out.size):
        out[idx] = a[idx] + b[idx]


# ---- batchnorm: each channel's values are one contiguous row of the (C, M) view the layer
# passes, so a prange iteration owns a channel and its sums run over a row


@njit(**_HELPER)
def _row_sum(row, shift, squared):
    # sum of (row - shift), or of its squares, over a (M,) row, in float32, stretch by
    # stretch: a stretch of _SPAN values sums in vector lanes, then the stretches add up, so
    # no one accumulator takes more than a few thousand terms
    total = _ZERO
    for start in range(0, row.size, _SPAN):
        part = _ZERO
        for m in range(start, min(start + _SPAN, row.size)):
            d = row[m] - shift
            part += d * d if squared else d
        total += part
    return total


@njit(**_HELPER)
def _normalise_row(dst, src, mean, gain, bias):
    # dst (M,) = (src - mean) * gain + bias, gain = invstd * weight
    for m in range(src.size):
        dst[m] = (src[m] - mean) * gain + bias


@njit(**_JIT)
def batchnorm_forward(out, mean, invstd, running_mean, running_var, num_batches_tracked, inp,
                      weight, bias, momentum, eps):
    # training mode: inp (C,M), weight, bias (C,) -> out (C,M); saves mean, invstd (C,);
    # updates running_mean, running_var (C,) and num_batches_tracked (1,) int64 in place.
    # Each channel: its batch mean, its biased variance (two passes: the squared deviations
    # from the mean, not E[x^2] - mean^2, which cancels), out = (x - mean) * invstd * w + b;
    # the running statistics move momentum of the way to the mean and the UNBIASED variance,
    # as torch's (M >= 2: the layer refuses a single value per channel in training).
    C, M = inp.shape
    count = np.float32(M)
    for c in prange(C):
        row = inp[c]
        mu = _row_sum(row, _ZERO, False) / count
        var = _row_sum(row, mu, True) / count
        inv = _ONE / np.sqrt(var + eps)
        mean[c], invstd[c] = mu, inv
        running_mean[c] = (_ONE - momentum) * running_mean[c] + momentum * mu
        running_var[c] = ((_ONE - momentum) * running_var[c]
                          + momentum * (var * count / np.float32(M - 1)))
        _normalise_row(out[c], row, mu, inv * weight[c], bias[c])
    num_batches_tracked[0] += 1


@njit(**_JIT)
def batchnorm_eval_forward(out, mean, invstd, inp, running_mean, running_var, weight, bias,
                           eps):
    # eval mode: inp (C,M) normalised by the running statistics (C,) -> out (C,M); saves
    # mean = running_mean and invstd = 1 / sqrt(running_var + eps), as the training forward
    # does its batch's, so that one backward reads both
    C = inp.shape[0]
    for c in prange(C):
        mu, inv = running_mean[c], _ONE / np.sqrt(running_var[c] + eps)
        mean[c], invstd[c] = mu, inv
        _normalise_row(out[c], inp[c], mu, inv * weight[c], bias[c])


@njit(**_JIT)
def batchnorm_backward(dinp, dweight, dbias, dout, inp, mean, invstd, weight, batch_stats):
    # overwrites dinp (C,M) unless it is None (a network's input), dweight, dbias (C,);
    # dout (C,M); inp (C,M), mean, invstd (C,) saved by the forward.
    # xhat = (x - mean) * invstd; dbias = sum dout; dweight = sum dout * xhat. With
    # batch_stats (training), the mean and variance are functions of the batch, and
    # dinp = w * invstd * (dout - dbias / M - xhat * dweight / M); without (eval), they are
    # constants and dinp = dout * w * invstd.
    C, M = inp.shape
    count = np.float32(M)
    for c in prange(C):
        x, g = inp[c], dout[c]
        mu, inv = mean[c], invstd[c]
        total, total_xhat = _ZERO, _ZERO
        for start in range(0, M, _SPAN):  # stretch by stretch, as _row_sum
            part, part_xhat = _ZERO, _ZERO
            for m in range(start, min(start + _SPAN, M)):
                part += g[m]
                part_xhat += g[m] * ((x[m] - mu) * inv)
            total += part
            total_xhat += part_xhat
        dbias[c], dweight[c] = total, total_xhat
        if dinp is not None:
            gain = weight[c] * inv
            dst = dinp[c]
            if batch_stats:
                shift, slope = total / count, total_xhat / count
                for m in range(M):
                    dst[m] = gain * (g[m] - shift - (x[m] - mu) * inv * slope)
            else:
                for m in range(M):
                    dst[m] = g[m] * gain


# ---- dropout: the mask is a hash of (seed, step, element index), recomputed in the backward:
# no mask is stored, and the bits are the same on every backend and thread count

_MIX1 = np.uint32(0x7FEB352D)
_MIX2 = np.uint32(0x846CA68B)
_GOLDEN = np.uint32(0x9E3779B9)
_S15, _S16 = np.uint32(15), np.uint32(16)


@njit(**_HELPER)
def _mix32(x):
    # Wellons' lowbias32 on uint32. Numba widens uint32 arithmetic to 64 bits: each step is
    # cut back to 32 (which LLVM then computes in 32-bit lanes)
    x = np.uint32(x ^ (x >> _S16))
    x = np.uint32(x * _MIX1)
    x = np.uint32(x ^ (x >> _S15))
    x = np.uint32(x * _MIX2)
    return np.uint32(x ^ (x >> _S16))


@njit(**_JIT)
def elastic_noise(out, seed):
    # out (L,) = uniform noise in [-1, 1] (the data pipeline's elastic fields): element i's
    # value hashes (seed, i), so a batch's field is a function of the seed alone, whatever
    # the thread count
    key = _mix32(np.uint32(seed))
    for i in prange(out.size):
        bits = _mix32(np.uint32(np.uint32(i) ^ key))
        out[i] = _TWO * (np.float32(bits) * _UNIT) - _ONE


@njit(**_JIT)
def _masked_scale(out, inp, threshold, scale, seed, step):
    # out (L,) = inp * scale where the element's bits reach threshold, else inp * 0 (a product,
    # as torch's: a dropped inf or NaN gives NaN). bits(i) = mix32(mix32(i ^ key1) + key2)
    key1 = _mix32(np.uint32(_mix32(seed) ^ step))
    key2 = _mix32(np.uint32(key1 ^ _GOLDEN))
    for idx in prange(out.size):
        bits = _mix32(np.uint32(_mix32(np.uint32(np.uint32(idx) ^ key1)) + key2))
        out[idx] = inp[idx] * (scale if bits >= threshold else _ZERO)


@njit(cache=True)  # no loop of its own: _masked_scale is parallel
def dropout_forward(out, inp, threshold, scale, seed, step):
    # inp (L,) -> out (L,): inverted dropout, kept elements scaled by 1/(1-p) (scale), the
    # dropped (bits below threshold = round(p * 2^32)) zeroed; threshold, seed, step uint32
    _masked_scale(out, inp, threshold, scale, seed, step)


@njit(cache=True)
def dropout_backward(dinp, dout, threshold, scale, seed, step):
    # overwrites dinp (L,) = dout through the forward's mask, found again from the same hash
    _masked_scale(dinp, dout, threshold, scale, seed, step)
