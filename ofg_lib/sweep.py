"""The experiment runner: a grid of config values x seeds, paired against a reference run (notebooks 05, 08, 09).

    table = ofg_lib.sweep.sweep(base, {"ofg_every": [2, 4]}, seeds=[0, 1], out="results/cpu/09/interval")

Every point is an ordinary training run (`ofg_lib.train.run`) in its own folder, named for its overrides, so a
second call reuses finished runs and resumes unfinished ones. The reference (default: `base` itself) is run for
the same seeds; each point's scores are compared with it seed by seed (the point minus the reference). The
table is written as NAME.json and as a tidy NAME.csv (one row per point and metric).

It is the one runner of the project: `ofg_lib.compare.compare` is a sweep whose reference is the first strategy,
a study (`ofg_lib.study`) is a list of sweeps, and all of them share one row schema (per metric, the paired
record of `ofg_lib.stats.paired`) and one table renderer (`table_markdown`).
"""
from __future__ import annotations

import csv
import io
import itertools
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from .evaluate import score_run
from .files import atomic_write, write_json
from .runs import RunFolder
from .stats import last_k_mean, paired

__all__ = ["points", "folder_name", "sweep", "train_history", "mean_curve", "step_seconds", "equal_time_epochs",
           "run_curves", "measure_step", "SWEEP_METRICS", "TEST_METRICS", "CLAIMS", "verdict_metric",
           "ablation_verdicts", "folder_verdicts", "verdicts_markdown", "table_markdown"]

SWEEP_METRICS = ("val_dice", "epe", "fold_fraction", "fold_fraction_brain", "sdlogj", "val_unsup_loss")
# Costs per point. Not memory: on a CPU `peak_memory_mb` is the whole process's peak, so in a sweep it depends on
# which runs came before; `measure_step` measures a config's memory in a fresh process.
COSTS = ("sec_per_step_network", "sec_per_step_inner", "guided_share")
# With `test_pairs`: each run's best-validation checkpoint scored on the test split (`evaluate.score_run`)
SCORED_TEST = ("dice", "fold_fraction", "fold_fraction_brain", "sdlogj", "epe")
TEST_METRICS = tuple(f"test_{m}" for m in SCORED_TEST)


def train_history(cfg: dict, folder, resume: bool = True, callbacks=()) -> list:
    """Train one run in `folder` (resuming an unfinished one, reusing a finished one); return its history.

    The one way the runner (`sweep`, hence compare and the study) and `ofg_lib.converge` get a run. A run in
    `folder` is reused or resumed only when its whole stored config equals `cfg` (epochs included;
    `ofg_lib.train.RUNTIME` keys aside); otherwise this refuses, naming the folder and the differing keys.
    `resume=False` refuses a folder that holds any run.
    """
    from .train import run
    run(cfg, out=folder, resume="auto" if resume else False, callbacks=callbacks, exact=True)
    return RunFolder(folder).history()


def mean_curve(histories, metric: str = "val_dice"):
    """(steps, mean, std) over runs of a validation metric along training (the learning-curve figures)."""
    runs = [[r for r in h if r.get(metric) is not None] for h in histories]
    n = min(len(h) for h in runs)
    steps = np.array([r["step"] for r in runs[0][:n]])
    vals = np.array([[r[metric] for r in h[:n]] for h in runs], dtype=float)
    return steps, vals.mean(0), vals.std(0)


def step_seconds(histories) -> float:
    """Training seconds per step (network + inner optimizer) of a set of runs: the median over all their epochs.

    The median, not the mean: on a shared machine a few epochs are slowed by other work, and a mean would hand
    the equal-time comparison a budget that depends on what else ran at the time.
    """
    return float(np.median([h["sec_per_step_network"] + h["sec_per_step_inner"] for hist in histories for h in hist]))


def equal_time_epochs(epochs: int, runs: dict) -> tuple[dict, dict]:
    """Equal wall time: ({strategy: seconds per step}, {strategy: epochs it gets}) from {strategy: its runs'
    histories}. The slowest strategy keeps `epochs`; a faster one gets `epochs` x (slowest / its seconds per step),
    rounded down (`step_seconds`), and never fewer than `epochs`."""
    per_step = {s: step_seconds(h) for s, h in runs.items()}
    slow = max(per_step, key=per_step.get)
    return per_step, {s: max(epochs, math.floor(epochs * per_step[slow] / per_step[s])) for s in runs}


