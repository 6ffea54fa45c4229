"""Optimizers and the step learning-rate schedule, with torch.optim's semantics and explicit
state: Adam, AdamW, SGD (momentum, dampening, Nesterov) and Adagrad over a model's flat
parameter buffer, one kernel call per step, their per-parameter state on the model's device.

https://pytorch.org/docs/stable/optim.html
"""

import numpy as np


def adam_scalars(lr, beta1, beta2, eps, weight_decay, step, decoupled_weight_decay=0.0):
    """adam_update's scalar arguments after `step` steps (counted from 1), as float32.

    They are worked out in float64 from Python floats, as torch.optim.Adam does, and only
    then rounded, so the float32 kernels see the same coefficients torch's do. AdamW's
    decoupled weight decay becomes the parameters' factor 1 - lr * decoupled_weight_decay.
    """
    step_size = lr / (1 - beta1**step)  # the first moment's bias correction folded into lr
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    return tuple(np.float32(s) for s in (step_size, bias_correction2_sqrt, 1 - beta1, beta2,
                                         1 - beta2, eps, weight_decay,
                                         1 - lr * decoupled_weight_decay))


class Optimizer:
    """What the optimizers share: the model's flat parameters, an lr that a schedule may set,
    the step count, per-parameter state buffers on the model's device, and state_dict.

    A kind names its hyper-parameters (saved and restored with the state) and its state
    buffers (zeros at the start), and writes _update(flat_grads), one kernel call.
    """

    hyper = ()  # the constructor's arguments besides lr, by name
    buffers = ()  # per-parameter state, each of the parameters' size

    def __init__(self, model, lr, **hyper):
        name = type(self).__name__
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"{name}: lr must be a positive number, found {lr!r}")
        self.model, self.lr = model, float(lr)
        for key, value in hyper.items():
            setattr(self, key, value)
        self.check()
        self.step_count = 0
        for buffer in self.buffers:  # beside the parameters and gradients, on their device
            setattr(self, buffer, model.kernels.zeros(model.flat_params.shape))

    def check(self):
        """Raise ValueError for a hyper-parameter out of its range."""

    def _fail(self, requirement, found):
        raise ValueError(f"{type(self).__name__}: {requirement}, found {found}")

    def step(self, grads):
        """Apply one update from gradients keyed like the model's state_dict()."""
        flat_grads = self.model.flatten_grads(grads)
        self.step_count += 1
        self._update(flat_grads)

    def state_dict(self):
        """The kind, lr, hyper-parameters, step count and host copies of the state buffers."""
        to_host = self.model.kernels.to_host
        state = {"kind": type(self).__name__, "lr": self.lr, "step": self.step_count}
        state.update((key, _jsonable(getattr(self, key))) for key in self.hyper)
        state.update((buffer, to_host(getattr(self, buffer)).copy()) for buffer in self.buffers)
        return state

    def load_state_dict(self, state):
        """Restore what state_dict() returned (of this kind: a state without "kind" is
        taken as this kind's, as version-1 checkpoints hold Adam's)."""
        name = type(self).__name__
        if state.get("kind", name) != name:
            raise ValueError(f"{name}: cannot load the state of a {state['kind']}")
        for buffer in self.buffers:
            if np.shape(state[buffer]) != getattr(self, buffer).shape:
                raise ValueError(f"{name} state {buffer}: expected shape "
                                 f"{getattr(self, buffer).shape}, found {np.shape(state[buffer])}")
        self.lr, self.step_count = float(state["lr"]), int(state["step"])
        for key in self.hyper:
            value = state[key]
            setattr(self, key, tuple(value) if isinstance(value, list) else type(
                getattr(self, key))(value))
        for buffer in self.buffers:
            self.model.kernels.copy_in(getattr(self, buffer), state[buffer])


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


