"""tinyconv.nn: networks no other test builds against the same torch.nn networks, and what a
Sequential owns (names, specs, buffers, modes, devices, checkpoints)."""

import json
import math
import re
import weakref
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import tinyconv
from tests.harness import lockstep, rel_err
from tests.registry import hashed_dropout
from tinyconv import archs, checkpoint, interop, nn
from tinyconv.kernels import get_backend
from tinyconv.optim import Adam, StepLR

# float32 sums in other orders than torch's (test_ops's bounds)
FORWARD, BACKWARD = 1e-5, 1e-4


def odd_network(seed=0):
    """Odd sizes everywhere: 2 channels of 11x10, a 3x2 kernel, pooling by 3, 4 classes."""
    return nn.Sequential(
        nn.Conv2d(2, 5, (3, 2)), nn.Tanh(),  # -> (5, 9, 9)
        nn.AvgPool2d(3),                     # -> (5, 3, 3)
        nn.Conv2d(5, 7, 2), nn.Tanh(),       # -> (7, 2, 2)
        nn.Flatten(),                        # -> (28,)
        nn.Linear(28, 13), nn.Tanh(),
        nn.Linear(13, 4),
        input_shape=(2, 11, 10), seed=seed)


def modern_network():
    """The report's proposed changes: ReLU and max pooling after the convolution, SiLU in
    the head."""
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 3 * 4, 9), nn.SiLU(), nn.Linear(9, 5),
                         input_shape=(3, 8, 10), seed=6)


def mlp():
    """No convolution: the input's (absent) gradient reaches Linear through a Flatten view."""
    return nn.Sequential(nn.Flatten(), nn.Linear(15, 6), nn.Tanh(), nn.Linear(6, 3),
                         input_shape=(1, 3, 5), seed=2)


def tanh_first():
    """A layer without parameters first: its backward has nothing to compute."""
    return nn.Sequential(nn.Tanh(), nn.Linear(9, 5), input_shape=(9,), seed=3)


def whole_input_conv():
    """A convolution whose kernel covers its whole input, after another (so its input's
    gradient is needed): the linear kernels run it; a width of 4, whose taps go along c."""
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.Tanh(),   # -> (3, 5, 4)
                         nn.Conv2d(3, 6, (5, 4)), nn.Tanh(),  # -> (6, 1, 1)
                         nn.Flatten(), nn.Linear(6, 4), input_shape=(2, 7, 6), seed=4)


def torch_twin(model):
    """The torch.nn module of the model's spec, holding its parameters."""
    module = interop.torch_module(model.spec()).double()
    module.load_state_dict({name: torch.from_numpy(value.astype(np.float64))
                            for name, value in model.state_dict().items()})
    return module


@pytest.mark.parametrize("build", [odd_network, modern_network, mlp, tanh_first,
                                   whole_input_conv])
def test_network_matches_its_torch_twin(build):
    model = build()
    rng = np.random.default_rng(5)
    batch = 37
    x = rng.standard_normal((batch, *model.input_shape)).astype(np.float32)
    y = rng.integers(0, model.output_shape[0], size=batch)
    module = torch_twin(model)
    outputs, current = [], torch.from_numpy(x.astype(np.float64))
    for layer in module.children():  # every intermediate activation, not only the logits
        current = layer(current)
        outputs.append(current)
    logits = outputs[-1]
    losses = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y), reduction="none")
    losses.mean().backward()
    for index, (ours, theirs) in enumerate(zip(model.activations(x), outputs, strict=True)):
        err = rel_err(ours, theirs.detach().numpy())
        assert err < FORWARD, f"layer {index} {model.layers[index]!r}: output differs by {err:.3g}"
    per_sample, our_logits = model.loss(x, y, reduction="none")
    assert rel_err(our_logits, logits.detach().numpy()) < FORWARD
    assert rel_err(per_sample, losses.detach().numpy()) < FORWARD
    loss, grads = model.loss_and_grads(x, y)
    assert abs(loss - losses.mean().item()) < FORWARD * abs(losses.mean().item())
    assert grads.keys() == dict(module.named_parameters()).keys()
    for name, param in module.named_parameters():
        err = rel_err(grads[name], param.grad.numpy())
        assert err < BACKWARD, f"{name}: gradient differs from torch by {err:.3g}"


