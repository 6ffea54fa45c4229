"""numba.cuda kernels of the optimizers: cpu_optim.py's updates, names and signatures.

One thread per parameter, float32 scalars worked out by tinyconv.optim; each launcher queues
its kernel and returns at once, as cuda.py's do.
"""

import math

from numba import cuda

from tinyconv.kernels.cuda import _ONE, _ZERO, THREADS, _blocks


@cuda.jit(cache=True)
def _adam_update(params, m, v, grads, step_size, bias_correction2_sqrt, one_minus_beta1, beta2,
                 one_minus_beta2, eps, weight_decay, decay):
    # updates params, m, v (P,) in place from grads (P,), as cpu_optim.adam_update
    idx = cuda.grid(1)
    if idx >= params.size:
        return
    g = grads[idx] + weight_decay * params[idx]  # L2 weight decay, folded into the gradient
    m[idx] += one_minus_beta1 * (g - m[idx])  # first moment, torch's lerp
    v[idx] = beta2 * v[idx] + one_minus_beta2 * g * g  # second moment
    denom = math.sqrt(v[idx]) / bias_correction2_sqrt + eps  # eps after the square root
    if decay != _ONE:  # AdamW's decoupled decay
        params[idx] *= decay
    params[idx] -= step_size * (m[idx] / denom)


@cuda.jit(cache=True)
def _sgd_update(params, momentum_buffer, grads, lr, momentum, dampening, weight_decay, nesterov,
                first):
    # updates params and momentum_buffer (P,) in place from grads (P,), as cpu_optim's
    idx = cuda.grid(1)
    if idx >= params.size:
        return
    d = grads[idx] + weight_decay * params[idx]
    if momentum != _ZERO:
        if first:
            momentum_buffer[idx] = d
        else:
            momentum_buffer[idx] = momentum * momentum_buffer[idx] + (_ONE - dampening) * d
        d = d + momentum * momentum_buffer[idx] if nesterov else momentum_buffer[idx]
    params[idx] -= lr * d


@cuda.jit(cache=True)
def _adagrad_update(params, state_sum, grads, clr, eps, weight_decay):
    # updates params and state_sum (P,) in place from grads (P,), as cpu_optim's
    idx = cuda.grid(1)
    if idx >= params.size:
        return
    g = grads[idx] + weight_decay * params[idx]
    state_sum[idx] += g * g
    params[idx] -= clr * (g / (math.sqrt(state_sum[idx]) + eps))


@cuda.jit(cache=True)
def _ema_update(averaged, current, weight, first):
    # moves averaged (P,) weight of the way to current (P,), as cpu_optim.ema_update
    idx = cuda.grid(1)
    if idx >= averaged.size:
        return
    if first:
        averaged[idx] = current[idx]
    else:
        averaged[idx] += weight * (current[idx] - averaged[idx])


def adam_update(params, m, v, grads, step_size, bias_correction2_sqrt, one_minus_beta1, beta2,
                one_minus_beta2, eps, weight_decay, decay):
    """One torch.optim.Adam (or AdamW) step over flat float32 device buffers, in place."""
    _adam_update[_blocks(params.size), THREADS](
        params, m, v, grads, step_size, bias_correction2_sqrt, one_minus_beta1, beta2,
        one_minus_beta2, eps, weight_decay, decay)


def sgd_update(params, momentum_buffer, grads, lr, momentum, dampening, weight_decay,
               nesterov, first):
    """One torch.optim.SGD step over flat float32 device buffers, in place."""
    _sgd_update[_blocks(params.size), THREADS](
        params, momentum_buffer, grads, lr, momentum, dampening, weight_decay, bool(nesterov),
        bool(first))


def adagrad_update(params, state_sum, grads, clr, eps, weight_decay):
    """One torch.optim.Adagrad step over flat float32 device buffers, in place."""
    _adagrad_update[_blocks(params.size), THREADS](params, state_sum, grads, clr, eps,
                                                   weight_decay)


def ema_update(averaged, current, weight, first):
    """One step of an exponential moving average over flat float32 device buffers, in place."""
    _ema_update[_blocks(averaged.size), THREADS](averaged, current, weight, bool(first))
