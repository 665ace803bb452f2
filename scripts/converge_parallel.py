"""Train every run of a converge spec in parallel processes under a deadline, then score them (one machine, e.g. a GPU).

    python scripts/converge_parallel.py configs/studies/converge3d.yaml --train-s 240 --report reports/converge3d
    python scripts/converge_parallel.py SPEC --build-only --workers 14     # only generate the embedded cohort

What `scripts/gpu_run.sh` runs for the 3-D confirmation of issue 19 (item 6). Three steps:
1. the embedded cohort of the spec's setting is generated once, in `--workers` processes (subjects are cached
   under data/; every training process would otherwise generate the same ones);
2. one `python -m ofg_lib.converge --only ARM/STRATEGY/SEED` process per run, all at once (on a GPU they share
   the device; a VoxelMorph-1 step at 48x64x64 is launch-bound, so several processes keep it busier than one);
   at `--train-s` seconds the ones still running get SIGINT: each keeps the checkpoint of its last finished
   epoch (the trainer never saves mid-epoch);
3. `python -m ofg_lib.converge --score-only`: every complete pair scored on the test split, runs cut by the
   deadline marked as such (never resumed here), the report written to `--report`, and the runs' logs
   (config.json, log.csv, summary.json; no checkpoints) packed into `--logs` for the learning curves.
Exit status 0 when every step finished (cut runs included: the report says which were cut).
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _configs(spec: dict) -> list[dict]:
    from ofg_lib.converge import arm_config, base_config
    base = base_config(spec)
    return [arm_config(spec, arm, base)[0] for arm in spec["arms"]]


def _make(job):
    cfg, split, indices = job
    import torch
    torch.set_num_threads(1)
    from ofg_lib.data import from_config
    ds = from_config(cfg, split)
    for i in indices:
        ds[i]
    return len(indices)


def build_cohort(spec: dict, workers: int) -> float:
    """Generate (or find cached) every subject the spec's runs use, in `workers` processes; seconds taken."""
    from ofg_lib.data import from_config
    t0 = time.perf_counter()
    jobs, seen = [], set()
    for cfg in _configs(spec):
        for split in ("train", "val", "test"):
            ds = from_config(cfg, split)
            key = (str(getattr(ds, "folder", id(ds))), split)
            if key in seen:
                continue
            seen.add(key)
            n = len(ds)
            jobs += [(cfg, split, list(range(i, n, workers))) for i in range(min(workers, n))]
    with ProcessPoolExecutor(workers) as pool:
        done = sum(pool.map(_make, jobs))
    print(f"[cohort] {done} subjects ready in {time.perf_counter() - t0:.0f} s ({workers} workers)", flush=True)
    return time.perf_counter() - t0


def train_all(spec_path: str, spec: dict, deadline_s: float) -> dict:
    """One process per run; SIGINT to those still running at the deadline. Returns {run: exit status}."""
    from ofg_lib.converge import STRATEGIES
    runs = []
    for arm, over in spec["arms"].items():
        for seed in over.get("seeds", spec["seeds"]):
            for strat in STRATEGIES:
                runs.append(f"{arm}/{strat}/{seed}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    procs = {r: subprocess.Popen([sys.executable, "-m", "ofg_lib.converge", "--spec", spec_path, "--only", r],
                                 cwd=ROOT, env=env) for r in runs}
    print(f"[train] {len(procs)} processes started, deadline {deadline_s:.0f} s", flush=True)
    t0 = time.monotonic()
    while any(p.poll() is None for p in procs.values()) and time.monotonic() - t0 < deadline_s:
        time.sleep(2)
    late = [r for r, p in procs.items() if p.poll() is None]
    for r in late:
        procs[r].send_signal(signal.SIGINT)
    grace = time.monotonic() + 30          # one grace period for all of them, then SIGKILL
    for r in late:
        try:
            procs[r].wait(max(0.1, grace - time.monotonic()))
        except subprocess.TimeoutExpired:
            procs[r].kill()
            procs[r].wait()
    codes = {r: p.returncode for r, p in procs.items()}
    print(f"[train] {time.monotonic() - t0:.0f} s; finished: {sum(c == 0 for c in codes.values())}, "
          f"cut at the deadline: {len(late)} ({', '.join(late) or 'none'}), "
          f"failed: {[r for r, c in codes.items() if c not in (0,) and r not in late]}", flush=True)
    return codes


def _machine(n_runs: int) -> str:
    import torch
    where = (f"one {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else
             f"{os.cpu_count()} CPU cores")
    return f"{where} (torch {torch.__version__}), {n_runs} runs as parallel processes"


def pack_logs(run_dir: Path, path: Path) -> Path:
    """config.json, log.csv and summary.json of every run under `run_dir`, as one .tar.gz (no checkpoints)."""
    from ofg_lib.runs import RUN_FILES
    logs = [name for name in RUN_FILES if not name.endswith(".pt")]
    with tarfile.open(path, "w:gz") as tar:
        for f in sorted(run_dir.rglob("*")):
            if f.name in logs or f.name.startswith("score-"):
                tar.add(f, arcname=str(f.relative_to(run_dir.parent)))
    return path


def main(argv=None):
    import yaml
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("spec")
    p.add_argument("--train-s", type=float, default=240, help="deadline of the training processes, seconds")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2), help="cohort processes")
    p.add_argument("--report", default=None, help="report folder (default: reports/<spec name>)")
    p.add_argument("--logs", default=None, help="the runs' logs as .tar.gz (default: REPORT/runs-logs.tar.gz)")
    p.add_argument("--build-only", action="store_true")
    p.add_argument("--machine", default=None,
                   help="where the runs train, for the report (default: the GPU's name, or the CPU count)")
    args = p.parse_args(argv)
    spec = yaml.safe_load(Path(args.spec).read_text())
    build_cohort(spec, args.workers)
    if args.build_only:
        return 0
    codes = train_all(args.spec, spec, args.train_s)
    report = Path(args.report or ROOT / "reports" / Path(args.spec).stem)
    rc = subprocess.call([sys.executable, "-m", "ofg_lib.converge", "--spec", args.spec, "--report", str(report),
                          "--score-only", "--machine", args.machine or _machine(len(codes))], cwd=ROOT)
    run_dir = ROOT / spec.get("run_dir", "results/converge")
    print(f"[logs] {pack_logs(run_dir, Path(args.logs or report / 'runs-logs.tar.gz'))}", flush=True)
    failed = [r for r, c in codes.items() if c not in (0, 130, -signal.SIGINT)]
    return 1 if rc or failed else 0


if __name__ == "__main__":
    sys.exit(main())
