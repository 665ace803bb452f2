"""When does OFG help? OFG minus unsupervised over data difficulty, budget and the inner optimizer (notebook 08).

    python -m ofg_lib.study --profile study        # the whole study (hours on 2 cores; resumable)
    spec = ofg_lib.study.make_spec(base, settings=["today", "large"], seeds=[0, 1, 2])
    result = ofg_lib.study.run_study(spec, out="results/cpu/08_study")

A study is a spec (`make_spec`: the config every run shares and the axes it is varied along, the parameters of
notebook 08) and a folder. Every run is an ordinary training run (`ofg_lib.train.run`) in its own sub-folder,
resumed when unfinished and reused when finished, so the notebook, `make reproduce` and this command share their
work. Comparisons are paired by seed: the same model, data, data order and seed, OFG minus unsupervised.
Stages, in the order they run (the most informative first):

1. `settings` at equal steps: the difficulty axis (`SETTINGS`), `epochs` x `steps_per_epoch` steps each;
2. equal wall time: unsupervised trained again for as many epochs as OFG's time allows (median seconds per step);
3. `variants`: OFG with other inner-optimizer settings (e.g. a constant inner lr, 1 inner step), against the
   unsupervised runs of the first setting; `both_variants`: both strategies with other settings (e.g. the
   paper's network lr), compared with each other;
4. `budgets`: the first setting trained for other numbers of epochs (the budget axis; plateau: see `plateau`);
5. `confirm_3d`: one 3-D run pair per seed of the setting with the largest mean Dice gain (or, if OFG gains in
   none, the hardest: the lowest identity Dice), at a 3-D size.

Each score is the mean of a run's last `last_k` validations (single validations jitter).
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from .compare import METRICS
from .config import from_namespace, load_config
from .sweep import equal_time_epochs, mean_curve, step_seconds, sweep
from .sweep import table_markdown as _table
from .files import atomic_write, write_json

__all__ = ["SETTINGS", "setting_config", "identity_scores", "make_spec", "spec_from_params", "run_study", "plateau",
           "table_markdown", "curves", "conclusion", "design_markdown", "settings_markdown", "budget_markdown",
           "confirm_3d_markdown", "write_report"]

# The difficulty axis. Sizes scale with the cohort's default RMS for the image size (`Embedded.rms`), so a
# setting means the same thing in 2-D and 3-D. `supersample: 2` makes moving and fixed equally sharp (see
# ofg_lib.data.embedded); "today" is the unchanged default cohort of every earlier result.
SETTINGS = {
    "today": {},
    "large": {"rms_factor": 4.0, "embedded_rms_jitter": 0.5, "fine_factor": 2.0, "embedded_supersample": 2},
    "subject": {"embedded_pairs": "subject", "embedded_supersample": 2},
    "contrast": {"embedded_contrast": 0.5, "embedded_supersample": 2},
    # All at once, at magnitudes a network learns: at 96x112 with contrast 0.5 (and RMS x2) on subject pairs the
    # unsupervised baseline stayed at the identity's Dice for 2000 steps at lr 1e-3 and 5e-4 (measured while
    # designing issue 19's study); contrast 0.25 and RMS x1.5 learn (0.546 -> 0.639 Dice in 1000 steps).
    "realistic": {"embedded_pairs": "subject", "rms_factor": 1.5, "embedded_rms_jitter": 0.5, "fine_factor": 1.0,
                  "embedded_contrast": 0.25, "embedded_supersample": 2},
}
DESCRIPTIONS = {
    "today": "today's cohort: atlas -> subject, realistic RMS, one resampling (subjects blurrier than the atlas)",
    "large": "larger multi-scale deformations: RMS x4 (per-subject x U(0.5, 1.5)) plus a fine component of 2x RMS",
    "subject": "subject -> subject pairs (the OASIS setting), truth composed from two deformations",
    "contrast": "per-subject tissue contrast (strength 0.5): the similarity's optimum is no longer the truth",
    "realistic": "all at once, as real inter-subject data: subject pairs, larger multi-scale deformations (RMS x1.5, "
                 "per-subject x U(0.5, 1.5), fine component of 1x RMS), tissue contrast 0.25, supersampled",
}


def setting_config(name: str, img_size) -> dict:
    """The `embedded_*` config keys of setting `name` at `img_size` (rms factors resolved to voxels)."""
    from .data import Embedded
    if name not in SETTINGS:
        raise ValueError(f"unknown setting {name!r}; settings: {', '.join(SETTINGS)}")
    s = dict(SETTINGS[name])
    base_rms = Embedded("val", img_size, n=1, cache=False).rms
    if "rms_factor" in s:
        s["embedded_rms"] = round(s.pop("rms_factor") * base_rms, 4)
    if "fine_factor" in s:
        s["embedded_fine_rms"] = round(s.pop("fine_factor") * base_rms, 4)
    return s


@torch.no_grad()
def identity_scores(cfg: dict, n: int = 10) -> dict:
    """Dice and EPE of the identity (no registration) on the first `n` validation pairs of a config's data."""
    from .data import from_config
    from .metrics import dice
    ds = from_config(cfg, "val")
    d, e = [], []
    for i in range(min(n, len(ds))):
        it = ds[i]
        d.append(float(np.nanmean(dice(it["moving_seg"][None], it["fixed_seg"][None], ds.labels).numpy())))
        e.append(float(it["disp_true"].norm(dim=0)[it["fixed_seg"][0] > 0].mean()))
    return {"dice": float(np.mean(d)), "epe": float(np.mean(e))}


