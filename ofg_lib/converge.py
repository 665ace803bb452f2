"""Training to a plateau: does OFG overtake unsupervised training when both are trained long enough? (issue 19)

    python -m ofg_lib.converge --spec configs/studies/converge.yaml         # resumable; summary in reports/converge/
    result = ofg_lib.converge.run_converge(spec, out="results/converge")

The earlier study scored every run in its last epochs, where the published poly schedule has annealed the inner
lr to nearly zero (OFG is then switched off), and stopped far from convergence. Here each run keeps its lrs
(`lr_schedule: constant`, or a poly schedule whose horizon `schedule_epochs` is much longer than the run) and
trains until the plateau rule of `ofg_lib.schedule.plateaued` holds on its validation curve, capped at
`epochs` x `steps_per_epoch` steps. Scores:

- the headline: each run's **best-validation checkpoint scored on the test split** (selection on validation,
  reporting on held-out pairs, as the paper does), beside the mean of its last `last_k` validations;
- per metric, OFG minus unsupervised paired by seed, with a 95 % t interval (ddof 1) and the sign count;
- the seed-mean learning curves and the steps at which their difference changes sign (the crossover).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np

from .sweep import table_markdown, train_history
from .evaluate import score_run
from .config import RUNTIME, TrainConfig, config_differences, load_config
from .files import atomic_write, load_checkpoint, resolve, write_json
from .runs import RunFolder
from .stats import last_k_mean, paired

__all__ = ["paired_row", "crossings", "seed_curves", "run_converge", "run_pareto", "pareto_markdown", "pareto_figure",
           "markdown", "where_ofg_stands", "plot_curves", "plot_pareto", "STRATEGIES"]

STRATEGIES = ("unsupervised", "ofg")
COLLAPSE = 0.05      # a fall of validation Dice after its best this large is reported as a collapse
METRICS = ("dice", "fold_fraction", "sdlogj", "epe")


def seed_curves(histories: list, metric: str = "val_dice"):
    """(steps, values[seed, validation]) over the validation steps every run reached (runs may stop early)."""
    rows = [{r["step"]: r[metric] for r in h if r.get(metric) is not None} for h in histories]
    common = sorted(set.intersection(*(set(r) for r in rows)))
    return np.array(common), np.array([[r[s] for s in common] for r in rows], dtype=float)


def crossings(steps, difference, window: int = 5) -> list[dict]:
    """Where the seed-mean difference (OFG - unsupervised), smoothed over `window` validations, changes sign."""
    if len(difference) < window:
        return []
    smooth = np.convolve(difference, np.ones(window) / window, mode="valid")
    at = np.asarray(steps)[window - 1:]
    out = []
    for i in range(1, len(smooth)):
        if np.sign(smooth[i]) != np.sign(smooth[i - 1]) and smooth[i] != 0:
            out.append({"step": int(at[i]), "to": "ofg ahead" if smooth[i] > 0 else "unsupervised ahead"})
    return out


def paired_row(scores: dict, seeds, a: str = "unsupervised", b: str = "ofg", metrics=METRICS) -> dict:
    """`b` against the reference `a` as a row of the runner's schema (`ofg_lib.sweep`): per metric the paired
    record of `ofg_lib.stats.paired` (both means and ddof-1 spreads, the per-seed differences b - a, their mean,
    95 % t interval and sign count). `scores`: {(strategy, seed): {metric: value}}."""
    row = {"point": b, "overrides": {"strategy": b}}
    for m in metrics:
        va = [scores[(a, s)].get(m) for s in seeds]
        vb = [scores[(b, s)].get(m) for s in seeds]
        if not any(v is None for v in va + vb):
            row[m] = paired(vb, va)
    return row


def _plateaued(folder, history) -> bool:
    """Whether the run in `folder` ended by the plateau rule (its summary says so, for the step it reached)."""
    try:
        summary = RunFolder(folder).summary()
    except (OSError, ValueError):
        return False
    return bool(summary.get("stopped_early")) and summary.get("steps") == history[-1]["step"]


def _last_k(history, k: int) -> dict:
    """The mean of a run's last k validations (compare's score), under this module's metric names."""
    s = last_k_mean(history, math.inf, k, ("val_dice", "fold_fraction", "sdlogj", "epe"))
    return {"dice": s["val_dice"], **{m: s[m] for m in ("fold_fraction", "sdlogj", "epe")}}


