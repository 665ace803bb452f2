"""Losses: LNCC (Eq. 6), the smoothness regulariser (Eq. 4), the OFG loss (Eq. 3) (notebook 03).

LNCC follows the published OFG / TransMorph / VoxelMorph code (`NCC_vxm`), not a normalised variant:
local sums over a window^3 box with zero padding (so border windows are divided by the full window size),
cc = cross^2 / (var_fixed * var_warped + eps), mean over all voxels, negated: about -1 at a perfect match,
0 for unrelated images, minimised. The local sums are computed with a separable box filter (sums of shifted
slices) instead of the published dense window^3 convolution, and the backward pass is written by hand, which
needs three box filters instead of autograd's five transposed convolutions.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _checks

__all__ = ["box_sum", "lncc", "FixedLNCC", "grad_l2", "ofg_loss", "unsupervised_loss"]


def box_sum(x: torch.Tensor, window: int) -> torch.Tensor:
    """Sum of each voxel's window^n neighbourhood (zero padding, same size), separably along every spatial axis."""
    r = window // 2
    for axis in range(2, x.dim()):
        n = x.shape[axis]
        out = x.clone()
        for s in range(1, min(r, n - 1) + 1):
            out.narrow(axis, s, n - s).add_(x.narrow(axis, 0, n - s))
            out.narrow(axis, 0, n - s).add_(x.narrow(axis, s, n - s))
        x = out
    return x


def _check_window(window) -> int:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd integer (the box is centred on each voxel), got {window!r}")
    return window


def _fixed_stats(fixed: torch.Tensor, window: int):
    """Local sum, mean and variance-times-n of the fixed image (they never change during refinement)."""
    c = fixed.shape[1]
    n = float(window ** (fixed.dim() - 2))
    s_i, s_ii = box_sum(torch.cat([fixed, fixed * fixed], 1), window).split(c, 1)
    mean_i = s_i / n
    var_i = torch.addcmul(s_ii, s_i, mean_i, value=-1.0)
    return s_i, mean_i, var_i


