"""Bad networks and bad inputs: a ValueError naming the layer or argument, what it needs and
what it found, raised before any kernel runs (the kernels trust their arguments: a wrong shape
there would read out of bounds), and nothing a refused call could write is written."""

import re

import numpy as np
import pytest

from tinyconv import archs, nn


def build(*layers, input_shape=(1, 8, 8)):
    return lambda: nn.Sequential(*layers, input_shape=input_shape)


BAD_NETWORKS = {
    "conv channels": (build(nn.Conv2d(3, 4, 3)),
                      "layer 0 Conv2d(3, 4, 3): needs an input (3, H, W) with H >= 3 and "
                      "W >= 3, found (1, 8, 8)"),
    "conv kernel too big": (build(nn.Conv2d(1, 4, (9, 3))),
                            "layer 0 Conv2d(1, 4, (9, 3)): needs an input (1, H, W) with "
                            "H >= 9 and W >= 3, found (1, 8, 8)"),
    "conv on features": (build(nn.Flatten(), nn.Conv2d(1, 2, 3)),
                         "layer 1 Conv2d(1, 2, 3): needs an input (1, H, W), found (64,)"),
    "pool not divisible": (build(nn.Conv2d(1, 2, 2), nn.AvgPool2d(2)),
                           "layer 1 AvgPool2d(2): needs a height and width divisible by 2, "
                           "found (2, 7, 7)"),
    "linear without flatten": (build(nn.Linear(64, 3)),
                               "layer 0 Linear(64, 3): needs an input (64,), found (1, 8, 8); "
                               "put a Flatten() before it"),
    "linear features": (build(nn.Flatten(), nn.Linear(60, 3)),
                        "layer 1 Linear(60, 3): needs an input (60,), found (64,)"),
    "not a layer": (build(nn.Flatten(), "Linear(64, 3)"),
                    "Sequential: layer 1 must be a tinyconv.nn layer, found str"),
    "no layers": (build(), "Sequential: needs at least one layer"),
    "input shape a number": (build(nn.Tanh(), input_shape=5),
                             "Sequential: input_shape must be the input's positive sides without "
                             "the batch, (C, H, W) or (F,), found 5"),
    "input shape zero": (build(nn.Tanh(), input_shape=(0, 3)), "found (0, 3)"),
    "prefix without a dot": (lambda: nn.Sequential(nn.Tanh(), input_shape=(3,),
                                                   prefix="backbone"),
                             "Sequential: prefix must be a string ending in '.' (as "
                             "'backbone.'), or '', found 'backbone'"),
    "bool kernel": (lambda: nn.Conv2d(1, 2, True),
                    "Conv2d: kernel_size must be a positive int or a pair of them, found True"),
    "null kernel in a spec": (lambda: nn.Sequential.from_spec(
        {"input_shape": [1, 4, 4], "layers": [{"kind": "Conv2d", "in_channels": 1,
                                               "out_channels": 2, "kernel_size": None}]}),
        "architecture spec, layer 0: Conv2d: kernel_size must be a positive int or a pair of "
        "them, found None"),
    "zero channels": (lambda: nn.Conv2d(1, 0, 3),
                      "Conv2d: out_channels must be a positive int, found 0"),
    "bad kernel": (lambda: nn.Conv2d(1, 2, (3, 0)),
                   "Conv2d: kernel_size must be a positive int or a pair of them, found (3, 0)"),
    "float pool": (lambda: nn.AvgPool2d(2.0),
                   "AvgPool2d: kernel_size must be a positive int, found 2.0"),
    "batch norm channels": (build(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(6)),
                            "layer 1 BatchNorm2d(6): needs an input (6, H, W), found (4, 6, 6)"),
    "batch norm 1d on images": (build(nn.BatchNorm1d(1)),
                                "layer 0 BatchNorm1d(1): needs an input (1,) or (1, L), found "
                                "(1, 8, 8)"),
    "residual changes the shape": (build(nn.Residual(nn.Conv2d(1, 2, 3))),
                                   "layer 0 Residual(Conv2d(1, 2, 3)): needs a body that keeps "
                                   "its input's shape (1, 8, 8), found (2, 6, 6) after it"),
    "residual body layer": (build(nn.Tanh(), nn.Residual(nn.ReLU(), nn.Linear(3, 3))),
                            "layer 1 Residual(ReLU(), Linear(3, 3)): body layer 1 Linear(3, 3): "
                            "needs an input (3,), found (1, 8, 8); put a Flatten() before it"),
    "empty residual": (lambda: nn.Residual(), "Residual: needs a body of at least one layer"),
    "residual of a string": (lambda: nn.Residual(nn.ReLU(), "Tanh()"),
                             "Residual: body layer 1 must be a tinyconv.nn layer, found str"),
    "padding as big as the kernel": (lambda: nn.Conv2d(1, 2, 3, padding=3),
                                     "Conv2d: padding must be an int from 0 to 2 (less than the "
                                     "kernel's side 3), found 3"),
    "padding of a rectangular kernel": (lambda: nn.Conv2d(1, 2, (5, 2), padding=2),
                                        "Conv2d: padding must be an int from 0 to 1"),
    "padding in a spec": (lambda: nn.Sequential.from_spec(
        {"input_shape": [1, 4, 4], "layers": [{"kind": "Conv2d", "in_channels": 1,
                                               "out_channels": 2, "kernel_size": 3,
                                               "padding": -1}]}),
        "architecture spec, layer 0: Conv2d: padding must be an int from 0 to 2"),
    "padded input too small": (build(nn.Conv2d(1, 2, 7, padding=1), input_shape=(1, 4, 9)),
                               "layer 0 Conv2d(1, 2, 7, padding=1): needs an input (1, H, W) "
                               "with H >= 5 and W >= 5, found (1, 4, 9)"),
    "dropout p": (lambda: nn.Dropout(1.5), "Dropout: p must be a probability in [0, 1], "
                                            "found 1.5"),
    "batch norm momentum": (lambda: nn.BatchNorm2d(3, momentum=2),
                            "BatchNorm2d: momentum must be in [0, 1], found 2"),
    "batch norm eps": (lambda: nn.BatchNorm1d(3, eps=0),
                       "BatchNorm1d: eps must be a positive number, found 0"),
    "residual spec body": (lambda: nn.Sequential.from_spec(
        {"input_shape": [4], "layers": [{"kind": "Residual", "body": [{"kind": "Softmax"}]}]}),
        "architecture spec, layer 0: body layer 0: unknown layer kind 'Softmax'"),
    "residual spec arguments": (lambda: nn.Sequential.from_spec(
        {"input_shape": [4], "layers": [{"kind": "Residual", "layers": []}]}),
        "architecture spec, layer 0: Residual takes one argument, 'body': a list of layer "
        "specs; found ['layers']"),
    "unknown kind": (lambda: nn.Sequential.from_spec(
        {"input_shape": [4], "layers": [{"kind": "Linear", "in_features": 4,
                                         "out_features": 2}, {"kind": "Softmax"}]}),
        "architecture spec, layer 1: unknown layer kind 'Softmax', expected one of Conv2d, "
        "AvgPool2d, MaxPool2d, Tanh, ReLU, SiLU, Flatten, Linear, BatchNorm2d, BatchNorm1d, "
        "Dropout, Residual"),
    "wrong argument": (lambda: nn.Sequential.from_spec(
        {"input_shape": [4], "layers": [{"kind": "Linear", "in_features": 4, "out": 2}]}),
        "architecture spec, layer 0: Linear takes the arguments ['in_features', "
        "'out_features'], found ['in_features', 'out']"),
    "spec without input shape": (lambda: nn.Sequential.from_spec({"layers": []}),
                                 "architecture spec: missing 'input_shape' (C, H, W)"),
    "unknown architecture": (lambda: archs.build("lenet6"),
                             "unknown architecture 'lenet6', expected one of lenet5, "
                             "lenet5-relu, lenet5-bn, resnet-mini or a spec"),
    "unknown architecture name": (lambda: archs.find_spec("resnet"),
                                  "unknown architecture 'resnet', expected one of lenet5, "
                                  "lenet5-relu, lenet5-bn, resnet-mini or a spec file "
                                  "(.json)"),
    "missing spec file": (lambda: archs.find_spec("/nonexistent/net.json"),
                          "/nonexistent/net.json: cannot read the architecture spec (No such "
                          "file or directory)"),
}


