"""The CPU speed of issue 21 in one run: each row timed with the code path before the issue (the baseline, still
callable: PyTorch's own convolutions, `ofg_lib.models.layers.cpu_channels_last_set(False)`, and the instance
optimizer's PyTorch loop, `ofg_lib.optimizer.cpu_kernels_set(False)`) and with the new one (channels-last oneDNN
convolutions and the fused numba kernels of `ofg_lib/_refine_cpu.py`), interleaved.

    python benchmarks/bench_cpu.py                       # about 3-5 minutes on 2 cores; results in benchmarks/results/
    python benchmarks/bench_cpu.py --repeats 3 --sizes 48x64x64 96x112 --no-loop   # shorter

Rows (VoxelMorph-1, batch 1, float32, random weights and inputs; `--threads` torch threads):
- forward + backward of the network at 48x64x64, 80x96x112 and in 2-D at 96x112;
- one training step of each strategy (prediction, loss, backward, Adam step; OFG with `refine`'s ten inner steps)
  at 48x64x64 and 96x112 (the step of `benchmarks/bench_gpu.py`, without data loading);
- the 10-step inner loop (`refine`) at 80x96x112 (the goal's size), 48x64x64 and 96x112, with the largest field
  difference between the paths and each path's distance from the same loop in float64 (in float32 both paths
  round differently where the energy is flat, and Adam turns that rounding into steps: tests/test_optimizer.py);
- a profile of one forward+backward at the first 3-D size with the new path, and the new loop's time per kernel
  at 80x96x112: where the rest of the time goes.

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

from ofg_lib import _refine_cpu, models  # noqa: E402
from ofg_lib.models.layers import cpu_channels_last_set  # noqa: E402
from ofg_lib.optimizer import cpu_kernels_set, refine  # noqa: E402


class both_set:
    """Both switches of issue 21 at once: off is the baseline (the path before the issue), on is the new one."""

    def __init__(self, on: bool):
        self.ctx = (cpu_channels_last_set(on), cpu_kernels_set(on))

    def __enter__(self):
        for c in self.ctx:
            c.__enter__()
        return self

    def __exit__(self, *exc):
        for c in reversed(self.ctx):
            c.__exit__(*exc)
        return False

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
    """fn() timed with the switches off (baseline) and on (new), alternating; medians in ms and their ratio."""
    times = {False: [], True: []}
    for on in (False, True):            # one untimed call each (oneDNN builds its primitives, numba loads its cache)
        with both_set(on):
            fn()
    for _ in range(repeats):
        for on in (False, True):
            with both_set(on):
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


def network_row(size, repeats, model="voxelmorph-1"):
    torch.manual_seed(0)
    net = models.build(model, size)
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


def _loop_inputs(size, dtype=torch.float32):
    if len(size) == 3:
        return make_inputs(size, "cpu", dtype)     # the inputs of `make bench`
    moving, fixed = _inputs(size)
    return moving.to(dtype), fixed.to(dtype), torch.zeros(1, 2, *size, dtype=dtype)


def loop_row(size, repeats):
    """The 10-step loop, both paths; field differences in voxels (between them, and each from float64)."""
    moving, fixed, disp = _loop_inputs(size)
    row = paired(lambda: refine(disp, moving, fixed), repeats)
    fields = {}
    for on in (False, True):
        with cpu_kernels_set(on):
            fields[on] = refine(disp, moving, fixed).double()
    with cpu_kernels_set(False):
        exact = refine(*(x.double() for x in (disp, moving, fixed)))
    return {**row, "max_field_diff": float((fields[True] - fields[False]).abs().max()),
            "baseline_vs_float64": float((fields[False] - exact).abs().max()),
            "new_vs_float64": float((fields[True] - exact).abs().max())}


def kernel_breakdown(size, repeats: int = 5) -> list[dict]:
    """The new loop's time per kernel for one energy-and-gradient step at `size` (medians, ms), plus the update."""
    import numpy as np
    moving, fixed, disp = _loop_inputs(size)
    prob = _refine_cpu.Problem(moving.numpy(), fixed.numpy(), 1.0, 9)
    phi = disp.numpy().copy()
    prob.energy_and_gradient(phi)
    p, mov, fix, (mean_i, var_i) = phi[0], prob.moving[0], prob.fixed[0], prob.stats[0]
    warp = _refine_cpu._warp3 if len(size) == 3 else _refine_cpu._warp2
    m, v, vmax = (np.zeros_like(phi) for _ in range(3))
    stages = {
        "set-up: the fixed image's statistics": lambda: _refine_cpu.Problem(moving.numpy(), fixed.numpy(), 1.0, 9,
                                                                            reuse=True),
        "warp, its slope and the moments J, J^2, IJ": lambda: warp(mov, fix, p.reshape(prob.grad.shape[1:]),
                                                                   prob.warped[0], prob.dw, prob.mom, *prob.grid),
        "box sums (x2 per step)": lambda: _refine_cpu.box_sum(prob.mom, prob.r, prob.tmp),
        "LNCC coefficients": lambda: _refine_cpu._coefficients(prob.mom, mean_i, var_i, prob.n, prob.eps),
        "gradient and grad_l2": lambda: _refine_cpu._gradient(prob.mom, prob.warped, fix, prob.dw,
                                                              p.reshape(prob.grad.shape[1:]), prob.grad[0],
                                                              prob.scale, prob.reg, prob.nd),
        "Adam update": lambda: _refine_cpu._adam(phi, prob.grad, m, v, vmax, 1e-9, 1.0, False),
        "whole step (energy and gradient)": lambda: prob.energy_and_gradient(phi),
    }
    out = []
    for name, fn in stages.items():
        fn()
        out.append({"stage": name, "ms": 1000 * statistics.median(_timed(fn) for _ in range(repeats))})
    return out


