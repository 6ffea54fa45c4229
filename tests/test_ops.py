"""Every registered layer kind against its torch twin: the NumPy reference in float64, the
layer's own kernel calls in float32; the loss and Adam kernels against torch's.

Each case of tests/registry.py runs three ways on the same seeded input, parameters and random
upstream gradient (torch autograd on interop.torch_layer's twin, the registry's reference, the
layer on the CPU backend with every output NaN first), and the forward output and every
gradient are compared by name. Flatten has no kernels: its check is that the view the buffers
make of it (tests/harness.run_layer lays them out as Sequential does; test_nn runs it inside
networks) is torch's flatten, forward and backward.
"""

import inspect
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.harness import (
    FlatModel,
    draw,
    draw_loss,
    layer_results,
    loss_results,
    rel_err,
    torch_results,
)
from tests.registry import CASES, LOSS_CASES, REGISTRY, TOLERANCE
from tinyconv import archs, interop
from tinyconv.kernels import get_backend
from tinyconv.kernels import reference as ref
from tinyconv.optim import EMA, OPTIMIZERS

CPU = get_backend("cpu")


def check(case, impl, got, expected, tolerance=TOLERANCE):
    """Every tensor of got within the tolerance of expected's (forward ones, and gradients
    named d<name>), the same names on both sides."""
    assert got.keys() == expected.keys(), (
        f"{case}: {impl} gives {sorted(got)}, torch {sorted(expected)}")
    for name in expected:
        assert not np.isnan(got[name]).any(), (
            f"{case}: {impl} {name} holds NaN: left unwritten, or added into")
        bound = tolerance[(impl, "backward" if name.startswith("d") else "forward")]
        err = rel_err(got[name], expected[name])
        assert err < bound, f"{case}: {impl} {name} differs from torch by {err:.3g} > {bound}"


@pytest.mark.parametrize("name", CASES)
def test_reference_float64_matches_torch(name):
    kind, case = CASES[name]
    inp, params, dout = draw(case)
    got = REGISTRY[kind].reference(case, inp, params, dout)
    if not case.dinp:
        del got["dinp"]
    check(name, "reference", got, torch_results(case, inp, params, dout),
          REGISTRY[kind].tolerance)


@pytest.mark.parametrize("name", CASES)
def test_layer_kernels_float32_match_torch(name):
    # torch in float64 on the same (float32) values: the error measured is the kernels' own
    kind, case = CASES[name]
    inp, params, dout = draw(case)
    check(name, "kernel", layer_results(CPU, case, inp, params, dout),
          torch_results(case, inp, params, dout), REGISTRY[kind].tolerance)


# ---- the loss: per-sample losses, probabilities and gradient against torch's cross_entropy


def torch_loss(logits, labels, dloss, smoothing=0.0):
    """torch's cross_entropy per sample (reduction "none", label_smoothing) and its mean,
    softmax, and the gradient of dloss * mean, in float64."""
    x = torch.from_numpy(logits).requires_grad_()
    losses = F.cross_entropy(x, torch.from_numpy(labels), reduction="none",
                             label_smoothing=smoothing)
    loss = losses.mean()
    (float(dloss) * loss).backward()
    return {"losses": losses.detach().numpy(), "loss": loss.item(),
            "probs": torch.softmax(x, dim=1).detach().numpy(), "dlogits": x.grad.numpy()}


@pytest.mark.parametrize("name", LOSS_CASES)
def test_loss_reference_float64_matches_torch(name):
    case = LOSS_CASES[name]
    logits, labels, dloss = draw_loss(case)
    expected = torch_loss(logits, labels, dloss, case.smoothing)
    loss, probs = ref.softmax_xent_forward(logits, labels, case.smoothing)
    got = {"loss": loss, "probs": probs,
           "dlogits": ref.softmax_xent_backward(probs, labels, float(dloss), case.smoothing)}
    check(name, "reference", got, {key: expected[key] for key in got})


@pytest.mark.parametrize("name", LOSS_CASES)
def test_loss_kernels_float32_match_torch(name):
    # each sample's loss, not only the mean, so that one wrong sample cannot hide in it
    case = LOSS_CASES[name]
    logits, labels, dloss = draw_loss(case)
    check(name, "kernel", loss_results(CPU, logits, labels, dloss, case.smoothing),
          torch_loss(logits, labels, dloss, case.smoothing))


