"""Where OFG's pseudo labels come from and when a step takes them (notebooks 05 and 09).

Pseudo-label makers (the config's `optimizer_design`), one function each, registered with `@design("name")` as
`fn(guide, phi, moving, fixed, steps, lr) -> (label, logs)`; the trainer times them:
- `instance`: the paper's instance optimizer (`ofg_lib.optimizer.refine_with_history`) on a detached copy of
  the prediction (`instance_label`); `downsample`: the same at 1/`inner_downsample` resolution (Table 4);
- `optimizer-network` and `network`: the prediction of an optimizer network (Table 3), trained before each
  guided epoch by `train_persistent_optimizer_network` (the paper's design: a network of its own, trained over
  the whole training split on the optimizer's energy) or `train_epoch_copy` (this project's earlier, cheaper
  stand-in: a per-epoch copy of the main model, kept so the committed ablation tables name what they ran).

The guidance schedule (Fig. 6, Fig. 7): `may_guide` (can an epoch take OFG steps at all) and `step_strategy`
(the strategy of one step: warm-up, every k-th epoch, a coin below `ofg_prob`). `Guide` is what the trainer
holds: a run's design with its state (the optimizer network), asked for a label each step and told of each
epoch. A new design is one `@design` function here plus the config keys it reads (checked in `check_config`).
"""
from __future__ import annotations

import copy
import warnings
from typing import Callable

import torch

from . import fork_rng, models
from .data import collate
from .losses import unsupervised_loss
from .optimizer import refine_with_history
from .transform import warp

__all__ = ["Guide", "DESIGNS", "design", "instance_label", "network_label", "train_persistent_optimizer_network",
           "train_epoch_copy", "may_guide", "step_strategy", "design_of", "check_config", "warn_if_energy_rose",
           "ENERGY_RISE_TOL"]

ENERGY_RISE_TOL = 1e-4   # refinement "raised the energy" when it ends this much above where it started

DESIGNS: dict[str, Callable] = {}     # optimizer_design -> fn(guide, phi, moving, fixed, steps, lr)


def design(name: str):
    """Register a pseudo-label maker `fn(guide, phi, moving, fixed, steps, lr) -> (label, logs)` under `name`."""
    def add(fn):
        DESIGNS[name] = fn
        return fn
    return add


def check_config(cfg, need) -> None:
    """The guidance keys of a config (`need(ok, key, what)` raises `key must be what, got ...`)."""
    need(cfg.optimizer_design in DESIGNS, "optimizer_design", f"one of {', '.join(DESIGNS)}")
    need(cfg.optimizer_design == "instance" or cfg.strategy == "ofg", "strategy",
         "'ofg' when optimizer_design is not 'instance' (the designs are OFG's pseudo-label makers)")
    need(1 <= cfg.inner_downsample <= 8, "inner_downsample", "an integer from 1 to 8")
    need(cfg.network_passes >= 1, "network_passes", "at least 1")
    need(cfg.ofg_every >= 1, "ofg_every", "at least 1")
    need(0 <= cfg.ofg_prob <= 1, "ofg_prob", "in [0, 1]")
    need((cfg.ofg_every == 1 and cfg.ofg_prob == 1) or cfg.strategy == "ofg", "strategy",
         "'ofg' when ofg_every or ofg_prob schedule the guidance")
    need(cfg.warmup_epochs >= 0 and (cfg.warmup_epochs == 0 or cfg.warmup_strategy), "warmup_epochs",
         "0, or at least 1 with a warmup_strategy")


