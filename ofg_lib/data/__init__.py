"""Data: the embedded MNI152 cohort and the IXI / OASIS / LPBA40 readers (notebook 01).

Every dataset yields dicts with `moving`, `fixed` (float32, (1, D, H, W)) and, where the data have them,
`moving_seg`, `fixed_seg` (int64, (1, D, H, W)); `Embedded` adds `disp_true` (3, D, H, W), voxels.
Each has `labels` (the evaluated label values) and `label_names` (same order).
`from_config(cfg, split)` is the one place a run's dataset is built from its config.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from .. import _checks
from .augment import AUGMENTS, flip_pair
from .embedded import PAIRS, Embedded
from .real import IXI, LPBA40, OASIS, ofg_sample
from .template import LABEL_NAMES, mni_template, mni_tissues, random_smooth_disp

__all__ = ["Embedded", "IXI", "OASIS", "LPBA40", "LABEL_NAMES", "mni_template", "mni_tissues", "random_smooth_disp",
           "from_config", "flip_pair", "AUGMENTS", "ofg_sample", "collate", "as_batch", "check_scored", "check_config",
           "epoch_batches", "augment_batch"]

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


def check_config(cfg, need) -> None:
    """The data keys of a config (`need(ok, key, what)` raises `key must be what, got ...`)."""
    need(cfg.dataset in DATASETS, "dataset", f"one of {', '.join(DATASETS)}")
    need(cfg.augment in (None, *AUGMENTS), "augment", f"one of {', '.join(AUGMENTS)} (or null)")
    need(cfg.subset in (None, "ofg"), "subset", "null or 'ofg'")
    need(cfg.subset is None or cfg.dataset in ("ixi", "oasis"), "subset", "null for this dataset (only ixi and "
         "oasis have the OFG code's sample)")
    need(len(cfg.img_size) in (2, 3) and min(cfg.img_size) >= 1, "img_size",
         "three positive sides, e.g. [80, 96, 112], or two for the 2-D track, e.g. [160, 192]")
    need(cfg.embedded_pairs in PAIRS, "embedded_pairs", f"one of {', '.join(PAIRS)}")
    need(0 <= cfg.embedded_rms_jitter < 1, "embedded_rms_jitter", "in [0, 1)")
    need(1 <= cfg.embedded_supersample <= 4, "embedded_supersample", "an integer from 1 to 4")
    for key in ("embedded_contrast", "embedded_fine_rms"):
        need(math.isfinite(getattr(cfg, key)) and getattr(cfg, key) >= 0, key, "a finite number >= 0")
    need(cfg.embedded_rms is None or (math.isfinite(cfg.embedded_rms) and cfg.embedded_rms >= 0), "embedded_rms",
         "null or a finite number >= 0")


def epoch_batches(train_set, cfg, epoch: int, rank: int = 0, world: int = 1):
    """The training batches of an epoch, in training order: a permutation of the items seeded by (seed,
    epoch), cycled to `steps_per_epoch * batch_size * world` items, this rank's share, in a DataLoader."""
    g = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
    n, bs = len(train_set), cfg.batch_size
    need = cfg.steps_per_epoch * bs * world
    order = torch.cat([torch.randperm(n, generator=g) for _ in range(math.ceil(need / n))])[:need].tolist()
    order = order[rank::world]
    # its own generator: a DataLoader would otherwise draw its worker seed from the global torch RNG
    return torch.utils.data.DataLoader(train_set, batch_sampler=[order[i * bs:(i + 1) * bs]
                                                                 for i in range(cfg.steps_per_epoch)],
                                       collate_fn=collate, num_workers=cfg.num_workers,
                                       generator=torch.Generator().manual_seed(cfg.seed + epoch))


def augment_batch(batch, g: torch.Generator, mode: str):
    """`batch` with each pair augmented by `mode` ("none", or "flip": `flip_pair` drawing from `g`)."""
    if mode == "none":
        return batch
    items = [{k: batch[k][b] for k in batch if k != "id"} for b in range(len(batch["id"]))]
    return collate([{**flip_pair(it, g), "id": key} for it, key in zip(items, batch["id"])])


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
