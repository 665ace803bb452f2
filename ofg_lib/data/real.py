"""Readers of the paper's datasets, in the published preprocessed formats (notebook 01).

Each reads lazily, one file per item, from a folder the user gives (argument, or the environment variable
named in its docstring); none writes next to the data. Items match `Embedded`: `moving`, `fixed` float32
(1, D, H, W), `moving_seg`, `fixed_seg` int64 (1, D, H, W), and an `id`.
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from .. import _checks
from . import labels as L
from .readers import image_tensor, label_tensor, load_nifti, load_pkl, need_dir, remap


def _root(root, env: str, name: str) -> Path:
    root = root if root is not None else os.environ.get(env)
    if root is None:
        raise ValueError(f"give the {name} folder: {name}(root=...) or set {env}")
    return need_dir(root, name)


def ofg_sample(items: list, k: int) -> list:
    """The OFG code's subset: `random.seed(42); random.sample(sorted(items), k)`, sorted again (as published)."""
    items = sorted(items)
    return sorted(random.Random(42).sample(items, min(k, len(items))))


def _check_split(split, allowed):
    _checks.one_of("split", split, allowed)


class IXI(Dataset):
    """IXI as TransMorph released it: `atlas.pkl` and `Train/`, `Val/`, `Test/` of `subject_N.pkl` (root or $OFG_IXI).

    Each pkl holds `(image, label)`, 160x192x224, image in [0, 1], label as FreeSurfer aseg codes. Atlas to
    subject: the atlas is `moving`, the subject `fixed`. Labels are remapped to 0..45 (`labels.IXI_CODES`) and
    the 30 evaluated indices are `labels`. `subset="ofg"` takes the OFG code's sample: 200 training or 20
    validation files drawn with random.seed(42) from the sorted list (default: the full split).
    """

    labels = L.IXI_EVALUATED
    label_names = L.IXI_NAMES
    FOLDERS = {"train": "Train", "val": "Val", "test": "Test"}
    OFG_SUBSET = {"train": 200, "val": 20}

    def __init__(self, root=None, split: str = "train", subset: str | None = None):
        _check_split(split, self.FOLDERS)
        self.root = _root(root, "OFG_IXI", "IXI")
        folder = need_dir(self.root / self.FOLDERS[split], f"IXI {split}")
        files = sorted(folder.glob("*.pkl"))
        if not files:
            raise FileNotFoundError(f"{folder}: no .pkl files")
        if subset == "ofg":
            if split not in self.OFG_SUBSET:
                raise ValueError(f"the OFG subset exists for train and val only, not {split!r}")
            files = ofg_sample(files, self.OFG_SUBSET[split])
        elif subset is not None:
            raise ValueError(f"subset must be None or 'ofg', got {subset!r}")
        self.files, self.atlas_path = files, self.root / "atlas.pkl"
        if not self.atlas_path.is_file():
            raise FileNotFoundError(f"{self.atlas_path}: IXI atlas not found")

    def __len__(self):
        return len(self.files)

    def _read(self, path):
        image, seg = load_pkl(path, 2)
        x = image_tensor(image, path)
        return x, remap(label_tensor(seg, path, like=x), L.IXI_CODES)

    def __getitem__(self, index):
        moving, moving_seg = self._read(self.atlas_path)
        fixed, fixed_seg = self._read(self.files[index])
        if moving.shape != fixed.shape:
            raise ValueError(f"{self.files[index]}: shape {tuple(fixed.shape[1:])} differs from the atlas's "
                             f"{tuple(moving.shape[1:])}")
        return {"moving": moving, "fixed": fixed, "moving_seg": moving_seg, "fixed_seg": fixed_seg,
                "id": self.files[index].stem}


