"""Training: a problem-agnostic Trainer, resumable, on CPU, one GPU or several (notebook 05).

    python -m ofg_lib.train --config configs/cpu_smoke.yaml --out results/smoke
    python -m ofg_lib.train --config configs/cpu_smoke.yaml --set strategy=unsupervised --out results/smoke2
    python -m ofg_lib.train ... --resume          # continue OUT's run (the config must be the same)
    python -m ofg_lib.train ... --resume --set epochs=20   # extend it (see RESUMABLE; never shorter than done)
    torchrun --nproc_per_node 2 -m ofg_lib.train --config ... --out ...            # DDP, one process per device
    summary = ofg_lib.train.run({"model": "voxelmorph-1-tiny", "epochs": 2}, out="results/run1")

The trainer knows loops, schedules, checkpoints and logs; how a step's loss is made lives in
`ofg_lib.strategies`. Run folders are never silently replaced, mixed or reused:
- a training run claims its folder for as long as it runs (`ofg_lib.runs.claim`): a second run into the same
  folder is refused with the holder's pid, host and command;
- training into a folder that holds a run needs `resume` (same config, except the keys in RESUMABLE, and never
  fewer epochs than done) or `overwrite`; `resume=True` on a folder without a run is an error, `resume="auto"`
  (what the experiment runners use) starts one there;
- `exact=True` (the runners: compare, study, sweep, converge) reuses or resumes a run only when its whole stored
  config equals the requested one, epochs included (only the keys in RUNTIME may differ); else it refuses,
  naming the folder and the differing keys.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from . import (amp_available, fork_rng, distributed_backend, models, peak_memory_mb, rank_device, replicas_agree,
               rng_state, seed_all, set_rng_state, synchronize)
from . import data as datasets
from . import guidance
from . import device as resolve_device
from .evaluate import evaluate, load_teacher
from .optimizer import cpu_kernels
from .paths import load_checkpoint
from .progress import progress_bar
from .schedule import plateaued, poly
from .config import CLI_FLAGS, RESUMABLE, RUNTIME, TrainConfig, config_differences, load_config  # noqa: F401
from .runs import RUN_FILES, RunFolder, claim  # noqa: F401 (RUN_FILES re-exported)
from .strategies import STRATEGIES, Step, strategy

__all__ = ["TrainConfig", "Trainer", "run", "STRATEGIES", "strategy", "load_config", "RESUMABLE",
           "RUNTIME", "RUN_FILES", "CLI_FLAGS", "plateaued"]


ENERGY_RISE_TOL = 1e-4   # refinement "raised the energy" when it ends this much above where it started


# ---------------------------------------------------------------------------------------------- helpers
def _finite_parameters(model) -> bool:
    """Whether every parameter is finite (one device synchronisation)."""
    return bool(torch.stack([torch.isfinite(p.detach()).all() for p in model.parameters()]).all())


# ---------------------------------------------------------------------------------------------- trainer
class Trainer:
    """Trains `cfg.model` with `cfg.strategy`; `fit()` runs (or resumes) all epochs and returns the summary."""

    def __init__(self, cfg: TrainConfig, out: str | Path | None = None, callbacks=(), overwrite: bool = False):
        if out is not None and not str(out).strip():
            raise ValueError("out is empty (an unset variable in --out \"$OUT\"?): give a run folder, or leave out "
                             "out (None) to train without writing files")
        self.cfg, self.out, self.callbacks = cfg, Path(out) if out is not None else None, list(callbacks)
        self.folder = RunFolder(self.out) if self.out is not None else None
        self.overwrite = overwrite
        self.rank, self.world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        self.distributed = self.world > 1
        if self.distributed and not torch.distributed.is_initialized():
            torch.distributed.init_process_group(distributed_backend(cfg.device))
        dev = resolve_device(cfg.device)
        if self.distributed:
            dev = rank_device(dev, int(os.environ.get("LOCAL_RANK", 0)))
        self.device = dev
        if self.distributed and cfg.plateau_tol is not None:
            raise ValueError("plateau_tol stops a run on rank 0's validation, which the other ranks do not see: "
                             "use it in single-process runs")
        self._threads_before = torch.get_num_threads()   # restored when fit() ends (one process runs many runs)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        seed_all(cfg.seed)
        self.train_set, self.val_set = datasets.from_config(cfg, "train"), datasets.from_config(cfg, "val")
        datasets.check_scored(self.val_set, cfg.val_pairs, cfg.dataset)
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
        self.pseudo_net = self.pseudo_opt = None
        if cfg.optimizer_design == "optimizer-network":
            with fork_rng():                             # its own initialisation; the global RNGs are left as they were
                torch.manual_seed(cfg.seed + 7919)
                self.pseudo_net = models.build(cfg.model, self.img_size).to(dev)
            self.pseudo_opt = torch.optim.Adam(self.pseudo_net.parameters(), lr=cfg.lr, amsgrad=True)
        if cfg.teacher:
            self.teacher = load_teacher(cfg.teacher, self.img_size, dev)
        self.epoch, self.step, self.updates, self.best_dice, self.history = 0, 0, 0, -1.0, []
        self.inner_lr = cfg.inner_lr
        self.timer = {"network": 0.0, "inner": 0.0, "data": 0.0}
        self.current = cfg.strategy          # the strategy of the step being taken (schedules switch it)
        self._claimed = False

    # -- files ------------------------------------------------------------------------------------------
    def state(self) -> dict:
        """The checkpoint: tensors and plain values only (it loads with weights_only=True)."""
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(), "epoch": self.epoch,
                "img_size": list(self.img_size), "step": self.step, "updates": self.updates,
                "best_dice": self.best_dice, "history": self.history,
                "config": json.loads(json.dumps(dataclasses.asdict(self.cfg))), "rng": rng_state(),
                **({"optimizer_network": self.pseudo_net.state_dict(),
                    "optimizer_network_adam": self.pseudo_opt.state_dict()} if self.pseudo_opt is not None else {})}

    def _claim(self):
        """Before the first file of this run: with overwrite, delete the old run's files (`runs.RunFolder.start`)."""
        if self._claimed or self.out is None or self.rank != 0:
            return
        self.folder.start(dataclasses.asdict(self.cfg), self.overwrite)
        self._claimed = True

    def save(self, name="checkpoint.pt"):
        if self.out is None or self.rank != 0:
            return
        if not _finite_parameters(self.model):
            raise FloatingPointError(f"refusing to write {self.out / name}: the weights are not finite")
        self._claim()
        self.folder.save(self.state(), name)

    def load(self, path, exact: bool = False):
        """Continue the run of checkpoint `path`: its config must match (module docstring), epochs never shrink."""
        state = load_checkpoint(path)
        diff = config_differences(state["config"], self.cfg, RUNTIME if exact else RESUMABLE)
        if diff and exact:
            raise ValueError(f"{Path(path).parent} holds a run of another config, so it cannot be reused for this "
                             f"one (a runner reuses only identical runs, epochs included). Differences (stored -> "
                             f"requested): {'; '.join(diff)}. Delete the folder, or use another output folder.")
        if diff:
            raise ValueError(f"{path} was trained with another config; resuming would mix two runs. Differences "
                             f"(stored -> requested): {'; '.join(diff)}. Keys that may change on resume: "
                             f"{', '.join(RESUMABLE)}. Use another --out, or --overwrite to start again.")
        if state["epoch"] > self.cfg.epochs:
            raise ValueError(f"{path} has trained {state['epoch']} epochs; resuming with epochs={self.cfg.epochs} "
                             f"would leave a run whose config, checkpoint and summary disagree. Ask for at least "
                             f"{state['epoch']} epochs, or train a new run (another --out, or --overwrite).")
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.epoch, self.step, self.best_dice = state["epoch"], state["step"], state["best_dice"]
        self.updates, self.history = state.get("updates", state["step"]), state["history"]
        set_rng_state(state["rng"])
        if self.pseudo_opt is not None:
            self.pseudo_net.load_state_dict(state["optimizer_network"])
            self.pseudo_opt.load_state_dict(state["optimizer_network_adam"])

    # -- one epoch --------------------------------------------------------------------------------------
    def _order(self, epoch):
        """Training items of an epoch: a permutation seeded by (seed, epoch), cycled; this rank's share."""
        g = torch.Generator().manual_seed(self.cfg.seed * 100003 + epoch)
        n = len(self.train_set)
        need = self.cfg.steps_per_epoch * self.cfg.batch_size * self.world
        idx = torch.cat([torch.randperm(n, generator=g) for _ in range(math.ceil(need / n))])[:need].tolist()
        return idx[self.rank::self.world]

    def batches(self, epoch):
        """The epoch's training batches, in training order (a DataLoader over this rank's share)."""
        order, bs = self._order(epoch), self.cfg.batch_size
        batches = [order[i * bs:(i + 1) * bs] for i in range(self.cfg.steps_per_epoch)]
        # its own generator: a DataLoader would otherwise draw its worker seed from the global torch RNG
        return torch.utils.data.DataLoader(self.train_set, batch_sampler=batches, collate_fn=datasets.collate,
                                           num_workers=self.cfg.num_workers,
                                           generator=torch.Generator().manual_seed(self.cfg.seed + epoch))

    def _augment(self, batch, g):
        if self.cfg.augment_mode == "none":
            return batch
        items = [{k: batch[k][b] for k in batch if k != "id"} for b in range(len(batch["id"]))]
        items = [{**datasets.flip_pair(it, g), "id": key} for it, key in zip(items, batch["id"])]
        return datasets.collate(items)

    def _refine(self, phi, moving, fixed, steps, lr):
        """The pseudo label of `phi` by this step's design (`ofg_lib.guidance`), timed; returns it and its logs."""
        synchronize(self.device)
        t0 = time.perf_counter()
        design = guidance.design_of(self.cfg, self.current)
        if design in ("network", "optimizer-network"):
            out = guidance.network_label(self.pseudo_net, phi, moving, fixed)
        else:
            out = guidance.instance_label(self.cfg, phi, moving, fixed, steps, lr, design)
        synchronize(self.device)
        self.timer["inner"] += time.perf_counter() - t0
        return out

    def _timed_inner(self, fn, *args):
        synchronize(self.device)
        t0 = time.perf_counter()
        out = fn(*args)
        synchronize(self.device)
        self.timer["inner"] += time.perf_counter() - t0
        return out

    def train_persistent_optimizer_network(self, epoch: int, lr: float):
        """`guidance.train_persistent_optimizer_network` on this run's optimizer network (Table 3), timed."""
        self._timed_inner(guidance.train_persistent_optimizer_network, self.pseudo_net, self.pseudo_opt,
                          self.train_set, self.cfg, epoch, lr, self.device, datasets.collate)

    def train_optimizer_network(self, epoch: int, lr: float):
        """`guidance.train_epoch_copy` (the earlier network design) on this epoch's pairs, timed."""
        def unsupervised_step(moving, fixed, ids, phi):
            return STRATEGIES["unsupervised"](Step(moving, fixed, ids, self.cfg, self.inner_lr, self._refine), phi)[0]
        self.pseudo_net = self._timed_inner(guidance.train_epoch_copy, self.model, lambda: self.batches(epoch),
                                            self.cfg, lr, self.device, unsupervised_step)

    def may_guide(self, epoch: int) -> bool:
        return guidance.may_guide(self.cfg, epoch)

    def step_strategy(self, epoch: int, coin: torch.Generator) -> str:
        return guidance.step_strategy(self.cfg, epoch, coin)

    def _update(self, moving, fixed, ids, lr, name=None):
        """One network update on one direction of a batch; returns the loss and the strategy's logs."""
        name = name or self.cfg.strategy
        self.current = name
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            phi = models.predict(self.net, moving, fixed)
        bad = int((~torch.isfinite(phi.detach())).sum())
        if bad:      # before any strategy sees it: one message for every strategy
            raise FloatingPointError(f"training diverged at step {self.step + 1} ({name}, lr {lr:g}): the network "
                                     f"predicted {bad} non-finite displacement value(s); lower lr")
        step = Step(moving, fixed, ids, self.cfg, self.inner_lr, self._refine, self.teacher, self.cache)
        loss, logs = STRATEGIES[name](step, phi.float())
        total = float(loss.detach())
        if not math.isfinite(total):
            raise FloatingPointError(f"training diverged at step {self.step + 1} ({name}, lr {lr:g}): "
                                     f"the loss is {total}; lower lr")
        loss.backward()
        self.opt.step()
        self.updates += 1
        if not _finite_parameters(self.model):
            where = f"; the last checkpoint, {self.out / 'checkpoint.pt'}, is untouched" if self.out else ""
            raise FloatingPointError(f"training diverged at step {self.step + 1} ({name}, lr {lr:g}): "
                                     f"the weights are not finite after the optimizer step{where}; lower lr")
        return total, logs

    def train_epoch(self):
        cfg, epoch = self.cfg, self.epoch
        lr = poly(cfg.lr, epoch, cfg.horizon) if cfg.lr_schedule == "poly" else cfg.lr
        self.inner_lr = poly(cfg.inner_lr, epoch, cfg.horizon) if cfg.inner_lr_schedule == "poly" else cfg.inner_lr
        for group in self.opt.param_groups:
            group["lr"] = lr
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(epoch)
        self.net.train()
        sums, counts, count, guided = {}, {}, 0, 0
        flips = torch.Generator().manual_seed(cfg.seed * 100003 + epoch + 7919)
        coin = torch.Generator().manual_seed(cfg.seed * 100003 + epoch + 15485863)
        self.timer = {"network": 0.0, "inner": 0.0, "data": 0.0}
        peak_memory_mb(self.device, reset=True)        # a new GPU peak per epoch (the CPU's is per process)
        if cfg.optimizer_design == "network" and self.may_guide(epoch):
            self.train_optimizer_network(epoch, lr)
        if cfg.optimizer_design == "optimizer-network" and self.may_guide(epoch):
            self.train_persistent_optimizer_network(epoch, lr)
        batches = iter(self.batches(epoch))
        bar = progress_bar(range(cfg.steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs} {cfg.strategy}",
                           disable=not cfg.progress or self.rank != 0, leave=False)
        for _ in bar:
            t_data = time.perf_counter()
            batch = self._augment(next(batches), flips)
            batch = datasets.as_batch(batch, self.device)
            directions = [(batch["moving"], batch["fixed"], batch["id"])]
            if self.two_way:          # the published OASIS training: a second full update, fixed -> moving
                directions.append((batch["fixed"], batch["moving"], [f"{k}:reverse" for k in batch["id"]]))
            synchronize(self.device)
            t0, inner0 = time.perf_counter(), self.timer["inner"]
            self.timer["data"] += t0 - t_data
            total, name = 0.0, self.step_strategy(epoch, coin)
            guided += name != "unsupervised"
            for moving, fixed, ids in directions:
                loss, logs = self._update(moving, fixed, ids, lr, name)
                if "energy_after" in logs:      # the optimizer should lower its energy; count when it did not
                    rose = logs["energy_after"] > logs["energy_before"] + ENERGY_RISE_TOL
                    logs = {**logs, "energy_rise_share": float(rose)}
                total += loss / len(directions)
                for k, v in logs.items():       # averaged over the steps that log them (schedules mix strategies)
                    sums[k] = sums.get(k, 0.0) + v / len(directions)
                    counts[k] = counts.get(k, 0) + 1 / len(directions)
            synchronize(self.device)
            self.timer["network"] += time.perf_counter() - t0 - (self.timer["inner"] - inner0)
            sums["loss"] = sums.get("loss", 0.0) + total
            count += 1
            self.step += 1
            if cfg.progress:
                bar.set_postfix(loss=f"{total:.4f}")
        counts["loss"] = count
        if sums.get("energy_rise_share", 0) > 0:
            share = sums["energy_rise_share"] / counts["energy_rise_share"]
            warnings.warn(f"epoch {epoch + 1}: the instance optimizer raised its energy (by > {ENERGY_RISE_TOL:g}) in "
                          f"{100 * share:.0f} % of its refinements (inner_lr {self.inner_lr:g}): its pseudo labels are "
                          f"worse than the field it started from; lower inner_lr", RuntimeWarning, stacklevel=2)
        return {"epoch": epoch + 1, "step": self.step, "updates": self.updates, "lr": lr, "inner_lr": self.inner_lr,
                "guided_share": guided / count, **{k: v / counts[k] for k, v in sums.items()},
                "sec_per_step_network": self.timer["network"] / count,
                "sec_per_step_inner": self.timer["inner"] / count, "sec_per_step_data": self.timer["data"] / count,
                "peak_memory_mb": peak_memory_mb(self.device)}

    def validate(self) -> dict:
        self.model.eval()
        r = evaluate(self.model, self.val_set, self.cfg.val_pairs, self.device, time_repeats=0, amp=self.amp,
                     absent=self.cfg.dice_absent)
        return {"val_dice": r["dice"], "val_dice_std": r["dice_std"], "fold_fraction": r["fold_fraction"],
                "fold_fraction_brain": r["fold_fraction_brain"], "sdlogj": r["sdlogj"], "epe": r["epe"],
                # the unsupervised loss on the validation pairs, whatever the strategy (Table 2's convergence loss)
                "val_unsup_loss": r["lncc"] + self.cfg.unsup_reg * r["grad_l2"]}

    # -- the loop ---------------------------------------------------------------------------------------
    def fit(self, resume: bool | str = False, exact: bool = False) -> dict:
        """Train all epochs. A folder holding a run needs `resume` (continue it) or `overwrite` (replace it).

        `resume=True` continues the folder's run and refuses a folder without one; `resume="auto"` continues
        one if there is one and starts one if not. `exact=True` continues (or reuses, when finished) only a run of
        the identical config (module docstring). The folder is claimed (`ofg_lib.runs`) until fit returns.
        """
        if resume not in (False, True, "auto"):
            raise ValueError(f"resume must be False, True or 'auto', got {resume!r}")
        try:
            if resume is True and (self.out is None or not (self.out / "checkpoint.pt").exists()):
                self._nothing_to_resume()            # before claiming: a mistyped --out is not created
            if self.out is None or self.rank != 0:
                return self._fit(resume, exact)
            with claim(self.out, "training run"):
                return self._fit(resume, exact)
        finally:
            torch.set_num_threads(self._threads_before)

    def _nothing_to_resume(self):
        where = f"{self.out} holds no run (no checkpoint.pt)" if self.out is not None else "no run folder given"
        raise FileNotFoundError(f"nothing to resume: {where}. Leave out --resume (resume) to start a new run")

    def _fit(self, resume, exact) -> dict:
        cfg = self.cfg
        existing = self.out is not None and (self.out / "checkpoint.pt").exists()
        if resume is True and not existing:        # checked again under the claim
            self._nothing_to_resume()
        if existing and resume:
            self.load(self.out / "checkpoint.pt", exact)
        elif existing and not self.overwrite:
            raise FileExistsError(f"{self.out} already holds a run (checkpoint.pt): pass --resume (resume=True) to "
                                  f"continue it, or --overwrite (overwrite=True) to replace it, or choose another "
                                  f"--out")
        if self.rank == 0 and not (existing and self.overwrite):
            self._claim()        # with overwrite, the old run stays until the new one writes its first checkpoint
        while self.epoch < cfg.epochs and not self.stopped():
            row = self.train_epoch()
            last = self.epoch + 1 == cfg.epochs
            if self.rank == 0 and ((self.epoch + 1) % cfg.val_every == 0 or last):
                row.update(self.validate())
                if row["val_dice"] > self.best_dice:
                    self.best_dice = row["val_dice"]
                    self.save("best.pt")
            self.epoch += 1
            self.history.append(row)
            if self.rank == 0 and self.out is not None:
                self.save()
                self.folder.write_log(self.history)
            for cb in self.callbacks:
                cb(self, row)
        # Ctrl-C (KeyboardInterrupt) is not caught: the checkpoint of the last finished epoch is already on disk,
        # and saving mid-epoch weights under that epoch's number would break bit-identical resumption.
        return self.summary()

    def stopped(self) -> bool:
        """Whether the plateau rule (`plateau_tol`) ends the run before `epochs`."""
        return self.cfg.plateau_tol is not None and plateaued(self.history, self.cfg.plateau_tol,
                                                              self.cfg.plateau_min_steps)

    def summary(self) -> dict:
        last_val = next((r for r in reversed(self.history) if "val_dice" in r), {})
        rows = self.history or [{}]
        s = {"strategy": self.cfg.strategy, "model": self.cfg.model, "dataset": self.cfg.dataset,
             "img_size": list(self.img_size), "epochs": self.epoch, "steps": self.step, "updates": self.updates,
             **{k: last_val.get(k) for k in ("val_dice", "val_dice_std", "fold_fraction", "fold_fraction_brain",
                                                "sdlogj", "epe")},
             "best_val_dice": self.best_dice if self.best_dice >= 0 else None,
             "stopped_early": self.epoch < self.cfg.epochs and self.stopped(),
             "sec_per_step_network": float(np.mean([r.get("sec_per_step_network", 0) for r in rows])),
             "sec_per_step_inner": float(np.mean([r.get("sec_per_step_inner", 0) for r in rows])),
             "sec_per_step_data": float(np.mean([r.get("sec_per_step_data", 0) for r in rows])),
             "seed": self.cfg.seed, "data_seed": self.cfg.data_seed, "device": str(self.device), "amp": self.amp,
             "world_size": self.world,
             "replicas_agree": replicas_agree(self.model, self.device, self.world) if self.distributed else None,
             "parameters": models.count_parameters(self.model),
             # the CPU convolution path this process used (models/layers.py); a resumed run may have mixed both,
             # which changes its numbers at float32 rounding only
             "cpu_channels_last": models.layers.cpu_channels_last() if self.device.type == "cpu" else None,
             # and whether its instance optimizer ran the fused CPU kernels (optimizer.cpu_kernels; same caveat)
             "cpu_kernels": cpu_kernels() if self.device.type == "cpu" else None}
        if self.out is not None and self.rank == 0:
            self._claim()
            self.folder.write_summary(s)
        return s


