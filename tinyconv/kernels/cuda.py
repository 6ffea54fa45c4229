"""numba.cuda kernels: cpu.py's ops, names and Python signatures, on an NVIDIA GPU.

Letters: N batch, C input channels, OC output channels, H/W input height and width,
OH/OW output height and width, KH/KW kernel height and width, k pooling window,
IN/OUT linear features, V classes, P parameter count. The modern blocks' kernels (batch
norm, dropout, padding, the sum) are in cuda_blocks.py.

Layout and contract as in cpu.py: the batch is the LAST axis of every activation (images
(C,H,W,N), features (IN,N), logits (V,N)); weights keep torch's layout; arguments are outputs,
saved tensors, inputs, parameters, sizes; every backward OVERWRITES its outputs. Arrays are
device arrays (cuda_host.py makes and moves them); each launcher queues its kernel on the
default stream and returns at once, so the work of a step runs in order on the GPU and the
host waits only where it copies a result back (to_host) and before it rewrites the staged
batch (Staging: until the copy of the last one has run).

Threads: one per output element, the index running fastest over n, so the threads of a warp
read and write neighbouring samples (coalesced). Weight and bias gradients are sums over
positions and samples: a group of threads per gradient element (as many as give each about
TERMS_PER_THREAD terms), each thread summing a fixed strided share of the terms, then a
fixed-order tree in shared memory; an element with very many terms splits them into segments
whose sums a second kernel adds in order. No atomics, so results are the same on every run.
Launchers take any-shaped arrays and make the views their kernels need once (view).
float32 throughout: constants are np.float32 and math.exp/log/sqrt/tanh
of a float32 compile to libdevice's float32 functions (tests scan the PTX for float64).
Kernels compile on first launch and are cached on disk (cache=True, like cpu.py's).
"""

import math
import warnings

import numpy as np
from numba import cuda, float32
from numba.cuda.core.errors import NumbaPerformanceWarning  # numba-cuda's, not numba's

from tinyconv.kernels.cuda_host import empty, view

THREADS = 256  # threads per block of the elementwise kernels
REDUCE_THREADS = 128  # most threads per block of a reduction: a power of two, for the tree
# the terms each thread of a parameter-gradient sum adds up, about: conv3's 128 terms an
# element (1x1 outputs at batch 128) take 4 threads each, 32 elements a block, where one
# block an element left most of its threads idle; conv1's 100,352 terms an element split
# into 25 segments of 128 threads, so that its 156 elements fill the GPU with 3,900 blocks
TERMS_PER_THREAD = 32

_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)

# LeNet-5's small layers launch small grids by nature (the loss: one block at batch 128);
# numba-cuda's warning about them says nothing that could be acted on. Its class is numba-cuda's
# own, and its text may start with a terminal colour code
warnings.filterwarnings("ignore", message=r"(\x1b\[[0-9;]*m)?Grid size \d+ will likely result "
                        r"in GPU under-", category=NumbaPerformanceWarning)


def _blocks(total):
    """Blocks of THREADS threads that cover `total` elements, one thread each."""
    return (total + THREADS - 1) // THREADS


def _reduce_threads(terms):
    """Threads per block of a reduction over `terms` terms: the power of two that covers
    them, at most REDUCE_THREADS (small sums do not launch idle threads)."""
    return min(REDUCE_THREADS, 1 << max(terms - 1, 0).bit_length())


def _flat(array):
    """array's 1-D view (the elementwise kernels index flat arrays), made once (view)."""
    return view(array, (array.size,))


@cuda.jit(device=True, inline="always")
def _group_sum(shared, value, width):
    # the sum of `value` over each group of `width` consecutive threads of the block (width a
    # power of two dividing blockDim.x), returned to the group's threads: a fixed tree in
    # shared (REDUCE_THREADS float32), the same order every run. The barrier first lets every
    # thread read a previous call's sum before it is overwritten
    tid = cuda.threadIdx.x
    lane = tid % width
    cuda.syncthreads()
    shared[tid] = value
    cuda.syncthreads()
    stride = width // 2
    while stride > 0:
        if lane < stride:
            shared[tid] += shared[tid + stride]
        cuda.syncthreads()
        stride //= 2
    return shared[tid - lane]


