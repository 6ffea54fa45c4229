"""Plain NumPy forward and backward of every op: the readable oracle for the fast kernels.

Letters: N batch, C input channels, OC output channels, H/W input height and width,
OH/OW output height and width, KH/KW kernel height and width, k pooling window,
IN/OUT linear features, V classes.

Unlike the kernels, these functions allocate and return their results, work in whatever float
dtype they are given (float64 for the tests' tight checks) and favour clarity over speed.
Every backward takes the upstream gradient `dout` and returns the gradients of its inputs.
"""

import numpy as np


def conv2d_forward(inp, weight, bias):
    """Cross-correlation, stride 1, no padding, as torch.nn.functional.conv2d (padding: see
    pad2d)."""
    # inp (N,C,H,W), weight (OC,C,KH,KW), bias (OC,) -> out (N,OC,OH,OW), OH=H-KH+1, OW=W-KW+1
    # https://pytorch.org/docs/stable/generated/torch.nn.Conv2d.html
    N, C, H, W = inp.shape
    OC, _, KH, KW = weight.shape
    OH, OW = H - KH + 1, W - KW + 1
    out = np.zeros((N, OC, OH, OW), dtype=inp.dtype) + bias[None, :, None, None]
    # out[n,oc,i,j] = bias[oc] + sum over c, kh, kw of weight[oc,c,kh,kw] * inp[n,c,i+kh,j+kw]:
    # one kernel tap at a time, the tap's window of the input summed over c.
    for kh in range(KH):
        for kw in range(KW):
            window = inp[:, :, kh:kh + OH, kw:kw + OW]
            out += np.einsum("nchw,oc->nohw", window, weight[:, :, kh, kw])
    return out


def conv2d_backward(dout, inp, weight):
    """Gradients of conv2d_forward: returns (dinp, dweight, dbias)."""
    # dout (N,OC,OH,OW), inp (N,C,H,W), weight (OC,C,KH,KW)
    OC, C, KH, KW = weight.shape
    OH, OW = dout.shape[2:]
    dinp = np.zeros_like(inp)
    dweight = np.zeros_like(weight)
    for kh in range(KH):
        for kw in range(KW):
            window = (slice(None), slice(None), slice(kh, kh + OH), slice(kw, kw + OW))
            # the tap's weight saw every pixel of its window, summed over the batch and positions
            dweight[:, :, kh, kw] = np.einsum("nohw,nchw->oc", dout, inp[window])
            # and each window pixel fed every output channel through this tap
            dinp[window] += np.einsum("nohw,oc->nchw", dout, weight[:, :, kh, kw])
    dbias = dout.sum(axis=(0, 2, 3))
    return dinp, dweight, dbias


def pad2d_forward(inp, p):
    """Zeros around each image, p on every side: Conv2d(padding=p) convolves the padded input."""
    # inp (N,C,H,W) -> out (N,C,H+2p,W+2p)
    return np.pad(inp, ((0, 0), (0, 0), (p, p), (p, p)))


def pad2d_backward(dout, p):
    """Gradient of pad2d_forward: the padded gradient without its border."""
    # dout (N,C,H+2p,W+2p) -> dinp (N,C,H,W)
    H, W = dout.shape[2] - 2 * p, dout.shape[3] - 2 * p
    return dout[:, :, p:p + H, p:p + W]