@pytest.mark.parametrize("batch", [7, 33, 128])
def test_a_whole_input_convolution_gives_the_bits_of_the_conv_kernels(batch, monkeypatch):
    # LeNet-5's conv3 shape (a kernel width of five): linear_forward and linear_backward's
    # input gradient make the same multiply-adds in the same order as conv2d_forward and
    # conv2d_backward: the same bits; the weight gradient sums the same products in another
    # order (linear_backward's passes along rows of the transposed input)
    def build():
        return nn.Sequential(nn.Conv2d(4, 3, 3), nn.Tanh(), nn.Conv2d(3, 9, 5), nn.Flatten(),
                             nn.Linear(9, 5), input_shape=(4, 7, 7), seed=1)

    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, 4, 7, 7)).astype(np.float32)
    y = rng.integers(0, 5, size=batch)
    results, counts = [], []
    for covers in (nn._covers, lambda conv, inp: False):
        monkeypatch.setattr(nn, "_covers", covers)
        model = build()
        calls = []
        model.kernels = _spied(model.kernels, calls)
        _, grads = model.loss_and_grads(x, y)
        counts.append((calls.count("conv2d_forward"), calls.count("linear_forward")))
        results.append({**{key: g.copy() for key, g in grads.items()},
                        **{f"act{i}": act for i, act in enumerate(model.activations(x))}})
    assert counts == [(1, 2), (2, 1)]  # conv2 ran as a linear layer...
    ours, theirs = results
    for key in ours:
        if key == "2.weight":
            assert rel_err(ours[key], theirs[key]) < 1e-6, key  # float32 rounding
        else:
            np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)  # ...to the bits


def test_the_fusion_plan_takes_each_unpadded_conv_tanh_pool2_tanh_run():
    conv, tanh, pool = nn.Conv2d(1, 2, 3), nn.Tanh(), nn.AvgPool2d(2)
    not_fused = [nn.Conv2d(2, 2, 3, padding=1), tanh, pool, tanh,  # padded
                 conv, tanh, nn.AvgPool2d(3), tanh,  # pooling by 3
                 conv, nn.ReLU(), pool, tanh,  # another activation
                 conv, tanh, nn.MaxPool2d(2), tanh,  # another pooling
                 conv, tanh, pool, nn.Flatten()]  # no tanh after the pooling
    units = nn.fusion_plan([conv, tanh, pool, tanh, *not_fused, conv, tanh, pool, tanh])
    assert units[0] == (0, nn.Conv2dTanhAvgPool2dTanh(1, 2, 3))
    assert units[1:-1] == list(enumerate(not_fused, start=4))
    assert units[-1] == (24, nn.Conv2dTanhAvgPool2dTanh(1, 2, 3))
    assert [(index, type(layer).__name__) for index, layer in archs.LeNet5().units()][:3] == [
        (0, "Conv2dTanhAvgPool2dTanh"), (4, "Conv2dTanhAvgPool2dTanh"), (8, "Conv2d")]
    assert archs.LeNet5().units(fused=False) == list(enumerate(archs.LeNet5().layers))


def fusing_network(seed=0):
    """Two fused blocks (5x5; 3x3 with three channels), a Dropout between them (its mask
    comes from its own index, fused or not) and a padded block that does not fuse."""
    return nn.Sequential(
        nn.Conv2d(2, 4, 5), nn.Tanh(), nn.AvgPool2d(2), nn.Tanh(),  # -> (4, 8, 8)
        nn.Dropout(0.3),
        nn.Conv2d(4, 5, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2), nn.Tanh(),  # -> (5, 4, 4)
        nn.Conv2d(5, 3, 3), nn.Tanh(), nn.AvgPool2d(2), nn.Tanh(),  # -> (3, 1, 1)
        nn.Flatten(), nn.Linear(3, 4), input_shape=(2, 20, 20), seed=seed)


@pytest.mark.parametrize("build, batch", [(archs.LeNet5, 128), (archs.LeNet5, 37),
                                          (archs.LeNet5, 180),  # passes of 10 of 28 positions
                                          (fusing_network, 1), (fusing_network, 33)])
