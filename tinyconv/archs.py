"""Named architectures as specs: each a Sequential that tinyconv builds and torch rebuilds.

A spec is JSON: {"name", "input_shape": [C, H, W], "prefix", "layers": [{"kind": torch.nn's
class name, its constructor arguments...}, ...]}; nn.Sequential.from_spec builds it here and
interop.torch_module in torch.
"""

from tinyconv.nn import AvgPool2d, Conv2d, Flatten, Linear, Sequential, Tanh


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


ARCHS = {
    "lenet5": {"name": "lenet5", "input_shape": [1, 32, 32], "prefix": "backbone.",
               "layers": [layer.spec() for layer in lenet5_layers()]},
}


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
