"""Rewrite a study report written before the one runner (issue 19 item 8) in the runner's row schema.

    python scripts/migrate_study_report.py reports/study

The first study (commit 21fcb7a) stored one row per (run, metric) with `unsupervised`, `ofg` and their spreads
over seeds as population standard deviations (ddof 0). Its runs are not kept, so the rows are converted, not
recomputed: per (tag, comparison) one sweep row whose metric records are `ofg_lib.stats.paired`'s, with the
reference = unsupervised and the point = OFG. Every number is derived exactly from the stored ones: the
difference's spread and its t interval from the per-seed differences, and the two strategies' spreads rescaled
from ddof 0 to ddof 1 (x sqrt(n / (n - 1)), n seeds). The settings, histories, wall time and machine are kept;
study.md is rendered again. A report already in the new schema is left as it is.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ofg_lib.files import atomic_write, write_json  # noqa: E402
from ofg_lib.stats import interval  # noqa: E402
from ofg_lib.study import report_markdown  # noqa: E402


def convert(report: dict) -> dict:
    rows = {}
    for r in report["rows"]:
        n = len(r["per_seed"])
        k = math.sqrt(n / (n - 1)) if n > 1 else 0.0           # ddof 0 -> ddof 1
        iv = interval(r["per_seed"])
        key = (r["tag"], r["comparison"])
        row = rows.setdefault(key, {"tag": r["tag"], "setting": r["setting"], "comparison": r["comparison"],
                                    **{e: r[e] for e in ("epochs", "unsupervised_epochs") if e in r},
                                    "point": f"{r['tag']}/ofg", "overrides": {"strategy": "ofg"}})
        row[r["metric"]] = {"mean": r["ofg"], "std": k * r["ofg_std"], "reference": r["unsupervised"],
                            "reference_std": k * r["unsupervised_std"], "difference": r["difference"],
                            "difference_std": iv["std"] if iv["std"] is not None else 0.0,
                            "per_seed": r["per_seed"],
                            **{f: iv[f] for f in ("low", "high", "ahead", "behind", "n", "significant")}}
    return {**report, "rows": list(rows.values()),
            "migrated": "rows converted from the first study's schema (ddof 0 spreads rescaled to ddof 1) by "
                        "scripts/migrate_study_report.py"}


def main(folder: str) -> None:
    folder = Path(folder)
    report = json.loads((folder / "study.json").read_text())
    if "metric" not in report["rows"][0]:
        print(f"{folder / 'study.json'} is already in the runner's schema")
        return
    new = convert(report)
    write_json(folder / "study.json", new)
    atomic_write(folder / "study.md", report_markdown(new))
    print(f"{folder / 'study.json'}: {len(report['rows'])} rows -> {len(new['rows'])}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "reports" / "study"))
