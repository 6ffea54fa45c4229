"""numba.cuda kernels of the modern blocks: cpu_blocks.py's ops, names and signatures.

The same layout, contract and determinism as cuda.py (whose module docstring says them in
full): one thread per output element, per-channel sums with one block per channel in a fixed
tree, no atomics; float32 throughout. Letters as in cpu_blocks.py: p padding width, M the
values of one batch-norm channel (H*W*N, or N).
"""

import math

import numpy as np
from numba import cuda, float32

from tinyconv.kernels.cuda import (
    _ONE,
    _ZERO,
    REDUCE_THREADS,
    THREADS,
    _blocks,
    _flat,
    _group_sum,
    _reduce_threads,
    _unravel4,
)

# ---- pad2d (Conv2d(padding=p) pads its input into a buffer, then runs the unpadded conv)


@cuda.jit(cache=True)
def _pad2d_forward(out, inp, p):
    # inp (C,H,W,N) -> out (C,H+2p,W+2p,N): out[c,p+h,p+x,n] = inp[c,h,x,n], the border of
    # width p around it 0; a thread per output element, border ones included
    idx = cuda.grid(1)
    if idx >= out.size:
        return
    C, H, W, N = inp.shape
    OH, OW = out.shape[1], out.shape[2]
    c, i, j, n = _unravel4(idx, OH, OW, N)
    h, x = i - p, j - p
    inside = h >= 0 and h < H and x >= 0 and x < W
    out[c, i, j, n] = inp[c, h, x, n] if inside else _ZERO


@cuda.jit(cache=True)
def _pad2d_backward(dinp, dout, p):
    # overwrites dinp (C,H,W,N) = dout[:, p:p+H, p:p+W, :], the crop; dout (C,H+2p,W+2p,N)
    idx = cuda.grid(1)
    if idx >= dinp.size:
        return
    C, H, W, N = dinp.shape
    c, h, x, n = _unravel4(idx, H, W, N)
    dinp[c, h, x, n] = dout[c, h + p, x + p, n]


def pad2d_forward(out, inp, p):
    """Zero-pad the height and width of inp (C,H,W,N) by p on every side into out."""
    _pad2d_forward[_blocks(out.size), THREADS](out, inp, p)


def pad2d_backward(dinp, dout, p):
    """Overwrite dinp with pad2d_forward's gradient: dout without its border of width p."""
    _pad2d_backward[_blocks(dinp.size), THREADS](dinp, dout, p)


# ---- add (elementwise, on flat views: a residual's skip)


@cuda.jit(cache=True)
def _add(out, a, b):
    # a, b (P,) -> out (P,) = a + b; out may be a or b (in place)
    idx = cuda.grid(1)
    if idx < out.size:
        out[idx] = a[idx] + b[idx]


def add(out, a, b):
    """out = a + b elementwise; the three of one shape, any rank (C-contiguous)."""
    _add[_blocks(out.size), THREADS](_flat(out), _flat(a), _flat(b))


# ---- batchnorm (BatchNorm2d and BatchNorm1d on (C,M) views: a row is one channel's M values)


@cuda.jit(device=True, inline="always")
def _normalize(x, mean, invstd, weight, bias):
    # one value of a batch norm's output
    return (x - mean) * invstd * weight + bias


@cuda.jit(cache=True)
def _batchnorm_stats(mean, invstd, running_mean, running_var, num_batches_tracked, inp,
                     momentum, eps):
    # inp (C,M) -> mean, invstd (C,) = each row's mean and 1/sqrt(var + eps), var the biased
    # variance, two-pass (the mean first, then the squared deviations from it); updates
    # running_mean, running_var (C,) (the latter with the unbiased var, M > 1) and
    # num_batches_tracked (1,) int64 (+= 1, by block 0) in place.
    # Block c: channel c; each thread sums a strided share of the row, then _group_sum's tree
    M = inp.shape[1]
    c = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    shared = cuda.shared.array(REDUCE_THREADS, float32)
    partial = _ZERO
    for m in range(tid, M, cuda.blockDim.x):
        partial += inp[c, m]
    mu = _group_sum(shared, partial, cuda.blockDim.x) / np.float32(M)
    partial = _ZERO
    for m in range(tid, M, cuda.blockDim.x):
        d = inp[c, m] - mu
        partial += d * d
    var = _group_sum(shared, partial, cuda.blockDim.x) / np.float32(M)
    if tid == 0:
        mean[c] = mu
        invstd[c] = _ONE / math.sqrt(var + eps)
        keep = _ONE - momentum
        running_mean[c] = keep * running_mean[c] + momentum * mu
        running_var[c] = (keep * running_var[c]
                          + momentum * var * np.float32(M) / np.float32(M - 1))
        if c == 0:
            num_batches_tracked[0] += 1