class _LNCC(torch.autograd.Function):
    """-mean(cc) with a hand-written backward; `stats` = `_fixed_stats(fixed)` when precomputed.

    Notebook 03, section 5, derives the backward (there f = fixed = I, w = warped = J). Per voxel, with box
    sums S_x = box(x) over n = window^dims voxels, den = var_I var_J + eps and M = fixed.numel() terms in the mean:
        d(loss)/d(cc)    = -1 / M
        d(cc)/d(cross)   = 2 cross / den                   = 2 A
        d(cc)/d(var_J)   = -cross^2 var_I / den^2          = -B        (B = cc var_I / den)
        d(cc)/d(S_IJ)    = 2 A                                         (cross = S_IJ - mean_I S_J)
        d(cc)/d(S_JJ)    = -B                                          (var_J = S_JJ - S_J^2 / n)
        d(cc)/d(S_J)     = -2 A mean_I + 2 B S_J / n = 2 (B S_J / n - A mean_I)
    Forward stores half of the last three, coef = (c0, c1, c2) = (B S_J / n - A mean_I, -B / 2, A). The sums
    are box filters of J, J^2 and I J, and a zero-padded box is symmetric, hence its own adjoint, so
        d(loss)/dJ = -(2 / M) (box(c0) + 2 J box(c1) + I box(c2)),
    which is `backward`. The gradient with respect to I is the same with I and J exchanged.
    """

    @staticmethod
    def forward(ctx, fixed, warped, window, eps, stats):
        c = fixed.shape[1]
        n = float(window ** (fixed.dim() - 2))
        s_i, mean_i, var_i = stats if stats is not None else _fixed_stats(fixed, window)
        moments = torch.empty((warped.shape[0], 3 * c, *warped.shape[2:]), dtype=warped.dtype, device=warped.device)
        m_j, m_jj, m_ij = moments.split(c, 1)
        m_j.copy_(warped)
        torch.mul(warped, warped, out=m_jj)
        torch.mul(fixed, warped, out=m_ij)
        s_j, s_jj, s_ij = box_sum(moments, window).split(c, 1)  # = S_J, S_JJ, S_IJ
        cross = torch.addcmul(s_ij, mean_i, s_j, value=-1.0)  # = S_IJ - mean_I * S_J = cross
        var_j = torch.addcmul(s_jj, s_j, s_j, value=-1.0 / n)  # = S_JJ - S_J^2 / n = var_J
        den = torch.mul(var_i, var_j).add_(eps)  # = var_I * var_J + eps = den
        cc = torch.mul(cross, cross).div_(den)  # = cross^2 / den = cc
        loss = -cc.mean()  # = -sum(cc) / M
        need_i, need_j = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        saved = []
        if need_j or need_i:
            a = cross.div_(den)                      # = cross / den = A, in place of cross (no longer needed)
            if need_j:
                coef = moments                       # reuse the moments buffer for the three coefficients
                b = torch.div(cc, den).mul_(var_i)   # = cc * var_I / den = B
                c0, c1, c2 = coef.split(c, 1)
                # = -A * mean_I + B * S_J / n = d(cc)/d(S_J) / 2
                torch.mul(a, mean_i, out=c0).neg_().addcmul_(b, s_j, value=1.0 / n)
                torch.mul(b, -0.5, out=c1)           # = -B / 2 = d(cc)/d(S_JJ) / 2
                c2.copy_(a)                          # = A = d(cc)/d(S_IJ) / 2
                saved.append(coef)
            if need_i:                               # symmetric in (fixed, warped)
                b_i = cc.div_(den).mul_(var_j)       # = cc * var_J / den = B_I (in place of cc, no longer needed)
                coef_i = torch.empty_like(moments)
                c0, c1, c2 = coef_i.split(c, 1)
                # = -A * S_J / n + B_I * S_I / n = -A * mean_J + B_I * S_I / n = d(cc)/d(S_I) / 2
                torch.mul(a, s_j, out=c0).mul_(-1.0 / n).addcmul_(b_i, s_i, value=1.0 / n)
                torch.mul(b_i, -0.5, out=c1)         # = -B_I / 2 = d(cc)/d(S_II) / 2
                c2.copy_(a)                          # = A = d(cc)/d(S_IJ) / 2
                saved.append(coef_i)
        ctx.save_for_backward(fixed, warped, *saved)
        ctx.window = window
        ctx.flags = (need_i, need_j)
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        fixed, warped, *coefs = ctx.saved_tensors
        need_i, need_j = ctx.flags
        c = fixed.shape[1]
        scale = grad_out * (-2.0 / fixed.numel())  # = d(loss)/d(cc) = -1 / M, times the 2 halved out of coef
        pairs = ([(warped, fixed)] if need_j else []) + ([(fixed, warped)] if need_i else [])
        grads = []
        for coef, (own, other) in zip(coefs, pairs):
            # adjoint of S_x = box(x): box itself, since a zero-padded box is symmetric
            b0, b1, b2 = box_sum(coef, ctx.window).split(c, 1)  # = box(c0), box(c1), box(c2)
            # = box(c0) * d(S_J)/dJ + box(c1) * d(S_JJ)/dJ + box(c2) * d(S_IJ)/dJ = box(c0) + 2 J box(c1) + I box(c2)
            # with J = own, I = other (swapped for the gradient of the fixed image); times scale = d(loss)/dJ
            grads.append(torch.addcmul(b0, own, b1, value=2.0).addcmul_(other, b2).mul_(scale))
        grad_j = grads.pop(0) if need_j else None
        grad_i = grads.pop(0) if need_i else None
        return grad_i, grad_j, None, None, None


def _check_pair(fixed, warped, window, validate):
    _check_window(window)
    _checks.volume("fixed", fixed)
    _checks.volume("warped", warped)
    _checks.same_shape("warped image", warped, "fixed", fixed)
    if fixed.dtype != warped.dtype:
        raise TypeError(f"fixed is {fixed.dtype} but warped is {warped.dtype}; cast one to the other")
    if validate:
        _checks.finite("fixed", fixed)
        _checks.finite("warped", warped)