def _top_ops(fn, top: int = 6, shapes: bool = False) -> list[dict]:
    """The `top` ATen ops of fn() by self CPU time, as shares of the total (3 calls after 2 warm-ups); with
    `shapes`, one row per op and input shape (the first input's shape is kept)."""
    for _ in range(2):
        fn()
    with torch.autograd.profiler.profile(record_shapes=shapes) as prof:
        for _ in range(3):
            fn()
    ops = sorted(prof.key_averages(group_by_input_shape=shapes), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops)

    def name(e):
        first = next((s for s in (e.input_shapes or []) if s), None) if shapes else None
        return f"{e.key} {'x'.join(map(str, first))}" if first else e.key
    return [{"op": name(e), "share": e.self_cpu_time_total / total, "calls_per_pass": e.count / 3}
            for e in ops[:top]]


def profile_row(size, top: int = 6) -> list[dict]:
    """Where the time of one forward+backward goes with the new path, per op and input shape."""
    torch.manual_seed(0)
    net = models.build("voxelmorph-1", size)
    x = torch.rand(1, 2, *size)

    def fwd_bwd():
        net.zero_grad(set_to_none=True)
        net(x).square().mean().backward()
    return _top_ops(fwd_bwd, top, shapes=True)


def profile_loop(size, top: int = 6) -> list[dict]:
    """Where the time of the baseline's 10-step loop goes (PyTorch's path; the new one is not made of ATen ops)."""
    moving, fixed, disp = make_inputs(size, "cpu", torch.float32)
    with cpu_kernels_set(False):
        return _top_ops(lambda: refine(disp, moving, fixed), top)


def numba_version():
    return _refine_cpu.numba.__version__ if _refine_cpu.AVAILABLE else None


