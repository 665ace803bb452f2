# %% [markdown]
# # 07 · Why OFG trains differently: gradients, loss landscapes and sharpness
#
# **What this teaches.** Why supervising a network with a ten-step-refined copy of its own prediction trains it
# differently from the unsupervised loss it is built from (notebooks 04 and 05 show how the step is computed;
# this one asks what it does to the network). We write one OFG step by hand, compare the gradient OFG gives the network with the unsupervised
# one (exactly proportional after one SGD inner step; sign-like after one Adam step), watch what the published
# decay of the inner learning rate does to the guidance, and draw loss landscapes (the paper's Fig. 1 and 10)
# twice: as the paper drew them, each network on its own training loss, and on one function for both, with the
# filter-normalised directions of Li et al. (2018) that the paper cites. Last, the sharpness of each minimum.
#
# **Cost.** The defaults (CI size: the tiny networks of notebook 05's defaults, a 5x5 grid, 2 pairs) run in
# a minute or two on a laptop CPU after notebook 05. The `cpu` profile (`make reproduce`) uses notebook 05's
# VoxelMorph-1 runs at 48x64x64 with an 11x11 grid and 3 pairs, plus two short training runs for section 3:
# several minutes on 2 CPU cores (the executed notebook prints each part's time). The `gpu` profile draws the
# paper's size (21x21, 5 pairs) on the published models. Code: `ofg_lib/landscape.py`, `ofg_lib/gradients.py`,
# `ofg_lib/viz/landscapes.py`.

# %% tags=["parameters"]
run_dir = "results/ci/05_training"  # notebook 05's run folder (relative to the checkout); its runs are analysed
seed = 0  # which seed's runs of notebook 05
n_pairs = 2  # validation pairs every loss is averaged over
grid = 5  # points per axis of the 2-D landscapes (odd: the trained weights sit in the middle)
span = 1.0  # the landscapes cover [-span, span] along each filter-normalised direction
ofg_grid = 3  # points per axis of the OFG-loss landscape (each point refines every pair: costly)
raw_span = 0.01  # span along the published raw Gaussian directions (their script: 10 steps of 0.001)
direction_seed = 0  # seed of the random directions (the same for both networks)
sgd_lr = 2000.0  # the one-step SGD inner lr of section 2 (any value: the proportionality is exact)
schedule_epochs = 3  # section 3: epochs of the two short OFG runs (poly vs constant inner lr)
schedule_steps = 4  # section 3: steps per epoch
sharpness_iters = 3  # power iterations for the top Hessian eigenvalue
sharpness_eps = [0.001, 0.01]  # finite-difference steps for Hessian-vector products (the result depends on it)
device = "auto"  # "auto" uses a GPU when there is one

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Markdown, display

import ofg_lib
from ofg_lib import gradients as G
from ofg_lib import landscape as L
from ofg_lib import models, strategies, train
from ofg_lib.compare import load_runs
from ofg_lib.data import from_config
from ofg_lib.evaluate import load_run
from ofg_lib.losses import ofg_loss
from ofg_lib.optimizer import refine
from ofg_lib.files import resolve
from ofg_lib.viz import plot_landscape, plot_slices_1d, plot_step_map

dev = ofg_lib.device(device)
# no runs of notebook 05 yet (07 opened first)? `make=True` runs notebook 05 with its defaults to make them, with
# a progress bar (as long as notebook 05 itself takes: see its Cost line; the time is printed)
runs = load_runs(resolve(run_dir), seed, device=dev, make=True)  # {strategy: (model, config, history)}
nets = {s: run[0] for s, run in runs.items()}
cfg = runs["ofg"][1]
config = train.load_config(cfg)
pairs = L.validation_pairs(from_config(cfg, "val"), n_pairs, dev)
labels = list(from_config(cfg, "val").labels)
coords = [np.linspace(-span, span, grid)] * 2
timings = {}
print(f"{cfg['model']} on {cfg['dataset']} {tuple(pairs[0]['fixed'].shape[2:])}, {len(pairs)} pairs, device {dev}; "
      f"runs of seed {seed} from {resolve(run_dir)}")