class Guide:
    """A run's pseudo-label maker and guidance schedule, as the trainer uses them.

    `label(phi, moving, fixed, steps, lr, current)` is a step's pseudo label (the design of `current`, the
    step's strategy); `before_epoch(...)` trains the optimizer network of the network designs before a guided
    epoch; `step_strategy` is the schedule. The paper's optimizer network (`optimizer-network`)
    has its own initialisation (seed + 7919, drawn without touching the global RNGs), weights and Adam, saved
    with the run (`state_dict`). The trainer times these calls; nothing here touches a clock.
    """

    def __init__(self, cfg, img_size=None, device="cpu"):
        self.cfg, self.net, self.opt = cfg, None, None
        if cfg.optimizer_design == "optimizer-network":
            with fork_rng():
                torch.manual_seed(cfg.seed + 7919)
                self.net = models.build(cfg.model, img_size).to(device)
            self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, amsgrad=True)

    def label(self, phi, moving, fixed, steps: int, lr: float, current: str = "ofg"):
        return DESIGNS[design_of(self.cfg, current)](self, phi, moving, fixed, steps, lr)

    def trains_before(self, epoch: int) -> bool:
        """Whether `before_epoch` trains a network before this epoch (a network design, a guided epoch)."""
        return self.cfg.optimizer_design in ("network", "optimizer-network") and may_guide(self.cfg, epoch)

    def before_epoch(self, epoch: int, lr: float, model, train_set, batches, device) -> None:
        """Train the optimizer network of a network design before a guided epoch (`batches()`: the epoch's)."""
        if not self.trains_before(epoch):
            return
        if self.cfg.optimizer_design == "optimizer-network":
            train_persistent_optimizer_network(self.net, self.opt, train_set, self.cfg, epoch, lr, device)
        elif self.cfg.optimizer_design == "network":
            self.net = train_epoch_copy(model, batches, self.cfg, lr, device)

    def step_strategy(self, epoch: int, coin: torch.Generator) -> str:
        return step_strategy(self.cfg, epoch, coin)

    def state_dict(self) -> dict:
        return ({"optimizer_network": self.net.state_dict(), "optimizer_network_adam": self.opt.state_dict()}
                if self.opt is not None else {})

    def load_state_dict(self, state: dict) -> None:
        if self.opt is not None:
            self.net.load_state_dict(state["optimizer_network"])
            self.opt.load_state_dict(state["optimizer_network_adam"])


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
    before = r.energies[0] if r.energies else float("nan")
    after = r.final_energy if r.final_energy is not None else float("nan")
    # the optimizer should lower its energy: `energy_rise_share` counts the refinements where it did not
    logs = {"energy_before": before, "energy_after": after, "energy_rise_share": float(after > before + ENERGY_RISE_TOL)}
    return r.disp.to(phi.dtype), logs


def warn_if_energy_rose(row: dict, epoch: int) -> None:
    """Warn when an epoch's log (`row`) says the instance optimizer raised its energy in some refinements."""
    if row.get("energy_rise_share", 0) > 0:
        warnings.warn(f"epoch {epoch + 1}: the instance optimizer raised its energy (by > {ENERGY_RISE_TOL:g}) in "
                      f"{100 * row['energy_rise_share']:.0f} % of its refinements (inner_lr {row['inner_lr']:g}): its "
                      f"pseudo labels are worse than the field it started from; lower inner_lr", RuntimeWarning,
                      stacklevel=3)


@torch.no_grad()
def network_label(net, phi, moving, fixed):
    """An optimizer network's prediction as the pseudo label (no energy log)."""
    return models.predict(net, moving, fixed).float().to(phi.dtype), {}


@design("instance")
def instance(guide, phi, moving, fixed, steps: int, lr: float):
    return instance_label(guide.cfg, phi, moving, fixed, steps, lr)


@design("downsample")
def downsample(guide, phi, moving, fixed, steps: int, lr: float):
    return instance_label(guide.cfg, phi, moving, fixed, steps, lr, "downsample")


@design("network")               # the earlier stand-in: a per-epoch copy of the main model (`train_epoch_copy`)
@design("optimizer-network")     # the paper's: its own persistent network (`train_persistent_optimizer_network`)
def optimizer_network(guide, phi, moving, fixed, steps: int, lr: float):
    """The optimizer network's prediction (trained by `Guide.before_epoch`) as the label."""
    return network_label(guide.net, phi, moving, fixed)


def train_persistent_optimizer_network(net, opt, train_set, cfg, epoch: int, lr: float, device):
    """The paper's network-based optimizer (Sec. 4.6, Table 3): a network of its own (same architecture,
    its own initialisation, weights and Adam, never re-copied from the main model), trained before each
    guided epoch for `network_passes` passes over the whole training split on the optimizer's energy,
    LNCC + inner_reg * grad_l2; its predictions are that epoch's pseudo labels. Checkpointed with the run."""
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


def train_epoch_copy(model, batches, cfg, lr: float, device):
    """The earlier network design (`optimizer_design: network`): a copy of the main model, trained for
    `network_passes` passes over this epoch's training pairs (`batches()`: a fresh iterator each pass) with the
    unsupervised loss (LNCC + unsup_reg * grad_l2, the unsupervised strategy's); its predictions are the
    epoch's pseudo labels. The main model is not touched."""
    helper = copy.deepcopy(model).train()
    opt = torch.optim.Adam(helper.parameters(), lr=lr, amsgrad=True)
    for _ in range(cfg.network_passes):
        for batch in batches():
            moving, fixed = batch["moving"].to(device), batch["fixed"].to(device)
            opt.zero_grad(set_to_none=True)
            phi = models.predict(helper, moving, fixed)
            unsupervised_loss(fixed, warp(moving, phi), phi, cfg.unsup_reg).backward()
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
