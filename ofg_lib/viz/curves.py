"""Curves and tables as plots: training and learning curves, budgets, sweeps, Dice per label (notebooks 04-09)."""
from __future__ import annotations

import numpy as np

from .slices import show_slices

__all__ = ["dice_boxplot", "plot_two_starts", "plot_sweeps", "plot_curves", "plot_budget", "plot_training"]


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