def make_spec(base: dict, settings, seeds, last_k: int = 3, equal_time: bool = True, variants=None,
              both_variants=None, budgets=(), confirm_3d=None) -> dict:
    """A study spec (what `run_study` takes): `base`, the config every run shares (TrainConfig keys, with img_size,
    epochs and steps_per_epoch), and the axes it is varied along. None for variants, both_variants or budgets
    means none."""
    missing = [k for k in ("img_size", "epochs", "steps_per_epoch") if k not in base]
    if missing:
        raise ValueError(f"a study's base config needs {', '.join(missing)} (every run's size and length), "
                         f"got keys {', '.join(base) or '(none)'}")
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(map(repr, unknown))}; settings: {', '.join(SETTINGS)}")
    return {"base": dict(base), "settings": list(settings), "seeds": list(seeds), "last_k": last_k,
            "equal_time": equal_time, "variants": dict(variants or {}), "both_variants": dict(both_variants or {}),
            "budgets": list(budgets or []), "confirm_3d": confirm_3d}


def spec_from_params(p: dict) -> dict:
    """Notebook 08's parameters (a params/*.yaml section, or the parameter cell's namespace) -> a study spec: its
    TrainConfig keys are the base config (`config.from_namespace`), the study's own names are the axes."""
    axes = ("last_k", "equal_time", "variants", "both_variants", "budgets", "confirm_3d")
    return make_spec(from_namespace(p), p["settings"], p["seeds"], **{k: p[k] for k in axes if k in p})


