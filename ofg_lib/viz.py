"""Plots shared by the notebooks: slice panels, deformation grids, Jacobian maps, loss landscapes."""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["mid_slices", "show_slices", "show_overlay", "plot_grid", "show_jacobian", "plot_landscape", "plot_slices_1d",
           "interactive", "dice_boxplot", "pair_panels", "show_folds", "plot_two_starts", "plot_sweeps",
           "plot_refined"]


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


def plot_landscape(coords, surfaces: dict, axes=None, levels: int = 15, title: str = "", relative: bool = True):
    """Contour plots of 2-D landscapes (one panel per name), centred on the trained weights (notebook 07).

    `coords` are the two 1-D coordinate arrays; with `relative`, each surface is shown as L - L(centre), so
    panels of different losses share a zero at the trained weights. Returns the axes.
    """
    import matplotlib.pyplot as plt
    if axes is None:
        _, axes = plt.subplots(1, len(surfaces), figsize=(4 * len(surfaces), 3.6), squeeze=False)
        axes = axes[0]
    a, b = (np.asarray(c) for c in coords)
    for ax, (name, s) in zip(axes, surfaces.items()):
        s = np.asarray(s, dtype=np.float64)
        z = s - s[len(a) // 2, len(b) // 2] if relative else s
        cs = ax.contourf(a, b, z.T, levels=levels, cmap="viridis")
        ax.contour(a, b, z.T, levels=levels, colors="k", linewidths=0.3)
        ax.plot(0, 0, "r+", markersize=10)
        ax.set_title(f"{title}{name}", fontsize=10)
        ax.set_xlabel("direction 1")
        ax.set_ylabel("direction 2")
        plt.colorbar(cs, ax=ax, fraction=0.046)
    return axes


def plot_slices_1d(coords, curves: dict, ax, relative: bool = True, ylabel: str = "loss - loss at the minimum"):
    """1-D slices through trained weights: one line per name (`curves[name]` has one value per coordinate)."""
    for name, y in curves.items():
        y = np.asarray(y, dtype=np.float64)
        ax.plot(coords, y - y[len(y) // 2] if relative else y, marker=".", label=name)
    ax.axvline(0, color="k", linewidth=0.5)
    ax.set_xlabel("distance along direction 1 (filter-normalised)")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    return ax


def interactive(fn, **controls):
    """Draw `fn(**values)` at the controls' current values, then (in a live notebook) the controls themselves.

    The first figure is an ordinary cell output, so papermill, nbval and the HTML course keep it. In JupyterLab
    the controls follow (ipywidgets sliders, toggles, dropdowns) and redraw the figure below them on every change.
    Under `make reproduce`, `make test` and `make html` (OFG_STATIC or CI set) only the static figure is drawn.
    Returns the widget box, or None when static.
    """
    import os

    from IPython.display import display
    fn(**{k: c.value for k, c in controls.items()})
    if os.environ.get("OFG_STATIC") or os.environ.get("CI"):
        return None
    import ipywidgets as widgets
    out = widgets.Output()

    def redraw(change=None):
        with out:
            out.clear_output(wait=True)
            fn(**{k: c.value for k, c in controls.items()})

    for c in controls.values():
        c.observe(redraw, names="value")
    box = widgets.VBox([widgets.HBox(list(controls.values())), out])
    display(box)
    return box


# --- notebooks 06 and 07
def dice_boxplot(per_label: dict, names, ax=None, colours=("tab:blue", "tab:orange", "tab:green", "tab:red")):
    """Per-label Dice boxes, one colour per method (the paper's Fig. 8); `per_label[method]` is (pairs, labels)."""
    import matplotlib.pyplot as plt
    if ax is None:
        _, ax = plt.subplots(figsize=(max(8, len(names) * 0.9), 4))
    width = 0.8 / len(per_label)
    for k, ((method, values), colour) in enumerate(zip(per_label.items(), colours)):
        data = [col[~np.isnan(col)] for col in np.asarray(values).T]
        pos = np.arange(len(names)) + (k - (len(per_label) - 1) / 2) * width
        bp = ax.boxplot(data, positions=pos, widths=width * 0.9, patch_artist=True, showfliers=False)
        for patch in bp["boxes"]:
            patch.set_facecolor(colour)
        ax.plot([], [], color=colour, linewidth=8, label=method)
    ax.set_xticks(np.arange(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("Dice")
    ax.legend()
    return ax


def pair_panels(fixed, moving, phis: dict, index: int | None = None, axes=None):
    """Fig. 4/9-style rows, one per method: fixed, moving, warped, |warped - fixed|, grid over det J.

    `fixed`, `moving` are (1, 1, D, H, W); `phis[method]` a (1, 3, D, H, W) displacement; the slice is `index`
    along the first axis (default: the middle). Folds (det J <= 0) show in black.
    """
    import matplotlib.pyplot as plt

    from .metrics import jacobian_det
    from .transform import warp
    k = fixed.shape[2] // 2 if index is None else index
    if axes is None:
        _, axes = plt.subplots(len(phis), 5, figsize=(17, 3.5 * len(phis)), squeeze=False)
    img = lambda t: _np(t[0, 0, k]).T  # noqa: E731
    for row, (method, phi) in enumerate(phis.items()):
        warped = warp(moving, phi)
        panels = [("fixed", img(fixed), "gray"), ("moving", img(moving), "gray"),
                  (f"{method}: warped", img(warped), "gray"),
                  (f"{method}: |warped - fixed|", img((warped - fixed).abs()), "magma")]
        for ax, (title, data, cmap) in zip(axes[row], panels):
            ax.imshow(data, origin="lower", cmap=cmap)
            ax.set_title(title)
            ax.axis("off")
        show_jacobian(_np(jacobian_det(phi)[0, k]), axes[row, 4])
        plot_grid(_np(phi[0, 1:, k]), axes[row, 4], step=3, color="k", linewidth=0.4)
        axes[row, 4].set_title(f"{method}: grid and det J")
    return axes


# --- notebooks 02 and 03
def show_folds(disp, mask=None, sweep: dict | None = None, rms: float | None = None, index: int | None = None,
               step: int = 3):
    """Deformed grid and Jacobian determinant of one slice of `disp`, folds counted in the title (notebook 02).

    `disp` is (1, 3, D, H, W) in voxels; the slice is `index` along the first axis (default: the middle); folds
    (det J <= 0, in black) are counted over the whole volume, within `mask` when given. `sweep[name] = (rms
    values, fold %)` adds a third panel with those curves and this field (at `rms`) as a star.
    Returns (folded voxels, their percentage).
    """
    import matplotlib.pyplot as plt

    from .metrics import jacobian_det
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




# --- notebook 04
def plot_two_starts(curves: dict, errors: dict, vmax: float, axis: int = 0):
    """Energy and EPE per step for each start, then slices of the error maps on one scale (notebook 04).

    `curves[name]` is a (steps + 1, 2) array of (energy, EPE) before each step and after the last; `errors[name]`
    a volume |phi - disp_true| (B, 1, D, H, W). Returns the figure.
    """
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2 + len(errors), figsize=(3.4 * (2 + len(errors)), 3.3), layout="constrained")
    for name, c in curves.items():
        c = np.asarray(c)
        axes[0].plot(c[:, 0], "o-", ms=3, label=name)
        axes[1].plot(c[:, 1], "o-", ms=3, label=name)
    for ax, label in zip(axes[:2], ("energy", "EPE to the truth (voxels)")):
        ax.set_xlabel("step")
        ax.set_ylabel(label)
    axes[1].legend(fontsize=7)
    show_slices({f"|error|, {n}": e for n, e in errors.items()}, axis=axis, axes=axes[2:], cmap="magma",
                vmin=0, vmax=vmax)
    fig.colorbar(axes[-1].images[0], ax=axes[-1], fraction=0.046, label="voxels")
    return fig


def plot_sweeps(sweeps: dict, keys=("EPE", "folds %")):
    """One panel per swept parameter: keys[0] (left axis) and keys[1] (right axis) at each value (notebook 04).

    `sweeps[name]` maps each value of the parameter to a dict of metrics. Returns the figure.
    """
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(sweeps), figsize=(3.8 * len(sweeps), 3), layout="constrained", squeeze=False)
    for ax, (name, rows) in zip(axes[0], sweeps.items()):
        x = np.arange(len(rows))
        ax.plot(x, [r[keys[0]] for r in rows.values()], "o-", color="C0")
        ax.set_ylabel(keys[0], color="C0")
        twin = ax.twinx()
        twin.plot(x, [r[keys[1]] for r in rows.values()], "s--", color="C3")
        twin.set_ylabel(keys[1], color="C3")
        ax.set_xticks(x, [f"{v:g}" for v in rows])
        ax.set_xlabel(name)
    return fig


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
