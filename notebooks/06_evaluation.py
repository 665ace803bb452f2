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
import matplotlib.pyplot as plt
import numpy as np
import torch

import ofg_lib
from ofg_lib.data import from_config
from ofg_lib.evaluate import evaluate, load_run
from ofg_lib.metrics import jacobian_det
from ofg_lib.paths import resolve
from ofg_lib.transform import warp
from ofg_lib.viz import plot_grid, show_jacobian

dev = ofg_lib.device(device)
runs = {s: resolve(run_dir) / "compare" / f"{s}-seed{seed}" for s in ("unsupervised", "ofg")}
missing = [str(p) for p in runs.values() if not (p / "checkpoint.pt").exists()]
if missing:
    raise FileNotFoundError(f"no trained runs at {', '.join(missing)}: run notebook 05 with the same run_dir first")
nets = {s: load_run(p, dev)[:2] for s, p in runs.items()}
cfg = nets["ofg"][1]
val = from_config(cfg, "val")  # the pairs the run was validated on, built from its stored config
print(f"{cfg['model']} on {cfg['dataset']}, {min(n_eval, len(val))} validation pairs, device {dev}")

# %% [markdown]
# ## 1. The numbers
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
fig, ax = plt.subplots(figsize=(max(8, len(val.labels) * 0.9), 4))
names = val.label_names
width = 0.38
for k, (s, colour) in enumerate((("unsupervised", "tab:blue"), ("ofg", "tab:orange"))):
    data = [col[~np.isnan(col)] for col in results[s]["dice_per_label"].T]
    pos = np.arange(len(names)) + (k - 0.5) * width
    bp = ax.boxplot(data, positions=pos, widths=width * 0.9, patch_artist=True, showfliers=False)
    for patch in bp["boxes"]:
        patch.set_facecolor(colour)
    ax.plot([], [], color=colour, linewidth=8, label=s)
ax.set_xticks(np.arange(len(names)))
ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
ax.set_ylabel("Dice")
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 3. What the networks do to one pair (as the paper's Fig. 4 and 9)
# Fixed and moving images, the warped moving image of each network with its difference to the fixed image,
# its deformation grid and its Jacobian determinant (folds in black).

# %%
item = {k: v[None].to(dev) for k, v in val[pair_index].items() if k != "id"}
with torch.no_grad():
    phis = {s: net(torch.cat([item["moving"], item["fixed"]], 1)).float() for s, (net, _) in nets.items()}
k = item["fixed"].shape[2] // 2
fig, axes = plt.subplots(2, 5, figsize=(17, 7))
img = lambda t: t[0, 0, k].cpu().T  # noqa: E731
for row, (s, phi) in enumerate(phis.items()):
    warped = warp(item["moving"], phi)
    panels = [("fixed", img(item["fixed"]), "gray"), ("moving", img(item["moving"]), "gray"),
              (f"{s}: warped", img(warped), "gray"), (f"{s}: |warped - fixed|", img((warped - item["fixed"]).abs()), "magma")]
    for ax, (title, data, cmap) in zip(axes[row], panels):
        ax.imshow(data, origin="lower", cmap=cmap)
        ax.set_title(title)
        ax.axis("off")
    show_jacobian(jacobian_det(phi)[0, k].cpu(), axes[row, 4])
    plot_grid(phi[0, 1:, k].cpu(), axes[row, 4], step=3, color="k", linewidth=0.4)
    axes[row, 4].set_title(f"{s}: grid and det J")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Summary
# - The same network evaluated the paper's way: per-label Dice of nearest-neighbour-warped labels, folds over
#   all voxels (Table 1's code) and over the non-background voxels (the paper's text), SDlogJ; and, on the embedded cohort, the error against the true displacement,
#   which the public datasets cannot give.
# - Inference is a single forward pass for both strategies: OFG's optimizer costs training time only.