class OASIS(Dataset):
    """OASIS (neurite-oasis / Learn2Reg 2021 task 3) from root or $OFG_OASIS; subject to subject, labels 1..35.

    Layout "nifti": folders `OASIS_OAS1_XXXX_MR1/` with `aligned_norm.nii.gz` and `aligned_seg35.nii.gz`.
    Split by subject number as Learn2Reg 2021: val = 438..457 as 19 consecutive pairs (fixed k, moving k+1),
    test = 458 and up, train = the rest with a random partner per item (`set_epoch` redraws partners; the draw
    follows `seed`, so give the run's seed). `subset="ofg"` (train only) takes the OFG code's sample of 200
    training subjects (random.seed(42) on the sorted list, as for IXI).
    Layout "pkl" (TransMorph's): `Train/*.pkl` of `(image, seg)` and `Val/*.pkl` / `Test/*.pkl` of
    `(x, y, x_seg, y_seg)`, where x is moving and y fixed. `layout="auto"` picks whichever is present.
    """

    labels = L.OASIS_LABELS
    VAL_IDS, TEST_FROM = range(438, 458), 458

    OFG_SUBSET = 200

    def __init__(self, root=None, split: str = "train", layout: str = "auto", seed: int = 0,
                 subset: str | None = None):
        _check_split(split, ("train", "val", "test"))
        if subset not in (None, "ofg"):
            raise ValueError(f"subset must be None or 'ofg', got {subset!r}")
        self.root, self.split, self.seed, self.epoch = _root(root, "OFG_OASIS", "OASIS"), split, seed, 0
        subjects = sorted(self.root.glob("OASIS_OAS1_*_MR1"))
        if layout == "auto":
            layout = "nifti" if subjects else "pkl"
        if layout == "nifti":
            self._init_nifti(subjects)
        elif layout == "pkl":
            folder = need_dir(self.root / {"train": "Train", "val": "Val", "test": "Test"}[split], f"OASIS {split}")
            self.files = sorted(folder.glob("*.pkl"))
            if len(self.files) < (2 if split == "train" else 1):
                raise FileNotFoundError(f"{folder}: not enough .pkl files")
        else:
            raise ValueError(f"layout must be 'auto', 'nifti' or 'pkl', got {layout!r}")
        self.layout = layout
        if subset == "ofg" and split == "train":     # the published code samples the training split only
            if layout == "nifti":
                self.subjects = ofg_sample(self.subjects, self.OFG_SUBSET)
            else:
                self.files = ofg_sample(self.files, self.OFG_SUBSET)
        self.label_names = self._names()

    def _init_nifti(self, subjects):
        if not subjects:
            raise FileNotFoundError(f"{self.root}: no OASIS_OAS1_XXXX_MR1 folders")
        names = {s: re.fullmatch(r"OASIS_OAS1_(\d+)_MR1", s.name) for s in subjects}
        odd = sorted(s.name for s, m in names.items() if m is None)
        if odd:
            raise ValueError(f"{self.root}: folder(s) {', '.join(odd[:5])}{' ...' if len(odd) > 5 else ''} look like "
                             "OASIS subjects but are not named OASIS_OAS1_<number>_MR1 (the subject number decides "
                             "the split): rename or move them")
        number = {s: int(m.group(1)) for s, m in names.items()}
        pick = {"val": lambda n: n in self.VAL_IDS, "test": lambda n: n >= self.TEST_FROM,
                "train": lambda n: n not in self.VAL_IDS and n < self.TEST_FROM}[self.split]
        self.subjects = [s for s in subjects if pick(number[s])]
        if len(self.subjects) < 2:
            raise FileNotFoundError(f"{self.root}: fewer than 2 {self.split} subjects (by Learn2Reg numbering)")

    def _names(self):
        table = self.root / "seg35_labels.txt"
        if table.is_file():
            names = {}
            for line in table.read_text().splitlines():
                parts = line.split()
                if len(parts) >= 2 and parts[0].isdigit():
                    names[int(parts[0])] = parts[1]
            if all(v in names for v in self.labels):
                return tuple(names[v] for v in self.labels)
        return L.OASIS_NAMES

    def set_epoch(self, epoch: int) -> None:
        """Redraw the training partners (deterministically in seed and epoch)."""
        self.epoch = int(epoch)

    def __len__(self):
        if self.layout == "pkl":
            return len(self.files)
        return len(self.subjects) - 1 if self.split != "train" else len(self.subjects)

    def _subject(self, folder):
        x = image_tensor(load_nifti(folder / "aligned_norm.nii.gz"), folder / "aligned_norm.nii.gz")
        seg_path = folder / "aligned_seg35.nii.gz"
        return x, label_tensor(load_nifti(seg_path), seg_path, like=x)

    def _partner(self, index, count):
        rng = np.random.default_rng([self.seed, self.epoch, index])
        other = int(rng.integers(count - 1))
        return other + (other >= index)

    def __getitem__(self, index):
        if self.layout == "pkl":
            return self._get_pkl(index)
        if self.split == "train":
            fixed_dir, moving_dir = self.subjects[index], self.subjects[self._partner(index, len(self.subjects))]
        else:
            fixed_dir, moving_dir = self.subjects[index], self.subjects[index + 1]
        moving, moving_seg = self._subject(moving_dir)
        fixed, fixed_seg = self._subject(fixed_dir)
        return {"moving": moving, "fixed": fixed, "moving_seg": moving_seg, "fixed_seg": fixed_seg,
                "id": f"{moving_dir.name}->{fixed_dir.name}"}

    def _get_pkl(self, index):
        path = self.files[index]
        if self.split == "train":
            other = self.files[self._partner(index, len(self.files))]
            (xm, sm), (xf, sf) = load_pkl(other, 2), load_pkl(path, 2)
            paths = (other, path)
        else:
            xm, xf, sm, sf = load_pkl(path, 4)
            paths = (path, path)
        moving, fixed = image_tensor(xm, paths[0]), image_tensor(xf, paths[1])
        item = {"moving": moving, "fixed": fixed, "moving_seg": label_tensor(sm, paths[0], like=moving),
                "fixed_seg": label_tensor(sf, paths[1], like=fixed), "id": f"{paths[0].stem}->{paths[1].stem}"}
        if moving.shape != fixed.shape:
            raise ValueError(f"{path}: moving {tuple(moving.shape[1:])} and fixed {tuple(fixed.shape[1:])} differ")
        return item


