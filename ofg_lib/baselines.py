"""Classical registration in our convention: SyN, elastix, NiftyReg and our own optimizer run to convergence.

`register_classical(method, moving, fixed, **options)` returns the displacement in the project's convention (voxels,
(B, n_dims, *spatial), `warp(moving, disp)` is the result; `ofg_lib.transform`), so every metric and figure treats
a classical method like a network. `Baseline(method)` wraps it as a "model" that takes the network's input
(B, 2, *spatial) and keeps the seconds of each call, so `evaluate(Baseline("syn"), dataset, time_repeats=0)` scores
it exactly as a network is scored (`time_repeats=0`: the seconds come from the calls themselves) (notebook 06, the report of `ofg_lib.report`).

The toolkits work in physical space, each with its own axis order: the images are handed over with spacing 1,
origin 0 and identity direction, so physical coordinates are voxel indices, and the transform each returns is
read back as a displacement sampled on the fixed image's voxels:
- ANTsPy keeps numpy's axis order (physical x = array axis 0) and its warp field's component i is along axis i;
- ITK (elastix) reverses it: `itk.image_from_array` puts array axis 0 on physical z, so the field's
  components (x, y, z) are our channels (2, 1, 0);
- NiftyReg reads NIfTI files; with an identity affine its world axes are the array axes.
Each conversion is checked against the toolkit's own nearest-neighbour resampling of the moving labels
(tests/test_baselines.py; notebook 06 prints the agreement).

Settings (the paper's Sec. 4.1 where it gives them):
- `"syn"`: ANTs SyN without an affine stage (the embedded and preprocessed data are affinely aligned), mean
  squares metric ("MSE", as the paper), three scales of 160, 80, 40 iterations (the paper), ANTsPy's defaults
  otherwise (gradient step 0.2, flow sigma 3, total sigma 0, shrink factors 4x2x1, smoothing 2x1x0 voxels).
- `"elastix"`: elastix's default B-spline parameter map (`GetDefaultParameterMap("bspline")`: 4 resolutions,
  256 iterations of adaptive stochastic gradient descent, Mattes mutual information + bending energy with weight
  1, final grid spacing 10 voxels), random seed fixed; the paper did not run elastix.
- `"niftyreg"`: `reg_f3d` with sum of squared differences and three levels of 300 iterations (the paper), then
  `reg_transform -disp`; used when the NiftyReg binaries are on the PATH (see the README for building them).
- `"instance"`: the OFG inner optimizer (`ofg_lib.optimizer.refine`: Adam with amsgrad on LNCC + lambda ||grad
  u||^2) from the identity, coarse to fine (1/4, 1/2, full resolution), a few hundred steps: the
  optimisation-only row, and the ceiling OFG's ten steps per training step approach.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from . import _checks
from .optimizer import refine
from .transform import warp

__all__ = ["METHODS", "available", "register_classical", "Baseline", "SYN", "INSTANCE", "NIFTYREG", "QUICK"]

METHODS = ("syn", "elastix", "niftyreg", "instance")
SYN = {"syn_metric": "meansquares", "reg_iterations": (160, 80, 40)}
INSTANCE = {"levels": (4, 2, 1), "steps": (200, 100, 50), "lr": 0.1, "reg_weight": 1.0, "window": 9}
NIFTYREG = {"levels": 3, "iterations": 300}
# Shortened schedules for checks whose result does not depend on convergence (the transform conventions).
QUICK = {"syn": {"reg_iterations": (40, 20, 10)},
         "elastix": {"NumberOfResolutions": 2, "MaximumNumberOfIterations": 64},
         "niftyreg": {"levels": 2, "iterations": 50},
         "instance": {"levels": (2, 1), "steps": (60, 30)}}


def available(method: str) -> str | None:
    """None when `method` can run here, else the reason it cannot (e.g. "not installed: ...")."""
    _checks.one_of("method", method, METHODS)
    if method == "syn":
        try:
            import ants  # noqa: F401
        except ImportError:
            return "not installed: pip install antspyx (a runtime dependency of ofg-lib)"
    if method == "elastix":
        try:
            import itk
            itk.ParameterObject  # noqa: B018  (itk-elastix adds it; plain itk does not)
        except (ImportError, AttributeError):
            return "not installed: pip install itk-elastix (a runtime dependency of ofg-lib)"
    if method == "niftyreg":
        missing = [b for b in ("reg_f3d", "reg_transform", "reg_resample") if shutil.which(b) is None]
        if missing:
            return f"not installed: {', '.join(missing)} not on the PATH (README: building NiftyReg)"
    return None


def _volumes(moving, fixed):
    for name, x in (("moving", moving), ("fixed", fixed)):
        _checks.volume(name, x)
        _checks.finite(name, x)
    if moving.shape != fixed.shape or moving.shape[1] != 1:
        raise ValueError(f"moving {tuple(moving.shape)} and fixed {tuple(fixed.shape)} must be the same "
                         "single-channel (B, 1, *spatial) shape")


def register_classical(method: str, moving: torch.Tensor, fixed: torch.Tensor, threads: int | None = None,
             labels: torch.Tensor | None = None, **options):
    """The displacement (B, n_dims, *spatial), voxels, that aligns `moving` to `fixed` by a classical method.

    `moving`, `fixed`: (B, 1, *spatial) tensors (2-D or 3-D), registered pair by pair. `threads` caps the
    toolkit's threads for this call (default: its own); `instance` runs on torch's threads
    (`torch.set_num_threads`). `options` override the method's settings (module docstring): `syn` takes ANTsPy
    `registration` keywords, `elastix` parameter-map entries (e.g. `MaximumNumberOfIterations="64"`), `niftyreg`
    `levels` and `iterations`, `instance` the keys of `INSTANCE`.

    With `labels` (a moving label map, (B, 1, *spatial)), it returns `(disp, toolkit_labels)`: the labels
    resampled by the toolkit itself (nearest neighbour, its own transform), the check that our reading of its
    transform is right (`instance` has no toolkit: it returns our own `warp`).
    """
    reason = available(method)
    if reason:
        raise RuntimeError(f"{method}: {reason}")
    _volumes(moving, fixed)
    if labels is not None and (labels.shape[0] != moving.shape[0] or labels.shape[2:] != moving.shape[2:]):
        raise ValueError(f"labels {tuple(labels.shape)} must match moving {tuple(moving.shape)}")
    if method == "instance":   # torch all the way: no conversion, no toolkit to check against
        disp = _instance(moving, fixed, **options)
        return disp if labels is None else (disp, warp(labels, disp, mode="nearest"))
    fn = {"syn": _syn, "elastix": _elastix, "niftyreg": _niftyreg}[method]
    out, warped = [], []
    for b in range(moving.shape[0]):
        m = moving[b, 0].detach().cpu().numpy().astype(np.float32)
        f = fixed[b, 0].detach().cpu().numpy().astype(np.float32)
        seg = None if labels is None else labels[b, 0].detach().cpu().numpy().astype(np.float32)
        field, seg = fn(m, f, threads, seg, **options)
        out.append(torch.from_numpy(np.ascontiguousarray(field, dtype=np.float32)))
        if seg is not None:
            warped.append(torch.from_numpy(np.rint(seg).astype(np.int64))[None])
    disp = torch.stack(out).to(moving.device)
    return disp if labels is None else (disp, torch.stack(warped).to(labels.device).to(labels.dtype))


def _syn(m: np.ndarray, f: np.ndarray, threads, seg=None, **options):
    import ants
    settings = {**SYN, **options}
    fixed, moving = ants.from_numpy(f), ants.from_numpy(m)
    key, before = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", os.environ.get("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")
    if threads:
        os.environ[key] = str(threads)    # ANTsPy passes it to antsRegistration, for this call only
    try:
        result = ants.registration(fixed, moving, type_of_transform="SyNOnly", verbose=False, **settings)
    finally:
        if threads and before is None:
            del os.environ[key]
        elif threads:
            os.environ[key] = before
    try:
        warps = [p for p in result["fwdtransforms"] if p.endswith((".nii.gz", ".nii"))]
        affines = [p for p in result["fwdtransforms"] if p.endswith(".mat")]
        for p in affines:  # SyNOnly writes an identity affine; anything else would need composing
            params = ants.read_transform(p).parameters
            n = f.ndim
            if not np.allclose(params, np.concatenate([np.eye(n).ravel(), np.zeros(n)]), atol=1e-6):
                raise RuntimeError(f"SyN returned a non-identity affine {params}: compose it before reading")
        field = ants.image_read(warps[0]).numpy()          # (*spatial, n): component i along array axis i
        if seg is not None:
            seg = ants.apply_transforms(fixed, ants.from_numpy(seg), result["fwdtransforms"],
                                        interpolator="nearestNeighbor").numpy()
    finally:
        for p in result["fwdtransforms"] + result["invtransforms"]:
            Path(p).unlink(missing_ok=True)
    return np.moveaxis(field, -1, 0), seg


def _elastix_map(options):
    import itk
    params = itk.ParameterObject.New()
    pmap = params.GetDefaultParameterMap("bspline")
    pmap["RandomSeed"] = ("121212",)
    for key, value in options.items():
        pmap[key] = tuple(str(v) for v in value) if isinstance(value, (list, tuple)) else (str(value),)
    if "NumberOfResolutions" in options and "GridSpacingSchedule" not in options:
        # the default schedule has one factor per default resolution: keep its finest ones
        pmap["GridSpacingSchedule"] = pmap["GridSpacingSchedule"][-int(options["NumberOfResolutions"]):]
    params.AddParameterMap(pmap)
    return params


def _elastix(m: np.ndarray, f: np.ndarray, threads, seg=None, **options):
    import itk
    fixed, moving = itk.image_from_array(f), itk.image_from_array(m)
    # ITK's process-wide default, restored afterwards (elastix_registration_method(number_of_threads=2) crashes
    # itk-elastix 0.25.4 with a segmentation fault: measured)
    before = itk.MultiThreaderBase.GetGlobalDefaultNumberOfThreads()
    if threads:
        itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(int(threads))
    try:
        with tempfile.TemporaryDirectory(prefix="ofg-elastix-") as tmp:   # transformix writes its field to disk
            _, transform = itk.elastix_registration_method(fixed, moving, parameter_object=_elastix_map(options),
                                                           log_to_console=False)
            field = itk.array_from_image(itk.transformix_deformation_field(moving, transform, output_directory=tmp))
            if seg is not None:
                transform.SetParameter("ResampleInterpolator", "FinalNearestNeighborInterpolator")
                seg = itk.array_from_image(itk.transformix_filter(itk.image_from_array(seg), transform,
                                                                  output_directory=tmp))
    finally:
        itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(before)
    # field: (*spatial, n), components x, y, z
    return np.moveaxis(field[..., ::-1], -1, 0), seg      # ITK's x is numpy's last axis


def _nifti(array: np.ndarray, path: Path):
    import nibabel as nib
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))


def _niftyreg(m: np.ndarray, f: np.ndarray, threads, seg=None, levels: int = NIFTYREG["levels"],
              iterations: int = NIFTYREG["iterations"]):
    import nibabel as nib
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    with tempfile.TemporaryDirectory(prefix="ofg-niftyreg-") as tmp:
        tmp = Path(tmp)
        _nifti(f, tmp / "fixed.nii.gz")
        _nifti(m, tmp / "moving.nii.gz")
        run = [["reg_f3d", "-ref", "fixed.nii.gz", "-flo", "moving.nii.gz", "-cpp", "cpp.nii.gz",
                "-res", "warped.nii.gz", "--ssd", "-ln", str(levels), "-maxit", str(iterations)],
               ["reg_transform", "-ref", "fixed.nii.gz", "-disp", "cpp.nii.gz", "disp.nii.gz"]]
        if seg is not None:
            _nifti(seg, tmp / "labels.nii.gz")
            run.append(["reg_resample", "-ref", "fixed.nii.gz", "-flo", "labels.nii.gz", "-trans", "cpp.nii.gz",
                        "-inter", "0", "-res", "labels_warped.nii.gz"])
        for cmd in run:
            done = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
        field = np.asarray(nib.load(str(tmp / "disp.nii.gz")).dataobj, dtype=np.float32)
        if seg is not None:
            seg = np.asarray(nib.load(str(tmp / "labels_warped.nii.gz")).dataobj, dtype=np.float32)
    # NIfTI vector images are (*spatial, 1, n) (x, y, z world = array axes with the identity affine); NiftyReg
    # writes world displacements in the NIfTI (RAS) frame, which the identity affine makes the voxel frame.
    field = field.reshape(*f.shape, f.ndim)
    return np.moveaxis(field, -1, 0), seg


def _instance(moving, fixed, levels=INSTANCE["levels"], steps=INSTANCE["steps"], lr=INSTANCE["lr"],
              reg_weight=INSTANCE["reg_weight"], window=INSTANCE["window"]) -> torch.Tensor:
    if len(levels) != len(steps):
        raise ValueError(f"levels {levels} and steps {steps} must have the same length (one count per level)")
    size = tuple(moving.shape[2:])
    disp = torch.zeros(moving.shape[0], len(size), *size, device=moving.device, dtype=moving.dtype)
    for k, n in zip(levels, steps):
        k = max(1, min(int(k), min(size) // 2))
        disp = refine(disp, moving, fixed, inner_steps=int(n), inner_lr=lr, inner_reg=reg_weight, window=window,
                          downsample=k)
    return disp


class Baseline(torch.nn.Module):
    """A classical method as a "model": `Baseline("syn")(x)` with x = cat([moving, fixed], 1) gives the displacement.

    `seconds` keeps the wall time of each call (one pair each in `evaluate`): the inference time per pair;
    `first` the displacement of the first call (for figures, without registering that pair again).
    """

    def __init__(self, method: str, threads: int | None = None, **options):
        super().__init__()
        reason = available(method)
        if reason:
            raise RuntimeError(f"{method}: {reason}")
        self.method, self.threads, self.options = method, threads, options
        self.seconds: list[float] = []
        self.first: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 4 or x.shape[1] != 2:
            raise ValueError(f"a Baseline takes cat([moving, fixed], 1), shape (B, 2, *spatial); got {tuple(x.shape)}")
        start = time.perf_counter()
        with torch.enable_grad() if self.method == "instance" else torch.no_grad():
            disp = register_classical(self.method, x[:, :1], x[:, 1:], self.threads, **self.options)
        self.seconds.append(time.perf_counter() - start)
        if self.first is None:
            self.first = disp.detach().cpu()
        return disp

    def extra_repr(self) -> str:
        return f"method={self.method!r}, options={self.options}"