def test_fused_units_give_the_bits_of_their_layers(build, batch):
    # Sequential.fuse off runs every layer's own kernels: the oracle, torch-checked
    rng = np.random.default_rng(batch)
    shapes = build().input_shape, build().output_shape
    x = rng.standard_normal((batch, *shapes[0])).astype(np.float32)
    y = rng.integers(0, shapes[1][0], size=batch)
    results, calls = [], []
    for fuse in (True, False):
        model = build(seed=3)
        model.fuse = fuse
        model.samples_below = 0  # eval on the batch-last kernels, fused or not
        called = []
        model.kernels = _spied(model.kernels, called)
        opt = Adam(model, lr=1e-2)
        for _ in range(2):
            loss, grads = model.loss_and_grads(x, y)
            opt.step(grads)
        results.append([loss, *(g.copy() for g in grads.values()), model.flat_params.copy(),
                        model.eval().forward(x)])
        calls.append(called)
    # two fused blocks in two steps' forwards and backwards, and the eval pass
    assert calls[0].count("conv2d_tanh_avgpool2d_tanh_forward") == 3 * 2
    assert calls[0].count("tanh_avgpool2d_tanh_backward") == 2 * 2
    assert "conv2d_tanh_avgpool2d_tanh_forward" not in calls[1]
    assert len(calls[0]) < len(calls[1])
    for ours, theirs in zip(*results, strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_fuse_takes_a_bool_and_rebuilds_the_buffers():
    model = archs.LeNet5()
    x, y = np.zeros((3, 1, 32, 32), np.float32), np.zeros(3, np.int64)
    model.loss_and_grads(x, y)
    assert len(model._buffers[3, "read"].units) == len(model.units())
    model.fuse = False
    model.loss_and_grads(x, y)
    assert len(model._buffers[3, "read"].units) == len(model.layers)
    with pytest.raises(ValueError, match=r"Sequential.fuse: expected True or False, found 1"):
        model.fuse = 1


def test_a_fused_unit_is_not_a_layer_of_a_network():
    # Sequential makes the units from their layers; one given as a layer would have a spec
    # that no checkpoint, from_spec or torch twin knows
    block = nn.Conv2dTanhAvgPool2dTanh(1, 6, 5)
    message = ("is a fused unit, which Sequential makes itself; give its layers: Conv2d(1, 6, "
               "5), Tanh(), AvgPool2d(2), Tanh()")
    with pytest.raises(ValueError, match=r"Sequential: layer 0: .*" + re.escape(message)):
        nn.Sequential(block, input_shape=(1, 32, 32))
    with pytest.raises(ValueError, match=r"Residual: body layer 1: .*" + re.escape(message)):
        nn.Residual(nn.Tanh(), block)
    with pytest.raises(ValueError, match=r"Conv2dTanhAvgPool2dTanh: padding|"
                                         r"Conv2dTanhAvgPool2dTanh: in_channels"):
        nn.Conv2dTanhAvgPool2dTanh(0, 6, 5)


def _spied(kernels, calls):
    """A backend namespace whose kernels also append their names to calls."""
    def spy(name, kernel):
        def call(*args):
            calls.append(name)
            return kernel(*args)
        return call

    return SimpleNamespace(**{name: spy(name, value) if name.endswith(("forward", "backward"))
                              else value for name, value in vars(kernels).items()})


def test_training_steps_track_torch_for_an_odd_network():
    model = odd_network(seed=4)
    module = interop.torch_module(model.spec())
    module.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    opt, torch_opt = Adam(model, lr=1e-2), torch.optim.Adam(module.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    for step in range(10):
        x = rng.standard_normal((16, 2, 11, 10)).astype(np.float32)
        y = rng.integers(0, 4, size=16)
        loss, torch_loss = lockstep(model, opt, module, torch_opt, x, y)
        assert abs(loss - torch_loss) <= 1e-4 * abs(torch_loss), step
    for name, param in module.named_parameters():
        err = rel_err(model.params[name], param.detach().numpy())
        assert err < 1e-4, f"{name}: parameters differ from torch by {err:.3g} after 10 steps"


def blocks_network(seed=0):
    """Every block the report proposes, at odd sizes: padded convolutions, batch norm after a
    convolution and after a linear layer, a residual block holding a dropout, max pooling,
    SiLU, a second dropout."""
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),  # -> (6, 9, 6)
        nn.Residual(nn.Conv2d(6, 6, (3, 3), padding=1), nn.ReLU(), nn.BatchNorm2d(6),
                    nn.Dropout(0.2)),
        nn.MaxPool2d(3),                                               # -> (6, 3, 2)
        nn.Flatten(),
        nn.Linear(36, 11), nn.BatchNorm1d(11), nn.SiLU(), nn.Dropout(0.4),
        nn.Linear(11, 5),
        input_shape=(3, 9, 6), seed=seed)


