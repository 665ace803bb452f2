"""Data: the embedded MNI152 cohort and the IXI / OASIS / LPBA40 readers (notebook 01).

Every dataset yields dicts with `moving`, `fixed` (float32, (1, D, H, W)) and, where the data have them,
`moving_seg`, `fixed_seg` (int64, (1, D, H, W)); `Embedded` adds `disp_true` (3, D, H, W), voxels.
Each has `labels` (the evaluated label values) and `label_names` (same order).
`from_config(cfg, split)` is the one place a run's dataset is built from its config.
"""
from __future__ import annotations

import dataclasses

from .. import _checks
from .augment import AUGMENTS, flip_pair
from .embedded import PAIRS, Embedded
from .real import IXI, LPBA40, OASIS, ofg_sample
from .template import LABEL_NAMES, mni_template, mni_tissues, random_smooth_disp

__all__ = ["Embedded", "IXI", "OASIS", "LPBA40", "LABEL_NAMES", "mni_template", "mni_tissues", "random_smooth_disp",
           "from_config", "flip_pair", "AUGMENTS", "ofg_sample"]

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
