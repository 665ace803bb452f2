"""Plots shared by the notebooks: slice panels, deformation grids, Jacobian maps, loss landscapes."""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["mid_slices", "show_slices", "show_overlay", "plot_grid", "show_jacobian", "plot_landscape", "plot_slices_1d",
           "interactive", "dice_boxplot", "pair_panels", "show_folds", "plot_two_starts", "plot_sweeps",
           "plot_refined", "show_cohorts", "plot_curves", "plot_budget", "plot_training", "plot_step_map"]


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
    """`fn(**values)` drawn at the controls' current values: one figure, static or live.

    Static (OFG_STATIC or CI set: `make reproduce`, `make test`, `make html`, where no widget frontend renders
    widgets): the figure is an ordinary cell output, which papermill, nbval and the HTML course keep. Live
    (anything else, i.e. a kernel started by JupyterLab): the controls, then the figure inside an ipywidgets
    Output below them, redrawn in place on every change, so there is only ever one figure and it always matches
    the controls. Labels are shown whole (`description_width: initial`) and the controls wrap. Returns the widget
    box, or None when static.
    """
    import os

    from IPython.display import display
    values = lambda: {k: c.value for k, c in controls.items()}  # noqa: E731
    if os.environ.get("OFG_STATIC") or os.environ.get("CI"):
        fn(**values())
        return None
    import ipywidgets as widgets
    out = widgets.Output()

    def redraw(change=None):
        with out:
            out.clear_output(wait=True)
            fn(**values())

    for c in controls.values():
        if hasattr(c, "style") and hasattr(c.style, "description_width"):
            c.style.description_width = "initial"
        c.observe(redraw, names="value")
    box = widgets.VBox([widgets.HBox(list(controls.values()), layout=widgets.Layout(flex_flow="row wrap")), out])
    display(box)
    redraw()
    print("(live figure: if a reopened notebook shows 'Error displaying widget: model not found', run this cell "
          "again; widget state is not saved with the notebook)")
    return box


# --- notebooks 06 and 07
def dice_boxplot(per_label: dict, names, ax=None, colours=None):
    """Per-label Dice boxes, one colour per method (the paper's Fig. 8); `per_label[method]` is (pairs, labels)."""
    import matplotlib.pyplot as plt
    colours = colours or [plt.get_cmap("tab10")(i) for i in range(10)]
    if ax is None:
        _, ax = plt.subplots(figsize=(max(8, len(names) * 0.9), 4))
    width = 0.8 / len(per_label)
    for k, (method, values) in enumerate(per_label.items()):
        colour = colours[k % len(colours)]
        data = [col[~np.isnan(col)] for col in np.asarray(values).T]
        pos = np.arange(len(names)) + (k - (len(per_label) - 1) / 2) * width
        bp = ax.boxplot(data, positions=pos, widths=width * 0.9, patch_artist=True, showfliers=False)
        for patch in bp["boxes"]:
            patch.set_facecolor(colour)
        ax.plot([], [], color=colour, linewidth=8, label=method)
    ax.set_xticks(np.arange(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("Dice")
    ax.legend(ncol=min(len(per_label), 6), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    return ax


def pair_panels(fixed, moving, phis: dict, index: int | None = None, axes=None):
    """Fig. 4/9-style rows, one per method: fixed, moving, warped, |warped - fixed|, grid over det J.

    `fixed`, `moving` are (1, 1, D, H, W); `phis[method]` a (1, 3, D, H, W) displacement; the slice is `index`
    along the first axis (default: the middle). 2-D pairs (1, 1, H, W) with (1, 2, H, W) fields are drawn whole.
    Folds (det J <= 0) show in black.
    """
    import matplotlib.pyplot as plt

    from .metrics import jacobian_det
    from .transform import warp
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

    from .metrics import jacobian_det
    from .transform import warp
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


def plot_curves(curves: dict, ax=None, title: str = "", ylabel: str = "validation Dice"):
    """Learning curves: {label: (steps, mean, std)} as lines with a shaded band of one std over seeds."""
    import matplotlib.pyplot as plt
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 3.2))
    for label, (steps, mean, std) in curves.items():
        line, = ax.plot(steps, mean, label=label, linestyle="--" if "equal time" in label else "-")
        ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return ax


def plot_budget(budget: dict, steps_per_epoch: int, ax=None):
    """Final Dice (mean of the last validations, mean over seeds) against the training budget, per strategy."""
    import matplotlib.pyplot as plt
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 3.2))
    for strategy, b in budget.items():
        if b.get("epochs"):
            ax.plot(np.array(b["epochs"]) * steps_per_epoch, b["dice"], "o-", label=strategy)
    ax.set_xscale("log")
    ax.set_xlabel("training steps (each run its own poly schedule)")
    ax.set_ylabel("validation Dice")
    ax.legend(fontsize=8)
    return ax


# --- notebooks 05 and 07
def plot_training(histories: dict, colours=None):
    """Per-epoch curves of runs: validation Dice, folds, and for OFG runs the MSE term and optimizer energy.

    `histories[(strategy, seed)]` is a run's per-epoch log (list of dicts, `load_run(...)[2]`). One colour per
    strategy, one line per seed. Returns the figure (notebook 05, section 2).
    """
    import matplotlib.pyplot as plt
    colours = colours or {"unsupervised": "tab:blue", "ofg": "tab:orange"}
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    labelled = set()
    for (strategy, seed), h in histories.items():
        colour = colours.get(strategy, "tab:green")
        first = strategy not in labelled
        labelled.add(strategy)
        label = strategy if first else None
        ep = [r["epoch"] for r in h]
        axes[0].plot(ep, [r["val_dice"] for r in h], color=colour, label=label, alpha=0.8)
        axes[1].plot(ep, [100 * r["fold_fraction_brain"] for r in h], color=colour, label=label, alpha=0.8)
        if "mse" in h[0]:
            axes[2].plot(ep, [r["mse"] for r in h], color=colour, alpha=0.8)
        if "energy_before" in h[0]:
            axes[3].plot(ep, [r["energy_before"] for r in h], color="tab:gray", alpha=0.8,
                         label="before refinement" if first else None)
            axes[3].plot(ep, [r["energy_after"] for r in h], color=colour, alpha=0.8,
                         label="after refinement" if first else None)
    for ax, title in zip(axes, ["validation Dice", "folds (% of brain voxels)", "OFG: MSE(phi_pred, phi_opt)",
                                "OFG: optimizer energy"]):
        ax.set_title(title)
        ax.set_xlabel("epoch")
    axes[0].legend()
    axes[3].legend()
    fig.tight_layout()
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
