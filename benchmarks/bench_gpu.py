"""Time the GPU goals of issue 14 in one run on one device: LNCC, the inner loop and its levers, training steps.

    python benchmarks/bench_gpu.py                                             # auto device, 160x192x224
    python benchmarks/bench_gpu.py --device cpu --size 32 32 32 --repeats 1    # CPU smoke, tiny models, seconds
    python benchmarks/bench_gpu.py --device cuda --out $OUT/bench_gpu.json     # what scripts/gpu_run.sh runs

Rows, all on the same inputs, threads and device:
- LNCC forward+backward: ours (`lncc`) and the published path (`lncc_conv3d`, five dense window^3 convolutions).
- The 10-step inner loop: ours (`refine`), the published path (dense conv3d LNCC in torch's default Adam with
  amsgrad over warp + LNCC + grad_l2) and one row per lever, each changing one thing in the loop: no per-step
  finiteness check (a device sync), LNCC that recomputes the fixed image's local sums every step (plain `lncc`
  instead of `FixedLNCC`), torch's default Adam instead of the fused one, `torch.compile` of the energy (on CUDA,
  or with --compile). Each of these first runs once and reports the largest difference of its field from
  `refine`'s after 10 steps, the share of voxels that differ by more than --atol voxels and the relative
  difference of the energy reached; it agrees when that share is at most --max-frac and the energies agree to
  1e-4. (Not the maximum alone: in float32, Adam's normalisation amplifies rounding where the gradient is nearly
  zero, so two correct implementations differ by up to ~0.05 voxels at a handful of voxels (0.1-0.3% of them at
  32^3, fewer at larger sizes); in float64 they agree to 1e-10, which tests/test_bench_gpu.py checks.)
- Full training steps (network forward, loss, backward, Adam step), per model: unsupervised (lncc + 1.0 * grad_l2)
  and OFG (`refine` then `ofg_loss`), plus the OFG step with the published inner loop and, on CUDA, with the
  network under bf16 autocast (as `TrainConfig.amp`). On CPU the models default to their `-tiny` variants.

Times are medians of --repeats synchronised calls after one warm-up (`ofg_lib.metrics.time_ms`; rows that run
the slow published inner loop take at most 3 calls, to save device time). Peak memory is CUDA's
max_memory_allocated over one more call after reset_peak_memory_stats (absolute: inputs, model and optimizer state
included); on CPU it is not measured (None). Goals (a)-(d) of the issue are judged only at 160x192x224 on CUDA.
Results go to --out (JSON) and a Markdown table next to it (printed at the end), rewritten atomically after every
row, so a run cut short keeps what it measured ("complete": false).
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import warnings
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_lncc, when this file is imported by a test
from bench_lncc import make_inputs, peer_loop  # noqa: E402

from ofg_lib import device as resolve_device  # noqa: E402
from ofg_lib import models  # noqa: E402
from ofg_lib import synchronize as sync  # noqa: E402
from ofg_lib.losses import FixedLNCC, grad_l2, lncc, ofg_loss  # noqa: E402
from published import lncc_conv3d  # noqa: E402
from ofg_lib.metrics import time_ms  # noqa: E402
from ofg_lib.optimizer import refine  # noqa: E402
from ofg_lib.files import atomic_write  # noqa: E402
from ofg_lib.transform import warp  # noqa: E402

FULL_SIZE = (160, 192, 224)
PUBLISHED_MODELS = ["voxelmorph-1", "transmorph"]
NOT_JUDGED = "not judged (size/device)"
SLOW_REPEATS = 3  # at most this many timed calls for rows that run the published (dense conv3d) inner loop
ENERGY_RTOL = 1e-4  # a loop agrees with refine only if the energies they reach agree to this (relative)

# Row names, used as keys for ratios and goals.
LNCC_OURS, LNCC_PAPER = "LNCC fwd+bwd: ours (lncc)", "LNCC fwd+bwd: published (lncc_conv3d)"
LOOP_OURS, LOOP_PAPER = "10-step loop: ours (refine)", "10-step loop: published (conv3d LNCC, default Adam)"
LEVER_NOSYNC = "lever: no per-step finiteness check (sync)"
LEVER_PLAIN = "lever off: plain lncc (fixed sums every step)"
LEVER_UNFUSED = "lever off: default (unfused) Adam"
LEVER_COMPILE = "lever: torch.compile of the energy"


def step_names(model: str) -> dict:
    """The training-step row names of one model."""
    return {"unsup": f"{model}: unsupervised step", "ofg": f"{model}: OFG step (ours)",
            "ofg_paper": f"{model}: OFG step (published inner loop)", "ofg_amp": f"{model}: OFG step, bf16 network"}


# ---------------------------------------------------------------------------------------------------------------
# The loops and steps being timed
# ---------------------------------------------------------------------------------------------------------------

def published_loop(disp, moving, fixed, steps=10, lr=0.1, reg_weight=1.0):
    """The published path: dense conv3d LNCC with autograd, torch's default Adam (amsgrad), warp + grad_l2."""
    return peer_loop(lncc_conv3d, warp, disp, moving, fixed, steps, lr, reg_weight)