@cuda.jit(cache=True)
def _batchnorm_normalize(out, mean, invstd, inp, weight, bias):
    # inp (C,M), mean, invstd, weight, bias (C,) -> out (C,M)
    # out[c,m] = (inp[c,m] - mean[c]) * invstd[c] * weight[c] + bias[c]
    idx = cuda.grid(1)
    if idx >= out.size:
        return
    M = out.shape[1]
    c, m = idx // M, idx % M
    out[c, m] = _normalize(inp[c, m], mean[c], invstd[c], weight[c], bias[c])


@cuda.jit(cache=True)
def _batchnorm_eval_forward(out, mean, invstd, inp, running_mean, running_var, weight, bias,
                            eps):
    # inp (C,M), running_mean, running_var, weight, bias (C,) -> out (C,M) normalised with the
    # running statistics, which are saved as mean and invstd (C,) = running_mean and
    # 1/sqrt(running_var + eps) (written by the thread of each row's first element)
    idx = cuda.grid(1)
    if idx >= out.size:
        return
    M = out.shape[1]
    c, m = idx // M, idx % M
    mu = running_mean[c]
    s = _ONE / math.sqrt(running_var[c] + eps)
    if m == 0:
        mean[c] = mu
        invstd[c] = s
    out[c, m] = _normalize(inp[c, m], mu, s, weight[c], bias[c])


@cuda.jit(cache=True)
def _batchnorm_backward_params(dweight, dbias, dout, inp, mean, invstd):
    # overwrites dweight, dbias (C,); dout, inp (C,M), mean, invstd (C,) saved by the forward
    # block c: dbias[c] = sum over m of dout[c,m], dweight[c] = sum over m of dout[c,m] *
    # xhat[c,m], xhat = (inp - mean) * invstd; strided shares, then _group_sum's tree
    M = dout.shape[1]
    c = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    mu, s = mean[c], invstd[c]
    partial_bias = _ZERO
    partial_weight = _ZERO
    for m in range(tid, M, cuda.blockDim.x):
        g = dout[c, m]
        partial_bias += g
        partial_weight += g * ((inp[c, m] - mu) * s)
    shared = cuda.shared.array(REDUCE_THREADS, float32)
    total_bias = _group_sum(shared, partial_bias, cuda.blockDim.x)
    total_weight = _group_sum(shared, partial_weight, cuda.blockDim.x)
    if tid == 0:
        dbias[c] = total_bias
        dweight[c] = total_weight


@cuda.jit(cache=True)
def _batchnorm_backward_input(dinp, dweight, dbias, dout, inp, mean, invstd, weight,
                              batch_stats):
    # overwrites dinp (C,M); dweight, dbias (C,) from _batchnorm_backward_params (read here),
    # dout, inp (C,M), mean, invstd, weight (C,)
    # batch_stats (training): dinp = weight * invstd * (dout - dbias/M - xhat * dweight/M);
    # else (the statistics constants): dinp = dout * weight * invstd
    idx = cuda.grid(1)
    if idx >= dinp.size:
        return
    M = dinp.shape[1]
    c, m = idx // M, idx % M
    if batch_stats:
        count = np.float32(M)
        xhat = (inp[c, m] - mean[c]) * invstd[c]
        dinp[c, m] = weight[c] * invstd[c] * (
            dout[c, m] - dbias[c] / count - xhat * dweight[c] / count)
    else:
        dinp[c, m] = dout[c, m] * weight[c] * invstd[c]


def batchnorm_forward(out, mean, invstd, running_mean, running_var, num_batches_tracked, inp,
                      weight, bias, momentum, eps):
    """Training-mode batch norm of inp (C,M) with the batch's statistics (saved as mean and
    invstd); running_mean, running_var and num_batches_tracked updated in place, as torch's."""
    C, M = inp.shape
    _batchnorm_stats[C, _reduce_threads(M)](
        mean, invstd, running_mean, running_var, num_batches_tracked, inp,
        np.float32(momentum), np.float32(eps))
    _batchnorm_normalize[_blocks(out.size), THREADS](out, mean, invstd, inp, weight, bias)


