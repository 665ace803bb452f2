"""When does OFG help? OFG minus unsupervised over data difficulty, budget and the inner optimizer (notebook 08).

    python -m ofg_lib.study --profile study        # the whole study (hours on 2 cores; resumable)
    result = ofg_lib.study.run_study(spec, out="results/cpu/08_study")

A study is a spec (a dict, the parameters of notebook 08) and a folder. Every run is an ordinary training run
(`ofg_lib.train.run`) in its own sub-folder, resumed when unfinished and reused when finished, so the notebook,
`make reproduce` and this command share their work. Comparisons are paired by seed: the same model, data, data
order and seed, OFG minus unsupervised. Stages, in the order they run (the most informative first):

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

from .compare import METRICS, mean_curve, paired, step_seconds, train_history
from .paths import atomic_write, write_json
from .stats import last_k_mean

__all__ = ["SETTINGS", "setting_config", "identity_scores", "run_study", "plateau", "table_markdown", "curves",
           "conclusion", "spec_from_params", "write_report"]

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


def _pair_scores(histories: dict, epochs: dict, last_k: int, seeds) -> dict:
    scores = {f"{s}/{seed}": last_k_mean(histories[(s, seed)], epochs[s], last_k, METRICS) for s, seed in histories}
    return paired(scores, ("unsupervised", "ofg"), seeds)


def run_study(spec: dict, out, callbacks=(), log=print) -> dict:
    """Run (or reuse) every run of `spec` under `out`; write study.json and study.md there; return the result.

    `spec` keys: base (TrainConfig keys shared by every run, with img_size and epochs), settings (names of
    SETTINGS), seeds, last_k, equal_time (bool), variants ({name: OFG config overrides}), budgets (epochs),
    confirm_3d (None or {img_size, epochs, steps_per_epoch, seeds, ...overrides}).
    """
    out = Path(out)
    base, seeds, last_k = dict(spec["base"]), list(spec["seeds"]), int(spec.get("last_k", 3))
    epochs = int(base["epochs"])
    result = {"spec": spec, "settings": {}, "rows": []}
    hist = {}

    def train(tag, setting, strat, seed, extra=None, size=None):
        size = size or base["img_size"]
        cfg = {**base, **setting_config(setting, size), "strategy": strat, "seed": seed, **(extra or {})}
        folder = out / tag / f"{strat}-seed{seed}"
        log(f"[study] {tag}: {strat} seed {seed}")
        hist[(tag, strat, seed)] = train_history(cfg, folder, callbacks=callbacks)
        return hist[(tag, strat, seed)]

    def add_rows(tag, setting, comparison, pairs, extra=None):
        for metric, v in pairs.items():
            result["rows"].append({"tag": tag, "setting": setting, "comparison": comparison, "metric": metric,
                                   "unsupervised": v["unsupervised"][0], "unsupervised_std": v["unsupervised"][1],
                                   "ofg": v["ofg"][0], "ofg_std": v["ofg"][1], "difference": v["difference"][0],
                                   "difference_std": v["difference"][1], "per_seed": v["per_seed"], **(extra or {})})

    def save():
        write_json(out / "study.json", result)
        atomic_write(out / "study.md", table_markdown(result["rows"]))

    # 1. the difficulty axis at equal steps
    for setting in spec["settings"]:
        ident = identity_scores({**base, **setting_config(setting, base["img_size"])})
        result["settings"][setting] = {"config": setting_config(setting, base["img_size"]), "identity": ident,
                                       "description": DESCRIPTIONS[setting]}
        for seed in seeds:
            for strat in ("unsupervised", "ofg"):
                train(setting, setting, strat, seed)
        h = {(s, seed): hist[(setting, s, seed)] for s in ("unsupervised", "ofg") for seed in seeds}
        sps = {s: step_seconds([hist[(setting, s, seed)] for seed in seeds]) for s in ("unsupervised", "ofg")}
        result["settings"][setting]["sec_per_step"] = sps
        add_rows(setting, setting, "equal steps", _pair_scores(h, {"unsupervised": epochs, "ofg": epochs}, last_k, seeds),
                 {"epochs": epochs})
        save()
    # 2. equal wall time: the faster strategy (unsupervised, normally) trained for the slower one's time
    if spec.get("equal_time", True):
        for setting in spec["settings"]:
            sps = result["settings"][setting]["sec_per_step"]
            extra = math.floor(epochs * sps["ofg"] / sps["unsupervised"])
            if extra <= epochs:
                log(f"[study] {setting}: OFG is not slower per step ({sps}); equal time = equal steps")
                continue
            for seed in seeds:
                train(f"{setting}-equal-time-{extra}ep", setting, "unsupervised", seed, {"epochs": extra})
            h = {("unsupervised", seed): hist[(f"{setting}-equal-time-{extra}ep", "unsupervised", seed)] for seed in seeds}
            h.update({("ofg", seed): hist[(setting, "ofg", seed)] for seed in seeds})
            add_rows(setting, setting, "equal time",
                     _pair_scores(h, {"unsupervised": extra, "ofg": epochs}, last_k, seeds),
                     {"epochs": epochs, "unsupervised_epochs": extra})
            save()
    # 3. variants of the inner optimizer (OFG only), against the first setting's unsupervised runs
    first = spec["settings"][0]
    for name, overrides in (spec.get("variants") or {}).items():
        for seed in seeds:
            train(f"{first}-{name}", first, "ofg", seed, overrides)
        h = {("unsupervised", seed): hist[(first, "unsupervised", seed)] for seed in seeds}
        h.update({("ofg", seed): hist[(f"{first}-{name}", "ofg", seed)] for seed in seeds})
        add_rows(f"{first}-{name}", first, f"equal steps, OFG {name}",
                 _pair_scores(h, {"unsupervised": epochs, "ofg": epochs}, last_k, seeds), {"epochs": epochs})
        save()
    for name, overrides in (spec.get("both_variants") or {}).items():
        tag = f"{first}-{name}"
        for seed in seeds:
            for strat in ("unsupervised", "ofg"):
                train(tag, first, strat, seed, overrides)
        n_ep = int(overrides.get("epochs", epochs))
        h = {(s, seed): hist[(tag, s, seed)] for s in ("unsupervised", "ofg") for seed in seeds}
        add_rows(tag, first, f"equal steps, both {name}",
                 _pair_scores(h, {"unsupervised": n_ep, "ofg": n_ep}, last_k, seeds), {"epochs": n_ep})
        save()
    # 4. the budget axis: the first setting trained for other lengths (each with its own poly schedule)
    for n_ep in spec.get("budgets") or []:
        if n_ep == epochs:
            continue
        tag = f"{first}-{n_ep}ep"
        for seed in seeds:
            for strat in ("unsupervised", "ofg"):
                train(tag, first, strat, seed, {"epochs": n_ep})
        h = {(s, seed): hist[(tag, s, seed)] for s in ("unsupervised", "ofg") for seed in seeds}
        add_rows(tag, first, "equal steps", _pair_scores(h, {"unsupervised": n_ep, "ofg": n_ep}, last_k, seeds),
                 {"epochs": n_ep})
        save()
    # 5. one 3-D confirmation
    c3 = spec.get("confirm_3d")
    if c3:
        gains = {r["setting"]: r["difference"] for r in result["rows"]
                 if r["metric"] == "val_dice" and r["comparison"] == "equal steps" and r["tag"] == r["setting"]}
        best = max(gains, key=gains.get)
        if gains[best] <= 0:
            best = min(result["settings"], key=lambda s: result["settings"][s]["identity"]["dice"])
            why = "OFG gained in no setting: the hardest (lowest identity Dice)"
        else:
            why = "the largest mean Dice gain in 2-D"
        c3 = dict(c3)
        size, seeds3 = list(c3.pop("img_size")), list(c3.pop("seeds", seeds))
        tag = f"3d-{best}"
        for seed in seeds3:
            for strat in ("unsupervised", "ofg"):
                cfg_extra = {**c3, "img_size": size}
                train(tag, best, strat, seed, cfg_extra, size=size)
        h = {(s, seed): hist[(tag, s, seed)] for s in ("unsupervised", "ofg") for seed in seeds3}
        result["confirm_3d"] = {"setting": best, "why": why, "img_size": size, "seeds": seeds3,
                                "identity": identity_scores({**base, **c3, "img_size": size,
                                                             **setting_config(best, size)})}
        n3 = int(c3.get("epochs", epochs))
        add_rows(tag, best, "equal steps, 3-D", _pair_scores(h, {"unsupervised": n3, "ofg": n3}, last_k, seeds3),
                 {"epochs": n3})
    result["histories"] = {f"{t}/{s}/{seed}": [{k: r.get(k) for k in ("step", "epoch", "val_dice", "epe")}
                                               for r in h_ if "val_dice" in r]
                           for (t, s, seed), h_ in hist.items()}
    save()
    return result


def plateau(rows, setting: str, tol: float = 0.005) -> dict:
    """Budget axis: per strategy, the Dice gain from each budget to the next (mean over seeds).

    A strategy has plateaued when the gain from the second-longest to the longest budget is below `tol` (half
    a Dice point). The seed spread at the longest budget is returned beside it (`last_std`), to judge whether
    a gain above `tol` is more than noise.
    """
    dice_rows = sorted((r for r in rows if r["setting"] == setting and r["metric"] == "val_dice"
                        and r["comparison"] == "equal steps" and (r["tag"] == setting or r["tag"].endswith("ep"))
                        and "OFG" not in r["comparison"]), key=lambda r: r["epochs"])
    out = {}
    for s in ("unsupervised", "ofg"):
        if len(dice_rows) < 2:
            out[s] = {"plateaued": None, "last_gain": None}
            continue
        last, prev = dice_rows[-1], dice_rows[-2]
        gain = last[s] - prev[s]
        out[s] = {"epochs": [r["epochs"] for r in dice_rows], "dice": [r[s] for r in dice_rows], "last_gain": gain,
                  "last_std": last[f"{s}_std"], "plateaued": bool(gain < tol)}
    return out


def conclusion(result: dict) -> str:
    """What the table says, in sentences built from its numbers (Dice and EPE, paired by seed)."""
    rows = {(r["tag"], r["comparison"], r["metric"]): r for r in result["rows"]}
    lines, best = [], None
    for (tag, comparison, metric), r in rows.items():
        if metric != "val_dice":
            continue
        d, n = r["difference"], len(r["per_seed"])
        ahead, behind = sum(v > 0 for v in r["per_seed"]), sum(v < 0 for v in r["per_seed"])
        verdict = ("OFG ahead in every seed" if ahead == n else "OFG behind in every seed" if behind == n
                   else "no difference in any seed" if ahead == behind == 0
                   else f"seeds disagree ({ahead} of {n} ahead, {behind} behind)")
        e = rows.get((tag, comparison, "epe"))
        epe = f"; EPE {e['difference']:+.3f} voxels (OFG - unsupervised)" if e else ""
        lines.append(f"- **{tag}, {comparison}**: Dice {r['unsupervised']:.3f} -> {r['ofg']:.3f}, "
                     f"difference {d:+.4f} ± {r['difference_std']:.4f}: {verdict}{epe}.")
        if best is None or d > best[1]:
            best = (f"{tag}, {comparison}", d)
    if best is not None:
        gained = [ln for ln in lines if "OFG ahead in every seed" in ln]
        head = (f"OFG is ahead in every seed in {len(gained)} of {len(lines)} comparisons. "
                if gained else "OFG is ahead in every seed in none of the comparisons. ")
        lines.insert(0, head + f"It comes closest to (or furthest ahead of) unsupervised training in "
                     f"**{best[0]}** ({best[1]:+.4f} Dice).\n")
    return "\n".join(lines)


def table_markdown(rows) -> str:
    """The tidy table of paired differences (OFG - unsupervised) as Markdown."""
    names = {"val_dice": "Dice", "fold_fraction": "folds % all", "fold_fraction_brain": "folds % brain",
             "epe": "EPE (vox)", "sdlogj": "SDlogJ"}
    lines = ["| run | comparison | metric | unsupervised | OFG | OFG - unsupervised (per seed) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        k = 100 if r["metric"].startswith("fold") else 1
        per = ", ".join(f"{k * v:+.4f}" for v in r["per_seed"])
        lines.append(f"| {r['tag']} | {r['comparison']} | {names.get(r['metric'], r['metric'])} | "
                     f"{k * r['unsupervised']:.4f} ± {k * r['unsupervised_std']:.4f} | "
                     f"{k * r['ofg']:.4f} ± {k * r['ofg_std']:.4f} | "
                     f"{k * r['difference']:+.4f} ± {k * r['difference_std']:.4f} ({per}) |")
    return "\n".join(lines) + "\n"


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
    settings = ["| setting | what changes | identity Dice | identity EPE | s/step unsupervised | s/step OFG |",
                "|---|---|---|---|---|---|"]
    for name, v in result["settings"].items():
        sps = v.get("sec_per_step", {})
        settings.append(f"| {name} | {v['description']} | {v['identity']['dice']:.3f} | {v['identity']['epe']:.2f} | "
                        f"{sps.get('unsupervised', float('nan')):.4f} | {sps.get('ofg', float('nan')):.4f} |")
    atomic_write(folder / "study.md", f"# The full study\n\n`{command}`: {wall_time_h:.1f} h on {machine}.\n\n"
                 + "\n".join(settings) + "\n\n" + table_markdown(result["rows"]) + "\n" + conclusion(result) + "\n")
    return folder / "study.json"


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


def spec_from_params(p: dict) -> dict:
    """Notebook 08's parameters (flat, papermill-friendly) -> a study spec."""
    base = {"model": p.get("model", "voxelmorph-1"), "img_size": list(p["img_size"]), "epochs": p["epochs"],
            "steps_per_epoch": p["steps_per_epoch"], "lr": p.get("lr", 1e-4), "val_pairs": p.get("val_pairs", 10),
            "threads": p.get("threads", 0), "progress": p.get("progress", True),
            "inner_lr_schedule": p.get("inner_lr_schedule", "poly")}
    return {"base": base, "settings": list(p["settings"]), "seeds": list(p["seeds"]),
            "last_k": p.get("last_k", 3), "equal_time": p.get("equal_time", True),
            "variants": p.get("variants") or {}, "both_variants": p.get("both_variants") or {},
            "budgets": list(p.get("budgets") or []),
            "confirm_3d": p.get("confirm_3d")}


if __name__ == "__main__":
    main()
