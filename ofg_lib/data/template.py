"""The MNI152 (ICBM 2009c) T1 template and tissue maps from nilearn's package data, read offline."""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import _checks


FILES = {"t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
         "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
         "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"}
# The embedded atlas's labels: tissue class (from nilearn's grey/white-matter probability maps) split by
# hemisphere and by an anterior/posterior cut in MNI space, plus the posterior fossa. Geometric splits of
# tissue maps, NOT FreeSurfer labels or an anatomical parcellation.
LABEL_NAMES = {
    1: "left anterior cerebral grey matter", 2: "right anterior cerebral grey matter",
    3: "left posterior cerebral grey matter", 4: "right posterior cerebral grey matter",
    5: "left anterior cerebral white matter", 6: "right anterior cerebral white matter",
    7: "left posterior cerebral white matter", 8: "right posterior cerebral white matter",
    9: "left CSF and ventricles", 10: "right CSF and ventricles",
    11: "cerebellum and brainstem grey matter", 12: "cerebellum and brainstem white matter",
}
ANTERIOR_Y_MM = -15.0  # coronal cut between "anterior" and "posterior" (MNI y, mm)
FOSSA = (-20.0, -30.0)  # below z and behind y (MNI mm): cerebellum and brainstem


def _nilearn_data() -> Path:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise ImportError("nilearn is not installed: it ships the MNI152 template (pip install nilearn)")
    folder = Path(spec.origin).parent / "datasets" / "data"
    missing = [f for f in FILES.values() if not (folder / f).exists()]
    if missing:
        raise FileNotFoundError(f"nilearn at {folder} lacks {', '.join(missing)}")
    return folder


def _native_labels(vols: dict, affine: np.ndarray) -> np.ndarray:
    """The 12 labels of `LABEL_NAMES` at the template's native 1 mm resolution."""
    gm, wm, t1 = vols["gm"], vols["wm"], vols["t1"]
    ijk = np.indices(t1.shape).reshape(3, -1)
    x, y, z = (affine[:3, :3] @ ijk + affine[:3, 3:]).reshape(3, *t1.shape)
    brain = (gm + wm) > 0.5
    is_wm = brain & (wm >= gm)
    csf = (t1 > 0.08) & ~brain
    left, anterior = x < 0, y >= ANTERIOR_Y_MM
    fossa = (z < FOSSA[0]) & (y < FOSSA[1])
    labels = np.zeros(t1.shape, np.int64)
    for value, (wm_part, ant, lft) in enumerate([(w, a, h) for w in (False, True) for a in (True, False)
                                                 for h in (True, False)], start=1):
        labels[brain & ~fossa & (is_wm == wm_part) & (anterior == ant) & (left == lft)] = value
    labels[csf & ~fossa & left] = 9
    labels[csf & ~fossa & ~left] = 10
    labels[brain & fossa & ~is_wm] = 11
    labels[brain & fossa & is_wm] = 12
    return labels


AXIAL_Z_MM = 10.0  # the 2-D track's slice: axial, MNI z = +10 mm (basal ganglia, thalami, lateral ventricles)


def _resample(volume: torch.Tensor, size, labels: bool) -> torch.Tensor:
    """Resize (1, C, ...) to `size` with voxel centres at half-pixel positions for images and labels alike."""
    if labels:
        return F.interpolate(volume.float(), size=size, mode="nearest-exact").long()
    shrink = any(s < n for s, n in zip(size, volume.shape[2:]))
    if shrink:  # average over the source voxels each target voxel covers (no aliasing)
        pool = F.adaptive_avg_pool3d if len(size) == 3 else F.adaptive_avg_pool2d
        return pool(volume, size)
    return F.interpolate(volume, size=size, mode="trilinear" if len(size) == 3 else "bilinear", align_corners=False)


