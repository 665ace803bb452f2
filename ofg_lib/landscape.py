"""Loss landscapes and sharpness of a trained network (Li et al. 2018; notebook 07 `07_loss_landscape`).

A landscape is the loss along a few directions in weight space, L(theta + a d1 + b d2), evaluated on a grid of
(a, b). Directions are dicts {parameter name: tensor} over `model.named_parameters()` (never buffers).
Li et al. ("Visualizing the loss landscape of neural nets") rescale each filter of a random direction to the
norm of the same filter of the weights, so that networks of different scale are comparable; the loss functions
below are evaluated on a fixed list of validation pairs, each a dict with `moving`, `fixed` (1, 1, D, H, W) and
optionally `moving_seg`, `fixed_seg` (int64), on the model's device. Models are called as
`models.predict(model, moving, fixed)` and return a displacement in voxels (see `ofg_lib.transform`).
"""
from __future__ import annotations

import numpy as np
import torch


from . import _checks, models
from .losses import ofg_loss, unsupervised_loss
from .metrics import dice
from .optimizer import refine
from .progress import progress_bar
from .transform import warp
from .gradients import CosineLogger, cosine, network_gradients  # noqa: F401 (notebook 07 reads them from here)

__all__ = ["random_directions", "surface", "sharpness", "unsupervised_energy", "ofg_training_loss", "mean_dice",
           "energy_and_dice", "rise", "convex_fraction", "validation_pairs", "network_gradients", "cosine",
           "CosineLogger"]

NORMALIZE = ("filter", None)


