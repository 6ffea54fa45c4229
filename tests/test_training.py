"""The model and optimizer against torch, step for step, on real MNIST batches."""

import numpy as np
import pytest
import torch

from tests.torch_lenet import torch_copy
from tinyconv.data import iterate_batches, load_mnist
from tinyconv.model import PARAM_SHAPES, LeNet5
from tinyconv.optim import Adam, StepLR


@pytest.fixture(scope="module")
def mnist_train():
    return load_mnist("train")


def test_init_matches_torch_default_bounds():
    model = LeNet5(seed=3)
    for name, shape in PARAM_SHAPES.items():
        fan_in = np.prod(PARAM_SHAPES[name.replace("bias", "weight")][1:])
        values = model.params[name]
        assert values.shape == shape and values.dtype == np.float32
        assert np.abs(values).max() <= 1 / np.sqrt(fan_in)
        assert np.abs(values).max() > 0.8 / np.sqrt(fan_in)  # spread over the whole range
    assert np.array_equal(LeNet5(seed=3).flat_params, model.flat_params)
    assert not np.array_equal(LeNet5(seed=4).flat_params, model.flat_params)


def test_state_dict_round_trip_and_errors():
    model, other = LeNet5(seed=0), LeNet5(seed=1)
    other.load_state_dict(model.state_dict())
    assert np.array_equal(other.flat_params, model.flat_params)
    state = model.state_dict()
    state["backbone.4.weight"] = state["backbone.4.weight"][:, :3]
    with pytest.raises(ValueError, match=r"backbone.4.weight must have shape \(16, 6, 5, 5\), "
                                         r"found \(16, 3, 5, 5\)"):
        other.load_state_dict(state)
    del state["backbone.4.weight"]
    with pytest.raises(ValueError, match=r"missing \['backbone.4.weight'\]"):
        other.load_state_dict(state)


def test_forward_and_gradients_match_torch(mnist_train):
    images, labels = mnist_train
    x, y = next(iterate_batches(images, labels, 64, rng=np.random.default_rng(0)))
    model = LeNet5(seed=0)
    module = torch_copy(model)
    logits = module(torch.from_numpy(x))
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y))
    loss.backward()
    assert np.allclose(model.forward(x), logits.detach().numpy(), rtol=0, atol=1e-5)
    our_loss, grads = model.loss_and_grads(x, y)
    assert abs(our_loss - loss.item()) < 1e-5
    for name, param in module.named_parameters():
        theirs = param.grad.numpy()
        err = np.abs(grads[name] - theirs).max() / np.abs(theirs).max()
        assert err < 1e-4, f"{name}: gradient differs from torch by {err:.3g}"


def test_fifty_adam_steps_track_torch(mnist_train):
    """Same initial weights, same 50 MNIST batches, Adam + StepLR on both sides."""
    images, labels = mnist_train
    batches = iterate_batches(images[:50 * 128], labels[:50 * 128], 128,
                              rng=np.random.default_rng(0), translate=2)
    model = LeNet5(seed=0)
    module = torch_copy(model)
    opt = Adam(model, lr=1e-3)
    torch_opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    sched, torch_sched = StepLR(opt, 2, 0.5), torch.optim.lr_scheduler.StepLR(torch_opt, 2, 0.5)
    for step, (x, y) in enumerate(batches):
        loss, grads = model.loss_and_grads(x, y)
        opt.step(grads)
        torch_opt.zero_grad()
        torch_loss = torch.nn.functional.cross_entropy(module(torch.from_numpy(x)),
                                                       torch.from_numpy(y))
        torch_loss.backward()
        torch_opt.step()
        assert abs(loss - torch_loss.item()) <= 1e-4 * abs(torch_loss.item()), \
            f"step {step}: loss {loss} vs torch {torch_loss.item()}"
        if step % 10 == 9:  # a short "epoch" of 10 steps, so the lr halves twice in the run
            sched.step()
            torch_sched.step()
            assert opt.lr == torch_opt.param_groups[0]["lr"]
    # Adam divides by sqrt(v): a weight whose gradient is mostly cancellation (a sum of +- terms
    # near zero) moves by about +-lr per step whatever the rounding says, so float32 rounding
    # differences grow into a few such weights. torch float32 itself ends up 3.5e-5 (largest
    # element over largest magnitude) from torch float64 here; hence a norm-wise bound of 1e-4
    # over each tensor, and the element-wise bound that single such weights allow.
    for name, param in module.named_parameters():
        theirs, ours = param.detach().numpy(), model.params[name]
        err = np.linalg.norm(ours - theirs) / np.linalg.norm(theirs)
        assert err < 1e-4, f"{name}: parameters differ from torch by {err:.3g} after 50 steps"
        worst = np.abs(ours - theirs).max() / np.abs(theirs).max()
        assert worst < 1e-3, f"{name}: an element differs from torch by {worst:.3g}"
