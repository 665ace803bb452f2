# %% [markdown]
# # 02 · The spatial transformer: warping by a displacement field
#
# **What this teaches.** How a registration network's output, a dense displacement field, moves an image:
# voxel units and axis order, (tri)linear and nearest-neighbour sampling, zero padding, composing two
# fields, and the Jacobian determinant that tells where a field folds (with a slider to make it fold).
#
# **Cost.** About 15 s on a laptop CPU at the default size; the `gpu` profile runs it at 160x192x224 in
# seconds on one GPU. Code: `ofg_lib/transform.py`, `ofg_lib/metrics.py`, `ofg_lib/viz/fields.py`.

# %% tags=["parameters"]
img_size = [64, 80, 96]  # volume size (D, H, W); the paper's IXI/OASIS volumes are 160x192x224
rms = 3.0  # RMS size of the random smooth displacement, voxels
fold_rms = 0.75  # RMS of section 5's folding example (where its slider starts), in correlation lengths
seed = 0  # seeds the random fields
device = "auto"  # "auto" uses a GPU when there is one

# %%
import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Markdown, display
from scipy.ndimage import map_coordinates

import ofg_lib
from ofg_lib.data import mni_template, random_smooth_disp
from ofg_lib.evaluate import field_maps
from ofg_lib.metrics import dice, fold_fraction, jacobian_det
from ofg_lib.transform import compose, identity_grid, warp
from ofg_lib.viz import interactive, show_folds, show_overlay, show_slices

img_size = tuple(img_size)
ofg_lib.seed_all(seed)
dev = ofg_lib.device(device)
print("device:", dev)

# %% [markdown]
# ## 1. Conventions: voxels, axis order, backward warping
# Volumes are `(batch, channel, D, H, W)`. A displacement `disp` has three channels in **voxels**: channel
# *i* moves along axis *i* of the volume (0 along D, 1 along H, 2 along W). Warping samples the `moving` image
# at the identity plus the displacement,
#
# $$\text{warped}(p) = (I_m \circ \phi)(p) = I_m\big(p + u(p)\big), \qquad \phi(p) = p + u(p),$$
#
# so `warp(image, disp)[p]` reads `image` at `p + disp[:, :, p]`. Samples between voxels are interpolated
# (trilinear for images, nearest for label maps) and samples outside the volume read zero. This is the
# convention of the OFG, VoxelMorph and TransMorph code (`grid_sample` with `align_corners=True`).
#
# A constant displacement of +2 along the last axis therefore shifts the content 2 voxels toward the *start*
# of that axis: $\text{warped}(d, h, w) = I_m(d, h, w + 2)$.

# %%
image, labels = mni_template(img_size)
image, labels = image.to(dev), labels.to(dev)
shift = torch.zeros(1, 3, *img_size, device=dev)
shift[:, 2] = 2.0
shifted = warp(image, shift)
assert torch.allclose(shifted[..., :-2], image[..., 2:], atol=1e-4)  # float32 grid rounding
print("identity grid channel 2, first row:", identity_grid(img_size)[0, 2, 0, 0, :6].tolist())

# %% [markdown]
# ## 2. Warping an image and its labels
# A random smooth field (Gaussian control points, upsampled) stands in for a network's prediction. Label maps
# are warped with `mode="nearest"` so that they stay labels; this is how the paper evaluates Dice,
# $\mathrm{Dice}_\ell = 2|A_\ell \cap B_\ell| / (|A_\ell| + |B_\ell|)$ for the voxels $A_\ell$, $B_\ell$ of
# label $\ell$ in the two label maps.

# %%
disp = random_smooth_disp(img_size, rms, seed=seed).to(dev)
warped = warp(image, disp)
warped_labels = warp(labels, disp, mode="nearest")
print("largest displacement: %.1f voxels" % disp.norm(dim=1).max())
fig, axes = plt.subplots(1, 4, figsize=(13, 3.4))
show_slices({"moving": image, "warped": warped, "difference": (warped - image).abs()}, axes=axes[:3])
show_overlay(warped, warped_labels, axes[3])
axes[3].set_title("warped labels")
plt.tight_layout()
plt.show()
tissue_dice = dice(labels, warped_labels, range(1, 13))
print("Dice(template labels, warped labels), labels 1-12:", np.round(tissue_dice.cpu().numpy(), 2))

# %% [markdown]
# ## 3. Agreement with an independent reference
# `scipy.ndimage.map_coordinates` with `order=1` and `mode="grid-constant"` (zero outside, interpolating
# toward it within one voxel) computes the same thing in float64. The unit tests check this at small
# sizes; here is the check on the template. How close is close enough? `grid_sample` works in float32 on
# coordinates normalised to [-1, 1] and maps them back to voxels, and each rounding there is relative to the
# coordinate, up to the side length n: a sample point moves by up to about 2 n eps voxels (eps = 1.2e-7, the
# float32 spacing at 1), and the intensity (at most 1 per voxel of slope here) with it. So the bound grows with
# the volume: 2.7e-5 at 112 voxels, 5.3e-5 at the paper's 224 (on an H200 at 160x192x224 this cell printed
# 1.62e-05: `benchmarks/results/gpu_run_h200_session2.log`).