def make_energy(moving, fixed, fixed_stats=True, reg_weight=1.0):
    """E(phi) = lncc(fixed, moving o phi) + reg_weight * grad_l2(phi), the energy `refine` minimises."""
    similarity = FixedLNCC(fixed) if fixed_stats else partial(lncc, fixed, validate=False)

    def energy(phi):
        return similarity(warp(moving, phi)) + reg_weight * grad_l2(phi)
    return energy


def lever_loop(energy, disp, fused=True, steps=10, lr=0.1):
    """`refine`'s 10 Adam (amsgrad) steps on `energy`, without its per-step finiteness check."""
    phi = disp.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([phi], lr=lr, amsgrad=True, fused=True if fused else None)
    for _ in range(steps):
        opt.zero_grad(set_to_none=False)
        energy(phi).backward()
        opt.step()
    return phi.detach()


def train_step(net, opt, moving, fixed, strategy, inner=refine, amp=False):
    """One network step: predict phi, the strategy's loss (unsupervised or OFG with `inner`), backward, Adam step."""
    opt.zero_grad(set_to_none=True)
    with torch.autocast(moving.device.type, dtype=torch.bfloat16, enabled=amp):
        phi = net(torch.cat([moving, fixed], 1))
    phi = phi.float()
    if strategy == "unsupervised":
        loss = lncc(fixed, warp(moving, phi), validate=False) + 1.0 * grad_l2(phi)
    else:
        loss = ofg_loss(phi, inner(phi.detach(), moving, fixed))
    loss.backward()
    opt.step()


# ---------------------------------------------------------------------------------------------------------------
# Measuring and reporting
# ---------------------------------------------------------------------------------------------------------------

