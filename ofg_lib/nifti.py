"""NIfTI in and out: register your own images with a trained model or a classical method (`ofg_lib.register`).

- `read_pair` reads a moving and a fixed image (and optional label maps) with nibabel, checks that they are 3-D,
  finite, and share shape and affine (or says what differs), and normalises intensities as the model was
  trained (min-max to [0, 1]: the embedded cohort and the published IXI/OASIS files are in [0, 1], the LPBA40
  reader min-max normalises by default).
- `write_outputs` writes the warped image, the warped label map and the displacement with the fixed image's
  affine, in two conventions:
  * `disp_vox.nii.gz`: (X, Y, Z, 3) float32, voxels, channel i along array axis i: the project's own
    convention (`warp(moving, disp)`);
  * `disp_mm.nii.gz`: the ITK/ANTs displacement-field convention, a 5-D vector image (X, Y, Z, 1, 3) with
    intent "vector", in millimetres, components in ITK's physical (LPS) frame: d = diag(-1, -1, 1) A u, with A
    the linear part of the fixed image's affine (RAS) and u the voxel displacement. ITK reads NIfTI vectors as
    LPS; `ants.apply_transforms(fixed, moving, [disp_mm.nii.gz])` reproduces our warp (tests/test_nifti.py).
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from .data.readers import image_tensor, label_tensor, load_nifti
from .files import atomic_write

__all__ = ["read_image", "read_pair", "write_outputs", "disp_to_mm", "LPS"]

LPS = np.diag([-1.0, -1.0, 1.0])   # RAS (NIfTI) -> LPS (ITK) for vectors


def read_image(path, normalize: bool = True):
    """(image (1, X, Y, Z) float32, affine 4x4) of a 3-D NIfTI file, with a message naming the file on bad input."""
    data, affine = load_nifti(path, affine=True)
    return image_tensor(data, path, normalize=normalize), affine


def read_pair(moving, fixed, moving_seg=None, fixed_seg=None, normalize: bool = True, atol: float = 1e-3) -> dict:
    """A pair as the datasets give it: `moving`, `fixed` (1, X, Y, Z), optional `moving_seg`/`fixed_seg`, `affine`.

    The two images (and their label maps) must share shape and affine (registration networks take voxel grids:
    resample one onto the other first, e.g. with an affine registration); the message says what differs.
    """
    m, m_aff = read_image(moving, normalize)
    f, f_aff = read_image(fixed, normalize)
    if m.shape != f.shape:
        raise ValueError(f"{moving} has shape {tuple(m.shape[1:])} but {fixed} has {tuple(f.shape[1:])}: "
                         "resample the moving image onto the fixed image's grid first")
    _same_grid(moving, m_aff, fixed, f_aff, atol)
    pair = {"moving": m, "fixed": f, "affine": f_aff}
    for key, path, like in (("moving_seg", moving_seg, m), ("fixed_seg", fixed_seg, f)):
        if path is not None:
            data, affine = load_nifti(path, affine=True)
            pair[key] = label_tensor(data, path, like)
            _same_grid(path, affine, fixed, f_aff, atol)
    return pair


def _same_grid(a, a_aff, b, b_aff, atol):
    if not np.allclose(a_aff, b_aff, atol=atol):
        raise ValueError(f"{a} and {b} have different affines (largest difference "
                         f"{np.abs(a_aff - b_aff).max():.4g}):\n{a_aff}\nvs\n{b_aff}\n"
                         "they must be on the same voxel grid: resample one onto the other first")


def disp_to_mm(disp: torch.Tensor, affine) -> np.ndarray:
    """(X, Y, Z, 3) displacement in mm, ITK's LPS frame, from a (3, X, Y, Z) or (1, 3, ...) voxel displacement."""
    u = disp.detach().cpu().double().reshape(3, *disp.shape[-3:]).numpy()
    a = LPS @ np.asarray(affine, dtype=np.float64)[:3, :3]
    return np.einsum("ij,j...->...i", a, u).astype(np.float32)


def write_outputs(out_dir, affine, disp: torch.Tensor, warped: torch.Tensor | None = None,
                  warped_seg: torch.Tensor | None = None) -> dict:
    """Write `disp_vox`, `disp_mm` (see the module docstring), `warped`, `warped_seg` as NIfTI; return the paths."""
    import nibabel as nib
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    affine = np.asarray(affine, dtype=np.float64)
    spatial = tuple(disp.shape[-3:])
    paths = {}

    def save(name, array, intent=None):
        img = nib.Nifti1Image(array, affine)
        img.header.set_qform(affine, code=1)
        img.header.set_sform(affine, code=1)
        if intent:
            img.header.set_intent(intent)
        paths[name] = atomic_write(out / f"{name}.nii.gz", gzip.compress(img.to_bytes(), compresslevel=6))

    u = disp.detach().cpu().float().reshape(3, *spatial).numpy()
    save("disp_vox", np.ascontiguousarray(np.moveaxis(u, 0, -1)))
    save("disp_mm", disp_to_mm(disp, affine).reshape(*spatial, 1, 3), intent="vector")
    if warped is not None:
        save("warped", warped.detach().cpu().float().reshape(spatial).numpy())
    if warped_seg is not None:
        save("warped_seg", warped_seg.detach().cpu().reshape(spatial).numpy().astype(np.int32))
    return paths