def batchnorm_eval_forward(out, mean, invstd, inp, running_mean, running_var, weight, bias,
                           eps):
    """Eval-mode batch norm of inp (C,M) with the running statistics, saved as mean and
    invstd so that batchnorm_backward reads the same things in either mode."""
    _batchnorm_eval_forward[_blocks(out.size), THREADS](
        out, mean, invstd, inp, running_mean, running_var, weight, bias, np.float32(eps))


def batchnorm_backward(dinp, dweight, dbias, dout, inp, mean, invstd, weight, batch_stats):
    """Overwrite dinp (skipped when None), dweight, dbias with the batch norm's gradients;
    batch_stats True for a forward in training mode (the statistics depend on inp)."""
    C, M = dout.shape
    _batchnorm_backward_params[C, _reduce_threads(M)](dweight, dbias, dout, inp, mean, invstd)
    if dinp is not None:  # after the sums, which it reads (the same stream keeps the order)
        _batchnorm_backward_input[_blocks(dinp.size), THREADS](
            dinp, dweight, dbias, dout, inp, mean, invstd, weight, bool(batch_stats))


# ---- dropout (inverted; the mask from a counter-based hash, recomputed in the backward)

# mix32 on uint32 values held in uint64, masked after every step that can carry past bit 31:
# the product of two 32-bit values fits in 64 bits, so the masked result is uint32's
# wrap-around exactly, and the simulator's NumPy scalars never overflow (nor warn)
_MASK32 = np.uint64(0xFFFFFFFF)
_MIX1 = np.uint64(0x7FEB352D)
_MIX2 = np.uint64(0x846CA68B)
_GOLDEN = np.uint64(0x9E3779B9)


@cuda.jit(device=True, inline="always")
def _mix32(x):
    # Wellons' lowbias32 on the low 32 bits of x, returned as a uint64 below 2^32
    x = np.uint64(x) & _MASK32
    x ^= x >> np.uint64(16)
    x = (x * _MIX1) & _MASK32
    x ^= x >> np.uint64(15)
    x = (x * _MIX2) & _MASK32
    x ^= x >> np.uint64(16)
    return x


@cuda.jit(device=True, inline="always")
def _dropout_kept(idx, threshold, seed, step):
    # whether flat element idx survives: bits(i) = mix32(mix32(i ^ key1) + key2) >= threshold,
    # key1 = mix32(mix32(seed) ^ step), key2 = mix32(key1 ^ 0x9e3779b9) (a few operations:
    # every thread works them out rather than reading them from memory)
    key1 = _mix32(_mix32(seed) ^ np.uint64(step))
    key2 = _mix32(key1 ^ _GOLDEN)
    bits = _mix32(_mix32(np.uint64(idx) ^ key1) + key2)
    return bits >= threshold


@cuda.jit(cache=True)
def _dropout(out, inp, threshold, scale, seed, step):
    # inp (P,) -> out (P,) = inp * (scale if kept else 0), a product (a dropped inf or NaN
    # gives NaN, as torch's); threshold, seed, step uint32, scale float32.
    # The forward on the input and the backward on the gradient: the same mask
    idx = cuda.grid(1)
    if idx < out.size:
        kept = _dropout_kept(idx, threshold, seed, step)
        out[idx] = inp[idx] * (scale if kept else _ZERO)


def _dropout_launch(out, inp, threshold, scale, seed, step):
    _dropout[_blocks(out.size), THREADS](_flat(out), _flat(inp), np.uint32(threshold),
                                         np.float32(scale), np.uint32(seed), np.uint32(step))


def dropout_forward(out, inp, threshold, scale, seed, step):
    """Inverted dropout: out = inp * scale where the element's hash bits reach threshold,
    else inp * 0; any shape (C-contiguous), the mask a function of (seed, step, index)."""
    _dropout_launch(out, inp, threshold, scale, seed, step)


def dropout_backward(dinp, dout, threshold, scale, seed, step):
    """Overwrite dinp with dropout_forward's gradient: dout through the same mask, rebuilt."""
    _dropout_launch(dinp, dout, threshold, scale, seed, step)