# %% [markdown]
# ## 1. One OFG step, by hand and through the trainer's strategy
# With $\phi_{pre} = F_\theta(I_m, I_f)$, the instance optimizer refines a detached copy for $K$ steps on
# $E(\phi) = \mathrm{LNCC}(I_f, I_m\circ\phi) + \lambda_{in}\|\nabla\phi\|^2$ (Eq. 2, 5), and the network's loss
# is $L = \frac1N\sum(\phi_{pre} - \mathrm{sg}(\phi_{opt}))^2 + 0.02\,\|\nabla\phi_{pre}\|^2$ (Eq. 3). The strategy
# the trainer calls (`ofg_lib/strategies.py`) must give the same number.

# %%
net, pair = nets["ofg"], pairs[0]
phi_pred = models.predict(net, pair["moving"], pair["fixed"])
phi_opt = refine(phi_pred, pair["moving"], pair["fixed"], inner_steps=config.inner_steps, inner_lr=config.inner_lr,
                 inner_reg=config.inner_reg)
by_hand = ofg_loss(phi_pred, phi_opt, config.ofg_reg)


def plain_refine(phi, moving, fixed, steps, lr):
    return refine(phi, moving, fixed, inner_steps=steps, inner_lr=lr, inner_reg=config.inner_reg), {}


step = strategies.Step(pair["moving"], pair["fixed"], ["pair 0"], config, config.inner_lr, plain_refine)
by_strategy, logs = strategies.ofg(step, phi_pred)
print(f"OFG loss by hand {by_hand.item():.6e}, through strategies.ofg {by_strategy.item():.6e}")
assert torch.allclose(by_hand, by_strategy, rtol=1e-6)

# %% [markdown]
# ## 2. The gradient OFG gives the network, against the unsupervised one
# **One SGD inner step.** SGD moves the field by $\phi_{opt} = \phi_{pre} - \eta\,\partial E/\partial\phi$, so
# the data term's gradient is $\partial L/\partial\phi_{pre} = \frac2N(\phi_{pre} - \phi_{opt}) =
# \frac{2\eta}{N}\,\partial E/\partial\phi$: through the chain rule, the network receives the unsupervised
# gradient scaled by $2\eta/N$ (when $\lambda_{in}$ equals the unsupervised loss's weight, 1 in both). OFG with
# one SGD step *is* unsupervised training with a rescaled learning rate.

# %%
t0 = time.perf_counter()
g = G.network_gradients(net, pair, inner_steps=1, inner_lr=sgd_lr, inner_optimizer="sgd",
                        inner_reg=config.inner_reg, unsup_reg=config.unsup_reg)
n = g["phi_pred"].numel()
ratio = float(g["ofg_data"] @ g["unsupervised"] / (g["unsupervised"] @ g["unsupervised"]))
print(f"cosine(OFG data term, unsupervised) = {G.cosine(g['ofg_data'], g['unsupervised']):.6f}; "
      f"scale {ratio:.4e} against 2 lr / N = {2 * sgd_lr / n:.4e}")
assert G.cosine(g["ofg_data"], g["unsupervised"]) > 0.999

# %% [markdown]
# **One Adam step.** Adam's first update is $\eta\,\hat m/(\sqrt{\hat v} + \epsilon)$ with $\hat m = g$ and
# $\hat v = g^2$: about $\eta\,\mathrm{sign}(g)$. Every voxel moves by about the same amount whatever the size
# of its gradient, so the target no longer weights voxels by how much the similarity cares about them: in flat
# regions (tiny gradient) the pseudo label moves as far as at edges.

# %%
a = G.network_gradients(net, pair, inner_steps=1, inner_lr=config.inner_lr, inner_reg=config.inner_reg,
                        unsup_reg=config.unsup_reg)
moved = (a["phi_opt"] - a["phi_pred"]).norm(dim=1)[0].cpu()
grad_size = a["field_grad"].norm(dim=1)[0].cpu()
plot_step_map(moved, grad_size)
plt.show()
big = grad_size > 10 * grad_size.median()
print(f"voxels with a gradient 10x the median moved {moved[big].mean():.4f}, the rest {moved[~big].mean():.4f} "
      f"voxels (lr {config.inner_lr}; sqrt(3) lr = {3 ** 0.5 * config.inner_lr:.4f} is a full diagonal step)")

