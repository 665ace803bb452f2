"""The embedded default cohort: atlas-to-subject pairs made from the MNI152 template (notebook 01).

The IXI setting of the paper: the atlas (the template) is the moving image and each subject the fixed image.
A subject is the atlas warped by a random smooth invertible deformation (`synthetic.random_deformation`),
then given a bias field, a gamma change and noise. `disp_true` is that deformation: warp(moving, disp_true)
reproduces the subject's anatomy, so registration error can be measured against ground truth.

Split: 200 train / 20 val / 40 test subjects (the paper's IXI selection used 200 / 20), drawn independently
from (seed, split, index). Subjects are generated on first use and cached under data/ with a manifest;
a changed generator version, size, seed or deformation size regenerates the cache.
"""
from __future__ import annotations

import json
import pickle
import shutil
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..paths import atomic_save, atomic_write, data_dir, remove_partials
from ..transform import warp
from .synthetic import intensity_change, random_deformation, subject_generator
from .template import LABEL_NAMES, mni_template

GENERATOR_VERSION = 1
SPLITS = {"train": 200, "val": 20, "test": 40}
FULL_SIZE = (160, 192, 224)
# RMS displacement at the full size, in voxels (about 0.9 mm): residual non-linear differences between
# affinely aligned adult brains are a few millimetres, with maxima around a centimetre.
RMS_AT_FULL_SIZE = 2.5


class Embedded(Dataset):
    """Atlas-to-subject pairs from the MNI152 template; items are dicts of tensors shaped (C, D, H, W).

    `moving` (atlas) and `fixed` (subject) are float32 (1, D, H, W) in [0, 1]; `moving_seg`, `fixed_seg` int64
    (1, D, H, W) with labels 0..12; `disp_true` float32 (3, D, H, W) in voxels, the displacement that warps
    moving onto fixed. `n` limits the number of subjects (default: the whole split).
    """

    KEYS = {"moving", "fixed", "moving_seg", "fixed_seg", "disp_true"}
    labels = tuple(LABEL_NAMES)
    label_names = tuple(LABEL_NAMES.values())

    def __init__(self, split: str = "train", size=(80, 96, 112), seed: int = 0, n: int | None = None,
                 rms: float | None = None, root: str | Path | None = None, cache: bool = True):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        size = tuple(int(s) for s in size)
        if len(size) != 3 or min(size) < 16:
            raise ValueError(f"size must be three sides of at least 16 voxels, got {size}")
        if n is not None and not 0 < n <= SPLITS[split]:
            raise ValueError(f"n must be between 1 and {SPLITS[split]} for split {split!r}, got {n}")
        self.split, self.size, self.seed, self.cache = split, size, int(seed), cache
        self.rms = RMS_AT_FULL_SIZE * sum(s / f for s, f in zip(size, FULL_SIZE)) / 3 if rms is None else float(rms)
        self.spacing = max(4, round(32 * size[0] / FULL_SIZE[0]))
        self.n = n or SPLITS[split]
        base = Path(root) if root is not None else data_dir()
        name = f"embedded-{'x'.join(map(str, size))}-seed{self.seed}" + (f"-rms{float(rms):g}" if rms is not None else "")
        self.folder = base / name
        if cache:
            self._check_manifest()

    def manifest(self) -> dict:
        return {"generator_version": GENERATOR_VERSION, "seed": self.seed, "size": list(self.size),
                "rms_voxels": round(self.rms, 6), "spacing_voxels": self.spacing, "splits": SPLITS,
                "direction": "atlas (moving) -> subject (fixed)", "labels": dict(LABEL_NAMES)}

    def _check_manifest(self) -> None:
        path = self.folder / "manifest.json"
        want = self.manifest()
        if path.exists():
            try:
                have = json.loads(path.read_text())
            except json.JSONDecodeError:
                have = None
            if have == json.loads(json.dumps(want)):
                remove_partials(self.folder)
                return
            shutil.rmtree(self.folder, ignore_errors=True)  # made by another generator: regenerate
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_partials(self.folder)
        atomic_write(path, json.dumps(want, indent=1))  # per-process temporary name: safe with parallel writers

    def __len__(self) -> int:
        return self.n

    def generate(self, index: int) -> dict:
        """Make subject `index` of this split from scratch (deterministic in seed, split and index)."""
        atlas, atlas_seg = mni_template(self.size)
        g = subject_generator(self.seed, list(SPLITS).index(self.split), index)
        disp = random_deformation(self.size, self.rms, self.spacing, g)
        fixed = intensity_change(warp(atlas, disp), g)
        fixed_seg = warp(atlas_seg, disp, mode="nearest")
        return {"moving": atlas[0], "fixed": fixed[0], "moving_seg": atlas_seg[0], "fixed_seg": fixed_seg[0],
                "disp_true": disp[0]}

    def __getitem__(self, index: int) -> dict:
        if not -self.n <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} {self.split} subjects")
        index %= self.n
        path = self.folder / f"{self.split}_{index:03d}.pt"
        item = None
        if self.cache and path.exists():
            try:
                item = torch.load(path, weights_only=True)
            except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError):
                item = None     # truncated or corrupt cache file: regenerated below (generation is deterministic)
            if not isinstance(item, dict) or set(item) != self.KEYS:
                item = None
        if item is None:
            item = self.generate(index)
            if self.cache:
                atomic_save(item, path)
        item["id"] = f"{self.split}_{index:03d}"
        return item

    def build(self, progress: bool = True) -> float:
        """Generate (or load) every subject of the split now; returns the seconds it took."""
        from ..progress import progress_bar
        t0 = time.perf_counter()
        for i in progress_bar(range(self.n), desc=f"embedded {self.split} {self.size}", disable=not progress):
            self[i]
        return time.perf_counter() - t0