def points(grid) -> list[dict]:
    """A grid {key: [values]} as the list of its points (cartesian product), or a list of dicts as given."""
    if isinstance(grid, dict):
        keys = list(grid)
        for k, v in grid.items():
            if not isinstance(v, (list, tuple)) or not v:
                raise ValueError(f"grid[{k!r}] must be a non-empty list of values, got {v!r}")
        return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]
    if isinstance(grid, (list, tuple)) and all(isinstance(p, dict) for p in grid):
        return [dict(p) for p in grid]
    raise TypeError(f"grid must be a dict of value lists or a list of override dicts, got {type(grid).__name__}")


def folder_name(overrides: dict) -> str:
    """A readable, file-system-safe folder name for a point, e.g. `ofg_every=2,strategy=ofg`."""
    if not overrides:
        return "reference"
    text = ",".join(f"{k}={json.dumps(v, separators=(',', ':')) if not isinstance(v, str) else v}"
                    for k, v in sorted(overrides.items()))
    return re.sub(r"[^A-Za-z0-9=,._+-]", "_", text)


def _layout(layout, name: str, seed: int) -> str:
    return layout(name, seed) if callable(layout) else layout.format(name=name, seed=seed)


def sweep(base: dict, grid, seeds=(0, 1, 2), out="results/sweep", reference: dict | None = None,
          last_k: int = 3, callbacks=(), log=print, name: str | None = "sweep", test_pairs: int = 0,
          layout="{name}/seed{seed}", metrics=SWEEP_METRICS, histories: dict | None = None,
          resume: bool = True) -> dict:
    """Run every point of `grid` (and the reference) for every seed; return the table and write NAME.json and
    NAME.csv (`name=None`: write nothing, e.g. a stage of a study, which writes its own).

    `reference`: overrides of `base` for the run every point is compared with (default: none, i.e. `base`).
    Sweeps that share `out` and `reference` share their runs (a point run once serves every table it is in). A
    point (or the reference) given as a dict may carry `"_name"`: its name and folder (e.g. when an override is a
    long path, or to keep an existing layout: compare's `ofg`, a study's `today/ofg`). `layout`: a run's folder
    under `out`, a format string of `name` and `seed` or a function (name, seed) -> path.
    Returns {"rows": [...], "reference": ..., "seeds": ...}; each row has the point's name and overrides, per metric
    the paired record of `ofg_lib.stats.paired` (mean and std over seeds of the point and of the reference, the
    difference point - reference per seed, its mean, std, 95 % t interval and sign count), and the costs (seconds
    per step of network and optimizer: medians over epochs; the share of guided steps: its mean).
    `metrics` (default SWEEP_METRICS) are the mean of a run's last `last_k` validations. With `test_pairs` > 0
    each run's best-validation checkpoint is also scored on that many pairs of the test split
    (`evaluate.score_run`, cached beside the run): the metrics in TEST_METRICS, the score that keeps selection and
    reporting apart (issue 19). Spreads are sample standard deviations (ddof 1; 0 with one seed).
    The reference's default name is `reference`, or `reference-<its overrides>` when it has any. `histories`: a
    dict to fill with every run's history, keyed by (name, seed) (learning curves). `resume=False` refuses a
    folder that already holds a run (`train_history`).
    """
    out, seeds = Path(out), list(seeds)
    reference = dict(reference or {})
    runs = {} if histories is None else histories

    def train(overrides, is_reference=False):
        overrides = dict(overrides)
        point = overrides.pop("_name", None) or (
            "reference" + (f"-{folder_name(overrides)}" if overrides else "") if is_reference
            else folder_name(overrides))
        for seed in seeds:
            if (point, seed) not in runs:
                log(f"[sweep] {point} seed {seed}")
                runs[(point, seed)] = train_history({**base, **overrides, "seed": seed},
                                                    out / _layout(layout, point, seed), resume, callbacks)
        return point

    ref_name = train(reference, is_reference=True)
    rows = []
    for overrides in points(grid):
        point = train(overrides)
        row = {"point": point, "overrides": {k: v for k, v in overrides.items() if k != "_name"}}
        scores = {(key, s): last_k_mean(runs[(key, s)], math.inf, last_k, metrics)   # last validations
                  for key in (point, ref_name) for s in seeds}
        if test_pairs:
            for key in (point, ref_name):
                for s in seeds:
                    t = score_run(out / _layout(layout, key, s), "test", test_pairs, "best")
                    scores[(key, s)].update({f"test_{m}": t[m] for m in SCORED_TEST})
        for m in tuple(metrics) + (TEST_METRICS if test_pairs else ()):
            mine = [scores[(point, s)][m] for s in seeds]
            ref = [scores[(ref_name, s)][m] for s in seeds]
            if any(v is None for v in mine + ref):
                continue
            row[m] = paired(mine, ref)
        for c in COSTS:     # medians over epochs (robust to a slowed epoch); the guided share is a mean
            vals = [r.get(c) for s in seeds for r in runs[(point, s)] if r.get(c) is not None]
            row[c] = (float(np.mean(vals)) if c == "guided_share" else float(np.median(vals))) if vals else None
        rows.append(row)
    result = {"reference": {k: v for k, v in reference.items() if k != "_name"}, "reference_name": ref_name,
              "seeds": seeds, "last_k": last_k, "test_pairs": test_pairs, "base": base, "ddof": 1, "rows": rows}
    if name is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / f"{name}.json", result)
        atomic_write(out / f"{name}.csv", _csv(rows))
    return result


