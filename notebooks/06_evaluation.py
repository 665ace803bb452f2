# %% [markdown]
# # 06 · Evaluation: Dice per label, folds, SDlogJ, end-point error, inference time
#
# **What this teaches.** How the paper evaluates a registration network, on the networks notebook 05 trained:
# labels warped by nearest neighbour and scored per label (Fig. 8), the share of folding voxels
# ($\%|J_\phi| \le 0$, Table 1), SDlogJ (Learn2Reg), the end-point error against the true displacement (only the
# embedded cohort has one) and the time of one forward pass; then pictures like the paper's Fig. 4 and 9; then
# Table 1, with the classical methods (SyN, NiftyReg, elastix, our optimizer) run for real on the same pairs.
#
# **Cost.** After notebook 05, the networks' sections take under a minute on a laptop CPU; the classical methods
# of section 4 take seconds per pair each (the `cpu` profile's 8 pairs: 195 s for the whole notebook on 2 cores,
# measured). Code: `ofg_lib/evaluate.py`, `ofg_lib/metrics.py`, `ofg_lib/baselines.py`, `ofg_lib/report.py`,
# `ofg_lib/viz/`.

# %% tags=["parameters"]
run_dir = "results/ci/05_training"  # notebook 05's run folder (relative to the checkout)
seed = 0  # which seed's runs to show
n_eval = 4  # validation pairs to evaluate
pair_index = 0  # the pair shown in the figures
absent = "skip"  # Dice of a label absent from both maps: skip | zero (published IXI/OASIS code) | one (its LPBA40)
device = "auto"  # "auto" uses a GPU when there is one
baselines = ["syn", "elastix", "niftyreg", "instance"]  # classical rows of the report (absent toolkits are listed)
report_pairs = 1  # pairs every method of the report registers (the classical ones take seconds to minutes each)
report_dir = "results/ci"  # REPORT.md and report.csv are written here
extra_run_dirs = []  # other notebook-05 run folders (e.g. another model) to add as network rows of the report
threads = 2  # threads of the classical toolkits (and of torch)

# %%
import ipywidgets as widgets
from IPython.display import Markdown, display
import matplotlib.pyplot as plt
import numpy as np
import torch

import ofg_lib
from ofg_lib import models
from ofg_lib.data import from_config
from ofg_lib.compare import load_runs
from ofg_lib.evaluate import evaluate, field_maps
from ofg_lib.files import resolve
from ofg_lib.baselines import QUICK, Baseline, available, register_classical
from ofg_lib.report import classical_row, network_row, write_report
from ofg_lib.runs import RunFolder
from ofg_lib.viz import dice_boxplot, interactive, method_columns, pair_panels

dev = ofg_lib.device(device)
if threads:
    torch.set_num_threads(threads)
# no runs of notebook 05 yet (06 opened first)? `make=True` runs notebook 05 with its defaults to make them, with
# a progress bar (as long as notebook 05 itself takes: see its Cost line; the time is printed)
nets = {s: run[:2] for s, run in load_runs(resolve(run_dir), seed, device=dev, make=True).items()}  # (model, config)
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
# its deformation grid and its Jacobian determinant (folds in black): `field_maps` computes these maps once per
# method and pair, `pair_panels` only draws them. Below it, a viewer pages through methods (the networks and the
# classical methods of section 4), pairs and slices (in JupyterLab; the executed copy keeps the figure at the
# default values).

# %%
item = {k: v[None].to(dev) for k, v in val[pair_index].items() if k != "id"}
with torch.no_grad():
    phis = {s: models.predict(net, item["moving"], item["fixed"]).float() for s, (net, _) in nets.items()}
pair_panels({s: field_maps(phi, item) for s, phi in phis.items()})
plt.tight_layout()
plt.show()

# %%
cache = {}


