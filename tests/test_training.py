"""LeNet-5 and Adam against torch, step for step, on real MNIST batches; and against the
figures recorded from the model before the layer redesign, bit for bit."""

import hashlib

import llvmlite.binding as llvm
import numpy as np
import pytest
import torch

from tests.harness import lockstep
from tests.torch_lenet import torch_copy
from tinyconv import LeNet5
from tinyconv.data import iterate_batches, load_mnist
from tinyconv.optim import Adam, StepLR


@pytest.fixture(scope="module")
def mnist_train():
    return load_mnist("train")


def test_init_matches_torch_default_bounds():
    model = LeNet5(seed=3)
    shapes = model.param_shapes
    for name, shape in shapes.items():
        fan_in = np.prod(shapes[name.replace("bias", "weight")][1:])
        values = model.params[name]
        assert values.shape == shape and values.dtype == np.float32
        assert np.abs(values).max() <= 1 / np.sqrt(fan_in)
        assert np.abs(values).max() > 0.8 / np.sqrt(fan_in)  # spread over the whole range
    assert np.array_equal(LeNet5(seed=3).flat_params, model.flat_params)
    assert not np.array_equal(LeNet5(seed=4).flat_params, model.flat_params)


def test_state_dict_round_trip():
    model, other = LeNet5(seed=0), LeNet5(seed=1)
    other.load_state_dict(model.state_dict())
    assert np.array_equal(other.flat_params, model.flat_params)


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
        loss, torch_loss = lockstep(model, opt, module, torch_opt, x, y)
        assert abs(loss - torch_loss) <= 1e-4 * abs(torch_loss), \
            f"step {step}: loss {loss} vs torch {torch_loss}"
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


# ---- the same bits as before the redesign

# Recorded with lenet5_figures() below at commit 56654ae, the last commit with the welded-in
# tinyconv/model.py (python -c "from tests.test_training import lenet5_figures; ..."), on this
# project's machine (AMD EPYC, LLVM host CPU znver3, AVX2). The initial weights come from
# NumPy's generator alone and are the same everywhere; the training figures are bit for bit
# only where Numba compiles for the same CPU features (the vector width changes the order of
# the kernels' float32 sums), so elsewhere they are held to float32 rounding instead.
RECORDED = {
    "cpu": ("znver3", "5b9981700002"),
    "init": {0: "559bde8982cfb918", 1: "b352287c2209deec"},
    "losses": [2.3064430989325047, 2.2761594597250223, 2.219363171607256, 2.179780782200396,
               2.10873072873801, 2.028075442649424, 1.8606137093156576, 1.8803443163633347,
               1.716712536290288, 1.7354456642642617, 1.6438399720937014, 1.5668805055320263,
               1.588509552180767, 1.541674181818962, 1.4646569518372416, 1.3955136677250266],
    "test_loss": 1.3630523614883423,
    "test_correct": 275,
    "params": "7190d470f4dbabaa",
    "moments": "8062070162a045aa",
}


def digest(*arrays):
    """The first 16 hex digits of the SHA-256 of float32 arrays' bytes."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a, np.float32).tobytes())
    return h.hexdigest()[:16]


def host_cpu():
    """LLVM's name for this CPU and a digest of the features Numba compiles for."""
    features = llvm.get_host_cpu_features().flatten().encode()
    return llvm.get_host_cpu_name(), hashlib.sha256(features).hexdigest()[:12]


def lenet5_figures(steps_per_epoch=8, epochs=2, batch=128):
    """Initial weights of two seeds, then 2 short epochs of the default recipe's Adam with a
    halving StepLR and shifts of 2 pixels: every loss, the test figures, the final state.
    Only the public API that both the old and the new model offer."""
    images, labels = load_mnist("train")
    test_images, test_labels = load_mnist("test")
    out = {"init": {seed: digest(LeNet5(seed=seed).flat_params) for seed in (0, 1)}}
    model = LeNet5(seed=0)
    opt = Adam(model, lr=2e-3)
    sched = StepLR(opt, 1, 0.5)
    losses = []
    for epoch in range(epochs):
        rng = np.random.default_rng([0, epoch])
        n = steps_per_epoch * batch
        for x, y in iterate_batches(images[:n], labels[:n], batch, rng=rng, translate=2):
            loss, grads = model.loss_and_grads(x, y)
            opt.step(grads)
            losses.append(loss)
        sched.step()
    x, y = next(iterate_batches(test_images[:500], test_labels[:500], 500, shuffle=False))
    test_loss, logits = model.loss(x, y)
    out.update(losses=losses, test_loss=test_loss,
               test_correct=int((logits.argmax(1) == y).sum()),
               params=digest(model.flat_params), moments=digest(opt.m, opt.v))
    return out


def test_lenet5_is_bit_identical_to_the_model_before_the_redesign():
    found = lenet5_figures()
    assert found["init"] == RECORDED["init"], "initial weights differ"
    if host_cpu() == RECORDED["cpu"]:
        for key in ("losses", "test_loss", "test_correct", "params", "moments"):
            assert found[key] == RECORDED[key], f"{key}: {found[key]} != {RECORDED[key]}"
    else:  # another vector width: float32 sums in another order
        assert np.allclose(found["losses"], RECORDED["losses"], rtol=1e-4, atol=0)
        assert found["test_loss"] == pytest.approx(RECORDED["test_loss"], rel=1e-3)
        assert abs(found["test_correct"] - RECORDED["test_correct"]) <= 2
