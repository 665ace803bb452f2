"""Layers shared by the models."""
from __future__ import annotations

import torch.nn as nn


def flow_head(in_channels: int, ndim: int = 3) -> nn.Conv3d:
    """The 3^3 convolution to a displacement: weights from N(0, 1e-5), zero bias, so the first field is ~0."""
    conv = nn.Conv3d(in_channels, ndim, kernel_size=3, padding=1)
    nn.init.normal_(conv.weight, 0.0, 1e-5)
    nn.init.zeros_(conv.bias)
    return conv


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch of a sample with probability p (training only)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep
