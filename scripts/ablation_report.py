"""Commit-sized summary of a notebook-09 profile: its sweep tables, the computed verdicts, the displayed tables.

    python scripts/ablation_report.py --profile ablations_realistic --out reports/ablations_realistic

Reads the profile's run folder (params/PROFILE.yaml, `09_ablations.run_dir`) and the executed notebook
(results/PROFILE/09_ablations.ipynb) and writes to --out: every sweep table (`NAME.json`, `NAME.csv`), the
verdicts (`verdicts.json`, `verdicts.md`: `ofg_lib.sweep.folder_verdicts`), a per-run table (`runs.md`: steps
trained, best-validation step, whether the plateau rule stopped it, training seconds from each run's log) and
`ablations.md`: the config it ran with, every sweep table (`ofg_lib.sweep.table_markdown`, as the notebook shows
them; Fig. 5 with its teacher's test score), the notebook's own displayed outputs when it ran to its end, the
verdicts and the runs. Nothing is typed: every number comes from those files. Checkpoints are not copied.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ofg_lib.runs import RunFolder  # noqa: E402


def notebook_outputs(path: Path) -> list[str]:
    """Markdown and printed text of an executed notebook's code cells, in order (figures left out)."""
    nb = json.loads(path.read_text())
    parts = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        for o in cell.get("outputs", []):
            data = o.get("data", {})
            if "text/markdown" in data:
                parts.append("".join(data["text/markdown"]).strip())
            elif o.get("output_type") == "stream" and o.get("name") == "stdout":
                parts.append("```\n" + "".join(o["text"]).strip() + "\n```")
    return parts


ORDER = ["core", "fig5", "fig6_interval", "fig6_threshold", "fig6_mix", "fig7", "table2", "table34"]
TITLES = {"core": "The two ends: unsupervised training against full OFG (the premise)",
          "fig5": "Fig. 5: self-training and optimized self-training", "fig6_interval": "Fig. 6: epoch interval",
          "fig6_threshold": "Fig. 6: threshold (share of guided steps)", "fig6_mix": "Fig. 6: loss mix (Eq. 7)",
          "fig7": "Fig. 7: warm-up with another strategy", "table2": "Table 2: convergence loss",
          "table34": "Tables 3 and 4: optimizer designs"}


def tables_markdown(tables: dict, runs: Path) -> str:
    """Every sweep table (`ofg_lib.sweep.table_markdown`) in the notebook's order; Fig. 5 with its teacher's score."""
    from ofg_lib.evaluate import score_run
    from ofg_lib.sweep import table_markdown
    parts = []
    for name in [n for n in ORDER if n in tables] + sorted(set(tables) - set(ORDER)):
        t = tables[name]
        parts.append(f"### {TITLES.get(name, name)} (`{name}`)\n\n" + table_markdown(t, versus="OFG"))
        teachers = sorted({r["overrides"]["teacher"] for r in t["rows"] if r["overrides"].get("teacher")})
        for path in teachers:
            if t.get("test_pairs"):
                which = "best" if Path(path) == RunFolder(Path(path).parent).checkpoint("best") else "last"
                d = score_run(Path(path).parent, "test", t["test_pairs"], which)["dice"]
                parts[-1] += (f"\nTeacher: `{Path(path).relative_to(runs)}`, test Dice {d:.4f} on "
                              f"{t['test_pairs']} pairs (full OFG {t['rows'][0]['test_dice']['reference']:.4f}).\n")
    return "\n".join(parts)


def run_rows(runs: Path) -> list[dict]:
    rows = []
    for folder in sorted(p for p in runs.glob("*/seed*") if RunFolder(p).has_logs()):
        run = RunFolder(folder)
        log = run.read_log()
        try:
            summary = run.summary()
        except FileNotFoundError:
            summary = {}
        vals = [(int(r["step"]), float(r["val_dice"])) for r in log if r.get("val_dice") is not None]
        best = max(vals, key=lambda v: v[1]) if vals else (None, None)
        secs = sum((float(r.get("sec_per_step_network") or 0) + float(r.get("sec_per_step_inner") or 0)
                    + float(r.get("sec_per_step_data") or 0))
                   * (int(r["step"]) - (int(log[i - 1]["step"]) if i else 0)) for i, r in enumerate(log))
        rows.append({"run": f"{folder.parent.name}/{folder.name}", "steps": int(log[-1]["step"]) if log else 0,
                     "best_step": best[0], "best_val_dice": best[1],
                     "stopped_early": bool(summary.get("stopped_early")), "train_s": secs})
    return rows


def runs_markdown(rows) -> str:
    lines = ["| run | steps trained | best-validation step | best val Dice | plateau rule stopped it | training s |",
             "|---|---|---|---|---|---|"]
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    lines += [f"| {r['run']} | {r['steps']} | {r['best_step']} | {fmt(r['best_val_dice'])} | "
              f"{'yes' if r['stopped_early'] else 'no'} | {r['train_s']:.0f} |" for r in rows]
    total = sum(r["train_s"] for r in rows)
    lines += ["", f"{len(rows)} runs; training time from the logs (network + optimizer + data, validation "
                  f"excluded): {total / 3600:.2f} h in all."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    import yaml

    from ofg_lib.files import atomic_write, write_json
    from ofg_lib.sweep import folder_verdicts, verdicts_markdown
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    params = yaml.safe_load((ROOT / "params" / f"{a.profile}.yaml").read_text())["09_ablations"]
    runs = ROOT / params["run_dir"] / "runs"
    executed = ROOT / "results" / a.profile / "09_ablations.ipynb"
    out = ROOT / a.out
    out.mkdir(parents=True, exist_ok=True)
    tables = {}
    for f in sorted(runs.glob("*.json")):
        shutil.copy(f, out / f.name)
        if f.with_suffix(".csv").exists():
            shutil.copy(f.with_suffix(".csv"), out / f.with_suffix(".csv").name)
        tables[f.stem] = json.loads(f.read_text())
    if "core" not in tables:
        raise SystemExit(f"{runs}/core.json not found: run notebook 09 with profile {a.profile} first")
    v = folder_verdicts(runs)
    write_json(out / "verdicts.json", v)
    atomic_write(out / "verdicts.md", verdicts_markdown(v))
    rows = run_rows(runs)
    write_json(out / "runs.json", rows)
    atomic_write(out / "runs.md", runs_markdown(rows))
    head = [f"# Notebook 09 with profile `{a.profile}`", "",
            f"`make reproduce PROFILE={a.profile}` (params/{a.profile}.yaml); this file is written by "
            f"`python scripts/ablation_report.py --profile {a.profile} --out {a.out}` from the run folder and the "
            "executed notebook. Parameters:", "", "```json", json.dumps(params, indent=None), "```", ""]
    text = "\n".join(head) + "\n## The sweep tables\n\n" + tables_markdown(tables, runs)
    if executed.exists():
        text += "\n## The executed notebook's displayed outputs\n\n" + "\n\n".join(notebook_outputs(executed))
    else:
        text += (f"\n(The notebook itself has not run to its end with this profile: no {executed.relative_to(ROOT)}. "
                 "The tables above are the sweep runner's, the ones the notebook displays.)\n")
    text += "\n\n## Verdicts\n\n" + verdicts_markdown(v) + "\n## Runs\n\n" + runs_markdown(rows)
    atomic_write(out / "ablations.md", text)
    print(f"wrote {out}: {len(tables)} tables, {len(rows)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
