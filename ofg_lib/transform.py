"""Spatial transformer: warping images and label maps by a dense displacement (notebook 02).

Conventions, stated once for the whole project:
- volumes are (B, C, D, H, W) (2-D images (B, C, H, W) work too);
- a displacement `disp` is (B, 3, D, H, W) in **voxels**, channel i along spatial axis i of the volume
  (channel 0 along D, 1 along H, 2 along W);
- `warp(image, disp)(p) = image(p + disp(p))`: the output samples the input at the identity plus the
  displacement (backward warping), with `align_corners=True` (voxel centres at -1 and +1 of the normalised
  grid) and zeros outside the volume, which is the convention of the OFG / VoxelMorph / TransMorph code.
"""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from . import _checks

__all__ = ["identity_grid", "warp", "compose", "resize_disp", "normalised_grid"]


def identity_grid(shape, device=None, dtype=torch.float32) -> torch.Tensor:
    """Voxel coordinates of every voxel, shape (1, n_dims, *shape), channel i = index along axis i."""
    axes = [torch.arange(n, device=device, dtype=dtype) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), 0).unsqueeze(0)


@lru_cache(maxsize=8)
def _base_and_scale(shape: tuple, device: torch.device, dtype: torch.dtype):
    # grid_sample wants normalised coordinates in (x, y, z) = reversed axis order, -1..1 over the voxel centres.
    if min(shape) < 2:
        raise ValueError(f"every spatial dimension must have at least 2 voxels, got spatial shape {shape}")
    scale = torch.tensor([2.0 / (n - 1) for n in reversed(shape)], device=device, dtype=dtype)
    base = identity_grid(shape, device, dtype).flip(1).movedim(1, -1) * scale - 1.0
    return base.contiguous(), scale


def normalised_grid(disp: torch.Tensor) -> torch.Tensor:
    """The `grid_sample` grid (B, *spatial, n_dims) for a voxel displacement (B, n_dims, *spatial)."""
    base, scale = _base_and_scale(tuple(disp.shape[2:]), disp.device, disp.dtype)
    return torch.addcmul(base, disp.flip(1).movedim(1, -1), scale)


def warp(image: torch.Tensor, disp: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Warp `image` (B, C, *spatial) by `disp` (B, n_dims, *spatial), voxels: out(p) = image(p + disp(p)).

    `mode="bilinear"` is (tri)linear interpolation; `mode="nearest"` is for label maps, which may be an
    integer tensor and come back with their own dtype. Samples outside the volume read zero.
    """
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor, got {type(image).__name__}")
    _checks.volume("disp", disp)
    if image.dim() != disp.dim():
        raise ValueError(f"image has shape {tuple(image.shape)} but disp has {tuple(disp.shape)}: "
                         "both must be (B, C, D, H, W) (or both (B, C, H, W))")
    _checks.disp_for("image", image, disp)
    _checks.one_of("mode", mode, ("bilinear", "nearest"))
    labels = not image.is_floating_point()
    if labels and mode != "nearest":
        raise ValueError(f"an integer image (dtype {image.dtype}) is a label map: warp it with mode='nearest'")
    src = image.to(disp.dtype) if labels or image.dtype != disp.dtype else image
    out = F.grid_sample(src, normalised_grid(disp), mode=mode, padding_mode="zeros", align_corners=True)
    return out.round().to(image.dtype) if labels else out


def compose(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """Displacement of x -> x + inner(x) + outer(x + inner(x)).

    Warping by the result equals warping by `outer` first and then by `inner`:
    `warp(image, compose(outer, inner)) ~= warp(warp(image, outer), inner)` (up to interpolation).
    """
    _checks.same_shape("outer", outer, "inner", inner)
    return inner + warp(outer, inner)


def resize_disp(disp: torch.Tensor, size) -> torch.Tensor:
    """Resample a displacement to a new spatial size, rescaling its voxel units to the new grid."""
    nsp = _checks.volume("disp", disp)
    size = tuple(int(s) for s in size)
    if len(size) != nsp:
        raise ValueError(f"size must have {nsp} entries for a {nsp}-D displacement, got {size}")
    mode = "trilinear" if nsp == 3 else "bilinear"
    out = F.interpolate(disp, size=size, mode=mode, align_corners=True)
    factors = [(new - 1) / (old - 1) for new, old in zip(size, disp.shape[2:])]
    return out * torch.tensor(factors, device=disp.device, dtype=disp.dtype).view(1, nsp, *([1] * nsp))