# %% [markdown]
# **Ten steps.** With the published ten Adam steps the two gradients are no longer proportional. Their cosine,
# over the network's parameters, at a fresh initialisation and at the two networks notebook 05 trained:

# %%
torch.manual_seed(config.seed)
fresh = models.build(config.model, tuple(pairs[0]["fixed"].shape[2:])).to(dev)
rows = []
for name, model in (("initialisation", fresh), ("unsupervised net", nets["unsupervised"]), ("OFG net", nets["ofg"])):
    c = [G.network_gradients(model, p, config.inner_steps, config.inner_lr, config.inner_reg, config.ofg_reg,
                             config.unsup_reg, config.inner_optimizer) for p in pairs]
    rows.append((name, np.mean([G.cosine(x["ofg"], x["unsupervised"]) for x in c]),
                 np.mean([G.cosine(x["ofg_data"], x["unsupervised"]) for x in c])))
    print(f"{name:>17s}: cosine(OFG, unsupervised) {rows[-1][1]:+.3f}; data term only {rows[-1][2]:+.3f}")
timings["section 2"] = time.perf_counter() - t0

# %% [markdown]
# ## 3. What the inner learning-rate schedule does
# The published code decays the inner lr with the network's, $\eta_{in}(e) = \eta_{in}(1 - e/E)^{0.9}$. Near the
# end $\eta_{in}\to 0$, so $\phi_{opt}\to\phi_{pre}$: the MSE term vanishes and training becomes
# $0.02\,\|\nabla\phi\|^2$, pure smoothing, which removes folds by itself. Two short OFG runs of notebook 05's
# setting, poly against constant inner lr, log folds and the gradient cosine every epoch; we then ask how much
# of the poly run's fold reduction happens in its last phase (inner lr below a quarter of its start).

# %%
t0 = time.perf_counter()
schedule = {}
for mode in ("poly", "constant"):
    out = resolve(run_dir) / "07_schedule" / f"{mode}-seed{seed}"
    logger = G.CosineLogger(pairs, out / "cosines.json")
    # resume="auto", exact=True: reuse a finished run of this very config, resume an unfinished one, else train
    summary = train.run({**cfg, "epochs": schedule_epochs, "steps_per_epoch": schedule_steps, "val_every": 1,
                         "inner_lr_schedule": mode, "progress": False}, out=out, resume="auto", exact=True,
                        callbacks=[logger])
    schedule[mode] = {"history": load_run(out)[2], "cosines": logger.rows}
fig, axes = plt.subplots(1, 4, figsize=(18, 3.6))
for mode, r in schedule.items():
    ep = [h["epoch"] for h in r["history"]]
    axes[0].plot(ep, [h["inner_lr"] for h in r["history"]], marker=".", label=mode)
    axes[1].plot(ep, [h["mse"] for h in r["history"]], marker=".", label=mode)
    axes[2].plot(ep, [100 * h["fold_fraction"] for h in r["history"]], marker=".", label=f"{mode}: all voxels")
    axes[2].plot(ep, [100 * h["fold_fraction_brain"] for h in r["history"]], ls="--", label=f"{mode}: brain")
    axes[3].plot([c["epoch"] for c in r["cosines"]], [c["cosine"] for c in r["cosines"]], marker=".", label=mode)
for ax, t in zip(axes, ["inner lr", "MSE(phi_pred, phi_opt)", "folds (%)", "cosine(OFG grad, unsup grad)"]):
    ax.set_title(t)
    ax.set_xlabel("epoch")
    ax.legend(fontsize=8)
plt.tight_layout()
plt.show()
timings["section 3"] = time.perf_counter() - t0