@pytest.mark.parametrize("case", BAD_NETWORKS)
def test_bad_networks_are_refused_with_the_layer_named(case):
    make, message = BAD_NETWORKS[case]
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


def lenet_args(**changes):
    rng = np.random.default_rng(0)
    args = {"x": rng.standard_normal((3, 1, 32, 32)).astype(np.float32),
            "y": np.array([0, 9, 4])}
    return {**args, **changes}


BAD_INPUTS = {
    "wrong rank": (lenet_args(x=np.zeros((3, 32, 32), np.float32)),
                   "lenet5: x must be an array (N, 1, 32, 32), found (3, 32, 32)"),
    "wrong size": (lenet_args(x=np.zeros((3, 1, 28, 28), np.float32)),
                   "lenet5: x must be an array (N, 1, 32, 32), found (3, 1, 28, 28)"),
    "a list": (lenet_args(x=[[0.0]]), "lenet5: x must be an array (N, 1, 32, 32), found list"),
    "empty batch": (lenet_args(x=np.zeros((0, 1, 32, 32), np.float32), y=np.zeros(0, int)),
                    "lenet5: x must hold at least one sample, found an empty batch"),
    "label too big": (lenet_args(y=np.array([0, 10, 4])),
                      "lenet5: labels must lie in [0, 10), found 10"),
    "label negative": (lenet_args(y=np.array([0, -1, 4])),
                       "lenet5: labels must lie in [0, 10), found -1"),
    "float labels": (lenet_args(y=np.zeros(3, np.float32)),
                     "lenet5: y must be 3 integer labels, found float32 array of shape (3,)"),
    "label count": (lenet_args(y=np.zeros(4, np.int64)),
                    "lenet5: y must be 3 integer labels, found int64 array of shape (4,)"),
}


