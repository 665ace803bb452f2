"""Time LNCC forward+backward and the 10-step inner loop against the peers, in one run, same inputs and threads.

    python benchmarks/bench_lncc.py                      # 80x96x112, 2 threads, float32, CPU
    python benchmarks/bench_lncc.py --size 160 192 224 --device cuda

Compared: this project (`ofg_lib`), the paper's code path (five dense window^3 conv3d sums, as in the published
`NCC_vxm`), neurite's `NCC` (what voxelmorph 0.3.4 points to) and MONAI's `LocalNormalizedCrossCorrelationLoss`
(rectangular kernel) with MONAI's `Warp`. Peers come from the `dev` extra. Every loop runs the same 10 Adam
(amsgrad) steps on lncc + grad_l2 from the same start; only the similarity (and, for MONAI, the warp) changes.
Peak memory of each loop is measured in a fresh subprocess (CPU: growth of max RSS; CUDA: max allocated).
Prints medians and the ratio of each peer's time to ours.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from ofg_lib import device as resolve_device
from ofg_lib import synchronize as sync
from ofg_lib.losses import grad_l2, lncc
from ofg_lib.metrics import time_ms
from ofg_lib.optimizer import refine
from ofg_lib.transform import warp

sys.path.insert(0, str(Path(__file__).resolve().parent))  # published.py, when this file is imported by path
from published import lncc_conv3d  # noqa: E402


def peers():
    """name -> (similarity(fixed, warped), warp(moving, disp)); peers that are not installed are skipped."""
    out = {"ofg_lib": (lambda f, w: lncc(f, w, validate=False), warp), "paper conv3d": (lncc_conv3d, warp)}
    try:
        import neurite.nn.modules as nem
        ncc = nem.NCC(window_size=9, eps=1e-5)
        out["neurite NCC"] = (lambda f, w: -ncc(f, w).mean(), warp)
    except ImportError:
        print("(neurite not installed: pip install -e '.[dev]')")
    try:
        warnings.filterwarnings("ignore", message=".*Using PyTorch native grid_sample.*")
        from monai.losses import LocalNormalizedCrossCorrelationLoss
        from monai.networks.blocks import Warp
        m_lncc = LocalNormalizedCrossCorrelationLoss(spatial_dims=3, kernel_size=9, kernel_type="rectangular")
        m_warp = Warp(mode="bilinear", padding_mode="zeros")
        out["MONAI LNCC+Warp"] = (lambda f, w: m_lncc(w, f), lambda m, d: m_warp(m, d))
    except ImportError:
        print("(monai not installed: pip install -e '.[dev]')")
    return out


def peer_loop(similarity, warp_fn, disp, moving, fixed, steps=10, lr=0.1, reg_weight=1.0):
    """The inner loop with a pluggable similarity: same optimizer and regulariser as `refine`."""
    phi = disp.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([phi], lr=lr, amsgrad=True)
    for _ in range(steps):
        opt.zero_grad()
        energy = similarity(fixed, warp_fn(moving, phi)) + reg_weight * grad_l2(phi)
        energy.backward()
        opt.step()
    return phi.detach()


def make_inputs(size, dev, dtype, seed=0):
    """A smooth random 'moving' image and a 'fixed' one made from it by a known smooth shift."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 1, *[max(2, s // 8) for s in size], generator=g)
    moving = F.interpolate(coarse, size=size, mode="trilinear", align_corners=True)
    moving = moving + 0.05 * torch.rand(1, 1, *size, generator=g)
    shift = F.interpolate(torch.randn(1, 3, 4, 4, 4, generator=g), size=size, mode="trilinear",
                          align_corners=True) * 2.0
    fixed = warp(moving, shift)
    disp = torch.zeros(1, 3, *size)
    return [t.to(dev, dtype) for t in (moving, fixed, disp)]


def timeit(fn, dev, repeats, warmup=1):
    return time_ms(fn, dev, repeats, warmup)