def peak_mib(fn, dev):
    """Peak CUDA memory allocated during one call of fn(), MiB (absolute); None on CPU."""
    if dev.type != "cuda":
        return None
    gc.collect()
    torch.cuda.empty_cache()
    sync(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    fn()
    sync(dev)
    return torch.cuda.max_memory_allocated(dev) / 2**20


def device_name(dev) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def tf32_settings(dev):
    """Whether CUDA may use TF32 for float32 convolutions and matmuls (it changes both speed and rounding)."""
    if dev.type != "cuda":
        return None
    return {"cudnn_conv": torch.backends.cudnn.allow_tf32, "matmul": torch.get_float32_matmul_precision()}


class Report:
    """The table: rows measured so far, written to JSON and Markdown after each row; ratios and goals at the end.

    A row's `ratio` is its time divided by the time of the row named in `vs`.
    """

    def __init__(self, meta: dict, out: Path):
        self.meta, self.out, self.rows = meta, out, []
        self.ratios, self.goals = {}, []

    def ms(self, name):
        row = next((r for r in self.rows if r["name"] == name), None)
        return row["ms"] if row else None

    def peak(self, name):
        row = next((r for r in self.rows if r["name"] == name), None)
        return row["peak_mib"] if row else None

    def add(self, section, name, ms=None, peak=None, vs=None, agreement=None, skipped=None):
        base = self.ms(vs) if vs else None
        agreement = agreement or {"max_abs_diff": None, "frac_over_atol": None, "energy_rel_diff": None,
                                  "agrees": None}
        row = {"section": section, "name": name, "ms": ms, "peak_mib": peak, "vs": vs,
               "ratio": ms / base if ms and base else None, **agreement, "skipped": skipped}
        self.rows.append(row)
        print(self.line(row), flush=True)
        self.save(complete=False)

    @staticmethod
    def line(r) -> str:
        if r["skipped"]:
            return f"{r['name']:<58} skipped: {r['skipped']}"
        text = f"{r['name']:<58}{r['ms']:>10.1f} ms"
        if r["ratio"] is not None:
            text += f"{r['ratio']:>8.2f}x vs {r['vs']}"
        if r["peak_mib"] is not None:
            text += f"  peak {r['peak_mib']:.0f} MiB"
        if r["max_abs_diff"] is not None:
            text += (f"  max|d field| {r['max_abs_diff']:.1e}, {100 * r['frac_over_atol']:.3f}% > atol,"
                     f" dE {r['energy_rel_diff']:.0e}"
                     + ("" if r["agrees"] else "  DISAGREES"))
        return text

    def save(self, complete: bool) -> None:
        data = {**self.meta, "complete": complete, "rows": self.rows, "ratios": self.ratios, "goals": self.goals}
        atomic_write(self.out, json.dumps(data, indent=1) + "\n")
        atomic_write(self.out.with_suffix(".md"), self.markdown(complete))

    def markdown(self, complete: bool) -> str:
        m = self.meta
        lines = [f"# bench_gpu: {m['device_name']} ({m['device']}), torch {m['torch']}, size "
                 f"{'x'.join(map(str, m['size']))}, {m['threads']} threads" + ("" if complete else " (incomplete)"),
                 "", f"Peak memory: {m['peak_memory']}. Ratio: this row's time / the time of row `vs`.", "",
                 f"Field agreement with `refine` after 10 steps: the largest difference (voxels), the share of "
                 f"voxels differing by more than {m['atol_voxels']:g} voxels, the relative difference of the "
                 f"energy reached (dE); it agrees when that share is at most {100 * m['max_frac']:g}% and dE at "
                 f"most {ENERGY_RTOL:g}.", "",
                 "| row | ms | vs | ratio | peak MiB | max abs diff | % voxels > atol | dE | note |",
                 "|---|---|---|---|---|---|---|---|---|"]
        fmt = lambda v, f, scale=1: "" if v is None else format(scale * v, f)  # noqa: E731
        for r in self.rows:
            note = f"skipped: {r['skipped']}" if r["skipped"] else "DISAGREES" if r["agrees"] is False else ""
            lines.append(f"| {r['name']} | {fmt(r['ms'], '.1f')} | {r['vs'] or ''} | {fmt(r['ratio'], '.2f')} | "
                         f"{fmt(r['peak_mib'], '.0f')} | {fmt(r['max_abs_diff'], '.1e')} | "
                         f"{fmt(r['frac_over_atol'], '.3f', 100)} | {fmt(r['energy_rel_diff'], '.0e')} | {note} |")
        if self.ratios:
            lines += ["", "| ratio | value |", "|---|---|"]
            lines += [f"| {k} | {fmt(v, '.2f')} |" for k, v in self.ratios.items()]
        if self.goals:
            lines += ["", "| goal | measured | limit | status | note |", "|---|---|---|---|---|"]
            lines += [f"| {g['goal']}: {g['text']} | {fmt(g['value'], '.1f')} | {fmt(g['limit'], '.1f')} | "
                      f"{g['status']} | {g['note'] or ''} |" for g in self.goals]
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# The sections
# ---------------------------------------------------------------------------------------------------------------

def bench_lncc(rep, moving, fixed, disp, dev, repeats):
    """LNCC forward+backward against a fixed image, ours and the published dense conv3d path."""
    warped = warp(moving, disp + 0.5).detach().requires_grad_(True)
    for name, sim in ((LNCC_OURS, partial(lncc, validate=False)), (LNCC_PAPER, lncc_conv3d)):
        def fwd_bwd(sim=sim):
            warped.grad = None
            sim(fixed, warped).backward()
        rep.add("lncc", name, time_ms(fwd_bwd, dev, repeats), peak_mib(fwd_bwd, dev),
                vs=LNCC_OURS if name != LNCC_OURS else None)


def agreement(field, *, reference, energy, atol, max_frac) -> dict:
    """How far a loop's field is from `refine`'s: largest difference, share of voxels beyond atol, energy, verdict."""
    diff = (field - reference).abs().amax(1)  # per voxel, over the 3 components
    frac = float((diff > atol).double().mean())
    with torch.no_grad():
        e_ref = float(energy(reference))
        rel = abs(float(energy(field)) - e_ref) / max(abs(e_ref), 1e-12)
    return {"max_abs_diff": float(diff.max()), "frac_over_atol": frac, "energy_rel_diff": rel,
            "agrees": frac <= max_frac and rel <= ENERGY_RTOL}


def add_loop_row(rep, name, loop, check, dev, repeats, vs):
    """Run `loop` once and `check` its field (see `agreement`), then time it; skip with the reason if it fails."""
    try:
        agree = check(loop())  # this first call is the warm-up
        ms = time_ms(loop, dev, repeats, warmup=0)
    except Exception as e:  # a lever that cannot run here (e.g. torch.compile without a compiler) is skipped
        rep.add("loop", name, skipped=f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}")
        return
    rep.add("loop", name, ms, peak_mib(loop, dev), vs=vs, agreement=agree)


def bench_loop(rep, moving, fixed, disp, dev, repeats, atol, max_frac):
    """The 10-step inner loop: ours, the published path, and the levers; returns the check of a field against
    `refine`'s, for `bench_compile`."""
    field = refine(disp, moving, fixed)
    rep.meta["loop_noise_floor"] = float((refine(disp, moving, fixed) - field).abs().max())
    energy, plain = make_energy(moving, fixed), make_energy(moving, fixed, fixed_stats=False)
    check = partial(agreement, reference=field, energy=energy, atol=atol, max_frac=max_frac)
    ours = partial(refine, disp, moving, fixed)
    rep.add("loop", LOOP_OURS, time_ms(ours, dev, repeats), peak_mib(ours, dev))
    add_loop_row(rep, LOOP_PAPER, partial(published_loop, disp, moving, fixed), check, dev,
                 min(repeats, SLOW_REPEATS), vs=LOOP_OURS)
    levers = [(LEVER_NOSYNC, partial(lever_loop, energy, disp), LOOP_OURS),
              (LEVER_PLAIN, partial(lever_loop, plain, disp), LEVER_NOSYNC),
              (LEVER_UNFUSED, partial(lever_loop, energy, disp, fused=False), LEVER_NOSYNC)]
    for name, loop, vs in levers:
        add_loop_row(rep, name, loop, check, dev, repeats, vs)
    return check


def bench_compile(rep, moving, fixed, disp, dev, repeats, check, mode, skip_reason=None):
    """`torch.compile` of the energy inside the no-sync loop (compiling takes a while, so it runs last)."""
    if skip_reason:
        rep.add("loop", LEVER_COMPILE, skipped=skip_reason)
        return
    # Dynamo traces through transform's lru_cache (the cached grid is the same every call) and says so once.
    warnings.filterwarnings("ignore", message=".*functools.lru_cache.*", category=UserWarning)
    try:
        energy = torch.compile(make_energy(moving, fixed), mode=mode)
    except Exception as e:
        rep.add("loop", LEVER_COMPILE, skipped=f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}")
        return
    add_loop_row(rep, LEVER_COMPILE, partial(lever_loop, energy, disp), check, dev, repeats, vs=LEVER_NOSYNC)


def bench_model(rep, name, moving, fixed, dev, repeats):
    """Training steps of one model: unsupervised, OFG (ours), OFG with the published loop, OFG with bf16."""
    rows = step_names(name)
    try:
        models.check_size(name, moving.shape[2:])
    except ValueError as e:
        for row in rows.values():
            rep.add("train", row, skipped=str(e))
        return
    torch.manual_seed(0)
    net = models.build(name, tuple(moving.shape[2:])).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, amsgrad=True)  # as the published training and our Trainer
    steps = {"unsup": partial(train_step, net, opt, moving, fixed, "unsupervised"),
             "ofg": partial(train_step, net, opt, moving, fixed, "ofg"),
             "ofg_paper": partial(train_step, net, opt, moving, fixed, "ofg", inner=published_loop),
             "ofg_amp": partial(train_step, net, opt, moving, fixed, "ofg", amp=True)}
    vs = {"unsup": None, "ofg": rows["unsup"], "ofg_paper": rows["ofg"], "ofg_amp": rows["ofg"]}
    for key, step in steps.items():
        if key == "ofg_amp" and dev.type != "cuda":
            rep.add("train", rows[key], skipped="bf16 autocast of the network is used on GPUs only")
            continue
        reps = min(repeats, SLOW_REPEATS) if key == "ofg_paper" else repeats
        rep.add("train", rows[key], time_ms(step, dev, reps), peak_mib(step, dev), vs=vs[key])
    del net, opt, steps
    gc.collect()