def run_study(spec: dict, out, callbacks=(), log=print) -> dict:
    """Run (or reuse) every run of `spec` under `out`; write study.json and study.md there; return the result.

    `spec` keys: base (TrainConfig keys shared by every run, with img_size and epochs), settings (names of
    SETTINGS), seeds, last_k, equal_time (bool), variants ({name: OFG config overrides}), budgets (epochs),
    confirm_3d (None or {img_size, epochs, steps_per_epoch, seeds, ...overrides}).
    A study is a list of sweeps (`ofg_lib.sweep.sweep`, the project's one runner): each stage pairs OFG runs with
    unsupervised ones (the reference), and its rows are sweep rows (per metric the paired record of
    `ofg_lib.stats.paired`: `reference` is unsupervised, `mean` OFG, `difference` OFG - unsupervised) with the
    stage's `tag`, `setting`, `comparison` and `epochs`. A run's folder is `out/TAG/STRATEGY-seedN`.
    """
    out = Path(out)
    base, seeds, last_k = dict(spec["base"]), list(spec["seeds"]), int(spec.get("last_k", 3))
    epochs = int(base["epochs"])
    result = {"spec": spec, "settings": {}, "rows": []}
    hist = {}

    def stage(tag, setting, comparison, ofg=None, unsupervised=None, img_size=None, seeds_=None, **keys):
        """One sweep: the OFG runs of `tag` (or the run `ofg` names) against unsupervised ones; adds its row."""
        img_size = img_size or base["img_size"]
        cfg = {**base, **setting_config(setting, img_size)}
        point = {"_name": f"{tag}/ofg", "strategy": "ofg", **(ofg or {})}
        ref = {"_name": f"{tag}/unsupervised", "strategy": "unsupervised", **(unsupervised or {})}
        table = sweep(cfg, [point], seeds=seeds_ or seeds, out=out, reference=ref, last_k=last_k,
                      callbacks=callbacks, log=lambda m: log(m.replace("[sweep]", "[study]")), name=None,
                      layout="{name}-seed{seed}", metrics=METRICS, histories=hist)
        result["rows"].append({"tag": tag, "setting": setting, "comparison": comparison, **keys, **table["rows"][0]})
        save()
        return table

    def runs(name, seeds_=None):
        return [hist[(name, seed)] for seed in seeds_ or seeds]

    def save():
        write_json(out / "study.json", result)
        atomic_write(out / "study.md", table_markdown(result["rows"]))

    # 1. the difficulty axis at equal steps
    for setting in spec["settings"]:
        ident = identity_scores({**base, **setting_config(setting, base["img_size"])})
        result["settings"][setting] = {"config": setting_config(setting, base["img_size"]), "identity": ident,
                                       "description": DESCRIPTIONS[setting]}
        stage(setting, setting, "equal steps", epochs=epochs)
        result["settings"][setting]["sec_per_step"] = {s: step_seconds(runs(f"{setting}/{s}"))
                                                       for s in ("unsupervised", "ofg")}
        save()
    # 2. equal wall time: the faster strategy (unsupervised, normally) trained for the slower one's time
    if spec.get("equal_time", True):
        for setting in spec["settings"]:
            _, longer = equal_time_epochs(epochs, {s: runs(f"{setting}/{s}") for s in ("unsupervised", "ofg")})
            extra = longer["unsupervised"]
            if extra <= epochs:
                log(f"[study] {setting}: OFG is not slower per step ({result['settings'][setting]['sec_per_step']}); "
                    "equal time = equal steps")
                continue
            stage(setting, setting, "equal time", epochs=epochs, unsupervised_epochs=extra,
                  unsupervised={"_name": f"{setting}-equal-time-{extra}ep/unsupervised", "epochs": extra})
    # 3. variants of the inner optimizer (OFG only), against the first setting's unsupervised runs
    first = spec["settings"][0]
    for name, overrides in (spec.get("variants") or {}).items():
        stage(f"{first}-{name}", first, f"equal steps, OFG {name}", epochs=epochs, ofg=overrides,
              unsupervised={"_name": f"{first}/unsupervised"})
    for name, overrides in (spec.get("both_variants") or {}).items():
        stage(f"{first}-{name}", first, f"equal steps, both {name}", epochs=int(overrides.get("epochs", epochs)),
              ofg=overrides, unsupervised=overrides)
    # 4. the budget axis: the first setting trained for other lengths (each with its own poly schedule)
    for n_ep in spec.get("budgets") or []:
        if n_ep != epochs:
            stage(f"{first}-{n_ep}ep", first, "equal steps", epochs=n_ep, ofg={"epochs": n_ep},
                  unsupervised={"epochs": n_ep})
    # 5. one 3-D confirmation
    c3 = spec.get("confirm_3d")
    if c3:
        gains = {r["setting"]: r["val_dice"]["difference"] for r in result["rows"]
                 if r["comparison"] == "equal steps" and r["tag"] == r["setting"]}
        best = max(gains, key=gains.get)
        if gains[best] <= 0:
            best = min(result["settings"], key=lambda s: result["settings"][s]["identity"]["dice"])
            why = "OFG gained in no setting: the hardest (lowest identity Dice)"
        else:
            why = "the largest mean Dice gain in 2-D"
        c3 = dict(c3)
        img_size3, seeds3 = list(c3.pop("img_size")), list(c3.pop("seeds", seeds))
        extra3 = {**c3, "img_size": img_size3}
        result["confirm_3d"] = {"setting": best, "why": why, "img_size": img_size3, "seeds": seeds3,
                                "identity": identity_scores({**base, **c3, "img_size": img_size3,
                                                             **setting_config(best, img_size3)})}
        stage(f"3d-{best}", best, "equal steps, 3-D", ofg=extra3, unsupervised=extra3, img_size=img_size3,
              seeds_=seeds3, epochs=int(c3.get("epochs", epochs)))
    result["histories"] = {f"{name}/{seed}": [{k: r.get(k) for k in ("step", "epoch", "val_dice", "epe")}
                                              for r in h_ if "val_dice" in r]
                           for (name, seed), h_ in hist.items()}
    save()
    return result


