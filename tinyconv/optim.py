"""Adam and the step learning-rate schedule, with torch.optim's semantics and explicit state."""

import numpy as np


def adam_scalars(lr, beta1, beta2, eps, weight_decay, step):
    """adam_update's scalar arguments after `step` steps (counted from 1), as float32.

    They are worked out in float64 from Python floats, as torch.optim.Adam does, and only
    then rounded, so the float32 kernels see the same coefficients torch's do.
    """
    step_size = lr / (1 - beta1**step)  # the first moment's bias correction folded into lr
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    return tuple(np.float32(s) for s in (step_size, bias_correction2_sqrt, 1 - beta1, beta2,
                                         1 - beta2, eps, weight_decay))


class Adam:
    """torch.optim.Adam (amsgrad off) over a model's flat parameter buffer, on its device."""

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        if lr <= 0 or eps < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"Adam: need lr > 0, 0 <= betas < 1, eps >= 0, weight_decay >= 0; "
                             f"found lr={lr}, betas={betas}, eps={eps}, "
                             f"weight_decay={weight_decay}")
        self.model = model
        self.lr, self.betas, self.eps, self.weight_decay = lr, tuple(betas), eps, weight_decay
        self.step_count = 0
        # on the model's device, beside its parameters and gradients
        self.m = model.kernels.zeros(model.flat_params.shape)  # first moment: gradients' mean
        self.v = model.kernels.zeros(model.flat_params.shape)  # second moment: squared ones

    def step(self, grads):
        """Apply one update from gradients keyed like the model's state_dict()."""
        flat_grads = self.model.flatten_grads(grads)
        self.step_count += 1
        self.model.kernels.adam_update(
            self.model.flat_params, self.m, self.v, flat_grads,
            *adam_scalars(self.lr, *self.betas, self.eps, self.weight_decay, self.step_count))

    def state_dict(self):
        """Hyper-parameters, step count and host copies of both moments."""
        to_host = self.model.kernels.to_host
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps,
                "weight_decay": self.weight_decay, "step": self.step_count,
                "m": to_host(self.m).copy(), "v": to_host(self.v).copy()}

    def load_state_dict(self, state):
        """Restore what state_dict() returned."""
        for name in ("m", "v"):
            if np.shape(state[name]) != self.m.shape:
                raise ValueError(f"Adam state {name}: expected shape {self.m.shape}, "
                                 f"found {np.shape(state[name])}")
        self.lr, self.betas = float(state["lr"]), tuple(state["betas"])
        self.eps, self.weight_decay = float(state["eps"]), float(state["weight_decay"])
        self.step_count = int(state["step"])
        self.model.kernels.copy_in(self.m, state["m"])
        self.model.kernels.copy_in(self.v, state["v"])


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
