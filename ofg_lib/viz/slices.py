"""Slices of volumes and label overlays (notebooks 01-03, 06, 08)."""
from __future__ import annotations

import numpy as np
import torch


__all__ = ["mid_slices", "show_slices", "show_overlay"]


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def mid_slices(volume, index=None):
    """Three orthogonal slices (axis 0, 1, 2) through `index` (default: the centre) of a (D, H, W) volume.

    A 2-D image (H, W) is its own slice along every axis (so every slice plot also draws the 2-D track).
    """
    v = _np(volume).squeeze()
    if v.ndim == 2:
        return v, v, v
    if v.ndim != 3:
        raise ValueError(f"expected a 3-D volume (D, H, W) or a 2-D image after squeezing, got shape {v.shape}")
    index = [s // 2 for s in v.shape] if index is None else index
    return v[index[0]], v[:, index[1]], v[:, :, index[2]]


def show_slices(volumes: dict, axis: int = 0, index=None, cmap="gray", axes=None, **imshow):
    """One panel per named volume, the same slice through each; returns the axes."""
    import matplotlib.pyplot as plt
    if axes is None:
        _, axes = plt.subplots(1, len(volumes), figsize=(3 * len(volumes), 3), squeeze=False)
        axes = axes[0]
    for ax, (name, vol) in zip(axes, volumes.items()):
        ax.imshow(mid_slices(vol, index)[axis].T, origin="lower", cmap=cmap, **imshow)
        ax.set_title(name)
        ax.axis("off")
    return axes


def show_overlay(image, labels, ax, axis: int = 0, index=None, alpha: float = 0.45):
    """A slice of `image` in grey with `labels` (0 = transparent) on top in a qualitative colour map."""
    img, lab = mid_slices(image, index)[axis].T, mid_slices(labels, index)[axis].T
    ax.imshow(img, origin="lower", cmap="gray")
    ax.imshow(np.ma.masked_where(lab == 0, lab), origin="lower", cmap="tab20", alpha=alpha,
              interpolation="nearest", vmin=0.5, vmax=20.5)
    ax.axis("off")
    return ax
