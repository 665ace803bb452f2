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

__all__ = ["subject_generator", "smooth_field", "integrate_velocity", "random_velocity", "random_deformation",
           "intensity_change", "tissue_contrast"]


def subject_generator(*keys: int) -> torch.Generator:
    """A generator seeded from integer keys (e.g. seed, split, index), independent of any global state."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def smooth_field(img_size, channels: int, spacing: int, generator: torch.Generator) -> torch.Tensor:
    """Smooth zero-mean noise (1, channels, *img_size) with unit RMS and correlation length about `spacing` voxels.

    Gaussian noise on a coarse grid, upsampled (bi/tri)linearly, then three passes of a box filter of width
    `spacing` (close to a Gaussian blur) to remove the kinks of linear interpolation. `img_size` is 2-D or 3-D.
    """
    nd = len(img_size)
    coarse = [max(2, -(-s // spacing) + 1) for s in img_size]
    field = torch.randn(1, channels, *coarse, generator=generator)
    field = F.interpolate(field, size=tuple(img_size), mode="trilinear" if nd == 3 else "bilinear", align_corners=True)
    width = max(1, spacing // 2 * 2 + 1)
    for _ in range(3):
        field = box_sum(field, width) / width ** nd
    field = field - field.mean(dim=tuple(range(2, 2 + nd)), keepdim=True)
    return field / field.pow(2).sum(1).mean().sqrt().clamp_min(1e-12)


def integrate_velocity(velocity: torch.Tensor, steps: int = 7) -> torch.Tensor:
    """exp(v) by scaling and squaring: start from v / 2^steps and compose the field with itself `steps` times."""
    disp = velocity / 2 ** steps
    for _ in range(steps):
        disp = disp + warp(disp, disp)
    return disp


def random_velocity(img_size, rms: float, spacing: int, generator: torch.Generator, fine_rms: float = 0.0):
    """The stationary velocity behind `random_deformation`, drawn at half resolution: (1, n_dims, *half).

    A coarse component (correlation length `spacing`, RMS about `rms` voxels at `img_size`) plus, when `fine_rms` > 0,
    a fine one (a quarter of the correlation length, but at least 2 voxels of the half-resolution grid, so at
    small sizes the two scales are closer; RMS about `fine_rms`): multi-scale deformations.
    """
    half = [max(8, s // 2) for s in img_size]
    velocity = smooth_field(half, len(img_size), max(2, spacing // 2), generator) * (rms * half[0] / img_size[0])
    if fine_rms > 0:
        fine = smooth_field(half, len(img_size), max(2, spacing // 8), generator) * (fine_rms * half[0] / img_size[0])
        velocity = velocity + fine
    return velocity


def random_deformation(img_size, rms: float, spacing: int, generator: torch.Generator, fine_rms: float = 0.0,
                       with_inverse: bool = False):
    """A smooth invertible displacement (1, n_dims, *img_size), voxels, with RMS magnitude about `rms`.

    exp(v) of a random stationary velocity v (`random_velocity`), drawn and integrated at half resolution
    (2^n times less work), then resized. `with_inverse=True` also returns exp(-v), the inverse map's
    displacement (the same field integrated backwards): `compose(inverse, disp)` is about zero.
    """
    velocity = random_velocity(img_size, rms, spacing, generator, fine_rms)
    disp = resize_disp(integrate_velocity(velocity), img_size)
    if not with_inverse:
        return disp
    return disp, resize_disp(integrate_velocity(-velocity), img_size)


def intensity_change(image: torch.Tensor, generator: torch.Generator, bias: float = 0.1, gamma: float = 0.15,
                     noise: float = 0.01, spacing: int = 32) -> torch.Tensor:
    """A smooth multiplicative bias field, a random gamma and Gaussian noise; result clipped to [0, 1]."""
    size = image.shape[2:]
    field = torch.exp(bias * smooth_field(size, 1, spacing, generator))
    g = float(torch.exp(gamma * torch.randn((), generator=generator)))
    out = image.clamp_min(0) ** g * field + noise * torch.randn(image.shape, generator=generator)
    return out.clamp(0, 1)


def tissue_contrast(image: torch.Tensor, tissues: torch.Tensor, strength: float,
                    generator: torch.Generator) -> torch.Tensor:
    """Per-subject tissue contrast (SynthMorph-style): each tissue's mean intensity scaled by its own random factor.

    `tissues` (1, 3, *size) holds grey-matter, white-matter and CSF probabilities p_t with p-weighted mean
    intensities m_t; the image gains sum_t p_t m_t (exp(strength * z_t) - 1), z_t ~ N(0, 1) drawn per subject,
    so a voxel of pure tissue t has its mean moved from m_t to m_t exp(strength * z_t) (exactly so for crisp
    maps; partial-volume voxels mix the changes) and the texture inside each tissue is kept. Intensities above
    1 are clipped later by `intensity_change`. `strength=0` returns the image unchanged. The labels are not
    touched: only the intensities, so the similarity's optimum is no longer exactly the truth.
    """
    if strength == 0:
        return image
    z = torch.randn(3, generator=generator)
    weights = tissues.sum(dim=tuple(range(2, tissues.dim()))).clamp_min(1e-6)
    means = (tissues * image).sum(dim=tuple(range(2, tissues.dim()))) / weights       # (1, 3)
    change = means * (torch.exp(strength * z) - 1)                                    # (1, 3)
    shape = (1, 3) + (1,) * (tissues.dim() - 2)
    return image + (tissues * change.view(shape)).sum(1, keepdim=True)