def summarise(rep, model_names, judged):
    """Fill in the ratios (paper / ours, OFG / unsupervised) and the goals of the issue."""
    rep.ratios["LNCC fwd+bwd: published / ours"] = _ratio(rep, LNCC_PAPER, LNCC_OURS)
    rep.ratios["10-step loop: published / ours"] = _ratio(rep, LOOP_PAPER, LOOP_OURS)
    for m in model_names:
        r = step_names(m)
        rep.ratios[f"{m}: OFG step / unsupervised step"] = _ratio(rep, r["ofg"], r["unsup"])
        rep.ratios[f"{m}: published-loop OFG step / our OFG step"] = _ratio(rep, r["ofg_paper"], r["ofg"])
    vm, tm = step_names("voxelmorph-1"), step_names("transmorph")
    fast = [r for r in rep.rows if r["name"] in (LEVER_NOSYNC, LEVER_COMPILE) and r["ms"] and r["agrees"]]
    best = min(fast, key=lambda r: r["ms"], default=None)
    rep.goals = [_goal("a", "10-step inner loop at 160x192x224", rep.ms(LOOP_OURS), 30.0, "ms", judged,
                       best and f"fastest agreeing lever: {best['name']}, {best['ms']:.1f} ms"),
                 _goal("b", "VoxelMorph-1 OFG step (published unsupervised step on H100: 121 ms)",
                       rep.ms(vm["ofg"]), 121.0, "ms", judged, _bf16_note(rep, vm)),
                 _goal("c", "TransMorph OFG step", rep.ms(tm["ofg"]), 300.0, "ms", judged, _bf16_note(rep, tm))]
    for m, r in (("voxelmorph-1", vm), ("transmorph", tm)):
        rep.goals.append(_goal("d", f"{m}: peak memory of our OFG step <= published path's OFG step",
                               rep.peak(r["ofg"]), rep.peak(r["ofg_paper"]), "MiB", judged))


