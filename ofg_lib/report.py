"""Table 1 on data anyone can run: classical rows and network rows in one report (notebook 06).

`classical_row(method, dataset, n)` registers the first `n` pairs with a classical method (`ofg_lib.baselines`);
`network_row(run_dir, dataset, n)` scores the unsupervised and OFG runs of a comparison (notebook 05) on the same
pairs, every seed; `write_report(rows, out_dir)` writes `REPORT.md` and `report.csv` in the layout of the paper's
Table 1 (one row per method; base and OFG side by side), with the paper's IXI numbers in their own columns.
Those are a different dataset (real IXI at 160x192x224, networks trained 500 epochs on a GPU): they are printed for
orientation, never subtracted from ours.
"""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import numpy as np

from .baselines import Baseline, available
from .compare import load_runs
from .evaluate import evaluate
from .files import atomic_write

__all__ = ["PAPER_IXI", "classical_row", "network_row", "markdown", "write_report", "COLUMNS"]

# The paper's Table 1, IXI rows: Dice (base, OFG), % |J| < 0 (base, OFG; the published code counts all voxels),
# inference time in seconds (device). Different data from ours.
PAPER_IXI = {
    "syn": {"name": "SyN", "dice": (0.647, None), "folds": (1.96e-6, None), "time": "277 (CPU)"},
    "niftyreg": {"name": "NiftyReg", "dice": (0.585, None), "folds": (0.029, None), "time": "22.4 (CPU)"},
    "voxelmorph-1": {"name": "VoxelMorph", "dice": (0.714, 0.737), "folds": (1.398, 0.516), "time": "0.061 (GPU)"},
    "vit-v-net": {"name": "ViT-V-Net", "dice": (0.716, 0.738), "folds": (1.543, 0.545), "time": "0.615 (GPU)"},
    "transmorph": {"name": "TransMorph", "dice": (0.744, 0.760), "folds": (1.433, 0.794), "time": "0.114 (GPU)"},
}
NAMES = {"syn": "SyN (ANTsPy)", "elastix": "elastix B-spline", "niftyreg": "NiftyReg f3d",
         "instance": "instance optimizer (ours, to convergence)"}
COLUMNS = ["method", "kind", "status", "pairs", "seeds", "dice_base", "dice_base_std", "dice_ofg", "dice_ofg_std",
           "folds_base", "folds_ofg", "folds_brain_base", "folds_brain_ofg", "sdlogj_base", "sdlogj_ofg",
           "epe_base", "epe_ofg", "infer_s", "infer_device", "train_s_base", "train_s_ofg",
           "paper_dice_base", "paper_dice_ofg", "paper_folds_base", "paper_folds_ofg", "paper_time"]


def _paper(key):
    p = PAPER_IXI.get(key)
    if p is None:
        return {"paper_dice_base": None, "paper_dice_ofg": None, "paper_folds_base": None, "paper_folds_ofg": None,
                "paper_time": None}
    return {"paper_dice_base": p["dice"][0], "paper_dice_ofg": p["dice"][1], "paper_folds_base": p["folds"][0],
            "paper_folds_ofg": p["folds"][1], "paper_time": p["time"]}


def classical_row(method: str, dataset, n: int, threads: int | None = None, absent: str = "skip",
                  **options) -> tuple[dict, dict | None]:
    """(row, evaluation) of a classical method on the first `n` pairs; a method that cannot run gets a row whose
    `status` says why (e.g. "not installed: ...") and evaluation None. The evaluation's `first_disp` is the
    displacement of the first pair (for figures)."""
    row = {"method": NAMES.get(method, method), "kind": "classical", "pairs": min(n, len(dataset)), "seeds": "",
           **_paper(method)}
    reason = available(method)
    if reason:
        return {**row, "status": reason}, None
    model = Baseline(method, threads=threads, **options)
    r = evaluate(model, dataset, n, time_repeats=0, absent=absent, progress=f"{method} ({n} pairs)")
    row.update(status="ok", dice_base=r["dice"], dice_base_std=r["dice_std"], folds_base=100 * r["fold_fraction"],
               folds_brain_base=100 * r["fold_fraction_brain"], sdlogj_base=r["sdlogj"], epe_base=r["epe"],
               infer_s=float(np.mean(model.seconds)), infer_device="cpu")
    return row, {**r, "first_disp": model.first}


def _train_seconds(history) -> float:
    total, before = 0.0, 0
    for h in history:
        steps = h["step"] - before
        before = h["step"]
        total += steps * (h["sec_per_step_network"] + h["sec_per_step_inner"] + h.get("sec_per_step_data", 0.0))
    return total


