"""The MNI152 (ICBM 2009c) T1 template and tissue maps from nilearn's package data, read offline."""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..transform import warp

FILES = {"t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
         "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
         "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"}
TISSUE_NAMES = ("background", "other brain / CSF", "grey matter", "white matter")


def _nilearn_data() -> Path:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise ImportError("nilearn is not installed: it ships the MNI152 template (pip install nilearn)")
    folder = Path(spec.origin).parent / "datasets" / "data"
    missing = [f for f in FILES.values() if not (folder / f).exists()]
    if missing:
        raise FileNotFoundError(f"nilearn at {folder} lacks {', '.join(missing)}")
    return folder


@lru_cache(maxsize=4)
def _load(size: tuple) -> tuple:
    import nibabel as nib
    folder = _nilearn_data()
    vols = {k: np.asarray(nib.load(folder / f).dataobj, dtype=np.float32) / 255.0 for k, f in FILES.items()}
    # Crop to the head's bounding box, then order the axes (L-R, I-S, A-P) so the longest extent (A-P)
    # lies along the last axis as in the paper's 160x192x224 volumes; resize keeping the aspect ratio.
    nz = np.argwhere(vols["t1"] > 0.05)
    lo, hi = nz.min(0), nz.max(0) + 1
    t = {k: torch.from_numpy(v[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].transpose(0, 2, 1).copy())[None, None]
         for k, v in vols.items()}
    shape = t["t1"].shape[2:]
    scale = min(s / n for s, n in zip(size, shape))
    inner = [max(2, int(round(n * scale))) for n in shape]
    pads = []
    for s, n in zip(reversed(size), reversed(inner)):
        pads += [(s - n) // 2, s - n - (s - n) // 2]
    out = {k: F.pad(F.interpolate(v, size=inner, mode="trilinear", align_corners=True), pads) for k, v in t.items()}
    image = out["t1"].clamp(0, 1)
    brain = out["gm"] + out["wm"]
    labels = torch.where(brain > 0.2, torch.where(out["wm"] > out["gm"], 3, 2), torch.where(image > 0.1, 1, 0))
    return image, labels.long()


def mni_template(size=(80, 96, 112)):
    """The template as (image (1, 1, *size) float32 in [0, 1], tissue labels (1, 1, *size) int64).

    Labels: 0 background, 1 other head / CSF, 2 grey matter, 3 white matter (from nilearn's probability maps;
    not FreeSurfer labels). Names in `TISSUE_NAMES`.
    """
    size = tuple(int(s) for s in size)
    if len(size) != 3 or min(size) < 8:
        raise ValueError(f"size must be three sides of at least 8 voxels, got {size}")
    image, labels = _load(size)
    return image.clone(), labels.clone()


def random_smooth_disp(size, amplitude: float = 2.0, control: int = 5, seed: int = 0) -> torch.Tensor:
    """A smooth random displacement (1, 3, *size), voxels: Gaussian control points upsampled trilinearly."""
    g = torch.Generator().manual_seed(int(seed))
    coarse = torch.randn(1, 3, control, control, control, generator=g)
    return F.interpolate(coarse, size=tuple(size), mode="trilinear", align_corners=True) * amplitude


def template_pair(size=(80, 96, 112), amplitude: float = 2.0, seed: int = 0) -> dict:
    """One atlas-to-subject pair: moving = template, fixed = template warped by a known smooth field.

    Returns a dict with `moving`, `fixed` (1, 1, *size) float32, `moving_seg`, `fixed_seg` (int64) and
    `disp_true` (1, 3, *size): warp(moving, disp_true) == fixed, so registration error is measurable.
    """
    image, labels = mni_template(size)
    disp = random_smooth_disp(size, amplitude, seed=seed)
    return {"moving": image, "fixed": warp(image, disp), "moving_seg": labels,
            "fixed_seg": warp(labels, disp, mode="nearest"), "disp_true": disp}