def _bf16_note(rep, rows):
    ms = rep.ms(rows["ofg_amp"])
    return f"with a bf16 network: {ms:.1f} ms" if ms else None


def _ratio(rep, num, den):
    a, b = rep.ms(num), rep.ms(den)
    return a / b if a and b else None


def _goal(key, text, value, limit, unit, judged, note=None):
    if not judged:
        status = NOT_JUDGED
    elif value is None or limit is None:
        status = "not measured"
    else:
        status = "met" if value <= limit else "not met"
    return {"goal": key, "text": text, "value": value, "limit": limit, "unit": unit, "status": status,
            "note": note or None}


# ---------------------------------------------------------------------------------------------------------------

def default_models(dev) -> list[str]:
    """The published models on CUDA; on CPU their `-tiny` variants where registered."""
    if dev.type == "cuda":
        return list(PUBLISHED_MODELS)
    return [f"{m}-tiny" if f"{m}-tiny" in models.names() else m for m in PUBLISHED_MODELS]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--size", type=int, nargs=3, default=list(FULL_SIZE), metavar=("D", "H", "W"))
    p.add_argument("--repeats", type=int, default=5, help="timed calls per row (median reported)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--models", nargs="*", default=None,
                   help="models for the training steps (default: voxelmorph-1 transmorph; -tiny on CPU)")
    p.add_argument("--compile", action="store_true", help="try torch.compile on CPU too (always tried on CUDA)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (e.g. to save device time)")
    p.add_argument("--compile-mode", default="default",
                   choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"])
    p.add_argument("--atol", type=float, default=1e-3, help="voxels: a field differs from refine's beyond this")
    p.add_argument("--max-frac", type=float, default=5e-3, help="share of voxels allowed beyond --atol (0.5%%)")
    p.add_argument("--out", type=Path, default=Path("results/bench_gpu.json"))
    p.add_argument("--summarise", type=Path, metavar="JSON",
                   help="measure nothing: compute the ratios and goals of a run cut short (its JSON) from the rows "
                        "it measured, and rewrite it and its Markdown table (still marked incomplete)")
    return p.parse_args(argv)


def resummarise(path: Path) -> "Report":
    """The ratios and goals of a saved (possibly incomplete) run, from its rows; a goal whose row is missing
    reads 'not measured'."""
    data = json.loads(Path(path).read_text())
    meta = {k: v for k, v in data.items() if k not in ("complete", "rows", "ratios", "goals")}
    rep = Report(meta, Path(path))
    rep.rows = data["rows"]
    summarise(rep, meta["models"], meta["goals_judged"])
    rep.save(complete=bool(data.get("complete")))
    return rep


def main(argv=None):
    args = parse_args(argv)
    if args.summarise:
        rep = resummarise(args.summarise)
        print(rep.markdown(bool(json.loads(args.summarise.read_text()).get("complete"))))
        return rep
    torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    size = tuple(args.size)
    model_names = args.models if args.models is not None else default_models(dev)
    judged = dev.type == "cuda" and size == FULL_SIZE
    meta = {"device": str(dev), "device_name": device_name(dev), "torch": torch.__version__,
            "cuda": torch.version.cuda, "size": list(size), "threads": torch.get_num_threads(),
            "repeats": args.repeats, "models": model_names, "atol_voxels": args.atol, "max_frac": args.max_frac,
            "peak_memory": ("CUDA max_memory_allocated during one call, absolute, MiB" if dev.type == "cuda"
                            else "not measured on CPU (None)"),
            "tf32": tf32_settings(dev), "goals_judged": judged}
    rep = Report(meta, args.out)
    print(f"device {dev} ({meta['device_name']}), torch {torch.__version__}, size {size}, "
          f"{meta['threads']} threads, {args.repeats} repeats, models {' '.join(model_names)}")
    moving, fixed, disp = make_inputs(size, dev, torch.float32)
    bench_lncc(rep, moving, fixed, disp, dev, args.repeats)
    check = bench_loop(rep, moving, fixed, disp, dev, args.repeats, args.atol, args.max_frac)
    print(f"(refine run twice differs by at most {rep.meta['loop_noise_floor']:.2e} voxels)")
    for name in model_names:
        bench_model(rep, name, moving, fixed, dev, args.repeats)
    skip = ("--no-compile" if args.no_compile else
            "tried on CUDA, or on CPU with --compile" if dev.type != "cuda" and not args.compile else None)
    bench_compile(rep, moving, fixed, disp, dev, args.repeats, check, args.compile_mode, skip)
    summarise(rep, model_names, judged)
    rep.save(complete=True)
    print("\n" + rep.markdown(True))
    print(f"\nwrote {args.out} and {args.out.with_suffix('.md')}")
    return rep


if __name__ == "__main__":
    main()