@torch.no_grad()
def view(method="ofg", pair=pair_index, index=val[0]["fixed"].shape[1] // 2):
    if (method, pair) not in cache:          # one registration per method and pair, then only drawing
        p = {k: v[None].to(dev) for k, v in val[pair].items() if k != "id"}
        x = models.pair_input(p["moving"], p["fixed"])
        phi = (nets[method][0](x) if method in nets else Baseline(method, threads)(x)).float()
        cache[method, pair] = field_maps(phi, p)
    pair_panels({method: cache[method, pair]}, index=index)
    plt.show()


# the classical methods of section 4 too (each takes seconds on its first pair: the figure waits for it)
methods = list(nets) + [m for m in baselines if not available(m)]
interactive(view, method=widgets.Dropdown(options=methods, value="ofg", description="method"),
            pair=widgets.IntSlider(min=0, max=min(n_eval, len(val)) - 1, value=pair_index, description="pair"),
            index=widgets.IntSlider(min=0, max=val[0]["fixed"].shape[1] - 1, value=val[0]["fixed"].shape[1] // 2,
                                    description="slice"));

# %% [markdown]
# ## 4. Table 1 on the embedded cohort: classical methods beside the networks
# The paper's Table 1 puts two classical methods (SyN, NiftyReg) above the networks. Ours runs them for real on
# the same pairs (`ofg_lib.baselines`: each toolkit's transform is read back as our voxel displacement, so
# `evaluate` scores it like a network), adds elastix (a B-spline method the paper did not run) and our own instance
# optimizer run to convergence from the identity (a few hundred Adam steps, coarse to fine: the optimisation-only
# row, and the ceiling that OFG's ten steps per training step approach). Settings are in the module's docstring:
# SyN with mean squares and 160/80/40 iterations as the paper; NiftyReg (SSD, 3 levels x 300 iterations as the
# paper) only where its binaries are on the PATH, otherwise the row says "not installed".
#
# First, the check that each conversion is right: our `warp` of the moving labels by the returned field against
# the toolkit's own nearest-neighbour resampling of them, on the first pair (with each toolkit's shortened
# schedule `baselines.QUICK`: the conventions do not depend on how long it optimises).

# %%
from ofg_lib.transform import warp

pair = {k: v[None] for k, v in val[0].items() if k != "id"}
for method in baselines:
    if available(method) or method == "instance":
        continue
    disp_m, theirs = register_classical(method, pair["moving"], pair["fixed"], threads, pair["moving_seg"], **QUICK[method])
    ours = warp(pair["moving_seg"], disp_m, mode="nearest")
    labelled = (ours > 0) | (theirs > 0)
    agreement = float((ours[labelled] == theirs[labelled]).double().mean())
    print(f"{method:>9s}: our warp and the toolkit's own resampling agree on {100 * agreement:.2f} % of labelled voxels")
    assert agreement >= 0.98

# %% [markdown]
# The table: the first `report_pairs` validation pairs for every method; the networks are notebook 05's runs,
# every seed it trained, labelled with their size and training steps (under `make reproduce` a small volume and a
# few hundred steps: not the paper's networks at the paper's budget). Time per pair is on this machine's CPU for
# the classical methods and on `device` for a network's forward pass. The paper's IXI numbers sit in their own
# columns: different data, for orientation only.

# %%
n_rep = min(report_pairs, len(val))
seeds_found = sorted(int(p.name.rsplit("seed", 1)[1]) for p in (resolve(run_dir) / "compare").glob("ofg-seed*")
                     if RunFolder(p).holds_run())
classical, evals = [], {}
for method in baselines:
    row, r = classical_row(method, val, n_rep, threads=threads, absent=absent)
    classical.append(row)
    print(f"{method:>9s}: {row['status']}" + (f", {row['infer_s']:.1f} s per pair" if r else ""))
    if r:
        evals[method] = r
networks = []
for folder in [run_dir, *extra_run_dirs]:  # extra runs: trained on the same dataset and size, same seeds
    row, r = network_row(resolve(folder), val, n_rep, seeds_found, dev, absent)  # labelled "model (size, steps)"
    networks.append(row)
    if folder == run_dir:
        evals = {"unsupervised": r["unsupervised"], "ofg": r["ofg"], **evals}
size_text = "x".join(str(v) for v in cfg["img_size"])
notes = (f"Embedded cohort ({cfg['dataset']}, {size_text}), first {n_rep} validation pair(s); networks: seeds "
         f"{seeds_found}, Dice ± std over seeds x pairs; classical: ± std over pairs. Folds in % of voxels. "
         f"Inference on {dev} for the networks, CPU ({threads} threads) for the classical methods. The paper's "
         "columns are its IXI rows (real data, 160x192x224, 500 epochs on a GPU): not comparable number for number.")
paths = write_report(classical + networks, resolve(report_dir), notes=notes)
display(Markdown(paths["md"].read_text()))
assert all(r["status"] == "ok" or r["status"].startswith("not installed") for r in classical + networks)

# %% [markdown]
# Per-label Dice of every method (the paper's Fig. 8), and one column per method on the first pair (Fig. 4/9):
# warped image, difference to the fixed image, deformation grid and Jacobian determinant (folds in black).

# %%
dice_boxplot({k: r["dice_per_label"] for k, r in evals.items()}, val.label_names)
plt.tight_layout()
plt.show()
with torch.no_grad():
    x = models.pair_input(pair["moving"], pair["fixed"]).to(dev)
    shown = {s: net(x).float().cpu() for s, (net, _) in nets.items()}
shown.update({k: r["first_disp"] for k, r in evals.items() if "first_disp" in r})
method_columns({s: field_maps(disp, pair) for s, disp in shown.items()})
plt.show()

# %% [markdown]
# ## Summary
# - The same network evaluated the paper's way: per-label Dice of nearest-neighbour-warped labels, folds over
#   all voxels (Table 1's code) and over the non-background voxels (the paper's text), SDlogJ; and, on the embedded cohort, the error against the true displacement,
#   which the public datasets cannot give.
# - Inference is a single forward pass for both strategies: OFG's optimizer costs training time only.
# - The classical methods run for real on the same pairs, in the same convention (the agreement check above), and
#   `REPORT.md` puts every method in Table 1's layout beside the paper's IXI numbers.
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
# 5. *Predict, then run.* SyN here uses mean squares (as the paper), elastix mutual information. Each subject has
#    its own bias field and gamma: which of the two should suffer from it? Run
#    `classical_row("syn", val, 2, syn_metric="CC")` (ANTs' local cross-correlation) and compare. Hint: look at
#    the |warped - fixed| row of the last figure first.