def random_directions(model: torch.nn.Module, n: int = 2, seed: int = 0, normalize: str | None = "filter",
                      include_1d: bool = False) -> list[dict[str, torch.Tensor]]:
    """`n` random Gaussian directions in weight space, each a dict {parameter name: tensor} (detached).

    Entries come from a CPU `torch.Generator` seeded with `seed`, drawn in float32 in a fixed order (each
    direction, then each named parameter) and cast to the parameter's device and dtype: the same seed gives the
    same directions on CPU and GPU. `normalize="filter"` (Li et al. 2018): each filter (slice along dim 0, the
    output dimension) is rescaled to the Frobenius norm of the same filter of the weights; parameters with one
    dimension or fewer (biases, norm weights) are zero in the direction, as in Li et al., unless `include_1d`,
    which rescales each of them as a whole to the parameter's norm. `normalize=None` keeps the raw Gaussian
    entries for every parameter, 1-D included (what the paper's published plotting script does).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1 (the number of directions), got {n!r}")
    _checks.one_of("normalize", normalize, NORMALIZE)
    gen = torch.Generator().manual_seed(int(seed))
    directions = []
    for _ in range(n):
        direction = {}
        for name, p in model.named_parameters():
            w = p.detach()
            d = torch.randn(w.shape, generator=gen, dtype=torch.float32).to(w)
            if normalize == "filter":
                if w.dim() <= 1:
                    d = d * (w.norm() / (d.norm() + 1e-10)) if include_1d else torch.zeros_like(w)
                else:   # 1e-10 as in Li et al.'s code: a zero filter of the weights gives a zero filter here
                    scale = w.flatten(1).norm(dim=1) / (d.flatten(1).norm(dim=1) + 1e-10)
                    d = d * scale.view(-1, *([1] * (w.dim() - 1)))
            direction[name] = d
        directions.append(direction)
    return directions


def _snapshot(model):
    """Clones of every parameter and buffer (non-persistent buffers too), by name."""
    return ({k: v.detach().clone() for k, v in model.named_parameters()},
            {k: v.detach().clone() for k, v in model.named_buffers()})


@torch.no_grad()
def _restore(model, snapshot):
    params, buffers = snapshot
    for k, v in model.named_parameters():
        v.copy_(params[k])
    for k, v in model.named_buffers():
        if k in buffers:
            v.copy_(buffers[k])


def _check_directions(model, directions):
    shapes = {k: p.shape for k, p in model.named_parameters()}
    for i, d in enumerate(directions):
        for k, v in d.items():
            if k not in shapes:
                raise ValueError(f"direction {i} has an entry {k!r}, which is not a parameter of the model; "
                                 f"its parameters are {list(shapes)}")
            if v.shape != shapes[k]:
                raise ValueError(f"direction {i}[{k!r}] has shape {tuple(v.shape)} but the parameter has "
                                 f"{tuple(shapes[k])}")


def surface(model: torch.nn.Module, loss_fn, directions, coords, progress: bool = True) -> np.ndarray:
    """`loss_fn(model)` at theta + sum_k coords[k][i_k] * directions[k] on the grid, shape (len(coords[0]), ...).

    A `loss_fn` that returns k values (e.g. `energy_and_dice`) gives an array of shape (len(coords[0]), ..., k).

    `coords` is one 1-D array per direction; a parameter missing from a direction moves by zero along it.
    Runs under `torch.no_grad()` in the model's current train/eval mode (left as it is). Every parameter and
    buffer is restored bit for bit afterwards, also when `loss_fn` raises. Returns float64.
    """
    coords = [np.asarray(c, dtype=np.float64) for c in coords]
    if len(coords) != len(directions) or any(c.ndim != 1 for c in coords):
        raise ValueError(f"coords must have one 1-D array per direction: {len(directions)} direction(s), "
                         f"coordinate arrays of shapes {[c.shape for c in coords]}")
    _check_directions(model, directions)
    shape = tuple(len(c) for c in coords)
    out = None
    saved = _snapshot(model)
    params = dict(model.named_parameters())
    try:
        with torch.no_grad(), progress_bar(np.ndindex(*shape), total=int(np.prod(shape)), desc="landscape",
                                           disable=not progress) as points:
            for idx in points:
                for k, p in params.items():
                    p.copy_(saved[0][k])
                for d, c, i in zip(directions, coords, idx):
                    for k, v in d.items():
                        params[k].add_(v, alpha=float(c[i]))
                value = np.asarray(loss_fn(model), dtype=np.float64)
                if out is None:          # a loss_fn may return several values (k,): the result is (..., k)
                    out = np.empty(shape + value.shape, dtype=np.float64)
                out[idx] = value
    finally:
        _restore(model, saved)
    return out


def sharpness(model: torch.nn.Module, loss_fn_with_grad, iters: int = 20, seed: int = 0, eps: float = 1e-3,
              method: str = "fd") -> float:
    """Top Hessian eigenvalue (largest magnitude, sign kept) of the loss w.r.t. the trainable parameters.

    Power iteration on Hessian-vector products; returns the Rayleigh quotient v.Hv at the last iterate.
    `loss_fn_with_grad(model)` returns a scalar tensor with its graph (e.g. `unsupervised_energy(...,
    differentiable=True)`). `method="fd"` (default): Hv ~ (g(theta + eps v) - g(theta - eps v)) / (2 eps) with
    v of unit norm, central differences of gradients, because our LNCC has a hand-written backward without
    double backward. Through trilinear warping the loss is only piecewise smooth in the displacement (kinks where
    sample points cross voxel faces), so this is a curvature smoothed at the scale `eps`: compare models at one
    `eps`. `method="autograd"`: double backprop (create_graph=True), only for losses whose backward is itself
    differentiable (the quadratic in the tests); on LNCC it silently drops terms. Parameters and buffers are
    restored bit for bit afterwards.
    """
    _checks.one_of("method", method, ("fd", "autograd"))
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1 or not eps > 0:
        raise ValueError(f"iters must be an integer >= 1 and eps > 0, got iters={iters!r}, eps={eps!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no parameter with requires_grad=True")
    gen = torch.Generator().manual_seed(int(seed))
    v = [torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p) for p in params]
    saved, theta = _snapshot(model), [p.detach().clone() for p in params]
    dot = lambda a, b: sum(float((x.double() * y.double()).sum()) for x, y in zip(a, b))  # noqa: E731

    def grad_at(sign):
        with torch.no_grad():
            for p, t, u in zip(params, theta, v):
                p.copy_(t).add_(u, alpha=sign * eps)
        with torch.enable_grad():
            return torch.autograd.grad(loss_fn_with_grad(model), params)

    try:
        if method == "autograd":
            with torch.enable_grad():
                grads = torch.autograd.grad(loss_fn_with_grad(model), params, create_graph=True)
        rayleigh = 0.0
        for _ in range(iters):
            norm = dot(v, v) ** 0.5
            if norm == 0.0:                          # H v = 0: v is in the null space
                break
            v = [u / norm for u in v]
            if method == "fd":
                hv = [(a - b) / (2 * eps) for a, b in zip(grad_at(+1.0), grad_at(-1.0))]
            else:
                with torch.enable_grad():
                    hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
            rayleigh = dot(v, hv)
            v = [h.detach() for h in hv]
    finally:
        _restore(model, saved)
    return rayleigh


def _pair_mean(pairs, per_pair, differentiable):
    pairs = list(pairs)
    if not pairs:
        raise ValueError("pairs is empty: give at least one validation pair")

    def loss_fn(model):
        if differentiable:
            return sum(per_pair(model, p) for p in pairs) / len(pairs)
        with torch.no_grad():
            return float(sum(float(per_pair(model, p)) for p in pairs) / len(pairs))
    return loss_fn


def _phi(model, pair):
    return models.predict(model, pair["moving"], pair["fixed"])


def unsupervised_energy(pairs, reg_weight: float = 1.0, differentiable: bool = False):
    """loss_fn(model) = mean over pairs of lncc(fixed, warp(moving, phi)) + reg_weight * grad_l2(phi); minimised.

    Returns a float, or with `differentiable=True` a scalar tensor with its graph (for `sharpness`).
    """
    def one(model, p):
        phi = _phi(model, p)
        return unsupervised_loss(p["fixed"], warp(p["moving"], phi), phi, reg_weight)
    return _pair_mean(pairs, one, differentiable)


def ofg_training_loss(pairs, inner_steps: int = 10, inner_lr: float = 0.1, inner_reg: float = 1.0,
                      ofg_reg: float = 0.02, differentiable: bool = False):
    """loss_fn(model) = mean over pairs of OFG's training loss (Eq. 3) with phi_opt re-optimised at each point.

    phi_pred = model(...), phi_opt = refine(phi_pred, inner_steps=..., inner_lr=..., inner_reg=...),
    loss = ofg_loss(phi_pred, phi_opt, ofg_reg): the landscape the paper draws for OFG. Float, or a tensor with
    `differentiable=True` (phi_opt is a constant, as in training).
    """
    def one(model, p):
        phi_pred = _phi(model, p)
        phi_opt = refine(phi_pred, p["moving"], p["fixed"], inner_steps=inner_steps, inner_lr=inner_lr,
                         inner_reg=inner_reg)
        return ofg_loss(phi_pred, phi_opt, ofg_reg)
    return _pair_mean(pairs, one, differentiable)


def mean_dice(pairs, labels):
    """score_fn(model) = mean over pairs of Dice (nanmean over `labels`) of the nearest-warped `moving_seg`.

    A score in [0, 1], higher is better (not a loss): negate it to read it as one.
    """
    pairs, labels = list(pairs), list(labels)
    for i, p in enumerate(pairs):
        missing = [k for k in ("moving_seg", "fixed_seg") if k not in p]
        if missing:
            raise ValueError(f"mean_dice needs label maps: pair {i} has no {missing} (keys: {sorted(p)})")

    def one(model, p):
        warped_seg = warp(p["moving_seg"], _phi(model, p), mode="nearest")
        return float(dice(warped_seg, p["fixed_seg"], labels).nanmean())
    return _pair_mean(pairs, one, False)


def energy_and_dice(pairs, labels, reg_weight: float = 1.0):
    """loss_fn(model) -> [unsupervised energy, mean Dice] from one forward pass per pair (for `surface`)."""
    pairs, labels = list(pairs), list(labels)

    @torch.no_grad()
    def loss_fn(model):
        energy, score = 0.0, 0.0
        for p in pairs:
            phi = _phi(model, p)
            energy += float(unsupervised_loss(p["fixed"], warp(p["moving"], phi), phi, reg_weight))
            score += float(dice(warp(p["moving_seg"], phi, mode="nearest"), p["fixed_seg"], labels).nanmean())
        return [energy / len(pairs), score / len(pairs)]
    return loss_fn


def rise(surface: np.ndarray) -> float:
    """How steep a 2-D (or 1-D) surface is around its centre: mean of L - L(centre) over the grid's border.

    The grid must be odd-sized and centred on the trained weights (coordinate 0 in the middle).
    """
    s = np.asarray(surface, dtype=np.float64)
    centre = s[tuple(n // 2 for n in s.shape)]
    border = np.ones(s.shape, dtype=bool)
    border[tuple(slice(1, -1) for _ in s.shape)] = False
    return float(np.mean(s[border] - centre))


def convex_fraction(surface: np.ndarray, tol: float = 0.0) -> float:
    """Share of interior points of a 2-D surface whose finite-difference Hessian has no eigenvalue below -tol.

    1.0 for a convex bowl; Li et al. 2018 map the ratio of the Hessian's extreme eigenvalues instead.
    """
    s = np.asarray(surface, dtype=np.float64)
    if s.ndim != 2 or min(s.shape) < 3:
        raise ValueError(f"convex_fraction needs a 2-D surface of at least 3x3 points, got shape {s.shape}")
    c = s[1:-1, 1:-1]
    haa = s[2:, 1:-1] - 2 * c + s[:-2, 1:-1]
    hbb = s[1:-1, 2:] - 2 * c + s[1:-1, :-2]
    hab = (s[2:, 2:] - s[2:, :-2] - s[:-2, 2:] + s[:-2, :-2]) / 4
    smallest = (haa + hbb) / 2 - np.sqrt(((haa - hbb) / 2) ** 2 + hab ** 2)
    return float(np.mean(smallest >= -tol))


def validation_pairs(dataset, n: int, device="cpu") -> list[dict]:
    """The first `n` pairs of a dataset as batches of one on `device` (the fixed set the landscapes use)."""
    return [{k: v[None].to(device) for k, v in dataset[i].items() if k != "id"} for i in range(min(n, len(dataset)))]
