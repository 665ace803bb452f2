"""The instance optimizer that makes OFG's pseudo ground truth (section 3.4, Eq. 2 and 5; notebook 04).

A copy of the predicted displacement is the only parameter. Each step warps `moving` with it, evaluates
E = lncc(fixed, moving o phi) + reg_weight * grad_l2(phi) and takes one optimizer step (Adam with amsgrad, as in
the published code, or SGD). Nothing here is connected to the network's graph: the result is detached.
"""
from __future__ import annotations

import contextlib
import math
import os
import warnings
from dataclasses import dataclass, field

import numpy as np

import torch
import torch.nn.functional as F

from . import _checks, _refine_cpu
from .losses import FixedLNCC, _check_window, grad_l2
from .transform import normalised_grid, resize_disp

__all__ = ["refine", "refine_with_history", "Refined", "OPTIMIZERS", "cpu_kernels", "set_cpu_kernels",
           "cpu_kernels_set"]

OPTIMIZERS = ("adam", "sgd")


def check_config(cfg, need) -> None:
    """The instance optimizer's keys of a config (`need(ok, key, what)` raises `key must be what, got ...`)."""
    need(cfg.inner_optimizer in OPTIMIZERS, "inner_optimizer", f"one of {', '.join(OPTIMIZERS)}")
    need(cfg.inner_steps >= 0, "inner_steps", "at least 0")
    for key in ("inner_lr", "inner_reg"):
        need(math.isfinite(getattr(cfg, key)) and getattr(cfg, key) >= 0, key, "a finite number >= 0")

# The CPU kernels of `_refine_cpu` (issue 21): on by default where numba imports; OFG_CPU_KERNELS=0 or
# `set_cpu_kernels(False)` keeps PyTorch's path (the baseline of benchmarks/bench_cpu.py). CUDA never uses them.
_CPU_KERNELS = os.environ.get("OFG_CPU_KERNELS", "1") != "0"


def set_cpu_kernels(on: bool) -> bool:
    """Turn the fused CPU inner loop on or off for the whole process; returns the old setting."""
    global _CPU_KERNELS
    old, _CPU_KERNELS = _CPU_KERNELS, bool(on)
    return old


def cpu_kernels() -> bool:
    """Whether `refine` runs CPU tensors through the fused kernels (needs numba; see `_refine_cpu`)."""
    return _CPU_KERNELS and _refine_cpu.AVAILABLE


@contextlib.contextmanager
def cpu_kernels_set(on: bool):
    """`with cpu_kernels_set(False): ...` runs the block with the switch set, and restores it after."""
    old = set_cpu_kernels(on)
    try:
        yield
    finally:
        set_cpu_kernels(old)


def _kernels_apply(disp, moving, downsample) -> bool:
    return (cpu_kernels() and downsample == 1 and disp.device.type == "cpu" and moving.shape[1] == 1
            and disp.dtype in (torch.float32, torch.float64) and disp.dim() in (4, 5))


@dataclass
class Refined:
    """Result of `refine_with_history`: the field, the energy before each step, and whether all went well."""

    disp: torch.Tensor
    energies: list = field(default_factory=list)
    final_energy: float | None = None
    finite: bool = True
    steps_taken: int = 0
    coarse: torch.Tensor | None = None   # with downsample > 1: the optimised coarse field (disp is it upsampled)


def _make_optimizer(name: str, params, lr: float):
    if _checks.one_of("optimizer", name, OPTIMIZERS) == "adam":
        try:  # one fused kernel per step where torch has it (CPU and CUDA float types)
            return torch.optim.Adam(params, lr=lr, amsgrad=True, fused=True)
        except (RuntimeError, ValueError):
            return torch.optim.Adam(params, lr=lr, amsgrad=True)
    return torch.optim.SGD(params, lr=lr)