class Adam(Optimizer):
    """torch.optim.Adam (amsgrad off): L2 weight decay folded into the gradient."""

    hyper = ("betas", "eps", "weight_decay")
    buffers = ("m", "v")  # the gradients' running mean and the squares'
    decoupled = False  # AdamW: the decay shrinks the parameters instead

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(model, lr, betas=tuple(float(b) for b in betas), eps=float(eps),
                         weight_decay=float(weight_decay))

    def check(self):
        if not (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas)):
            self._fail("betas must be two numbers in [0, 1)", self.betas)
        if self.eps < 0 or self.weight_decay < 0:
            self._fail("eps and weight_decay must be at least 0",
                       f"eps={self.eps}, weight_decay={self.weight_decay}")

    def _update(self, flat_grads):
        l2, decoupled = ((0.0, self.weight_decay) if self.decoupled
                         else (self.weight_decay, 0.0))
        self.model.kernels.adam_update(
            self.model.flat_params, self.m, self.v, flat_grads,
            *adam_scalars(self.lr, *self.betas, self.eps, l2, self.step_count, decoupled))


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay, p *= 1 - lr * weight_decay."""

    decoupled = True

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(model, lr, betas, eps, weight_decay)


class SGD(Optimizer):
    """torch.optim.SGD: momentum, dampening, L2 weight decay and Nesterov momentum."""

    hyper = ("momentum", "dampening", "weight_decay", "nesterov")
    buffers = ("momentum_buffer",)

    def __init__(self, model, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False):
        super().__init__(model, lr, momentum=float(momentum), dampening=float(dampening),
                         weight_decay=float(weight_decay), nesterov=bool(nesterov))

    def check(self):
        if self.momentum < 0 or self.weight_decay < 0:
            self._fail("momentum and weight_decay must be at least 0",
                       f"momentum={self.momentum}, weight_decay={self.weight_decay}")
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            self._fail("Nesterov momentum needs a momentum and zero dampening",
                       f"momentum={self.momentum}, dampening={self.dampening}")

    def _update(self, flat_grads):
        f32 = np.float32
        self.model.kernels.sgd_update(
            self.model.flat_params, self.momentum_buffer, flat_grads, f32(self.lr),
            f32(self.momentum), f32(self.dampening), f32(self.weight_decay), self.nesterov,
            self.step_count == 1)


class Adagrad(Optimizer):
    """torch.optim.Adagrad (initial accumulator 0): lr / (1 + (step - 1) * lr_decay)."""

    hyper = ("lr_decay", "weight_decay", "eps")
    buffers = ("state_sum",)

    def __init__(self, model, lr=1e-2, lr_decay=0.0, weight_decay=0.0, eps=1e-10):
        super().__init__(model, lr, lr_decay=float(lr_decay), weight_decay=float(weight_decay),
                         eps=float(eps))

    def check(self):
        if min(self.lr_decay, self.weight_decay, self.eps) < 0:
            self._fail("lr_decay, weight_decay and eps must be at least 0",
                       f"lr_decay={self.lr_decay}, weight_decay={self.weight_decay}, "
                       f"eps={self.eps}")

    def _update(self, flat_grads):
        clr = self.lr / (1 + (self.step_count - 1) * self.lr_decay)  # float64, as torch's
        self.model.kernels.adagrad_update(self.model.flat_params, self.state_sum, flat_grads,
                                          np.float32(clr), np.float32(self.eps),
                                          np.float32(self.weight_decay))


# every optimizer by its name: what a checkpoint's "kind" may say
OPTIMIZERS = {cls.__name__: cls for cls in (Adam, AdamW, SGD, Adagrad)}


class StepLR:
    """torch.optim.lr_scheduler.StepLR: lr = base_lr * gamma ** (epoch // step_size)."""

    def __init__(self, optimizer, step_size, gamma=0.1):
        if step_size < 1:
            raise ValueError(f"StepLR: step_size must be >= 1, found {step_size}")
        self.optimizer, self.step_size, self.gamma = optimizer, step_size, gamma
        self.base_lr = optimizer.lr
        self.epoch = 0

    def step(self):
        """Call once per epoch, after it: sets the optimizer's lr for the next one."""
        self.epoch += 1
        self.optimizer.lr = self.base_lr * self.gamma ** (self.epoch // self.step_size)

    def state_dict(self):
        """What resuming needs: the schedule and how far along it is."""
        return {"base_lr": self.base_lr, "step_size": self.step_size, "gamma": self.gamma,
                "epoch": self.epoch}

    def load_state_dict(self, state):
        """Restore what state_dict() returned."""
        self.base_lr, self.gamma = float(state["base_lr"]), float(state["gamma"])
        self.step_size, self.epoch = int(state["step_size"]), int(state["epoch"])