def network_row(run_dir, dataset, n: int, seeds=(0,), device="cpu", absent: str = "skip",
                label: str | None = None) -> tuple[dict, dict]:
    """(row, {strategy: evaluation of the first seed}) of notebook 05's unsupervised and OFG runs in `run_dir`.

    Metrics are the mean over pairs, then over `seeds` (the Dice spread is over seeds x pairs); inference time
    is one forward pass (synchronised on a GPU); training time is the run's logged seconds per step times steps.
    """
    per_seed = {s: load_runs(run_dir, s, device=device) for s in seeds}
    first = next(iter(per_seed.values()))
    cfg = first["ofg"][1]
    evals = {s: {k: evaluate(net, dataset, n, device, time_repeats=3, absent=absent) for k, (net, _, _) in runs.items()}
             for s, runs in per_seed.items()}
    if label is None:   # what the network is and how long it trained: the row says it, not the reader's memory
        steps = cfg["epochs"] * cfg["steps_per_epoch"]
        label = f"{cfg['model']} ({'x'.join(str(v) for v in cfg['img_size'])}, {steps} steps)"
    row = {"method": label, "kind": "network", "status": "ok", "pairs": min(n, len(dataset)),
           "seeds": " ".join(str(s) for s in seeds), **_paper(cfg["model"]),
           "infer_device": str(device)}
    for strategy, col in (("unsupervised", "base"), ("ofg", "ofg")):
        rs = [evals[s][strategy] for s in seeds]
        pair_dice = np.concatenate([r["dice_per_pair"] for r in rs])   # a diverged pair (NaN) shows as NaN
        row[f"dice_{col}"] = float(np.mean(pair_dice))
        row[f"dice_{col}_std"] = float(np.std(pair_dice))
        row[f"folds_{col}"] = float(np.mean([100 * r["fold_fraction"] for r in rs]))
        row[f"folds_brain_{col}"] = float(np.mean([100 * r["fold_fraction_brain"] for r in rs]))
        row[f"sdlogj_{col}"] = float(np.mean([r["sdlogj"] for r in rs]))
        row[f"epe_{col}"] = float(np.mean([r["epe"] for r in rs])) if rs[0]["epe"] is not None else None
        row[f"train_s_{col}"] = float(np.mean([_train_seconds(per_seed[s][strategy][2]) for s in seeds]))
    row["infer_s"] = float(np.mean([evals[s][k]["inference_ms"] for s in seeds for k in evals[s]])) / 1e3
    return row, evals[seeds[0]]


def _f(v, fmt):
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, fmt)


def _pair(a, b, fmt):
    return _f(a, fmt) if b is None else f"{_f(a, fmt)} / {_f(b, fmt)}"


def markdown(rows: list[dict], title: str = "Table 1 on the embedded cohort", notes: str = "") -> str:
    """Table 1's layout: one row per method, "base / OFG" in each cell (classical methods have no OFG)."""
    head = ("| method | Dice base / OFG | % folds (all voxels) base / OFG | % folds (brain) base / OFG | "
            "SDlogJ base / OFG | EPE (voxels) base / OFG | inference s / pair | training min base / OFG | "
            "paper IXI: Dice base / OFG | paper IXI: % folds base / OFG | paper IXI: time s |")
    lines = [f"# {title}", "", notes, "", head, "|" + "---|" * 11]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['method']} | {r['status']} |" + " |" * 6
                         + f" {_pair(r['paper_dice_base'], r['paper_dice_ofg'], '.3f')} | "
                         f"{_pair(r['paper_folds_base'], r['paper_folds_ofg'], '.3g')} | {r['paper_time'] or 'n/a'} |")
            continue
        ofg = r["kind"] == "network"
        dice = (f"{r['dice_base']:.4f} ± {r['dice_base_std']:.4f}"
                + (f" / {r['dice_ofg']:.4f} ± {r['dice_ofg_std']:.4f}" if ofg else ""))
        train = _pair(r["train_s_base"] / 60, r["train_s_ofg"] / 60, ".1f") if ofg else "none"
        lines.append(
            f"| {r['method']} | {dice} | {_pair(r['folds_base'], r.get('folds_ofg') if ofg else None, '.4f')} | "
            f"{_pair(r['folds_brain_base'], r.get('folds_brain_ofg') if ofg else None, '.4f')} | "
            f"{_pair(r['sdlogj_base'], r.get('sdlogj_ofg') if ofg else None, '.4f')} | "
            f"{_pair(r['epe_base'], r.get('epe_ofg') if ofg else None, '.3f')} | "
            f"{_f(r['infer_s'], '.3g')} ({r['infer_device']}) | {train} | "
            f"{_pair(r['paper_dice_base'], r['paper_dice_ofg'], '.3f')} | "
            f"{_pair(r['paper_folds_base'], r['paper_folds_ofg'], '.3g')} | {r['paper_time'] or 'n/a'} |")
    return "\n".join(lines) + "\n"


def write_report(rows: list[dict], out_dir, title: str = "Table 1 on the embedded cohort", notes: str = "") -> dict:
    """Write `REPORT.md` (markdown) and `report.csv` (every column of `COLUMNS`) under `out_dir`; return the paths."""
    missing = [c for r in rows for c in ("method", "kind", "status") if c not in r]
    if missing:
        raise ValueError(f"every row needs method, kind and status; missing {sorted(set(missing))}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({c: r.get(c) for c in COLUMNS})
    stamp = f"\n_Written {time.strftime('%Y-%m-%d %H:%M')} by `ofg_lib.report.write_report` (notebook 06)._\n"
    atomic_write(out / "REPORT.md", markdown(rows, title, notes) + stamp)
    atomic_write(out / "report.csv", buf.getvalue())
    return {"md": out / "REPORT.md", "csv": out / "report.csv"}
