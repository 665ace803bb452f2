"""Training: the loop of a resumable Trainer, on CPU, one GPU or several (notebook 05).

    python -m ofg_lib.train --config configs/cpu_smoke.yaml --out results/smoke
    python -m ofg_lib.train --config configs/cpu_smoke.yaml --set strategy=unsupervised --out results/smoke2
    python -m ofg_lib.train ... --resume          # continue OUT's run (the config must be the same)
    python -m ofg_lib.train ... --resume --set epochs=20   # extend it (see RESUMABLE; never shorter than done)
    torchrun --nproc_per_node 2 -m ofg_lib.train --config ... --out ...            # DDP, one process per device
    summary = ofg_lib.train.run({"model": "voxelmorph-1-tiny", "epochs": 2}, out="results/run1")

The trainer knows loops, schedules, checkpoints and logs and builds nothing (`ofg_lib.build` does); a step's
loss is made in `ofg_lib.strategies`, its pseudo label in `ofg_lib.guidance`. Run folders are never silently
replaced, mixed or reused: a run claims its folder while it runs (`ofg_lib.runs.claim`); a folder holding a run
needs `resume` (the same config but for RESUMABLE keys, never fewer epochs than done; `resume="auto"`, the
runners', starts one where there is none) or `overwrite`; `exact=True` (the runners) reuses or resumes only a
run of the identical config, epochs included (RUNTIME keys aside), else refuses naming the differing keys.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time

import numpy as np
import torch

from . import amp_available, models, peak_memory_mb, rng_state, set_rng_state, synchronize
from . import data as datasets
from .build import describe, trainer_parts
from .config import CLI_FLAGS, RESUMABLE, RUNTIME, TrainConfig, check_resume, load_config  # noqa: F401
from .evaluate import evaluate
from .files import load_checkpoint
from .guidance import warn_if_energy_rose
from .progress import progress_bar
from .runs import RUN_FILES, claim, nothing_to_resume  # noqa: F401 (RUN_FILES re-exported)
from .schedule import learning_rates, plateaued
from .strategies import STRATEGIES, Step, strategy

__all__ = ["TrainConfig", "Trainer", "run", "STRATEGIES", "strategy", "load_config", "RESUMABLE",
           "RUNTIME", "RUN_FILES", "CLI_FLAGS", "plateaued"]


def _finite_parameters(model) -> bool:
    """Whether every parameter is finite (one device synchronisation)."""
    return bool(torch.stack([torch.isfinite(p.detach()).all() for p in model.parameters()]).all())


class Trainer:
    """Trains `cfg.model` with `cfg.strategy`; `fit()` runs (or resumes) all epochs and returns the summary."""

    def __init__(self, cfg: TrainConfig, model, train_set, val_set, guide, device, img_size, net=None,
                 teacher=None, folder=None, callbacks=(), overwrite: bool = False, rank: int = 0, world: int = 1,
                 threads_before: int | None = None):
        """The parts come built (`ofg_lib.build.trainer_parts`; `Trainer.from_config` builds and passes them)."""
        self.cfg, self.model, self.net = cfg, model, net if net is not None else model
        self.train_set, self.val_set, self.guide, self.device, self.teacher = train_set, val_set, guide, device, teacher
        self.folder, self.out, self._claimed = folder, folder.path if folder is not None else None, False
        self.callbacks, self.overwrite, self.rank, self.world = list(callbacks), overwrite, rank, world
        self._threads_before = threads_before or torch.get_num_threads()   # restored when fit() ends
        self.img_size = tuple(img_size)        # the data's (a real dataset brings its own), stored in checkpoints
        self.opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, amsgrad=True)
        self.amp = bool(cfg.amp and amp_available(device))
        self.two_way = cfg.two_way if cfg.two_way is not None else cfg.dataset == "oasis"
        self.cache, self.epoch, self.step, self.updates, self.best_dice, self.history = {}, 0, 0, 0, -1.0, []
        self.inner_lr, self.timer = cfg.inner_lr, {"network": 0.0, "inner": 0.0, "data": 0.0}
        self.current = cfg.strategy          # the strategy of the step being taken (schedules switch it)

    @classmethod
    def from_config(cls, config, out=None, callbacks=(), overwrite: bool = False) -> "Trainer":
        """A trainer of `config` (dict, YAML path or TrainConfig) with its parts built, writing into `out`."""
        return cls(**trainer_parts(config, out), callbacks=callbacks, overwrite=overwrite)

    # -- files ------------------------------------------------------------------------------------------
    def state(self) -> dict:
        """The checkpoint: tensors and plain values only (it loads with weights_only=True)."""
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(), "epoch": self.epoch,
                "img_size": list(self.img_size), "step": self.step, "updates": self.updates,
                "best_dice": self.best_dice, "history": self.history,
                "config": json.loads(json.dumps(dataclasses.asdict(self.cfg))), "rng": rng_state(),
                **self.guide.state_dict()}

    def _claim(self):
        """Before the first file of this run: with overwrite, delete the old run's files (`runs.RunFolder.start`)."""
        if self._claimed or self.out is None or self.rank != 0:
            return
        self.folder.start(dataclasses.asdict(self.cfg), self.overwrite)
        self._claimed = True

    def save(self, which: str = "last"):
        if self.out is None or self.rank != 0:
            return
        if not _finite_parameters(self.model):
            raise FloatingPointError(f"refusing to write {self.folder.checkpoint(which)}: the weights are not finite")
        self._claim()
        self.folder.save(self.state(), which)

    def load(self, path, exact: bool = False):
        """Continue the run of checkpoint `path`: its config must match (module docstring), epochs never shrink."""
        state = load_checkpoint(path)
        check_resume(state["config"], state["epoch"], self.cfg, path, exact)
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.epoch, self.step, self.best_dice = state["epoch"], state["step"], state["best_dice"]
        self.updates, self.history = state.get("updates", state["step"]), state["history"]
        set_rng_state(state["rng"])
        self.guide.load_state_dict(state)

    # -- one epoch --------------------------------------------------------------------------------------
    def batches(self, epoch):
        """The epoch's training batches, in training order (`ofg_lib.data.epoch_batches`, this rank's share)."""
        return datasets.epoch_batches(self.train_set, self.cfg, epoch, self.rank, self.world)

    def _timed_inner(self, fn, *args):
        """`fn(*args)` with its time counted as the inner optimizer's (the pseudo labels' cost)."""
        synchronize(self.device)
        t0 = time.perf_counter()
        out = fn(*args)
        synchronize(self.device)
        self.timer["inner"] += time.perf_counter() - t0
        return out

    def _refine(self, phi, moving, fixed, steps, lr):
        """This step's pseudo label of `phi` (`guidance.Guide.label`), timed; returns it and its logs."""
        return self._timed_inner(self.guide.label, phi, moving, fixed, steps, lr, self.current)

    def _update(self, moving, fixed, ids, lr, name=None):
        """One network update on one direction of a batch; returns the loss and the strategy's logs."""
        name = name or self.cfg.strategy
        self.current = name
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            phi = models.predict(self.net, moving, fixed)
        def diverged(what):
            return FloatingPointError(f"training diverged at step {self.step + 1} ({name}, lr {lr:g}): {what}; lower lr")
        bad = int((~torch.isfinite(phi.detach())).sum())
        if bad:      # before any strategy sees it: one message for every strategy
            raise diverged(f"the network predicted {bad} non-finite displacement value(s)")
        step = Step(moving, fixed, ids, self.cfg, self.inner_lr, self._refine, self.teacher, self.cache)
        loss, logs = STRATEGIES[name](step, phi.float())
        total = float(loss.detach())
        if not math.isfinite(total):
            raise diverged(f"the loss is {total}")
        loss.backward()
        self.opt.step()
        self.updates += 1
        if not _finite_parameters(self.model):
            where = f"; the last checkpoint, {self.folder.checkpoint()}, is untouched" if self.out else ""
            raise diverged(f"the weights are not finite after the optimizer step{where}")
        return total, logs

    def train_epoch(self):
        cfg, epoch = self.cfg, self.epoch
        lr, self.inner_lr = learning_rates(cfg, epoch)
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
        if self.guide.trains_before(epoch):
            self._timed_inner(self.guide.before_epoch, epoch, lr, self.model, self.train_set,
                              lambda: self.batches(epoch), self.device)
        batches = iter(self.batches(epoch))
        bar = progress_bar(range(cfg.steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs} {cfg.strategy}",
                           disable=not cfg.progress or self.rank != 0, leave=False)
        for _ in bar:
            t_data = time.perf_counter()
            batch = datasets.as_batch(datasets.augment_batch(next(batches), flips, cfg.augment_mode), self.device)
            directions = [(batch["moving"], batch["fixed"], batch["id"])]
            if self.two_way:          # the published OASIS training: a second full update, fixed -> moving
                directions.append((batch["fixed"], batch["moving"], [f"{k}:reverse" for k in batch["id"]]))
            synchronize(self.device)
            t0, inner0 = time.perf_counter(), self.timer["inner"]
            self.timer["data"] += t0 - t_data
            total, name = 0.0, self.guide.step_strategy(epoch, coin)
            guided += name != "unsupervised"
            for moving, fixed, ids in directions:
                loss, logs = self._update(moving, fixed, ids, lr, name)
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
        row = {"epoch": epoch + 1, "step": self.step, "updates": self.updates, "lr": lr, "inner_lr": self.inner_lr,
               "guided_share": guided / count, **{k: v / counts[k] for k, v in sums.items()},
               **{f"sec_per_step_{k}": t / count for k, t in self.timer.items()},
               "peak_memory_mb": peak_memory_mb(self.device)}
        warn_if_energy_rose(row, epoch)
        return row

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
        """Train all epochs (resume: False, True or "auto"; exact: the runners' rule; see the module docstring).
        The folder is claimed (`ofg_lib.runs.claim`) until fit returns."""
        if resume not in (False, True, "auto"):
            raise ValueError(f"resume must be False, True or 'auto', got {resume!r}")
        try:
            if resume is True and (self.folder is None or not self.folder.holds_run()):
                nothing_to_resume(self.out)            # before claiming: a mistyped --out is not created
            if self.out is None or self.rank != 0:
                return self._fit(resume, exact)
            with claim(self.out, "training run"):
                return self._fit(resume, exact)
        finally:
            torch.set_num_threads(self._threads_before)

    def _fit(self, resume, exact) -> dict:
        cfg = self.cfg
        if self.folder is not None and self.folder.continues(resume, self.overwrite):     # checked under the claim
            self.load(self.folder.checkpoint(), exact)
        if self.rank == 0 and not (self.folder is not None and self.folder.holds_run() and self.overwrite):
            self._claim()        # with overwrite, the old run stays until the new one writes its first checkpoint
        while self.epoch < cfg.epochs and not self.stopped():
            row = self.train_epoch()
            last = self.epoch + 1 == cfg.epochs
            if self.rank == 0 and ((self.epoch + 1) % cfg.val_every == 0 or last):
                row.update(self.validate())
                if row["val_dice"] > self.best_dice:
                    self.best_dice = row["val_dice"]
                    self.save("best")
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
             **{k: float(np.mean([r.get(k, 0) for r in rows]))
                for k in ("sec_per_step_network", "sec_per_step_inner", "sec_per_step_data")},
             "seed": self.cfg.seed, "data_seed": self.cfg.data_seed,
             **describe(self.model, self.device, self.world, self.amp)}
        if self.out is not None and self.rank == 0:
            self._claim()
            self.folder.write_summary(s)
        return s


def run(config, out=None, resume: bool | str = False, callbacks=(), overwrite: bool = False,
        exact: bool = False) -> dict:
    """Train from a config (dict, YAML path or TrainConfig) into `out` and return the summary dict.

    `resume` / `exact` as in `Trainer.fit`; `overwrite=True` replaces a folder's run (its RUN_FILES go when the new
    run writes its first checkpoint, nothing else in the folder). The process's torch thread count is restored.
    """
    if isinstance(config, dict):
        out = out if out is not None else config.get("out")
        resume = resume or bool(config.get("resume", False))
        overwrite = overwrite or bool(config.get("overwrite", False))
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: continue the run or replace it")
    threads = torch.get_num_threads()
    try:
        return Trainer.from_config(config, out, callbacks, overwrite=overwrite).fit(resume=resume, exact=exact)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":     # `python -m ofg_lib.train ...`: the command line lives in ofg_lib.cli
    import runpy
    runpy.run_module("ofg_lib.cli", run_name="__main__", alter_sys=True)
