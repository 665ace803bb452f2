"""The embedded default cohort: atlas-to-subject pairs made from the MNI152 template (notebook 01).

The IXI setting of the paper: the atlas (the template) is the moving image and each subject the fixed image.
A subject is the atlas warped by a random smooth invertible deformation (`synthetic.random_deformation`),
then given a bias field, a gamma change and noise. `disp_true` is that deformation: warp(moving, disp_true)
reproduces the subject's anatomy, so registration error can be measured against ground truth.

Split: 200 train / 20 val / 40 test subjects (the paper's IXI selection used 200 / 20), drawn independently
from (seed, split, index). Subjects are generated on first use and cached under data/ with a manifest;
a changed generator version, img_size, seed or option regenerates the cache.

Options that make the problem harder (notebooks 01 and 08; all off by default, which is the cohort of every
earlier result):
- a 2-D `img_size` (H, W): the 2-D track, one axial slice of the template (`template.AXIAL_Z_MM`) deformed in-plane;
- `pairs="subject"`: subject-to-subject pairs (the OASIS setting); `disp_true` is the composed true map;
- `contrast`: per-subject tissue intensities (`synthetic.tissue_contrast`);
- `rms_jitter`, `fine_rms`: a per-subject deformation size and a fine component (multi-scale deformations);
- `supersample=k`: subjects are made on a k-times finer grid and area-downsampled, and so is the atlas, so that
  moving and fixed are equally sharp (with k=1 every subject is one bilinear resampling blurrier than the atlas).
"""
from __future__ import annotations

import json
import pickle
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .. import _checks
from ..files import atomic_save, atomic_write, data_dir, remove_partials
from ..transform import compose, warp
from .synthetic import intensity_change, random_deformation, subject_generator, tissue_contrast
from .template import LABEL_NAMES, mni_template, mni_tissues

GENERATOR_VERSION = 1
SPLITS = {"train": 200, "val": 20, "test": 40}
FULL_SIZE = (160, 192, 224)
FULL_SIZE_2D = (160, 192)      # the 2-D slice at the paper's in-plane size (left-right, posterior-anterior)
# RMS displacement at the full size, in voxels (about 0.9 mm): residual non-linear differences between
# affinely aligned adult brains are a few millimetres, with maxima around a centimetre.
RMS_AT_FULL_SIZE = 2.5
PAIRS = ("atlas", "subject")