def plateau(rows, setting: str, tol: float = 0.005) -> dict:
    """Budget axis: per strategy, the Dice gain from each budget to the next (mean over seeds).

    A strategy has plateaued when the gain from the second-longest to the longest budget is below `tol` (half
    a Dice point). The seed spread at the longest budget is returned beside it (`last_std`), to judge whether
    a gain above `tol` is more than noise.
    """
    dice_rows = sorted((r for r in rows if r["setting"] == setting and r["comparison"] == "equal steps"
                        and (r["tag"] == setting or r["tag"].endswith("ep"))), key=lambda r: r["epochs"])
    out = {}
    for s, key in (("unsupervised", "reference"), ("ofg", "mean")):
        if len(dice_rows) < 2:
            out[s] = {"plateaued": None, "last_gain": None}
            continue
        last, prev = dice_rows[-1]["val_dice"], dice_rows[-2]["val_dice"]
        gain = last[key] - prev[key]
        out[s] = {"epochs": [r["epochs"] for r in dice_rows], "dice": [r["val_dice"][key] for r in dice_rows],
                  "last_gain": gain, "last_std": last[f"{key}_std" if key == "reference" else "std"],
                  "plateaued": bool(gain < tol)}
    return out


def conclusion(result: dict) -> str:
    """What the table says, in sentences built from its numbers (Dice and EPE, paired by seed)."""
    lines, best = [], None
    for r in result["rows"]:
        if "val_dice" not in r:
            continue
        v = r["val_dice"]
        d, n = v["difference"], len(v["per_seed"])
        verdict = ("OFG ahead in every seed" if v["ahead"] == n else "OFG behind in every seed" if v["behind"] == n
                   else "no difference in any seed" if v["ahead"] == v["behind"] == 0
                   else f"seeds disagree ({v['ahead']} of {n} ahead, {v['behind']} behind)")
        epe = f"; EPE {r['epe']['difference']:+.3f} voxels (OFG - unsupervised)" if "epe" in r else ""
        lines.append(f"- **{r['tag']}, {r['comparison']}**: Dice {v['reference']:.3f} -> {v['mean']:.3f}, "
                     f"difference {d:+.4f} ± {v['difference_std']:.4f}: {verdict}{epe}.")
        if best is None or d > best[1]:
            best = (f"{r['tag']}, {r['comparison']}", d)
    if best is not None:
        gained = [ln for ln in lines if "OFG ahead in every seed" in ln]
        head = (f"OFG is ahead in every seed in {len(gained)} of {len(lines)} comparisons. "
                if gained else "OFG is ahead in every seed in none of the comparisons. ")
        lines.insert(0, head + f"It comes closest to (or furthest ahead of) unsupervised training in "
                     f"**{best[0]}** ({best[1]:+.4f} Dice).\n")
    return "\n".join(lines)


PAPER_STEPS = 500 * 200   # the paper's training: 500 epochs of its 200 IXI training pairs, at network lr 1e-4


def _named(overrides: dict) -> str:
    """{name: {key: value}} as "`name` (key=value)", joined by semicolons."""
    return "; ".join(f"`{n}` ({', '.join(f'{k}={v}' for k, v in o.items())})" for n, o in overrides.items())


