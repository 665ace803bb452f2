"""Loss landscapes: 2-D contour panels and 1-D slices through them (notebook 07)."""
from __future__ import annotations

import numpy as np

__all__ = ["plot_landscape", "plot_slices_1d"]


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