# ---- the oracle against finite differences, so that it is not only "agrees with torch"


def _size(case):
    params = case.layer.params(case.shape[1:]).values()
    return math.prod(case.shape) + sum(math.prod(shape) for shape in params)


# per kind, its case with the fewest input and parameter values (each costs two reference
# runs) among those with an input gradient, at least 20 where there are such: batch norm
# over two values per channel has an input gradient of almost 0, where central differences
# measure only their own rounding
FD_CASES = {min((name for name, case in entry.cases.items() if case.dinp and not case.grid),
                key=lambda name: (_size(entry.cases[name]) < 20, _size(entry.cases[name]))): kind
            for kind, entry in REGISTRY.items()}


def finite_differences(objective, arrays, h=1e-6):
    """Central differences of objective() with respect to each array's values, changed in
    place and restored: {name: gradient}."""
    numeric = {}
    for name, array in arrays.items():
        grad = numeric[name] = np.zeros_like(array)
        for idx in np.ndindex(array.shape):
            saved = array[idx]
            array[idx] = saved + h
            up = objective()
            array[idx] = saved - h
            down = objective()
            array[idx] = saved
            grad[idx] = (up - down) / (2 * h)
    return numeric


@pytest.mark.parametrize("name", FD_CASES)
def test_reference_matches_finite_differences(name):
    kind, case = CASES[name]
    reference = REGISTRY[kind].reference
    inp, params, dout = draw(case, seed=7)
    got = reference(case, inp, params, dout)

    def objective():  # the scalar whose gradient the backward computes: <out, dout>
        return float(np.sum(reference(case, inp, params, dout)["out"] * dout))

    wrt = {"inp": inp, **{name: params[name] for name in case.layer.params(case.shape[1:])}}
    for key, numeric in finite_differences(objective, wrt).items():
        err = rel_err(got[f"d{key}"], numeric)
        assert err < 1e-7, f"{name}: d{key} differs from finite differences by {err:.3g}"


@pytest.mark.parametrize("name", ["xent_batch37", "xent_smoothed"])
def test_loss_reference_matches_finite_differences(name):
    case = LOSS_CASES[name]
    logits, labels, dloss = draw_loss(case, seed=7)
    _, probs = ref.softmax_xent_forward(logits, labels, case.smoothing)
    got = ref.softmax_xent_backward(probs, labels, float(dloss), case.smoothing)
    numeric = finite_differences(
        lambda: float(dloss) * ref.softmax_xent_forward(logits, labels, case.smoothing)[0],
        {"logits": logits})
    err = rel_err(got, numeric["logits"])
    assert err < 1e-7, f"{name}: dlogits differs from finite differences by {err:.3g}"


# ---- the optimizers against torch.optim's, step for step

