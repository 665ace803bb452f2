"""Comparing training strategies over seeds, honestly (notebook 05).

Each (strategy, seed) run trains the same model on the same data with the same steps. Single validation
checkpoints jitter, so a run's score is the mean over its last `last_k` validations. Strategies are compared
by paired per-seed differences (same seed, same data order), at equal steps and, when `equal_time=True`, at
equal wall time: the faster strategy keeps training until it has used the slower one's time.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .paths import atomic_write, load_checkpoint, write_json
from .train import load_config, run

METRICS = ("val_dice", "fold_fraction", "fold_fraction_brain", "epe")
NAMES = {"val_dice": "Dice", "fold_fraction": "folds (% of all voxels, as Table 1's code)",
         "fold_fraction_brain": "folds (% of brain voxels, as the paper's text)", "epe": "EPE (voxels)"}


def _score(history, upto_epoch, last_k):
    rows = [r for r in history if "val_dice" in r and r["epoch"] <= upto_epoch][-last_k:]
    return {m: float(np.mean([r[m] for r in rows])) if rows and rows[0].get(m) is not None else None
            for m in METRICS}


def _history(out: Path):
    return load_checkpoint(Path(out) / "checkpoint.pt")["history"]


def compare(base: dict, strategies=("unsupervised", "ofg"), seeds=(0, 1, 2), out: str | Path = "results/compare",
            last_k: int = 3, equal_time: bool = True, resume: bool = True, callbacks=()) -> dict:
    """Run every strategy for every seed; return per-run scores and paired differences (the second minus the first)."""
    out = Path(out)
    runs = {}
    for seed in seeds:
        for strat in strategies:
            folder = out / f"{strat}-seed{seed}"
            summary = run({**base, "strategy": strat, "seed": seed}, out=folder, resume=resume, callbacks=callbacks)
            runs[(strat, seed)] = {"summary": summary, "history": _history(folder), "folder": str(folder)}
    epochs = load_config(base).epochs
    table = {"equal_steps": {}, "equal_time": {}}
    for (strat, seed), r in runs.items():
        table["equal_steps"][f"{strat}/{seed}"] = _score(r["history"], epochs, last_k)
    if equal_time:
        per_epoch = {s: np.mean([sum(h["sec_per_step_network"] + h["sec_per_step_inner"]
                                     for h in runs[(s, seed)]["history"]) for seed in seeds]) / epochs
                     for s in strategies}
        slow = max(per_epoch, key=per_epoch.get)
        for strat in strategies:
            extra = math.floor(epochs * per_epoch[slow] / per_epoch[strat])
            for seed in seeds:
                if extra > epochs:       # keep training the faster strategy to the slower one's time budget
                    folder = out / f"{strat}-seed{seed}-equal-time"
                    # the same config run longer (its schedules stretch over the longer run)
                    run({**base, "strategy": strat, "seed": seed, "epochs": extra}, out=folder, resume=resume,
                        callbacks=callbacks)
                    hist, upto = _history(folder), extra
                else:
                    hist, upto = runs[(strat, seed)]["history"], epochs
                table["equal_time"][f"{strat}/{seed}"] = {**_score(hist, upto, last_k), "epochs": upto}
    result = {"strategies": list(strategies), "seeds": list(seeds), "last_k": last_k, "per_run": table,
              "paired": {k: paired(table[k], strategies, seeds) for k in table if table[k]}}
    write_json(out / "comparison.json", result)
    atomic_write(out / "comparison.md", markdown(result))
    return result


def paired(scores: dict, strategies, seeds) -> dict:
    """Per metric: mean and std over seeds of each strategy, and of the per-seed difference (second - first)."""
    a, b = strategies[0], strategies[-1]
    out = {}
    for m in METRICS:
        va = [scores[f"{a}/{s}"].get(m) for s in seeds]
        vb = [scores[f"{b}/{s}"].get(m) for s in seeds]
        if any(v is None for v in va + vb):
            continue
        diff = np.array(vb) - np.array(va)
        out[m] = {a: (float(np.mean(va)), float(np.std(va))), b: (float(np.mean(vb)), float(np.std(vb))),
                  "difference": (float(diff.mean()), float(diff.std())), "per_seed": diff.tolist()}
    return out


def markdown(result: dict) -> str:
    a, b = result["strategies"][0], result["strategies"][-1]
    lines = [f"Seeds {result['seeds']}; each score is the mean of a run's last {result['last_k']} validations; "
             f"mean ± std over seeds; difference = {b} - {a}, paired by seed.", ""]
    for setting, metrics in result["paired"].items():
        lines += [f"**{setting.replace('_', ' ')}**", "", f"| metric | {a} | {b} | difference |", "|---|---|---|---|"]
        for m, v in metrics.items():
            k, name = (100 if m.startswith("fold") else 1), NAMES.get(m, m)
            lines.append(f"| {name} | {k * v[a][0]:.4f} ± {k * v[a][1]:.4f} | {k * v[b][0]:.4f} ± {k * v[b][1]:.4f} | "
                         f"{k * v['difference'][0]:+.4f} ± {k * v['difference'][1]:.4f} |")
        lines.append("")
    return "\n".join(lines)
