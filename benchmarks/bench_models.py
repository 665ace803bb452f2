"""Time one forward and backward pass of each published model, batch 1, and report peak memory.

    python benchmarks/bench_models.py                                  # CPU, 160x192x224 (minutes)
    python benchmarks/bench_models.py --device cuda --repeats 5        # GPU: synchronised timings, max allocated
    python benchmarks/bench_models.py --models voxelmorph-1 --size 80 96 112

Each model runs in a fresh subprocess so that peak memory (CPU: max RSS growth; CUDA: max allocated) is its own.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch

from ofg_lib import device as resolve_device
from ofg_lib import models
from ofg_lib.metrics import time_ms

PUBLISHED = ["voxelmorph-1", "voxelmorph-2", "vit-v-net", "transmorph"]


def worker(args):
    dev = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = models.build(args.worker, tuple(args.size)).to(dev)
    x = torch.rand(1, 2, *args.size, device=dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def step():
        model.zero_grad(set_to_none=True)
        model(x).square().mean().backward()

    ms = time_ms(step, dev, repeats=args.repeats, warmup=1)
    peak = (torch.cuda.max_memory_allocated(dev) if dev.type == "cuda"
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024)
    print(json.dumps({"model": args.worker, "params": models.count_parameters(model), "ms": ms,
                      "peak_gib": peak / 2**30}))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, nargs=3, default=[160, 192, 224])
    p.add_argument("--models", nargs="*", default=PUBLISHED)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    print(f"forward+backward, batch 1, size {tuple(args.size)}, device {resolve_device(args.device)}, "
          f"torch {torch.__version__}")
    print(f"{'model':<16}{'parameters':>12}{'ms':>12}{'peak GiB':>10}")
    for name in args.models:
        cmd = [sys.executable, __file__, "--worker", name, "--size", *map(str, args.size), "--device", args.device,
               "--threads", str(args.threads), "--repeats", str(args.repeats)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            print(f"{name:<16} failed: {res.stderr.strip().splitlines()[-1] if res.stderr else res.returncode}")
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"{name:<16}{r['params']:>12,}{r['ms']:>12.0f}{r['peak_gib']:>10.2f}")


if __name__ == "__main__":
    main()