def stored_history(cfg: dict, folder) -> list | None:
    """The history of the run in `folder` as it stands, without training: None when the folder holds no run; an
    error when it holds a run of another config (as `train_history`'s exact reuse).

    A folder without checkpoints (the logs a GPU session sent back: config.json, log.csv, summary.json and the
    score caches, see scripts/converge_parallel.py) is read from config.json and log.csv."""
    folder, run = Path(folder), RunFolder(folder)
    if run.holds_run():
        state = load_checkpoint(run.checkpoint())
        stored, history = state["config"], state["history"]
    elif run.has_logs():
        stored, history = run.config(), run.read_log()
    else:
        return None
    diff = config_differences(stored, load_config(cfg), RUNTIME)
    if diff:
        raise ValueError(f"{folder} holds a run of another config (stored -> requested): {'; '.join(diff)}")
    return history


def stored_score(folder, split: str, n, which: str = "best", history=None) -> dict | None:
    """`evaluate.score_run` where the checkpoint is there; else the score cache the run's machine wrote (the
    logs of a GPU session), which records the step, epoch and config of the checkpoint it scored: it must name
    the config in the folder's config.json and a step the run's `history` reached. None when there is neither."""
    folder = Path(folder)
    if RunFolder(folder).checkpoint(which).exists():
        return score_run(folder, split, n, which)
    cache = RunFolder(folder).score_cache(which, split, n)
    if not cache.exists():
        return None
    cached = json.loads(cache.read_text())
    if cached.get("config") != json.dumps(RunFolder(folder).config(), sort_keys=True, default=str):
        raise ValueError(f"{cache} scored a checkpoint of another config than the run in {folder}")
    if history is not None and cached.get("step") not in {r["step"] for r in history}:
        raise ValueError(f"{cache} scored step {cached.get('step')}, which the run's log does not reach")
    return cached


def base_config(spec: dict) -> dict:
    """The config every run of `spec` shares: its `base` plus its `setting`'s data keys."""
    from .study import setting_config
    return {**spec["base"], **setting_config(spec["setting"], spec["base"]["img_size"])}


def arm_overrides(spec: dict, arm: str) -> dict:
    """The config keys an arm changes (its `seeds` entry is not one)."""
    return {k: v for k, v in spec["arms"][arm].items() if k != "seeds"}


def arm_config(spec: dict, arm: str, base: dict | None = None) -> tuple[dict, list]:
    """(config of `arm`'s runs without strategy and seed, the arm's seeds): an arm's `seeds` overrides the spec's."""
    seeds = list(spec["arms"][arm].get("seeds", spec["seeds"]))
    return {**(base_config(spec) if base is None else base), **arm_overrides(spec, arm)}, seeds