class RssSampler(threading.Thread):
    """Samples this process's resident set size every half millisecond (torch ops release the GIL)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.base = self.peak = self.rss()
        self.running = True

    def rss(self):
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def run(self):
        while self.running:
            self.peak = max(self.peak, self.rss())
            time.sleep(0.0005)

    def stop(self):
        self.running = False
        self.join()
        return max(self.peak, self.rss()) - self.base


def memory_worker(args):
    """Run one loop once in this fresh process and print its peak memory growth in MiB."""
    dev = resolve_device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.set_num_threads(args.threads)
    moving, fixed, disp = make_inputs(tuple(args.size), dev, dtype)
    sim, warp_fn = peers()[args.memory_worker]
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    else:
        sampler = RssSampler()
        sampler.start()
    if args.memory_worker == "ofg_lib":
        refine(disp, moving, fixed)
    else:
        peer_loop(sim, warp_fn, disp, moving, fixed)
    sync(dev)
    grown = torch.cuda.max_memory_allocated(dev) - base if dev.type == "cuda" else sampler.stop()
    print(json.dumps({"peak_mib": grown / 2**20}))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, nargs=3, default=[80, 96, 112])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--dense-loop", action="store_true", help="also time the 10-step loop on dense conv3d (slow)")
    p.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_worker:
        return memory_worker(args)

    torch.set_num_threads(args.threads)
    dev, dtype = resolve_device(args.device), getattr(torch, args.dtype)
    moving, fixed, disp = make_inputs(tuple(args.size), dev, dtype)
    print(f"device {dev}, {args.threads} threads, {args.dtype}, size {tuple(args.size)}, torch {torch.__version__}")
    table = {}
    for name, (sim, warp_fn) in peers().items():
        warped = warp_fn(moving, disp + 0.5).detach().requires_grad_(True)

        def fwd_bwd():
            warped.grad = None
            sim(fixed, warped).backward()

        reps = 3 if name == "paper conv3d" and dev.type == "cpu" else args.repeats
        table[name] = {"lncc_ms": timeit(fwd_bwd, dev, reps)}
        if name == "ofg_lib":
            loop = lambda: refine(disp, moving, fixed)  # noqa: E731
        elif name == "paper conv3d" and not args.dense_loop and dev.type == "cpu":
            continue
        else:
            loop = lambda s=sim, w=warp_fn: peer_loop(s, w, disp, moving, fixed)  # noqa: E731
        table[name]["loop_ms"] = timeit(loop, dev, max(3, args.repeats // 2))
        cmd = [sys.executable, __file__, "--memory-worker", name, "--size", *map(str, args.size),
               "--threads", str(args.threads), "--dtype", args.dtype, "--device", args.device]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        table[name]["peak_mib"] = json.loads(res.stdout.strip().splitlines()[-1])["peak_mib"]

    ours = table["ofg_lib"]
    print(f"\n{'implementation':<18}{'LNCC fwd+bwd ms':>17}{'ratio':>8}{'10-step loop ms':>17}{'ratio':>8}"
          f"{'loop peak MiB':>15}")
    for name, row in table.items():
        loop = row.get("loop_ms")
        print(f"{name:<18}{row['lncc_ms']:>17.1f}{row['lncc_ms'] / ours['lncc_ms']:>7.1f}x"
              + (f"{loop:>17.0f}{loop / ours['loop_ms']:>7.2f}x{row['peak_mib']:>15.0f}" if loop else
                 f"{'(--dense-loop)':>17}{'':>8}{'':>15}"))
    others = {k: v for k, v in table.items() if k not in ("ofg_lib", "paper conv3d")}
    if others:
        fastest = min(others, key=lambda k: others[k]["lncc_ms"])
        r_lncc = others[fastest]["lncc_ms"] / ours["lncc_ms"]
        r_paper = table["paper conv3d"]["lncc_ms"] / ours["lncc_ms"]
        r_loop = others[fastest]["loop_ms"] / ours["loop_ms"]
        mem_ok = ours["peak_mib"] <= others[fastest]["peak_mib"]
        print(f"\nfastest peer: {fastest}")
        print(f"target LNCC >= 5x fastest peer: {r_lncc:.1f}x {'met' if r_lncc >= 5 else 'NOT met'}")
        print(f"target LNCC >= 50x paper conv3d: {r_paper:.0f}x {'met' if r_paper >= 50 else 'NOT met'}")
        print(f"target loop >= 3x loop on fastest peer's LNCC: {r_loop:.2f}x {'met' if r_loop >= 3 else 'NOT met'}")
        print(f"target loop peak memory <= fastest peer's: {ours['peak_mib']:.0f} vs "
              f"{others[fastest]['peak_mib']:.0f} MiB {'met' if mem_ok else 'NOT met'}")


if __name__ == "__main__":
    main()