def _check_inputs(disp, moving, fixed, steps, lr, reg_weight, window, downsample=1):
    _checks.volume("moving", moving)
    _checks.volume("fixed", fixed)
    _checks.same_shape("moving image", moving, "fixed", fixed)
    _checks.volume("disp", disp)
    _checks.disp_for("moving", moving, disp)
    if not (moving.dtype == fixed.dtype == disp.dtype):
        raise TypeError(f"disp, moving and fixed must share a dtype, got {disp.dtype}, {moving.dtype}, {fixed.dtype}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"inner_steps must be a non-negative integer, got {steps!r}")
    for name, v in (("inner_lr", lr), ("inner_reg", reg_weight)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    _check_window(window)
    for name, x in (("disp", disp), ("moving", moving), ("fixed", fixed)):
        _checks.finite(name, x)
    if isinstance(downsample, bool) or not isinstance(downsample, int) or downsample < 1:
        raise ValueError(f"downsample must be a positive integer (1: full resolution), got {downsample!r}")
    if min(moving.shape[2:]) // downsample < 2:
        raise ValueError(f"downsample {downsample} leaves fewer than 2 voxels along an axis of {tuple(moving.shape[2:])}")


_RENAMED = {"steps": "inner_steps", "lr": "inner_lr", "reg_weight": "inner_reg"}


def refine_with_history(disp: torch.Tensor, moving: torch.Tensor, fixed: torch.Tensor, inner_steps: int = 10,
                        inner_lr: float = 0.1, inner_reg: float = 1.0, optimizer: str = "adam", window: int = 9,
                        final_energy: bool = False, downsample: int = 1, coarse_energy: bool = False,
                        **renamed) -> Refined:
    """Run the instance optimizer and keep the energy before every step (see `refine`).

    `downsample=k` > 1 is the paper's DownSample optimizer (Sec. 4.6, Table 4): the field is resized to 1/k of
    the image size (`resize_disp`, which rescales voxel units), that coarse field is the parameter, and every
    step warps with it upsampled back to full size; the result is the upsampled field. Fewer parameters, and
    the prediction's fine detail is lost in the first resize. The coarse field is in coarse voxels, so Adam's lr
    is divided by k: a step moves the full-size field as far as at full resolution (only the resolution
    differs). The energies are those of the upsampled coarse field (the first is the downsampled start's).

    `coarse_energy=True` evaluates the energy at the coarse resolution too: moving and fixed are resized to 1/k
    (linear, the grid of `resize_disp`), every step warps the coarse image with the coarse field, and only the
    result is upsampled. This is what makes the design fast (the paper's 0.10 s against 3.23 s); the default
    keeps the full-resolution energy (the design of the committed ablation tables). Energies, the final one
    included, are then coarse energies.
    """
    _checks.renamed("refine_with_history", renamed, _RENAMED)
    steps, lr, reg_weight = inner_steps, inner_lr, inner_reg
    _check_inputs(disp, moving, fixed, steps, lr, reg_weight, window, downsample)
    size = tuple(moving.shape[2:])
    if coarse_energy and downsample > 1:
        coarse = [s // downsample for s in size]
        mode = "trilinear" if len(size) == 3 else "bilinear"
        moving, fixed = (F.interpolate(x.detach(), size=coarse, mode=mode, align_corners=True) for x in (moving, fixed))
        r = refine_with_history(resize_disp(disp.detach(), coarse), moving, fixed, steps, lr / downsample, reg_weight,
                                optimizer, window, final_energy)
        r.coarse, r.disp = r.disp, resize_disp(r.disp, size)
        return r
    if _kernels_apply(disp, moving, downsample):
        return _refine_with_kernels(disp, moving, fixed, steps, lr, reg_weight, optimizer, window, final_energy)
    moving = moving.detach()
    similarity = FixedLNCC(fixed.detach(), window)
    start = disp.detach().clone()
    if downsample > 1:
        start = resize_disp(start, [s // downsample for s in size])
    full = (lambda p: p) if downsample == 1 else (lambda p: resize_disp(p, size))  # noqa: E731
    result = Refined(disp=start)
    with torch.enable_grad():
        phi = result.disp.requires_grad_(True)
        opt = _make_optimizer(optimizer, [phi], lr / downsample)
        for _ in range(steps):
            opt.zero_grad(set_to_none=False)
            field = full(phi)
            warped = F.grid_sample(moving, normalised_grid(field), mode="bilinear", padding_mode="zeros",
                                   align_corners=True)
            energy = similarity(warped) + reg_weight * grad_l2(field)
            energy.backward()
            # Stop before a step that would make the field non-finite: phi is still the last finite field.
            # (A sum is NaN or Inf when any element is; one reduction instead of an elementwise scan.)
            if not bool(torch.isfinite(energy.detach() + phi.grad.sum())):
                result.finite = False
                warnings.warn(f"refine: non-finite energy or gradient at step {result.steps_taken}; "
                              "returning the last finite field", RuntimeWarning, stacklevel=3)
                break
            result.energies.append(float(energy.detach()))
            opt.step()
            result.steps_taken += 1
    result.disp = full(phi.detach())
    if downsample > 1:
        result.coarse = phi.detach()
    if final_energy and result.finite:
        with torch.no_grad():
            warped = F.grid_sample(moving, normalised_grid(result.disp), mode="bilinear", padding_mode="zeros",
                                   align_corners=True)
            result.final_energy = float(similarity(warped) + reg_weight * grad_l2(result.disp))
    return result


def _refine_with_kernels(disp, moving, fixed, steps, lr, reg_weight, optimizer, window, final_energy) -> Refined:
    """`refine_with_history` through `_refine_cpu` (same results to float32 rounding, same warnings)."""
    _checks.one_of("optimizer", optimizer, OPTIMIZERS)
    phi = disp.detach().to(memory_format=torch.contiguous_format).clone().numpy()
    mov, fix = (np.ascontiguousarray(x.detach().numpy()) for x in (moving, fixed))
    result = Refined(disp=torch.from_numpy(phi))

    def on_energy(energy: float, grad_sum: float) -> bool:
        if not math.isfinite(energy + grad_sum):
            result.finite = False
            warnings.warn(f"refine: non-finite energy or gradient at step {result.steps_taken}; "
                          "returning the last finite field", RuntimeWarning, stacklevel=4)
            return False
        result.energies.append(energy)
        result.steps_taken += 1
        return True

    final = _refine_cpu.run(phi, mov, fix, steps, lr, reg_weight, optimizer, window, on_energy, final_energy)
    if final_energy and result.finite:
        result.final_energy = final
    return result


def refine(disp: torch.Tensor, moving: torch.Tensor, fixed: torch.Tensor, inner_steps: int = 10,
           inner_lr: float = 0.1, inner_reg: float = 1.0, optimizer: str = "adam", window: int = 9,
           downsample: int = 1, coarse_energy: bool = False, **renamed) -> torch.Tensor:
    """Refine `disp` (B, 3, D, H, W, voxels) toward aligning `moving` to `fixed`; return it detached.

    `inner_steps` optimizer steps (10 in the paper) of Adam with amsgrad (`optimizer="adam"`, the published
    choice) or plain SGD, learning rate `inner_lr` (0.1), on lncc + inner_reg * grad_l2 (inner_reg 1). The
    argument names are the config keys (`ofg_lib.config`); the old `steps=`, `lr=`, `reg_weight=` are refused
    with the new name. The input tensor is never modified. `downsample=k` optimises the field at 1/k resolution
    (see `refine_with_history`). If a step would make the field non-finite, it stops, warns, and returns the last
    finite field.
    """
    _checks.renamed("refine", renamed, _RENAMED)
    return refine_with_history(disp, moving, fixed, inner_steps, inner_lr, inner_reg, optimizer, window,
                               downsample=downsample, coarse_energy=coarse_energy).disp