# %%
poly = schedule["poly"]["history"]
start = cfg["inner_lr"]
late = [h for h in poly if h["inner_lr"] < 0.25 * start]
early = [h for h in poly if h["inner_lr"] >= 0.25 * start]
if late and early:
    drop_total = poly[0]["fold_fraction"] - poly[-1]["fold_fraction"]
    drop_late = early[-1]["fold_fraction"] - poly[-1]["fold_fraction"]
    share = drop_late / drop_total if drop_total > 0 else float("nan")
    text = (f"Poly inner lr: folds (all voxels) {100 * poly[0]['fold_fraction']:.4f} % after epoch 1, "
            f"{100 * early[-1]['fold_fraction']:.4f} % when the inner lr fell below a quarter of its start (epoch "
            f"{early[-1]['epoch']}), {100 * poly[-1]['fold_fraction']:.4f} % at the end; constant inner lr: "
            f"{100 * schedule['constant']['history'][-1]['fold_fraction']:.4f} % at the end. ")
    text += ("There were no folds to remove in this run, so it cannot say how much of OFG's fold reduction comes "
             "from the smoothing phase." if drop_total <= 0 else
             f"{100 * share:.0f} % of the poly run's fold reduction happened in that last phase.")
else:
    text = (f"In {len(poly)} epochs the poly inner lr never fell below a quarter of its start with earlier epochs "
            f"above it, so this run has no separate smoothing phase to measure (use more epochs).")
display(Markdown(text))

# %% [markdown]
# ## 4. Loss landscapes
# A landscape is $L(\theta + a\,d_1 + b\,d_2)$ on a grid of $(a, b)$ around the trained weights $\theta$. With
# random Gaussian directions the picture depends on the scale of each layer's weights; Li et al. (2018) rescale
# every filter of $d$ to the norm of the same filter of $\theta$ (biases left at zero) so that networks can be
# compared. The paper cites them, but its published script perturbs the whole `state_dict` (buffers included)
# along raw Gaussian directions, and draws the OFG network on OFG's training loss (MSE to a pseudo label
# recomputed at every point, + 0.02 reg) and the baseline on its own (LNCC + 1.0 reg): two different functions.
# We draw (a) that comparison, (b) one function for both networks (the unsupervised energy, and Dice) with
# filter-normalised directions of the same seed, and (c) the unsupervised energy along raw directions.

# %%
t0 = time.perf_counter()
surf = {}
for s, model in nets.items():
    dirs = L.random_directions(model, 2, seed=direction_seed, normalize="filter")
    both = L.surface(model, L.energy_and_dice(pairs, labels, config.unsup_reg), dirs, coords)
    surf[s] = {"energy": both[..., 0], "dice": both[..., 1]}
    raw = L.random_directions(model, 2, seed=direction_seed, normalize=None)
    surf[s]["raw"] = L.surface(model, L.unsupervised_energy(pairs, config.unsup_reg), raw,
                               [np.linspace(-raw_span, raw_span, grid)] * 2)
ofg_coords = [np.linspace(-span, span, ofg_grid)] * 2
ofg_dirs = L.random_directions(nets["ofg"], 2, seed=direction_seed)
surf["ofg"]["own"] = L.surface(nets["ofg"], L.ofg_training_loss(pairs, config.inner_steps, config.inner_lr,
                                                                 config.inner_reg, config.ofg_reg), ofg_dirs,
                               ofg_coords)
surf["unsupervised"]["own"] = surf["unsupervised"]["energy"]
timings["section 4"] = time.perf_counter() - t0

# %%
fig, axes = plt.subplots(3, 4, figsize=(18, 12))
plot_landscape(coords, {"unsupervised net, on LNCC + reg": surf["unsupervised"]["own"]}, axes=[axes[0, 0]],
               title="(a) ")
plot_landscape(ofg_coords, {"OFG net, on its OFG loss": surf["ofg"]["own"]}, axes=[axes[0, 1]], title="(a) ")
plot_landscape([np.linspace(-raw_span, raw_span, grid)] * 2,
               {f"{s} net, raw directions": surf[s]["raw"] for s in nets}, axes=axes[0, 2:], title="(c) energy, ")
