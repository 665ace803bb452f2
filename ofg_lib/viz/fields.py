"""Displacement fields: deformation grids, Jacobian maps, folds, refined fields, the cohorts' deformations
(notebooks 01, 02, 04, 06-08)."""
from __future__ import annotations

import numpy as np

from .slices import _np, mid_slices, show_slices

__all__ = ["plot_grid", "show_jacobian", "pair_panels", "method_columns", "show_folds", "plot_refined", "plot_step_map",
           "show_cohorts"]


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


def pair_panels(fixed, moving, phis: dict, index: int | None = None, axes=None):
    """Fig. 4/9-style rows, one per method: fixed, moving, warped, |warped - fixed|, grid over det J.

    `fixed`, `moving` are (1, 1, D, H, W); `phis[method]` a (1, 3, D, H, W) displacement; the slice is `index`
    along the first axis (default: the middle). 2-D pairs (1, 1, H, W) with (1, 2, H, W) fields are drawn whole.
    Folds (det J <= 0) show in black.
    """
    import matplotlib.pyplot as plt

    from ..metrics import jacobian_det
    from ..transform import warp
    flat = fixed.dim() == 4
    k = fixed.shape[2] // 2 if index is None else index
    if axes is None:
        _, axes = plt.subplots(len(phis), 5, figsize=(17, 3.5 * len(phis)), squeeze=False)
    img = (lambda t: _np(t[0, 0]).T) if flat else (lambda t: _np(t[0, 0, k]).T)  # noqa: E731
    for row, (method, phi) in enumerate(phis.items()):
        warped = warp(moving, phi)
        panels = [("fixed", img(fixed), "gray"), ("moving", img(moving), "gray"),
                  (f"{method}: warped", img(warped), "gray"),
                  (f"{method}: |warped - fixed|", img((warped - fixed).abs()), "magma")]
        for ax, (title, data, cmap) in zip(axes[row], panels):
            ax.imshow(data, origin="lower", cmap=cmap)
            ax.set_title(title)
            ax.axis("off")
        det = jacobian_det(phi)[0]
        show_jacobian(_np(det if flat else det[k]), axes[row, 4])
        plot_grid(_np(phi[0] if flat else phi[0, 1:, k]), axes[row, 4], step=3, color="k", linewidth=0.4)
        axes[row, 4].set_title(f"{method}: grid and det J")
    return axes


def method_columns(fixed, moving, phis: dict, index: int | None = None):
    """The paper's Fig. 4/9 with one column per method: warped, |warped - fixed|, deformation grid, det J.

    The first column holds the fixed and the moving image. Shapes as in `pair_panels` (3-D: the slice `index`
    along the first axis; 2-D drawn whole). Folds (det J <= 0) show in black in the last row.
    """
    import matplotlib.pyplot as plt

    from ..metrics import jacobian_det
    from ..transform import warp
    flat = fixed.dim() == 4
    k = fixed.shape[2] // 2 if index is None else index
    img = (lambda t: _np(t[0, 0]).T) if flat else (lambda t: _np(t[0, 0, k]).T)  # noqa: E731
    fig, axes = plt.subplots(4, len(phis) + 1, figsize=(2.6 * (len(phis) + 1), 10.5), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (title, t) in zip(axes[:2, 0], (("fixed", fixed), ("moving", moving))):
        ax.imshow(img(t), origin="lower", cmap="gray")
        ax.set_title(title)
    diffs = {m: img((warp(moving, phi) - fixed).abs()) for m, phi in phis.items()}
    vmax = max(float(d.max()) for d in diffs.values())        # one scale, so the methods compare
    for col, (method, phi) in enumerate(phis.items(), start=1):
        axes[0, col].imshow(img(warp(moving, phi)), origin="lower", cmap="gray")
        axes[0, col].set_title(method, fontsize=9)
        axes[1, col].imshow(diffs[method], origin="lower", cmap="magma", vmin=0, vmax=vmax)
        field = _np(phi[0] if flat else phi[0, 1:, k])
        plot_grid(field, axes[2, col], step=3, color="k", linewidth=0.5)
        det = jacobian_det(phi)[0]
        show_jacobian(_np(det if flat else det[k]), axes[3, col])
    for row, name in enumerate(("warped", "|warped - fixed|", "grid", "det J")):
        axes[row, 1].text(-0.08, 0.5, name, transform=axes[row, 1].transAxes, rotation=90, va="center", ha="right")
    return fig


def show_folds(disp, mask=None, sweep: dict | None = None, rms: float | None = None, index: int | None = None,
               step: int = 3):
    """Deformed grid and Jacobian determinant of one slice of `disp`, folds counted in the title (notebook 02).

    `disp` is (1, 3, D, H, W) in voxels; the slice is `index` along the first axis (default: the middle); folds
    (det J <= 0, in black) are counted over the whole volume, within `mask` when given. `sweep[name] = (rms
    values, fold %)` adds a third panel with those curves and this field (at `rms`) as a star.
    Returns (folded voxels, their percentage).
    """
    import matplotlib.pyplot as plt

    from ..metrics import jacobian_det
    det = jacobian_det(disp)[0]
    folded = det <= 0
    folded = folded[mask.reshape(folded.shape).bool()] if mask is not None else folded.flatten()
    count, pct = int(folded.sum()), 100 * float(folded.double().mean())
    k = det.shape[0] // 2 if index is None else index
    fig, axes = plt.subplots(1, 3 if sweep else 2, figsize=(14 if sweep else 9, 4))
    plot_grid(_np(disp[0, 1:, k]), axes[0], step=step)
    axes[0].set_title(f"deformed grid (slice {k}, axes H, W)")
    im = show_jacobian(_np(det[k]), axes[1])
    axes[1].set_title(f"det J: {count} voxels fold ({pct:.2f} %)")
    fig.colorbar(im, ax=axes[1], fraction=0.046)
    if sweep:
        for name, (values, percent) in sweep.items():
            axes[2].plot(values, percent, marker="o", label=name)
        if rms is not None:
            axes[2].plot([rms], [pct], "k*", markersize=14, label="this field")
        axes[2].set_xlabel("RMS displacement (voxels)")
        axes[2].set_ylabel("folded voxels (%)")
        axes[2].legend()
    fig.tight_layout()
    return count, pct


def plot_refined(phi, disp_true, title: str = "", axis: int = 0, grid_step: int = 3):
    """|phi|, |disp_true| and |phi - disp_true| on one scale, and the grid deformed by phi (notebook 04's widget).

    `phi`, `disp_true`: (1, 3, D, H, W), voxels; the slice is the centre one across `axis`, and the grid uses
    phi's two in-plane components, so folds show as crossing lines. Returns the figure.
    """
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.4), layout="constrained")
    vmax = float(disp_true.norm(dim=1).max())
    show_slices({"|phi|": phi.norm(dim=1, keepdim=True), "|disp_true|": disp_true.norm(dim=1, keepdim=True),
                 "|phi - disp_true|": (phi - disp_true).norm(dim=1, keepdim=True)}, axis=axis, axes=axes[:3],
                cmap="viridis", vmin=0, vmax=vmax)
    fig.colorbar(axes[2].images[0], ax=axes[2], fraction=0.046, label="voxels")
    plane = [c for c in range(3) if c != axis]
    plot_grid(np.stack([mid_slices(phi[0, c])[axis] for c in plane]), axes[3], step=grid_step)
    axes[3].set_title("grid deformed by phi (in-plane)")
    fig.suptitle(title, fontsize=10)
    return fig


