"""The CPU speed of issue 21 in one run: each row timed with PyTorch's own convolution path (the baseline, still
callable: `ofg_lib.models.layers.set_cpu_channels_last(False)` or `cpu_channels_last_set(False)`) and with the channels-last oneDNN path, interleaved.

    python benchmarks/bench_cpu.py                       # about 3-5 minutes on 2 cores; results in benchmarks/results/
    python benchmarks/bench_cpu.py --repeats 3 --sizes 48x64x64 96x112 --no-loop   # shorter

Rows (VoxelMorph-1, batch 1, float32, random weights and inputs; `--threads` torch threads):
- forward + backward of the network at 48x64x64, 80x96x112 and in 2-D at 96x112;
- one training step of each strategy (prediction, loss, backward, Adam step; OFG with `refine`'s ten inner steps)
  at 48x64x64 and 96x112 (the step of `benchmarks/bench_gpu.py`, without data loading);
- the 10-step inner loop (`refine`) at 80x96x112, which the switch does not touch (no convolution in it);
- a profile of one forward+backward at the first 3-D size with the new path: where the rest of the time goes.

Each row alternates the two paths `--repeats` times after one untimed call of each, and reports the medians and
their ratio (baseline / new: above 1 is faster). Before timing, the two paths' outputs are compared (largest
difference relative to the largest value). Writes `--out` (JSON) and a Markdown table beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_gpu import train_step  # noqa: E402
from bench_lncc import make_inputs  # noqa: E402

from ofg_lib import models  # noqa: E402
from ofg_lib.models.layers import cpu_channels_last_set  # noqa: E402
from ofg_lib.optimizer import refine  # noqa: E402

GOAL_STEP_RATIO = 1.8      # VoxelMorph-1 CPU training step at 48x64x64, baseline / new
GOAL_LOOP_MS = 300.0       # the 10-step loop at 80x96x112


def _inputs(size, seed=0):
    """Random moving and fixed images of a 2-D or 3-D size (the training-step rows; bench_lncc's are 3-D only)."""
    g = torch.Generator().manual_seed(seed)
    moving, fixed = torch.rand(1, 1, *size, generator=g), torch.rand(1, 1, *size, generator=g)
    return moving, fixed


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def paired(fn, repeats: int) -> dict:
    """fn() timed with the switch off (baseline) and on (new), alternating; medians in ms and their ratio."""
    times = {False: [], True: []}
    for on in (False, True):            # one untimed call each (oneDNN builds its primitives on first use)
        with cpu_channels_last_set(on):
            fn()
    for _ in range(repeats):
        for on in (False, True):
            with cpu_channels_last_set(on):
                times[on].append(_timed(fn))
    base, new = (1000 * statistics.median(times[k]) for k in (False, True))
    return {"baseline_ms": base, "new_ms": new, "ratio": base / new}


def agreement(net, x) -> float:
    """Largest |new - baseline| of the network's output, relative to the largest |output|."""
    with torch.no_grad():
        with cpu_channels_last_set(False):
            a = net(x)
        with cpu_channels_last_set(True):
            b = net(x)
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-30))


def network_row(size, repeats):
    torch.manual_seed(0)
    net = models.build("voxelmorph-1", size)
    with torch.no_grad():
        for p in net.parameters():      # trained-like weights (the flow layer starts near zero)
            p.normal_(0, 0.05)
    x = torch.rand(1, 2, *size, generator=torch.Generator().manual_seed(1))

    def fwd_bwd():
        net.zero_grad(set_to_none=True)
        net(x).square().mean().backward()
    return {**paired(fwd_bwd, repeats), "max_rel_diff": agreement(net, x)}


def step_rows(size, repeats):
    moving, fixed = _inputs(size)
    out = {}
    for strategy in ("unsupervised", "ofg"):
        torch.manual_seed(0)
        net = models.build("voxelmorph-1", size)
        opt = torch.optim.Adam(net.parameters(), lr=1e-4, amsgrad=True)
        out[strategy] = paired(lambda: train_step(net, opt, moving, fixed, strategy), repeats)
    return out


def loop_row(size, repeats):
    moving, fixed, disp = make_inputs(size, "cpu", torch.float32)     # the inputs of `make bench`
    refine(disp, moving, fixed)
    ms = [1000 * _timed(lambda: refine(disp, moving, fixed)) for _ in range(repeats)]
    return {"ms": statistics.median(ms)}


def _top_ops(fn, top: int = 6) -> list[dict]:
    """The `top` ATen ops of fn() by self CPU time, as shares of the total (3 calls after 2 warm-ups)."""
    for _ in range(2):
        fn()
    with torch.autograd.profiler.profile() as prof:
        for _ in range(3):
            fn()
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops)
    return [{"op": e.key, "share": e.self_cpu_time_total / total, "calls_per_pass": e.count / 3} for e in ops[:top]]


