"""Named architectures as specs: each a Sequential that tinyconv builds and torch rebuilds.

A spec is JSON: {"name", "input_shape": [C, H, W], "prefix", "layers": [{"kind": torch.nn's
class name, its constructor arguments...}, ...]}; nn.Sequential.from_spec builds it here and
interop.torch_module in torch.
"""

import json
from pathlib import Path

from tinyconv.nn import (
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    Flatten,
    Linear,
    MaxPool2d,
    ReLU,
    Residual,
    Sequential,
    Tanh,
)


def lenet5_layers():
    """The original report's network, the `backbone` nn.Sequential of its module, index for
    index, so the parameter names (backbone.0.weight, ...) match its state_dict."""
    return [
        Conv2d(1, 6, 5), Tanh(),        # 0: (1,32,32) -> (6,28,28)
        AvgPool2d(2), Tanh(),           # 2: -> (6,14,14)
        Conv2d(6, 16, 5), Tanh(),       # 4: -> (16,10,10)
        AvgPool2d(2), Tanh(),           # 6: -> (16,5,5)
        Conv2d(16, 120, 5), Tanh(),     # 8: -> (120,1,1)
        Flatten(),                      # 10: -> (120,)
        Linear(120, 84), Tanh(),        # 11: -> (84,)
        Linear(84, 10),                 # 13: -> (10,) logits
    ]


def lenet5_relu_layers():
    """The textbook modern LeNet-5: ReLU for tanh, max for average pooling, one activation
    after each pooling instead of the report's two."""
    return [
        Conv2d(1, 6, 5), ReLU(), MaxPool2d(2),      # 0: (1,32,32) -> (6,14,14)
        Conv2d(6, 16, 5), ReLU(), MaxPool2d(2),     # 3: -> (16,5,5)
        Conv2d(16, 120, 5), ReLU(),                 # 6: -> (120,1,1)
        Flatten(),                                  # 8: -> (120,)
        Linear(120, 84), ReLU(),                    # 9: -> (84,)
        Linear(84, 10),                             # 11: -> (10,) logits
    ]


def lenet5_bn_layers():
    """lenet5-relu with a batch norm after each convolution and after fc1, before the ReLU,
    as the report's section 3.4 proposes against vanishing and exploding gradients."""
    return [
        Conv2d(1, 6, 5), BatchNorm2d(6), ReLU(), MaxPool2d(2),        # 0: -> (6,14,14)
        Conv2d(6, 16, 5), BatchNorm2d(16), ReLU(), MaxPool2d(2),      # 4: -> (16,5,5)
        Conv2d(16, 120, 5), BatchNorm2d(120), ReLU(),                 # 8: -> (120,1,1)
        Flatten(),                                                    # 11: -> (120,)
        Linear(120, 84), BatchNorm1d(84), ReLU(),                     # 12: -> (84,)
        Linear(84, 10),                                               # 15: -> (10,) logits
    ]


def resnet_mini_layers():
    """A small residual network for 32x32 digits (about 48k parameters): padded 3x3
    convolutions with batch norm, a residual block of two at 16 and at 32 channels, max
    pooling between the stages and a global average before the classifier."""

    def block(channels):  # x + BN(conv(ReLU(BN(conv(x))))), then a ReLU after the sum
        return Residual(Conv2d(channels, channels, 3, padding=1), BatchNorm2d(channels),
                        ReLU(), Conv2d(channels, channels, 3, padding=1),
                        BatchNorm2d(channels))

    return [
        Conv2d(1, 16, 3, padding=1), BatchNorm2d(16), ReLU(),    # 0: -> (16,32,32)
        block(16), ReLU(), MaxPool2d(2),                         # 3: -> (16,16,16)
        Conv2d(16, 32, 3, padding=1), BatchNorm2d(32), ReLU(),   # 6: -> (32,16,16)
        block(32), ReLU(), MaxPool2d(2),                         # 9: -> (32,8,8)
        Conv2d(32, 64, 3, padding=1), BatchNorm2d(64), ReLU(),   # 12: -> (64,8,8)
        AvgPool2d(8), Flatten(),                                 # 15: -> (64,)
        Linear(64, 10),                                          # 17: -> (10,) logits
    ]


def _spec(name, layers):
    return {"name": name, "input_shape": [1, 32, 32], "prefix": "backbone.",
            "layers": [layer.spec() for layer in layers]}


ARCHS = {
    "lenet5": _spec("lenet5", lenet5_layers()),
    "lenet5-relu": _spec("lenet5-relu", lenet5_relu_layers()),
    "lenet5-bn": _spec("lenet5-bn", lenet5_bn_layers()),
    "resnet-mini": _spec("resnet-mini", resnet_mini_layers()),
}


def find_spec(arch):
    """The spec of an architecture's name in ARCHS, or of a JSON spec file's path; a
    ValueError saying which names exist, or what is wrong with the file."""
    if arch in ARCHS:
        return ARCHS[arch]
    path = Path(arch)
    if path.suffix != ".json" and not path.exists():
        raise ValueError(f"unknown architecture {arch!r}, expected one of {', '.join(ARCHS)} "
                         f"or a spec file (.json)")
    try:
        spec = json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the architecture spec ({exc.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a JSON architecture spec ({exc})") from None
    return spec


def build(arch, seed=0, device="cpu"):
    """A Sequential from a name in ARCHS or a spec dict, initialised from seed."""
    if isinstance(arch, str):
        if arch not in ARCHS:
            raise ValueError(f"unknown architecture {arch!r}, expected one of "
                             f"{', '.join(ARCHS)} or a spec")
        arch = ARCHS[arch]
    return Sequential.from_spec(arch, seed=seed, device=device)


def LeNet5(seed=0, device="cpu"):  # noqa: N802 (named as the network, as before)
    """LeNet-5 as in the original report (the architecture lenet5), on `device`."""
    return build("lenet5", seed, device)
