"""Which way each loss pushes the network: the gradients its parameters receive from the unsupervised loss and
from OFG's loss (Eq. 3) on one pair, their cosine, and a trainer callback that logs it per epoch (notebook 07,
section 2). Gradient analysis, apart from the landscapes (`ofg_lib.landscape`) that draw the losses around the
trained weights.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from . import models
from .losses import grad_l2, unsupervised_loss
from .optimizer import refine
from .transform import warp

__all__ = ["network_gradients", "cosine", "CosineLogger"]


def network_gradients(model, pair, inner_steps: int = 10, inner_lr: float = 0.1, inner_reg: float = 1.0,
                      ofg_reg: float = 0.02, unsup_reg: float = 1.0, inner_optimizer: str = "adam") -> dict:
    """The gradients the network's parameters receive from each loss on one pair, flattened (float64).

    "unsupervised": LNCC + unsup_reg * grad_l2 at phi_pred; "ofg": Eq. 3, MSE(phi_pred, sg(phi_opt)) + ofg_reg *
    grad_l2, with phi_opt = refine(phi_pred, inner_steps, inner_lr, inner_reg, inner_optimizer); "ofg_data": its
    MSE term only. Also "phi_pred", "phi_opt" and "field_grad" (dE/dphi of the unsupervised energy at phi_pred).
    Notebook 07 section 2: with one SGD inner step, phi_pred - phi_opt = inner_lr * dE/dphi, so "ofg_data" =
    (2 inner_lr / N) * "unsupervised" when inner_reg = unsup_reg (N = number of field entries).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    flat = lambda gs: torch.cat([g.reshape(-1).double() for g in gs])  # noqa: E731
    with torch.enable_grad():
        phi = models.predict(model, pair["moving"], pair["fixed"])
        unsup = unsupervised_loss(pair["fixed"], warp(pair["moving"], phi), phi, unsup_reg)
        field_grad, *g_unsup = torch.autograd.grad(unsup, [phi, *params], retain_graph=True)
        phi_opt = refine(phi.detach(), pair["moving"], pair["fixed"], inner_steps=inner_steps, inner_lr=inner_lr,
                         inner_reg=inner_reg, optimizer=inner_optimizer)
        g_data = torch.autograd.grad(F.mse_loss(phi, phi_opt), params, retain_graph=True)
        g_reg = torch.autograd.grad(grad_l2(phi), params)
    return {"unsupervised": flat(g_unsup), "ofg_data": flat(g_data),
            "ofg": flat(g_data) + ofg_reg * flat(g_reg), "phi_pred": phi.detach(), "phi_opt": phi_opt,
            "field_grad": field_grad.detach()}


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two flattened gradients (float64); NaN when either is zero."""
    a, b = a.double().flatten(), b.double().flatten()
    denom = float(a.norm() * b.norm())
    return float(a @ b) / denom if denom > 0 else float("nan")


class CosineLogger:
    """A Trainer callback: after each epoch, the cosine between the OFG and unsupervised network gradients.

    Averaged over `pairs`; rows `{"epoch", "cosine", "cosine_data"}` are kept in `rows` and, when `path` is
    given, written there (strict JSON) after every epoch, and read back on creation so a resumed run keeps them.
    """

    def __init__(self, pairs, path=None):
        import json
        from pathlib import Path
        self.pairs, self.path = pairs, Path(path) if path else None
        self.rows = json.loads(self.path.read_text()) if self.path and self.path.exists() else []

    def __call__(self, trainer, row):
        from .files import write_json
        cfg, cos, cos_data = trainer.cfg, [], []
        for p in self.pairs:
            g = network_gradients(trainer.model, p, cfg.inner_steps, trainer.inner_lr, cfg.inner_reg, cfg.ofg_reg,
                                  cfg.unsup_reg, cfg.inner_optimizer)
            cos.append(cosine(g["ofg"], g["unsupervised"]))
            cos_data.append(cosine(g["ofg_data"], g["unsupervised"]))
        self.rows.append({"epoch": row["epoch"], "cosine": float(np.mean(cos)), "cosine_data": float(np.mean(cos_data))})
        if self.path:
            write_json(self.path, self.rows)