def blocks_twin(model):
    """The blocks network in torch, float64, its dropouts on tinyconv's masks: each layer's
    stream seed as Sequential derives it, the step the model's next."""
    module = torch_twin(model)
    top = nn.Pass(True, model.seed).child
    module[3].body[3] = hashed_dropout(0.2, top(3).child(3).seed, lambda: model.steps)
    module[9] = hashed_dropout(0.4, top(9).seed, lambda: model.steps)
    return module


def test_blocks_network_tracks_torch_through_training_and_eval():
    # logits, losses and every gradient at each of 4 Adam steps (a new dropout mask each),
    # the running statistics after each, and eval-mode logits after them, against torch
    model = blocks_network(seed=3)
    module = blocks_twin(model)
    # eps 1e-3: the biases right before a batch norm have gradients of 0 up to rounding
    # (1e-9 here, 1e-17 in torch's float64), which Adam's default eps would scale up to whole
    # steps of different sizes
    opt = Adam(model, lr=1e-2, eps=1e-3)
    torch_opt = torch.optim.Adam(module.parameters(), lr=1e-2, eps=1e-3)
    rng = np.random.default_rng(1)
    for step in range(4):
        x = rng.standard_normal((37, 3, 9, 6)).astype(np.float32)
        y = rng.integers(0, 5, size=37)
        torch_opt.zero_grad()  # torch first: its masks take the step the model is at
        logits = module(torch.from_numpy(x.astype(np.float64)))
        torch_loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y))
        torch_loss.backward()
        loss, grads = model.loss_and_grads(x, y)
        assert abs(loss - torch_loss.item()) <= FORWARD * abs(torch_loss.item()), step
        theirs = {name: p.grad.numpy() for name, p in module.named_parameters()}
        assert grads.keys() == theirs.keys()
        # the bias of a conv before a batch norm has a gradient of 0 up to rounding: no
        # gradient is measured against less than a hundredth of the network's largest
        scale = max(np.abs(grad).max() for grad in theirs.values())
        for name, grad in theirs.items():
            err = np.abs(grads[name] - grad).max() / max(np.abs(grad).max(), 1e-2 * scale)
            assert err < BACKWARD, f"step {step}: {name} differs from torch by {err:.3g}"
        opt.step(grads)
        torch_opt.step()
        for name, value in module.state_dict().items():
            ours = model.state_dict()[name]
            assert ours.dtype.kind == value.numpy().dtype.kind, name  # int64 counts too
            err = rel_err(ours, value.numpy())
            assert err < BACKWARD, f"after step {step}: {name} differs from torch by {err:.3g}"
    assert model.state_dict()["1.num_batches_tracked"] == 4 and model.steps == 4
    model.eval()
    module.eval()
    x = rng.standard_normal((5, 3, 9, 6)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x.astype(np.float64))).numpy()
    assert rel_err(model.forward(x), expected) < BACKWARD
    assert model.steps == 4  # an eval pass draws no mask


