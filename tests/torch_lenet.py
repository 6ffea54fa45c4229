"""The original report's PyTorch LeNet5, the yardstick for tinyconv's model (tests only)."""

import torch
from torch import nn


class LeNet5(nn.Module):
    """The report's module, layer for layer: its state_dict keys are tinyconv's."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(1, 6, kernel_size=5), nn.Tanh(),
            nn.AvgPool2d(kernel_size=2, stride=2), nn.Tanh(),
            nn.Conv2d(6, 16, kernel_size=5), nn.Tanh(),
            nn.AvgPool2d(kernel_size=2, stride=2), nn.Tanh(),
            nn.Conv2d(16, 120, kernel_size=5), nn.Tanh(),
            nn.Flatten(start_dim=1),
            nn.Linear(120, 84), nn.Tanh(),
            nn.Linear(84, 10),
        )

    def forward(self, x):
        return self.backbone(x)


def torch_copy(model):
    """A torch LeNet5 holding a tinyconv model's current parameters."""
    module = LeNet5()
    module.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    return module
