"""The schedules of a run: the poly decay of the network lr and the inner lr, and the plateau rule that may end
a run early (notebooks 05 and 08). Small and pure, as nanoGPT's `get_lr(it)`: a function of the epoch (or of the
history) alone, so a resumed run follows the schedule an uninterrupted one did.
"""
from __future__ import annotations

import numpy as np

__all__ = ["poly", "learning_rates", "plateaued", "PLATEAU_WINDOW"]


def poly(base: float, epoch: int, epochs: int) -> float:
    """The published poly decay: base x (1 - epoch / epochs)^0.9 (rounded to 8 decimals, as the logs show it);
    `epochs` is the schedule's horizon (`TrainConfig.horizon`: `schedule_epochs`, else `epochs`)."""
    return round(base * (1 - epoch / epochs) ** 0.9, 8)


def learning_rates(cfg, epoch: int) -> tuple[float, float]:
    """The network's and the instance optimizer's lr for an epoch: `poly` or constant, as the config says."""
    return tuple(poly(base, epoch, cfg.horizon) if kind == "poly" else base
                 for base, kind in ((cfg.lr, cfg.lr_schedule), (cfg.inner_lr, cfg.inner_lr_schedule)))


PLATEAU_WINDOW = 5     # validations in the moving average of the plateau rule


def plateaued(history, tol: float, min_steps: int = 0, window: int = PLATEAU_WINDOW) -> bool:
    """The plateau rule: the validation Dice, smoothed by a moving average over `window` validations, gained
    less than `tol` over the last third of the run (in steps), and the run has taken at least `min_steps` steps.

    A rule of the history alone, so a resumed run stops where an uninterrupted one did.
    """
    rows = [r for r in history if r.get("val_dice") is not None]
    if not rows or rows[-1]["step"] < min_steps or len(rows) < 2 * window:
        return False
    dice = np.array([r["val_dice"] for r in rows], dtype=float)
    smooth = np.convolve(dice, np.ones(window) / window, mode="valid")     # smooth[i] ends at rows[i + window - 1]
    steps = np.array([r["step"] for r in rows])[window - 1:]
    then = int(np.searchsorted(steps, steps[-1] * 2 / 3, side="right")) - 1
    return then >= 0 and then < len(smooth) - 1 and float(smooth[-1] - smooth[then]) < tol