def plot_step_map(moved, grad_size, index: int | None = None):
    """How far one inner step moved each voxel against the size of its energy gradient (notebook 07).

    `moved`, `grad_size`: (D, H, W) (or (H, W)) maps of |phi_opt - phi_pred| and |dE/dphi|. Two slices and a
    log-log scatter (every 7th voxel). Returns the figure.
    """
    import matplotlib.pyplot as plt
    moved, grad_size = _np(moved), _np(grad_size)
    if moved.ndim == 3:
        k = moved.shape[0] // 2 if index is None else index
        maps = (moved[k], grad_size[k])
    else:
        maps = (moved, grad_size)
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for ax, (title, im) in zip(axes[:2], [("|phi_opt - phi_pred| after one Adam step", maps[0]),
                                          ("|dE/dphi| at phi_pred (log10)", np.log10(np.maximum(maps[1], 1e-12)))]):
        ax.imshow(im.T, origin="lower", cmap="magma")
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    axes[2].loglog(grad_size.flatten()[::7], moved.flatten()[::7], ",", alpha=0.4)
    axes[2].set_xlabel("|dE/dphi| per voxel")
    axes[2].set_ylabel("|phi_opt - phi_pred| per voxel")
    fig.tight_layout()
    return fig


def show_cohorts(examples: dict, grid_step: int = 6):
    """One column per cohort: moving, fixed (labels over them) and the true deformation's grid on the fixed image.

    `examples`: {name: (item, title)} with an embedded item (moving, fixed, moving_seg, fixed_seg, disp_true;
    2-D or 3-D: the middle slice along the first axis is shown).
    """
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(3, len(examples), figsize=(2.6 * len(examples), 7.4), squeeze=False)
    for col, (name, (item, title)) in enumerate(examples.items()):
        for row, (img, seg, label) in enumerate([(item["moving"], item["moving_seg"], "moving"),
                                                 (item["fixed"], item["fixed_seg"], "fixed")]):
            ax = axes[row, col]
            ax.imshow(mid_slices(img)[0].T, origin="lower", cmap="gray", vmin=0, vmax=1)
            lab = mid_slices(seg)[0].T
            ax.contour(lab, levels=np.arange(0.5, lab.max() + 1), colors="tab:orange", linewidths=0.4)
            ax.set_title(f"{name}: {label}" if row == 0 else label, fontsize=9)
            ax.axis("off")
        ax = axes[2, col]
        ax.imshow(mid_slices(item["fixed"])[0].T, origin="lower", cmap="gray", vmin=0, vmax=1, alpha=0.5)
        disp = _np(item["disp_true"])
        if disp.ndim == 4:      # a 3-D field: the in-plane components of the middle slice along the first axis
            disp = disp[1:, disp.shape[1] // 2]
        plot_grid(disp, ax, step=grid_step, linewidth=0.5)
        ax.set_xlim(0, disp.shape[1] - 1)
        ax.set_ylim(0, disp.shape[2] - 1)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    return fig
