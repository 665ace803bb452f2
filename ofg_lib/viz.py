"""Plots shared by the notebooks: slice panels, deformation grids, Jacobian maps."""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["mid_slices", "show_slices", "show_overlay", "plot_grid", "show_jacobian"]


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def mid_slices(volume, index=None):
    """Three orthogonal slices (axis 0, 1, 2) through `index` (default: the centre) of a (D, H, W) volume."""
    v = _np(volume).squeeze()
    if v.ndim != 3:
        raise ValueError(f"expected a 3-D volume (D, H, W) after squeezing, got shape {v.shape}")
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


def plot_grid(disp2d, ax, step: int = 4, **line):
    """Draw the deformed grid of a 2-D displacement (2, H, W) in voxels: lines every `step` voxels."""
    d = _np(disp2d)
    if d.ndim != 3 or d.shape[0] != 2:
        raise ValueError(f"plot_grid takes a 2-D displacement (2, H, W), got shape {d.shape}")
    h, w = d.shape[1:]
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    py, px = yy + d[0], xx + d[1]
    line = {"color": "k", "linewidth": 0.6, **line}
    for i in range(0, h, step):
        ax.plot(py[i, :], px[i, :], **line)
    for j in range(0, w, step):
        ax.plot(py[:, j], px[:, j], **line)
    ax.set_aspect("equal")
    ax.axis("off")
    return ax


def show_jacobian(det2d, ax, vmax: float = 2.0):
    """Jacobian determinant map centred on 1 (blue: shrink, red: grow); folds (det <= 0) in black."""
    import matplotlib.colors as mcolors
    d = _np(det2d)
    im = ax.imshow(d.T, origin="lower", cmap="RdBu_r",
                   norm=mcolors.TwoSlopeNorm(vcenter=1.0, vmin=0.0, vmax=vmax))
    folds = np.ma.masked_where(d.T > 0, np.ones_like(d.T))
    ax.imshow(folds, origin="lower", cmap=mcolors.ListedColormap(["black"]), vmin=0, vmax=1)
    ax.axis("off")
    return im