class LPBA40(Dataset):
    """LPBA40, 160x192x160 NIfTI (root or $OFG_LPBA40); subject to atlas: `moving` subject, `fixed` atlas S01.

    Files are found anywhere under root by name: labels `S??.delineation.structure.label.nii.gz`, images any
    other `S??*.nii.gz` (e.g. `S??.delineation.skullstripped.nii.gz`). Split as the paper: S02-S31 train (30),
    S32-S40 val (9). Intensities: this loader min-max normalises each image to [0, 1] by default, so that all
    datasets share one intensity scale (LNCC's eps and the networks' inputs mean the same thing); the published
    loader does not normalise: `normalize=False` is the published behaviour (config key `lpba40_normalize`).
    `labels` are the 54 evaluated by the OFG code (181 and 182 excluded).
    """

    labels = L.LPBA40_LABELS
    label_names = L.LPBA40_NAMES
    SPLITS = {"train": range(2, 32), "val": range(32, 41)}

    def __init__(self, root=None, split: str = "train", atlas: int = 1, normalize: bool = True):
        _check_split(split, self.SPLITS)
        self.root, self.normalize = _root(root, "OFG_LPBA40", "LPBA40"), normalize
        found_labels, found_images = {}, {}
        for path in sorted(self.root.rglob("S[0-9][0-9]*.nii*")):
            m = re.match(r"S(\d\d)", path.name)
            target = found_labels if ".label." in path.name else found_images
            target.setdefault(int(m.group(1)), path)
        missing = [n for n in [atlas, *self.SPLITS[split]] if n not in found_images or n not in found_labels]
        if atlas in missing:
            raise FileNotFoundError(f"{self.root}: no image and label file for the atlas S{atlas:02d}")
        self.subjects = [n for n in self.SPLITS[split] if n not in missing and n != atlas]
        if not self.subjects:
            raise FileNotFoundError(f"{self.root}: no {split} subjects (S{self.SPLITS[split][0]:02d}.."
                                    f"S{self.SPLITS[split][-1]:02d}) with both an image and a label file")
        self.images, self.segs, self.atlas = found_images, found_labels, atlas

    def __len__(self):
        return len(self.subjects)

    def _subject(self, n):
        x = image_tensor(load_nifti(self.images[n]), self.images[n], normalize=self.normalize)
        return x, label_tensor(load_nifti(self.segs[n]), self.segs[n], like=x)

    def __getitem__(self, index):
        n = self.subjects[index]
        moving, moving_seg = self._subject(n)
        fixed, fixed_seg = self._subject(self.atlas)
        if moving.shape != fixed.shape:
            raise ValueError(f"{self.images[n]}: shape {tuple(moving.shape[1:])} differs from the atlas's "
                             f"{tuple(fixed.shape[1:])}")
        return {"moving": moving, "fixed": fixed, "moving_seg": moving_seg, "fixed_seg": fixed_seg,
                "id": f"S{n:02d}->S{self.atlas:02d}"}