def test_dropout_masks_replay_across_a_resumed_run(tmp_path):
    # 4 steps straight, against 2 steps, a checkpoint, and 2 steps from it: bit for bit
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((8, 3, 9, 6)).astype(np.float32), rng.integers(0, 5, 8))
               for _ in range(4)]
    straight = blocks_network(seed=2)
    opt = Adam(straight, lr=1e-2)
    for x, y in batches:
        opt.step(straight.loss_and_grads(x, y)[1])
    first = blocks_network(seed=2)
    first_opt = Adam(first, lr=1e-2)
    for x, y in batches[:2]:
        first_opt.step(first.loss_and_grads(x, y)[1])
    header = {"epoch": 1, "config": {"seed": 2, "lr_step": 1, "lr_gamma": 0.5}}
    checkpoint.save_run(tmp_path / "run.npz", first, first_opt, StepLR(first_opt, 1), header)
    resumed, resumed_opt, _, _, _ = checkpoint.load_run(tmp_path / "run.npz")
    assert resumed.steps == 2
    for x, y in batches[2:]:
        resumed_opt.step(resumed.loss_and_grads(x, y)[1])
    for name, value in straight.state_dict().items():
        assert np.array_equal(resumed.state_dict()[name], value), name
    # and a run that forgot its steps would have drawn other masks: the check can fail
    forgetful, forgetful_opt, _, _, _ = checkpoint.load_run(tmp_path / "run.npz")
    forgetful.steps = 0
    for x, y in batches[2:]:
        forgetful_opt.step(forgetful.loss_and_grads(x, y)[1])
    assert not np.array_equal(forgetful.flat_params, straight.flat_params)


def dropout_masks(p, size, seeds_and_steps):
    """The keep masks (size,) of a Dropout(p) layer on the CPU for each (seed, step) pass."""
    k, layer = get_backend("cpu"), nn.Dropout(p)
    t = nn.Tensors(np.ones((size, 1), np.float32), np.empty((size, 1), np.float32))
    masks = []
    for seed, step in seeds_and_steps:
        layer.forward(k, t, {}, nn.Pass(True, seed, step))
        masks.append(t.out[:, 0] != 0)
    return masks


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_drops_p_of_the_elements_independently(p):
    # within 5 standard deviations of what independent draws with P(drop) = p give: the
    # keep rate of each pass, the agreement of two steps' and two layers' masks, and of
    # neighbouring elements (the hash must not repeat along the index)
    n = 1_000_000
    sigma = np.sqrt(0.25 / n)  # at most, for a rate
    step0, step1, other_layer = dropout_masks(p, n, [(7, 0), (7, 1), (8, 0)])
    for mask in (step0, step1, other_layer):
        assert abs(mask.mean() - (1 - p)) < 5 * sigma
    agree = p * p + (1 - p) * (1 - p)  # of two independent masks
    for first, second in ((step0, step1), (step0, other_layer), (step0[1:], step0[:-1]),
                          (step0[16:], step0[:-16])):
        assert abs((first == second).mean() - agree) < 5 * sigma
    # an element's bits depend on its index, not on the buffer's size
    assert np.array_equal(dropout_masks(p, 8, [(7, 0)])[0], step0[:8])


def test_dropout_is_the_identity_in_eval_and_zero_at_p_1():
    k, x = get_backend("cpu"), np.linspace(-3, 3, 60, dtype=np.float32).reshape(12, 5)
    out = np.empty_like(x)
    nn.Dropout(0.5).forward(k, nn.Tensors(x, out), {}, nn.Pass(False, 7, 3))
    assert np.array_equal(out, x)
    nn.Dropout(1.0).forward(k, nn.Tensors(x, out), {}, nn.Pass(True, 7, 3))
    assert not out.any()
    nn.Dropout(0.25).forward(k, nn.Tensors(x, out), {}, nn.Pass(True, 7, 3))
    kept = out != 0
    assert 0 < kept.sum() < x.size
    assert np.allclose(out[kept], x[kept] / np.float32(0.75), rtol=1e-6, atol=0)
    ones, scaled = np.ones((100_000, 1), np.float32), np.empty((100_000, 1), np.float32)
    nn.Dropout(0.25).forward(k, nn.Tensors(ones, scaled), {}, nn.Pass(True, 7, 3))
    assert abs(scaled.mean() - 1) < 5 * np.sqrt(0.25 * 0.75 / 100_000) / 0.75  # E[out] = x


@pytest.mark.parametrize("name, smoothing", [(name, 0.0) for name in archs.ARCHS]
                         + [("lenet5", 0.1)])