NAMES = {"val_dice": "Dice", "dice": "Dice", "epe": "EPE", "fold_fraction": "folds % all",
         "fold_fraction_brain": "folds % brain", "sdlogj": "SDlogJ", "val_unsup_loss": "unsup. loss",
         "test_dice": "test Dice", "test_epe": "test EPE", "test_fold_fraction": "test folds % all",
         "test_fold_fraction_brain": "test folds % brain", "test_sdlogj": "test SDlogJ"}


def table_markdown(result, columns=None, versus: str = "reference", long: bool = False, label: str = "point",
                   extra=()) -> str:
    """The project's one table renderer: rows of the runner's schema (`sweep`; compare's and the study's rows are
    sweep rows) as Markdown. Folds are shown in percent; spreads are ddof 1.

    `result`: a sweep result or a list of its rows. `versus`: what the reference is called (notebook 09: "OFG",
    the study: "unsupervised"). Default columns: Dice, EPE and folds of the test split's best checkpoints when the
    sweep scored them (`test_pairs`), else of the last validations.
    - wide (default, notebook 09): one line per point; per column the point's mean ± std and its paired difference
      to the reference, then the optimizer's seconds per step and the guided share.
    - `long=True` (compare, the study): one line per point and metric: the reference's and the point's mean ± std,
      the paired difference with each seed's, its 95 % t interval and how many seeds are above / below.
    `extra`: row keys shown first (e.g. the study's `tag` and `comparison`); `label`: the point column's title.
    """
    rows = result["rows"] if isinstance(result, dict) else list(result)
    if columns is None:
        scored_test = result.get("test_pairs") if isinstance(result, dict) else any("test_dice" in r for r in rows)
        columns = (("test_dice", "test_epe", "test_fold_fraction_brain") if scored_test
                   else ("val_dice", "epe", "fold_fraction_brain"))
    first = "| " + "".join(f"{k} | " for k in extra) + f"{label} | "
    if long:
        lines = [first + f"metric | {versus} | this {label} | this {label} - {versus} (per seed) | 95 % CI | "
                 "seeds above / below |", "|---" * (len(extra) + 7) + "|"]
        for r in rows:
            for c in columns:
                if c not in r:
                    continue
                k, v = (100 if "fold" in c else 1), r[c]
                per = ", ".join(f"{k * d:+.4f}" for d in v["per_seed"])
                ci = f"[{k * v['low']:+.4f}, {k * v['high']:+.4f}]" if v.get("low") is not None else "-"
                lines.append("| " + "".join(f"{r.get(e, '')} | " for e in extra) + f"{r['point']} | "
                             f"{NAMES.get(c, c)} | {k * v['reference']:.4f} ± {k * v['reference_std']:.4f} | "
                             f"{k * v['mean']:.4f} ± {k * v['std']:.4f} | "
                             f"{k * v['difference']:+.4f} ± {k * v['difference_std']:.4f} ({per}) | {ci} | "
                             f"{v['ahead']} / {v['behind']} |")
        return "\n".join(lines) + "\n"
    head = first + " | ".join(f"{NAMES.get(c, c)} | vs {versus}" for c in columns) + " | s/step opt. | guided |"
    lines = [head, "|---" * (len(extra) + 2 * len(columns) + 3) + "|"]
    for r in rows:
        cells = []
        for c in columns:
            k = 100 if "fold" in c else 1
            v = r[c]
            cells += [f"{k * v['mean']:.4f} ± {k * v['std']:.4f}",
                      f"{k * v['difference']:+.4f} ± {k * v['difference_std']:.4f}"]
        opt = "-" if r.get("sec_per_step_inner") is None else f"{r['sec_per_step_inner']:.4f}"
        share = "-" if r.get("guided_share") is None else f"{r['guided_share']:.2f}"
        lines.append("| " + "".join(f"{r.get(e, '')} | " for e in extra) + f"{r['point']} | " + " | ".join(cells)
                     + f" | {opt} | {share} |")
    return "\n".join(lines) + "\n"