@cuda.jit(device=True, inline="always")
def _unravel4(idx, size1, size2, size3):
    # flat index idx -> its (i0, i1, i2, i3) in a C-contiguous array of shape
    # (size0, size1, size2, size3), i3 running fastest: an activation (C,H,W,N) gives (c,h,w,n).
    # Inlined by Numba itself: the PTX is then the same as with the index worked out in place
    i3, rest = idx % size3, idx // size3
    return rest // (size1 * size2), rest // size2 % size1, rest % size2, i3


# ---- conv2d


@cuda.jit(device=True, inline="always")
def _conv2d_at(inp, weight, bias, oc, i, j, n):
    # out[oc,i,j,n] of conv2d_forward (and of the fused block's convolution)
    C, KH, KW = weight.shape[1], weight.shape[2], weight.shape[3]
    acc = bias[oc]
    for c in range(C):
        for kh in range(KH):
            for kw in range(KW):
                acc += weight[oc, c, kh, kw] * inp[c, i + kh, j + kw, n]
    return acc


@cuda.jit(cache=True)
def _conv2d_forward(out, inp, weight, bias):
    # inp (C,H,W,N), weight (OC,C,KH,KW), bias (OC,) -> out (OC,OH,OW,N), OH=H-KH+1, OW=W-KW+1
    # out[oc,i,j,n] = bias[oc] + sum over c, kh, kw of weight[oc,c,kh,kw] * inp[c,i+kh,j+kw,n]
    idx = cuda.grid(1)
    if idx >= out.size:
        return
    OC, OH, OW, N = out.shape
    oc, i, j, n = _unravel4(idx, OH, OW, N)
    out[oc, i, j, n] = _conv2d_at(inp, weight, bias, oc, i, j, n)


@cuda.jit(cache=True)
def _conv2d_backward_input(dinp, dout, weight):
    # overwrites dinp (C,H,W,N); dout (OC,OH,OW,N), weight (OC,C,KH,KW)
    # dinp[c,h,x,n] = sum over oc, kh, kw of weight[oc,c,kh,kw] * dout[oc,h-kh,x-kw,n], the taps
    # limited to those whose output position (h-kh, x-kw) exists; gathered: a thread a pixel
    idx = cuda.grid(1)
    if idx >= dinp.size:
        return
    C, H, W, N = dinp.shape
    OC, OH, OW = dout.shape[0], dout.shape[1], dout.shape[2]
    KH, KW = weight.shape[2], weight.shape[3]
    c, h, x, n = _unravel4(idx, H, W, N)
    acc = _ZERO
    for oc in range(OC):
        for kh in range(max(0, h - OH + 1), min(KH, h + 1)):
            for kw in range(max(0, x - OW + 1), min(KW, x + 1)):
                acc += weight[oc, c, kh, kw] * dout[oc, h - kh, x - kw, n]
    dinp[c, h, x, n] = acc


