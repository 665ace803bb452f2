"""Training strategies: how one batch and the network's prediction become a loss (notebooks 05, 07, 09).

A strategy is a function `fn(step, phi) -> (loss, logs)` registered with `@strategy("name")`. `step` is a
`Step`: the batch (`moving`, `fixed`, `ids`), the run's config (read only the weights you need), this epoch's
inner learning rate, and `step.refine(phi, moving, fixed, steps, lr)`, which runs the instance optimizer on a
detached copy of `phi` and returns `(phi_opt, logs)`; the trainer times it, so strategies never touch a clock.
`phi` is the prediction in float32, (B, 3, D, H, W), voxels, attached to the network's graph. `logs` maps names
to floats, averaged per epoch into the run's log. Nothing here knows about epochs, files or devices.

The weights, each named for the loss it belongs to:
- `ofg_reg`: lambda of Eq. 3, the smoothness weight of the network's OFG loss (0.02);
- `unsup_reg`: the smoothness weight of the unsupervised loss (1.0, the published baseline);
- `inner_reg`: the smoothness weight inside the instance optimizer's energy (1.0), used by `step.refine`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from . import models
from .losses import grad_l2, lncc, ofg_loss, unsupervised_loss
from .transform import warp

__all__ = ["Step", "STRATEGIES", "strategy", "check_config"]

STRATEGIES: dict[str, Callable] = {}


@dataclass
class Step:
    """What a strategy sees of one training step (see the module docstring)."""

    moving: torch.Tensor
    fixed: torch.Tensor
    ids: list
    cfg: object                                   # the run's TrainConfig
    inner_lr: float                               # this epoch's inner lr (poly-decayed when configured)
    refine: Callable                              # refine(phi, moving, fixed, steps, lr) -> (phi_opt, logs)
    teacher: Callable | None = None               # frozen network of the self-training strategies
    cache: dict = field(default_factory=dict)     # kept for the whole run (optimized self-training's targets)


def check_config(cfg, need) -> None:
    """The strategy keys of a config and the weights of their losses (`need(ok, key, what)` raises)."""
    need(cfg.strategy in STRATEGIES, "strategy", f"one of {', '.join(STRATEGIES)}")
    need(cfg.warmup_strategy in (None, *STRATEGIES), "warmup_strategy", f"null or one of {', '.join(STRATEGIES)}")
    for key in ("ofg_reg", "unsup_reg", "alpha", "beta"):
        need(math.isfinite(getattr(cfg, key)) and getattr(cfg, key) >= 0, key, "a finite number >= 0")
    need(cfg.teacher_steps >= 0, "teacher_steps", "at least 0")
    for key in ("strategy", "warmup_strategy"):
        if getattr(cfg, key) in ("self-training", "optimized-self-training") and not cfg.teacher:
            raise ValueError(f"{key} {getattr(cfg, key)!r} needs teacher: the checkpoint of a trained model")


def strategy(name: str):
    """Register `fn(step, phi) -> (loss, logs)` under `name` (the config's `strategy`)."""
    def add(fn):
        STRATEGIES[name] = fn
        return fn
    return add


@strategy("unsupervised")
def unsupervised(step: Step, phi):
    """The published baseline: LNCC(fixed, moving o phi) + unsup_reg * grad_l2(phi)."""
    loss, sim, reg = unsupervised_loss(step.fixed, warp(step.moving, phi), phi, step.cfg.unsup_reg, terms=True)
    return loss, {"sim": float(sim.detach()), "reg": float(reg.detach())}


@strategy("ofg")
def ofg(step: Step, phi):
    """Eq. 3: refine a detached copy (inner_steps steps; 0 means no refinement), then MSE to it + ofg_reg * reg."""
    phi_opt, logs = step.refine(phi, step.moving, step.fixed, step.cfg.inner_steps, step.inner_lr)
    loss = ofg_loss(phi, phi_opt, step.cfg.ofg_reg)
    return loss, {**logs, "mse": float(F.mse_loss(phi.detach(), phi_opt)), "reg": float(grad_l2(phi.detach()))}


@strategy("mix")
def mix(step: Step, phi):
    """Eq. 7: alpha * L_sim + ofg_reg * L_reg + beta * L_opt (the loss-composition ablation)."""
    cfg, loss, logs = step.cfg, 0.0, {}
    if cfg.alpha:
        sim = lncc(step.fixed, warp(step.moving, phi), validate=False)
        loss, logs["sim"] = loss + cfg.alpha * sim, float(sim.detach())
    if cfg.beta:
        phi_opt, e = step.refine(phi, step.moving, step.fixed, cfg.inner_steps, step.inner_lr)
        mse = F.mse_loss(phi, phi_opt)
        loss, logs = loss + cfg.beta * mse, {**logs, **e, "mse": float(mse.detach())}
    reg = grad_l2(phi)
    return loss + cfg.ofg_reg * reg, {**logs, "reg": float(reg.detach())}


@strategy("self-training")
def self_training(step: Step, phi):
    """A frozen teacher's prediction as a fixed target: MSE + ofg_reg * reg."""
    with torch.no_grad():
        target = models.predict(step.teacher, step.moving, step.fixed).float()
    return ofg_loss(phi, target, step.cfg.ofg_reg), {"mse": float(F.mse_loss(phi.detach(), target))}


@strategy("optimized-self-training")
def optimized_self_training(step: Step, phi):
    """The teacher's prediction refined once for teacher_steps steps, cached per pair, as a fixed target."""
    targets = []
    for b, key in enumerate(step.ids):
        if key not in step.cache:               # computed once per pair, kept for the whole run
            moving, fixed = step.moving[b:b + 1], step.fixed[b:b + 1]
            with torch.no_grad():
                start = models.predict(step.teacher, moving, fixed).float()
            step.cache[key] = step.refine(start, moving, fixed, step.cfg.teacher_steps, step.cfg.inner_lr)[0].cpu()
        targets.append(step.cache[key].to(phi.device))
    target = torch.cat(targets)
    return ofg_loss(phi, target, step.cfg.ofg_reg), {"mse": float(F.mse_loss(phi.detach(), target))}
