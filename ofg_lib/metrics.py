"""Evaluation metrics: Dice, Jacobian determinant, folding, SDlogJ, end-point error (notebooks 02 and 06)."""
from __future__ import annotations

import statistics
import time

import torch

from . import _checks, synchronize

__all__ = ["dice", "jacobian_det", "count_folds", "fold_fraction", "sdlogj", "epe", "time_ms"]


ABSENT = ("skip", "zero", "one")


def dice(seg_a: torch.Tensor, seg_b: torch.Tensor, labels, absent: str = "skip") -> torch.Tensor:
    """Dice overlap per label, shape (len(labels),), float64.

    A label absent from both maps is undefined. `absent` says what to report for it:
    "skip" (default): NaN, so that `nanmean` leaves it out of the mean;
    "zero": 0, as the published IXI and OASIS evaluation (`dice_val_VOI`, 1e-5 added to the denominator);
    "one": 1, as the published LPBA40 evaluation. Table 1's averaging is reproduced with the published choice.
    """
    _checks.one_of("absent", absent, ABSENT)
    if seg_a.shape != seg_b.shape:
        raise ValueError(f"seg_a has shape {tuple(seg_a.shape)} but seg_b has {tuple(seg_b.shape)}")
    if seg_a.is_floating_point() or seg_b.is_floating_point():
        raise TypeError(f"label maps must be integer tensors, got {seg_a.dtype} and {seg_b.dtype}")
    labels = torch.as_tensor(list(labels), device=seg_a.device)
    if labels.numel() == 0:
        raise ValueError("labels is empty: give the label values to evaluate")
    a = seg_a.reshape(1, -1) == labels.view(-1, 1)
    b = seg_b.reshape(1, -1) == labels.view(-1, 1)
    inter = (a & b).sum(1).double()
    total = (a.sum(1) + b.sum(1)).double()
    fill = {"skip": float("nan"), "zero": 0.0, "one": 1.0}[absent]
    return torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.full_like(total, fill))


def _spatial_gradient(x: torch.Tensor, axis: int) -> torch.Tensor:
    """np.gradient along `axis`: central differences inside, one-sided at the two ends (unit spacing)."""
    n = x.shape[axis]
    if n < 2:
        raise ValueError(f"need at least 2 voxels along axis {axis} to differentiate, got shape {tuple(x.shape)}")
    g = torch.empty_like(x)
    g.narrow(axis, 0, 1).copy_(x.narrow(axis, 1, 1) - x.narrow(axis, 0, 1))
    g.narrow(axis, n - 1, 1).copy_(x.narrow(axis, n - 1, 1) - x.narrow(axis, n - 2, 1))
    if n > 2:
        g.narrow(axis, 1, n - 2).copy_((x.narrow(axis, 2, n - 2) - x.narrow(axis, 0, n - 2)) / 2)
    return g


def jacobian_det(disp: torch.Tensor) -> torch.Tensor:
    """Determinant of the Jacobian of x -> x + disp(x), shape (B, D, H, W) (or (B, H, W) in 2-D).

    Derivatives by central differences (one-sided at the borders, as `np.gradient`); identity added.
    """
    nsp = _checks.volume("disp", disp)
    if disp.shape[1] != nsp:
        raise ValueError(f"disp must have {nsp} channels for a {nsp}-D field, got shape {tuple(disp.shape)}")
    # J[i][j] = d(x_i + u_i) / d x_j
    J = [[_spatial_gradient(disp[:, i], 1 + j) + (1.0 if i == j else 0.0) for j in range(nsp)] for i in range(nsp)]
    if nsp == 2:
        return J[0][0] * J[1][1] - J[0][1] * J[1][0]
    return (J[0][0] * (J[1][1] * J[2][2] - J[1][2] * J[2][1])
            - J[0][1] * (J[1][0] * J[2][2] - J[1][2] * J[2][0])
            + J[0][2] * (J[1][0] * J[2][1] - J[1][1] * J[2][0]))


def fold_fraction(disp: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Share (0..1, not per cent) of voxels with det(J) <= 0, within `mask` when given; NaN for a non-finite field.

    Two counts are in use: the published Table 1 code counts all voxels (`mask=None`); the paper's text says
    non-background voxels (pass the fixed image's labelled voxels as `mask`). The evaluation reports both.
    """
    if not bool(torch.isfinite(disp).all()):
        return float("nan")
    return count_folds(jacobian_det(disp), mask)[1]


def count_folds(det: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[int, float]:
    """(number, share 0..1) of the voxels of a Jacobian determinant map `det` (`jacobian_det`) that fold
    (det <= 0), within `mask` (one value per voxel of `det`) when given; `fold_fraction` is the share."""
    if mask is not None:
        if mask.numel() != det.numel():
            raise ValueError(f"mask must have one value per voxel of the field, shape {tuple(det.shape)}, "
                             f"got shape {tuple(mask.shape)}")
        mask = mask.reshape(det.shape).bool()
        if not bool(mask.any()):
            raise ValueError("mask is empty: no voxel to count folds in")
        det = det[mask]
    folded = det <= 0
    return int(folded.sum()), float(folded.double().mean())


def sdlogj(disp: torch.Tensor) -> float:
    """Standard deviation of the log Jacobian determinant, Learn2Reg definition.

    As the Learn2Reg evaluation computes it: central differences, a 2-voxel border cropped, log of
    clip(det + 3, 1e-9, 1e9) (the +3 is theirs), population standard deviation. Batch entries pooled.
    """
    if not bool(torch.isfinite(disp).all()):
        return float("nan")
    det = jacobian_det(disp)
    if min(det.shape[1:]) <= 4:
        raise ValueError(f"sdlogj crops 2 voxels per side: the field is too small, shape {tuple(disp.shape)}")
    inner = det[(slice(None),) + (slice(2, -2),) * (det.dim() - 1)]
    return float(torch.log((inner.double() + 3).clamp(1e-9, 1e9)).std(correction=0))


def epe(disp: torch.Tensor, disp_true: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Mean end-point error in voxels between two displacements, within `mask` when given (NaN if non-finite)."""
    _checks.same_shape("disp", disp, "disp_true", disp_true)
    if not bool(torch.isfinite(disp).all()):
        return float("nan")
    err = (disp - disp_true).double().norm(dim=1)
    if mask is not None:
        err = err[mask.reshape(err.shape).bool()]
    return float(err.mean())


def time_ms(fn, device="cpu", repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of `fn()` in milliseconds, synchronising the device around each call."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3
