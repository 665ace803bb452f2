"""Random smooth deformations and intensity changes for the embedded cohort (notebook 01).

A subject is the atlas warped by exp(v), v a smooth random stationary velocity field integrated by scaling
and squaring (so the deformation is smooth and invertible), followed by intensity changes a different scan
would bring (bias field, gamma, noise). Everything is drawn from a `torch.Generator`, so a (seed, split,
index) triple always gives the same subject, in any order and in any worker process.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..losses import box_sum
from ..transform import resize_disp, warp

__all__ = ["subject_generator", "smooth_field", "integrate_velocity", "random_deformation", "intensity_change"]


def subject_generator(*keys: int) -> torch.Generator:
    """A generator seeded from integer keys (e.g. seed, split, index), independent of any global state."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def smooth_field(size, channels: int, spacing: int, generator: torch.Generator) -> torch.Tensor:
    """Smooth zero-mean noise (1, channels, *size) with unit RMS and correlation length about `spacing` voxels.

    Gaussian noise on a coarse grid, upsampled trilinearly, then three passes of a box filter of width
    `spacing` (close to a Gaussian blur) to remove the kinks of linear interpolation.
    """
    coarse = [max(2, -(-s // spacing) + 1) for s in size]
    field = torch.randn(1, channels, *coarse, generator=generator)
    field = F.interpolate(field, size=tuple(size), mode="trilinear", align_corners=True)
    width = max(1, spacing // 2 * 2 + 1)
    for _ in range(3):
        field = box_sum(field, width) / width ** 3
    field = field - field.mean(dim=(2, 3, 4), keepdim=True)
    return field / field.pow(2).sum(1).mean().sqrt().clamp_min(1e-12)


def integrate_velocity(velocity: torch.Tensor, steps: int = 7) -> torch.Tensor:
    """exp(v) by scaling and squaring: start from v / 2^steps and compose the field with itself `steps` times."""
    disp = velocity / 2 ** steps
    for _ in range(steps):
        disp = disp + warp(disp, disp)
    return disp


def random_deformation(size, rms: float, spacing: int, generator: torch.Generator) -> torch.Tensor:
    """A smooth invertible displacement (1, 3, *size), voxels, with RMS magnitude about `rms`.

    The velocity is drawn and integrated at half resolution (8 times less work), then resized.
    """
    half = [max(8, s // 2) for s in size]
    velocity = smooth_field(half, 3, max(2, spacing // 2), generator) * (rms * half[0] / size[0])
    return resize_disp(integrate_velocity(velocity), size)


def intensity_change(image: torch.Tensor, generator: torch.Generator, bias: float = 0.1, gamma: float = 0.15,
                     noise: float = 0.01, spacing: int = 32) -> torch.Tensor:
    """A smooth multiplicative bias field, a random gamma and Gaussian noise; result clipped to [0, 1]."""
    size = image.shape[2:]
    field = torch.exp(bias * smooth_field(size, 1, spacing, generator))
    g = float(torch.exp(gamma * torch.randn((), generator=generator)))
    out = image.clamp_min(0) ** g * field + noise * torch.randn(image.shape, generator=generator)
    return out.clamp(0, 1)