def test_named_architectures_match_their_torch_twins(name, smoothing):
    # each named network on MNIST-shaped input: logits, loss (label smoothing too) and every
    # gradient of a training step, then eval-mode logits with the running statistics it moved
    model = archs.build(name, seed=1)
    module = torch_twin(model)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((16, 1, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, size=16)
    logits = module(torch.from_numpy(x.astype(np.float64)))
    torch_loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y),
                                                   label_smoothing=smoothing)
    torch_loss.backward()
    loss, grads = model.loss_and_grads(x, y, label_smoothing=smoothing)
    assert abs(loss - torch_loss.item()) <= FORWARD * torch_loss.item()
    theirs = {key: param.grad.numpy() for key, param in module.named_parameters()}
    scale = max(np.abs(grad).max() for grad in theirs.values())  # biases before batch norm
    for key, grad in theirs.items():
        err = np.abs(grads[key] - grad).max() / max(np.abs(grad).max(), 1e-2 * scale)
        assert err < BACKWARD, f"{name}: {key} differs from torch by {err:.3g}"
    module.eval()
    with torch.no_grad():
        expected = module(torch.from_numpy(x.astype(np.float64))).numpy()
    assert rel_err(model.eval().forward(x), expected) < BACKWARD


@pytest.mark.parametrize("name", ["lenet5", "resnet-mini"])
def test_buffers_of_another_batch_size_change_no_result_and_free_the_old_block(name):
    # a step at batch 12, eval at 40 (a larger activation block: the step's buffers go stale
    # and are carved again from it), a step at 12 again: the same gradients' bits; eval's
    # logits from buffers in turns are the bits of those kept for activations()
    model = archs.build(name, seed=4)
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((12, 1, 32, 32)).astype(np.float32), rng.integers(0, 10, 12)
    wide = rng.standard_normal((40, 1, 32, 32)).astype(np.float32)
    first = {key: grad.copy() for key, grad in model.loss_and_grads(x, y)[1].items()}
    old_block = weakref.ref(model._arenas[0].memory.base)  # host.empty's raw buffer
    logits = model.eval().forward(wide)
    assert np.array_equal(logits, model.activations(wide)[-1])
    again = model.train().loss_and_grads(x, y)[1]
    for key, grad in first.items():
        assert np.array_equal(again[key], grad), key
    assert old_block() is None  # freed: the arena holds one block, not one per batch size
    assert all(buffers.current() for buffers in model._buffers.values())
    # the gradients take turns: their arena holds two boundaries and the largest gradient
    # workspace (each array rounded up to 16 floats), less than the boundaries all together
    owned = [math.prod(shape) * 12 for layer, shape in zip(model.layers, model.shapes[1:],
                                                           strict=True) if not layer.is_view]
    work = [layer.grad_workspace(shape, 12) for layer, shape in zip(model.layers, model.shapes,
                                                                    strict=False)]
    spans = [sum(math.prod(shape) + 16 for shape in named.values()) for named in work]
    turns = 2 * max(owned) + max(spans) + 3 * 16
    assert model._arenas[1].memory.size <= turns < sum(owned) + sum(spans)
    # a step keeps only the activations a backward reads: less than activations() keeps
    keeping_all = archs.build(name, seed=4)
    keeping_all.activations(x)
    step_only = archs.build(name, seed=4)
    step_only.loss_and_grads(x, y)
    assert step_only._arenas[0].memory.size < keeping_all._arenas[0].memory.size


@pytest.mark.parametrize("build", [odd_network, modern_network, mlp, tanh_first,
                                   lambda: archs.build("lenet5", seed=1),
                                   lambda: archs.build("lenet5-bn", seed=1),
                                   lambda: archs.build("resnet-mini", seed=1)])
def test_what_each_backward_reads_is_all_it_reads(build, monkeypatch):
    # a step whose unkept activations are spoiled (NaN) between its forward and backward
    # gives the gradients of one that leaves them be: backward_reads names all a backward
    # reads (the last activation, the logits, is the loss's, read before any backward), a
    # fused unit's too
    model = build()
    rng = np.random.default_rng(8)
    x = rng.standard_normal((5, *model.input_shape)).astype(np.float32)
    y = rng.integers(0, model.output_shape[0], 5)
    expected = {key: grad.copy() for key, grad in model.loss_and_grads(x, y)[1].items()}
    buf = model._buffers[5, "read"]
    owned = [i for i in range(1, len(buf.acts) - 1) if not buf.layers[i - 1].is_view]
    spoiled = [buf.acts[i] for i in owned if not buf._read_by_a_backward(i)
               and not np.shares_memory(buf.acts[i], buf.acts[-1])]  # the logits' turn
    assert spoiled or build is tanh_first  # the networks leave some unread
    forward = nn._forward_chain

    def spoiling(k, layers, tensors, params, run):
        forward(k, layers, tensors, params, run)
        if tensors is buf.tensors:  # the network's own chain, not a residual body's
            for act in spoiled:
                act[...] = np.nan

    monkeypatch.setattr(nn, "_forward_chain", spoiling)
    got = model.loss_and_grads(x, y)[1]
    for key, grad in expected.items():
        assert np.array_equal(got[key], grad), key


