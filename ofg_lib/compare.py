"""Comparing training strategies over seeds, honestly (notebook 05).

Each (strategy, seed) run trains the same model on the same data with the same steps. Single validation
checkpoints jitter, so a run's score is the mean over its last `last_k` validations. Strategies are compared
by paired per-seed differences (same seed, same data order), at equal steps and, when `equal_time=True`, at
equal wall time: the faster strategy is trained again, for as many epochs as the slower one's time allows
(seconds per step: the median over every epoch of every seed), in a folder named for that length.

A comparison is a sweep (`ofg_lib.sweep`, the project's one experiment runner) whose reference is the first
strategy: its rows, pairing and table are the sweep's.
"""
from __future__ import annotations

from pathlib import Path

from .config import load_config
from .evaluate import load_run
from .files import atomic_write, write_json
from .runs import RunFolder
from .sweep import equal_time_epochs, mean_curve, step_seconds, sweep, table_markdown, train_history  # noqa: F401

METRICS = ("val_dice", "fold_fraction", "fold_fraction_brain", "epe", "sdlogj")
NAMES = {"val_dice": "Dice", "fold_fraction": "folds (% of all voxels, as Table 1's code)",
         "fold_fraction_brain": "folds (% of brain voxels, as the paper's text)", "epe": "EPE (voxels)",
         "sdlogj": "SDlogJ"}


def run_folder(strategy: str, seed: int, epochs: int | None = None) -> str:
    """A comparison's run folder (under its `out`): `ofg-seed0`, or `unsupervised-seed0-equal-time-12ep` for a
    strategy trained longer to another's wall time."""
    return f"{strategy}-seed{seed}" + (f"-equal-time-{epochs}ep" if epochs else "")


def _layout(name: str, seed: int) -> str:
    strategy, _, longer = name.partition("@")           # "unsupervised@12": trained for 12 epochs (equal time)
    return run_folder(strategy, seed, int(longer) if longer else None)


def compare(base: dict, strategies=("unsupervised", "ofg"), seeds=(0, 1, 2), out: str | Path = "results/compare",
            last_k: int = 3, equal_time: bool = True, resume: bool = True, callbacks=(), log=None) -> dict:
    """Run every strategy for every seed; return the paired differences of each strategy to the first.

    Returns {"strategies", "seeds", "last_k", "sec_per_step", "equal_time_epochs", "equal_steps": a sweep result,
    "equal_time": a sweep result or None}; writes comparison.json and comparison.md in `out`. In the equal-time
    sweep a strategy trained longer is named `STRATEGY@EPOCHS` (its folder: `run_folder`).
    """
    out, seeds = Path(out), list(seeds)
    first, others = strategies[0], list(strategies[1:])
    hist = {}
    run = dict(seeds=seeds, out=out, last_k=last_k, callbacks=callbacks, log=log or (lambda *a: None), name=None,
               layout=_layout, metrics=METRICS, histories=hist, resume=resume)
    result = {"strategies": list(strategies), "seeds": seeds, "last_k": last_k, "sec_per_step": None,
              "equal_time_epochs": None, "equal_time": None,
              "equal_steps": sweep(base, [{"_name": s, "strategy": s} for s in others],
                                   reference={"_name": first, "strategy": first}, **run)}
    if equal_time:
        epochs = load_config(base).epochs
        per_step, longer = equal_time_epochs(epochs, {s: [hist[(s, seed)] for seed in seeds] for s in strategies})
        # the faster strategies keep training to the slowest one's time (their schedules stretch over the longer run)
        point = {s: {"_name": f"{s}@{longer[s]}" if longer[s] > epochs else s, "strategy": s,
                     **({"epochs": longer[s]} if longer[s] > epochs else {})} for s in strategies}
        result.update(sec_per_step=per_step, equal_time_epochs=longer,
                      equal_time=sweep(base, [point[s] for s in others], reference=point[first], **run))
    write_json(out / "comparison.json", result)
    atomic_write(out / "comparison.md", markdown(result))
    return result