def run(config, out=None, resume: bool | str = False, callbacks=(), overwrite: bool = False,
        exact: bool = False) -> dict:
    """Train from a config (dict, YAML path or TrainConfig) and return the summary dict.

    A folder that already holds a run is refused unless `resume=True` (continue it: the config must equal the
    stored one except for RESUMABLE keys) or `overwrite=True` (replace it: the old run's RUN_FILES are deleted
    when the new run writes its first checkpoint, at the end of its first epoch; nothing else in the folder).
    `resume="auto"` resumes a run if the folder holds one and starts one if not; `exact=True` reuses only a run of
    the identical config (see the module docstring). The process's torch thread count is restored afterwards.
    """
    if isinstance(config, dict):
        out = out if out is not None else config.get("out")
        resume = resume or bool(config.get("resume", False))
        overwrite = overwrite or bool(config.get("overwrite", False))
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: continue the run or replace it")
    cfg = load_config(config)
    threads = torch.get_num_threads()
    try:
        return Trainer(cfg, out, callbacks, overwrite=overwrite).fit(resume=resume, exact=exact)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":     # `python -m ofg_lib.train ...`: the command line lives in ofg_lib.cli
    import runpy
    runpy.run_module("ofg_lib.cli", run_name="__main__", alter_sys=True)