plot_landscape(coords, {f"{s} net": surf[s]["energy"] for s in nets}, axes=axes[1, :2], title="(b) energy, ")
plot_landscape(coords, {f"{s} net": surf[s]["dice"] for s in nets}, axes=axes[1, 2:], title="(b) Dice, ")
mid = grid // 2
plot_slices_1d(coords[0], {f"{s} net": surf[s]["energy"][:, mid] for s in nets}, axes[2, 0],
               ylabel="energy - energy at the minimum")
plot_slices_1d(coords[0], {f"{s} net": surf[s]["dice"][:, mid] for s in nets}, axes[2, 1],
               ylabel="Dice - Dice at the minimum")
plot_slices_1d(ofg_coords[0], {"OFG net, OFG loss": surf["ofg"]["own"][:, ofg_grid // 2]}, axes[2, 2],
               ylabel="OFG loss - at the minimum")
axes[2, 3].axis("off")
plt.tight_layout()
plt.show()

# %% [markdown]
# Two numbers summarise each surface: its **rise**, the mean of $L - L(\theta)$ over the grid's border (how
# steep the basin is at this radius), and its **convex fraction**, the share of interior grid points whose
# finite-difference Hessian has no negative eigenvalue (1.0 for a bowl). Rises of different functions have
# different units (LNCC is about -1 at a match; the OFG loss is an MSE in voxels²), so only rows of the same
# function compare networks.

# %%
table = []
for s in nets:
    for key, name in (("own", "(a) own training loss"), ("energy", "(b) unsupervised energy"),
                      ("dice", "(b) Dice (a score)"), ("raw", "(c) energy, raw directions")):
        z = surf[s][key]
        table.append((s, name, float(z[tuple(n // 2 for n in z.shape)]), L.rise(z), L.convex_fraction(z)))
lines = ["| network | surface | at the minimum | rise | convex fraction |", "|---|---|---|---|---|"]
lines += [f"| {s} | {name} | {v:.4f} | {r:+.4f} | {c:.2f} |" for s, name, v, r, c in table]
display(Markdown("\n".join(lines)))
rises = {(s, name): r for s, name, _, r, _ in table}

# %% [markdown]
# ## 5. Sharpness
# The top eigenvalue of the Hessian of the unsupervised energy with respect to the weights, by power iteration
# on Hessian-vector products. Our LNCC has a hand-written backward without a double backward, so each product is
# a central difference of two gradients, $Hv \approx (g(\theta+\epsilon v) - g(\theta-\epsilon v))/2\epsilon$.
# Trilinear warping makes the energy only piecewise smooth, so the value is a curvature smoothed at the scale
# $\epsilon$: we give two, and read the networks' order only if both agree.

# %%
t0 = time.perf_counter()
sharp = {(s, eps): L.sharpness(nets[s], L.unsupervised_energy(pairs, config.unsup_reg, differentiable=True),
                               iters=sharpness_iters, eps=eps) for s in nets for eps in sharpness_eps}
for eps in sharpness_eps:
    print(f"eps {eps:g}: top eigenvalue, unsupervised net {sharp[('unsupervised', eps)]:+.4f}, "
          f"OFG net {sharp[('ofg', eps)]:+.4f}")
timings["section 5"] = time.perf_counter() - t0
print("seconds per section:", {k: round(v, 1) for k, v in timings.items()})

# %% [markdown]
# ## 6. What this says about the paper's claim
# The paper reads its Fig. 1 and 10 as OFG's landscape being "substantially smoother and convex". The
# paragraph below is assembled from the numbers above (nothing in it is typed in), so it holds for this run's
# networks, size and budget only.

# %%
e_u, e_o = rises[("unsupervised", "(b) unsupervised energy")], rises[("ofg", "(b) unsupervised energy")]
d_u, d_o = rises[("unsupervised", "(b) Dice (a score)")], rises[("ofg", "(b) Dice (a score)")]
convex = {(s, name): c for s, name, _, _, c in table}
flatter = "OFG" if abs(e_o) < abs(e_u) else "unsupervised"
order = {eps: "OFG" if abs(sharp[("ofg", eps)]) < abs(sharp[("unsupervised", eps)]) else "unsupervised"
         for eps in sharpness_eps}
local = next(iter(order.values())) if len(set(order.values())) == 1 else None
parts = [
    f"(a) Drawn as the paper drew them, each network on its own loss: rise "
    f"{rises[('unsupervised', '(a) own training loss')]:+.4f} and convex fraction "
    f"{convex[('unsupervised', '(a) own training loss')]:.2f} for the unsupervised network (LNCC + reg), "
    f"{rises[('ofg', '(a) own training loss')]:+.4f} and {convex[('ofg', '(a) own training loss')]:.2f} for OFG "
    f"(MSE to its pseudo label + reg). These are different functions in different units, so this comparison "
    f"cannot tell which network sits in the smoother basin, whatever the pictures suggest.",
    f"(b) On one function, the unsupervised energy, the {flatter} network's basin is the flatter at radius {span:g} "
    f"(rise {e_u:+.4f} unsupervised, {e_o:+.4f} OFG; convex fraction "
    f"{convex[('unsupervised', '(b) unsupervised energy')]:.2f} and {convex[('ofg', '(b) unsupervised energy')]:.2f}); "
    f"along the same directions Dice falls by {-d_u:.4f} (unsupervised) and {-d_o:.4f} (OFG).",
    "Sharpness (top Hessian eigenvalue of the energy at the minimum): " + "; ".join(
        f"eps {eps:g}: unsupervised {sharp[('unsupervised', eps)]:+.3f}, OFG {sharp[('ofg', eps)]:+.3f}"
        for eps in sharpness_eps) + (
        f". Both step sizes agree that the {local} network's minimum is the flatter locally" if local else
        ". The step sizes disagree, so sharpness does not separate the two networks here") + (
        "." if local is None or local == flatter else
        f", while at radius {span:g} the {flatter} network's basin is: flatness depends on the scale at which one "
        f"looks, and no single picture settles it."),
    f"With ten Adam steps, the gradient OFG gives the network has a cosine of {rows[0][1]:+.2f} with the "
    f"unsupervised one at initialisation, {rows[1][1]:+.2f} at the unsupervised network and {rows[2][1]:+.2f} at "
    f"the OFG network: " + ("it points mostly along the unsupervised gradient, a re-weighting of it rather than "
                            "a different direction" if min(r[1] for r in rows) > 0.7 else
                            "it departs from the unsupervised gradient at least somewhere along training, so OFG "
                            "does follow a different direction there, not only a rescaled one") + ".",
]
display(Markdown("\n\n".join(parts)))

# %% [markdown]
# ## Summary
# - OFG with one SGD inner step is unsupervised training with the learning rate scaled by $2\eta/N$; with Adam
#   the first step moves every voxel by about $\eta$, so the pseudo label re-weights the similarity's gradient.
# - The published inner-lr decay turns OFG into pure smoothing at the end of training: fold counts there
#   measure the schedule as much as the method.
# - The paper's landscape figure compares two different functions along raw directions; drawn on one function
#   with filter-normalised directions, the comparison is the table of section 4, and it is this run's result,
#   not a general one.
#
# Next: when OFG helps at all (longer runs, harder data) is the subject of the study notebook that follows.
#
# ### Exercises
# 1. *Predict, then run.* Set `direction_seed = 1`. Which numbers of the section 4 table should stay about the
#    same and which may change? Hint: a landscape is a random 2-D slice of a space with 10^5 dimensions or more.
# 2. Double `span`. Does the ordering of the two networks' rises survive? Hint: `L.rise` measures the border of
#    the grid, so it depends on the radius you look at.
# 3. In section 2, replace `sgd_lr` by a value 100 times smaller: does the cosine stay 1? Why is the
#    proportionality exact for any lr, but the equivalence to unsupervised training only up to a rescaled lr?
# 4. Compute `L.sharpness` with `sharpness_eps = [1e-4]`. If the value moves, what does that say about the
#    smoothness of LNCC through trilinear warping? Hint: the energy has kinks where sample points cross voxel
#    faces.
# 5. Draw the unsupervised network on the OFG loss (`L.ofg_training_loss`) too, and compare with panel (a):
#    what does the comparison of panel (a) change into when both networks are drawn on the same function?
