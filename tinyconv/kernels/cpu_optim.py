"""Numba CPU kernels of the optimizers: one update of a flat parameter buffer per call, in
place, as torch.optim's step does (its single-tensor code, for float32 parameters).

The same conventions as cpu.py: float32, parallel, deterministic (each element on its own);
P is the parameter count. The caller works the scalars out in float64 from Python floats, as
torch does, and only then rounds them to float32 (tinyconv.optim).
"""

import numpy as np
from numba import njit, prange

from tinyconv.kernels.cpu import _JIT, _ONE, _ZERO


@njit(**_JIT)
def adam_update(params, m, v, grads, step_size, bias_correction2_sqrt, one_minus_beta1, beta2,
                one_minus_beta2, eps, weight_decay, decay):
    # updates params, m, v (P,) in place from grads (P,): torch.optim.Adam's step, and
    # AdamW's with decay = 1 - lr * weight_decay (decoupled: the parameters shrink first) and
    # weight_decay 0; Adam's L2 weight_decay is folded into the gradient, with decay 1.
    # step_size = lr / (1 - beta1**step), bias_correction2_sqrt = sqrt(1 - beta2**step)
    for idx in prange(params.size):
        g = grads[idx] + weight_decay * params[idx]
        m[idx] += one_minus_beta1 * (g - m[idx])  # first moment, torch's lerp
        v[idx] = beta2 * v[idx] + one_minus_beta2 * g * g  # second moment
        denom = np.sqrt(v[idx]) / bias_correction2_sqrt + eps  # eps after the square root
        if decay != _ONE:  # a statement of its own: Adam's update stays bit for bit as it was
            params[idx] *= decay
        params[idx] -= step_size * (m[idx] / denom)


@njit(**_JIT)
def sgd_update(params, momentum_buffer, grads, lr, momentum, dampening, weight_decay,
               nesterov, first):
    # updates params (P,) and, with momentum, momentum_buffer (P,) in place from grads (P,):
    # torch.optim.SGD's step. d = g + weight_decay * p; the buffer starts as d (first step),
    # then b = momentum * b + (1 - dampening) * d; the step is d + momentum * b (nesterov)
    # or b, or d without momentum; p -= lr * step
    for idx in prange(params.size):
        d = grads[idx] + weight_decay * params[idx]
        if momentum != _ZERO:
            if first:
                momentum_buffer[idx] = d
            else:
                momentum_buffer[idx] = momentum * momentum_buffer[idx] + (_ONE - dampening) * d
            d = d + momentum * momentum_buffer[idx] if nesterov else momentum_buffer[idx]
        params[idx] -= lr * d


@njit(**_JIT)
def adagrad_update(params, state_sum, grads, clr, eps, weight_decay):
    # updates params, state_sum (P,) in place from grads (P,): torch.optim.Adagrad's step.
    # g = grad + weight_decay * p; state_sum += g * g; p -= clr * g / (sqrt(state_sum) + eps),
    # clr = lr / (1 + (step - 1) * lr_decay)
    for idx in prange(params.size):
        g = grads[idx] + weight_decay * params[idx]
        state_sum[idx] += g * g
        params[idx] -= clr * (g / (np.sqrt(state_sum[idx]) + eps))


@njit(**_JIT)
def ema_update(averaged, current, weight, first):
    # moves averaged (P,) weight of the way to current (P,) in place, torch's lerp in
    # torch.optim.swa_utils.get_ema_multi_avg_fn (weight = 1 - decay); the first update
    # copies current, as AveragedModel's does
    if first:
        averaged[:] = current
        return
    for idx in prange(averaged.size):
        averaged[idx] += weight * (current[idx] - averaged[idx])
