# %% [markdown]
# # 02 · The spatial transformer: warping by a displacement field
#
# **What this teaches.** How a registration network's output, a dense displacement field, moves an image:
# voxel units and axis order, (tri)linear and nearest-neighbour sampling, zero padding, composing two
# fields, and the Jacobian determinant that tells where a field folds.
#
# **Cost.** About 15 s on a laptop CPU at the default size; the `gpu` profile runs it at 160x192x224 in
# seconds on one GPU. Code: `ofg_lib/transform.py`, `ofg_lib/metrics.py`, `ofg_lib/viz.py`.

# %% tags=["parameters"]
size = [64, 80, 96]  # volume size (D, H, W); the paper's IXI/OASIS volumes are 160x192x224
rms = 3.0  # RMS size of the random smooth displacement, voxels
seed = 0  # seeds the random fields
device = "auto"  # "auto" uses a GPU when there is one

# %%
size = tuple(size)

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
from scipy.ndimage import map_coordinates

import ofg_lib
from ofg_lib.data import mni_template, random_smooth_disp
from ofg_lib.metrics import dice, fold_fraction, jacobian_det
from ofg_lib.transform import compose, identity_grid, warp
from ofg_lib.viz import plot_grid, show_jacobian, show_overlay, show_slices

ofg_lib.seed_all(seed)
dev = ofg_lib.device(device)
print("device:", dev)

# %% [markdown]
# ## 1. Conventions: voxels, axis order, backward warping
# Volumes are `(batch, channel, D, H, W)`. A displacement `disp` has three channels in **voxels**: channel
# *i* moves along axis *i* of the volume. Warping samples the moving image at the identity plus the
# displacement,
#
# $$(I_m \circ \phi)(p) = I_m\big(p + u(p)\big), \qquad \phi(p) = p + u(p),$$
#
# so `warp(image, disp)[p]` reads `image` at `p + disp[:, :, p]`. Samples between voxels are interpolated
# (trilinear for images, nearest for label maps) and samples outside the volume read zero. This is the
# convention of the OFG, VoxelMorph and TransMorph code (`grid_sample` with `align_corners=True`).
#
# A constant displacement of +2 along the last axis therefore shifts the content 2 voxels toward the *start*
# of that axis.

# %%
image, labels = mni_template(size)
image, labels = image.to(dev), labels.to(dev)
shift = torch.zeros(1, 3, *size, device=dev)
shift[:, 2] = 2.0
shifted = warp(image, shift)
assert torch.allclose(shifted[..., :-2], image[..., 2:], atol=1e-4)  # float32 grid rounding
print("identity grid channel 2, first row:", identity_grid(size)[0, 2, 0, 0, :6].tolist())

# %% [markdown]
# ## 2. Warping an image and its labels
# A random smooth field (Gaussian control points, upsampled) stands in for a network's prediction. Label maps
# are warped with `mode="nearest"` so that they stay labels; this is how the paper evaluates Dice.

# %%
disp = random_smooth_disp(size, rms, seed=seed).to(dev)
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
print("Dice(template labels, warped labels), labels 1-12:", np.round(tissue_dice.numpy(), 2))

# %% [markdown]
# ## 3. Agreement with an independent reference
# `scipy.ndimage.map_coordinates` with `order=1` and `mode="grid-constant"` (zero outside, interpolating
# toward it within one voxel) computes the same thing in float64. The unit tests check this at small
# sizes; here is the check on the template.

# %%
coords = identity_grid(size, dtype=torch.float64)[0].numpy() + disp[0].double().cpu().numpy()
ref = map_coordinates(image[0, 0].double().cpu().numpy(), coords, order=1, mode="grid-constant", cval=0.0)
err = np.abs(warped[0, 0].double().cpu().numpy() - ref).max()
print(f"max |ofg_lib.warp - scipy| = {err:.2e}")
assert err < 1e-5

# %% [markdown]
# ## 4. Composing fields
# Warping by `a` and then by `b` samples `image(x + b(x) + a(x + b(x)))`, the composition `compose(a, b)`.
# One warp by the composed field interpolates once instead of twice, which is why registration code composes
# fields rather than warping repeatedly.

# %%
a = random_smooth_disp(size, rms / 2, seed=seed + 1).to(dev)
b = random_smooth_disp(size, rms / 2, seed=seed + 2).to(dev)
once, twice = warp(image, compose(a, b)), warp(warp(image, a), b)
inner = (slice(None), slice(None)) + (slice(4, -4),) * 3
print("mean |once - twice| inside: %.4f (image range 0..1)" % (once - twice)[inner].abs().mean())

# %% [markdown]
# ## 5. The Jacobian determinant and folding
# $\det J_\phi(p) = \det(I + \nabla u(p))$ measures local volume change: 1 keeps volume, below 1 shrinks,
# above 1 grows, and $\le 0$ means the field **folds** (the map is no longer one-to-one there). The paper
# reports the share of non-background voxels with $|J_\phi| \le 0$. Derivatives are central differences.
#
# Whether a field folds depends on how it was made. Smooth noise used directly as a displacement folds once
# it is large compared with its correlation length; the same noise used as a *velocity* and integrated
# (scaling and squaring, $\phi = \exp(v)$) gives an invertible deformation at any size. The embedded cohort
# (notebook 01) uses the second kind, so its true deformations never fold; a network's raw output is of the
# first kind, which is why the paper counts folds.

# %%
brain = labels[:, 0] > 0
for r in (1.0, 3.0, 6.0, 12.0):
    direct = random_smooth_disp(size, r, seed=seed, invertible=False).to(dev)
    integrated = random_smooth_disp(size, r, seed=seed).to(dev)
    print(f"RMS {r:5.1f} voxels: folds in {100 * fold_fraction(direct, brain):6.3f} % of brain voxels as a "
          f"displacement, {100 * fold_fraction(integrated, brain):6.3f} % integrated from a velocity")

# %%
big = random_smooth_disp(size, 12.0, seed=seed, invertible=False).to(dev)
det = jacobian_det(big)
k = size[0] // 2
fig, axes = plt.subplots(1, 2, figsize=(9, 4))
plot_grid(big[0, 1:, k].cpu(), axes[0], step=3)
axes[0].set_title("deformed grid (slice %d, axes H, W)" % k)
im = show_jacobian(det[0, k].cpu(), axes[1])
axes[1].set_title("det J (folds in black)")
fig.colorbar(im, ax=axes[1], fraction=0.046)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Summary
# - `warp(image, disp)` samples at identity + disp, voxels, channel *i* along axis *i*, zeros outside;
#   `mode="nearest"` for labels.
# - It agrees with scipy's `map_coordinates` to float precision.
# - Composition interpolates once; the Jacobian determinant shows where a field folds, and `fold_fraction`
#   is the paper's $\%|J_\phi| \le 0$ (pass the brain mask, as the paper counts non-background voxels).
#
# Next: notebook 03 builds the similarity that the optimizer minimises, LNCC.
