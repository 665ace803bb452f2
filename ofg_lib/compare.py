"""Comparing training strategies over seeds, honestly (notebook 05).

Each (strategy, seed) run trains the same model on the same data with the same steps. Single validation
checkpoints jitter, so a run's score is the mean over its last `last_k` validations. Strategies are compared
by paired per-seed differences (same seed, same data order), at equal steps and, when `equal_time=True`, at
equal wall time: the faster strategy is trained again, for as many epochs as the slower one's time allows
(seconds per step: the median over every epoch of every seed), in a folder named for that length.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .evaluate import load_run
from .paths import atomic_write, load_checkpoint, write_json
from .stats import last_k_mean, sd
from .train import load_config, run

METRICS = ("val_dice", "fold_fraction", "fold_fraction_brain", "epe", "sdlogj")
NAMES = {"val_dice": "Dice", "fold_fraction": "folds (% of all voxels, as Table 1's code)",
         "fold_fraction_brain": "folds (% of brain voxels, as the paper's text)", "epe": "EPE (voxels)",
         "sdlogj": "SDlogJ"}


def _history(out: Path):
    return load_checkpoint(Path(out) / "checkpoint.pt")["history"]


def train_history(cfg: dict, folder, resume: bool = True, callbacks=()) -> list:
    """Train one run in `folder` (resuming an unfinished one, reusing a finished one); return its history.

    The one way compare, the study (`ofg_lib.study`), the sweeps (`ofg_lib.sweep`) and `ofg_lib.converge` get a
    run. A run in `folder` is reused or resumed only when its whole stored config equals `cfg` (epochs included;
    `ofg_lib.train.RUNTIME` keys aside); otherwise this refuses, naming the folder and the differing keys.
    `resume=False` refuses a folder that holds any run.
    """
    run(cfg, out=folder, resume="auto" if resume else False, callbacks=callbacks, exact=True)
    return _history(folder)


def mean_curve(histories, metric: str = "val_dice"):
    """(steps, mean, std) over runs of a validation metric along training (the learning-curve figures)."""
    runs = [[r for r in h if r.get(metric) is not None] for h in histories]
    n = min(len(h) for h in runs)
    steps = np.array([r["step"] for r in runs[0][:n]])
    vals = np.array([[r[metric] for r in h[:n]] for h in runs], dtype=float)
    return steps, vals.mean(0), vals.std(0)


def compare(base: dict, strategies=("unsupervised", "ofg"), seeds=(0, 1, 2), out: str | Path = "results/compare",
            last_k: int = 3, equal_time: bool = True, resume: bool = True, callbacks=()) -> dict:
    """Run every strategy for every seed; return per-run scores and paired differences (the second minus the first)."""
    out = Path(out)
    runs = {}
    for seed in seeds:
        for strat in strategies:
            folder = out / f"{strat}-seed{seed}"
            hist = train_history({**base, "strategy": strat, "seed": seed}, folder, resume, callbacks)
            runs[(strat, seed)] = {"history": hist, "folder": str(folder)}
    epochs = load_config(base).epochs
    table = {"equal_steps": {}, "equal_time": {}}
    for (strat, seed), r in runs.items():
        table["equal_steps"][f"{strat}/{seed}"] = last_k_mean(r["history"], epochs, last_k, METRICS)
    if equal_time:
        per_step = {s: step_seconds([runs[(s, seed)]["history"] for seed in seeds]) for s in strategies}
        slow = max(per_step, key=per_step.get)
        for strat in strategies:
            extra = math.floor(epochs * per_step[slow] / per_step[strat])
            for seed in seeds:
                if extra > epochs:       # keep training the faster strategy to the slower one's time budget
                    folder = out / f"{strat}-seed{seed}-equal-time-{extra}ep"
                    # the same config run longer (its schedules stretch over the longer run)
                    hist = train_history({**base, "strategy": strat, "seed": seed, "epochs": extra}, folder, resume,
                                         callbacks)
                    upto = extra
                else:
                    hist, upto = runs[(strat, seed)]["history"], epochs
                table["equal_time"][f"{strat}/{seed}"] = {**last_k_mean(hist, upto, last_k, METRICS), "epochs": upto}
    result = {"strategies": list(strategies), "seeds": list(seeds), "last_k": last_k, "per_run": table,
              "sec_per_step": per_step if equal_time else None,
              "paired": {k: paired(table[k], strategies, seeds) for k in table if table[k]}}
    write_json(out / "comparison.json", result)
    atomic_write(out / "comparison.md", markdown(result))
    return result


def step_seconds(histories) -> float:
    """Training seconds per step (network + inner optimizer) of a strategy: the median over all its epochs.

    The median, not the mean: on a shared machine a few epochs are slowed by other work, and a mean would hand
    the equal-time comparison a budget that depends on what else ran at the time.
    """
    return float(np.median([h["sec_per_step_network"] + h["sec_per_step_inner"] for hist in histories for h in hist]))


def load_runs(run_dir, seed: int = 0, strategies=("unsupervised", "ofg"), device="cpu", make: bool = False) -> dict:
    """{strategy: (model, config, history)} of one seed's runs of a comparison made by `compare` in `run_dir`.

    `make=True` (notebooks 06 and 07): when the runs are missing and `run_dir` is notebook 05's own default
    (NOTEBOOK_05_RUN_DIR), make them first by running notebook 05 at its defaults with this seed
    (`run_notebook_05`), so a student who opens 06 or 07 first gets in. Another `run_dir` (a profile's folder,
    whose runs have that profile's sizes) is never filled with default-sized runs: the error says to run 05.
    """
    from .paths import resolve
    folders = {s: Path(run_dir) / "compare" / f"{s}-seed{seed}" for s in strategies}
    missing = [str(f) for f in folders.values() if not (f / "checkpoint.pt").exists()]
    if missing and make and Path(run_dir).resolve() == resolve(NOTEBOOK_05_RUN_DIR).resolve():
        run_notebook_05(run_dir, seed)
        missing = [str(f) for f in folders.values() if not (f / "checkpoint.pt").exists()]
    if missing:
        raise FileNotFoundError(f"no trained runs at {', '.join(missing)}: run notebook 05 with the same run_dir "
                                f"first")
    return {s: load_run(f, device) for s, f in folders.items()}


# notebook 05's default `run_dir` (its parameters cell; a test checks they agree): the one folder that
# `load_runs(make=True)` fills with runs made at notebook 05's defaults
NOTEBOOK_05_RUN_DIR = "results/ci/05_training"


def run_notebook_05(run_dir, seed: int = 0, log=print, parameters: dict | None = None) -> Path:
    """Execute notebook 05 (its defaults, with `run_dir`, `seeds=[seed]` and any other `parameters`) through
    papermill, with a progress bar; the executed copy is `run_dir/05_ofg_training.ipynb`. Returns its path. It takes
    as long as notebook 05 at its defaults (its header states the cost); the time is printed."""
    import os
    import tempfile
    import time

    import jupytext
    import papermill as pm

    from .paths import REPO
    run_dir = Path(run_dir)
    src = REPO / "notebooks" / "05_ofg_training.py"
    if not src.is_file():
        raise FileNotFoundError(f"{src} not found: making notebook 05's runs needs the project's notebooks folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    log(f"no runs of notebook 05 in {run_dir}: running notebook 05 with its defaults to make them "
        f"(run_dir={run_dir}, seeds=[{seed}])")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        nb = Path(tmp) / "05_ofg_training.ipynb"
        notebook = jupytext.read(src)
        notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        jupytext.write(notebook, nb, fmt="ipynb")
        out = run_dir / "05_ofg_training.ipynb"
        env = os.environ.get("OFG_STATIC")
        os.environ["OFG_STATIC"] = "1"          # the child kernel draws static figures (no frontend shows it)
        try:
            pm.execute_notebook(str(nb), str(out), parameters={**(parameters or {}), "run_dir": str(run_dir),
                                                               "seeds": [seed]},
                                kernel_name="python3", cwd=str(REPO), log_output=False,
                                progress_bar=not (os.environ.get("CI") or os.environ.get("OFG_QUIET")))
        finally:
            if env is None:
                os.environ.pop("OFG_STATIC", None)
            else:
                os.environ["OFG_STATIC"] = env
    log(f"notebook 05 ran in {time.perf_counter() - t0:.0f} s -> {out}")
    return out


def paired(scores: dict, strategies, seeds) -> dict:
    """Per metric: mean and std (ddof 1) over seeds of each strategy, and of the per-seed difference (second - first)."""
    a, b = strategies[0], strategies[-1]
    out = {}
    for m in METRICS:
        va = [scores[f"{a}/{s}"].get(m) for s in seeds]
        vb = [scores[f"{b}/{s}"].get(m) for s in seeds]
        if any(v is None for v in va + vb):
            continue
        diff = np.array(vb) - np.array(va)
        out[m] = {a: (float(np.mean(va)), sd(va)), b: (float(np.mean(vb)), sd(vb)),
                  "difference": (float(diff.mean()), sd(diff)), "per_seed": diff.tolist()}
    return out


def markdown(result: dict) -> str:
    a, b = result["strategies"][0], result["strategies"][-1]
    lines = [f"Seeds {result['seeds']}; each score is the mean of a run's last {result['last_k']} validations; "
             f"mean ± std (ddof 1) over seeds; difference = {b} - {a}, paired by seed.", ""]
    for setting, metrics in result["paired"].items():
        lines += [f"**{setting.replace('_', ' ')}**", "", f"| metric | {a} | {b} | difference |", "|---|---|---|---|"]
        for m, v in metrics.items():
            k, name = (100 if m.startswith("fold") else 1), NAMES.get(m, m)
            lines.append(f"| {name} | {k * v[a][0]:.4f} ± {k * v[a][1]:.4f} | {k * v[b][0]:.4f} ± {k * v[b][1]:.4f} | "
                         f"{k * v['difference'][0]:+.4f} ± {k * v['difference'][1]:.4f} |")
        lines.append("")
    return "\n".join(lines)
