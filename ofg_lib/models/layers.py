"""Layers shared by the models."""
from __future__ import annotations

import torch.nn as nn


def conv(ndim: int):
    """nn.Conv2d or nn.Conv3d for a 2-D or 3-D model."""
    if ndim not in (2, 3):
        raise ValueError(f"models are 2-D or 3-D, got {ndim} spatial dimensions")
    return nn.Conv2d if ndim == 2 else nn.Conv3d


def flow_head(in_channels: int, ndim: int = 3) -> nn.Module:
    """The 3^n convolution to a displacement: weights from N(0, 1e-5), zero bias, so the first field is ~0."""
    layer = conv(ndim)(in_channels, ndim, kernel_size=3, padding=1)
    nn.init.normal_(layer.weight, 0.0, 1e-5)
    nn.init.zeros_(layer.bias)
    return layer


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
