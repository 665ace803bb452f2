"""Where OFG's pseudo labels come from and when a step takes them (notebooks 05 and 09).

Pseudo-label makers, one function each (the trainer times them and passes its state in):
- `instance_label`: the paper's instance optimizer (`ofg_lib.optimizer.refine_with_history`) on a detached
  copy of the prediction; with `optimizer_design: downsample` at 1/`inner_downsample` resolution (Table 4);
- `network_label`: the prediction of an optimizer network (Table 3), trained by
  `train_persistent_optimizer_network` (the paper's design: a network of its own, trained before each guided
  epoch over the whole training split on the optimizer's energy) or `train_epoch_copy` (this project's earlier,
  cheaper stand-in: a per-epoch copy of the main model, kept so the committed ablation tables name what they ran).

The guidance schedule (Fig. 6, Fig. 7): `may_guide` (can an epoch take OFG steps at all) and `step_strategy`
(the strategy of one step: warm-up, every k-th epoch, a coin below `ofg_prob`). A new design is one function
here plus its config key (`ofg_lib.config.DESIGNS`).
"""
from __future__ import annotations

import copy

import torch

from . import models
from .optimizer import refine_with_history

__all__ = ["instance_label", "network_label", "train_persistent_optimizer_network", "train_epoch_copy",
           "may_guide", "step_strategy", "design_of"]


def design_of(cfg, current: str) -> str:
    """The pseudo-label design of a step: `optimizer_design` for OFG steps; the other strategies that refine
    (mix, optimized self-training) always use the instance optimizer."""
    return cfg.optimizer_design if current == "ofg" else "instance"


def instance_label(cfg, phi, moving, fixed, steps: int, lr: float, design: str = "instance"):
    """The instance optimizer's pseudo label for `phi` (detached, float32) and its energy log."""
    r = refine_with_history(phi.detach().float(), moving.float(), fixed.float(), inner_steps=steps,
                            inner_lr=lr, inner_reg=cfg.inner_reg, optimizer=cfg.inner_optimizer, final_energy=True,
                            downsample=cfg.inner_downsample if design == "downsample" else 1,
                            coarse_energy=cfg.inner_coarse_energy)
    logs = {"energy_before": r.energies[0] if r.energies else float("nan"),
            "energy_after": r.final_energy if r.final_energy is not None else float("nan")}
    return r.disp.to(phi.dtype), logs


@torch.no_grad()
def network_label(net, phi, moving, fixed):
    """An optimizer network's prediction as the pseudo label (no energy log)."""
    return models.predict(net, moving, fixed).float().to(phi.dtype), {}


def train_persistent_optimizer_network(net, opt, train_set, cfg, epoch: int, lr: float, device, collate):
    """The paper's network-based optimizer (Sec. 4.6, Table 3): a network of its own (same architecture,
    its own initialisation, weights and Adam, never re-copied from the main model), trained before each
    guided epoch for `network_passes` passes over the whole training split on the optimizer's energy,
    LNCC + inner_reg * grad_l2; its predictions are that epoch's pseudo labels. Checkpointed with the run."""
    from .losses import unsupervised_loss
    from .transform import warp
    for group in opt.param_groups:
        group["lr"] = lr
    net.train()
    n, bs = len(train_set), cfg.batch_size
    for p in range(cfg.network_passes):
        g = torch.Generator().manual_seed(cfg.seed * 100003 + epoch * 101 + p + 424243)
        order = torch.randperm(n, generator=g).tolist()
        for i in range(0, n, bs):
            batch = collate([train_set[j] for j in order[i:i + bs]])
            moving, fixed = batch["moving"].to(device), batch["fixed"].to(device)
            opt.zero_grad(set_to_none=True)
            phi = models.predict(net, moving, fixed)
            unsupervised_loss(fixed, warp(moving, phi), phi, cfg.inner_reg).backward()
            opt.step()
    net.eval()
    return net


def train_epoch_copy(model, batches, cfg, lr: float, device, unsupervised_step):
    """The earlier network design (`optimizer_design: network`): a copy of the main model, trained for
    `network_passes` passes over this epoch's training pairs (`batches()`: a fresh iterator each pass) with the
    unsupervised loss (`unsupervised_step(moving, fixed, ids, phi)` -> loss); its predictions are the epoch's
    pseudo labels. The main model is not touched."""
    helper = copy.deepcopy(model).train()
    opt = torch.optim.Adam(helper.parameters(), lr=lr, amsgrad=True)
    for _ in range(cfg.network_passes):
        for batch in batches():
            moving, fixed = batch["moving"].to(device), batch["fixed"].to(device)
            opt.zero_grad(set_to_none=True)
            phi = models.predict(helper, moving, fixed)
            unsupervised_step(moving, fixed, batch["id"], phi).backward()
            opt.step()
    return helper.eval()


def may_guide(cfg, epoch: int) -> bool:
    """Whether an epoch can take OFG steps under the schedule (after the warm-up, on an `ofg_every` epoch)."""
    return cfg.strategy == "ofg" and epoch >= cfg.warmup_epochs and (epoch + 1) % cfg.ofg_every == 0


def step_strategy(cfg, epoch: int, coin: torch.Generator) -> str:
    """The strategy of one training step under the guidance schedule (warm-up, ofg_every, ofg_prob).

    Warm-up: `warmup_strategy` for epochs 0 .. warmup_epochs - 1. Epoch-interval guidance: OFG on epochs
    k, 2k, ... (1-based), unsupervised on the others. Threshold-based guidance: OFG when a uniform draw from
    `coin` (seeded by seed and epoch: resumable) falls below `ofg_prob`, as the paper describes it.
    """
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_strategy
    if cfg.strategy == "ofg":
        if (epoch + 1) % cfg.ofg_every:
            return "unsupervised"
        if cfg.ofg_prob < 1 and not float(torch.rand((), generator=coin)) < cfg.ofg_prob:
            return "unsupervised"
    return cfg.strategy
