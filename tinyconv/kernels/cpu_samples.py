"""The small-batch inference kernel: a whole network's eval-mode forward, one sample at a time.

At a few images per call, the batch-last kernels (cpu.py) run inner loops only N long and
pay a parallel launch per layer, a dozen of them for LeNet-5: the call costs several times
its arithmetic (bench/infer.py measures both paths). Here one call runs every layer: each
prange iteration takes one sample through the whole network, in its own row of a scratch
array, channel-first (C,H,W) as torch lays out one sample, so that the inner loops run along
image rows and feature vectors instead of along the batch. tinyconv.nn.SamplePlan builds the
plan (a table of steps, each an op code with its offsets and sizes) once per network, fusing
activations and poolings into the step before them, and Sequential.forward uses this kernel
in eval mode below SAMPLES_BELOW images; the batch-last path stays the oracle the tests hold
it to (tests/test_samples.py).

A step is a row of `plan` (int64): OP, SRC, DST, A, B, WORK, S0..S5, ACT, POOL, K, ACT2.
SRC and DST are offsets into one sample's scratch row; A and B offsets into the flat
parameters (the weight and the bias; for ADD, A is the second input's offset in the scratch
row); WORK a scratch offset for a convolution's wide output (for batch norm, the running
statistics' offset in `state`, the buffers copied in per call); S0..S5 the op's sizes; ACT
the activation applied as the step stores its output (NONE, TANH, RELU, SILU). A
convolution's step may also pool (POOL the pooling's op code, K its window) and then apply
ACT2: conv -> tanh -> avgpool -> tanh is one step, which never stores the unpooled image.
`eps` holds one float per step (batch norm's).

Deterministic: each sample is one iteration, computed in a fixed order, so its logits do not
depend on the thread count or on the other samples of the batch. float32 throughout.
The helpers come from cpu.py: Numba's cache of this file does not see a change there, so
after editing cpu.py's helpers, delete tinyconv/kernels/__pycache__ (a fresh checkout, as CI's,
compiles everything anyway).
"""

import numpy as np
from numba import njit, prange

from tinyconv.kernels.cpu import (
    _CALLED,
    _HELPER,
    _JIT,
    _ONE,
    _TAPS,
    _ZERO,
    _five_rows,
    _five_weights,
    _madd_rows,
    _sigmoid32,
    _tanh32,
)

# Copies are element loops, not slice assignments: an array-to-array slice assignment brings
# Numba's shape-mismatch error path, which formats the shapes in float64 (the IR scan's
# false alarm) and costs more than these short copies.

SAMPLES_BELOW = 24  # batch sizes below it take this kernel: LeNet-5's crossover (bench/infer.py)

# the op codes of a plan's steps, and of the activation each step may apply as it stores
OPS = {"conv2d": 1, "linear": 2, "avgpool2d": 3, "maxpool2d": 4, "pad2d": 5, "batchnorm": 6,
       "add": 7, "activation": 8}
ACTIVATIONS = {"none": 0, "tanh": 1, "relu": 2, "silu": 3}
# a row's columns
OP, SRC, DST, A, B, WORK, S0, S1, S2, S3, S4, S5, ACT, POOL, K, ACT2 = range(16)
COLUMNS = 16

_CONV, _LINEAR, _AVGPOOL, _MAXPOOL, _PAD, _BATCHNORM, _ADD, _ACTIVATION = (
    OPS[name] for name in ("conv2d", "linear", "avgpool2d", "maxpool2d", "pad2d", "batchnorm",
                           "add", "activation"))
_TANH, _RELU, _SILU = (ACTIVATIONS[name] for name in ("tanh", "relu", "silu"))


@njit(**_CALLED)
def _activate(s, start, count, act):
    # s[start:start + count] through the step's activation, in place: the functions of
    # cpu.py's kernels, one loop per kind so that each vectorises
    x = s[start:start + count]
    if act == _TANH:
        for i in range(count):
            x[i] = _tanh32(x[i])
    elif act == _RELU:
        for i in range(count):
            x[i] = x[i] if x[i] > _ZERO or x[i] != x[i] else _ZERO  # NaN passes, as torch's
    elif act == _SILU:
        for i in range(count):
            x[i] = x[i] * _sigmoid32(x[i])


@njit(**_HELPER)
def _madd_five_shifts(dst0, dst1, x, w0, w1, pair):
    # dst0 (L,) += sum over t < 5 of w0[t] * x[p + t] at each p, likewise dst1 with w1 when
    # pair is true: cpu._madd_rows's register blocking, for five rows that are one row (L+4,)
    # at five shifts. One row and constant shifts: LLVM checks one pointer against the
    # outputs before its vector loop instead of five, and conv2's short passes (136 values)
    # run 1.3x faster (variable shifts, as a clamp for fewer taps would need, do not vectorise)
    a0, a1, a2, a3, a4 = w0
    b0, b1, b2, b3, b4 = w1
    if pair:
        for p in range(dst0.size):
            v0, v1, v2, v3, v4 = x[p], x[p + 1], x[p + 2], x[p + 3], x[p + 4]
            dst0[p] += a0 * v0 + a1 * v1 + a2 * v2 + a3 * v3 + a4 * v4
            dst1[p] += b0 * v0 + b1 * v1 + b2 * v2 + b3 * v3 + b4 * v4
    else:
        for p in range(dst0.size):
            dst0[p] += a0 * x[p] + a1 * x[p + 1] + a2 * x[p + 2] + a3 * x[p + 3] + a4 * x[p + 4]


