# %% [markdown]
# # 06 · Evaluation: Dice per label, folds, SDlogJ, end-point error, inference time
#
# **What this teaches.** How the paper evaluates a registration network, on the networks notebook 05 trained:
# labels warped by nearest neighbour and scored per label (Fig. 8), the share of folding voxels
# ($\%|J_\phi| \le 0$, Table 1), SDlogJ (Learn2Reg), the end-point error against the true displacement (only the
# embedded cohort has one) and the time of one forward pass; then pictures like the paper's Fig. 4 and 9.
#
# **Cost.** Under a minute on a laptop CPU after notebook 05; seconds on one GPU. Code: `ofg_lib/evaluate.py`,
# `ofg_lib/metrics.py`, `ofg_lib/viz.py`.

# %% tags=["parameters"]
run_dir = "results/ci/05_training"  # notebook 05's run folder (relative to the checkout)
seed = 0  # which seed's runs to show
n_eval = 4  # validation pairs to evaluate
pair_index = 0  # the pair shown in the figures
absent = "skip"  # Dice of a label absent from both maps: skip | zero (published IXI/OASIS code) | one (its LPBA40)
device = "auto"  # "auto" uses a GPU when there is one

# %%
import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch

import ofg_lib
from ofg_lib.data import from_config
from ofg_lib.compare import load_runs
from ofg_lib.evaluate import evaluate
from ofg_lib.paths import resolve
from ofg_lib.viz import dice_boxplot, interactive, pair_panels

dev = ofg_lib.device(device)
nets = {s: run[:2] for s, run in load_runs(resolve(run_dir), seed, device=dev).items()}  # (model, config)
cfg = nets["ofg"][1]
val = from_config(cfg, "val")  # the pairs the run was validated on, built from its stored config
print(f"{cfg['model']} on {cfg['dataset']}, {min(n_eval, len(val))} validation pairs, device {dev}")

# %% [markdown]
# ## 1. The numbers
# For each scored label $\ell$, with $A_\ell$ the voxels of label $\ell$ in the warped moving labels (nearest
# neighbour) and $B_\ell$ those in the fixed labels,
#
# $$\mathrm{Dice}_\ell = \frac{2\,|A_\ell \cap B_\ell|}{|A_\ell| + |B_\ell|},\qquad
# \%|J_\phi|\le 0 = 100\cdot\frac{|\{p : \det(I + \nabla u(p)) \le 0\}|}{|\Omega|},$$
#
# $$\mathrm{SDlogJ} = \operatorname{std}_{p}\,\log\big(\mathrm{clip}(\det(I + \nabla u(p)) + 3)\big),\qquad
# \mathrm{EPE} = \frac{1}{|M|}\sum_{p \in M} \|u(p) - u^*(p)\|_2,$$
#
# with $u$ the predicted displacement (`disp`, voxels), $u^*$ the true one (`disp_true`), $\Omega$ all voxels or
# the fixed image's labelled ones, $M$ the labelled voxels; SDlogJ follows the Learn2Reg evaluation (central
# differences, a 2-voxel border cropped, the $+3$ is theirs).
#
# Dice is averaged over the dataset's scored labels, then over pairs. Labels absent from both maps are skipped
# by default (`absent="skip"`); the published code scores them 0 (IXI, OASIS) or 1 (LPBA40): set `absent` to
# reproduce Table 1's averaging exactly. Folds are counted two ways, each named for what it counts: over all
# voxels (`fold_fraction`, what the published Table 1 code computes) and over the fixed image's labelled voxels
# (`fold_fraction_brain`, what the paper's text says). Inference time is one forward pass, synchronised on a
# GPU; the instance optimizer is not part of inference.

# %%
results = {s: evaluate(net, val, n_eval, dev, absent=absent) for s, (net, _) in nets.items()}
print(f"{'strategy':>13s} {'Dice':>14s} {'folds % all':>12s} {'folds % brain':>14s} {'SDlogJ':>8s} "
      f"{'EPE (vox)':>10s} {'infer ms':>9s}")
