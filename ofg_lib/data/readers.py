"""Reading the published files safely, with errors that name the file and what was expected."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, tuples and lists only: a .pkl cannot run arbitrary code through this reader."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("numpy.core.numeric", "_frombuffer"),
               ("numpy._core.numeric", "_frombuffer"), ("builtins", "tuple"), ("builtins", "list")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are expected")
        return super().find_class(module, name)


def load_pkl(path: Path, length: int) -> tuple:
    """A pickled tuple of `length` numpy arrays (TransMorph's format)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as e:
        raise ValueError(f"{path}: not a pickle of numpy arrays ({e})") from None
    if not isinstance(obj, (tuple, list)) or len(obj) != length or not all(isinstance(a, np.ndarray) for a in obj):
        kind = f"a {type(obj).__name__} of {len(obj)}" if isinstance(obj, (tuple, list)) else type(obj).__name__
        raise ValueError(f"{path}: expected a tuple of {length} numpy arrays, found {kind}")
    odd = [f"item {i}: dtype {a.dtype}" for i, a in enumerate(obj) if a.dtype.kind not in "biuf"]
    if odd:
        raise ValueError(f"{path}: expected numeric arrays (image and labels), found {', '.join(odd)}")
    return tuple(obj)


def load_nifti(path: Path, affine: bool = False):
    """The voxel array of a NIfTI file (a trailing singleton 4th axis dropped); with `affine=True` also its affine.

    Missing and unreadable files raise errors that name the file.
    """
    import nibabel as nib
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        img = nib.load(path)
        data = np.asanyarray(img.dataobj)
    except Exception as e:  # nibabel raises several types (ImageFileError, EOFError, zlib errors...)
        raise ValueError(f"{path}: not a readable NIfTI image ({e})") from e
    data = data[..., 0] if data.ndim == 4 and data.shape[-1] == 1 else data
    return (data, np.asarray(img.affine, dtype=np.float64)) if affine else data


def image_tensor(array: np.ndarray, path, normalize: bool = False) -> torch.Tensor:
    """(1, D, H, W) float32 from a 3-D array; checks dimensionality and finiteness; optional min-max to [0, 1]."""
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"{path}: expected a 3-D image, found shape {array.shape}")
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{path}: image has {int((~torch.isfinite(x)).sum())} non-finite voxels")
    if normalize:
        lo, hi = x.min(), x.max()
        x = (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)
    return x[None]


def label_tensor(array: np.ndarray, path, like: torch.Tensor | None = None) -> torch.Tensor:
    """(1, D, H, W) int64 from a 3-D integer-valued array; checks shape against the image and non-emptiness."""
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"{path}: expected a 3-D label map, found shape {array.shape}")
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise ValueError(f"{path}: label map has non-integer values")
    seg = torch.from_numpy(np.ascontiguousarray(array).astype(np.int64))[None]
    if like is not None and seg.shape != like.shape:
        raise ValueError(f"{path}: label map has shape {tuple(seg.shape[1:])} but its image has "
                         f"{tuple(like.shape[1:])}")
    if not bool((seg != 0).any()):
        raise ValueError(f"{path}: label map is empty (all zero)")
    return seg


def remap(seg: torch.Tensor, codes) -> torch.Tensor:
    """Replace code codes[i] by i; anything not listed becomes 0 (TransMorph's `seg_norm`)."""
    lut = torch.zeros(int(max(codes)) + 1 if len(codes) else 1, dtype=torch.int64)
    lut[torch.as_tensor(codes)] = torch.arange(len(codes))
    inside = (seg >= 0) & (seg < lut.numel())
    return torch.where(inside, lut[seg.clamp(0, lut.numel() - 1)], torch.zeros_like(seg))


def need_dir(path: Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: {what} folder not found")
    return path