def run_curves(out, point: str, seeds, metric: str = "val_dice", layout="{name}/seed{seed}"):
    """(steps, mean, std) over seeds of a validation metric along the runs of one point of a sweep folder."""
    return mean_curve([RunFolder(Path(out) / _layout(layout, point, s)).history() for s in seeds], metric)


def _csv(rows) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["point", "metric", "mean", "std", "reference", "difference", "difference_std", "per_seed", *COSTS])
    for r in rows:
        for m, v in r.items():
            if isinstance(v, dict) and "per_seed" in v:        # the paired records, in the row's metric order
                w.writerow([r["point"], m, v["mean"], v["std"], v["reference"], v["difference"], v["difference_std"],
                            " ".join(f"{x:.6g}" for x in v["per_seed"]), *(r[c] for c in COSTS)])
    return buf.getvalue()


def measure_step(cfg: dict, steps: int = 3, timeout: int = 900) -> dict:
    """Seconds per step (network, optimizer) and peak memory of a config's training, in a fresh process.

    On the CPU the peak resident set is a property of the whole process (it never goes down), so comparing
    designs needs one process each; on a GPU it is torch's peak allocation in the epoch. Validation is skipped
    from the timing (one pair). Returns the last epoch's `sec_per_step_network`, `sec_per_step_inner` and
    `peak_memory_mb`, and `training_extra_mb`: the peak during training above the peak once the model and data
    were ready (on a CPU the process's baseline, imports and data, dominates the peak at small sizes).
    """
    code = ("import json, sys\nfrom ofg_lib import peak_memory_mb\nfrom ofg_lib.train import Trainer\n"
            "t = Trainer.from_config(json.loads(sys.argv[1]))\nready = peak_memory_mb(t.device)\nt.fit()\n"
            "h = t.history[-1]\nout = {k: h[k] for k in ('sec_per_step_network', 'sec_per_step_inner', 'peak_memory_mb')}\n"
            "out['training_extra_mb'] = h['peak_memory_mb'] - ready\nprint(json.dumps(out))")
    cfg = {**cfg, "epochs": 1, "steps_per_epoch": steps, "val_pairs": 1, "progress": False}
    r = subprocess.run([sys.executable, "-c", code, json.dumps(cfg)], capture_output=True, text=True,
                       timeout=timeout)
    if r.returncode:
        raise RuntimeError(f"measuring {cfg} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _teacher_note(rows) -> str | None:
    """Fig. 5's caveat when its teacher is the core unsupervised run (same short budget), not a longer one."""
    teachers = [Path(str(r["overrides"]["teacher"])) for r in rows if r["overrides"].get("teacher")]
    if any("strategy=unsupervised" in t.parts and t == RunFolder(t.parent).checkpoint("last") for t in teachers):
        return "the teacher is the seed-0 unsupervised run at the same short budget, not a well-trained one"
    if any("strategy=unsupervised" in t.parts for t in teachers):
        return ("the teacher is the seed-0 unsupervised run of the same sweep (the best-validation checkpoint of a run "
                "with OFG's budget), not a separately trained one")
    return None


def _design_note(rows) -> str | None:
    """Tables 3/4's caveat for the points that are not the paper's designs."""
    notes = []
    if any(r["overrides"].get("optimizer_design") == "network" for r in rows):
        notes.append("`network` is a per-epoch copy of the main model (its labels lag by construction), not the "
                     "paper's persistent optimizer network (`optimizer-network`)")
    if any(r["overrides"].get("optimizer_design") == "downsample" and not r["overrides"].get("inner_coarse_energy")
           for r in rows):
        notes.append("`downsample` without `inner_coarse_energy` evaluates its energy at full resolution (no "
                     "speed-up, unlike the paper's)")
    return "; ".join(notes) or None


# The paper's ablation claims, each "this change costs Dice against full OFG", with the sweep table (a NAME.json
# of `sweep`) that tests it, and whether it leans on the unsupervised loss (then it presupposes that full OFG
# beats unsupervised training: `ofg_lib.stats`). Points of a table not named in `points` are all taken. `share`
# orders a Fig. 6 axis by its unsupervised share (the paper: "a notable decrease in performance with increased
# reliance on unsupervised methods"), for the trend between a table's points.
CLAIMS = [
    {"claim": "self-training below OFG (Fig. 5)", "table": "fig5", "needs_premise": False, "note": _teacher_note},
    {"claim": "epoch-interval guidance below OFG (Fig. 6)", "table": "fig6_interval", "needs_premise": True,
     "share": lambda o: o.get("ofg_every", 1)},
    {"claim": "threshold guidance below OFG (Fig. 6)", "table": "fig6_threshold", "needs_premise": True,
     "share": lambda o: 1 - o.get("ofg_prob", 1.0)},
    {"claim": "adding L_sim below OFG (Fig. 6, Eq. 7)", "table": "fig6_mix", "needs_premise": True,
     "share": lambda o: o.get("alpha", 0.0)},
    {"claim": "an unsupervised warm-up below OFG (Fig. 7)", "table": "fig7", "needs_premise": True,
     "points": ["warmup-unsupervised"]},
    {"claim": "a fixed-label warm-up below OFG (Fig. 7)", "table": "fig7", "needs_premise": False,
     "points": ["warmup-self-training", "warmup-optimized-self-training"]},
    {"claim": "other optimizer designs below OFG (Tables 3, 4)", "table": "table34", "needs_premise": False,
     "note": _design_note},
]


def verdict_metric(tables: dict) -> str:
    """The metric verdicts are computed on: the test split's Dice of the best checkpoints when every table has
    it (`sweep(..., test_pairs=N)`), else the mean of the last validations (`val_dice`)."""
    return "test_dice" if tables and all(t.get("test_pairs") for t in tables.values()) else "val_dice"


def ablation_verdicts(tables: dict, premise_table: dict, claims=CLAIMS, metric: str | None = None) -> dict:
    """Verdicts of the paper's ablation claims, computed from sweep results (`ofg_lib.stats.claim_verdict`).

    `tables`: {table name: sweep result} as in CLAIMS; `premise_table`: a sweep result holding the point
    `strategy=unsupervised` against full OFG (unsupervised - OFG per seed). Returns the premise and one row per
    (claim, point): the paired difference (point - full OFG), its interval and the verdict. `metric`: default
    `verdict_metric` of the tables and the premise table. A claim's `note` may be a function of the table's rows.
    """
    from .stats import claim_verdict, interval, premise_holds
    metric = metric or verdict_metric({**tables, "core": premise_table})
    trends = []
    ref = next((r for r in premise_table["rows"] if r["overrides"] == {"strategy": "unsupervised"}), None)
    if ref is None:
        raise ValueError("the premise table has no point strategy=unsupervised (against full OFG)")
    ofg_minus_unsup = [-v for v in ref[metric]["per_seed"]]
    premise = premise_holds(ofg_minus_unsup)
    rows = []
    for c in claims:
        result = tables.get(c["table"])
        if result is None:
            continue
        chosen = [r for r in result["rows"] if not c.get("points") or r["point"] in c["points"]]
        note = c.get("note")
        note = note(chosen) if callable(note) else note
        for r in chosen:
            v = claim_verdict(r[metric]["per_seed"], c["needs_premise"], premise)
            rows.append({"claim": c["claim"], "table": c["table"], "point": r["point"], "needs_premise": c["needs_premise"],
                         "note": note, "reference": r[metric]["reference"], **v})
        if c.get("share") and len(chosen) > 1:
            trends.append(_trend(c, sorted(chosen, key=lambda r: c["share"](r["overrides"])), metric))
    return {"metric": metric, "premise": {"holds": premise, **interval(ofg_minus_unsup)}, "rows": rows,
            "trends": trends}


def _trend(claim: dict, ordered: list, metric: str) -> dict:
    """A Fig. 6 axis with its points in order of unsupervised share: each point's mean change against full OFG,
    whether it falls at every step, and each step as a paired difference (the next point minus this one, seed by
    seed, with its t interval)."""
    from .stats import interval
    means = [float(np.mean(r[metric]["per_seed"])) for r in ordered]
    steps = [{"from": a["point"], "to": b["point"],
              **interval(np.subtract(b[metric]["per_seed"], a[metric]["per_seed"]))}
             for a, b in zip(ordered, ordered[1:])]
    return {"claim": claim["claim"], "points": [r["point"] for r in ordered], "means": means,
            "falls": all(y < x for x, y in zip(means, means[1:])), "steps": steps}


def verdicts_markdown(v: dict) -> str:
    """The verdict table, and the premise it was computed under, as Markdown (every word from the numbers)."""
    p = v["premise"]
    ci = f"[{p['low']:+.4f}, {p['high']:+.4f}]" if p["low"] is not None else "(one seed: no interval)"
    state = ("holds" if p["holds"] else "contradicted (unsupervised training is ahead)"
             if p["high"] is not None and p["high"] < 0 else "not established")
    lines = [f"Premise (full OFG beats unsupervised training, {v['metric']}): OFG - unsupervised {p['mean']:+.4f}, "
             f"95 % CI {ci}, OFG ahead in {p['ahead']} of {p['n']} seeds: **{state}**. "
             "Claims marked * lean on the unsupervised loss and are testable only where the premise holds.", "",
             "| claim | point | change - full OFG | 95 % CI (t, ddof 1) | seeds below / above | verdict |",
             "|---|---|---|---|---|---|"]
    for r in v["rows"]:
        ci = f"[{r['low']:+.4f}, {r['high']:+.4f}]" if r["low"] is not None else "-"
        lines.append(f"| {r['claim']}{' *' if r['needs_premise'] else ''} | {r['point']} | {r['mean']:+.4f} | {ci} | "
                     f"{r['behind']} / {r['ahead']} | {r['verdict']} |")
    counts = {k: sum(r["verdict"] == k for r in v["rows"]) for k in ("holds", "contradicted", "unresolved",
                                                                      "not testable here")}
    notes = dict.fromkeys((r["claim"], r["note"]) for r in v["rows"] if r.get("note"))
    lines += [""] + [f"- {claim}: {note}." for claim, note in notes]
    if v.get("trends"):
        lines += ["", "With more unsupervised share along each Fig. 6 axis (point means, change - full OFG; each "
                  "step paired by seed, next point minus this one):", ""]
        for t in v["trends"]:
            path = " -> ".join(f"{p} {m:+.4f}" for p, m in zip(t["points"], t["means"]))
            steps = "; ".join(
                f"{s['to']} - {s['from']} {s['mean']:+.4f}" + (
                    f", 95 % CI [{s['low']:+.4f}, {s['high']:+.4f}] ({'resolved' if s['significant'] else 'not resolved'})"
                    if s["low"] is not None else " (one seed: no interval)") for s in t["steps"])
            caveat = ("" if v["premise"]["holds"] else " Not testable here: the premise does not hold, so more "
                      "unsupervised share only moves toward unsupervised training.")
            lines.append(f"- {t['claim']}: {path}: {'falls at every step' if t['falls'] else 'does not fall at every step'}"
                         f"; {steps}.{caveat}")
    lines += ["", "Verdicts: " + ", ".join(f"{n} {k}" for k, n in counts.items()) + f" (of {len(v['rows'])} points)."]
    return "\n".join(lines) + "\n"


def folder_verdicts(folder) -> dict:
    """`ablation_verdicts` of a folder of sweep tables (NAME.json of the CLAIMS' tables, with core.json as the
    premise): a report folder such as reports/ablations, or a sweep's run folder."""
    folder = Path(folder)
    if not (folder / "core.json").is_file():
        raise FileNotFoundError(f"{folder}/core.json not found: the premise table (unsupervised against full OFG)")
    tables = {c["table"]: json.loads((folder / f"{c['table']}.json").read_text())
              for c in CLAIMS if (folder / f"{c['table']}.json").is_file()}
    return ablation_verdicts(tables, json.loads((folder / "core.json").read_text()))


def main(argv=None):
    import argparse
    p = argparse.ArgumentParser(prog="python -m ofg_lib.sweep",
                                description="Recompute the ablation verdicts from a folder of sweep tables.")
    p.add_argument("folder", help="a folder of sweep NAME.json files with core.json (e.g. reports/ablations)")
    a = p.parse_args(argv)
    folder = Path(a.folder)
    if not (folder / "core.json").is_file():
        p.error(f"{folder}/core.json not found: the premise table (unsupervised against full OFG)")
    v = folder_verdicts(folder)
    write_json(folder / "verdicts.json", v)
    atomic_write(folder / "verdicts.md", verdicts_markdown(v))
    print(verdicts_markdown(v))


if __name__ == "__main__":
    main()