# %%
coords = identity_grid(img_size, dtype=torch.float64)[0].numpy() + disp[0].double().cpu().numpy()
ref = map_coordinates(image[0, 0].double().cpu().numpy(), coords, order=1, mode="grid-constant", cval=0.0)
err = np.abs(warped[0, 0].double().cpu().numpy() - ref).max()
tol = 2 * np.finfo(np.float32).eps * max(img_size)
print(f"max |ofg_lib.warp - scipy| = {err:.2e} (float32 bound at this size: {tol:.1e})")
assert err < tol

# %% [markdown]
# ## 4. Composing fields
# Warping by `a` and then by `b` reads $I_m\big(p + b(p) + a(p + b(p))\big)$: one warp by the composed
# displacement
#
# $$u_{a \circ b}(p) = b(p) + a\big(p + b(p)\big),$$
#
# which is one line, `b + warp(a, b)` (a displacement is warped like a 3-channel image), and is what
# `compose(a, b)` returns. One warp by the composed field interpolates once instead of twice, which is why
# registration code composes fields rather than warping repeatedly.

# %%
a = random_smooth_disp(img_size, rms / 2, seed=seed + 1).to(dev)
b = random_smooth_disp(img_size, rms / 2, seed=seed + 2).to(dev)
assert torch.equal(b + warp(a, b), compose(a, b))
once, twice = warp(image, compose(a, b)), warp(warp(image, a), b)
inner = (slice(None), slice(None)) + (slice(4, -4),) * 3
print("mean |once - twice| inside: %.4f (image range 0..1)" % (once - twice)[inner].abs().mean())

# %% [markdown]
# ## 5. The Jacobian determinant and folding
# The Jacobian of $\phi(p) = p + u(p)$ is the identity plus the gradient of the displacement; each
# derivative is a central difference (one-sided at the border, as `np.gradient`):
#
# $$[J_\phi(p)]_{ij} = \delta_{ij} + \frac{\partial u_i}{\partial x_j}(p), \qquad
# \frac{\partial u_i}{\partial x_j}(p) \approx \frac{u_i(p + e_j) - u_i(p - e_j)}{2}.$$
#
# Its determinant $|J_\phi(p)|$ measures local volume change: 1 keeps volume, below 1 shrinks, above 1 grows.
# Where $|J_\phi(p)| \le 0$ the field **folds**: the map turns space inside out there and is no longer
# one-to-one. The paper reports the share of non-background voxels $\Omega$ that fold,
#
# $$\%|J_\phi| \le 0 \;=\; 100 \cdot \frac{\big|\{p \in \Omega : |J_\phi(p)| \le 0\}\big|}{|\Omega|}.$$
#
# Both fit in a few lines of torch (`torch.gradient` is `np.gradient`), which agree with
# `ofg_lib.metrics.jacobian_det` and `fold_fraction`. The field is smooth random noise with a correlation
# length of `spacing` voxels (a quarter of the smallest side), used directly as a displacement of RMS
# `fold_rms * spacing` voxels: large enough to fold.

# %%
spacing = min(img_size) // 4  # correlation length of this section's random fields, voxels
big = random_smooth_disp(img_size, fold_rms * spacing, spacing, seed=seed, invertible=False).to(dev)
grads = torch.gradient(big[0], dim=(1, 2, 3))  # grads[j][i] = d u_i / d x_j, shape (3, D, H, W) each
J = torch.stack(grads, dim=-1).movedim(0, -2) + torch.eye(3, device=dev)  # (D, H, W, 3, 3), J[..., i, j]
det = torch.linalg.det(J)
brain = labels[:, 0] > 0
folds = (det <= 0) & brain[0]
assert torch.allclose(det, jacobian_det(big)[0], atol=1e-4)
assert abs(int(folds.sum()) / int(brain.sum()) - fold_fraction(big, brain)) < 1e-12
print(f"det J from {float(det.min()):.2f} to {float(det.max()):.2f}; {int(folds.sum())} of {int(brain.sum())} "
      f"brain voxels fold ({100 * fold_fraction(big, brain):.2f} %)")

# %% [markdown]
# Whether a field folds depends on how it was made. Smooth noise used directly as a displacement folds once
# it is large compared with its correlation length: the derivative $\partial u_i / \partial x_i$ grows like
# RMS / `spacing`, and a fold needs it below $-1$ somewhere. The same noise used as a *velocity* and
# integrated (scaling and squaring, $\phi = \exp(v)$: compose $v / 2^7$ with itself 7 times) moves every point
# along a smooth flow, which cannot tear or fold space; only discretisation errors can, at the largest
# fields on a coarse grid. The embedded cohort (notebook 01) uses the second kind, so its true deformations
# do not fold; a network's raw output is of the first kind, which is why the paper counts folds. The sweep,
# RMS from 1/8 to 1 correlation length:

