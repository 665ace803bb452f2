"""Training: OFG and its baselines behind one Trainer, resumable, on CPU, one GPU or several (notebook 05).

    python -m ofg_lib.train --config params/train_cpu.yaml --set strategy=unsupervised --out results/run1
    torchrun --nproc_per_node 2 -m ofg_lib.train --config ... --out ...            # DDP, one process per device
    summary = ofg_lib.train.run({"model": "voxelmorph-1-tiny", "epochs": 2, "out": "results/run1"})

A strategy turns one batch and the network's prediction into a loss; adding one is a function of a few
lines (see STRATEGIES). Everything else (data order, schedules, validation, checkpoints, logs) is shared.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import amp_available, distributed_backend, models, rank_device, rng_state, seed_all, set_rng_state, synchronize
from . import device as resolve_device
from .losses import grad_l2, lncc, ofg_loss
from .evaluate import evaluate
from .optimizer import refine_with_history
from .paths import atomic_save
from .progress import progress_bar
from .transform import warp

__all__ = ["TrainConfig", "Trainer", "run", "STRATEGIES", "strategy", "load_config", "main"]


@dataclass
class TrainConfig:
    """Every key of a run, with its default. YAML files and notebook parameters use the same names."""

    model: str = "voxelmorph-1"          # a name of ofg_lib.models.names()
    dataset: str = "embedded"            # embedded | ixi | oasis | lpba40
    data_root: str | None = None         # folder of the real dataset (or OFG_IXI / OFG_OASIS / OFG_LPBA40)
    ixi_subset: str | None = None        # "ofg": the OFG code's 200 / 20 sample of IXI (default: full split)
    img_size: tuple = (80, 96, 112)      # embedded cohort size; the real datasets set their own
    embedded_rms: float | None = None    # RMS of the cohort's deformations in voxels (default: realistic for the size)
    strategy: str = "ofg"                # ofg | unsupervised | self-training | optimized-self-training | mix
    epochs: int = 10
    steps_per_epoch: int = 50            # training pairs per epoch (the published code: the whole split)
    batch_size: int = 1
    lr: float = 1e-4                     # network Adam lr (the paper: 1e-4), poly(0.9) decay over epochs
    lr_schedule: str = "poly"            # poly | constant
    reg_weight: float = 0.02             # lambda of Eq. 3 (OFG loss); the unsupervised baseline uses unsup_reg
    unsup_reg: float = 1.0               # lambda of the unsupervised loss (the published baseline: 1)
    inner_steps: int = 10                # instance-optimizer steps per training step (the paper: 10)
    inner_lr: float = 0.1                # its Adam lr (the paper: 0.1)
    inner_lr_schedule: str = "poly"      # poly (as published: decays with the network's) | constant
    inner_reg: float = 1.0               # weight of grad_l2 in the optimizer's energy
    inner_optimizer: str = "adam"        # adam | sgd
    alpha: float = 1.0                   # mix (Eq. 7): weight of L_sim
    beta: float = 1.0                    # mix (Eq. 7): weight of L_opt (MSE to phi_opt)
    teacher: str | None = None           # checkpoint of a trained model (self-training strategies)
    teacher_steps: int = 100             # optimized self-training: optimizer steps on the teacher's field
    two_way: bool | None = None          # also train moving<->fixed swapped (default: True for oasis)
    val_pairs: int = 10                  # validation pairs (at most the split's size)
    val_every: int = 1                   # validate every n epochs (and after the last)
    seed: int = 0
    device: str = "auto"                 # auto | cpu | cuda | cuda:N
    amp: bool = False                    # bf16 autocast of the network on CUDA (logged; ignored on CPU)
    num_workers: int = 0                 # DataLoader workers for validation
    threads: int = 0                     # torch CPU threads (0: torch's default)
    progress: bool = True                # tqdm bars (quiet anyway under CI)

    def __post_init__(self):
        self.img_size = tuple(int(s) for s in self.img_size)
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.model not in models.names():
            raise ValueError(f"model must be one of {', '.join(models.names())}, got {self.model!r}")
        if self.dataset not in ("embedded", "ixi", "oasis", "lpba40"):
            raise ValueError(f"dataset must be embedded, ixi, oasis or lpba40, got {self.dataset!r}")
        for key in ("lr_schedule", "inner_lr_schedule"):
            if getattr(self, key) not in ("poly", "constant"):
                raise ValueError(f"{key} must be 'poly' or 'constant', got {getattr(self, key)!r}")
        for key in ("epochs", "steps_per_epoch", "batch_size", "val_pairs", "val_every"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"{key} must be at least 1, got {getattr(self, key)!r}")
        if self.strategy in ("self-training", "optimized-self-training") and not self.teacher:
            raise ValueError(f"strategy {self.strategy!r} needs teacher: the checkpoint of a trained model")


def load_config(config=None, overrides=None) -> TrainConfig:
    """A TrainConfig from a dict, a YAML file or a TrainConfig, plus `key=value` overrides; unknown keys are errors."""
    import yaml
    if isinstance(config, TrainConfig):
        values = dataclasses.asdict(config)
    elif config is None:
        values = {}
    elif isinstance(config, (str, Path)):
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: config file not found")
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: a config is a flat YAML mapping of key: value")
    else:
        values = dict(config)
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"--set takes key=value, got {item!r}")
        key, value = item.split("=", 1)
        values[key.strip()] = yaml.safe_load(value)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known - {"out", "resume"})
    if unknown:
        raise ValueError(f"unknown config key(s): {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
    return TrainConfig(**{k: v for k, v in values.items() if k in known})


# ---------------------------------------------------------------------------------------------- strategies
# A strategy: fn(trainer, moving, fixed, phi_pred, ids) -> (loss, {name: float}). Register with @strategy.
STRATEGIES: dict[str, Callable] = {}


def strategy(name: str):
    def add(fn):
        STRATEGIES[name] = fn
        return fn
    return add


def _similarity(fixed, moving, phi):
    return lncc(fixed, warp(moving, phi), validate=False)


def _pseudo_truth(t, moving, fixed, phi_start, steps, lr):
    """Refine a detached field with the instance optimizer; returns phi_opt and the energy log."""
    synchronize(t.device)
    t0 = time.perf_counter()
    r = refine_with_history(phi_start.detach().float(), moving.float(), fixed.float(), steps=steps, lr=lr,
                            reg_weight=t.cfg.inner_reg, optimizer=t.cfg.inner_optimizer, final_energy=True)
    synchronize(t.device)
    t.timer["inner"] += time.perf_counter() - t0
    logs = {"energy_before": r.energies[0] if r.energies else float("nan"), "energy_after": r.final_energy}
    return r.disp.to(phi_start.dtype), logs


@strategy("unsupervised")
def _unsupervised(t, moving, fixed, phi, ids):
    sim, reg = _similarity(fixed, moving, phi), grad_l2(phi)
    return sim + t.cfg.unsup_reg * reg, {"sim": float(sim.detach()), "reg": float(reg.detach())}


@strategy("ofg")
def _ofg(t, moving, fixed, phi, ids):
    phi_opt, logs = _pseudo_truth(t, moving, fixed, phi, t.cfg.inner_steps, t.inner_lr)
    loss = ofg_loss(phi, phi_opt, t.cfg.reg_weight)
    return loss, {**logs, "mse": float(F.mse_loss(phi.detach(), phi_opt)), "reg": float(grad_l2(phi.detach()))}


@strategy("mix")
def _mix(t, moving, fixed, phi, ids):
    """Eq. 7: alpha * L_sim + lambda * L_reg + beta * L_opt (the loss-composition ablation)."""
    cfg, loss, logs = t.cfg, 0.0, {}
    if cfg.alpha:
        sim = _similarity(fixed, moving, phi)
        loss, logs["sim"] = loss + cfg.alpha * sim, float(sim.detach())
    if cfg.beta:
        phi_opt, e = _pseudo_truth(t, moving, fixed, phi, cfg.inner_steps, t.inner_lr)
        mse = F.mse_loss(phi, phi_opt)
        loss, logs = loss + cfg.beta * mse, {**logs, **e, "mse": float(mse.detach())}
    reg = grad_l2(phi)
    return loss + cfg.reg_weight * reg, {**logs, "reg": float(reg.detach())}


@strategy("self-training")
def _self_training(t, moving, fixed, phi, ids):
    with torch.no_grad():
        target = t.teacher(torch.cat([moving, fixed], 1)).float()
    return ofg_loss(phi, target, t.cfg.reg_weight), {"mse": float(F.mse_loss(phi.detach(), target))}


@strategy("optimized-self-training")
def _optimized_self_training(t, moving, fixed, phi, ids):
    targets = []
    for b, key in enumerate(ids):
        if key not in t.cache:               # computed once per pair, kept for the whole run
            with torch.no_grad():
                start = t.teacher(torch.cat([moving[b:b + 1], fixed[b:b + 1]], 1)).float()
            t.cache[key] = _pseudo_truth(t, moving[b:b + 1], fixed[b:b + 1], start, t.cfg.teacher_steps,
                                         t.cfg.inner_lr)[0].cpu()
        targets.append(t.cache[key].to(phi.device))
    target = torch.cat(targets)
    return ofg_loss(phi, target, t.cfg.reg_weight), {"mse": float(F.mse_loss(phi.detach(), target))}


# ---------------------------------------------------------------------------------------------- data
def _datasets(cfg: TrainConfig):
    from . import data
    if cfg.dataset == "embedded":
        kw = {"seed": cfg.seed, "rms": cfg.embedded_rms}
        return data.Embedded("train", cfg.img_size, **kw), data.Embedded("val", cfg.img_size, **kw)
    if cfg.dataset == "ixi":
        return data.IXI(cfg.data_root, "train", cfg.ixi_subset), data.IXI(cfg.data_root, "val", cfg.ixi_subset)
    cls = {"oasis": data.OASIS, "lpba40": data.LPBA40}[cfg.dataset]
    return cls(cfg.data_root, "train"), cls(cfg.data_root, "val")


def _stack(items, dev):
    batch = {k: torch.stack([it[k] for it in items]).to(dev) for k in items[0] if k != "id"}
    batch["id"] = [it["id"] for it in items]
    return batch


def _poly(base, epoch, epochs):
    return round(base * (1 - epoch / epochs) ** 0.9, 8)


# ---------------------------------------------------------------------------------------------- trainer
class Trainer:
    """Trains `cfg.model` with `cfg.strategy`; `fit()` runs (or resumes) all epochs and returns the summary."""

    def __init__(self, cfg: TrainConfig, out: str | Path | None = None, callbacks=()):
        self.cfg, self.out, self.callbacks = cfg, Path(out) if out else None, list(callbacks)
        self.rank, self.world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        self.distributed = self.world > 1
        if self.distributed and not torch.distributed.is_initialized():
            torch.distributed.init_process_group(distributed_backend(cfg.device))
        dev = resolve_device(cfg.device)
        if self.distributed:
            dev = rank_device(dev, int(os.environ.get("LOCAL_RANK", 0)))
        self.device = dev
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        seed_all(cfg.seed)
        self.train_set, self.val_set = _datasets(cfg)
        self.img_size = tuple(self.val_set[0]["fixed"].shape[1:])
        self.model = models.build(cfg.model, self.img_size).to(dev)
        self.net = self.model
        if self.distributed:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[dev.index] if dev.index is not None else None)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, amsgrad=True)
        self.amp = bool(cfg.amp and amp_available(dev))
        self.two_way = cfg.two_way if cfg.two_way is not None else cfg.dataset == "oasis"
        self.teacher, self.cache = None, {}
        if cfg.teacher:
            self.teacher = self._load_teacher(cfg.teacher)
        self.epoch, self.step, self.best_dice, self.history = 0, 0, -1.0, []
        self.inner_lr = cfg.inner_lr
        self.timer = {"network": 0.0, "inner": 0.0, "data": 0.0}

    def _load_teacher(self, path):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: teacher checkpoint not found")
        state = torch.load(path, map_location="cpu", weights_only=False)
        teacher = models.build(state["config"]["model"], self.img_size).to(self.device).eval()
        teacher.load_state_dict(state["model"])
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher

    # -- checkpoints ------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(), "epoch": self.epoch,
                "img_size": list(self.img_size),
                "step": self.step, "best_dice": self.best_dice, "history": self.history,
                "config": dataclasses.asdict(self.cfg), "rng": rng_state()}

    def save(self, name="checkpoint.pt"):
        if self.out is not None and self.rank == 0:
            atomic_save(self.state(), self.out / name)

    def load(self, path):
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state["config"]["model"] != self.cfg.model or state["config"]["strategy"] != self.cfg.strategy:
            raise ValueError(f"{path} is a {state['config']['model']} / {state['config']['strategy']} run, "
                             f"not {self.cfg.model} / {self.cfg.strategy}")
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.epoch, self.step, self.best_dice = state["epoch"], state["step"], state["best_dice"]
        self.history = state["history"]
        set_rng_state(state["rng"])

    # -- one epoch --------------------------------------------------------------------------------------
    def _order(self, epoch):
        """Training items of an epoch: a permutation seeded by (seed, epoch), cycled; this rank's share."""
        g = torch.Generator().manual_seed(self.cfg.seed * 100003 + epoch)
        n = len(self.train_set)
        need = self.cfg.steps_per_epoch * self.cfg.batch_size * self.world
        idx = torch.cat([torch.randperm(n, generator=g) for _ in range(math.ceil(need / n))])[:need].tolist()
        return idx[self.rank::self.world]

    def train_epoch(self):
        cfg, epoch = self.cfg, self.epoch
        lr = _poly(cfg.lr, epoch, cfg.epochs) if cfg.lr_schedule == "poly" else cfg.lr
        self.inner_lr = _poly(cfg.inner_lr, epoch, cfg.epochs) if cfg.inner_lr_schedule == "poly" else cfg.inner_lr
        for group in self.opt.param_groups:
            group["lr"] = lr
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(epoch)
        self.net.train()
        order, sums, count = self._order(epoch), {}, 0
        self.timer = {"network": 0.0, "inner": 0.0, "data": 0.0}
        bar = progress_bar(range(cfg.steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs} {cfg.strategy}",
                           disable=not cfg.progress or self.rank != 0, leave=False)
        for i in bar:
            t_data = time.perf_counter()
            batch = _stack([self.train_set[j] for j in order[i * cfg.batch_size:(i + 1) * cfg.batch_size]], self.device)
            pairs = [(batch["moving"], batch["fixed"], batch["id"])]
            if self.two_way:
                pairs.append((batch["fixed"], batch["moving"], [f"{k}:reverse" for k in batch["id"]]))
            synchronize(self.device)
            t0, inner0 = time.perf_counter(), self.timer["inner"]
            self.timer["data"] += t0 - t_data
            self.opt.zero_grad(set_to_none=True)
            total = 0.0
            for moving, fixed, ids in pairs:
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                    phi = self.net(torch.cat([moving, fixed], 1))
                loss, logs = STRATEGIES[cfg.strategy](self, moving, fixed, phi.float(), ids)
                (loss / len(pairs)).backward()
                total += float(loss.detach()) / len(pairs)
                for k, v in logs.items():
                    sums[k] = sums.get(k, 0.0) + v / len(pairs)
            if not math.isfinite(total):
                raise FloatingPointError(f"training diverged at step {self.step + 1} ({cfg.strategy}, lr {lr:g}): "
                                         f"the loss is {total}; lower lr")
            self.opt.step()
            synchronize(self.device)
            self.timer["network"] += time.perf_counter() - t0 - (self.timer["inner"] - inner0)
            sums["loss"] = sums.get("loss", 0.0) + total
            count += 1
            self.step += 1
            if cfg.progress:
                bar.set_postfix(loss=f"{total:.4f}")
        row = {"epoch": epoch + 1, "step": self.step, "lr": lr, "inner_lr": self.inner_lr,
               **{k: v / count for k, v in sums.items()},
               "sec_per_step_network": self.timer["network"] / count, "sec_per_step_inner": self.timer["inner"] / count,
               "sec_per_step_data": self.timer["data"] / count}
        return row

    def validate(self) -> dict:
        self.model.eval()
        r = evaluate(self.model, self.val_set, self.cfg.val_pairs, self.device, time_repeats=0, amp=self.amp)
        return {"val_dice": r["dice"], "val_dice_std": r["dice_std"], "fold_fraction": r["fold_fraction"],
                "sdlogj": r["sdlogj"], "epe": r["epe"]}

    # -- the loop ---------------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict:
        cfg = self.cfg
        if resume and self.out is not None and (self.out / "checkpoint.pt").exists():
            self.load(self.out / "checkpoint.pt")
        if self.out is not None and self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(dataclasses.asdict(self.cfg), indent=1))
        try:
            while self.epoch < cfg.epochs:
                row = self.train_epoch()
                last = self.epoch + 1 == cfg.epochs
                if self.rank == 0 and ((self.epoch + 1) % cfg.val_every == 0 or last):
                    row.update(self.validate())
                    if row["val_dice"] > self.best_dice:
                        self.best_dice = row["val_dice"]
                        self.save("best.pt")
                self.epoch += 1
                self.history.append(row)
                if self.rank == 0:
                    self._write_log()
                    self.save()
                for cb in self.callbacks:
                    cb(self, row)
        except KeyboardInterrupt:
            self.save()                        # resumable from the last finished epoch
            raise
        return self.summary()

    def replicas_agree(self) -> bool | None:
        """Under DDP, whether every process holds the same weights (None when not distributed)."""
        if not self.distributed:
            return None
        flat = torch.cat([p.detach().double().flatten() for p in self.model.parameters()])
        mine = torch.stack([flat.sum(), flat.square().sum()]).to(self.device)
        every = [torch.zeros_like(mine) for _ in range(self.world)]
        torch.distributed.all_gather(every, mine)
        return all(torch.equal(every[0], e) for e in every)

    def _write_log(self):
        if self.out is None:
            return
        keys = list(dict.fromkeys(k for row in self.history for k in row))
        tmp = self.out / ".log.csv.partial"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(self.history)
        os.replace(tmp, self.out / "log.csv")

    def summary(self) -> dict:
        last_val = next((r for r in reversed(self.history) if "val_dice" in r), {})
        rows = self.history or [{}]
        s = {"strategy": self.cfg.strategy, "model": self.cfg.model, "dataset": self.cfg.dataset,
             "img_size": list(self.img_size), "epochs": self.epoch, "steps": self.step,
             "val_dice": last_val.get("val_dice"), "val_dice_std": last_val.get("val_dice_std"),
             "fold_fraction": last_val.get("fold_fraction"), "epe": last_val.get("epe"),
             "best_val_dice": self.best_dice if self.best_dice >= 0 else None,
             "sec_per_step_network": float(np.mean([r.get("sec_per_step_network", 0) for r in rows])),
             "sec_per_step_inner": float(np.mean([r.get("sec_per_step_inner", 0) for r in rows])),
             "sec_per_step_data": float(np.mean([r.get("sec_per_step_data", 0) for r in rows])),
             "seed": self.cfg.seed, "device": str(self.device), "amp": self.amp, "world_size": self.world,
             "replicas_agree": self.replicas_agree(), "parameters": models.count_parameters(self.model)}
        if self.out is not None and self.rank == 0:
            tmp = self.out / ".summary.json.partial"
            tmp.write_text(json.dumps(s, indent=1))
            os.replace(tmp, self.out / "summary.json")
        return s


def run(config, out=None, resume: bool = False, callbacks=()) -> dict:
    """Train from a config (dict, YAML path or TrainConfig) and return the summary dict."""
    if isinstance(config, dict):
        out = out if out is not None else config.get("out")
        resume = resume or bool(config.get("resume", False))
    cfg = load_config(config)
    return Trainer(cfg, out, callbacks).fit(resume=resume)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m ofg_lib.train", description="Train a registration network.")
    p.add_argument("--config", help="flat YAML mapping of TrainConfig keys")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--out", required=True, help="run folder: checkpoint.pt, log.csv, summary.json")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.set)
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    summary = Trainer(cfg, args.out).fit(resume=args.resume)
    if int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps(summary, indent=1))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