@pytest.mark.parametrize("call", ["loss", "loss_and_grads"])
@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_are_named_and_nothing_is_written(case, call):
    model = archs.LeNet5()
    good = lenet_args()
    model.loss_and_grads(good["x"], good["y"])  # buffers for batch 3 exist and hold values
    buffers = model._buffers[3, "read"]  # (batch, keep: what a backward reads)
    before = [a.copy() for a in [*buffers.acts, *buffers.gradients()[1:], buffers.losses]]
    params, grads = model.flat_params.copy(), model.flat_grads.copy()
    args, message = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=re.escape(message)):
        getattr(model, call)(**args)
    after = [*buffers.acts, *buffers.gradients()[1:], buffers.losses]
    for index, (old, new) in enumerate(zip(before, after, strict=True)):
        assert np.array_equal(old, new), f"buffer {index} was written"
    assert np.array_equal(model.flat_params, params) and np.array_equal(model.flat_grads, grads)


@pytest.mark.parametrize("where", ["top", "residual"])
def test_batch_norm_refuses_one_value_per_channel_in_training_and_writes_nothing(where):
    norm = nn.BatchNorm1d(3)
    layers = [nn.Linear(4, 3), norm if where == "top" else nn.Residual(nn.Tanh(), norm)]
    model = nn.Sequential(*layers, nn.Linear(3, 2), input_shape=(4,))
    x, y = np.ones((1, 4), np.float32), np.zeros(1, np.int64)
    before = model.state_dict()
    message = ("layer 1 BatchNorm1d(3): in training mode needs more than one value per "
               "channel, found a batch of 1" if where == "top" else
               "layer 1 Residual(Tanh(), BatchNorm1d(3)): body layer 1 BatchNorm1d(3): in "
               "training mode needs more than one value per channel, found a batch of 1")
    for call in (model.forward, model.loss_and_grads):
        with pytest.raises(ValueError, match=re.escape(message)):
            call(x, y) if call == model.loss_and_grads else call(x)
    for name, value in model.state_dict().items():  # no running statistic moved
        assert np.array_equal(value, before[name]), name
    assert model.steps == 0
    assert model.eval().forward(x).shape == (1, 2)  # one sample is fine in eval mode


def test_a_spec_file_that_is_not_json_is_named(tmp_path):
    path = tmp_path / "net.json"
    path.write_text("{'layers': []}")
    with pytest.raises(ValueError, match=re.escape(f"{path}: not a JSON architecture spec")):
        archs.find_spec(str(path))
    path.write_text('{"input_shape": [4], "layers": [{"kind": "Linear", "in_features": 4, '
                    '"out_features": 2}]}')
    assert nn.Sequential.from_spec(archs.find_spec(str(path))).output_shape == (2,)


def test_loss_needs_class_scores():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), input_shape=(1, 5, 5))
    assert model.forward(np.zeros((2, 1, 5, 5), np.float32)).shape == (2, 2, 3, 3)
    with pytest.raises(ValueError, match=re.escape(
            "the loss needs an output of class scores (V,), found an output (2, 3, 3); end "
            "with a Linear layer")):
        model.loss(np.zeros((2, 1, 5, 5), np.float32), np.zeros(2, np.int64))


def test_state_dict_errors_name_the_entry():
    model, other = archs.LeNet5(seed=0), archs.LeNet5(seed=1)
    state = model.state_dict()
    state["backbone.4.weight"] = state["backbone.4.weight"][:, :3]
    with pytest.raises(ValueError, match=r"backbone.4.weight must have shape \(16, 6, 5, 5\), "
                                         r"found \(16, 3, 5, 5\)"):
        other.load_state_dict(state)
    state["backbone.4.weight"] = np.zeros((16, 6, 5, 5), np.int32)
    with pytest.raises(ValueError, match=r"backbone.4.weight must hold floats, found int32"):
        other.load_state_dict(state)
    del state["backbone.4.weight"]
    with pytest.raises(ValueError, match=r"missing \['backbone.4.weight'\], unexpected \[\]"):
        other.load_state_dict(state)
    assert not np.array_equal(other.flat_params, model.flat_params)  # nothing was copied in