@lru_cache(maxsize=1)
def _native() -> dict:
    """The template cropped to the brain at 1 mm, axes (L-R, I-S, P-A): image, labels, grey and white matter."""
    import nibabel as nib
    folder = _nilearn_data()
    imgs = {k: nib.load(folder / f) for k, f in FILES.items()}
    vols = {k: np.asarray(im.dataobj, dtype=np.float32) / 255.0 for k, im in imgs.items()}
    affine = imgs["t1"].affine
    native = _native_labels(vols, affine)
    # Crop to the brain's bounding box and order the axes (L-R, I-S, P-A) so the longest extent lies along the
    # last axis as in the paper's 160x192x224 volumes.
    nz = np.argwhere(vols["t1"] > 0.05)
    lo, hi = nz.min(0), nz.max(0) + 1
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    out = {k: torch.from_numpy(v[crop].transpose(0, 2, 1).copy())[None, None]
           for k, v in {"image": vols["t1"], "gm": vols["gm"], "wm": vols["wm"], "labels": native}.items()}
    out["axial_index"] = int(round((AXIAL_Z_MM - affine[2, 3]) / affine[2, 2])) - int(lo[2])
    return out


@lru_cache(maxsize=4)
def _load(size: tuple) -> dict:
    """image, labels and tissue maps (grey matter, white matter, CSF) at `size`: 3-D, or the 2-D axial slice."""
    src = _native()
    vols = {k: src[k] for k in ("image", "labels", "gm", "wm")}
    if len(size) == 2:  # one axial slice: (L-R, P-A)
        vols = {k: v[:, :, :, src["axial_index"]] for k, v in vols.items()}
    shape = vols["image"].shape[2:]
    # resize keeping the aspect ratio, centred, zero padding
    scale = min(s / n for s, n in zip(size, shape))
    inner = tuple(max(2, int(round(n * scale))) for n in shape)
    pads = []
    for s, n in zip(reversed(size), reversed(inner)):
        pads += [(s - n) // 2, s - n - (s - n) // 2]
    image = F.pad(_resample(vols["image"], inner, False), pads).clamp(0, 1)
    labels = F.pad(_resample(vols["labels"], inner, True), pads)
    gm, wm = (F.pad(_resample(vols[k], inner, False), pads).clamp(0, 1) for k in ("gm", "wm"))
    csf = ((1 - gm - wm).clamp(0, 1) * (image > 0.08)).clamp(0, 1)
    return {"image": image, "labels": labels, "tissues": torch.cat([gm, wm, csf], 1)}


def _check_size(img_size) -> tuple:
    img_size = tuple(int(s) for s in img_size)
    if len(img_size) not in (2, 3) or min(img_size) < 8:
        raise ValueError(f"img_size must be three sides (D, H, W), or two (H, W) for the 2-D slice, of at least 8 "
                         f"voxels; got {img_size}")
    return img_size


def mni_template(img_size=(80, 96, 112), **renamed):
    """The template as (image (1, 1, *img_size) float32 in [0, 1], tissue labels (1, 1, *img_size) int64).

    Labels 1..12 are named in `LABEL_NAMES` (tissue maps split by hemisphere and position; not FreeSurfer
    labels); 0 is background. A 2-D `img_size` (H, W) gives one axial slice at MNI z = +10 mm (`AXIAL_Z_MM`;
    axes left-right and posterior-anterior), resized like the volume: it holds labels 1-10 (no posterior fossa).
    """
    _checks.renamed("mni_template", renamed, {"size": "img_size"})
    d = _load(_check_size(img_size))
    return d["image"].clone(), d["labels"].clone()


def mni_tissues(img_size=(80, 96, 112), **renamed) -> torch.Tensor:
    """Grey-matter, white-matter and CSF probability maps (1, 3, *img_size) of the template (CSF: the rest of
    the head)."""
    _checks.renamed("mni_tissues", renamed, {"size": "img_size"})
    return _load(_check_size(img_size))["tissues"].clone()


def random_smooth_disp(img_size, rms: float = 2.0, spacing: int | None = None, seed: int = 0,
                       invertible: bool = True, **renamed) -> torch.Tensor:
    """A smooth random displacement (1, 3, *img_size), voxels, RMS magnitude about `rms`.

    `invertible=True` integrates a random velocity field (never folds); `invertible=False` returns the smooth
    noise itself as the displacement, which folds once it is large compared with its correlation length.
    A 2-D `img_size` gives a 2-D field (1, 2, H, W).
    """
    _checks.renamed("random_smooth_disp", renamed, {"size": "img_size"})
    from .synthetic import random_deformation, smooth_field, subject_generator
    img_size = tuple(img_size)
    spacing = spacing or max(4, min(img_size) // 4)
    g = subject_generator(seed, 99)
    if invertible:
        return random_deformation(img_size, rms, spacing, g)
    return smooth_field(img_size, len(img_size), spacing, g) * rms
