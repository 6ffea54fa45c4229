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
    SiLU,
    Tanh,
)

ACTIVATIONS = {"tanh": Tanh, "relu": ReLU, "silu": SiLU}
POOLINGS = {"avg": AvgPool2d, "max": MaxPool2d}


def lenet5_layers(activation="tanh", pooling="avg", batch_norm=False):
    """LeNet-5 as the report built it, the `backbone` nn.Sequential of its module index for
    index (backbone.0.weight, ...), or a variant of it: another activation (tanh, relu, silu),
    max pooling (avg, max), and with batch_norm a batch norm after each convolution and after
    fc1, before the activation (the report's section 3.4 proposals).

    The report applies its activation after each pooling too; a variant keeps that second
    activation wherever it can change something, so ReLU's, the identity on pooled ReLU
    outputs, is left out (the textbook modern LeNet-5).
    """
    act, pool = ACTIVATIONS[activation], POOLINGS[pooling]
    norm2d = (lambda channels: [BatchNorm2d(channels)]) if batch_norm else (lambda _: [])
    norm1d = [BatchNorm1d(84)] if batch_norm else []
    after_pool = [act()] if activation != "relu" else []
    return [
        Conv2d(1, 6, 5), *norm2d(6), act(), pool(2), *after_pool,      # -> (6,14,14)
        Conv2d(6, 16, 5), *norm2d(16), act(), pool(2), *after_pool,    # -> (16,5,5)
        Conv2d(16, 120, 5), *norm2d(120), act(),                       # -> (120,1,1)
        Flatten(),                                                     # -> (120,)
        Linear(120, 84), *norm1d, act(),                               # -> (84,)
        Linear(84, 10),                                                # -> (10,) logits
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


def spec_of(name, layers):
    """A spec of layers (a list of tinyconv.nn layers) for 32x32 digits, named name."""
    return {"name": name, "input_shape": [1, 32, 32], "prefix": "backbone.",
            "layers": [layer.spec() for layer in layers]}


ARCHS = {
    "lenet5": spec_of("lenet5", lenet5_layers()),
    # the textbook modern variant, and it with the report's proposed batch norm
    "lenet5-relu": spec_of("lenet5-relu", lenet5_layers("relu", "max")),
    "lenet5-bn": spec_of("lenet5-bn", lenet5_layers("relu", "max", batch_norm=True)),
    "resnet-mini": spec_of("resnet-mini", resnet_mini_layers()),
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
