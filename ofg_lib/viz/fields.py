"""Displacement fields: deformation grids, Jacobian maps, folds, refined fields, the cohorts' deformations
(notebooks 01, 02, 04, 06-08). They draw what `ofg_lib.evaluate.field_maps` and the notebooks computed: nothing
here warps, differentiates a field or counts folds."""
from __future__ import annotations

import numpy as np

from .slices import _np, mid_slices, show_slices

__all__ = ["plot_grid", "show_jacobian", "show_registration", "pair_panels", "method_columns", "show_folds",
           "plot_refined", "plot_step_map", "show_cohorts"]


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


def _plane(volume, k):
    """The image of channel 0 of a (1, C, D, H, W) volume at slice `k` along D (a 2-D (1, C, H, W) whole), as
    imshow draws it (transposed, with origin="lower")."""
    return _np(volume[0, 0] if volume.dim() == 4 else volume[0, 0, k]).T


def _slice_index(maps: dict, index: int | None) -> int:
    return maps["det"].shape[1] // 2 if index is None else index


def show_registration(maps: dict, axes, index: int | None = None, diff_max: float | None = None,
                      grid_width: float = 0.5):
    """One registration's panels in four axes: warped, |warped - fixed|, deformed grid, det J (folds in black).

    `maps` is `ofg_lib.evaluate.field_maps(disp, pair)`; a 3-D pair is shown at slice `index` along the first axis
    (default: the middle), a 2-D pair whole. The grid and det J may share an axis (the grid is drawn over it);
    `diff_max` puts the difference on the scale 0..diff_max (to compare methods). Returns det J's image.
    """
    k = _slice_index(maps, index)
    flat = maps["disp"].dim() == 4
    ax_warped, ax_diff, ax_grid, ax_det = axes
    ax_warped.imshow(_plane(maps["warped"], k), origin="lower", cmap="gray")
    scale = {} if diff_max is None else {"vmin": 0, "vmax": diff_max}
    ax_diff.imshow(_plane(maps["difference"], k), origin="lower", cmap="magma", **scale)
    for ax in (ax_warped, ax_diff):
        ax.axis("off")
    im = show_jacobian(_np(maps["det"][0] if flat else maps["det"][0, k]), ax_det)
    disp = maps["disp"]
    plot_grid(_np(disp[0] if flat else disp[0, 1:, k]), ax_grid, step=3, color="k", linewidth=grid_width)
    return im


def pair_panels(maps: dict, index: int | None = None, axes=None):
    """Fig. 4/9-style rows, one per method: fixed, moving, warped, |warped - fixed|, grid over det J.

    `maps[method]` is `ofg_lib.evaluate.field_maps(disp, pair)` of that method's displacement; a 3-D pair is shown
    at slice `index` along the first axis (default: the middle), a 2-D pair whole. Folds (det J <= 0) show in
    black.
    """
    import matplotlib.pyplot as plt
    if axes is None:
        _, axes = plt.subplots(len(maps), 5, figsize=(17, 3.5 * len(maps)), squeeze=False)
    for row, (method, m) in enumerate(maps.items()):
        k = _slice_index(m, index)
        for ax, name in zip(axes[row, :2], ("fixed", "moving")):
            ax.imshow(_plane(m[name], k), origin="lower", cmap="gray")
            ax.set_title(name)
            ax.axis("off")
        show_registration(m, [*axes[row, 2:], axes[row, 4]], index, grid_width=0.4)
        for ax, title in zip(axes[row, 2:], ("warped", "|warped - fixed|", "grid and det J")):
            ax.set_title(f"{method}: {title}")
    return axes


def method_columns(maps: dict, index: int | None = None):
    """The paper's Fig. 4/9 with one column per method: warped, |warped - fixed|, deformation grid, det J.

    `maps[method]` is `ofg_lib.evaluate.field_maps(disp, pair)`, every method on the same pair; the first column
    holds its fixed and moving image. Slices as in `pair_panels`; the differences share one scale, so the methods
    compare. Folds (det J <= 0) show in black in the last row. Returns the figure.
    """
    import matplotlib.pyplot as plt
    first = next(iter(maps.values()))
    k = _slice_index(first, index)
    fig, axes = plt.subplots(4, len(maps) + 1, figsize=(2.6 * (len(maps) + 1), 10.5), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, name in zip(axes[:2, 0], ("fixed", "moving")):
        ax.imshow(_plane(first[name], k), origin="lower", cmap="gray")
        ax.set_title(name)
    diff_max = max(float(_plane(m["difference"], k).max()) for m in maps.values())
    for col, (method, m) in enumerate(maps.items(), start=1):
        show_registration(m, axes[:, col], index, diff_max=diff_max, grid_width=0.5)
        axes[0, col].set_title(method, fontsize=9)
    for row, name in enumerate(("warped", "|warped - fixed|", "grid", "det J")):
        axes[row, 1].text(-0.08, 0.5, name, transform=axes[row, 1].transAxes, rotation=90, va="center", ha="right")
    return fig


def show_folds(maps: dict, sweep: dict | None = None, rms: float | None = None, index: int | None = None,
               step: int = 3):
    """Deformed grid and Jacobian determinant of one slice of a 3-D field, its folds counted in the title
    (notebook 02).

    `maps` is `ofg_lib.evaluate.field_maps(disp, mask=...)` (the count is over the whole volume, within the mask
    it was given); the slice is `index` along the first axis (default: the middle). Folds (det J <= 0) show in
    black. `sweep[name] = (rms values, fold %)` adds a third panel with those curves and this field (at `rms`) as a
    star. Returns the figure.
    """
    import matplotlib.pyplot as plt
    det, disp = maps["det"][0], maps["disp"]
    count, pct = maps["fold_count"], maps["fold_percent"]
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
    return fig


def plot_refined(phi, magnitudes: dict, vmax: float, title: str = "", axis: int = 0, grid_step: int = 3):
    """Three magnitude maps on one scale 0..vmax and the grid deformed by phi (notebook 04's widget).

    `magnitudes[name]` is a (1, 1, D, H, W) map in voxels (notebook 04: |phi|, |disp_true|, |phi - disp_true|);
    `phi` (1, 3, D, H, W), voxels. The slice is the centre one across `axis`, and the grid uses phi's two
    in-plane components, so folds show as crossing lines. Returns the figure.
    """
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(magnitudes) + 1, figsize=(14, 3.4), layout="constrained")
    show_slices(magnitudes, axis=axis, axes=axes[:-1], cmap="viridis", vmin=0, vmax=vmax)
    fig.colorbar(axes[-2].images[0], ax=axes[-2], fraction=0.046, label="voxels")
    plane = [c for c in range(3) if c != axis]
    plot_grid(np.stack([mid_slices(phi[0, c])[axis] for c in plane]), axes[-1], step=grid_step)
    axes[-1].set_title("grid deformed by phi (in-plane)")
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