def lncc(fixed: torch.Tensor, warped: torch.Tensor, window: int = 9, eps: float = 1e-5,
         validate: bool = True, reduction: str = "mean") -> torch.Tensor:
    """Negative local normalised cross-correlation (Eq. 6), the project's one LNCC; minimised.

    `fixed`, `warped`: (B, C, D, H, W) or (B, C, H, W), same shape and dtype. `window` is the odd box size
    (9 in the paper). `validate=False` skips the finiteness scan (a device sync on GPU) in hot loops.
    `reduction="mean"` (the loss, a scalar in about [-1, 0]): gradients flow to both inputs through the
    hand-written backward of `_LNCC` (derived in notebook 03). `reduction="none"`: the per-voxel loss -cc,
    shape of the inputs, whose mean is the loss (plain autograd; for maps and plots: cc is in [0, 1]).
    The published dense-convolution formula it is tested and timed against is `benchmarks/published.py`.
    """
    _checks.one_of("reduction", reduction, ("mean", "none"))
    _check_pair(fixed, warped, window, validate)
    if reduction == "none":
        c = fixed.shape[1]
        n = float(window ** (fixed.dim() - 2))
        s_i, s_j, s_ii, s_jj, s_ij = box_sum(torch.cat([fixed, warped, fixed * fixed, warped * warped,
                                                         fixed * warped], 1), window).split(c, 1)
        cross = s_ij - s_i * s_j / n
        return -(cross * cross / ((s_ii - s_i * s_i / n) * (s_jj - s_j * s_j / n) + eps))
    return _LNCC.apply(fixed, warped, window, eps, None)


class FixedLNCC:
    """LNCC against one fixed image whose local sums are computed once (the inner optimizer's fast path)."""

    def __init__(self, fixed: torch.Tensor, window: int = 9, eps: float = 1e-5):
        _check_pair(fixed, fixed, window, True)
        self.fixed, self.window, self.eps = fixed.detach(), window, eps
        self.stats = _fixed_stats(self.fixed, window)

    def __call__(self, warped: torch.Tensor) -> torch.Tensor:
        _checks.same_shape("warped image", warped, "fixed", self.fixed)
        return _LNCC.apply(self.fixed, warped, self.window, self.eps, self.stats)


class _GradL2(torch.autograd.Function):
    """Forward: sum over axes of mean(diff^2) / n_axes. Backward by hand (autograd's is four times slower)."""

    @staticmethod
    def forward(ctx, disp):
        nsp = disp.dim() - 2
        total = disp.new_zeros(())
        for axis in range(2, 2 + nsp):
            d = disp.diff(dim=axis)
            total = total + torch.linalg.vector_norm(d).square() / d.numel()
        ctx.save_for_backward(disp)
        return total / nsp

    @staticmethod
    def backward(ctx, grad_out):
        (disp,) = ctx.saved_tensors
        nsp = disp.dim() - 2
        grad = torch.zeros_like(disp)
        for axis in range(2, 2 + nsp):
            n = disp.shape[axis]
            d = disp.diff(dim=axis)
            d.mul_(grad_out * (2.0 / (d.numel() * nsp)))
            grad.narrow(axis, 1, n - 1).add_(d)
            grad.narrow(axis, 0, n - 1).sub_(d)
        return grad


def grad_l2(disp: torch.Tensor) -> torch.Tensor:
    """Smoothness regulariser (Eq. 4) as the published code computes it.

    Mean of squared forward differences along each spatial axis, averaged over the axes (`Grad3d`, l2).
    """
    _checks.volume("disp", disp)
    if min(disp.shape[2:]) < 2:
        raise ValueError(f"grad_l2 needs at least 2 voxels along every axis, got shape {tuple(disp.shape)}")
    return _GradL2.apply(disp)


def ofg_loss(phi_pred: torch.Tensor, phi_opt: torch.Tensor, ofg_reg: float = 0.02, **renamed) -> torch.Tensor:
    """Eq. 3: MSE(phi_pred, stopgrad(phi_opt)) + ofg_reg * grad_l2(phi_pred) (lambda = 0.02 in the paper)."""
    _checks.renamed("ofg_loss", renamed, {"reg_weight": "ofg_reg"})
    _checks.same_shape("phi_pred", phi_pred, "phi_opt", phi_opt)
    return F.mse_loss(phi_pred, phi_opt.detach()) + ofg_reg * grad_l2(phi_pred)


def unsupervised_loss(fixed: torch.Tensor, warped: torch.Tensor, disp: torch.Tensor,
                      unsup_reg: float = 1.0, window: int = 9, terms: bool = False, **renamed):
    """The unsupervised baseline: lncc(fixed, warped) + unsup_reg * grad_l2(disp) (lambda = 1 as published).

    With `terms=True`, returns (loss, similarity, regulariser) so a caller can log each term. (The instance
    optimizer's energy is the same sum with `inner_reg`.)
    """
    _checks.renamed("unsupervised_loss", renamed, {"reg_weight": "unsup_reg"})
    sim, reg = lncc(fixed, warped, window, validate=False), grad_l2(disp)
    loss = sim + unsup_reg * reg
    return (loss, sim, reg) if terms else loss