def run_converge(spec: dict, out, log=print, train: bool = True) -> dict:
    """Train (or reuse) every arm x strategy x seed of `spec` under `out`; write converge.json there.

    `spec`: base (TrainConfig keys shared by all runs), setting (a name of `ofg_lib.study.SETTINGS`), arms
    ({name: overrides}, e.g. constant and long-poly schedules; `seeds` among an arm's overrides sets its own
    seeds), seeds, test_pairs, last_k. Runs go seed by seed,
    both strategies of a seed together, so an interrupted study still has complete pairs.
    `train=False` trains nothing: it scores the runs as they stand (`stored_history`), skips seeds whose pair is
    incomplete and marks runs that neither finished nor plateaued as `cut_short` (e.g. runs trained elsewhere
    under a time limit).
    """
    from .study import identity_scores
    out = Path(out)
    base = base_config(spec)
    k, n_test = int(spec.get("last_k", 3)), spec.get("test_pairs")
    result = {"spec": spec, "identity": identity_scores(base), "arms": {}}
    for arm in spec["arms"]:
        arm_cfg, arm_seeds = arm_config(spec, arm, base)     # an arm may run fewer seeds
        overrides = arm_overrides(spec, arm)
        hist, test, last, meta = {}, {}, {}, {}
        cap = int(arm_cfg.get("epochs", 10)) * int(arm_cfg.get("steps_per_epoch", 50))
        for seed in arm_seeds:
            got = {}
            for strat in STRATEGIES:
                folder = out / arm / f"{strat}-seed{seed}"
                log(f"[converge] {arm}: {strat} seed {seed}")
                t0 = time.perf_counter()
                cfg = {**arm_cfg, "strategy": strat, "seed": seed}
                h = train_history(cfg, folder) if train else stored_history(cfg, folder)
                sc = None
                if h:
                    sc = (score_run(folder, "test", n_test, "best") if train
                          else stored_score(folder, "test", n_test, "best", h))
                got[strat] = (folder, h, sc, t0)
            missing = [st for st, (_, h, sc, _) in got.items() if not h or sc is None]
            if missing:          # train=False only: a seed is scored as a pair or not at all
                log(f"[converge] {arm} seed {seed}: skipped, no run or no score for {', '.join(missing)}")
                continue
            for strat, (folder, h, sc, t0) in got.items():
                hist[(strat, seed)] = h
                test[(strat, seed)] = sc
                last[(strat, seed)] = _last_k(h, k)
                plateaued = _plateaued(folder, h)
                vals = [r["val_dice"] for r in h if r.get("val_dice") is not None]
                top = int(np.argmax(vals))
                meta[(strat, seed)] = {"steps": h[-1]["step"], "best_step": test[(strat, seed)]["step"],
                                       "best_val_dice": vals[top], "last_val_dice": vals[-1],
                                       # how far validation Dice fell after its best (a collapse, if large)
                                       "drop_after_best": float(vals[top] - min(vals[top:])),
                                       "stopped_early": h[-1]["step"] < cap and plateaued,
                                       # neither at the cap nor stopped by the plateau rule: cut off (train=False)
                                       "cut_short": h[-1]["step"] < cap and not plateaued,
                                       # training seconds from the log (per-step times x steps; no validation)
                                       "train_s": float(sum((r["sec_per_step_network"] + r["sec_per_step_inner"]
                                                             + r.get("sec_per_step_data", 0.0))
                                                            * (r["step"] - (h[i - 1]["step"] if i else 0))
                                                            for i, r in enumerate(h))),
                                       "sec_per_step": float(np.median([r["sec_per_step_network"]
                                                                        + r["sec_per_step_inner"] for r in h])),
                                       "wall_s_this_call": time.perf_counter() - t0}
            done = [s for s in arm_seeds if all((st, s) in hist for st in STRATEGIES)]
            if not done:
                continue
            # each strategy's curve over the steps all its seeds reached; the difference over the steps every
            # run of both strategies reached (runs stop at their own plateau)
            own = {st: seed_curves([hist[(st, s)] for s in done]) for st in STRATEGIES}
            steps, both = seed_curves([hist[(st, s)] for st in STRATEGIES for s in done])
            unsup, ofg = both[:len(done)], both[len(done):]
            diff = (ofg - unsup).mean(0)
            # equal steps: each run's best validation Dice within the steps both runs of its seed reached
            equal = {}
            for s_ in done:
                common = min(hist[(st, s_)][-1]["step"] for st in STRATEGIES)
                for st in STRATEGIES:
                    equal[(st, s_)] = {"dice": max(r["val_dice"] for r in hist[(st, s_)]
                                                   if r.get("val_dice") is not None and r["step"] <= common),
                                       "steps": common}
            result["arms"][arm] = {
                "overrides": overrides, "seeds": done,
                "test_best": paired_row(test, done), "last_k": paired_row(last, done),
                "equal_steps": {"steps": [equal[("ofg", s_)]["steps"] for s_ in done],
                                "row": paired_row(equal, done, metrics=("dice",))},
                "runs": {f"{st}/{s}": meta[(st, s)] for st in STRATEGIES for s in done},
                "curves": {st: {"step": own[st][0].tolist(), "mean": own[st][1].mean(0).tolist(),
                                "per_seed": own[st][1].tolist()} for st in STRATEGIES},
                "curve": {"step": steps.tolist(), "unsupervised": unsup.mean(0).tolist(), "ofg": ofg.mean(0).tolist(),
                          "difference": diff.tolist(),
                          "difference_per_seed": (ofg - unsup).tolist()},
                "crossings": crossings(steps, diff),
                "points": [{"strategy": st, "seed": s, **{m: test[(st, s)][m] for m in METRICS}} for st in STRATEGIES
                           for s in done]}
            write_json(out / "converge.json", result)
            atomic_write(out / "converge.md", markdown(result))
    return result


