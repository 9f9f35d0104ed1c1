"""The frame model every builder returns: a trunk with pooled penultimate features and its weights identity."""

from __future__ import annotations

import torch
from torch import nn


class PooledTrunk(nn.Module):
    """Holds the trunk; forward returns (N, D) pooled penultimate features."""

    def __init__(self, trunk: nn.Module, feature_dim: int, name: str):
        super().__init__()
        self.trunk = trunk
        self.feature_dim = feature_dim
        self.name = name
        self.weights_id = "random"
        self.weights_sha256 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.trunk(x)
        return y.flatten(1)