@njit(**_CALLED)
def _conv2d(s, src, dst, work, w, b, C, H, W, OC, KH, KW, act, pool, k, act2):
    # s[src:] (C,H,W) -> s[dst:] (OC,OH,OW): an unpadded convolution, its activation, and if
    # pool is an op code, that pooling of k x k windows and its activation act2, fused
    # (dst (OC,OH/k,OW/k) then). Computed "wide": output position (i, j) is at i*W + j of a
    # stretch of L = (OH-1)*W + OW values per channel at work, so the inputs of tap
    # (c, kh, kw) are one contiguous stretch, at c*H*W + kh*W + kw, and the taps go five along
    # kw (for a kernel width not a multiple of five, along c), two channels a pass. The W-OW
    # positions past each row's end are computed and never read: the pooling reads the wide
    # rows in place, and without one they are compacted away.
    OH, OW = H - KH + 1, W - KW + 1
    L = (OH - 1) * W + OW
    for oc0 in range(0, OC, 2):
        oc1 = min(oc0 + 1, OC - 1)
        dst0, dst1 = s[work + oc0 * L:work + (oc0 + 1) * L], s[work + oc1 * L:work + (oc1 + 1) * L]
        dst0[:] = b[oc0]
        dst1[:] = b[oc1]
        w0, w1 = w[oc0 * C * KH * KW:], w[oc1 * C * KH * KW:]
        if KW % _TAPS == 0:  # five taps along kw, each group within the window: LeNet's 5x5
            for c in range(C):
                for kh in range(KH):
                    for kw in range(0, KW, _TAPS):
                        tap, start = (c * KH + kh) * KW + kw, src + (c * H + kh) * W + kw
                        _madd_five_shifts(dst0, dst1, s[start:start + L + _TAPS - 1],
                                          _five_weights(w0, tap, 1, _TAPS),
                                          _five_weights(w1, tap, 1, _TAPS), oc1 != oc0)
        else:  # five taps along c, as cpu.conv2d_forward does for a 3x3
            for kh in range(KH):
                for kw in range(KW):
                    for c in range(0, C, _TAPS):
                        taps = min(_TAPS, C - c)
                        tap = (c * KH + kh) * KW + kw
                        rows = _five_rows(s, src + (c * H + kh) * W + kw, H * W, taps, L)
                        _madd_rows(dst0, dst1, _five_weights(w0, tap, KH * KW, taps),
                                   _five_weights(w1, tap, KH * KW, taps), rows, oc1 != oc0)
    _activate(s, work, OC * L, act)  # one long loop; the unread positions too, harmlessly
    if pool == _AVGPOOL:
        _avgpool2d(s, work, dst, OC, OH, OW, W, L, k, act2)
    elif pool == _MAXPOOL:
        _maxpool2d(s, work, dst, OC, OH, OW, W, L, k, act2)
    else:
        for row in range(OC * OH):  # (oc, i)
            wide, out = work + row // OH * L + row % OH * W, dst + row * OW
            for j in range(OW):
                s[out + j] = s[wide + j]


@njit(**_CALLED)
def _linear(s, src, dst, w, b, IN, OUT, act):
    # s[src:] (IN,) -> s[dst:] (OUT,) = w (OUT,IN) @ x + b: dot products along IN, two rows of
    # w a pass sharing the loads of x
    x = s[src:src + IN]
    for o0 in range(0, OUT, 2):
        o1 = min(o0 + 1, OUT - 1)
        w0, w1 = w[o0 * IN:(o0 + 1) * IN], w[o1 * IN:(o1 + 1) * IN]
        acc0, acc1 = _ZERO, _ZERO
        for i in range(IN):
            acc0 += w0[i] * x[i]
            acc1 += w1[i] * x[i]
        s[dst + o0], s[dst + o1] = acc0 + b[o0], acc1 + b[o1]
    _activate(s, dst, OUT, act)


# The poolings read an image whose rows lie `row` floats apart and channels `channel` floats
# apart: (W, H*W) for a plain (C,H,W), (W, L) for a convolution's wide output.