def _label(cfg: dict) -> str:
    """A Pareto point's label: the strategy and the smoothness weight of its loss (the config's, else the
    trainer's default)."""
    default = TrainConfig()
    if cfg["strategy"] == "unsupervised":
        return f"unsupervised, unsup_reg {cfg.get('unsup_reg', default.unsup_reg):g}"
    return f"OFG, ofg_reg {cfg.get('ofg_reg', default.ofg_reg):g}"


def run_pareto(spec: dict, out, log=print) -> dict:
    """A fair baseline (issue 19, item 5): each strategy at several smoothness weights, one point per run.

    `spec["pareto"]`: `arm` (the arm whose config and runs are the reference: its default-weight runs are reused
    as points, nothing retrained), `seeds`, `variants` ({name: overrides with `strategy`}, e.g. unsup_reg 0.25).
    Each run is trained (or reused) under `out/pareto/NAME-seedS` and its best-validation checkpoint scored on the
    test split; the result lists one point per run (Dice, folds, SDlogJ, EPE) and per label the seed mean, std
    (ddof 1) and a 95 % t interval of Dice.
    """
    out = Path(out)
    par = spec["pareto"]
    ref = arm_overrides(spec, par["arm"])
    ref_cfg, _ = arm_config(spec, par["arm"])
    seeds, n_test = list(par["seeds"]), spec.get("test_pairs")
    jobs = [(_label({**ref_cfg, "strategy": st}), out / par["arm"] / f"{st}-seed{s}",
             {**ref_cfg, "strategy": st, "seed": s}) for st in STRATEGIES for s in seeds]
    for name, over in par["variants"].items():
        if "strategy" not in over:
            raise ValueError(f"pareto variant {name!r} names no strategy")
        cfg = {**ref_cfg, **over}
        jobs += [(_label(cfg), out / "pareto" / f"{name}-seed{s}", {**cfg, "seed": s}) for s in seeds]
    points = []
    for label, folder, cfg in jobs:
        log(f"[pareto] {label}, seed {cfg['seed']}")
        h = train_history(cfg, folder)
        sc = score_run(folder, "test", n_test, "best")
        points.append({"label": label, "strategy": cfg["strategy"], "seed": cfg["seed"], "steps": h[-1]["step"],
                       "best_step": sc["step"], **{m: sc[m] for m in METRICS}})
    summary = []
    for label in dict.fromkeys(p["label"] for p in points):
        mine = [p for p in points if p["label"] == label]
        row = {"label": label, "n": len(mine)}
        for m in METRICS:
            v = np.array([p[m] for p in mine], dtype=float)
            row[m] = float(v.mean())
            row[f"{m}_std"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
        summary.append(row)
    result = {"spec": {"arm": par["arm"], "seeds": seeds, "variants": par["variants"], "reference": ref},
              "points": points, "summary": summary, "dominated": dominated(summary)}
    write_json(out / "pareto.json", result)
    return result


def dominated(summary: list[dict], x: str = "fold_fraction") -> dict:
    """For each label, the labels that dominate its seed means (Dice at least as high and `x` at least as low,
    one of them strictly): the points off the Pareto front, computed."""
    out = {}
    for a in summary:
        out[a["label"]] = [b["label"] for b in summary if b is not a and b["dice"] >= a["dice"] and b[x] <= a[x]
                           and (b["dice"] > a["dice"] or b[x] < a[x])]
    return out


def pareto_markdown(result: dict) -> str:
    """The Pareto table: seed mean ± std of every label, and which labels each is dominated by."""
    s = result["spec"]
    lines = [f"Reference arm **{s['arm']}** ({json.dumps(s['reference'])}), seeds {s['seeds']}; each run's "
             "best-validation checkpoint on the test split.", "",
             "| strategy, weight | seeds | Dice | folds % | SDlogJ | EPE (vox) | dominated by (Dice and folds) |",
             "|---|---|---|---|---|---|---|"]
    for r in result["summary"]:
        dom = result["dominated"].get(r["label"]) or []
        lines.append(f"| {r['label']} | {r['n']} | {r['dice']:.4f} ± {r['dice_std']:.4f} | "
                     f"{100 * r['fold_fraction']:.4f} ± {100 * r['fold_fraction_std']:.4f} | {r['sdlogj']:.4f} ± "
                     f"{r['sdlogj_std']:.4f} | {r['epe']:.3f} ± {r['epe_std']:.3f} | {'; '.join(dom) or 'none (on the front)'} |")
    front = [r["label"] for r in result["summary"] if not result["dominated"].get(r["label"])]
    best_u = max((r for r in result["summary"] if r["label"].startswith("unsup")), key=lambda r: r["dice"], default=None)
    best_o = max((r for r in result["summary"] if r["label"].startswith("OFG")), key=lambda r: r["dice"], default=None)
    lines += ["", f"On the front of seed means (Dice against folds): {', '.join(front)}."]
    if best_u and best_o:
        lines.append(f"Best unsupervised weight by Dice: {best_u['label']} ({best_u['dice']:.4f}, folds "
                     f"{100 * best_u['fold_fraction']:.4f} %); best OFG weight: {best_o['label']} ({best_o['dice']:.4f}, "
                     f"folds {100 * best_o['fold_fraction']:.4f} %); OFG - unsupervised at their best weights: "
                     f"{best_o['dice'] - best_u['dice']:+.4f} Dice (seed means, not paired).")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    """The tables of a converge result, every sentence built from its numbers."""
    spec = result["spec"]
    b = spec["base"]
    lines = [f"Setting **{spec['setting']}** at {'x'.join(map(str, b['img_size']))}, {b['model']}; base config: network lr "
             f"{b.get('lr')}, at most {b['epochs'] * b['steps_per_epoch']} steps ({b['epochs']} epochs x "
             f"{b['steps_per_epoch']}), validation on {b.get('val_pairs', 10)} pairs every "
             f"{b.get('val_every', 1)} epoch(s), plateau rule: smoothed validation Dice gains < "
             f"{b.get('plateau_tol')} over the last third (not before {b.get('plateau_min_steps', 0)} steps). "
             f"Identity: Dice {result['identity']['dice']:.3f}, EPE {result['identity']['epe']:.2f} voxels.", ""]
    for arm, r in result["arms"].items():
        arm_b = {**b, **r["overrides"]}
        lines += [f"## {arm}: {json.dumps(r['overrides'])}", "",
                  f"Network lr {arm_b.get('lr')}, at most {arm_b['epochs'] * arm_b['steps_per_epoch']} steps.", "",
                  f"Seeds {r['seeds']} ({len(r['seeds'])} pairs). Headline: best-validation checkpoint on "
                  f"{spec.get('test_pairs') or 'all'} test pairs; OFG - unsupervised paired by seed, 95 % t "
                  "interval (ddof 1), seeds where OFG is ahead / behind.", ""]
        tables = [("best checkpoint, test split", r["test_best"])]
        if "equal_steps" in r:
            tables.append((f"best validation Dice within the steps both runs of a seed reached "
                           f"({', '.join(map(str, r['equal_steps']['steps']))} steps; selected and scored on the "
                           "validation pairs)", r["equal_steps"]["row"]))
        tables.append((f"mean of the last {spec.get('last_k', 3)} validations", r["last_k"]))
        for title, row in tables:
            lines += [f"**{title}**", "", table_markdown([row], columns=METRICS, versus="unsupervised", long=True,
                                                         label="strategy")]
        runs = r["runs"]
        lines += ["| run | steps trained | best-validation step | best / last val Dice | largest drop after best "
                  "| s/step | training min |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {k} | {v['steps']} | {v['best_step']} | {v['best_val_dice']:.4f} / {v['last_val_dice']:.4f} | "
                  f"{v['drop_after_best']:.4f} | {v['sec_per_step']:.4f} | {v.get('train_s', float('nan')) / 60:.1f} |"
                  for k, v in runs.items()]
        lines.append(f"\nTraining time of this arm (from the logs, validation excluded): "
                     f"{sum(v.get('train_s', 0.0) for v in runs.values()) / 3600:.2f} h on "
                     f"{result.get('machine', 'this machine')}.")
        lines.append("")
        lines.append(verdict(r))
        lines.append("")
    return "\n".join(lines)


def verdict(arm: dict) -> str:
    """One sentence on the headline Dice row and the crossover, computed from the arm's numbers."""
    row = arm["test_best"].get("dice")
    if row is None:
        return "No Dice row yet."
    cut = [k for k, v in arm["runs"].items() if v.get("cut_short")]
    if cut:
        lo, hi = row["low"], row["high"]
        ci = "" if lo is None else f" (95 % CI [{lo:+.4f}, {hi:+.4f}])"
        what = (f"not a converged comparison, since {len(cut)} run(s) were cut by a time limit before the cap or "
                f"the plateau rule: on the test split OFG - unsupervised {row['difference']:+.4f} Dice{ci} "
                f"compares runs of unequal length, and the equal-steps row is the like-for-like one")
    elif row["low"] is None:
        what = f"one seed pair only: OFG - unsupervised {row['difference']:+.4f} Dice (no interval)"
    elif row["significant"]:
        side = "ahead of" if row["difference"] > 0 else "behind"
        what = (f"OFG is {side} unsupervised training on the test split by {row['difference']:+.4f} Dice "
                f"(95 % CI [{row['low']:+.4f}, {row['high']:+.4f}], excludes 0)")
    else:
        what = (f"no difference resolved on the test split: {row['difference']:+.4f} Dice "
                f"(95 % CI [{row['low']:+.4f}, {row['high']:+.4f}] includes 0)")
    cross = arm["crossings"]
    cross_txt = ("the smoothed seed-mean curves never cross" if not cross else
                 "the smoothed seed-mean curves change order at step(s) "
                 + ", ".join(f"{c['step']} ({c['to']})" for c in cross))
    eq = arm.get("equal_steps", {}).get("row")
    if eq:
        e = eq["dice"]
        ci = ("" if e["low"] is None else
              f", 95 % CI [{e['low']:+.4f}, {e['high']:+.4f}]")
        what += (f"; at equal steps (each run's best validation Dice within the steps both runs of its seed "
                 f"reached) {e['difference']:+.4f}{ci}, OFG ahead in {e['ahead']} of {e['n']}")
    capped = [k for k, v in arm["runs"].items() if not v.get("stopped_early", True) and not v.get("cut_short")]
    collapsed = [k for k, v in arm["runs"].items() if v.get("drop_after_best", 0) > COLLAPSE]
    notes = ""
    if collapsed:
        notes += (f" Validation Dice fell by more than {COLLAPSE} after its best in {len(collapsed)} run(s) "
                  f"({', '.join(collapsed)}): the best checkpoint is scored, but those runs stopped improving there.")
    if capped:
        notes += f" {len(capped)} run(s) reached the step cap before the plateau rule held ({', '.join(capped)})."
    if cut:
        notes += f" Cut runs, scored where they stopped: {', '.join(cut)}."
    return f"Verdict ({len(arm['seeds'])} seeds): {what}; {cross_txt}.{notes}"


def _status(row: dict) -> str:
    if row["low"] is None:
        return "one seed pair, no interval"
    if row["significant"]:
        return "OFG ahead, the 95 % interval excludes 0" if row["difference"] > 0 else \
            "OFG behind, the 95 % interval excludes 0"
    return "not resolved, the 95 % interval includes 0"


def where_ofg_stands(converge: dict, pareto: dict | None = None, converge3d: dict | None = None) -> str:
    """The answer so far, one line per experiment, computed from the committed summaries (README block
    `headline`): each arm's headline Dice difference and its status, the Pareto dominance, the 3-D run's state."""
    def dice(row):
        return row["dice"]

    def regime(result, arm):
        """Model, data, schedules and budget of an arm, from its spec (what the line's conclusion holds under)."""
        c = {**result["spec"]["base"], **result["arms"][arm]["overrides"]}
        get = lambda k: c.get(k, getattr(TrainConfig(), k))  # noqa: E731
        return (f"{get('model')}, embedded `{result['spec']['setting']}` cohort at "
                f"{'x'.join(map(str, c['img_size']))}; network lr {get('lr'):g} {get('lr_schedule')}, inner lr "
                f"{get('inner_lr'):g} {get('inner_lr_schedule')}; at most {get('epochs') * get('steps_per_epoch')} "
                f"steps")
    lines = []
    for arm, a in converge["arms"].items():
        d = dice(a["test_best"])
        ci = "" if d["low"] is None else f" [{d['low']:+.4f}, {d['high']:+.4f}]"
        lines.append(f"- Arm **{arm}** ({regime(converge, arm)}; {len(a['seeds'])} seeds, best checkpoint on the test "
                     f"split): OFG - unsupervised {d['difference']:+.4f} Dice{ci}, OFG ahead in "
                     f"{d['ahead']} of {d['n']} seeds: {_status(d)}.")
    if pareto:
        unsup = [r["label"] for r in pareto["summary"] if r["label"].startswith("unsup")]
        ofg = [r["label"] for r in pareto["summary"] if r["label"].startswith("OFG")]
        beaten = [u for u in unsup if any(o in pareto["dominated"].get(u, []) for o in ofg)]
        free = [u for u in unsup if u not in beaten]
        n_seeds = len(pareto["spec"]["seeds"])
        lines.append(f"- Smoothness weights swept on arm {pareto['spec']['arm']} ({n_seeds} seeds, seed means): some "
                     f"OFG weight has "
                     f"at least the Dice and at most the folds of {len(beaten)} of the {len(unsup)} unsupervised "
                     f"weights" + (f"; not dominated: {', '.join(free)}." if free else "."))
    if converge3d:
        for arm, a in converge3d["arms"].items():
            cut = [k for k, v in a["runs"].items() if v.get("cut_short")]
            eq = a.get("equal_steps", {}).get("row")
            if cut and eq:
                e = eq["dice"]
                lines.append(f"- 3-D, arm {arm} ({regime(converge3d, arm)}; {len(a['seeds'])} seeds, trained on "
                             f"{converge3d.get('machine', 'another machine')}): not a converged comparison "
                             f"({len(cut)} runs cut by a time "
                             f"limit); at equal steps ({', '.join(map(str, a['equal_steps']['steps']))}) OFG - "
                             f"unsupervised {e['difference']:+.4f} Dice: {_status(e)}.")
            else:
                d = dice(a["test_best"])
                ci = "" if d["low"] is None else f" [{d['low']:+.4f}, {d['high']:+.4f}]"
                where = f", trained on {converge3d['machine']}" if converge3d.get("machine") else ""
                lines.append(f"- 3-D, arm {arm} ({regime(converge3d, arm)}; {len(a['seeds'])} seeds{where}; best "
                             f"checkpoint on the test split): OFG - unsupervised {d['difference']:+.4f} Dice{ci}, OFG "
                             f"ahead in {d['ahead']} of {d['n']} seeds: {_status(d)}.")
    lines.append("- Not tested here: real brains, the paper's 100,000 steps, ViT-V-Net and TransMorph trained to a "
                 "plateau.")
    return "\n".join(lines) + "\n"


def plot_curves(result: dict, arm: str, ax=None):
    """Seed-mean validation Dice of both strategies along training, and their difference (twin axis)."""
    import matplotlib.pyplot as plt
    r = result["arms"][arm]
    c = r["curve"]
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.5))
    for st, name in (("unsupervised", "unsupervised"), ("ofg", "OFG")):
        line, = ax.plot(r["curves"][st]["step"], r["curves"][st]["mean"], label=f"{name} (mean of {len(r['seeds'])})")
        for y in r["curves"][st]["per_seed"]:
            ax.plot(r["curves"][st]["step"], y, color=line.get_color(), lw=0.4, alpha=0.4)
    ax.set_xlabel("step")
    ax.set_ylabel("validation Dice (seed mean)")
    tw = ax.twinx()
    tw.plot(c["step"], c["difference"], color="gray", lw=0.8, label="OFG - unsupervised")
    tw.axhline(0, color="gray", lw=0.5, ls=":")
    tw.set_ylabel("difference", color="gray")
    ax.legend(loc="lower right")
    ax.set_title(f"{result['spec']['setting']}, {arm}")
    return ax


