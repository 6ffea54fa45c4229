"""Optimizers and learning-rate schedules, with torch.optim's semantics and explicit state:
Adam, AdamW, SGD (momentum, dampening, Nesterov) and Adagrad over a model's flat parameter
buffer, one kernel call per step, their per-parameter state on the model's device; StepLR and
CosineAnnealingLR (with an optional linear warm-up), called once per epoch or once per step;
EMA, an exponential moving average of the weights to evaluate in their place.

https://pytorch.org/docs/stable/optim.html
"""

import contextlib
import math
import numbers

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

    no_decay names parameters that take no weight decay (torch's second parameter group with
    weight_decay 0; model.norm_and_bias_names() is the usual choice). The flat buffer is then
    updated in runs of neighbouring parameters that do or do not decay, one kernel call each;
    without it, one call for the whole buffer.

    A kind names its hyper-parameters (saved and restored with the state) and its state
    buffers (zeros at the start), and writes _update_run(part, flat_grads, weight_decay), one
    kernel call over a run of the flat buffers, part(array) giving a flat buffer's run.
    """

    hyper = ()  # the constructor's arguments besides lr and no_decay, by name
    buffers = ()  # per-parameter state, each of the parameters' size

    def __init__(self, model, lr, no_decay=(), **hyper):
        name = type(self).__name__
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"{name}: lr must be a positive number, found {lr!r}")
        self.model, self.lr = model, float(lr)
        for key, value in hyper.items():
            setattr(self, key, value)
        self.check()
        self._set_no_decay(no_decay)
        self.step_count = 0
        for buffer in self.buffers:  # beside the parameters and gradients, on their device
            setattr(self, buffer, model.kernels.zeros(model.flat_params.shape))

    def _set_no_decay(self, names):
        """Keep the names (in the model's order) and the runs of the flat buffer they make:
        [(slice, whether its parameters decay)]."""
        names = [names] if isinstance(names, str) else list(names)
        if not names:
            self.no_decay, self._runs = (), [(slice(0, self.model.flat_params.size), True)]
            return
        shapes = getattr(self.model, "param_shapes", {})
        unknown = [name for name in names if name not in shapes]
        if unknown:
            raise ValueError(f"{type(self).__name__}: no_decay names {unknown}, which are not "
                             f"the model's parameters ({', '.join(shapes) or 'none named'})")
        self.no_decay = tuple(name for name in shapes if name in names)
        runs, start = [], 0
        for name, shape in shapes.items():
            stop, decays = start + math.prod(shape), name not in self.no_decay
            if runs and runs[-1][2] == decays:
                runs[-1][1] = stop
            else:
                runs.append([start, stop, decays])
            start = stop
        self._runs = [(slice(start, stop), decays) for start, stop, decays in runs]

    def check(self):
        """Raise ValueError for a hyper-parameter out of its range."""

    def _fail(self, requirement, found):
        raise ValueError(f"{type(self).__name__}: {requirement}, found {found}")

    def step(self, grads):
        """Apply one update from gradients keyed like the model's state_dict()."""
        flat_grads = self.model.flatten_grads(grads)
        self.step_count += 1
        view = self.model.kernels.view
        for run, decays in self._runs:
            def part(array, run=run):  # the run's stretch of a flat buffer: a view, made once
                return view(array, (run.stop - run.start,), run.start)
            self._update_run(part, flat_grads, self.weight_decay if decays else 0.0)

    def state_dict(self):
        """The kind, lr, hyper-parameters, step count and host copies of the state buffers."""
        to_host = self.model.kernels.to_host
        state = {"kind": type(self).__name__, "lr": self.lr, "step": self.step_count,
                 "no_decay": list(self.no_decay)}
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
        self._set_no_decay(state.get("no_decay", ()))  # none in older checkpoints
        for buffer in self.buffers:
            self.model.kernels.copy_in(getattr(self, buffer), state[buffer])


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


class Adam(Optimizer):
    """torch.optim.Adam (amsgrad off): L2 weight decay folded into the gradient."""

    hyper = ("betas", "eps", "weight_decay")
    buffers = ("m", "v")  # the gradients' running mean and the squares'
    decoupled = False  # AdamW: the decay shrinks the parameters instead

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 no_decay=()):
        super().__init__(model, lr, no_decay, betas=tuple(float(b) for b in betas),
                         eps=float(eps), weight_decay=float(weight_decay))

    def check(self):
        if not (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas)):
            self._fail("betas must be two numbers in [0, 1)", self.betas)
        if self.eps < 0 or self.weight_decay < 0:
            self._fail("eps and weight_decay must be at least 0",
                       f"eps={self.eps}, weight_decay={self.weight_decay}")

    def _update_run(self, part, flat_grads, weight_decay):
        l2, decoupled = (0.0, weight_decay) if self.decoupled else (weight_decay, 0.0)
        self.model.kernels.adam_update(
            part(self.model.flat_params), part(self.m), part(self.v), part(flat_grads),
            *adam_scalars(self.lr, *self.betas, self.eps, l2, self.step_count, decoupled))


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay, p *= 1 - lr * weight_decay."""

    decoupled = True

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 no_decay=()):
        super().__init__(model, lr, betas, eps, weight_decay, no_decay)


class SGD(Optimizer):
    """torch.optim.SGD: momentum, dampening, L2 weight decay and Nesterov momentum."""

    hyper = ("momentum", "dampening", "weight_decay", "nesterov")
    buffers = ("momentum_buffer",)

    def __init__(self, model, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, no_decay=()):
        super().__init__(model, lr, no_decay, momentum=float(momentum),
                         dampening=float(dampening), weight_decay=float(weight_decay),
                         nesterov=bool(nesterov))

    def check(self):
        if self.momentum < 0 or self.weight_decay < 0:
            self._fail("momentum and weight_decay must be at least 0",
                       f"momentum={self.momentum}, weight_decay={self.weight_decay}")
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            self._fail("Nesterov momentum needs a momentum and zero dampening",
                       f"momentum={self.momentum}, dampening={self.dampening}")

    def _update_run(self, part, flat_grads, weight_decay):
        f32 = np.float32
        self.model.kernels.sgd_update(
            part(self.model.flat_params), part(self.momentum_buffer), part(flat_grads),
            f32(self.lr), f32(self.momentum), f32(self.dampening), f32(weight_decay),
            self.nesterov, self.step_count == 1)


class Adagrad(Optimizer):
    """torch.optim.Adagrad (initial accumulator 0): lr / (1 + (step - 1) * lr_decay)."""

    hyper = ("lr_decay", "weight_decay", "eps")
    buffers = ("state_sum",)

    def __init__(self, model, lr=1e-2, lr_decay=0.0, weight_decay=0.0, eps=1e-10,
                 no_decay=()):
        super().__init__(model, lr, no_decay, lr_decay=float(lr_decay),
                         weight_decay=float(weight_decay), eps=float(eps))

    def check(self):
        if min(self.lr_decay, self.weight_decay, self.eps) < 0:
            self._fail("lr_decay, weight_decay and eps must be at least 0",
                       f"lr_decay={self.lr_decay}, weight_decay={self.weight_decay}, "
                       f"eps={self.eps}")

    def _update_run(self, part, flat_grads, weight_decay):
        clr = self.lr / (1 + (self.step_count - 1) * self.lr_decay)  # float64, as torch's
        self.model.kernels.adagrad_update(
            part(self.model.flat_params), part(self.state_sum), part(flat_grads), np.float32(clr),
            np.float32(self.eps), np.float32(weight_decay))


# every optimizer by its name: what a checkpoint's "kind" may say
OPTIMIZERS = {cls.__name__: cls for cls in (Adam, AdamW, SGD, Adagrad)}


def load_optimizer(model, state):
    """The optimizer of a state_dict(), over model, in that state."""
    if state["kind"] not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {state['kind']!r}, expected one of "
                         f"{', '.join(OPTIMIZERS)}")
    opt = OPTIMIZERS[state["kind"]](model)
    opt.load_state_dict(state)
    return opt


class EMA:
    """An exponential moving average of a model's weights, evaluated in their place:
    torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay),
    use_buffers=True).

    After each optimizer step, update() moves the average 1 - decay of the way to the model's
    parameters and floating-point buffers (batch norm's running statistics), one kernel call
    each; the first update copies them. Integer buffers (batch norm's step count, which no
    computation here reads) are the model's own. Until the first update the average is the
    model as it was given, as AveragedModel's copy is.

    applied() puts the average into the model for the length of a with-block (evaluation, a
    checkpoint) and the trained weights back after it.
    """

    def __init__(self, model, decay):
        if not (isinstance(decay, numbers.Real) and not isinstance(decay, bool)
                and 0 < decay < 1):
            raise ValueError(f"EMA: decay must lie in (0, 1), found {decay!r}")
        self.model, self.decay, self.updates = model, float(decay), 0
        k = model.kernels
        self.flat_params = k.to_device(k.to_host(model.flat_params).copy())
        self.buffers = {name: k.to_device(k.to_host(value).copy())
                        for name, value in model.buffers.items()
                        if value.dtype.kind == "f"}

    def update(self):
        """Move the average toward the model's weights as they are now."""
        k, weight, first = self.model.kernels, np.float32(1 - self.decay), self.updates == 0
        k.ema_update(self.flat_params, self.model.flat_params, weight, first)
        for name, average in self.buffers.items():
            k.ema_update(average, self.model.buffers[name], weight, first)
        self.updates += 1

    def averaged_state(self):
        """The average as model.state_dict() gives the weights: host copies, torch's names."""
        to_host = self.model.kernels.to_host
        state = self.model.state_dict()
        state.update((name, view.copy()) for name, view
                     in self.model.flat_views(to_host(self.flat_params)).items())
        state.update((name, to_host(value).copy()) for name, value in self.buffers.items())
        return state

    def state_dict(self):
        """The decay and the number of updates (the averages themselves: averaged_state)."""
        return {"decay": self.decay, "updates": self.updates}

    def load_state_dict(self, state, averaged):
        """Restore what state_dict() returned, with the averages from averaged_state()'s
        mapping (a checkpoint's)."""
        k = self.model.kernels
        self.decay, self.updates = float(state["decay"]), int(state["updates"])
        k.copy_in(self.flat_params, self.model.flat_buffer(averaged))
        for name, value in self.buffers.items():
            k.copy_in(value, averaged[name])

    @contextlib.contextmanager
    def applied(self):
        """The model holding the average inside the with-block, its trained weights after."""
        trained = self.model.state_dict()
        self.model.load_state_dict(self.averaged_state())
        try:
            yield self.model
        finally:
            self.model.load_state_dict(trained)


class Schedule:
    """What the schedules share: the optimizer's lr as a function of the epochs (or steps)
    done, from the lr it had at the start (base_lr); explicit state."""

    settings = ()  # the constructor's arguments besides the optimizer, by name

    def __init__(self, optimizer, **settings):
        self.optimizer, self.base_lr, self.epoch = optimizer, optimizer.lr, 0
        for key, value in settings.items():
            setattr(self, key, value)
        self.optimizer.lr = self.lr_at(0)

    def step(self):
        """Call once per epoch (or step), after it: sets the optimizer's lr for the next."""
        self.epoch += 1
        self.optimizer.lr = self.lr_at(self.epoch)

    def state_dict(self):
        """What resuming needs: the kind, its settings and how far along it is."""
        return {"kind": type(self).__name__, "base_lr": self.base_lr, "epoch": self.epoch,
                **{key: getattr(self, key) for key in self.settings}}

    def load_state_dict(self, state):
        """Restore what state_dict() returned."""
        self.base_lr, self.epoch = float(state["base_lr"]), int(state["epoch"])
        for key in self.settings:
            setattr(self, key, type(getattr(self, key))(state[key]))

    @classmethod
    def from_state(cls, optimizer, state):
        """The schedule a state_dict() describes, over optimizer (whose lr it sets)."""
        schedule = cls(optimizer, **{key: state[key] for key in cls.settings})
        schedule.load_state_dict(state)
        optimizer.lr = schedule.lr_at(schedule.epoch)
        return schedule


class StepLR(Schedule):
    """torch.optim.lr_scheduler.StepLR: lr = base_lr * gamma ** (epoch // step_size)."""

    settings = ("step_size", "gamma")

    def __init__(self, optimizer, step_size, gamma=0.1):
        if step_size < 1:
            raise ValueError(f"StepLR: step_size must be >= 1, found {step_size}")
        super().__init__(optimizer, step_size=int(step_size), gamma=float(gamma))

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class CosineAnnealingLR(Schedule):
    """torch.optim.lr_scheduler.CosineAnnealingLR(T_max, eta_min), after an optional linear
    warm-up of `warmup` epochs (torch's SequentialLR of LinearLR(start_factor=1/(warmup+1),
    total_iters=warmup), then the cosine): the lr climbs from base_lr/(warmup+1) to base_lr,
    then eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2, t counted from the
    warm-up's end."""

    settings = ("T_max", "eta_min", "warmup")

    def __init__(self, optimizer, T_max, eta_min=0.0, warmup=0):  # noqa: N803 (torch's name)
        if T_max < 1 or warmup < 0 or eta_min < 0:
            raise ValueError(f"CosineAnnealingLR: need T_max >= 1, warmup >= 0 and eta_min >= "
                             f"0, found T_max={T_max}, warmup={warmup}, eta_min={eta_min}")
        super().__init__(optimizer, T_max=int(T_max), eta_min=float(eta_min),
                         warmup=int(warmup))

    def lr_at(self, epoch):
        if epoch < self.warmup:
            start = 1 / (self.warmup + 1)
            return self.base_lr * (start + (1 - start) * epoch / self.warmup)
        t = epoch - self.warmup
        return self.eta_min + (self.base_lr - self.eta_min) * (
            1 + math.cos(math.pi * t / self.T_max)) / 2


# every schedule by its name: what a checkpoint's "kind" may say (none: StepLR, as before)
SCHEDULES = {cls.__name__: cls for cls in (StepLR, CosineAnnealingLR)}


def load_schedule(optimizer, state):
    """The schedule of a checkpoint's state_dict(), over optimizer."""
    kind = state.get("kind", "StepLR")
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}, expected one of {', '.join(SCHEDULES)}")
    return SCHEDULES[kind].from_state(optimizer, state)


# the optimizers by the lower-case names a run's settings give (train --optimizer):
# torch.optim's classes, lower case
OPTIMIZER_NAMES = {name.lower(): name for name in OPTIMIZERS}


def make_optimizer(model, config):
    """The run's optimizer over model: config["optimizer"] (Adam unless said) with its lr,
    weight decay (none for biases and batch norm with no_decay_norm_bias) and, for SGD,
    momentum and Nesterov."""
    name = OPTIMIZER_NAMES[config["optimizer"]]
    options = {"lr": config["lr"], "weight_decay": config["weight_decay"]}
    if config.get("no_decay_norm_bias"):
        options["no_decay"] = model.norm_and_bias_names()
    if name == "SGD":
        options.update(momentum=config.get("momentum", 0.0),
                       nesterov=config.get("nesterov", False))
    return OPTIMIZERS[name](model, **options)
