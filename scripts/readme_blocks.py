"""The README's computed blocks: text between `<!-- NAME:begin -->` and `<!-- NAME:end -->` that is generated from
committed summaries, never typed. `python scripts/readme_blocks.py` rewrites them; tests/test_converge.py checks
that the README holds what this computes.

- `verdicts`: the ablation verdicts (`ofg_lib.sweep`, from reports/ablations/*.json);
- `verdicts_realistic`: the same for the rerun where the premise holds (reports/ablations_realistic/*.json);
- `converge`: the run-to-plateau study's verdict per arm (`ofg_lib.converge.verdict`, reports/converge/converge.json);
- `converge3d`: the same for the 3-D confirmation (reports/converge3d/converge.json);
- `pareto`: both strategies at several smoothness weights (`ofg_lib.converge.pareto_markdown`, reports/converge/pareto.json);
- `gpu`: the GPU benchmark's rows, ratios and goals (benchmarks/results/bench_gpu_h200.json);
- `cpu_bench`: the CPU convolution path against PyTorch's (benchmarks/results/bench_cpu.md);
- `cpu_compare`: `make reproduce`'s comparison of notebook 05 (reports/cpu_compare/comparison.md and .json);
- `headline`: where the answer stands, one line per experiment (`ofg_lib.converge.where_ofg_stands`).
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def blocks() -> dict:
    from ofg_lib.converge import pareto_markdown, verdict, where_ofg_stands
    from ofg_lib.sweep import folder_verdicts, verdicts_markdown
    out = {}
    out["verdicts"] = verdicts_markdown(folder_verdicts(ROOT / "reports" / "ablations"))
    real = ROOT / "reports" / "ablations_realistic"
    out["verdicts_realistic"] = (verdicts_markdown(folder_verdicts(real)) if (real / "core.json").exists() else
                                 "(no committed summary yet: `make reproduce PROFILE=ablations_realistic`)\n")
    conv = ROOT / "reports" / "converge" / "converge.json"
    if conv.exists():
        r = json.loads(conv.read_text())
        out["converge"] = "\n".join(f"- **{arm}** ({json.dumps(a['overrides'])}): {verdict(a)}"
                                    for arm, a in r["arms"].items()) + "\n"
    else:
        out["converge"] = "(no committed summary yet: run `python -m ofg_lib.converge`)\n"
    conv3 = ROOT / "reports" / "converge3d" / "converge.json"
    if conv3.exists():
        r = json.loads(conv3.read_text())
        out["converge3d"] = "\n".join(f"- **{arm}** ({r['spec']['base']['img_size']}, trained on {r.get('machine')}): "
                                      f"{verdict(a)}" for arm, a in r["arms"].items()) + "\n"
    else:
        out["converge3d"] = "(no committed summary yet: `CONVERGE3D_S=300 bash scripts/gpu_run.sh` on a GPU)\n"
    par = ROOT / "reports" / "converge" / "pareto.json"
    out["pareto"] = (pareto_markdown(json.loads(par.read_text())) + "\n" if par.exists() else
                     "(no committed summary yet: `python -m ofg_lib.converge` runs the spec's `pareto` section)\n")
    bench = ROOT / "benchmarks" / "results" / "bench_gpu_h200.md"
    if bench.exists():
        out["gpu"] = bench.read_text().replace("# bench_gpu: ", "", 1)
    else:
        out["gpu"] = "(no GPU measurement committed yet: `bash scripts/gpu_run.sh` on a GPU)\n"
    if conv.exists():
        load = lambda f: json.loads(f.read_text()) if f.exists() else None  # noqa: E731
        out["headline"] = where_ofg_stands(json.loads(conv.read_text()), load(par), load(conv3))
    else:
        out["headline"] = "(no committed summary yet: run `python -m ofg_lib.converge`)\n"
    cpu = ROOT / "benchmarks" / "results" / "bench_cpu.md"
    out["cpu_bench"] = (cpu.read_text().replace("# bench_cpu: ", "", 1) if cpu.exists() else
                        "(not measured yet: `python benchmarks/bench_cpu.py`)\n")
    cmp = ROOT / "reports" / "cpu_compare"
    if (cmp / "comparison.json").exists():
        r = json.loads((cmp / "comparison.json").read_text())
        secs = ", ".join(f"{s} {v:.3f} s" for s, v in r["sec_per_step"].items())
        said = []
        for setting in ("equal_steps", "equal_time"):
            for row in r[setting]["rows"]:
                d = row["val_dice"]
                said.append(f"{setting.replace('_', ' ')}: {row['point']} - unsupervised Dice "
                            f"{d['difference']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}], above in {d['ahead']} of "
                            f"{d['n']} seeds: " + ("resolved, the 95 % interval excludes 0" if d["significant"]
                                                   else "not resolved, the 95 % interval includes 0"))
        out["cpu_compare"] = ((cmp / "comparison.md").read_text().strip() + "\n\n" + "".join(f"- {s}.\n" for s in said)
                              + "\nSeconds per training step (network and inner optimizer, median over all epochs and "
                              f"seeds): {secs}.\n")
    else:
        out["cpu_compare"] = "(no committed summary yet: `make reproduce`, then copy results/cpu/05_training/compare/)\n"
    return out


def current(text: str, name: str) -> str:
    m = re.search(rf"<!-- {name}:begin -->\n(.*?)<!-- {name}:end -->", text, re.S)
    if m is None:
        raise KeyError(f"README.md has no block {name}")
    return m.group(1)


def write(path=ROOT / "README.md") -> None:
    text = path.read_text()
    for name, body in blocks().items():
        current(text, name)
        text = re.sub(rf"(<!-- {name}:begin -->\n).*?(<!-- {name}:end -->)", lambda m: m.group(1) + body + m.group(2),
                      text, flags=re.S)
    path.write_text(text)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    write()