# (tinyconv's class, its options; torch's class) and the names of the state both keep
OPTIMIZER_RUNS = {
    "Adam": ({}, "Adam"),
    "Adam, L2 decay": ({"weight_decay": 0.01}, "Adam"),
    "AdamW": ({}, "AdamW"),
    "AdamW, strong decay": ({"weight_decay": 0.1, "betas": (0.8, 0.99)}, "AdamW"),
    "SGD": ({}, "SGD"),
    "SGD, momentum": ({"momentum": 0.9}, "SGD"),
    "SGD, dampened, decay": ({"momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01}, "SGD"),
    "SGD, Nesterov, decay": ({"momentum": 0.9, "nesterov": True, "weight_decay": 0.01}, "SGD"),
    "Adagrad": ({}, "Adagrad"),
    "Adagrad, decay, lr decay": ({"weight_decay": 0.01, "lr_decay": 0.01}, "Adagrad"),
}
STATE_NAMES = {"Adam": {"m": "exp_avg", "v": "exp_avg_sq"},
               "AdamW": {"m": "exp_avg", "v": "exp_avg_sq"},
               "SGD": {"momentum_buffer": "momentum_buffer"}, "Adagrad": {"state_sum": "sum"}}


def reference_step(kind, state, grads, lr, options, step):
    """One step of the float64 reference with tinyconv's defaults for the options not
    given: the new {"params", state buffers...}."""
    h = {name: param.default for name, param in inspect.signature(OPTIMIZERS[kind]).parameters
         .items() if param.default is not inspect.Parameter.empty}
    h.update(options)
    if kind in ("Adam", "AdamW"):
        params, m, v = ref.adam_update(state["params"], state["m"], state["v"], grads, lr,
                                       *h["betas"], h["eps"], h["weight_decay"], step,
                                       decoupled=kind == "AdamW")
        return {"params": params, "m": m, "v": v}
    if kind == "SGD":
        params, buf = ref.sgd_update(state["params"], state["momentum_buffer"], grads, lr,
                                     h["momentum"], h["dampening"], h["weight_decay"],
                                     h["nesterov"], step)
        return {"params": params, "momentum_buffer": buf}
    params, state_sum = ref.adagrad_update(state["params"], state["state_sum"], grads, lr,
                                           h["lr_decay"], h["weight_decay"], h["eps"], step)
    return {"params": params, "state_sum": state_sum}


@pytest.mark.parametrize("impl", ["kernel", "reference"])
@pytest.mark.parametrize("run", OPTIMIZER_RUNS)
def test_optimizers_match_torch_for_30_steps(run, impl):
    # the lr changes mid-way, as a schedule would; params and every state buffer compared
    # after each step (the kernels' float32 against torch's, the reference's float64)
    options, kind = OPTIMIZER_RUNS[run]
    dtype = np.float32 if impl == "kernel" else np.float64
    bound = 1e-6 if impl == "kernel" else 1e-10
    rng = np.random.default_rng(3)
    size, steps = 1237, 30
    params = rng.standard_normal(size).astype(dtype)
    grads = [rng.standard_normal(size).astype(dtype) for _ in range(steps)]
    lrs = {"SGD": (0.1, 0.03), "Adagrad": (0.1, 0.03)}.get(kind, (1e-2, 3e-3))
    theirs = torch.tensor(params.copy(), requires_grad=True)
    torch_opt = getattr(torch.optim, kind)([theirs], lr=lrs[0], **options)
    cls = OPTIMIZERS[kind]
    if impl == "kernel":
        ours = cls(FlatModel(CPU, params.copy()), lr=lrs[0], **options)
    else:
        state = {"params": params.copy(), **{buffer: np.zeros_like(params)
                                             for buffer in STATE_NAMES[kind]}}
    for step in range(1, steps + 1):
        lr = lrs[0] if step <= steps // 2 else lrs[1]
        torch_opt.param_groups[0]["lr"] = lr
        theirs.grad = torch.from_numpy(grads[step - 1].copy())
        torch_opt.step()
        if impl == "kernel":
            ours.lr = lr
            ours.step(grads[step - 1])
            got = {"params": ours.model.flat_params,
                   **{buffer: getattr(ours, buffer) for buffer in cls.buffers}}
        else:
            state = got = reference_step(kind, state, grads[step - 1], lr, options, step)
        torch_state = torch_opt.state[theirs]
        expected = {"params": theirs.detach().numpy(),
                    **{ours_name: torch_state[name].numpy()
                       for ours_name, name in STATE_NAMES[kind].items()
                       if name in torch_state}}
        for name, value in expected.items():
            err = rel_err(got[name], value)
            assert err < bound, f"{run} ({impl}), step {step}: {name} differs by {err:.3g}"


# no weight decay for biases and batch norm: torch's two parameter groups
NO_DECAY_RUNS = {
    "Adam": {"weight_decay": 0.01},
    "AdamW": {"weight_decay": 0.1},
    "SGD": {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
    "Adagrad": {"weight_decay": 0.01},
}


@pytest.mark.parametrize("kind", NO_DECAY_RUNS)
def test_no_decay_for_norms_and_biases_matches_torch_parameter_groups(kind):
    options = NO_DECAY_RUNS[kind]
    model = archs.build("resnet-mini", seed=1)  # nested names, runs of every length
    exempt = model.norm_and_bias_names()
    theirs = {name: torch.tensor(value.astype(np.float64), requires_grad=True)
              for name, value in model.state_dict().items() if name in model.param_shapes}
    groups = [{"params": [t for name, t in theirs.items() if name not in exempt]},
              {"params": [theirs[name] for name in exempt], "weight_decay": 0.0}]
    lrs = {"SGD": (0.1, 0.03), "Adagrad": (0.1, 0.03)}.get(kind, (1e-2, 3e-3))
    torch_opt = getattr(torch.optim, kind)(groups, lr=lrs[0], **options)
    ours = OPTIMIZERS[kind](model, lr=lrs[0], no_decay=exempt, **options)
    decaying = archs.build("resnet-mini", seed=1)  # the same steps, every parameter decayed
    everything = OPTIMIZERS[kind](decaying, lr=lrs[0], **options)
    rng = np.random.default_rng(4)
    for step in range(1, 31):
        lr = lrs[0] if step <= 15 else lrs[1]
        ours.lr = everything.lr = lr
        for group in torch_opt.param_groups:
            group["lr"] = lr
        model.flat_grads[:] = rng.standard_normal(model.param_count).astype(np.float32)
        decaying.flat_grads[:] = model.flat_grads
        for name, tensor in theirs.items():
            tensor.grad = torch.from_numpy(model.grads[name].astype(np.float64))
        ours.step(model.grads)
        everything.step(decaying.grads)
        torch_opt.step()
        for name, tensor in theirs.items():
            err = rel_err(model.params[name], tensor.detach().numpy())
            assert err < 1e-6, f"{kind}, step {step}: {name} differs by {err:.3g}"
    # the exemption is what made the difference: exempt parameters end elsewhere, the
    # decayed ones where decaying everything puts them
    assert everything.no_decay == () and ours.no_decay == tuple(exempt)
    for name in model.param_shapes:
        same = np.array_equal(model.params[name], decaying.params[name])
        assert same == (name not in exempt), name
    restored = OPTIMIZERS[kind](model)
    restored.load_state_dict(ours.state_dict())
    assert restored.no_decay == ours.no_decay and restored._runs == ours._runs


# ---- the weights' moving average against torch's AveragedModel


@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_ema_matches_torch_averaged_model(impl):
    # resnet-mini: batch norm's running statistics are averaged too (use_buffers=True); each
    # step sets every parameter and buffer anew, so the average sees wide moves
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    decay, dtype = 0.9, np.float32 if impl == "kernel" else np.float64
    model = archs.build("resnet-mini", seed=2)
    module = interop.torch_module(model.spec()).to(torch.float64 if impl == "reference"
                                                   else torch.float32)
    floats = [name for name, value in model.state_dict().items() if value.dtype.kind == "f"]
    rng = np.random.default_rng(5)

    def new_state():
        return {name: (rng.standard_normal(value.shape).astype(dtype)
                       if name in floats else value + 1)
                for name, value in model.state_dict().items()}

    with torch.no_grad():
        first = new_state()
        module.load_state_dict({name: torch.from_numpy(np.asarray(v)) for name, v in
                                first.items()})
        averaged = AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(decay),
                                 use_buffers=True)
        model.load_state_dict(first)
        ema = EMA(model, decay)
        ours = {name: first[name] for name in floats}  # the reference's average
        for step in range(12):
            state = new_state()
            module.load_state_dict({name: torch.from_numpy(np.asarray(v)) for name, v in
                                    state.items()})
            averaged.update_parameters(module)
            if impl == "kernel":
                model.load_state_dict(state)
                ema.update()
                got = ema.averaged_state()
            else:
                ours = got = {name: ref.ema_update(ours[name], state[name], decay, step == 0)
                              for name in floats}
            expected = averaged.module.state_dict()
            for name in floats:
                err = rel_err(got[name], expected[name].numpy())
                bound = 1e-6 if impl == "kernel" else 1e-12
                assert err < bound, f"{impl}, update {step + 1}: {name} differs by {err:.3g}"
    assert ema.updates == (12 if impl == "kernel" else 0)


def test_ema_applies_its_average_for_a_with_block_and_restores_the_weights():
    model = archs.build("lenet5-bn", seed=3)
    trained = model.state_dict()
    ema = EMA(model, 0.5)
    ema.update()  # the first update copies: the average is the model
    model.load_state_dict({name: value * 3 if value.dtype.kind == "f" else value
                           for name, value in trained.items()})
    ema.update()  # half-way to 3x: 2x
    with ema.applied() as inside:
        assert inside is model
        for name, value in model.state_dict().items():
            factor = 2 if value.dtype.kind == "f" else 1
            assert np.allclose(value, factor * trained[name], rtol=1e-6), name
    for name, value in model.state_dict().items():  # the trained weights are back
        factor = 3 if value.dtype.kind == "f" else 1
        assert np.array_equal(value, (factor * trained[name]).astype(value.dtype)), name
    restored = EMA(model, 0.9)
    restored.load_state_dict(ema.state_dict(), ema.averaged_state())
    assert restored.decay == 0.5 and restored.updates == 2
    assert all(np.array_equal(a, b) for a, b in zip(restored.averaged_state().values(),
                                                    ema.averaged_state().values(), strict=True))
    for decay in (0, 1, 1.5, "0.9", True):
        with pytest.raises(ValueError, match=r"EMA: decay must lie in \(0, 1\)"):
            EMA(model, decay)
    assert EMA(model, np.float32(0.5)).decay == 0.5  # any real number, numpy's too


def test_no_decay_names_must_be_parameters():
    model = archs.build("lenet5-bn")
    with pytest.raises(ValueError, match=r"AdamW: no_decay names \['backbone.1.running_mean'\],"
                                         r" which are not the model's parameters"):
        OPTIMIZERS["AdamW"](model, no_decay=["backbone.1.running_mean"])


def test_norm_and_bias_names_are_biases_and_batch_norms():
    model = archs.build("lenet5-bn")
    expected = [f"backbone.{i}.bias" for i in (0, 4, 8, 12, 15)]
    expected += [f"backbone.{i}.{p}" for i in (1, 5, 9, 13) for p in ("weight", "bias")]
    assert sorted(model.norm_and_bias_names()) == sorted(expected)


# ---- the schedules against torch.optim.lr_scheduler's, epoch for epoch


def torch_schedule(kind, opt, options):
    """torch's twin of a tinyconv schedule: StepLR, or CosineAnnealingLR after a warm-up (a
    SequentialLR of LinearLR(start_factor=1/(warmup+1)) and the cosine)."""
    lr_scheduler = torch.optim.lr_scheduler
    if kind == "StepLR":
        return lr_scheduler.StepLR(opt, **options)
    warmup = options.get("warmup", 0)
    cosine = lr_scheduler.CosineAnnealingLR(opt, T_max=options["T_max"],
                                            eta_min=options.get("eta_min", 0.0))
    if not warmup:
        return cosine
    linear = lr_scheduler.LinearLR(opt, start_factor=1 / (warmup + 1), total_iters=warmup)
    return lr_scheduler.SequentialLR(opt, [linear, cosine], milestones=[warmup])


@pytest.mark.parametrize("kind, options", [
    ("StepLR", {"step_size": 3, "gamma": 0.5}),
    ("CosineAnnealingLR", {"T_max": 10}),
    ("CosineAnnealingLR", {"T_max": 12, "eta_min": 1e-4, "warmup": 3}),
    ("CosineAnnealingLR", {"T_max": 7, "warmup": 1}),
])
def test_schedules_match_torch(kind, options):
    # past T_max too (torch's cosine goes on, periodic), and through a state_dict round trip
    from tinyconv.optim import SCHEDULES, load_schedule

    theirs = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    their_schedule = torch_schedule(kind, theirs, options)
    ours = OPTIMIZERS["SGD"](FlatModel(CPU, np.zeros(1, np.float32)), lr=0.1)
    schedule = SCHEDULES[kind](ours, **options)
    for epoch in range(25):
        expected = theirs.param_groups[0]["lr"]
        assert abs(ours.lr - expected) <= 1e-12 * 0.1, f"{kind}, epoch {epoch}"
        theirs.step()
        their_schedule.step()
        schedule.step()
        if epoch == 12:  # as a resumed run rebuilds it
            schedule = load_schedule(ours, schedule.state_dict())
