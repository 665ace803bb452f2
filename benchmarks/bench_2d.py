"""How long a 2-D run takes: seconds per training step of each strategy, and the projected time of long runs.

    python benchmarks/bench_2d.py                          # VoxelMorph-1 at 160x192 (the paper's in-plane size)
    python benchmarks/bench_2d.py --size 96 112 --steps 300

Trains each strategy for `--steps` steps (after `--warmup` untimed steps) with the trainer itself (data loading
from the cohort's cache, the network, OFG's ten inner Adam steps, everything but validation) and prints the median seconds per step of
each epoch of 50 steps, and what 10,000 / 30,000 steps would take at that rate. Same process, same threads,
strategies one after the other: the ratio between them is the measured one.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from ofg_lib.train import Trainer, load_config


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="voxelmorph-1")
    p.add_argument("--size", type=int, nargs=2, default=[160, 192])
    p.add_argument("--steps", type=int, default=200, help="timed steps per strategy (multiples of 50)")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--strategies", nargs="+", default=["unsupervised", "ofg"])
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{args.model} at {args.size[0]}x{args.size[1]}, torch threads {torch.get_num_threads()}")
    rates = {}
    for strategy in args.strategies:
        epochs = max(1, args.steps // 50)
        cfg = load_config({"model": args.model, "img_size": args.size, "strategy": strategy, "epochs": epochs + 1,
                           "steps_per_epoch": 50, "val_pairs": 1, "val_every": 10 ** 6, "progress": False,
                           "lr": 1e-3})
        t = Trainer.from_config(cfg)
        t.train_set.build(progress=False)       # the cohort is generated once per machine, then read from data/
        t.cfg.steps_per_epoch = args.warmup      # an untimed first epoch: data cache, allocator, threads
        t.train_epoch()
        t.epoch += 1
        t.cfg.steps_per_epoch = 50
        per_epoch = []
        for _ in range(epochs):
            t0 = time.perf_counter()
            t.train_epoch()
            t.epoch += 1
            per_epoch.append((time.perf_counter() - t0) / 50)
        rates[strategy] = statistics.median(per_epoch)
    base = rates[args.strategies[0]]
    print(f"{'strategy':>14s} {'s/step':>8s} {'ratio':>6s} {'10k steps':>10s} {'30k steps':>10s}")
    for strategy, r in rates.items():
        print(f"{strategy:>14s} {r:8.4f} {r / base:6.2f} {r * 1e4 / 60:8.1f} m {r * 3e4 / 60:8.1f} m")


if __name__ == "__main__":
    main()