def edge_strength(image: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean gradient magnitude (central differences) of `image` (1, 1, *size) inside `mask`: compares blur."""
    grads = torch.gradient(image[0, 0])
    return float(torch.stack(grads).norm(dim=0)[mask[0, 0].bool()].mean())


def _pool(x: torch.Tensor, k: int) -> torch.Tensor:
    """Area average over k^n blocks (images and displacements; a displacement is then divided by k)."""
    return x if k == 1 else (F.avg_pool3d if x.dim() == 5 else F.avg_pool2d)(x, k)


class Embedded(Dataset):
    """Atlas-to-subject pairs from the MNI152 template; items are dicts of tensors shaped (C, D, H, W).

    `moving` (atlas) and `fixed` (subject) are float32 (1, D, H, W) in [0, 1]; `moving_seg`, `fixed_seg` int64
    (1, D, H, W) with labels 0..12; `disp_true` float32 (3, D, H, W) in voxels, the displacement that warps
    moving onto fixed. `n` limits the number of subjects (default: the whole split). With a 2-D `img_size` (H, W)
    every item is (C, H, W), `disp_true` (2, H, W), and `labels` are the ten present in the slice.
    See the module docstring for `pairs`, `contrast`, `rms_jitter`, `fine_rms` and `supersample`.
    """

    KEYS = {"moving", "fixed", "moving_seg", "fixed_seg", "disp_true"}
    labels = tuple(LABEL_NAMES)
    label_names = tuple(LABEL_NAMES.values())

    def __init__(self, split: str = "train", img_size=(80, 96, 112), seed: int = 0, n: int | None = None,
                 rms: float | None = None, root: str | Path | None = None, cache: bool = True,
                 pairs: str = "atlas", contrast: float = 0.0, rms_jitter: float = 0.0, fine_rms: float = 0.0,
                 supersample: int = 1, **renamed):
        _checks.renamed("Embedded", renamed, {"size": "img_size"})
        _checks.one_of("split", split, SPLITS)
        img_size = tuple(int(s) for s in img_size)
        if len(img_size) not in (2, 3) or min(img_size) < 16:
            raise ValueError(f"img_size must be three sides (or two, for the 2-D track) of at least 16 voxels, "
                             f"got {img_size}")
        if n is not None and not 0 < n <= SPLITS[split]:
            raise ValueError(f"n must be between 1 and {SPLITS[split]} for split {split!r}, got {n}")
        _checks.one_of("pairs", pairs, PAIRS)
        for name, v, hi in (("contrast", contrast, None), ("rms_jitter", rms_jitter, 1.0), ("fine_rms", fine_rms, None)):
            if not (float(v) >= 0 and (hi is None or float(v) < hi)):
                raise ValueError(f"{name} must be a number >= 0{f' and < {hi}' if hi else ''}, got {v!r}")
        if isinstance(supersample, bool) or int(supersample) != supersample or not 1 <= supersample <= 4:
            raise ValueError(f"supersample must be an integer from 1 to 4, got {supersample!r}")
        self.split, self.img_size, self.seed, self.cache = split, img_size, int(seed), cache
        self.pairs, self.contrast, self.rms_jitter = pairs, float(contrast), float(rms_jitter)
        self.fine_rms, self.supersample = float(fine_rms), int(supersample)
        full = FULL_SIZE if len(img_size) == 3 else FULL_SIZE_2D
        self.rms = (RMS_AT_FULL_SIZE * sum(s / f for s, f in zip(img_size, full)) / len(img_size) if rms is None
                    else float(rms))
        self.spacing = max(4, round(32 * img_size[0] / full[0]))
        self.n = n or SPLITS[split]
        if len(img_size) == 2:
            present = set(torch.unique(mni_template(img_size)[1]).tolist())
            self.labels = tuple(k for k in LABEL_NAMES if k in present)
            self.label_names = tuple(LABEL_NAMES[k] for k in self.labels)
        base = Path(root) if root is not None else data_dir()
        name = (f"embedded-{'x'.join(map(str, img_size))}-seed{self.seed}"
                + (f"-rms{float(rms):g}" if rms is not None else ""))
        self.folder = base / (name + "".join(f"-{k}{v}" for k, v in self.options().items()))
        if cache:
            self._check_manifest()

    def options(self) -> dict:
        """The options that differ from the default cohort (they name the cache folder and enter the manifest)."""
        values = {"pairs": self.pairs, "contrast": self.contrast, "jitter": self.rms_jitter, "fine": self.fine_rms,
                  "supersample": self.supersample}
        default = {"pairs": "atlas", "contrast": 0.0, "jitter": 0.0, "fine": 0.0, "supersample": 1}
        return {k: (f"{v:g}" if isinstance(v, float) else v) for k, v in values.items() if v != default[k]}

    def manifest(self) -> dict:
        out = {"generator_version": GENERATOR_VERSION, "seed": self.seed, "size": list(self.img_size),
               "rms_voxels": round(self.rms, 6), "spacing_voxels": self.spacing, "splits": SPLITS,
               "direction": "atlas (moving) -> subject (fixed)", "labels": dict(LABEL_NAMES)}
        if self.options():
            out["options"] = self.options()
            if self.pairs == "subject":
                out["direction"] = "subject (moving) -> subject (fixed)"
        return out

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

    def atlas(self):
        """The moving image of atlas pairs and its labels, (1, 1, *size); with supersample, area-downsampled.

        Made once per dataset (every subject's labels are warped from it); callers get copies.
        """
        if getattr(self, "_atlas", None) is None:
            self._atlas = self._make_atlas()
        return tuple(t.clone() for t in self._atlas)

    def _make_atlas(self):
        image, seg = mni_template(self.img_size)
        k = self.supersample
        if k > 1:
            fine, fine_seg = mni_template(tuple(s * k for s in self.img_size))
            image = _pool(fine, k)
            seg = F.interpolate(fine_seg.float(), size=self.img_size, mode="nearest-exact").long()
        return image, seg

    def subject(self, index: int, inverse: bool = False, clean: bool = False) -> dict:
        """Subject `index` of this split: image, labels, its deformation of the atlas (and the inverse's).

        Deterministic in (seed, split, index), so a subject is the same in atlas and in subject pairs.
        `clean=True` leaves out the bias field, gamma and noise (to see what resampling alone does, e.g. blur).
        """
        k = self.supersample
        fine_size = tuple(s * k for s in self.img_size)
        g = subject_generator(self.seed, list(SPLITS).index(self.split), index)
        rms = self.rms
        if self.rms_jitter:
            rms *= 1 + self.rms_jitter * (2 * float(torch.rand((), generator=g)) - 1)
        fields = random_deformation(fine_size, rms * k, self.spacing * k, g, self.fine_rms * k, with_inverse=inverse)
        disp, inv = fields if inverse else (fields, None)
        source = mni_template(fine_size)[0]
        if self.contrast:
            source = tissue_contrast(source, mni_tissues(fine_size), self.contrast, g)
        image = _pool(warp(source, disp), k)
        disp, inv = _pool(disp, k) / k, (_pool(inv, k) / k if inv is not None else None)
        image = image if clean else intensity_change(image, g)
        seg = warp(self.atlas()[1], disp, mode="nearest")
        return {"image": image, "seg": seg, "disp": disp, "inverse": inv}

    def partner(self, index: int) -> int:
        """The moving subject of subject pair `index` (another subject of the split, drawn from (seed, split, index))."""
        g = subject_generator(self.seed, list(SPLITS).index(self.split), index, 1)
        return (index + 1 + int(torch.randint(SPLITS[self.split] - 1, (), generator=g))) % SPLITS[self.split]

    def generate(self, index: int) -> dict:
        """Make pair `index` of this split from scratch (deterministic in seed, split, index and the options)."""
        fixed = self.subject(index)
        if self.pairs == "atlas":
            moving, moving_seg = self.atlas()
            disp_true = fixed["disp"]
        else:   # moving = subject m = atlas o (id + u_m); fixed = atlas o (id + u_i); truth = (id + u_m)^-1 o (id + u_i)
            m = self.subject(self.partner(index), inverse=True)
            moving, moving_seg = m["image"], m["seg"]
            disp_true = compose(m["inverse"], fixed["disp"])
        return {"moving": moving[0], "fixed": fixed["image"][0], "moving_seg": moving_seg[0],
                "fixed_seg": fixed["seg"][0], "disp_true": disp_true[0]}

    def __len__(self) -> int:
        return self.n

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
        for i in progress_bar(range(self.n), desc=f"embedded {self.split} {self.img_size}", disable=not progress):
            self[i]
        return time.perf_counter() - t0
