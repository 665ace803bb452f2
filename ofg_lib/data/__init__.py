"""Data: the embedded MNI152 cohort and the IXI / OASIS / LPBA40 readers (notebook 01).

Every dataset yields dicts with `moving`, `fixed` (float32, (1, D, H, W)) and, where the data have them,
`moving_seg`, `fixed_seg` (int64, (1, D, H, W)); `Embedded` adds `disp_true` (3, D, H, W), voxels.
Each has `labels` (the evaluated label values) and `label_names` (same order).
`from_config(cfg, split)` is the one place a run's dataset is built from its config.
"""
from __future__ import annotations

import dataclasses

import torch

from .. import _checks
from .augment import AUGMENTS, flip_pair
from .embedded import PAIRS, Embedded
from .real import IXI, LPBA40, OASIS, ofg_sample
from .template import LABEL_NAMES, mni_template, mni_tissues, random_smooth_disp

__all__ = ["Embedded", "IXI", "OASIS", "LPBA40", "LABEL_NAMES", "mni_template", "mni_tissues", "random_smooth_disp",
           "from_config", "flip_pair", "AUGMENTS", "ofg_sample", "collate", "as_batch", "check_scored"]

DATASETS = ("embedded", "ixi", "oasis", "lpba40")


def from_config(cfg, split: str):
    """The `split` ("train", "val", "test") of the dataset a run's config names (a TrainConfig or its dict).

    Used by the trainer, the teacher, evaluation and the notebooks, so that every part of the project scores
    the same pairs a run was validated on.
    """
    c = cfg if isinstance(cfg, dict) else dataclasses.asdict(cfg)
    name = _checks.one_of("dataset", c.get("dataset", "embedded"), DATASETS)
    subset = c.get("subset")
    if name == "embedded":
        return Embedded(split, c["img_size"], seed=c.get("data_seed", 0), rms=c.get("embedded_rms"),
                        pairs=c.get("embedded_pairs", "atlas"), contrast=c.get("embedded_contrast", 0.0),
                        rms_jitter=c.get("embedded_rms_jitter", 0.0), fine_rms=c.get("embedded_fine_rms", 0.0),
                        supersample=c.get("embedded_supersample", 1))
    if name == "ixi":
        return IXI(c.get("data_root"), split, subset if split in IXI.OFG_SUBSET else None)
    if name == "oasis":
        return OASIS(c.get("data_root"), split, seed=c.get("seed", 0), subset=subset if split == "train" else None)
    return LPBA40(c.get("data_root"), split, normalize=c.get("lpba40_normalize", True))


def collate(items):
    """Dataset items stacked into a batch (tensors stacked on a new first axis; `id` kept as a list)."""
    batch = {k: torch.stack([it[k] for it in items]) for k in items[0] if k != "id"}
    batch["id"] = [it["id"] for it in items]
    return batch


def as_batch(batch, device):
    """A batch (`collate`'s) with its tensors on `device`."""
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def check_scored(dataset, n: int, name: str) -> None:
    """Fail at start-up when a validation pair has nothing to score (no evaluated label, or no labelled voxel)."""
    for i in range(min(n, len(dataset))):
        item = dataset[i]
        if "fixed_seg" not in item or "moving_seg" not in item:
            raise ValueError(f"{name} validation pair {item.get('id', i)} has no label maps: nothing to score")
        found = set(torch.unique(item["fixed_seg"]).tolist()) | set(torch.unique(item["moving_seg"]).tolist())
        scored = found & set(dataset.labels)
        if not scored or not bool((item["fixed_seg"] > 0).any()):
            shown = sorted(found)[:20]
            raise ValueError(f"{name} validation pair {item.get('id', i)} holds no evaluated label: labels found "
                             f"{shown}{' ...' if len(found) > 20 else ''}, labels evaluated "
                             f"{list(dataset.labels)[:20]}{' ...' if len(dataset.labels) > 20 else ''}")
