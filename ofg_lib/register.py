"""Register your own NIfTI pair with a trained run or a classical method and write NIfTI results.

    python -m ofg_lib.register --run RUN_DIR --moving m.nii.gz --fixed f.nii.gz [--moving-seg s.nii.gz] --out DIR
    python -m ofg_lib.register --method syn|elastix|niftyreg|instance --moving m.nii.gz --fixed f.nii.gz --out DIR

Writes `warped.nii.gz`, `warped_seg.nii.gz` (with `--moving-seg`), `disp_vox.nii.gz` and `disp_mm.nii.gz` (the
conventions: `ofg_lib.nifti`) with the fixed image's affine, and `register.json` (inputs, method, seconds, every file
written, and the Dice against `--fixed-seg` when `--moving-seg` is given too). The two images must share shape
and affine; for a trained run the shape must be the one it was trained at. Runs of the 2-D track cannot register
NIfTI volumes (they were trained on single slices).

`--out` is claimed while the registration runs (`ofg_lib.runs`), and the files a registration writes (OUTPUTS)
are removed from it just before the new ones are written (a registration that fails earlier leaves the old
ones), so a folder never mixes the outputs of two registrations.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import device as resolve_device
from . import models, synchronize
from .baselines import METHODS, Baseline
from .evaluate import load_run
from .nifti import read_pair, write_outputs
from .metrics import dice, fold_fraction
from .files import load_checkpoint, write_json
from .runs import FolderBusyError, RunFolder, claim, trained_size
from .transform import warp

__all__ = ["register_files", "main", "OUTPUTS"]

OUTPUTS = ("warped.nii.gz", "warped_seg.nii.gz", "disp_vox.nii.gz", "disp_mm.nii.gz", "register.json")


def register_files(moving, fixed, out, run=None, method=None, moving_seg=None, fixed_seg=None, which="last",
                   device="cpu", threads=None) -> dict:
    """The CLI as a function: returns the summary written to `out/register.json`."""
    if (run is None) == (method is None):
        raise ValueError("give exactly one of run (a trained run folder) or method (a classical method)")
    if out is None or not str(out).strip():
        raise ValueError("out is empty: give the output folder")
    device = resolve_device(device)
    with claim(out, "registration"):
        return _register(moving, fixed, out, run, method, moving_seg, fixed_seg, which, device, threads)


def _register(moving, fixed, out, run, method, moving_seg, fixed_seg, which, device, threads) -> dict:
    normalize = True
    if run is not None:
        model, cfg, _ = load_run(run, device, which)
        normalize = not (cfg.get("dataset") == "lpba40" and not cfg.get("lpba40_normalize", True))
        state = load_checkpoint(RunFolder(run).checkpoint(which))
        trained = trained_size(state)         # real datasets store theirs
        if len(trained) != 3:
            raise ValueError(f"{run} is a run of the 2-D track (trained on {len(trained)}-D slices of size "
                             f"{list(trained)}); registering NIfTI volumes needs a 3-D run")
    pair = read_pair(moving, fixed, moving_seg, fixed_seg, normalize=normalize)
    m, f = pair["moving"][None].to(device), pair["fixed"][None].to(device)
    if run is not None:
        if tuple(m.shape[2:]) != trained:
            raise ValueError(f"{moving}: shape {tuple(m.shape[2:])}, but the run {run} was trained at {trained}: "
                             "resample or crop the pair to that size")
        name = f"{cfg['model']} ({cfg.get('strategy', '?')}) from {run}"
    else:
        model = Baseline(method, threads=threads)
        name = method
    synchronize(device)
    start = time.perf_counter()
    with torch.no_grad():
        disp = models.predict(model, m, f).float()
    synchronize(device)
    seconds = time.perf_counter() - start
    warped = warp(m, disp)
    warped_seg = warp(pair["moving_seg"][None].to(device), disp, "nearest") if "moving_seg" in pair else None
    for name in OUTPUTS:      # an earlier registration's outputs go only once this one has something to write
        (Path(out) / name).unlink(missing_ok=True)
    paths = write_outputs(out, pair["affine"], disp, warped, warped_seg)
    summary = {"method": name, "moving": str(moving), "fixed": str(fixed), "seconds": seconds,
               "fold_percent": 100 * fold_fraction(disp),
               "outputs": {**{k: str(v) for k, v in paths.items()}, "summary": str(Path(out) / "register.json")}}
    if warped_seg is not None and "fixed_seg" in pair:
        labels = sorted(set(np.unique(pair["fixed_seg"].numpy()).tolist()) - {0})
        summary["dice"] = float(dice(warped_seg.cpu(), pair["fixed_seg"][None], labels).nanmean())
    elif "fixed_seg" in pair:
        summary["dice_note"] = ("no Dice: the fixed label map was given without a moving one (--moving-seg), so "
                                "there are no warped labels to compare with it")
    write_json(Path(out) / "register.json", summary)
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ofg_lib.register", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="a trained run folder (checkpoint.pt, from notebook 05 or ofg_lib.train)")
    src.add_argument("--method", choices=METHODS, help="a classical method instead of a network")
    p.add_argument("--moving", required=True, help="moving image (NIfTI)")
    p.add_argument("--fixed", required=True, help="fixed image (NIfTI), same grid as the moving image")
    p.add_argument("--moving-seg", help="moving label map, warped by nearest neighbour")
    p.add_argument("--fixed-seg", help="fixed label map: Dice of the warped moving labels is reported")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--which", default="last", choices=("last", "best"), help="checkpoint of the run")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="threads of the classical toolkit")
    a = p.parse_args(argv)
    try:
        s = register_files(a.moving, a.fixed, a.out, a.run, a.method, a.moving_seg, a.fixed_seg, a.which,
                           a.device, a.threads)
    except (OSError, ValueError, RuntimeError, FolderBusyError) as e:   # OSError: missing files, unwritable --out
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nstopped", file=sys.stderr)
        return 130
    extra = f", Dice {s['dice']:.4f}" if "dice" in s else f" ({s['dice_note']})" if "dice_note" in s else ""
    print(f"{s['method']}: {s['seconds']:.2f} s, folds {s['fold_percent']:.4f} %{extra}; wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
