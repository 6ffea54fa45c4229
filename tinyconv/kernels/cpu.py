"""Numba CPU kernels: float32, parallel, batch-last, one flat function per op and direction.

Letters: N batch, C input channels, OC output channels, H/W input height and width,
OH/OW output height and width, KH/KW kernel height and width, k pooling window,
IN/OUT linear features, V classes, P parameter count, L the length of one pass.

Layout: the batch is the LAST axis of every activation: images (C,H,W,N), features (IN,N),
logits (V,N), all C-contiguous (the Sequential's buffers are: ravel() is a view only of a
contiguous array, and writes into the copy it makes of any other would be lost). The samples
of one pixel are then contiguous, and so are the (position, sample) pairs of a stretch of an
image row: every inner loop runs over such a stretch, a vector FMA per 16 floats (AVX-512; 8
with AVX2), with its weights held in registers. Measured at batch 128 against the same loops
in NCHW: conv2 forward 11 ms -> 1.6 ms, conv3 forward (a 1x1 output, so a 1-long inner loop
in NCHW) 27 ms -> 0.2 ms. Weights keep torch's layout.
tinyconv.nn.Sequential transposes the NCHW input once per batch and the logits once back.

The contract (DESIGN.md section 3): outputs first, then what the forward saved, then inputs,
then parameters, then sizes. Kernels allocate nothing, check nothing (tinyconv.nn checks the
shapes when a network is built, and its inputs at each call) and return nothing.
Every backward OVERWRITES its outputs; none accumulates.

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
# serial code: a kernel too small for threads, or a helper that numba's parfor analysis cannot
# take inlined (it trips over its tuples): called, and left for LLVM to inline
_CALLED = dict(fastmath={"reassoc", "contract"}, error_model="numpy", cache=True)

_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
_HALF = np.float32(0.5)

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
# one core here, bound by memory traffic. The conv and linear kernels instead update two output
# rows from five input rows in one pass (_madd_rows): 7 loads and 2 stores feed 10 FMAs, with
# the ten weights held in registers; convolutions' weight gradients take ten dot products
# that share their loads (_madd_dots), a linear layer's passes along its transposed input's
# rows (_madd_taps again, five samples a pass). Measured 2-3x faster per op on the LeNet
# shapes. (Four output rows per pass measured 60% faster in a bare loop, but 5-20% slower
# inside the conv kernels, even once the rows were read only once per element; conv2 forward
# 0.40 against 0.34 ms.)
# These loops run at the FMA units' peak only on 64-byte aligned rows, as the model's are at
# batch sizes that are multiples of 16 (kernels.host): a vector load that straddles two cache
# lines costs two, and with 7 loads per 10 FMAs that is the bottleneck (conv2 forward 189 ->
# 161 GFLOP/s off by 16 bytes).
# Output rows go in pairs, so an odd last row runs alone; taps go in fives (a kernel row of
# LeNet's 5x5, or five channels), so a shorter last group is padded with zero weights, and
# an infinite input there turns into NaN (0 * inf) where it would have stayed infinite (but
# for the lone tap of a convolution's input gradient, which has a pass of its own).
_TAPS = 5
_SPAN = 2048  # values per pass (or N, if larger): long passes amortise their setup; 2048
# measured 10% faster than 512 on conv2


@njit(**_HELPER)
def _five_weights(flat, start, stride, count):
    # flat[start + t*stride] for t < count (1 to 5), zeros after: one tap group's weights
    last = start + (count - 1) * stride
    return (flat[start],
            flat[min(start + stride, last)] * np.float32(count > 1),
            flat[min(start + 2 * stride, last)] * np.float32(count > 2),
            flat[min(start + 3 * stride, last)] * np.float32(count > 3),
            flat[min(start + 4 * stride, last)] * np.float32(count > 4))


@njit(**_HELPER)
def _five_rows(flat, start, stride, count, length):
    # the stretches flat[start + t*stride:][:length] for t < count (1 to 5), the last repeated
    # after (its weight is zero): one tap group's inputs
    last = start + (count - 1) * stride
    s1, s2 = min(start + stride, last), min(start + 2 * stride, last)
    s3, s4 = min(start + 3 * stride, last), min(start + 4 * stride, last)
    return (flat[start:start + length], flat[s1:s1 + length], flat[s2:s2 + length],
            flat[s3:s3 + length], flat[s4:s4 + length])


@njit(**_HELPER)
def _madd_rows(dst0, dst1, w0, w1, rows, pair):
    # dst0 (L,) += sum over t of w0[t] * rows[t] (L,), for 5 weights and rows; likewise dst1 with
    # w1 when pair is true (dst1 is then another row than dst0, and is ignored otherwise)
    x0, x1, x2, x3, x4 = rows
    a0, a1, a2, a3, a4 = w0
    b0, b1, b2, b3, b4 = w1
    if pair:
        for n in range(dst0.size):
            # read once into locals: written as x0[n] in each line, LLVM, unable to rule out
            # that dst0 overlaps the rows, loads all five again after storing dst0[n] (12
            # loads for 10 FMAs instead of 7, measured 1.2x slower on conv2)
            v0, v1, v2, v3, v4 = x0[n], x1[n], x2[n], x3[n], x4[n]
            dst0[n] += a0 * v0 + a1 * v1 + a2 * v2 + a3 * v3 + a4 * v4
            dst1[n] += b0 * v0 + b1 * v1 + b2 * v2 + b3 * v3 + b4 * v4
    else:
        for n in range(dst0.size):
            dst0[n] += a0 * x0[n] + a1 * x1[n] + a2 * x2[n] + a3 * x3[n] + a4 * x4[n]


@njit(**_HELPER)
def _madd_row(dst0, dst1, a, b, x, pair):
    # dst0 (L,) += a * x (L,), likewise dst1 with b when pair is true: one tap
    if pair:
        for n in range(dst0.size):
            v = x[n]
            dst0[n] += a * v
            dst1[n] += b * v
    else:
        for n in range(dst0.size):
            dst0[n] += a * x[n]


@njit(**_HELPER)
def _madd_taps(dst0, dst1, w, start0, start1, w_step, x, x_start, x_step, taps, pair):
    # dst0 (L,) += sum over t < taps (1 to 5) of w[start0 + t*w_step] * x[x_start + t*x_step:]
    # [:L], likewise dst1 with the weights from start1 when pair is true: one tap group in
    # _madd_rows' register-blocked pass, zero weights after a shorter group's last tap
    _madd_rows(dst0, dst1, _five_weights(w, start0, w_step, taps),
               _five_weights(w, start1, w_step, taps),
               _five_rows(x, x_start, x_step, taps, dst0.size), pair)


@njit(**_CALLED)
def _madd_dots(sums0, sums1, grad0, grad1, rows):
    # sums0[t] + grad0 . rows[t] and sums1[t] + grad1 . rows[t] for t < 5, over (L,) vectors:
    # ten dot products sharing each pass's 7 loads
    a0, a1, a2, a3, a4 = sums0
    b0, b1, b2, b3, b4 = sums1
    x0, x1, x2, x3, x4 = rows
    for m in range(grad0.size):
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
    return (a0, a1, a2, a3, a4), (b0, b1, b2, b3, b4)


@njit(**_HELPER)
def _conv2d_stretch(dst0, dst1, x, w, bias, oc0, oc1, i, j, length, C, H, W, N, KH, KW):
    # y (OC,OH,OW,N) flat, at output row i from position j on, `length` values of channels
    # oc0 and oc1 (the same stretch twice where oc1 == oc0): the bias plus every tap of inp
    # (C,H,W,N) flat x and weight (OC,C,KH,KW) flat w, into dst0 and dst1
    dst0[:] = bias[oc0]
    dst1[:] = bias[oc1]
    if KW >= _TAPS:  # five taps along kw: LeNet's 5x5 rows
        for c in range(C):
            for kh in range(KH):
                for kw in range(0, KW, _TAPS):
                    taps = min(_TAPS, KW - kw)
                    tap = ((c * KH) + kh) * KW + kw  # in weight[oc], stepping along kw
                    _madd_taps(dst0, dst1, w, oc0 * C * KH * KW + tap, oc1 * C * KH * KW + tap,
                               1, x, ((c * H + i + kh) * W + j + kw) * N, N, taps, oc1 != oc0)
    else:  # a narrower kernel (3x3) would pad each group of kw taps with zeros: five taps
        # along c instead (3x3, 16 channels: 1.5x faster)
        for kh in range(KH):
            for kw in range(KW):
                for c in range(0, C, _TAPS):
                    taps = min(_TAPS, C - c)
                    tap = ((c * KH) + kh) * KW + kw  # in weight[oc], stepping along c
                    _madd_taps(dst0, dst1, w, oc0 * C * KH * KW + tap, oc1 * C * KH * KW + tap,
                               KH * KW, x, ((c * H + i + kh) * W + j + kw) * N, H * W * N, taps,
                               oc1 != oc0)


@njit(**_JIT)
def conv2d_forward(out, inp, weight, bias):
    # inp (C,H,W,N), weight (OC,C,KH,KW), bias (OC,) -> out (OC,OH,OW,N), OH=H-KH+1, OW=W-KW+1
    # out[oc,i,j,n] = bias[oc] + sum over c, kh, kw of weight[oc,c,kh,kw] * inp[c,i+kh,j+kw,n].
    # For fixed (c, kh, kw), a stretch of output positions (j, n) reads one contiguous stretch
    # of inp's row (c, i+kh), kw positions on; each pass covers up to _SPAN values of it. A task
    # owns a pair of output channels in one output row; the taps go five along kw.
    C, H, W, N = inp.shape
    OC, _, KH, KW = weight.shape
    OH, OW = H - KH + 1, W - KW + 1
    x, w, y = inp.ravel(), weight.ravel(), out.ravel()
    span = max(1, _SPAN // N)  # output positions per pass
    for task in prange((OC + 1) // 2 * OH):
        oc0, i = task // OH * 2, task % OH
        oc1 = min(oc0 + 1, OC - 1)
        for j in range(0, OW, span):
            length = (min(j + span, OW) - j) * N
            start0, start1 = ((oc0 * OH + i) * OW + j) * N, ((oc1 * OH + i) * OW + j) * N
            _conv2d_stretch(y[start0:start0 + length], y[start1:start1 + length], x, w, bias,
                            oc0, oc1, i, j, length, C, H, W, N, KH, KW)


@njit(**_CALLED)
def _tanh_in_place(x):
    # x (L,) = tanh(x); called, not inlined: the fused kernel's three tanh loops are then
    # one compile (its cold start)
    for m in range(x.size):
        x[m] = _tanh32(x[m])


@njit(**_CALLED)
def _pool2_tanh(out, top0, top1, low0, low1):
    # out (N,) = tanh of the mean of a 2x2 window's four (N,) values, summed in
    # avgpool2d_forward's order (the window row-major)
    scale = _ONE / np.float32(4)
    for n in range(out.size):
        out[n] = _tanh32((top0[n] + top1[n] + low0[n] + low1[n]) * scale)


@njit(**_JIT)
def conv2d_tanh_avgpool2d_tanh_forward(out, act, inp, weight, bias):
    # inp (C,H,W,N), weight (OC,C,KH,KW), bias (OC,) -> act (OC,OH,OW,N) = tanh(conv2d), which
    # the backward reads, and out (OC,OH/2,OW/2,N) = tanh(avgpool2d(act, 2)); OH and OW even.
    # LeNet-5's conv blocks in one pass: conv2d_forward's stretches, two output rows at a
    # time (a row of pooling windows), each through tanh and pooled while in cache; the same
    # sums in the same order as the four kernels one after another
    C, H, W, N = inp.shape
    OC, _, KH, KW = weight.shape
    OH, OW = H - KH + 1, W - KW + 1
    x, w, y = inp.ravel(), weight.ravel(), act.ravel()
    span = max(1, _SPAN // N // 2) * 2  # output positions per pass: whole windows
    for task in prange((OC + 1) // 2 * (OH // 2)):
        oc0, i = task // (OH // 2) * 2, task % (OH // 2) * 2
        oc1 = min(oc0 + 1, OC - 1)
        for j in range(0, OW, span):
            end = min(j + span, OW)
            length = (end - j) * N
            for row in range(i, i + 2):
                start0 = ((oc0 * OH + row) * OW + j) * N
                start1 = ((oc1 * OH + row) * OW + j) * N
                dst0, dst1 = y[start0:start0 + length], y[start1:start1 + length]
                _conv2d_stretch(dst0, dst1, x, w, bias, oc0, oc1, row, j, length, C, H, W, N,
                                KH, KW)
                _tanh_in_place(dst0)
                if oc1 != oc0:
                    _tanh_in_place(dst1)
            for oc in range(oc0, oc1 + 1):
                for jj in range(j, end, 2):
                    _pool2_tanh(out[oc, i // 2, jj // 2], act[oc, i, jj], act[oc, i, jj + 1],
                                act[oc, i + 1, jj], act[oc, i + 1, jj + 1])


@njit(cache=True)  # no loop of its own: its two parts are parallel
def conv2d_backward(dinp, dweight, dbias, dout, inp, weight):
    # overwrites dinp (C,H,W,N) unless it is None (conv1's: nobody needs it), dweight
    # (OC,C,KH,KW), dbias (OC,); dout (OC,OH,OW,N)
    # Two kernels of their own, so that each compiles once: inlined here, the parameters' part
    # compiled again for dinp None (1.7 s more of the cold start)
    if dinp is not None:
        _conv2d_backward_input(dinp, dout, weight)
    _conv2d_backward_params(dweight, dbias, dout, inp)


@njit(**_JIT)
def _conv2d_backward_input(dinp, dout, weight):
    # overwrites dinp (C,H,W,N); dout (OC,OH,OW,N), weight (OC,C,KH,KW)
    C, H, W, N = dinp.shape
    OC, _, KH, KW = weight.shape
    OH, OW = H - KH + 1, W - KW + 1
    w, g, dx = weight.ravel(), dout.ravel(), dinp.ravel()
    # dinp[c,h,x,n] = sum over oc, kh, kw of weight[oc,c,kh,kw] * dout[oc,h-kh,x-kw,n]: for
    # fixed (oc, kh, kw) a stretch of dout's row (oc, h-kh) adds onto one contiguous stretch of
    # dinp's row (c, h), kw positions on, for every kh whose output row h-kh exists. A task owns
    # a pair of input channels in one row, so no two tasks write the same value; the taps go
    # five along oc.
    span = max(1, _SPAN // N)  # dout positions per pass
    for task in prange((C + 1) // 2 * H):
        c0, h = task // H * 2, task % H
        c1 = min(c0 + 1, C - 1)
        dinp[c0, h] = _ZERO
        dinp[c1, h] = _ZERO
        for j in range(0, OW, span):
            length = (min(j + span, OW) - j) * N
            for kh in range(max(0, h - OH + 1), min(KH, h + 1)):
                for kw in range(KW):
                    start0 = ((c0 * H + h) * W + j + kw) * N
                    start1 = ((c1 * H + h) * W + j + kw) * N
                    dst0, dst1 = dx[start0:start0 + length], dx[start1:start1 + length]
                    for oc in range(0, OC, _TAPS):
                        taps = min(_TAPS, OC - oc)
                        # weight[oc, c, kh, kw], stepping along oc
                        tap = (oc * C * KH + kh) * KW + kw
                        start = ((oc * OH + h - kh) * OW + j) * N
                        if taps == 1:  # a lone tap (the last of 16 channels): a pass of its
                            # own spares four zero-weight FMAs an element
                            _madd_row(dst0, dst1, w[tap + c0 * KH * KW], w[tap + c1 * KH * KW],
                                      g[start:start + length], c1 != c0)
                        else:
                            _madd_taps(dst0, dst1, w, tap + c0 * KH * KW, tap + c1 * KH * KW,
                                       C * KH * KW, g, start, OH * OW * N, taps, c1 != c0)


@njit(**_JIT)
def _conv2d_backward_params(dweight, dbias, dout, inp):
    # overwrites dweight (OC,C,KH,KW), dbias (OC,); dout (OC,OH,OW,N), inp (C,H,W,N)
    C, H, W, N = inp.shape
    OC, _, KH, KW = dweight.shape
    OH, OW = H - KH + 1, W - KW + 1
    x, g = inp.ravel(), dout.ravel()
    # dweight[oc,c,kh,kw] = sum over i, j, n of dout[oc,i,j,n] * inp[c,i+kh,j+kw,n]: for fixed
    # (i, kw) the (j, n) pairs are one contiguous stretch of both rows, so ten dot products of
    # length OW*N (two output channels, five kw) share their loads; a task owns (oc pair, c, kh)
    for task in prange((OC + 1) // 2 * C * KH):
        oc0, rest = task // (C * KH) * 2, task % (C * KH)
        c, kh = rest // KH, rest % KH
        oc1 = min(oc0 + 1, OC - 1)
        length = OW * N
        for kw in range(0, KW, _TAPS):
            taps = min(_TAPS, KW - kw)
            sums0 = sums1 = (_ZERO, _ZERO, _ZERO, _ZERO, _ZERO)
            for i in range(OH):
                start0, start1 = oc0 * OH * OW * N + i * length, oc1 * OH * OW * N + i * length
                # dout's rows (oc0, i) and (oc1, i), and inp's row (c, i+kh) from position kw
                # on, then kw+1, ...: (OW*N,) each
                sums0, sums1 = _madd_dots(
                    sums0, sums1, g[start0:start0 + length], g[start1:start1 + length],
                    _five_rows(x, ((c * H + i + kh) * W + kw) * N, N, taps, length))
            for t in range(taps):
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
def tanh_avgpool2d_tanh_backward(dinp, act, out, dout):
    # overwrites dinp (C,H,W,N), the gradient of conv2d_tanh_avgpool2d_tanh_forward's
    # convolution output; act (C,H,W,N) and out (C,H/2,W/2,N) are its saved outputs, dout
    # (C,H/2,W/2,N): tanh_backward, avgpool2d_backward and tanh_backward in one pass, the same
    # products in the same order
    C, OH, OW, N = dout.shape
    for row in prange(C * OH):
        c, i = row // OH, row % OH
        for j in range(OW):
            for a in range(2):
                for b in range(2):
                    _unpool2_tanh(dinp[c, 2 * i + a, 2 * j + b], act[c, 2 * i + a, 2 * j + b],
                                  out[c, i, j], dout[c, i, j])


@njit(**_CALLED)
def _unpool2_tanh(dinp, act, out, dout):
    # dinp (N,) of one pixel of a 2x2 window: the window's dout (N,) through its tanh (out,
    # N), the mean's quarter and the pixel's own tanh (act, N); called, not inlined: one
    # compile for the four pixels
    scale = _ONE / np.float32(4)
    for n in range(dinp.size):
        y, t = out[n], act[n]
        dinp[n] = dout[n] * (_ONE - y * y) * scale * (_ONE - t * t)


@njit(**_JIT)
def maxpool2d_forward(out, inp, k):
    # inp (C,H,W,N), H and W divisible by k -> out (C,H/k,W/k,N): max of each k x k window; a
    # NaN in a window makes its max NaN, as torch's
    C, OH, OW, N = out.shape
    for row in prange(C * OH):
        c, i = row // OH, row % OH
        for j in range(OW):
            acc = out[c, i, j]
            acc[:] = inp[c, i * k, j * k]
            for a in range(k):
                for b in range(k):
                    src = inp[c, i * k + a, j * k + b]
                    for n in range(N):
                        v = src[n]
                        if v > acc[n] or v != v:
                            acc[n] = v


@njit(**_JIT)
def maxpool2d_backward(dinp, out, inp, dout, k):
    # overwrites dinp (C,H,W,N); out (C,H/k,W/k,N) and inp (C,H,W,N) saved by the forward,
    # dout (C,H/k,W/k,N). Each window's gradient goes to the first of its elements, in
    # row-major order, that equals its maximum out (the first NaN of a window holding one):
    # torch's choice among equal maxima. So that every loop runs over the samples, vectorised,
    # the gradient not yet routed waits in the window's last dinp row, which a hit empties
    C, OH, OW, N = dout.shape
    last = k * k - 1
    for row in prange(C * OH):
        c, i = row // OH, row % OH
        for j in range(OW):
            top, left, peak = i * k, j * k, out[c, i, j]
            waiting = dinp[c, top + k - 1, left + k - 1]  # (N,): the last position's row
            waiting[:] = dout[c, i, j]
            for p in range(last):
                src, dst = inp[c, top + p // k, left + p % k], dinp[c, top + p // k, left + p % k]
                for n in range(N):
                    x, held = src[n], waiting[n]
                    hit = x == peak[n] or x != x
                    dst[n] = held if hit else _ZERO
                    waiting[n] = _ZERO if hit else held
            src = inp[c, top + k - 1, left + k - 1]
            for n in range(N):  # the last position keeps what still waits if it is the maximum
                x = src[n]
                waiting[n] = waiting[n] if x == peak[n] or x != x else _ZERO


@njit(**_JIT)
def tanh_forward(out, inp):
    # inp (any shape, C-contiguous) -> out (same shape); out may be inp (in place), though two
    # views of one memory send the loop down LLVM's scalar path (nn._Buffers gives each
    # elementwise layer a buffer of its own)
    flat_out, flat_inp = out.ravel(), inp.ravel()
    for idx in prange(flat_inp.size):
        flat_out[idx] = _tanh32(flat_inp[idx])


@njit(**_JIT)
def tanh_backward(dinp, out, dout):
    # overwrites dinp (which may be dout: in place, though slower, as tanh_forward's); out is
    # the forward's saved output, all the same shape
    # d tanh(x)/dx = 1 - tanh(x)^2, read from the saved output instead of recomputing tanh
    flat_dinp, flat_out, flat_dout = dinp.ravel(), out.ravel(), dout.ravel()
    for idx in prange(flat_out.size):
        y = flat_out[idx]
        flat_dinp[idx] = flat_dout[idx] * (_ONE - y * y)


@njit(**_JIT)
def relu_forward(out, inp):
    # inp (any shape, C-contiguous) -> out (same shape) = max(inp, 0); a NaN stays NaN
    flat_out, flat_inp = out.ravel(), inp.ravel()
    for idx in prange(flat_inp.size):
        x = flat_inp[idx]
        flat_out[idx] = _ZERO if x < _ZERO else x


@njit(**_JIT)
def relu_backward(dinp, out, dout):
    # overwrites dinp; out is the forward's saved output, all the same shape. The gradient
    # passes where the output is positive; at exactly 0 it is 0, as torch's
    flat_dinp, flat_out, flat_dout = dinp.ravel(), out.ravel(), dout.ravel()
    for idx in prange(flat_out.size):
        flat_dinp[idx] = flat_dout[idx] if flat_out[idx] > _ZERO else _ZERO


@njit(**_HELPER)
def _sigmoid32(x):
    # sigmoid(x) = 1 / (1 + e^-x) = (1 + tanh(x/2)) / 2, through the rational tanh: np.exp
    # compiles to a scalar call of libm's expf, and the loops around it ran 3-4x slower than
    # torch's. For x below about -16 this gives 0 where the true value is under 1e-7: an
    # error far below float32's relative precision of the largest outputs
    return _HALF + _HALF * _tanh32(_HALF * x)


@njit(**_JIT)
def silu_forward(out, inp):
    # inp (any shape, C-contiguous) -> out (same shape) = inp * sigmoid(inp)
    flat_out, flat_inp = out.ravel(), inp.ravel()
    for idx in prange(flat_inp.size):
        x = flat_inp[idx]
        flat_out[idx] = x * _sigmoid32(x)


@njit(**_JIT)
def silu_backward(dinp, inp, dout):
    # overwrites dinp; inp is the forward's saved input, all the same shape
    # d (x s(x)) / dx = s(x) + x s(x) (1 - s(x)) = s(x) (1 + x (1 - s(x)))
    flat_dinp, flat_inp, flat_dout = dinp.ravel(), inp.ravel(), dout.ravel()
    for idx in prange(flat_inp.size):
        x = flat_inp[idx]
        s = _sigmoid32(x)
        flat_dinp[idx] = flat_dout[idx] * s * (_ONE + x * (_ONE - s))


@njit(**_JIT)
def to_batch_last(out, inp):
    """out (F, N) = inp (N, F).T: a batch of NCHW images, flattened, into the kernels' layout
    (both backends' models transpose each batch on the host with it), and linear_backward's
    input, transposed for its weight gradient.

    A task owns 16 samples: it reads their rows front to back (16 streams the prefetcher
    follows) and writes, for each feature, their 16 values: one vector store of 16 gathered
    loads, a full cache line of out when N is a multiple of 16. Measured in a training step at
    batch 128: 0.06 ms; the earlier order (a task per 16 features, reading one cache line of
    every sample in turn) took 0.15 ms, mostly waiting on the batch's cache misses, and numpy's
    strided copy 0.45 ms.
    """
    N, F = inp.shape
    for block in prange((N + 15) // 16):
        first = block * 16
        if first + 16 <= N:  # a full block: a fixed 16-long inner loop, vectorised
            for f in range(F):
                for n in range(first, first + 16):
                    out[f, n] = inp[n, f]
        else:  # the batch's last, shorter block (a variable trip count is 2x slower)
            for f in range(F):
                for n in range(first, N):
                    out[f, n] = inp[n, f]


@njit(**_JIT)
def linear_forward(out, inp, weight, bias):
    # inp (IN,N), weight (OUT,IN), bias (OUT,) -> out (OUT,N) = weight @ inp + bias
    # (torch's x @ W.T + b with the batch last); a task owns a pair of output rows, the taps
    # go five along IN
    IN, N = inp.shape
    OUT = weight.shape[0]
    x, w = inp.ravel(), weight.ravel()
    for task in prange((OUT + 1) // 2):
        o0 = task * 2
        o1 = min(o0 + 1, OUT - 1)
        dst0, dst1 = out[o0], out[o1]
        dst0[:] = bias[o0]
        dst1[:] = bias[o1]
        for i in range(0, IN, _TAPS):
            taps = min(_TAPS, IN - i)
            _madd_taps(dst0, dst1, w, o0 * IN + i, o1 * IN + i, 1, x, i * N, N, taps, o1 != o0)


@njit(cache=True)  # no loop of its own: its two parts are parallel
def linear_backward(dinp, dweight, dbias, scratch, dout, inp, weight):
    # overwrites dinp (IN,N) unless it is None (a network's input: nobody needs it), dweight
    # (OUT,IN), dbias (OUT,) and scratch (N,IN); dout (OUT,N); kernels of their own, as
    # conv2d_backward's
    if dinp is not None:
        _linear_backward_input(dinp, dout, weight)
    to_batch_last(scratch, inp)  # (N,IN) = inp.T
    _linear_backward_params(dweight, dbias, dout, scratch)


@njit(**_JIT)
def _linear_backward_input(dinp, dout, weight):
    # overwrites dinp (IN,N); dout (OUT,N), weight (OUT,IN)
    IN, N = dinp.shape
    OUT = weight.shape[0]
    w, g = weight.ravel(), dout.ravel()
    # dinp = weight.T @ dout: each input feature collects every output's gradient by its
    # weight; a task owns a pair of input rows, the taps go five along OUT
    for task in prange((IN + 1) // 2):
        i0 = task * 2
        i1 = min(i0 + 1, IN - 1)
        dst0, dst1 = dinp[i0], dinp[i1]
        dst0[:] = _ZERO
        dst1[:] = _ZERO
        for o in range(0, OUT, _TAPS):
            taps = min(_TAPS, OUT - o)
            _madd_taps(dst0, dst1, w, o * IN + i0, o * IN + i1, IN, g, o * N, N, taps, i1 != i0)


@njit(**_JIT)
def _linear_backward_params(dweight, dbias, dout, inp_t):
    # overwrites dweight (OUT,IN), dbias (OUT,); dout (OUT,N), inp_t (N,IN), the input
    # transposed
    N, IN = inp_t.shape
    OUT = dweight.shape[0]
    # dweight[o] = sum over n of dout[o,n] * inp_t[n]: rows of IN, five samples a pass (their
    # dout values the weights), a task owning a pair of output rows and their biases' sums.
    # Dot products over the batch would need no transpose but end each weight in a
    # horizontal sum: the README's results compare the two; one form compiles faster.
    x, g = inp_t.ravel(), dout.ravel()
    for task in prange((OUT + 1) // 2):
        o0 = task * 2
        o1 = min(o0 + 1, OUT - 1)
        dst0, dst1 = dweight[o0], dweight[o1]
        dst0[:] = _ZERO
        dst1[:] = _ZERO
        for n in range(0, N, _TAPS):
            _madd_taps(dst0, dst1, g, o0 * N + n, o1 * N + n, 1, x, n * IN, IN,
                       min(_TAPS, N - n), o1 != o0)
        sum0 = sum1 = _ZERO  # dbias = dout summed over the batch
        for n in range(N):
            sum0 += dout[o0, n]
            sum1 += dout[o1, n]
        dbias[o0] = sum0
        dbias[o1] = sum1  # the same sum again when o1 == o0


@njit(**_JIT)
def softmax_xent_forward(losses, probs, logits, labels, smoothing):
    # logits (V,N), labels (N,) ints in [0,V) -> losses (N,) per sample, probs (V,N) saved
    # losses[n] = logsumexp(logits[:,n]) - target, with the column max taken out first so
    # that exp never overflows; target = logits[labels[n],n], or with label smoothing e
    # (torch's) (1 - e) logits[labels[n],n] + e mean_v logits[v,n]; the caller takes the mean
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
        target = logits[labels[n], n]
        if smoothing != _ZERO:
            logit_sum = _ZERO
            for v in range(V):
                logit_sum += logits[v, n]
            target = (_ONE - smoothing) * target + smoothing * (logit_sum / np.float32(V))
        losses[n] = np.log(total) + col_max - target


@njit(**_JIT)
def softmax_xent_backward(dlogits, probs, labels, dloss, smoothing):
    # overwrites dlogits (V,N); probs (V,N) saved by the forward, dloss the mean loss's gradient
    # d mean_n(loss_n) / d logits[v,n] = (probs[v,n] - (1 - e) [v == labels[n]] - e / V) / N
    # for label smoothing e (0: the one-hot target)
    V, N = probs.shape
    scale = dloss / np.float32(N)
    spread = scale * smoothing / np.float32(V)
    for v in prange(V):
        for n in range(N):
            dlogits[v, n] = probs[v, n] * scale - spread
    for n in range(N):
        dlogits[labels[n], n] -= scale * (_ONE - smoothing)


@njit(**_CALLED)
def loss_sum(sums, losses, index):
    # losses (N,) -> sums[index] = their sum, the rest of sums (steps,) untouched: a step's
    # loss kept where the network's arrays are, so that no step waits to read it (on a GPU)
    total = _ZERO
    for n in range(losses.shape[0]):
        total += losses[n]
    sums[index] = total


# ---- the small-batch inference kernel: a whole network's eval-mode forward, one sample at a time.
##
# At a few images per call, the batch-last kernels above run inner loops only N long and
# pay a parallel launch per layer, a dozen of them for LeNet-5: the call costs several times
# its arithmetic (bench/infer.py --batch-last times that path). Here one call runs every
# layer: each prange iteration takes one sample through the whole network, in its own row of
# a scratch array, channel-first (C,H,W) as torch lays out one sample, so that the inner
# loops run along image rows and feature vectors instead of along the batch.
# tinyconv.nn.SamplePlan builds the plan (a table of steps, each an op code with its offsets
# and sizes) once per network, fusing activations and poolings into the step before them, and
# Sequential.forward uses this kernel in eval mode for batches below samples_below (below);
# the batch-last path stays the oracle the tests hold it to (tests/test_samples.py).
#
# A step is a row of `plan` (int64): OP, SRC, DST, A, B, WORK, WIDE, PAIRS, S0..S5, ACT,
# POOL, K, ACT2, NORM, NORM_WEIGHT, NORM_BIAS, NORM_STATE.
# SRC and DST are offsets into one sample's scratch row; A and B offsets into the flat
# parameters (the weight and the bias; for ADD, A is the second input's offset in the scratch
# row); WORK a scratch offset for a convolution's wide output (for batch norm, the running
# statistics' offset in `state`, the buffers copied in per call) and WIDE its values per
# channel (wide_size below); PAIRS, for a convolution's fused 2x2 pooling, a scratch offset
# for its horizontal pairs (_pool2_pairs; 0: pooled row by row); S0..S5 the op's sizes; ACT
# the activation applied as the step stores its output (NONE, TANH, RELU, SILU). A
# convolution's step may also pool (POOL the pooling's op code, K its window) and then apply
# ACT2: conv -> tanh -> avgpool -> tanh is one step, which never stores the unpooled image.
# Before its activation it may apply a batch norm (NORM 1: its scale and shift at NORM_WEIGHT
# and NORM_BIAS in the parameters, its running statistics at NORM_STATE in `state`):
# conv -> batchnorm -> relu -> maxpool is one step too. `eps` holds one float per step (batch
# norm's).
#
# Deterministic: each sample is one iteration, computed in a fixed order, so its logits do not
# depend on the thread count or on the other samples of the batch. float32 throughout.
# In this file, beside the helpers it shares: Numba's cache keys on the defining file, and
# would not see a change to them from another.

# Copies are element loops, not slice assignments: an array-to-array slice assignment brings
# Numba's shape-mismatch error path, which formats the shapes in float64 (the IR scan's
# false alarm) and costs more than these short copies.

# Batches below samples_below(multiply-adds per sample) take sequential_forward in eval mode.
# Its model: per sample this kernel takes a multiple of the batch-last path's time, while the
# batch-last path has a cost per call that grows with the network more slowly than its cost
# per sample, so the crossover falls towards a floor as a network grows: 12 + 8 / (millions
# of multiply-adds), fitted to LeNet-5's and resnet-mini's crossovers as bench/crossover.py
# measures them (README, "Inference at every batch size"). It counts convolutions and linear
# layers only: activations, pooling and batch norm move the crossover too, but not here.
SAMPLES_BELOW_LARGE = 12  # the crossover of a large network
SAMPLES_BELOW_MILLIONS = 8  # what a smaller one adds: this over its millions of multiply-adds
SAMPLES_BELOW_MOST = 32  # and at most this, the largest batch measured


def samples_below(multiply_adds):
    """The batch size from which a network of `multiply_adds` per sample runs faster on the
    batch-last path than on sequential_forward (the rule above)."""
    millions = multiply_adds / 1e6
    if millions * (SAMPLES_BELOW_MOST - SAMPLES_BELOW_LARGE) <= SAMPLES_BELOW_MILLIONS:
        return SAMPLES_BELOW_MOST
    return round(SAMPLES_BELOW_LARGE + SAMPLES_BELOW_MILLIONS / millions)


# the op codes of a plan's steps, the activations a step may apply as it stores, and the
# columns of a step's row, in the order sequential_forward unpacks them
PLAN_OPS = {"conv2d": 1, "linear": 2, "avgpool2d": 3, "maxpool2d": 4, "pad2d": 5,
            "batchnorm": 6, "add": 7, "activation": 8}
PLAN_ACTIVATIONS = {"none": 0, "tanh": 1, "relu": 2, "silu": 3}
PLAN_COLUMNS = ("op", "src", "dst", "a", "b", "work", "wide", "pairs", "s0", "s1", "s2", "s3",
                "s4", "s5", "act", "pool", "k", "act2", "norm", "norm_weight", "norm_bias",
                "norm_state")

_CONV, _LINEAR, _AVGPOOL, _MAXPOOL, _PAD, _BATCHNORM, _ADD, _ACTIVATION = (
    PLAN_OPS[name] for name in ("conv2d", "linear", "avgpool2d", "maxpool2d", "pad2d",
                                "batchnorm", "add", "activation"))
_TANH, _RELU, _SILU = (PLAN_ACTIVATIONS[name] for name in ("tanh", "relu", "silu"))


@njit(**_CALLED)
def _activate(s, start, count, act):
    # s[start:start + count] through the step's activation, in place: the functions of
    # the batch-last kernels, one loop per kind so that each vectorises
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


# Whole vectors. Row by row, short stretches (conv2's wide rows, LeNet's pooled rows 14 and
# 5 long) spend more on each loop's setup (LLVM's overlap checks, then a scalar remainder too
# short for a vector) than on their values. The loops below instead run a vector at a time, in
# a loop of constant length that LLVM turns into one vector operation, over their stretch
# rounded up to whole vectors: they read, and some write, up to LANES - 1 floats past its end.
# What they write there lands in the next row, which is written after it, or past a region's
# last row in the region's own spare LANES floats (nn.SamplePlan.alloc), and what they read
# there (the region's padding, its spare floats, the next row) only makes values never read.
# A wide output's channels lie wide_size(...) floats apart, a whole number of vectors.
LANES = 16  # float32 values in a 64-byte line: one AVX-512 vector, two AVX2 ones


def round_up(count):
    """count rounded up to whole vectors of LANES floats."""
    return -(-count // LANES) * LANES


_round_up = njit(**_HELPER)(round_up)  # the same, inside the kernels


def wide_size(OH, OW, W):
    """The floats per channel of _conv2d's wide output (the plan's WIDE): (OH-1)*W + OW
    positions, rounded up to whole vectors."""
    return round_up((OH - 1) * W + OW)


@njit(**_HELPER)
def _madd_five_shifts(dst0, dst1, x, w0, w1, pair):
    # dst0 (L,) += sum over t < 5 of w0[t] * x[p + t] at each p, likewise dst1 with w1 when
    # pair is true, L a multiple of LANES: _madd_rows's register blocking, for five rows that
    # are one row (L+4,) at five shifts. One row and constant shifts: LLVM checks one pointer
    # against the outputs instead of five. A vector at a time (see "Whole vectors"): given the
    # plain loop, LLVM runs four vectors an iteration and the rest one value at a time
    a0, a1, a2, a3, a4 = w0
    b0, b1, b2, b3, b4 = w1
    if pair:
        for start in range(0, dst0.size, LANES):
            for p in range(start, start + LANES):
                v0, v1, v2, v3, v4 = x[p], x[p + 1], x[p + 2], x[p + 3], x[p + 4]
                dst0[p] += a0 * v0 + a1 * v1 + a2 * v2 + a3 * v3 + a4 * v4
                dst1[p] += b0 * v0 + b1 * v1 + b2 * v2 + b3 * v3 + b4 * v4
    else:
        for start in range(0, dst0.size, LANES):
            for p in range(start, start + LANES):
                dst0[p] += (a0 * x[p] + a1 * x[p + 1] + a2 * x[p + 2] + a3 * x[p + 3]
                            + a4 * x[p + 4])


@njit(**_CALLED)
def _conv2d(s, src, dst, work, L, pairs, w, b, C, H, W, OC, KH, KW, act, pool, k, act2, norm,
            norm_weight, norm_bias, running_mean, running_var, eps):
    # s[src:] (C,H,W) -> s[dst:] (OC,OH,OW): an unpadded convolution, if norm a batch norm
    # (norm_weight, norm_bias, running_mean, running_var (OC,) each, eps), its activation,
    # and if pool is an op code, that pooling of k x k windows and its activation act2, fused
    # (dst (OC,OH/k,OW/k) then). Computed "wide": output position (i, j) is at i*W + j of a
    # stretch of L values per channel at work (wide_size), so the inputs of tap
    # (c, kh, kw) are one contiguous stretch, at c*H*W + kh*W + kw, and the taps go five along
    # kw (for a kernel width not a multiple of five, along c), two channels a pass. The W-OW
    # positions past each row's end, and those past the last row's, are computed and never
    # read: the pooling reads the wide rows in place (or, given a PAIRS region, their
    # horizontal pairs, _pool2_pairs, from there), and without one they are compacted away.
    OH, OW = H - KH + 1, W - KW + 1
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
        else:  # five taps along c, as conv2d_forward does for a 3x3
            for kh in range(KH):
                for kw in range(KW):
                    for c in range(0, C, _TAPS):
                        taps = min(_TAPS, C - c)
                        tap = (c * KH + kh) * KW + kw
                        _madd_taps(dst0, dst1, w, oc0 * C * KH * KW + tap,
                                   oc1 * C * KH * KW + tap, KH * KW, s,
                                   src + (c * H + kh) * W + kw, H * W, taps, oc1 != oc0)
    # one long loop; the unread positions too, harmlessly
    if norm:
        _batchnorm(s, work, work, norm_weight, norm_bias, running_mean, running_var, OC, L,
                   eps, act)
    else:
        _activate(s, work, OC * L, act)
    if pairs:
        _pool2_pairs(s[pairs:pairs + OC * L // 2], s[work:work + OC * L], pool == _MAXPOOL)
        _pool2_rows(s, pairs, dst, OC, OH, OW, W // 2, L // 2, pool == _MAXPOOL, act2)
    elif pool == _AVGPOOL:
        _avgpool2d(s, work, dst, OC, OH, OW, W, L, k, act2)
    elif pool == _MAXPOOL:
        _maxpool2d(s, work, dst, OC, OH, OW, W, L, k, act2)
    else:
        for row in range(OC * OH):  # (oc, i)
            wide, out = work + row // OH * L + row % OH * W, dst + row * OW
            _copy_in_vectors(s[out:out + _round_up(OW)], s[wide:wide + _round_up(OW)])


@njit(**_HELPER)
def _copy_in_vectors(out, x):
    # out (L,) = x (L,), L a multiple of LANES: a row, a vector at a time
    for start in range(0, out.size, LANES):
        for j in range(start, start + LANES):
            out[j] = x[j]


@njit(**_HELPER)
def _pool2(x, y, is_max):
    # two values of a 2x2 window: their maximum (a NaN winning, as maxpool2d_forward's) or
    # their sum
    if is_max:
        return y if y > x or y != y else x
    return x + y


@njit(**_CALLED)
def _pool2_pairs(pairs, x, is_max):
    # pairs (M,) = x[2m] with x[2m+1] (x (2M,)), by _pool2: a 2x2 pooling's horizontal pairs,
    # in one long loop that vectorises (an image's rows then lie W/2 apart in pairs)
    for m in range(pairs.size):
        pairs[m] = _pool2(x[2 * m], x[2 * m + 1], is_max)


@njit(**_CALLED)
def _pool2_rows(s, pairs, dst, C, H, W, row, channel, is_max, act):
    # s[dst:] (C,H/2,W/2): a 2x2 pooling of a (C,H,W) image from its horizontal pairs at
    # s[pairs:], rows `row` floats apart and channels `channel`, then activation act: output
    # row i of a channel combines pair rows 2i and 2i+1 a vector at a time, into the maximum
    # of the four values or their mean, summed pairwise ((a + b) + (c + d): not
    # avgpool2d_forward's order, within the tests' bound of it)
    OH, OW = H // 2, W // 2
    scale = _ONE / np.float32(4)
    width = _round_up(OW)
    for out_row in range(C * OH):  # (c, i)
        top = pairs + out_row // OH * channel + out_row % OH * 2 * row
        out, upper, lower = (s[dst + out_row * OW:][:width], s[top:top + width],
                             s[top + row:top + row + width])
        for start in range(0, width, LANES):
            for j in range(start, start + LANES):
                pooled = _pool2(upper[j], lower[j], is_max)
                out[j] = pooled if is_max else pooled * scale
    _activate(s, dst, C * OH * OW, act)


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
    # time (summed in avgpool2d_forward's order: the window row-major)
    OH, OW = H // k, W // k
    scale = _ONE / np.float32(k * k)
    for out_row in range(C * OH):  # (c, i): window rows i*k to i*k + k-1 of channel c
        out, top = dst + out_row * OW, src + out_row // OH * channel + out_row % OH * k * row
        if k == 2:  # LeNet's: a loop along the row that vectorises, unlike the one below
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
    # in maxpool2d_forward
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
    # s[src:] (C,M) normalised by the running statistics, as cpu_blocks.batchnorm_eval_forward,
    # into s[dst:]: copied there first, then normalised in place, one slice read and written
    # (a loop from one slice into another that may be the same memory, as a convolution's
    # fused batch norm's is, takes LLVM's scalar path)
    if src != dst:
        for i in range(C * M):
            s[dst + i] = s[src + i]
    for c in range(C):
        inv = _ONE / np.sqrt(running_var[c] + eps)
        scale, mu, shift = inv * weight[c], running_mean[c], bias[c]
        x = s[dst + c * M:dst + (c + 1) * M]
        for m in range(M):
            x[m] = (x[m] - mu) * scale + shift
    _activate(s, dst, C * M, act)


@njit(**_CALLED)
def _sample_forward(s, params, state, plan, eps):
    # one sample through every step of the plan, in its scratch row s
    for step in range(plan.shape[0]):
        (op, src, dst, a, b, work, wide, pairs, s0, s1, s2, s3, s4, s5, act, pool, k, act2,
         norm, norm_weight, norm_bias, norm_state) = plan[step]
        if op == _CONV:
            _conv2d(s, src, dst, work, wide, pairs, params[a:], params[b:], s0, s1, s2, s3, s4,
                    s5, act, pool, k, act2, norm, params[norm_weight:], params[norm_bias:],
                    state[norm_state:], state[norm_state + s3:], eps[step])
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


@njit(**_CALLED)
def _forward_sample(out, scratch, inp, n, params, state, plan, eps, out_start):
    # sample n of sequential_forward's batch: its input copied to scratch[n, :IN], the plan
    # run, its output read from scratch[n, out_start:out_start + V]
    s = scratch[n]
    for i in range(inp.shape[1]):
        s[i] = inp[n, i]
    _sample_forward(s, params, state, plan, eps)
    for v in range(out.shape[1]):
        out[n, v] = s[out_start + v]


@njit(**_JIT)
def sequential_forward(out, scratch, inp, params, state, plan, eps, out_start):
    # inp (N,IN) batch-first, scratch (N,S), params (P,), state (Q,), plan (steps, COLUMNS),
    # eps (steps,) -> out (N,V): a sample per thread
    for n in prange(inp.shape[0]):
        _forward_sample(out, scratch, inp, n, params, state, plan, eps, out_start)


@njit(**_CALLED)
def sequential_forward_serial(out, scratch, inp, params, state, plan, eps, out_start):
    # sequential_forward on the calling thread, for a batch of one: the same bits, without
    # the parallel launch, a sizeable share of a small network's sample
    for n in range(inp.shape[0]):
        _forward_sample(out, scratch, inp, n, params, state, plan, eps, out_start)