def plot_pareto(points: list[dict], x: str = "fold_fraction", ax=None, label_key: str = "label"):
    """Dice against folds (or SDlogJ): one point per run, coloured by its label (strategy and weight)."""
    import matplotlib.pyplot as plt
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4))
    for lab in dict.fromkeys(p[label_key] for p in points):
        mine = [p for p in points if p[label_key] == lab]
        ax.scatter([p[x] * (100 if x.startswith("fold") else 1) for p in mine], [p["dice"] for p in mine], label=lab)
    ax.set_xlabel({"fold_fraction": "folds (% of voxels)", "sdlogj": "SDlogJ"}.get(x, x))
    ax.set_ylabel("test Dice (best checkpoint)")
    ax.legend(fontsize=7)
    return ax


def main(argv=None):
    import torch
    import yaml
    p = argparse.ArgumentParser(prog="python -m ofg_lib.converge", description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", default="configs/studies/converge.yaml", help="YAML spec (see run_converge)")
    p.add_argument("--report", default="reports/converge", help="folder of the committed summary")
    p.add_argument("--only", metavar="ARM/STRATEGY/SEED",
                   help="train that one run and stop (no summary): for running the runs of a spec in parallel "
                        "processes, e.g. on a GPU; a later call without --only reuses them")
    p.add_argument("--device", help="device for --only (default: the spec's, else auto: CUDA when there is one)")
    p.add_argument("--threads", type=int, help="CPU threads for --only (default: the spec's; a runtime key, so a "
                                               "run started with other threads resumes)")
    p.add_argument("--machine", help="where the runs were trained, for the report (default: this machine)")
    p.add_argument("--score-only", action="store_true",
                   help="train nothing: score and summarise the runs as they stand (runs cut off by a time limit "
                        "are marked so)")
    args = p.parse_args(argv)
    spec = yaml.safe_load(resolve(args.spec).read_text())
    run_dir = resolve(spec.get("run_dir", "results/converge"))
    if args.only:
        try:
            arm, strat, seed = args.only.split("/")
            spec["arms"][arm]
            seed = int(seed)
        except (ValueError, KeyError) as e:
            p.error(f"--only {args.only!r}: give ARM/STRATEGY/SEED with an arm of the spec ({e})")
        if strat not in STRATEGIES:
            p.error(f"--only: strategy must be one of {STRATEGIES}, not {strat!r}")
        cfg = {**arm_config(spec, arm)[0], "strategy": strat, "seed": seed}
        if args.device:
            cfg["device"] = args.device
        if args.threads:
            cfg["threads"] = args.threads
        t0 = time.perf_counter()
        try:
            h = train_history(cfg, run_dir / arm / f"{strat}-seed{seed}")
        except KeyboardInterrupt:       # a deadline (scripts/converge_parallel.py): the last epoch's checkpoint stays
            print(f"[converge] {args.only}: interrupted after {time.perf_counter() - t0:.0f} s", flush=True)
            raise SystemExit(130)
        print(f"[converge] {args.only}: {h[-1]['step']} steps, last val Dice {h[-1].get('val_dice')}, "
              f"{time.perf_counter() - t0:.0f} s")
        return
    t0 = time.perf_counter()
    result = run_converge(spec, run_dir, train=not args.score_only)
    report = resolve(args.report)
    report.mkdir(parents=True, exist_ok=True)
    result["wall_s_this_call"] = time.perf_counter() - t0
    result["machine"] = args.machine or (f"{os.cpu_count()} CPU cores ({platform.machine()}), torch threads "
                                         f"{torch.get_num_threads()}")
    write_json(report / "converge.json", result)
    atomic_write(report / "converge.md", markdown(result))
    save_figure(result, report / "converge.png")
    print(markdown(result))
    if "pareto" in spec and not args.score_only:
        par = run_pareto(spec, run_dir)
        par["machine"] = result["machine"]
        write_json(report / "pareto.json", par)
        atomic_write(report / "pareto.md", pareto_markdown(par))
        save_pareto_figure(par, report / "pareto.png")
        print(pareto_markdown(par))


def pareto_figure(result: dict):
    """Dice against folds and against SDlogJ, one point per run of `run_pareto` (a matplotlib figure)."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, x in zip(axes, ("fold_fraction", "sdlogj")):
        plot_pareto(result["points"], x, ax=ax)
    fig.suptitle(f"each strategy at several smoothness weights ({result['spec']['arm']} arm; test split)")
    fig.tight_layout()
    return fig


def save_pareto_figure(result: dict, path) -> Path:
    """`pareto_figure` as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig = pareto_figure(result)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return Path(path)


def save_figure(result: dict, path) -> Path:
    """Learning curves and the Dice-against-SDlogJ points of every arm, one row per arm, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    arms = list(result["arms"])
    fig, axes = plt.subplots(len(arms), 2, figsize=(13, 3.6 * len(arms)), squeeze=False,
                             gridspec_kw={"width_ratios": [2, 1]})
    for row, arm in zip(axes, arms):
        plot_curves(result, arm, ax=row[0])
        plot_pareto([{**p, "label": p["strategy"]} for p in result["arms"][arm]["points"]], "sdlogj", ax=row[1])
        row[1].set_title(f"{arm}: one point per run (test split)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return Path(path)


if __name__ == "__main__":
    main()
