"""A tabular MLP for classification and regression: fast on CPU, used by tests and the demo.

Only the model: it knows nothing of DDP, DeepSpeed or Ray (strategies wrap it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TabularMLPConfig:
    num_inputs: int
    num_outputs: int
    hidden: tuple[int, ...] = (64, 64)
    dropout: float = 0.0


class TabularMLP(nn.Module):
    def __init__(self, config: TabularMLPConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        width = config.num_inputs
        for size in config.hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            if config.dropout:
                layers.append(nn.Dropout(config.dropout))
            width = size
        layers.append(nn.Linear(width, config.num_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
