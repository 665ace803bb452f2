"""Evaluating trained runs: per-label Dice, folds, SDlogJ, EPE, inference time (notebook 06).

`load_run(run_dir)` is the one way a trained run is read (model, config, history); `evaluate(model, dataset)` is
the one way a model is scored (the trainer's validation calls it too); `field_maps(disp, pair)` computes what the
figures of one registration draw (`ofg_lib.viz` only draws).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import _checks, models
from .losses import grad_l2, lncc
from .metrics import count_folds, dice, epe, fold_fraction, jacobian_det, sdlogj, time_ms
from .files import load_checkpoint
from .progress import progress_bar
from .runs import RunFolder, trained_size
from .transform import warp

__all__ = ["load_model", "load_teacher", "load_run", "evaluate", "field_maps", "score_run", "SCORED"]


def load_model(path, device="cpu"):
    """The model of a checkpoint file, in eval mode, and the run's config (read with weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found (train a run first, notebook 05)")
    return _model_of(load_checkpoint(path), device)


def load_teacher(path, img_size, device="cpu"):
    """A trained model as a frozen teacher (self-training, Fig. 5): eval mode, no gradients; its trained size
    must be `img_size`, the size of the run it teaches."""
    state = load_checkpoint(path, "teacher checkpoint")
    if trained_size(state) != tuple(img_size):
        raise ValueError(f"{path}: the teacher was trained at {trained_size(state)}, this run's data are "
                         f"{tuple(img_size)}")
    teacher, _ = _model_of(state, device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _model_of(state, device):
    cfg = state["config"]
    model = models.build(cfg["model"], trained_size(state))  # the real datasets set their size
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg


def load_run(run_dir, device="cpu", which: str = "last"):
    """(model, config, history) of a run folder: `which="last"` reads checkpoint.pt, `"best"` best.pt.

    The history is the last checkpoint's; a folder holding best.pt only gives the history up to the best epoch.

    The config is the run's stored config (a dict of TrainConfig keys); build its data with
    `ofg_lib.data.from_config(config, split)`. The history is the per-epoch log (a list of dicts).
    """
    _checks.one_of("which", which, CHECKPOINTS)
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run folder (train a run first, notebook 05)")
    folder = RunFolder(run_dir)
    if which == "best" and not folder.holds_run():
        best = load_checkpoint(folder.checkpoint("best"), "best checkpoint")  # a folder with best.pt only (copied out)
        return (*_model_of(best, device), best["history"])
    last = load_checkpoint(folder.checkpoint("last"))          # read once: the history lives only here
    model, cfg = _model_of(last if which == "last" else load_checkpoint(folder.checkpoint(which)), device)
    return model, cfg, last["history"]


@torch.no_grad()
def evaluate(model, dataset, n: int | None = None, device="cpu", time_repeats: int = 3, amp: bool = False,
             absent: str = "skip", progress: str | None = None) -> dict:
    """Metrics of `model` on the first `n` pairs of `dataset` (the trainer's validation uses this too).

    `dice`: per pair, the mean over the scored labels, then the mean over pairs (`dice_std` over pairs), as the
    published evaluation averages; `absent` is the convention for labels absent from both maps (`metrics.dice`:
    "skip" leaves them out, "zero" is the published IXI/OASIS code, "one" its LPBA40 code); `dice_per_label` is
    (pairs, labels), `dice_per_pair` the per-pair means. Folds, two counts: `fold_fraction` over all voxels (as the published Table 1 code) and
    `fold_fraction_brain` over the fixed image's labelled voxels (as the paper's text). A non-finite prediction
    scores NaN in every metric. `lncc` and `grad_l2` are the two terms of the unsupervised loss on these pairs (the
    paper's Table 2 compares models by this "convergence loss"). `time_repeats=0` skips the inference timing;
    `amp` runs the network under bf16 autocast (GPU). `progress`: a label for a progress bar over the pairs
    (`ofg_lib.progress`: quiet under CI), e.g. for a classical method that takes seconds per pair.
    """
    n = len(dataset) if n is None else min(n, len(dataset))
    dev = torch.device(device)
    per_label, folds, folds_brain, logj, epes, sims, regs = [], [], [], [], [], [], []
    for i in progress_bar(range(n), disable=progress is None, desc=progress, leave=False):
        item = {k: v[None].to(dev) for k, v in dataset[i].items() if k != "id"}
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            phi = models.predict(model, item["moving"], item["fixed"])
        phi = phi.float()
        if bool(torch.isfinite(phi).all()):
            warped_seg = warp(item["moving_seg"], phi, mode="nearest")
            per_label.append(dice(warped_seg, item["fixed_seg"], dataset.labels, absent).cpu().numpy())
            sims.append(float(lncc(item["fixed"], warp(item["moving"], phi), validate=False)))
            regs.append(float(grad_l2(phi)))
        else:
            per_label.append(np.full(len(dataset.labels), np.nan))
            sims.append(float("nan"))
            regs.append(float("nan"))
        mask = item["fixed_seg"][:, 0] > 0
        folds.append(fold_fraction(phi))
        folds_brain.append(fold_fraction(phi, mask))
        logj.append(sdlogj(phi))
        if "disp_true" in item:
            epes.append(epe(phi, item["disp_true"], mask))
    ms = None
    if time_repeats:
        x = models.pair_input(item["moving"], item["fixed"])
        ms = time_ms(lambda: model(x), dev, repeats=time_repeats)
    per_label = np.stack(per_label)
    scored = ~np.all(np.isnan(per_label), axis=1)
    pair_dice = np.full(len(per_label), np.nan)
    pair_dice[scored] = np.nanmean(per_label[scored], axis=1)
    return {"dice_per_label": per_label, "dice_per_pair": pair_dice, "dice": float(pair_dice.mean()),
            "dice_std": float(pair_dice.std()),
            "fold_fraction": float(np.mean(folds)), "fold_fraction_brain": float(np.mean(folds_brain)),
            "sdlogj": float(np.mean(logj)), "epe": float(np.mean(epes)) if epes else None, "inference_ms": ms,
            "lncc": float(np.mean(sims)), "grad_l2": float(np.mean(regs)),
            "labels": list(dataset.labels), "label_names": list(dataset.label_names)}


@torch.no_grad()
def field_maps(disp, pair: dict | None = None, mask=None) -> dict:
    """What the figures of one registration draw, computed once (notebooks 02 and 06; `ofg_lib.viz` draws them).

    `disp` is a (1, 3, D, H, W) displacement in voxels (or (1, 2, H, W)). Always: `disp`, `det` (its Jacobian
    determinant, (1, D, H, W)), `fold_count` and `fold_percent` (voxels with det <= 0, within `mask` when given,
    else over all voxels). With a `pair` (a dataset item with a batch axis: `moving`, `fixed`, optionally
    `moving_seg`), also `fixed`, `moving`, `warped`, `difference` (|warped - fixed|) and `warped_seg` (nearest
    neighbour).
    """
    det = jacobian_det(disp)
    count, share = count_folds(det, mask)
    maps = {"disp": disp, "det": det, "fold_count": count, "fold_percent": 100 * share}
    if pair is not None:
        warped = warp(pair["moving"], disp)
        maps.update(fixed=pair["fixed"], moving=pair["moving"], warped=warped,
                    difference=(warped - pair["fixed"]).abs())
        if "moving_seg" in pair:
            maps["warped_seg"] = warp(pair["moving_seg"], disp, mode="nearest")
    return maps


CHECKPOINTS = ("last", "best")   # a run folder's checkpoints (`runs.RunFolder.checkpoint`)
SCORED = ("dice", "dice_std", "fold_fraction", "fold_fraction_brain", "sdlogj", "epe")


def score_run(run_dir, split: str = "test", n: int | None = None, which: str = "best", device="cpu") -> dict:
    """A run's `which` checkpoint scored on `split` of its own data (the headline score of the study).

    The best checkpoint is chosen on the validation pairs during training; scoring it on the test split keeps
    selection and reporting apart, as the paper does. The result (the metrics in SCORED, the epoch and step of
    the checkpoint, and the pairs scored) is cached beside the run as `score-<which>-<split>-<n>.json`, keyed
    by the checkpoint's step, epoch and config, so a resumed or retrained run is scored again.
    """
    import json

    from .data import from_config
    from .files import write_json
    run_dir = Path(run_dir)
    _checks.one_of("which", which, CHECKPOINTS)
    state = load_checkpoint(RunFolder(run_dir).checkpoint(which), f"{which} checkpoint")
    cache = RunFolder(run_dir).score_cache(which, split, n)
    # the checkpoint's identity: its step and epoch, and the config it was trained with (a folder retrained with
    # --overwrite under another config of the same length is scored again)
    key = {"step": state["step"], "epoch": state["epoch"],
           "config": json.dumps(state["config"], sort_keys=True, default=str)}
    if cache.exists():
        cached = json.loads(cache.read_text())
        if all(cached.get(k) == v for k, v in key.items()):
            return cached
    model, cfg = _model_of(state, device)
    data = from_config(cfg, split)
    r = evaluate(model, data, n, device, time_repeats=0, absent=cfg.get("dice_absent", "skip"))
    out = {**{k: r[k] for k in SCORED}, "split": split, "pairs": len(r["dice_per_pair"]), "which": which,
           **key, "dice_per_pair": r["dice_per_pair"].tolist()}
    write_json(cache, out)
    return out