@cuda.jit(cache=True)
def _conv2d_backward_params(dweight, dbias, partials, dout, inp, group):
    # overwrites dweight (OC,C,KH,KW) and dbias (OC,), or with S > 1 segments partials (S,E),
    # E = dweight.size + OC (then summed over S by _sum_segments; with one segment partials
    # only says S = 1, and any (1, ...) array will do); dout (OC,OH,OW,N),
    # inp (C,H,W,N). Element e < dweight.size: dweight[oc,c,kh,kw] = sum over i, j, n of
    #   dout[oc,i,j,n] * inp[c,i+kh,j+kw,n]; the OC elements after: dbias[oc] = sum of dout[oc].
    # A group of `group` threads (a power of two) takes one element's share of the terms
    # (segment blockIdx.y of S), each thread a strided part of it, then _group_sum's tree:
    # blockDim.x // group elements a block, the same order every run
    OC, C, KH, KW = dweight.shape
    OH, OW, N = dout.shape[1], dout.shape[2], dout.shape[3]
    segments, elements = partials.shape[0], dweight.size + dbias.size
    tid = cuda.threadIdx.x
    lane = tid % group
    e = cuda.blockIdx.x * (cuda.blockDim.x // group) + tid // group
    is_weight = e < dweight.size
    if is_weight:
        oc, c, kh, kw = _unravel4(e, C, KH, KW)
    else:
        oc, c, kh, kw = min(e - dweight.size, OC - 1), 0, 0, 0
    terms = OH * OW * N
    share = (terms + segments - 1) // segments
    start = cuda.blockIdx.y * share
    stop = min(start + share, terms) if e < elements else start  # a group past the end: idle
    partial = _ZERO
    for t in range(start + lane, stop, group):  # t = (i*OW + j)*N + n
        # three indices, not _unravel4's four: its first division would stay in this hot loop
        n, pos = t % N, t // N
        i, j = pos // OW, pos % OW
        term = dout[oc, i, j, n]
        if is_weight:
            term *= inp[c, i + kh, j + kw, n]
        partial += term
    shared = cuda.shared.array(REDUCE_THREADS, float32)
    total = _group_sum(shared, partial, group)
    if lane == 0 and e < elements:
        if segments > 1:
            partials[cuda.blockIdx.y, e] = total
        elif is_weight:
            dweight[oc, c, kh, kw] = total
        else:
            dbias[oc] = total


@cuda.jit(cache=True)
def _sum_segments(dweight, dbias, partials):
    # overwrites dweight (P,) (flat) and dbias (OC,): element e of (dweight, dbias) one after
    # the other = partials[:, e] (S,E) summed in order, s = 0 first; a thread per element
    e = cuda.grid(1)
    if e >= partials.shape[1]:
        return
    total = partials[0, e]
    for s in range(1, partials.shape[0]):
        total += partials[s, e]
    if e < dweight.size:
        dweight[e] = total
    else:
        dbias[e - dweight.size] = total


def conv2d_forward(out, inp, weight, bias):
    """Cross-correlation, stride 1, no padding, with bias (torch.nn.functional.conv2d)."""
    _conv2d_forward[_blocks(out.size), THREADS](out, inp, weight, bias)


# (segments, elements) -> the device array _conv2d_backward_params leaves its segments' sums
# in: the one buffer a launcher makes itself (the kernel contract's exception: how many
# segments a sum takes is this backend's business, not the layer's), made once per shape (a
# few: a layer's at its batch sizes); the launches of a step run in order on one stream, so
# layers of one shape share it
_PARTIALS = {}


def _conv2d_params_grads(dweight, dbias, dout, inp):
    # dweight (OC,C,KH,KW), dbias (OC,), dout (OC,OH,OW,N): each element's terms split among
    # groups of threads and segments of blocks (TERMS_PER_THREAD), summed in a fixed order
    elements, terms = dweight.size + dbias.size, dout.size // dout.shape[0]
    group = _reduce_threads(-(-terms // TERMS_PER_THREAD))
    segments = -(-terms // (group * TERMS_PER_THREAD))
    if segments == 1:  # the sums go straight to dweight and dbias
        partials = view(dweight, (1, dweight.size))
    else:
        if (segments, elements) not in _PARTIALS:
            _PARTIALS[segments, elements] = empty((segments, elements))
        partials = _PARTIALS[segments, elements]
    per_block = REDUCE_THREADS // group
    _conv2d_backward_params[(-(-elements // per_block), segments), REDUCE_THREADS](
        dweight, dbias, partials, dout, inp, group)
    if segments > 1:
        _sum_segments[_blocks(elements), THREADS](_flat(dweight), dbias, partials)


def conv2d_backward(dinp, dweight, dbias, dout, inp, weight):
    """Overwrite dinp (skipped when None), dweight, dbias with conv2d_forward's gradients."""
    if dinp is not None:  # conv1's dinp, the image's gradient, is needed by nobody
        _conv2d_backward_input[_blocks(dinp.size), THREADS](dinp, dout, weight)
    _conv2d_params_grads(dweight, dbias, dout, inp)


# ---- avgpool2d


@cuda.jit(cache=True)
def _avgpool2d_forward(out, inp, k):
    # inp (C,H,W,N), H and W divisible by k -> out (C,H/k,W/k,N): mean of each k x k window
    idx = cuda.grid(1)
    if idx >= out.size:
        return
    C, OH, OW, N = out.shape
    c, i, j, n = _unravel4(idx, OH, OW, N)
    acc = _ZERO
    for a in range(k):
        for b in range(k):
            acc += inp[c, i * k + a, j * k + b, n]
    out[c, i, j, n] = acc * (_ONE / np.float32(k * k))


@cuda.jit(cache=True)
def _avgpool2d_backward(dinp, dout, k):
    # overwrites dinp (C,H,W,N); dout (C,H/k,W/k,N)
    # every pixel of a window contributed 1/(k*k) of its mean, so it gets 1/(k*k) of the gradient
    idx = cuda.grid(1)
    if idx >= dinp.size:
        return
    C, H, W, N = dinp.shape
    c, h, x, n = _unravel4(idx, H, W, N)
    dinp[c, h, x, n] = dout[c, h // k, x // k, n] * (_ONE / np.float32(k * k))


def avgpool2d_forward(out, inp, k):
    """Mean over non-overlapping k x k windows (torch.nn.functional.avg_pool2d(x, k))."""
    _avgpool2d_forward[_blocks(out.size), THREADS](out, inp, k)


def avgpool2d_backward(dinp, dout, k):
    """Overwrite dinp with the gradient of avgpool2d_forward."""
    _avgpool2d_backward[_blocks(dinp.size), THREADS](dinp, dout, k)


# ---- LeNet-5's convolution block fused: conv2d, tanh, avgpool2d(2), tanh


@cuda.jit(cache=True)
def _conv2d_tanh_avgpool2d_tanh_forward(out, act, inp, weight, bias):
    # inp (C,H,W,N), weight (OC,C,KH,KW), bias (OC,) -> act (OC,OH,OW,N) = tanh(conv2d),
    # out (OC,OH/2,OW/2,N) = tanh(avgpool2d(act, 2)): a thread per pooled output, its window's
    # four convolution sums, each through tanh, then their mean (avgpool2d_forward's order)
    idx = cuda.grid(1)
    if idx >= out.size:
        return
    OC, PH, PW, N = out.shape
    oc, i, j, n = _unravel4(idx, PH, PW, N)
    acc = _ZERO
    for a in range(2):
        for b in range(2):
            y = math.tanh(_conv2d_at(inp, weight, bias, oc, 2 * i + a, 2 * j + b, n))
            act[oc, 2 * i + a, 2 * j + b, n] = y
            acc += y
    out[oc, i, j, n] = math.tanh(acc * np.float32(0.25))


@cuda.jit(cache=True)
def _tanh_avgpool2d_tanh_backward(dinp, act, out, dout):
    # overwrites dinp (C,H,W,N), the convolution output's gradient; act (C,H,W,N) and out
    # (C,H/2,W/2,N) the forward's saved outputs, dout (C,H/2,W/2,N): a thread a pixel, the
    # three backwards' products in their order
    idx = cuda.grid(1)
    if idx >= dinp.size:
        return
    C, H, W, N = dinp.shape
    c, h, x, n = _unravel4(idx, H, W, N)
    y, t = out[c, h // 2, x // 2, n], act[c, h, x, n]
    dinp[c, h, x, n] = dout[c, h // 2, x // 2, n] * (_ONE - y * y) * np.float32(0.25) * (
        _ONE - t * t)


def conv2d_tanh_avgpool2d_tanh_forward(out, act, inp, weight, bias):
    """tanh(avg_pool2d(tanh(conv2d(inp, weight, bias)), 2)) into out, the inner tanh into
    act (the backward reads both)."""
    _conv2d_tanh_avgpool2d_tanh_forward[_blocks(out.size), THREADS](out, act, inp, weight,
                                                                   bias)


def tanh_avgpool2d_tanh_backward(dinp, act, out, dout):
    """Overwrite dinp with the gradient of conv2d_tanh_avgpool2d_tanh_forward's convolution
    output, from its saved act and out and the block's dout."""
    _tanh_avgpool2d_tanh_backward[_blocks(dinp.size), THREADS](dinp, act, out, dout)


# ---- maxpool2d


@cuda.jit(device=True, inline="always")
def _window_max(inp, c, i, j, n, k):
    # the largest element of window (i, j), a NaN taking over as in torch's kernel
    best = inp[c, i * k, j * k, n]
    for a in range(k):
        for b in range(k):
            v = inp[c, i * k + a, j * k + b, n]
            if v > best or v != v:
                best = v
    return best


@cuda.jit(cache=True)
def _maxpool2d_forward(out, inp, k):
    # inp (C,H,W,N), H and W divisible by k -> out (C,H/k,W/k,N): max of each k x k window
    idx = cuda.grid(1)
    if idx >= out.size:
        return
    C, OH, OW, N = out.shape
    c, i, j, n = _unravel4(idx, OH, OW, N)
    out[c, i, j, n] = _window_max(inp, c, i, j, n, k)


@cuda.jit(cache=True)
def _maxpool2d_backward(dinp, out, inp, dout, k):
    # overwrites dinp (C,H,W,N); out (C,H/k,W/k,N) and inp (C,H,W,N) saved by the forward,
    # dout (C,H/k,W/k,N): a thread per input pixel, which gets its window's gradient if it is
    # the window's first element (row-major) equal to the maximum (or the first NaN), else 0
    idx = cuda.grid(1)
    if idx >= dinp.size:
        return
    C, H, W, N = dinp.shape
    c, h, x, n = _unravel4(idx, H, W, N)
    i, j = h // k, x // k
    peak = out[c, i, j, n]
    first = k * k  # the first position holding the maximum
    for p in range(k * k - 1, -1, -1):
        v = inp[c, i * k + p // k, j * k + p % k, n]
        if v == peak or v != v:
            first = p
    chosen = (h - i * k) * k + (x - j * k) == first
    dinp[c, h, x, n] = dout[c, i, j, n] if chosen else _ZERO


def maxpool2d_forward(out, inp, k):
    """Max over non-overlapping k x k windows (torch.nn.functional.max_pool2d(x, k))."""
    _maxpool2d_forward[_blocks(out.size), THREADS](out, inp, k)


def maxpool2d_backward(dinp, out, inp, dout, k):
    """Overwrite dinp with the gradient of maxpool2d_forward, routed as torch routes it."""
    _maxpool2d_backward[_blocks(dinp.size), THREADS](dinp, out, inp, dout, k)


# ---- tanh (elementwise, on flat views)


@cuda.jit(cache=True)
def _tanh_forward(out, inp):
    # inp (P,) -> out (P,); out may be inp (in place); libdevice's tanhf, within 2 ulp
    idx = cuda.grid(1)
    if idx < out.size:
        out[idx] = math.tanh(inp[idx])


@cuda.jit(cache=True)
def _tanh_backward(dinp, out, dout):
    # overwrites dinp (P,) (which may be dout: in place); out (P,) the forward's saved output
    # d tanh(x)/dx = 1 - tanh(x)^2, read from the saved output instead of recomputing tanh
    idx = cuda.grid(1)
    if idx < dinp.size:
        y = out[idx]
        dinp[idx] = dout[idx] * (_ONE - y * y)


def tanh_forward(out, inp):
    """Elementwise tanh, any shape (C-contiguous)."""
    _tanh_forward[_blocks(out.size), THREADS](_flat(out), _flat(inp))


def tanh_backward(dinp, out, dout):
    """Overwrite dinp with dout * (1 - out^2), out being tanh_forward's saved output."""
    _tanh_backward[_blocks(dinp.size), THREADS](_flat(dinp), _flat(out), _flat(dout))


# ---- relu and silu (elementwise, on flat views)


@cuda.jit(cache=True)
def _relu_forward(out, inp):
    # inp (P,) -> out (P,) = max(inp, 0); a NaN stays NaN
    idx = cuda.grid(1)
    if idx < out.size:
        x = inp[idx]
        out[idx] = _ZERO if x < _ZERO else x


@cuda.jit(cache=True)
def _relu_backward(dinp, out, dout):
    # overwrites dinp (P,); out (P,) the forward's saved output: the gradient passes where it
    # is positive, 0 at exactly 0 (torch's)
    idx = cuda.grid(1)
    if idx < dinp.size:
        dinp[idx] = dout[idx] if out[idx] > _ZERO else _ZERO


@cuda.jit(device=True, inline="always")
def _sigmoid(x):
    # 1 / (1 + e^-x), libdevice's expf; 0 where e^-x overflows
    return _ONE / (_ONE + math.exp(-x))


@cuda.jit(cache=True)
def _silu_forward(out, inp):
    # inp (P,) -> out (P,) = inp * sigmoid(inp)
    idx = cuda.grid(1)
    if idx < out.size:
        x = inp[idx]
        out[idx] = x * _sigmoid(x)


@cuda.jit(cache=True)
def _silu_backward(dinp, inp, dout):
    # overwrites dinp (P,); inp (P,) the forward's saved input
    # d (x s(x)) / dx = s(x) (1 + x (1 - s(x)))
    idx = cuda.grid(1)
    if idx < dinp.size:
        x = inp[idx]
        s = _sigmoid(x)
        dinp[idx] = dout[idx] * s * (_ONE + x * (_ONE - s))


def relu_forward(out, inp):
    """Elementwise max(x, 0), any shape (C-contiguous)."""
    _relu_forward[_blocks(out.size), THREADS](_flat(out), _flat(inp))


def relu_backward(dinp, out, dout):
    """Overwrite dinp with dout where out > 0, else 0, out being relu_forward's output."""
    _relu_backward[_blocks(dinp.size), THREADS](_flat(dinp), _flat(out), _flat(dout))


def silu_forward(out, inp):
    """Elementwise x * sigmoid(x), any shape (C-contiguous)."""
    _silu_forward[_blocks(out.size), THREADS](_flat(out), _flat(inp))


def silu_backward(dinp, inp, dout):
    """Overwrite dinp with silu's gradient at the forward's input inp, times dout."""
    _silu_backward[_blocks(dinp.size), THREADS](_flat(dinp), _flat(inp), _flat(dout))


# ---- linear


@cuda.jit(cache=True)
def _linear_forward(out, inp, weight, bias):
    # inp (IN,N), weight (OUT,IN), bias (OUT,) -> out (OUT,N) = weight @ inp + bias
    idx = cuda.grid(1)
    if idx >= out.size:
        return
    N = out.shape[1]
    o, n = idx // N, idx % N
    acc = bias[o]
    for i in range(inp.shape[0]):
        acc += weight[o, i] * inp[i, n]
    out[o, n] = acc


@cuda.jit(cache=True)
def _linear_backward_input(dinp, dout, weight):
    # overwrites dinp (IN,N) = weight.T @ dout; dout (OUT,N), weight (OUT,IN)
    idx = cuda.grid(1)
    if idx >= dinp.size:
        return
    N = dinp.shape[1]
    i, n = idx // N, idx % N
    acc = _ZERO
    for o in range(dout.shape[0]):
        acc += weight[o, i] * dout[o, n]
    dinp[i, n] = acc


def linear_forward(out, inp, weight, bias):
    """out = weight @ inp + bias: torch.nn.functional.linear with the batch last."""
    _linear_forward[_blocks(out.size), THREADS](out, inp, weight, bias)


def linear_backward(dinp, dweight, dbias, scratch, dout, inp, weight):
    """Overwrite dinp (skipped when None), dweight, dbias with linear_forward's gradients
    (scratch (N,IN), where the CPU's kernel transposes inp, is not used here)."""
    if dinp is not None:  # a network's input: its gradient is needed by nobody
        _linear_backward_input[_blocks(dinp.size), THREADS](dinp, dout, weight)
    # dweight = dout @ inp.T and dbias = dout summed over n are conv2d's parameter gradients
    # on 1x1 images with a 1x1 kernel (which is what a linear layer is): views, no copies
    (OUT, IN), N = dweight.shape, inp.shape[1]
    _conv2d_params_grads(view(dweight, (OUT, IN, 1, 1)), dbias, view(dout, (OUT, 1, 1, N)),
                         view(inp, (IN, 1, 1, N)))


# ---- softmax cross-entropy


@cuda.jit(cache=True)
def _softmax_xent_forward(losses, probs, logits, labels, smoothing):
    # logits (V,N), labels (N,) ints in [0,V) -> losses (N,) per sample, probs (V,N) saved
    # losses[n] = logsumexp(logits[:,n]) - target, with the column max taken out first so
    # that exp never overflows; target as cpu.py's (label smoothing); a thread per sample
    n = cuda.grid(1)
    V, N = logits.shape
    if n >= N:
        return
    col_max = logits[0, n]
    for v in range(1, V):
        col_max = max(col_max, logits[v, n])
    total = _ZERO
    for v in range(V):
        e = math.exp(logits[v, n] - col_max)
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
    losses[n] = math.log(total) + col_max - target


@cuda.jit(cache=True)
def _softmax_xent_backward(dlogits, probs, labels, dloss, smoothing):
    # overwrites dlogits (V,N); probs (V,N) saved by the forward, dloss the mean loss's gradient
    # d mean_n(loss_n) / d logits[v,n] = (probs[v,n] - (1 - e) [v == labels[n]] - e / V) / N
    idx = cuda.grid(1)
    if idx >= dlogits.size:
        return
    V, N = dlogits.shape
    v, n = idx // N, idx % N
    scale = dloss / np.float32(N)
    grad = probs[v, n] * scale - scale * smoothing / np.float32(V)
    if v == labels[n]:
        grad -= scale * (_ONE - smoothing)
    dlogits[v, n] = grad


def softmax_xent_forward(losses, probs, logits, labels, smoothing):
    """Per-sample cross-entropy into losses and the softmax into probs (logits (V,N)), with
    label smoothing (a float32; 0 for none)."""
    _softmax_xent_forward[_blocks(losses.size), THREADS](losses, probs, logits, labels,
                                                         smoothing)


def softmax_xent_backward(dlogits, probs, labels, dloss, smoothing):
    """Overwrite dlogits with the gradient of the mean loss, scaled by the float32 dloss."""
    _softmax_xent_backward[_blocks(dlogits.size), THREADS](dlogits, probs, labels, dloss,
                                                           smoothing)


@cuda.jit(cache=True)
def _loss_sum(sums, losses, index):
    # losses (N,) -> sums[index] = their sum, the rest of sums untouched; one block, each
    # thread a strided share, then _group_sum's tree
    tid = cuda.threadIdx.x
    partial = _ZERO
    for n in range(tid, losses.size, cuda.blockDim.x):
        partial += losses[n]
    shared = cuda.shared.array(REDUCE_THREADS, float32)
    total = _group_sum(shared, partial, cuda.blockDim.x)
    if tid == 0:
        sums[index] = total


def loss_sum(sums, losses, index):
    """sums[index] = the sum of the per-sample losses (N,): a step's loss, kept on the GPU."""
    _loss_sum[1, _reduce_threads(losses.size)](sums, losses, index)