def design_markdown(spec: dict) -> str:
    """The design of a study in sentences built from its spec (notebook 08, sections 1 and 6): what every run
    trains, the seeds, each axis, and how many runs that makes."""
    cfg, seeds, settings = load_config(spec["base"]), list(spec["seeds"]), list(spec["settings"])
    n, first, last_k = len(seeds), settings[0], int(spec.get("last_k", 3))
    steps, size = cfg.epochs * cfg.steps_per_epoch, "x".join(map(str, cfg.img_size))
    track = f"the 2-D track (an axial slice, {size})" if len(cfg.img_size) == 2 else f"3-D volumes ({size})"
    decay = {"poly": "decaying as poly(0.9) over the run", "constant": "constant"}
    inner = {"adam": "Adam", "sgd": "SGD"}.get(cfg.inner_optimizer, cfg.inner_optimizer)
    variants, both = spec.get("variants") or {}, spec.get("both_variants") or {}
    budgets = [b for b in spec.get("budgets") or [] if b != cfg.epochs]
    c3 = dict(spec.get("confirm_3d") or {})
    seeds3 = list(c3.pop("seeds", seeds))
    size3 = "x".join(map(str, c3.pop("img_size", [])))
    if n > 1:
        from scipy import stats
        spread = (f"{n} paired differences per comparison, so its 95 % interval uses t with {n - 1} degrees of "
                  f"freedom (t = {stats.t.ppf(0.975, n - 1):.2f})")
    else:
        spread = "one paired difference per comparison: no spread over seeds, no interval"
    runs = 2 * n * (len(settings) + len(both) + len(budgets)) + n * len(variants) + (2 * len(seeds3) if c3 else 0)
    timed = n * len(settings) if spec.get("equal_time", True) else 0
    return "\n".join([
        f"**Every run** trains `{cfg.model}` on {track} for {cfg.epochs} epochs x {cfg.steps_per_epoch} pairs = "
        f"{steps:,} steps at network lr {cfg.lr:g} ({decay[cfg.lr_schedule]}), OFG with {cfg.inner_steps} inner "
        f"{inner} steps of lr {cfg.inner_lr:g} ({decay[cfg.inner_lr_schedule]}). It validates on {cfg.val_pairs} "
        f"pairs after every epoch; its score is the mean of its last {last_k} validation"
        f"{'s' if last_k > 1 else ''}. (The paper: lr 1e-4 for {PAPER_STEPS:,} steps, {PAPER_STEPS / steps:,.0f} "
        "times as many.)",
        "",
        f"**Seeds** {', '.join(map(str, seeds))}: {spread}.",
        "",
        "**The axes:**",
        "",
        f"- difficulty: {', '.join(settings)}, each at equal steps"
        + (" and at equal wall time (unsupervised trained again for OFG's time);" if timed else ";"),
        "- the inner optimizer: " + (f"{_named(variants)}, OFG only, against the unsupervised runs of `{first}`;"
                                     if variants else "not varied;"),
        "- both strategies: " + (f"{_named(both)}, on `{first}`;" if both else "no other settings;"),
        "- budget: " + (f"`{first}` also for {', '.join(map(str, budgets))} epoch{'' if budgets == [1] else 's'} ("
                        + ", ".join(f"{b * cfg.steps_per_epoch:,}" for b in budgets) + " steps);"
                        if budgets else "not varied;"),
        "- 3-D: " + (f"one run per strategy and seed ({', '.join(map(str, seeds3))}) at {size3} "
                     f"({', '.join(f'{k}={v}' for k, v in c3.items())}), on the setting where OFG gains most in "
                     "2-D (where it gains in none, the hardest)." if size3 else "none."),
        "",
        f"In all **{runs} runs**" + (f", and up to {timed} equal-time runs (one per setting and seed, where OFG's "
                                     "slower steps buy unsupervised training more epochs)." if timed else "."),
    ])


def settings_markdown(identity: dict, img_size) -> str:
    """The difficulty axis as a table (notebook 08, section 1): per setting what changes, its config keys at
    `img_size`, and the Dice and EPE of the identity ({setting: `identity_scores`})."""
    head = "| setting | what changes | config keys | identity Dice | identity EPE (vox) |\n|---|---|---|---|---|\n"
    return head + "\n".join(f"| {n} | {DESCRIPTIONS[n]} | `{setting_config(n, img_size)}` | {v['dice']:.3f} | "
                             f"{v['epe']:.2f} |" for n, v in identity.items())


def budget_markdown(budget: dict, setting: str) -> str:
    """The budget axis in a sentence per strategy, from `plateau`'s result for `setting`."""
    if any(v.get("plateaued") is None for v in budget.values()):
        return f"Budget axis ({setting}): fewer than two budgets, so no plateau to judge."
    return f"Budget axis ({setting}): " + "; ".join(
        f"{s}: Dice {', '.join(f'{d:.3f}' for d in v['dice'])} at {v['epochs']} epochs, "
        f"{'plateaued' if v['plateaued'] else 'still rising'} (last gain {v['last_gain']:+.4f})"
        for s, v in budget.items())