for s, r in results.items():
    epe_text = f"{r['epe']:10.3f}" if r["epe"] is not None else f"{'n/a':>10s}"
    print(f"{s:>13s} {r['dice']:7.4f} ± {r['dice_std']:.4f} {100 * r['fold_fraction']:12.4f} "
          f"{100 * r['fold_fraction_brain']:14.4f} {r['sdlogj']:8.4f} {epe_text} {r['inference_ms']:9.1f}")
assert all(0 <= r["dice"] <= 1 and np.isfinite(r["sdlogj"]) for r in results.values())

# %% [markdown]
# ## 2. Dice per label (as the paper's Fig. 8)

# %%
dice_boxplot({s: r["dice_per_label"] for s, r in results.items()}, val.label_names)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 3. What the networks do to one pair (as the paper's Fig. 4 and 9)
# Fixed and moving images, the warped moving image of each network with its difference to the fixed image,
# its deformation grid and its Jacobian determinant (folds in black). Below it, a viewer pages through
# methods, pairs and slices (in JupyterLab; the executed copy keeps the figure at the default values).

# %%
item = {k: v[None].to(dev) for k, v in val[pair_index].items() if k != "id"}
with torch.no_grad():
    phis = {s: net(torch.cat([item["moving"], item["fixed"]], 1)).float() for s, (net, _) in nets.items()}
pair_panels(item["fixed"], item["moving"], phis)
plt.tight_layout()
plt.show()

# %%
cache = {}


@torch.no_grad()
def view(method="ofg", pair=pair_index, index=val[0]["fixed"].shape[1] // 2):
    if (method, pair) not in cache:          # one forward pass per method and pair, then only drawing
        p = {k: v[None].to(dev) for k, v in val[pair].items() if k != "id"}
        cache[method, pair] = p, nets[method][0](torch.cat([p["moving"], p["fixed"]], 1)).float()
    p, phi = cache[method, pair]
    pair_panels(p["fixed"], p["moving"], {method: phi}, index=index)
    plt.show()


interactive(view, method=widgets.Dropdown(options=list(nets), value="ofg", description="method"),
            pair=widgets.IntSlider(min=0, max=min(n_eval, len(val)) - 1, value=pair_index, description="pair"),
            index=widgets.IntSlider(min=0, max=val[0]["fixed"].shape[1] - 1, value=val[0]["fixed"].shape[1] // 2,
                                    description="slice"));

# %% [markdown]
# ## Summary
# - The same network evaluated the paper's way: per-label Dice of nearest-neighbour-warped labels, folds over
#   all voxels (Table 1's code) and over the non-background voxels (the paper's text), SDlogJ; and, on the embedded cohort, the error against the true displacement,
#   which the public datasets cannot give.
# - Inference is a single forward pass for both strategies: OFG's optimizer costs training time only.
#
# Next: notebook 07 asks why the two networks differ (their gradients and loss landscapes).
#
# ### Exercises
# 1. *Predict, then run.* Set `absent = "zero"` (the published IXI/OASIS convention). Does the mean Dice go up
#    or down, and for which pairs? Hint: only labels absent from *both* maps change, from skipped to 0.
# 2. Which labels does OFG improve most over unsupervised training, per the box plot? Compute the per-label
#    difference of the means from `results[s]["dice_per_label"]` and sort it.
# 3. Evaluate the identity (a network that returns zeros, e.g. `lambda x: torch.zeros_like(x[:, :1]).repeat(1, 3, 1,
#    1, 1)`) with `evaluate`: how much of each network's Dice is the registration's? Hint: the embedded pairs
#    start from the same anatomy, so identity Dice is already well above 0.
# 4. Time a forward pass on your machine with `time_repeats=10` and compare it with the 10-step inner loop of
#    notebook 04: what does OFG's training step cost relative to inference?