def avgpool2d_forward(inp, k):
    """Average over non-overlapping k x k windows, as torch.nn.functional.avg_pool2d(x, k)."""
    # inp (N,C,H,W) with H, W divisible by k -> out (N,C,H/k,W/k)
    N, C, H, W = inp.shape
    return inp.reshape(N, C, H // k, k, W // k, k).mean(axis=(3, 5))


def avgpool2d_backward(dout, k):
    """Gradient of avgpool2d_forward: each input pixel gets 1/(k*k) of its window's gradient."""
    # dout (N,C,OH,OW) -> dinp (N,C,OH*k,OW*k)
    return np.repeat(np.repeat(dout, k, axis=2), k, axis=3) / (k * k)


def maxpool2d_forward(inp, k):
    """Max over non-overlapping k x k windows, as torch.nn.functional.max_pool2d(x, k)."""
    # inp (N,C,H,W) with H, W divisible by k -> out (N,C,H/k,W/k)
    return _windows(inp, k).max(axis=-1)


def maxpool2d_backward(dout, inp, k):
    """Gradient of maxpool2d_forward: each window's gradient goes to its largest element, the
    first in row-major order where several are equal (torch's choice)."""
    # dout (N,C,OH,OW), inp (N,C,OH*k,OW*k) saved by the forward -> dinp like inp
    N, C, OH, OW = dout.shape
    windows = _windows(inp, k)  # (N,C,OH,OW,k*k)
    first_max = np.argmax(windows, axis=-1)  # the first of equal maxima
    onehot = np.arange(k * k) == first_max[..., None]
    routed = onehot * dout[..., None]  # (N,C,OH,OW,k*k)
    return routed.reshape(N, C, OH, OW, k, k).transpose(0, 1, 2, 4, 3, 5).reshape(inp.shape)


def _windows(inp, k):
    """(N,C,H,W) -> (N,C,H/k,W/k,k*k): each window's values in row-major order."""
    N, C, H, W = inp.shape
    return inp.reshape(N, C, H // k, k, W // k, k).transpose(0, 1, 2, 4, 3, 5).reshape(
        N, C, H // k, W // k, k * k)


def tanh_forward(inp):
    """Elementwise tanh."""
    return np.tanh(inp)


def tanh_backward(dout, out):
    """Gradient of tanh from its saved output: d tanh(x)/dx = 1 - tanh(x)^2."""
    return dout * (1 - out * out)


def conv2d_tanh_avgpool2d_tanh_forward(inp, weight, bias):
    """LeNet-5's convolution block, the four ops one after another: returns (out, act), act
    the first tanh's output (which the backward reads)."""
    # inp (N,C,H,W) -> out (N,OC,OH/2,OW/2), act (N,OC,OH,OW)
    act = tanh_forward(conv2d_forward(inp, weight, bias))
    return tanh_forward(avgpool2d_forward(act, 2)), act


def tanh_avgpool2d_tanh_backward(dout, act, out):
    """The block's gradient down to its convolution's output, from the forward's act and
    out: the three backwards one after another."""
    # dout (N,OC,OH/2,OW/2) -> the convolution output's gradient (N,OC,OH,OW)
    return tanh_backward(avgpool2d_backward(tanh_backward(dout, out), 2), act)


def relu_forward(inp):
    """Elementwise max(x, 0), NaN kept, as torch.relu."""
    return np.where(inp < 0, 0, inp)


def relu_backward(dout, out):
    """Gradient of relu from its saved output: dout where the output is positive, else 0
    (torch's choice at exactly 0)."""
    return np.where(out > 0, dout, 0)


def silu_forward(inp):
    """Elementwise x * sigmoid(x), as torch.nn.functional.silu."""
    return inp / (1 + np.exp(-inp))


def silu_backward(dout, inp):
    """Gradient of silu from its saved input: sigmoid(x) * (1 + x * (1 - sigmoid(x)))."""
    sigmoid = 1 / (1 + np.exp(-inp))
    return dout * sigmoid * (1 + inp * (1 - sigmoid))


def batchnorm_forward(inp, weight, bias, eps):
    """Training-mode batch norm, as torch.nn.functional.batch_norm(training=True): each
    channel normalised by its batch mean and biased variance, then scaled and shifted.
    Returns (out, mean, var) with var the biased variance (the running update takes the
    unbiased one: batchnorm_running_update)."""
    # inp (N,C,*) -> out like inp; weight, bias, mean, var (C,)
    # https://pytorch.org/docs/stable/generated/torch.nn.BatchNorm2d.html
    axes, shape = _channel_axes(inp)
    mean = inp.mean(axis=axes)
    var = ((inp - mean.reshape(shape)) ** 2).mean(axis=axes)
    return batchnorm_eval_forward(inp, mean, var, weight, bias, eps), mean, var


def batchnorm_eval_forward(inp, mean, var, weight, bias, eps):
    """Batch norm with given statistics (eval mode: the running ones)."""
    _, shape = _channel_axes(inp)
    invstd = 1 / np.sqrt(var + eps)
    return (inp - mean.reshape(shape)) * (invstd * weight).reshape(shape) + bias.reshape(shape)


def batchnorm_running_update(running_mean, running_var, mean, var, count, momentum):
    """torch's running statistics after a training step over `count` values per channel:
    each moves `momentum` of the way to the batch's mean and UNBIASED variance."""
    unbiased = var * count / (count - 1)
    return ((1 - momentum) * running_mean + momentum * mean,
            (1 - momentum) * running_var + momentum * unbiased)


def batchnorm_backward(dout, inp, mean, var, weight, eps, batch_stats=True):
    """Gradients of batch norm: returns (dinp, dweight, dbias). With batch_stats (training),
    through the batch statistics: dinp = w * invstd * (dout - mean(dout) - xhat *
    mean(dout * xhat)); without (eval), the statistics are constants: dinp = dout * w * invstd."""
    axes, shape = _channel_axes(inp)
    invstd = 1 / np.sqrt(var + eps)
    xhat = (inp - mean.reshape(shape)) * invstd.reshape(shape)
    dbias, dweight = dout.sum(axis=axes), (dout * xhat).sum(axis=axes)
    gain = (weight * invstd).reshape(shape)
    if not batch_stats:
        return dout * gain, dweight, dbias
    count = inp.size // inp.shape[1]
    return gain * (dout - (dbias / count).reshape(shape) - xhat * (dweight / count).reshape(
        shape)), dweight, dbias


def _channel_axes(inp):
    """The axes a batch norm sums over (all but the channels, axis 1) and the shape that
    broadcasts a (C,) vector against inp."""
    axes = (0, *range(2, inp.ndim))
    return axes, (1, inp.shape[1], *(1,) * (inp.ndim - 2))


# ---- dropout: a counter-based hash gives each element its bits, the same on every backend

_MASK32 = 0xFFFFFFFF


def mix32(x):
    """Wellons' lowbias32 integer hash on uint32 (any integer array or int, wrapped)."""
    x = np.asarray(x, np.uint64) & _MASK32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _MASK32
    x ^= x >> 16
    return x


def dropout_bits(size, seed, step):
    """The hash bits (size,) uint64 of elements 0..size-1 for a layer's seed and a step:
    bits(i) = mix32(mix32(i ^ key1) + key2), key1 = mix32(mix32(seed) ^ step),
    key2 = mix32(key1 ^ 0x9e3779b9)."""
    key1 = mix32(mix32(seed) ^ (step & _MASK32))
    key2 = mix32(key1 ^ 0x9E3779B9)
    index = np.arange(size, dtype=np.uint64)
    return mix32((mix32(index ^ key1) + key2) & _MASK32)


def dropout_threshold(p):
    """The bits below which an element is dropped: round(p * 2^32), so P(drop) = p to 2^-33,
    as a uint32 (at most 2^32 - 1: at p = 1 the scale, 0, drops the rest)."""
    return min(round(float(p) * 2**32), 2**32 - 1)


def dropout_forward(inp, keep, p):
    """Inverted dropout for a given mask: inp * keep / (1 - p) (0 everywhere when p is 1)."""
    return inp * np.where(keep, 1 / (1 - p) if p < 1 else 0, 0)


def dropout_backward(dout, keep, p):
    """Gradient of dropout_forward: the same mask and scale on the gradient."""
    return dropout_forward(dout, keep, p)


def add(a, b):
    """Elementwise a + b (a residual's skip)."""
    return a + b


# ---- the data pipeline's distortions (tinyconv.kernels.cpu_augment), batch-first canvases


def elastic_noise(size, seed):
    """(size,) uniform noise in [-1, 1]: element i is 2 * mix32(i ^ mix32(seed)) / 2^32 - 1."""
    bits = mix32(np.arange(size, dtype=np.uint64) ^ mix32(seed))
    return 2 * (bits / 2**32) - 1


def gaussian_blur(inp, weights):
    """Each map of inp (S,S,M) convolved with weights (K,) along rows, then along columns,
    zero beyond the edges (a 'same'-size convolution; the weights are symmetric)."""
    R, S = len(weights) // 2, inp.shape[0]
    along_x = np.pad(inp, ((0, 0), (R, R), (0, 0)))
    rows = sum(w * along_x[:, k:k + S] for k, w in enumerate(weights))
    along_y = np.pad(rows, ((R, R), (0, 0), (0, 0)))
    return sum(w * along_y[k:k + S] for k, w in enumerate(weights))


def warp_bilinear(src, matrices, fields=None):
    """src (N,S,S) sampled at each output pixel's source (matrices (N,2,3) applied to
    (x, y, 1), plus fields (S,S,N,2) if given), bilinearly, zero outside the canvas."""
    N, S, _ = src.shape
    y, x = np.mgrid[0:S, 0:S].astype(np.float64)
    out = np.zeros(src.shape)
    for n in range(N):
        m = matrices[n].astype(np.float64)
        sx = m[0, 0] * x + m[0, 1] * y + m[0, 2]
        sy = m[1, 0] * x + m[1, 1] * y + m[1, 2]
        if fields is not None:
            sx, sy = sx + fields[:, :, n, 0], sy + fields[:, :, n, 1]
        x0, y0 = np.floor(sx), np.floor(sy)
        for dy in (0, 1):
            for dx in (0, 1):
                cols, rows = (x0 + dx).astype(int), (y0 + dy).astype(int)
                weight = (sx - x0 if dx else 1 - (sx - x0)) * (sy - y0 if dy else 1 - (sy - y0))
                inside = (cols >= 0) & (cols < S) & (rows >= 0) & (rows < S)
                out[n] += np.where(inside, weight * src[n, rows.clip(0, S - 1),
                                                        cols.clip(0, S - 1)], 0)
    return out


def linear_forward(inp, weight, bias):
    """y = x W^T + b with torch's (OUT, IN) weight layout, as torch.nn.functional.linear."""
    # inp (N,IN), weight (OUT,IN), bias (OUT,) -> out (N,OUT)
    return inp @ weight.T + bias


def linear_backward(dout, inp, weight):
    """Gradients of linear_forward: returns (dinp, dweight, dbias)."""
    # dout (N,OUT), inp (N,IN), weight (OUT,IN)
    return dout @ weight, dout.T @ inp, dout.sum(axis=0)


def softmax_xent_forward(logits, labels, smoothing=0.0):
    """Mean cross-entropy of softmax(logits) against integer labels, the target smoothed by
    `smoothing` as torch's label_smoothing: returns (loss, probs)."""
    # logits (N,V), labels (N,) ints in [0,V) -> loss scalar, probs (N,V)
    # https://pytorch.org/docs/stable/generated/torch.nn.CrossEntropyLoss.html
    # log-sum-exp with the row maximum taken out, so exp never overflows
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_sum = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    log_probs = shifted - log_sum
    rows = np.arange(len(labels))
    loss = -((1 - smoothing) * log_probs[rows, labels] + smoothing * log_probs.mean(axis=1))
    return loss.mean(), np.exp(log_probs)


def softmax_xent_backward(probs, labels, dloss=1.0, smoothing=0.0):
    """Gradient of the mean cross-entropy: dlogits = dloss * (probs - target) / N, the target
    (1 - smoothing) onehot(labels) + smoothing / V."""
    # probs (N,V), labels (N,) -> dlogits (N,V)
    target = np.full_like(probs, smoothing / probs.shape[1])
    target[np.arange(len(labels)), labels] += 1 - smoothing
    return dloss * (probs - target) / len(labels)


def adam_update(params, m, v, grads, lr, beta1, beta2, eps, weight_decay, step,
                decoupled=False):
    """One step of torch.optim.Adam (amsgrad off), or with decoupled weight decay of
    torch.optim.AdamW: returns the new (params, m, v)."""
    # https://pytorch.org/docs/stable/generated/torch.optim.Adam.html, .../torch.optim.AdamW.html
    # step counts from 1; Adam's weight decay is L2, folded into the gradient; AdamW's
    # shrinks the parameters first and leaves the gradient alone
    if decoupled:
        params, weight_decay = params * (1 - lr * weight_decay), 0.0
    g = grads + weight_decay * params
    m = m + (1 - beta1) * (g - m)             # first moment, torch's lerp
    v = beta2 * v + (1 - beta2) * g * g       # second moment
    step_size = lr / (1 - beta1**step)        # the first moment's bias correction
    bias_correction2_sqrt = np.sqrt(1 - beta2**step)
    denom = np.sqrt(v) / bias_correction2_sqrt + eps  # eps after the square root
    return params - step_size * (m / denom), m, v


def sgd_update(params, buf, grads, lr, momentum, dampening, weight_decay, nesterov, step):
    """One step of torch.optim.SGD: returns the new (params, momentum buffer)."""
    # https://pytorch.org/docs/stable/generated/torch.optim.SGD.html
    d = grads + weight_decay * params
    if momentum:
        buf = d if step == 1 else momentum * buf + (1 - dampening) * d
        d = d + momentum * buf if nesterov else buf
    return params - lr * d, buf


def adagrad_update(params, state_sum, grads, lr, lr_decay, weight_decay, eps, step):
    """One step of torch.optim.Adagrad (initial accumulator 0): the new (params, state_sum)."""
    # https://pytorch.org/docs/stable/generated/torch.optim.Adagrad.html
    g = grads + weight_decay * params
    state_sum = state_sum + g * g
    clr = lr / (1 + (step - 1) * lr_decay)
    return params - clr * g / (np.sqrt(state_sum) + eps), state_sum


def ema_update(averaged, current, decay, first):
    """One update of torch.optim.swa_utils.AveragedModel with get_ema_multi_avg_fn(decay):
    the new average, current itself on the first update."""
    # https://pytorch.org/docs/stable/optim.html#weight-averaging-swa-and-ema
    return current.copy() if first else averaged + (1 - decay) * (current - averaged)