def markdown(result: dict) -> str:
    m = result["meta"]
    lines = [f"# bench_cpu: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, numba {m.get('numba')}, "
             f"{m['threads']} threads, {m['repeats']} repeats (medians)", "",
             "Baseline: the CPU path before issue 21, PyTorch's own convolutions and the instance optimizer's "
             "PyTorch loop (`cpu_channels_last_set(False)`, `cpu_kernels_set(False)`); new: channels-last oneDNN "
             "convolutions, batch-one halves where ATen would use slow_conv3d (`ofg_lib/models/layers.py`), and "
             "the fused numba loop (`ofg_lib/_refine_cpu.py`). "
             "Ratio = baseline / new (above 1: faster). Both paths alternate in one process. Network rows: largest "
             "output difference relative to the largest output; loop rows: largest field difference in voxels "
             "after ten steps, and each path's distance from the float64 loop.", "",
             "| row | baseline ms | new ms | ratio | difference |", "|---|---|---|---|---|"]
    for name, r in result["rows"].items():
        if "max_rel_diff" in r:
            diff = f"{r['max_rel_diff']:.1e} (relative)"
        elif "max_field_diff" in r:
            diff = (f"{r['max_field_diff']:.1e} vox (from float64: baseline {r['baseline_vs_float64']:.1e}, "
                    f"new {r['new_vs_float64']:.1e})")
        else:
            diff = ""
        lines.append(f"| {name} | {r['baseline_ms']:.1f} | {r['new_ms']:.1f} | {r['ratio']:.2f} | {diff} |")
    if result.get("kernels"):
        k = result["kernels"]
        lines += ["", f"The new loop's time per stage at {k['size']} (one call each, medians; a refinement sets up "
                  "once, and each step calls each stage once except the box sums, twice):", "", "| stage | ms |",
                  "|---|---|"]
        lines += [f"| {r['stage']} | {r['ms']:.1f} |" for r in k["stages"]]
    for key, what in (("profile", "a forward+backward of the network, new path"),
                      ("loop_profile", "the baseline's 10-step loop")):
        if result.get(key):
            lines += ["", f"Where {what} at {result[key]['size']} spends its time (ATen ops by self CPU time, "
                      "`torch.autograd.profiler`; calls per pass = per call of the whole; with an input shape: "
                      "that op on inputs of that shape):", "",
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
    p.add_argument("--no-loop", action="store_true", help="skip the 10-step loop rows")
    p.add_argument("--loop-sizes", nargs="+", default=["80x96x112", "48x64x64", "96x112"],
                   help="sizes of the 10-step loop rows (the goal is judged at 80x96x112)")
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
        if size == first_3d:        # the small network the notebooks and tests train under CI
            rows[f"VoxelMorph-1-tiny forward+backward, {name}"] = network_row(size, args.repeats, "voxelmorph-1-tiny")
            print(f"tiny network {name}: {rows[f'VoxelMorph-1-tiny forward+backward, {name}']}", flush=True)
        if len(size) == 2 or size == first_3d:
            for strategy, r in step_rows(size, args.repeats).items():
                rows[f"VoxelMorph-1 {strategy} training step, {name}"] = r
                print(f"step {strategy} {name}: {r}", flush=True)
    loop_sizes = [] if args.no_loop else [tuple(int(v) for v in s.split("x")) for s in args.loop_sizes]
    for size in loop_sizes:
        name = f"10-step inner loop (refine), {'x'.join(map(str, size))}"
        rows[name] = loop_row(size, args.repeats)
        print(f"loop: {rows[name]}", flush=True)
    profile = None
    if first_3d is not None and not args.no_profile:
        profile = {"size": "x".join(map(str, first_3d)), "ops": profile_row(first_3d)}
    loop_profile = kernels = None
    if loop_sizes and not args.no_profile:
        where = "x".join(map(str, loop_sizes[0]))
        loop_profile = {"size": where, "ops": profile_loop(loop_sizes[0])}
        if _refine_cpu.AVAILABLE:
            kernels = {"size": where, "stages": kernel_breakdown(loop_sizes[0], args.repeats)}
    goals = []
    for strategy in ("unsupervised", "ofg"):
        r = rows.get(f"VoxelMorph-1 {strategy} training step, 48x64x64")
        if r is None:
            continue
        goals.append({"goal": f"VoxelMorph-1 {strategy} training step at 48x64x64: baseline / new >= "
                              f"{GOAL_STEP_RATIO}", "value": r["ratio"], "limit": GOAL_STEP_RATIO,
                      "status": "met" if r["ratio"] >= GOAL_STEP_RATIO else "not met"})
    if "10-step inner loop (refine), 80x96x112" in rows:
        v = rows["10-step inner loop (refine), 80x96x112"]["new_ms"]
        goals.append({"goal": f"10-step inner loop at 80x96x112 <= {GOAL_LOOP_MS:g} ms", "value": v,
                      "limit": GOAL_LOOP_MS, "status": "met" if v <= GOAL_LOOP_MS else "not met"})
    meta = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "repeats": args.repeats,
            "mkldnn": torch.backends.mkldnn.is_available()}
    meta["numba"] = numba_version()
    result = {"meta": meta, "rows": rows, "profile": profile, "loop_profile": loop_profile, "kernels": kernels,
              "goals": goals}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