def profile_row(size, top: int = 6) -> list[dict]:
    """Where the time of one forward+backward goes with the new path."""
    torch.manual_seed(0)
    net = models.build("voxelmorph-1", size)
    x = torch.rand(1, 2, *size)

    def fwd_bwd():
        net.zero_grad(set_to_none=True)
        net(x).square().mean().backward()
    return _top_ops(fwd_bwd, top)


def profile_loop(size, top: int = 6) -> list[dict]:
    """Where the time of the 10-step loop goes (the goal it misses says what limits it)."""
    moving, fixed, disp = make_inputs(size, "cpu", torch.float32)
    return _top_ops(lambda: refine(disp, moving, fixed), top)


def markdown(result: dict) -> str:
    m = result["meta"]
    lines = [f"# bench_cpu: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['threads']} threads, "
             f"{m['repeats']} repeats (medians)", "",
             "Baseline: PyTorch's own CPU convolution path (`set_cpu_channels_last(False)`); new: channels-last "
             "oneDNN (`ofg_lib/models/layers.py`). Ratio = baseline / new (above 1: faster). Both paths alternate "
             "in one process.", "",
             "| row | baseline ms | new ms | ratio | max rel. output diff |", "|---|---|---|---|---|"]
    for name, r in result["rows"].items():
        if "ratio" in r:
            diff = f"{r['max_rel_diff']:.1e}" if "max_rel_diff" in r else ""
            lines.append(f"| {name} | {r['baseline_ms']:.1f} | {r['new_ms']:.1f} | {r['ratio']:.2f} | {diff} |")
        else:
            lines.append(f"| {name} | {r['ms']:.1f} | (no convolution: same path) | | |")
    for key, what in (("profile", "a forward+backward of the network, new path"), ("loop_profile", "the 10-step loop")):
        if result.get(key):
            lines += ["", f"Where {what} at {result[key]['size']} spends its time (ATen ops by self CPU time, "
                      "`torch.autograd.profiler`; calls per pass = per call of the whole):", "",
                      "| op | share | calls per pass |", "|---|---|---|"]
            lines += [f"| {o['op']} | {100 * o['share']:.1f} % | {o['calls_per_pass']:g} |" for o in result[key]["ops"]]
    lines += ["", "| goal | measured | limit | status |", "|---|---|---|---|"]
    for g in result["goals"]:
        lines.append(f"| {g['goal']} | {g['value']:.2f} | {g['limit']:g} | {g['status']} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sizes", nargs="+", default=["48x64x64", "96x112", "80x96x112"],
                   help="network sizes (D x H x W, or H x W); training steps at the 2-D ones and the first 3-D one")
    p.add_argument("--no-loop", action="store_true", help="skip the 10-step loop row")
    p.add_argument("--no-profile", action="store_true", help="skip the profile of the first 3-D size")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "bench_cpu.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = {}
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes]
    first_3d = next((s for s in sizes if len(s) == 3), None)
    for size in sizes:
        name = "x".join(map(str, size))
        rows[f"VoxelMorph-1 forward+backward, {name}"] = network_row(size, args.repeats)
        print(f"network {name}: {rows[f'VoxelMorph-1 forward+backward, {name}']}", flush=True)
        if len(size) == 2 or size == first_3d:
            for strategy, r in step_rows(size, args.repeats).items():
                rows[f"VoxelMorph-1 {strategy} training step, {name}"] = r
                print(f"step {strategy} {name}: {r}", flush=True)
    if not args.no_loop:
        rows["10-step inner loop (refine), 80x96x112"] = loop_row((80, 96, 112), args.repeats)
        print(f"loop: {rows['10-step inner loop (refine), 80x96x112']}", flush=True)
    profile = None
    if first_3d is not None and not args.no_profile:
        profile = {"size": "x".join(map(str, first_3d)), "ops": profile_row(first_3d)}
    loop_profile = None
    if not args.no_loop and not args.no_profile:
        loop_profile = {"size": "80x96x112", "ops": profile_loop((80, 96, 112))}
    goals = []
    for strategy in ("unsupervised", "ofg"):
        r = rows.get(f"VoxelMorph-1 {strategy} training step, 48x64x64")
        if r is None:
            continue
        goals.append({"goal": f"VoxelMorph-1 {strategy} training step at 48x64x64: baseline / new >= "
                              f"{GOAL_STEP_RATIO}", "value": r["ratio"], "limit": GOAL_STEP_RATIO,
                      "status": "met" if r["ratio"] >= GOAL_STEP_RATIO else "not met"})
    if "10-step inner loop (refine), 80x96x112" in rows:
        v = rows["10-step inner loop (refine), 80x96x112"]["ms"]
        goals.append({"goal": f"10-step inner loop at 80x96x112 <= {GOAL_LOOP_MS:g} ms", "value": v,
                      "limit": GOAL_LOOP_MS, "status": "met" if v <= GOAL_LOOP_MS else "not met"})
    meta = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "repeats": args.repeats,
            "mkldnn": torch.backends.mkldnn.is_available()}
    result = {"meta": meta, "rows": rows, "profile": profile, "loop_profile": loop_profile, "goals": goals}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
