"""Evaluating trained checkpoints: per-label Dice, folds, SDlogJ, EPE, inference time (notebook 06)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import models
from .metrics import dice, epe, fold_fraction, sdlogj, time_ms
from .transform import warp

__all__ = ["load_model", "evaluate"]


def load_model(path, device="cpu"):
    """The model of a training checkpoint, in eval mode, and the run's config."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found (train a run first, notebook 05)")
    state = torch.load(path, map_location="cpu", weights_only=False)
    cfg = state["config"]
    model = models.build(cfg["model"], state.get("img_size", cfg["img_size"]))  # the real datasets set their size
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg


@torch.no_grad()
def evaluate(model, dataset, n: int | None = None, device="cpu", time_repeats: int = 3, amp: bool = False) -> dict:
    """Metrics of `model` on the first `n` pairs of `dataset` (the trainer's validation uses this too).

    `dice`: per pair, the mean over the scored labels (labels absent from both maps skipped), then the mean over
    pairs (`dice_std` over pairs), as the published evaluation averages; `dice_per_label` is (pairs, labels).
    Folds are counted in the fixed image's labelled voxels. `time_repeats=0` skips the inference timing;
    `amp` runs the network under bf16 autocast (GPU).
    """
    n = len(dataset) if n is None else min(n, len(dataset))
    dev = torch.device(device)
    per_label, folds, logj, epes = [], [], [], []
    for i in range(n):
        item = {k: v[None].to(dev) for k, v in dataset[i].items() if k != "id"}
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            phi = model(torch.cat([item["moving"], item["fixed"]], 1))
        phi = phi.float()
        warped_seg = warp(item["moving_seg"], phi, mode="nearest")
        per_label.append(dice(warped_seg, item["fixed_seg"], dataset.labels).cpu().numpy())
        mask = item["fixed_seg"][:, 0] > 0
        folds.append(fold_fraction(phi, mask))
        logj.append(sdlogj(phi))
        if "disp_true" in item:
            epes.append(epe(phi, item["disp_true"], mask))
    ms = None
    if time_repeats:
        x = torch.cat([item["moving"], item["fixed"]], 1)
        ms = time_ms(lambda: model(x), dev, repeats=time_repeats)
    per_label = np.stack(per_label)
    pair_dice = np.nanmean(per_label, axis=1)
    return {"dice_per_label": per_label, "dice": float(pair_dice.mean()), "dice_std": float(pair_dice.std()),
            "fold_fraction": float(np.mean(folds)), "sdlogj": float(np.mean(logj)),
            "epe": float(np.mean(epes)) if epes else None, "inference_ms": ms,
            "labels": list(dataset.labels), "label_names": list(dataset.label_names)}