def test_init_is_torchs_default_and_seeded():
    model, again = odd_network(seed=7), odd_network(seed=7)
    assert np.array_equal(model.flat_params, again.flat_params)
    assert not np.array_equal(model.flat_params, odd_network(seed=8).flat_params)
    for name, values in model.params.items():
        fan_in = np.prod(model.params[name.replace("bias", "weight")].shape[1:])
        assert np.abs(values).max() <= 1 / np.sqrt(fan_in), name
        assert np.abs(values).max() > 0.5 / np.sqrt(fan_in), name  # spread over the range


def test_names_follow_torch_with_a_prefix():
    model = archs.LeNet5()
    assert list(model.state_dict()) == list(interop.torch_module(model.spec()).state_dict())
    assert list(model.state_dict())[:3] == ["backbone.0.weight", "backbone.0.bias",
                                            "backbone.4.weight"]
    assert list(odd_network().state_dict())[:3] == ["0.weight", "0.bias", "3.weight"]
    assert model.param_count == 61_706 == sum(v.size for v in model.state_dict().values())


def test_spec_is_json_and_rebuilds_the_same_network():
    model = odd_network(seed=3)
    spec = json.loads(json.dumps(model.spec()))
    rebuilt = nn.Sequential.from_spec(spec, seed=3)
    assert rebuilt.layers == model.layers and rebuilt.shapes == model.shapes
    assert np.array_equal(rebuilt.flat_params, model.flat_params)
    assert spec["layers"][0] == {"kind": "Conv2d", "in_channels": 2, "out_channels": 5,
                                 "kernel_size": [3, 2], "padding": 0}
    assert archs.build(archs.ARCHS["lenet5"]).spec() == archs.ARCHS["lenet5"]


def test_numpy_sizes_become_python_ints():
    # a spec must dump to JSON, and numba-cuda's allocator takes no numpy integer
    layers = [nn.Conv2d(np.int64(1), np.int32(2), (np.int64(3), 3)), nn.AvgPool2d(np.int64(2)),
              nn.Flatten(), nn.Linear(np.int64(8), np.int64(3))]
    model = nn.Sequential(*layers, input_shape=(np.int64(1), 6, 6))
    json.dumps(model.spec())
    assert all(type(side) is int for shape in model.shapes for side in shape)
    assert type(model.param_count) is int


def test_summary_lists_every_layer_with_its_output_and_parameters():
    lines = odd_network().summary().splitlines()
    assert len(lines) == 1 + 1 + 9 + 1  # header, input, nine layers, total
    assert lines[2].split()[:2] == ["0", "Conv2d(2,"] and "(N, 5, 9, 9)" in lines[2]
    assert lines[2].split()[-1] == f"{5 * 2 * 3 * 2 + 5:,}"
    assert lines[-1].split() == ["total", f"{odd_network().param_count:,}"]


def test_buffers_are_state_but_not_parameters():
    def mlp(seed=0):
        return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2),
                             input_shape=(4,), seed=seed)

    model = mlp()
    # batch norm's weight and bias are parameters, its running statistics are not
    assert model.param_count == 4 * 3 + 3 + 3 + 3 + 3 * 2 + 2
    state = model.state_dict()
    assert list(state) == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                           "1.running_var", "1.num_batches_tracked", "2.weight", "2.bias"]
    assert state["1.num_batches_tracked"].dtype == np.int64
    assert state["1.num_batches_tracked"].shape == () and state["1.num_batches_tracked"] == 0
    assert np.array_equal(state["1.running_var"], [1, 1, 1])
    opt = Adam(model, lr=0.1)
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    y = np.zeros(5, np.int64)
    for _ in range(3):
        opt.step(model.loss_and_grads(x, y)[1])  # training mode: counts, moves the statistics
    moved = model.state_dict()
    model.eval().forward(x)  # evaluation mode: does not
    assert model.state_dict()["1.num_batches_tracked"] == 3 and not model.training
    assert not np.array_equal(moved["1.running_var"], [1, 1, 1])
    for name in ("1.running_mean", "1.running_var"):
        assert np.array_equal(model.state_dict()[name], moved[name]), name
    other = mlp(seed=1)
    other.load_state_dict(model.state_dict())
    for name, value in model.state_dict().items():
        assert np.array_equal(other.state_dict()[name], value), name
    bad = {**model.state_dict(), "1.num_batches_tracked": np.float32(2.5)}
    with pytest.raises(ValueError, match=r"1.num_batches_tracked must hold integers, found "
                                         r"float32"):
        other.load_state_dict(bad)