# %%
rms_values = [spacing * k / 8 for k in range(1, 9)]
sweep = {}  # name: (RMS values, % of brain voxels folded)
for name, invertible in [("displacement", False), ("integrated velocity", True)]:
    fields = (random_smooth_disp(img_size, r, spacing, seed=seed, invertible=invertible).to(dev) for r in rms_values)
    sweep[name] = (rms_values, [100 * fold_fraction(field, brain) for field in fields])
print("RMS (voxels)        ", "  ".join(f"{r:6.2f}" for r in rms_values))
for name, (_, pct) in sweep.items():
    print(f"{name:20s}", "  ".join(f"{p:6.2f}" for p in pct), " % of brain voxels folded")
first = next((r for r, p in zip(*sweep["displacement"]) if p > 0), None)
where = (f"first folds at RMS **{first:.1f} voxels**, {first / spacing:.2f} of its correlation length" if first
         else f"does not fold up to RMS {rms_values[-1]:.1f} voxels")
display(Markdown(f"As a displacement the field {where}; integrated from a velocity it folds in at most "
                 f"**{max(sweep['integrated velocity'][1]):.3f} %** of brain voxels over the same range."))

# %% [markdown]
# Now make one fold yourself. The slider sets the RMS size, the toggle how the field is made; the panels are
# the deformed grid of the middle slice, its Jacobian determinant (folds in black, the title counts them in
# the whole brain) and the sweep above with the current field as a star. In JupyterLab the controls redraw
# the figure; an executed copy shows the field at RMS `fold_rms * spacing`, made directly as a displacement.

# %%
def fold_view(rms, invertible):
    field = random_smooth_disp(img_size, rms, spacing, seed=seed, invertible=invertible).to(dev)
    show_folds(field_maps(field, mask=brain), sweep=sweep, rms=rms)
    plt.show()


rms_slider = widgets.FloatSlider(value=fold_rms * spacing, min=spacing / 8, max=spacing, step=spacing / 8,
                                 description="RMS (voxels)")
made_as = widgets.ToggleButtons(options=[("displacement", False), ("integrated velocity", True)], value=False,
                                description="made as")
interactive(fold_view, rms=rms_slider, invertible=made_as);

# %% [markdown]
# ## Summary
# - `warp(image, disp)` samples at identity + disp, voxels, channel *i* along axis *i*, zeros outside;
#   `mode="nearest"` for labels.
# - It agrees with scipy's `map_coordinates` to float precision (section 3 asserts it).
# - Composition, $u_{a\circ b} = b + a \circ (\mathrm{id} + b)$, interpolates once; the Jacobian determinant
#   $|I + \nabla u|$ shows where a field folds, and `fold_fraction` is the paper's $\%|J_\phi| \le 0$ (pass the
#   brain mask, as the paper counts non-background voxels).
# - Smooth noise folds once it is large against its correlation length; integrated from a velocity it does not
#   (but for discretisation error at the largest fields).
#
# Next: notebook 03 builds the similarity that the optimizer minimises, LNCC.

# %% [markdown]
# ### Exercises
# 1. *Predict, then run.* In section 1, put the shift on the first axis (`shift[:, 0] = 2.0`). Which slices
#    must the `assert` compare now? Hint: `warped(p) = moving(p + disp(p))`, so the content moves toward the
#    start of axis 0: compare `shifted[:, :, :-2]` with `image[:, :, 2:]`.
# 2. *Predict, then run.* Set `rms = 6.0`. Do the Dice scores of section 2 go up or down, and which labels
#    suffer most? Hint: a larger displacement moves the labels further from where they were; thin structures
#    lose overlap first.
# 3. *Predict, then run.* In section 4, replace `compose(a, b)` by `compose(b, a)`, then by the plain sum
#    `a + b`. Which of the three lies closest to the image warped twice (by `a`, then by `b`)? Hint:
#    composition is not commutative, $u_{a\circ b}(p) = b(p) + a(p + b(p))$; the plain sum reads `a` at $p$
#    instead of at the moved point $p + b(p)$, and `compose(b, a)` applies the two fields in the wrong order.
# 4. *Predict, then run.* With the slider (or `fold_rms`), find the smallest RMS at which the displacement
#    folds. Then halve `spacing` in section 5: where does folding start now, in voxels? Hint: the derivatives
#    grow like RMS / spacing, so the fold threshold is a fixed fraction of the correlation length.
# 5. *Predict, then run.* Warp `labels.float()` with the default trilinear mode and count
#    `torch.unique(...).numel()`. How many values do you expect, and why does the paper warp labels with
#    nearest neighbour? Hint: interpolating between label 2 and label 5 gives 3.5, a label that does not exist.