def load_runs(run_dir, seed: int = 0, strategies=("unsupervised", "ofg"), device="cpu", make: bool = False) -> dict:
    """{strategy: (model, config, history)} of one seed's runs of a comparison made by `compare` in `run_dir`.

    `make=True` (notebooks 06 and 07): when the runs are missing and `run_dir` is notebook 05's own default
    (NOTEBOOK_05_RUN_DIR), make them first by running notebook 05 at its defaults with this seed
    (`run_notebook_05`), so a student who opens 06 or 07 first gets in. Another `run_dir` (a profile's folder,
    whose runs have that profile's sizes) is never filled with default-sized runs: the error says to run 05.
    """
    from .files import resolve
    folders = {s: Path(run_dir) / "compare" / f"{s}-seed{seed}" for s in strategies}
    missing = [str(f) for f in folders.values() if not RunFolder(f).holds_run()]
    if missing and make and Path(run_dir).resolve() == resolve(NOTEBOOK_05_RUN_DIR).resolve():
        run_notebook_05(run_dir, seed)
        missing = [str(f) for f in folders.values() if not RunFolder(f).holds_run()]
    if missing:
        raise FileNotFoundError(f"no trained runs at {', '.join(missing)}: run notebook 05 with the same run_dir "
                                f"first")
    return {s: load_run(f, device) for s, f in folders.items()}


# notebook 05's default `run_dir` (its parameters cell; a test checks they agree): the one folder that
# `load_runs(make=True)` fills with runs made at notebook 05's defaults
NOTEBOOK_05_RUN_DIR = "results/ci/05_training"


def execute_notebook(nb, out, parameters=None, cwd=None, progress_bar=False) -> None:
    """Run the notebook `nb` with papermill on the project's kernel (python3), writing the executed copy to `out`.
    On POSIX the kernel talks to papermill over IPC sockets instead of loopback TCP: the same messages, and no
    "Kernel is running over TCP without encryption" warning on the caller's stderr (ipykernel 7)."""
    import os

    import papermill as pm
    from traitlets.config import Config
    config = Config({"KernelManager": {"transport": "ipc"}}) if os.name == "posix" else Config()
    pm.execute_notebook(str(nb), str(out), parameters=parameters or {}, kernel_name="python3", cwd=cwd and str(cwd),
                        log_output=False, progress_bar=progress_bar, config=config)


def run_notebook_05(run_dir, seed: int = 0, log=print, parameters: dict | None = None) -> Path:
    """Execute notebook 05 (its defaults, with `run_dir`, `seeds=[seed]` and any other `parameters`) through
    papermill, with a progress bar; the executed copy is `run_dir/05_ofg_training.ipynb`. Returns its path. It takes
    as long as notebook 05 at its defaults (its header states the cost); the time is printed."""
    import os
    import tempfile
    import time

    import jupytext

    from .files import REPO
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
            execute_notebook(nb, out, parameters={**(parameters or {}), "run_dir": str(run_dir), "seeds": [seed]},
                             cwd=REPO, progress_bar=not (os.environ.get("CI") or os.environ.get("OFG_QUIET")))
        finally:
            if env is None:
                os.environ.pop("OFG_STATIC", None)
            else:
                os.environ["OFG_STATIC"] = env
    log(f"notebook 05 ran in {time.perf_counter() - t0:.0f} s -> {out}")
    return out


def markdown(result: dict) -> str:
    """A comparison's tables (`ofg_lib.sweep.table_markdown`, one line per metric), equal steps and equal time."""
    first = result["strategies"][0]
    lines = [f"Seeds {result['seeds']}; each score is the mean of a run's last {result['last_k']} validations; "
             f"mean ± std (ddof 1) over seeds; difference = strategy - {first}, paired by seed; folds in percent.", ""]
    for setting in ("equal_steps", "equal_time"):
        table = result.get(setting)
        if not table:
            continue
        what = "" if setting == "equal_steps" else " (" + ", ".join(
            f"{s} {n} epochs" for s, n in result["equal_time_epochs"].items()) + ")"
        lines += [f"**{setting.replace('_', ' ')}**{what}", "",
                  table_markdown(table, columns=METRICS, versus=first, long=True, label="strategy")]
    return "\n".join(lines)