def confirm_3d_markdown(c: dict) -> str:
    """The 3-D confirmation's choice in a sentence (a study result's `confirm_3d`)."""
    return (f"3-D confirmation: setting **{c['setting']}** ({c['why']}), {c['img_size']}, seeds {c['seeds']}, "
            f"identity Dice {c['identity']['dice']:.3f}.")


def table_markdown(rows, columns=METRICS) -> str:
    """The study's rows (OFG against unsupervised, paired by seed) in the runner's table (`ofg_lib.sweep.
    table_markdown`, one line per run and metric)."""
    return _table(rows, columns=columns, versus="unsupervised", long=True, label="run", extra=("comparison",))


def curves(result: dict, tag: str, strategy: str, metric: str = "val_dice"):
    """(steps, mean, std) over seeds of a validation metric along training, for the learning-curve figures."""
    runs = [h for k, h in result["histories"].items() if k.startswith(f"{tag}/{strategy}/")]
    if not runs:
        raise KeyError(f"no runs for {tag}/{strategy} in this study")
    return mean_curve(runs, metric)


def write_report(result: dict, folder, wall_time_h: float, machine: str, command: str, points: int = 40) -> Path:
    """The study's committed summary: study.json (rows, settings, thinned learning curves) and study.md."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    slim = {k: result[k] for k in ("spec", "settings", "rows", "confirm_3d") if k in result}
    slim["histories"] = {}
    for key, rows in result["histories"].items():
        keep = rows[::max(1, math.ceil(len(rows) / points))]
        if rows and keep[-1] is not rows[-1]:
            keep.append(rows[-1])
        slim["histories"][key] = [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()
                                   if k != "epoch"} for r in keep]
    slim.update({"wall_time_h": wall_time_h, "machine": machine, "command": command})
    write_json(folder / "study.json", slim)
    atomic_write(folder / "study.md", report_markdown(slim))
    return folder / "study.json"


def report_markdown(report: dict) -> str:
    """study.md of a committed summary (`write_report`): the settings, the table and the conclusion."""
    settings = ["| setting | what changes | identity Dice | identity EPE | s/step unsupervised | s/step OFG |",
                "|---|---|---|---|---|---|"]
    for name, v in report["settings"].items():
        sps = v.get("sec_per_step", {})
        settings.append(f"| {name} | {v['description']} | {v['identity']['dice']:.3f} | {v['identity']['epe']:.2f} | "
                        f"{sps.get('unsupervised', float('nan')):.4f} | {sps.get('ofg', float('nan')):.4f} |")
    return (f"# The full study\n\n`{report['command']}`: {report['wall_time_h']:.1f} h on {report['machine']}.\n\n"
            + "\n".join(settings) + "\n\n" + table_markdown(report["rows"]) + "\n" + conclusion(report) + "\n")


def main(argv=None):
    import platform
    import time

    import yaml
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="study", help="params/PROFILE.yaml, section 08_when_ofg_helps")
    p.add_argument("--report", default="reports/study", help="folder of the committed summary (study.json, study.md)")
    p.add_argument("--hours-before", type=float, default=None,
                   help="wall time of earlier invocations that trained runs of this study (default: the report's)")
    args = p.parse_args(argv)
    root = Path(__file__).resolve().parents[1]
    file = root / "params" / f"{args.profile}.yaml"
    if not file.is_file():
        known = sorted(f.stem for f in (root / "params").glob("*.yaml"))
        p.error(f"no profile {args.profile!r} ({file} not found); profiles: {', '.join(known)}")
    params = yaml.safe_load(file.read_text()) or {}
    if "08_when_ofg_helps" not in params:
        p.error(f"{file} has no section 08_when_ofg_helps (the study's parameters)")
    params = params["08_when_ofg_helps"]
    t0 = time.perf_counter()
    result = run_study(spec_from_params(params), root / params["run_dir"])
    hours = (time.perf_counter() - t0) / 3600
    report = root / args.report
    before = args.hours_before
    if before is None and (report / "study.json").exists():
        before = json.loads((report / "study.json").read_text()).get("wall_time_h", 0.0)
    machine = f"{os.cpu_count()} CPU cores ({platform.machine()}), torch threads {torch.get_num_threads()}"
    write_report(result, report, (before or 0.0) + hours, machine, f"python -m ofg_lib.study --profile {args.profile}")
    print(table_markdown(result["rows"]))
    print(conclusion(result))


if __name__ == "__main__":
    main()