@njit(**_CALLED)
def _avgpool2d(s, src, dst, C, H, W, row, channel, k, act):
    # s[src:] (C,H,W) -> s[dst:] (C,H/k,W/k): each k x k window's mean, an output row at a
    # time (summed in cpu.avgpool2d_forward's order: the window row-major)
    OH, OW = H // k, W // k
    scale = _ONE / np.float32(k * k)
    for out_row in range(C * OH):  # (c, i): window rows i*k to i*k + k-1 of channel c
        out, top = dst + out_row * OW, src + out_row // OH * channel + out_row % OH * k * row
        if k == 2:  # LeNet's: a loop along the row that vectorises, 3.4x the loop below
            for j in range(OW):
                s[out + j] = (s[top + 2 * j] + s[top + 2 * j + 1] + s[top + row + 2 * j]
                              + s[top + row + 2 * j + 1]) * scale
            continue
        for j in range(OW):
            s[out + j] = _ZERO
        for a in range(k):
            for t in range(k):
                for j in range(OW):
                    s[out + j] += s[top + a * row + j * k + t]
        for j in range(OW):
            s[out + j] *= scale
    _activate(s, dst, C * OH * OW, act)


@njit(**_CALLED)
def _maxpool2d(s, src, dst, C, H, W, row, channel, k, act):
    # s[src:] (C,H,W) -> s[dst:] (C,H/k,W/k): each k x k window's maximum, a NaN winning as
    # in cpu.maxpool2d_forward
    OH, OW = H // k, W // k
    for out_row in range(C * OH):
        out, top = dst + out_row * OW, src + out_row // OH * channel + out_row % OH * k * row
        for j in range(OW):
            s[out + j] = s[top + j * k]
        for a in range(k):
            for t in range(k):
                for j in range(OW):
                    x = s[top + a * row + j * k + t]
                    s[out + j] = x if x > s[out + j] or x != x else s[out + j]
    _activate(s, dst, C * OH * OW, act)


@njit(**_HELPER)
def _pad2d(s, src, dst, C, H, W, p):
    # s[src:] (C,H,W) -> s[dst:] (C,H+2p,W+2p): the input in the middle, zeros around
    PH, PW = H + 2 * p, W + 2 * p
    s[dst:dst + C * PH * PW] = _ZERO
    for c in range(C):
        for h in range(H):
            start = dst + (c * PH + h + p) * PW + p
            for w in range(W):
                s[start + w] = s[src + (c * H + h) * W + w]


@njit(**_HELPER)
def _batchnorm(s, src, dst, weight, bias, running_mean, running_var, C, M, eps, act):
    # s[src:] (C,M) normalised by the running statistics, as cpu_blocks.batchnorm_eval_forward
    for c in range(C):
        inv = _ONE / np.sqrt(running_var[c] + eps)
        scale, mu, shift = inv * weight[c], running_mean[c], bias[c]
        for m in range(M):
            s[dst + c * M + m] = (s[src + c * M + m] - mu) * scale + shift
    _activate(s, dst, C * M, act)


@njit(**_CALLED)
def _sample_forward(s, params, state, plan, eps):
    # one sample through every step of the plan, in its scratch row s
    for step in range(plan.shape[0]):
        op, src, dst, a, b, work, s0, s1, s2, s3, s4, s5, act, pool, k, act2 = plan[step]
        if op == _CONV:
            _conv2d(s, src, dst, work, params[a:], params[b:], s0, s1, s2, s3, s4, s5, act,
                    pool, k, act2)
        elif op == _LINEAR:
            _linear(s, src, dst, params[a:], params[b:], s0, s1, act)
        elif op == _AVGPOOL:
            _avgpool2d(s, src, dst, s0, s1, s2, s2, s1 * s2, s3, act)
        elif op == _MAXPOOL:
            _maxpool2d(s, src, dst, s0, s1, s2, s2, s1 * s2, s3, act)
        elif op == _PAD:
            _pad2d(s, src, dst, s0, s1, s2, s3)
        elif op == _BATCHNORM:
            _batchnorm(s, src, dst, params[a:], params[b:], state[work:], state[work + s0:],
                       s0, s1, eps[step], act)
        elif op == _ADD:
            for i in range(s0):
                s[dst + i] = s[src + i] + s[a + i]
            _activate(s, dst, s0, act)
        else:  # _ACTIVATION
            for i in range(s0):
                s[dst + i] = s[src + i]
            _activate(s, dst, s0, act)


@njit(**_JIT)
def sequential_forward(out, scratch, inp, params, state, plan, eps, out_start):
    # inp (N,IN) batch-first, scratch (N,S), params (P,), state (Q,), plan (steps, COLUMNS),
    # eps (steps,) -> out (N,V): sample n's input is copied to scratch[n, :IN], the plan runs,
    # and its output is read from scratch[n, out_start:out_start + V]
    N, IN = inp.shape
    V = out.shape[1]
    for n in prange(N):
        s = scratch[n]
        for i in range(IN):
            s[i] = inp[n, i]
        _sample_forward(s, params, state, plan, eps)
        for v in range(V):
            out[n, v] = s[out_start + v]
