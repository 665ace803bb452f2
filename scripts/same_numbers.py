"""Short trainings over every guidance design and schedule, printed as JSON without timings: run it on two trees
and compare, to show a refactor changed no number (issue 20).

    PYTHONPATH=/path/to/old/tree python scripts/same_numbers.py > before.json
    python scripts/same_numbers.py > after.json
    python scripts/same_numbers.py --compare before.json after.json

Each run: voxelmorph-1-tiny on the embedded cohort at 32x48x48, 2 epochs of 3 steps, poly schedules, 2 threads;
a few minutes on 2 cores. The histories hold every logged loss, energy and validation metric per epoch.
"""
from __future__ import annotations

import argparse
import json
import sys

BASE = {"model": "voxelmorph-1-tiny", "img_size": [32, 48, 48], "epochs": 2, "steps_per_epoch": 3, "val_pairs": 2,
        "lr": 0.002, "lr_schedule": "poly", "inner_lr_schedule": "poly", "threads": 2, "progress": False}
VARIANTS = {
    "ofg": {"strategy": "ofg"},
    "unsupervised": {"strategy": "unsupervised"},
    "ofg, flip augmentation": {"strategy": "ofg", "augment": "flip"},
    "downsample design": {"strategy": "ofg", "optimizer_design": "downsample"},
    "mix": {"strategy": "mix"},
    "optimizer-network design": {"strategy": "ofg", "optimizer_design": "optimizer-network"},
    "network design": {"strategy": "ofg", "optimizer_design": "network"},
    "ofg_every 2": {"strategy": "ofg", "ofg_every": 2},
    "ofg_prob 0.5": {"strategy": "ofg", "ofg_prob": 0.5},
    "warm-up": {"strategy": "ofg", "warmup_strategy": "unsupervised", "warmup_epochs": 1},
}
TIMINGS = ("sec_per_step_", "peak_memory_mb")


def fingerprint() -> dict:
    from ofg_lib import train
    out = {}
    for name, variant in VARIANTS.items():
        rows = []
        summary = train.run({**BASE, **variant}, callbacks=[lambda t, row: rows.append(row)])
        out[name] = {"summary": {k: v for k, v in summary.items() if not k.startswith(TIMINGS)},
                     "history": [{k: v for k, v in r.items() if not k.startswith(TIMINGS)} for r in rows]}
    return out


def compare(a: dict, b: dict) -> list[str]:
    return [f"{name}: differs" for name in sorted(set(a) | set(b)) if a.get(name) != b.get(name)]


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="compare two printed fingerprints")
    args = p.parse_args()
    if args.compare:
        before, after = (json.load(open(f)) for f in args.compare)
        bad = compare(before, after)
        print("\n".join(bad) or f"identical: {len(before)} runs, every history and summary")
        sys.exit(1 if bad else 0)
    json.dump(fingerprint(), sys.stdout, indent=1, default=str)