def test_train_and_eval_switch_the_mode_torch_does():
    model = tinyconv.LeNet5()
    assert model.training and model.eval() is model and not model.training
    assert model.train() is model and model.training
    assert model.train(False) is model and not model.training
    assert model.to("cpu") is model  # already there


def test_run_checkpoints_rebuild_any_network(tmp_path):
    model = odd_network(seed=5)
    opt = Adam(model, lr=1e-3)
    x = np.random.default_rng(0).standard_normal((8, 2, 11, 10)).astype(np.float32)
    opt.step(model.loss_and_grads(x, np.arange(8) % 4)[1])
    header = {"epoch": 1, "config": {"seed": 5, "lr_step": 1, "lr_gamma": 0.5}}
    checkpoint.save_run(tmp_path / "run.npz", model, opt, StepLR(opt, 1, 0.5), header)
    loaded, loaded_opt, _, saved, _ = checkpoint.load_run(tmp_path / "run.npz")
    assert saved["arch"] == model.spec() and loaded.layers == model.layers
    assert np.array_equal(loaded.forward(x), model.forward(x))
    assert np.array_equal(loaded_opt.state_dict()["v"], opt.state_dict()["v"])
    assert np.array_equal(tinyconv.load(tmp_path / "run.npz").forward(x), model.forward(x))


def test_a_checkpoint_from_before_the_specs_loads_as_lenet5(tmp_path):
    # version 1, as main wrote them before networks were specs: no "arch" in the header
    model = archs.LeNet5(seed=2)
    adam = {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0, "step": 0}
    header = {"format": checkpoint.FORMAT, "version": 1, "epoch": 1, "adam": adam,
              "config": {"seed": 2, "lr_step": 4, "lr_gamma": 0.5},
              "schedule": {"base_lr": 1e-3, "step_size": 4, "gamma": 0.5, "epoch": 1}}
    arrays = {f"model/{name}": value for name, value in model.state_dict().items()}
    zeros = np.zeros(model.param_count, np.float32)
    np.savez(tmp_path / "old.npz", __header__=np.frombuffer(json.dumps(header).encode(),
                                                            np.uint8),
             **arrays, **{"adam/m": zeros, "adam/v": zeros})
    loaded, _, _, _, _ = checkpoint.load_run(tmp_path / "old.npz")
    assert loaded.spec() == archs.ARCHS["lenet5"]
    assert np.array_equal(loaded.flat_params, model.flat_params)


def test_a_loss_log_holds_each_steps_summed_loss_until_read():
    model = archs.build("lenet5", seed=0)
    rng = np.random.default_rng(0)
    log = nn.LossLog(model, 3)
    means = []
    for batch in (5, 7):
        x = rng.standard_normal((batch, 1, 32, 32)).astype(np.float32)
        y = rng.integers(0, 10, batch)
        mean, grads = model.loss_and_grads(x, y)
        kept = {name: grad.copy() for name, grad in grads.items()}
        assert model.loss_and_grads(x, y, into=log)[0] is None
        assert all(np.array_equal(kept[name], grads[name]) for name in kept)  # the same step
        means.append(mean * batch)
    np.testing.assert_allclose(log.new(), means, rtol=1e-6)
    assert log.new().size == 0  # read once
    model.loss_and_grads(x, y, into=log)
    with pytest.raises(ValueError, match="all 3 steps are written"):
        model.loss_and_grads(x, y, into=log)
