# %% [markdown]
# # 01 · Data: the embedded cohort, and the paper's IXI, OASIS and LPBA40
#
# **What this teaches.** What a registration pair is, which way it goes and which labels are scored, for the
# three datasets of the paper; and the embedded cohort that every other notebook uses: real anatomy (the
# MNI152 template shipped by `nilearn`) with known deformations, so registration error can be measured against
# ground truth, which none of the public datasets allows.
#
# **Cost.** About 15 s on a laptop CPU at 80x96x112 (generating 20 validation subjects once; later runs read
# the cache in `data/`); the `gpu` profile generates 160x192x224 subjects, about 2 s each, on the CPU.
# Code: `ofg_lib/data/`.

# %% tags=["parameters"]
img_size = [80, 96, 112]  # volume size (D, H, W) of the embedded cohort; the paper's: 160x192x224
seed = 0  # cohort seed: the same seed always gives the same subjects
n_show = 3  # subjects to show
ixi_root = ""  # folder of TransMorph's IXI release (atlas.pkl, Train/, Val/, Test/); empty: skip
oasis_root = ""  # folder of neurite-oasis (OASIS_OAS1_*_MR1/) or TransMorph's OASIS pkl; empty: skip
lpba40_root = ""  # folder with the LPBA40 S??.*.nii.gz files; empty: skip

# %%
img_size = tuple(img_size)

# %%
import time

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import display
from torch.utils.data import DataLoader

import ofg_lib
from ofg_lib.data import IXI, LPBA40, OASIS, Embedded
from ofg_lib.metrics import fold_fraction
from ofg_lib.viz import interactive, show_overlay

ofg_lib.seed_all(seed)

# %% [markdown]
# ## 1. The three datasets of the paper, and their contracts
# The published code leaves these details implicit, and they decide the numbers:
#
# | | IXI | OASIS | LPBA40 |
# |---|---|---|---|
# | files | TransMorph's `atlas.pkl`, `Train/ Val/ Test/*.pkl` of `(image, label)` | neurite-oasis `aligned_norm.nii.gz`, `aligned_seg35.nii.gz` (or TransMorph's pkl) | `S??.*.nii.gz` and `S??.delineation.structure.label.nii.gz` |
# | size | 160x192x224 | 160x192x224 | 160x192x160 |
# | direction | atlas (moving) → subject (fixed) | subject → subject | subject (moving) → atlas S01 (fixed) |
# | split | 403 / 58 / 115 (OFG sampled 200 / 20) | Learn2Reg 2021: val 438-457 as 19 consecutive pairs | 30 train / 9 val / 1 atlas |
# | labels scored | 30 VOIs of 46 remapped aseg codes | 1..35 | 54 (181, 182 excluded) |
# | intensities | [0, 1] as released | as released | min-max to [0, 1] by our loader (the published loader does not normalise: `normalize=False`, config `lpba40_normalize: false`) |
# | training augmentation (published) | atlas and subject flipped together along each axis at random | none | flipped together, as IXI |
# | training pairs (published) | `subset="ofg"`: 200 of the training files, `random.seed(42)` | `subset="ofg"`: 200 training subjects, `random.seed(42)`; random partner each item, two updates per pair (x→y, then y→x) | all 30 |
#
# The config keys that select these in training: `subset`, `augment` (`flip` by default for IXI and LPBA40,
# as the published `train.py`; `none` elsewhere), `two_way` (default for OASIS), `lpba40_normalize`.
# `ofg_lib.data.from_config(config, split)` builds a run's dataset from its config in one place.
#
# Every loader returns the same item: `moving`, `fixed` (float32, `(1, D, H, W)`), `moving_seg`, `fixed_seg`
# (int64), and an `id`; each dataset has `labels` (the scored values) and `label_names`.

# %% [markdown]
# ## 2. The embedded cohort
# The atlas is the template. Each subject is the atlas warped by a random smooth *invertible* deformation (a
# random stationary velocity field $v$ integrated by scaling and squaring, notebook 02:
# $\phi = \exp(v) \approx (\mathrm{id} + v/2^K)^{\circ 2^K}$, i.e. start from $u_0 = v/2^K$ and compose
# $u_{k+1} = u_k + u_k \circ (\mathrm{id} + u_k)$ $K$ times), then given a smooth bias field, a random gamma and
# noise, as a different scan of the same anatomy would. The true displacement is
# kept: `warp(moving, disp_true)` has the subject's anatomy. Subjects are drawn from (seed, split, index),
# generated on first use and cached under `data/` with a manifest; a new generator version regenerates them.
# Split: 200 train, 20 val, 40 test subjects.

# %%
val = Embedded("val", img_size=img_size, seed=seed)
t0 = time.perf_counter()
val.build()
print(f"{len(val)} validation subjects at {img_size}: {time.perf_counter() - t0:.1f} s "
      f"(generated once, then read from {val.folder.name}/)")
print("RMS of the true deformations: %.2f voxels" % val.rms)

# %%
fig, axes = plt.subplots(n_show, 4, figsize=(13, 3.2 * n_show), squeeze=False)
for row, i in enumerate(range(n_show)):
    item = val[i]
    for col, axis in enumerate((0, 1, 2)):
        show_overlay(item["fixed"], item["fixed_seg"], axes[row, col], axis=axis)
    axes[row, 3].imshow(item["disp_true"].norm(dim=0)[img_size[0] // 2].T, origin="lower", cmap="viridis")
    axes[row, 3].axis("off")
    axes[row, 0].set_title(f"{item['id']}: fixed + labels")
    axes[row, 3].set_title("|disp_true| (voxels)")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 3. Labels
# Twelve labels: the template's grey- and white-matter probability maps, split by hemisphere and by a coronal
# cut (anterior/posterior), the CSF and ventricles by hemisphere, and the posterior fossa (cerebellum and
# brainstem). They are geometric splits of tissue maps, **not FreeSurfer labels**, so Dice values here are
# not comparable with the paper's; they behave the same way (nearest-neighbour warping, one Dice per label).

# %%
atlas_seg = val[0]["moving_seg"]
counts = torch.bincount(atlas_seg.flatten(), minlength=13)
for value, name in zip(val.labels, val.label_names):
    print(f"{value:3d}  {name:42s} {int(counts[value]):8d} voxels")
assert len(val.labels) >= 10 and all(counts[v] > 0 for v in val.labels)

# %% [markdown]
# ## 4. How large are the deformations?
# Residual non-linear differences between affinely aligned adult brains are a few millimetres with maxima
# around a centimetre; the cohort's deformations are sized to match (RMS 2.5 voxels at 160x192x224, scaled
# with the volume size). None folds, since each is integrated from a velocity.

# %%
mags = torch.cat([val[i]["disp_true"].norm(dim=0)[val[i]["fixed_seg"][0] > 0] for i in range(len(val))])
q = torch.quantile(mags[torch.randperm(len(mags))[:200000]], torch.tensor([0.5, 0.95, 0.99]))
print("displacement in the brain: median %.2f, 95th %.2f, 99th %.2f, max %.2f voxels"
      % (q[0], q[1], q[2], mags.max()))
print("folds in the true deformations: %g" % max(fold_fraction(val[i]["disp_true"][None]) for i in range(len(val))))
plt.hist(mags.numpy(), bins=60, density=True)
plt.xlabel("|disp_true| in the brain (voxels)")
plt.ylabel("density")
plt.show()

# %% [markdown]
# ## 5. A slice slider
# Move through the fixed image and its labels (in JupyterLab; an executed copy shows the middle slice).
# `ofg_lib.viz.interactive` draws the figure at the controls' values first, so the executed copy keeps it.

# %%
item = val[0]


def show(axis=0, index=img_size[0] // 2):
    index = min(index, img_size[axis] - 1)
    where = [s // 2 for s in img_size]
    where[axis] = index
    fig, ax = plt.subplots(1, 2, figsize=(8, 4))
    show_overlay(item["moving"], item["moving_seg"], ax[0], axis=axis, index=where)
    show_overlay(item["fixed"], item["fixed_seg"], ax[1], axis=axis, index=where)
    ax[0].set_title("moving (atlas)")
    ax[1].set_title("fixed (subject)")
    plt.show()


axis_menu = widgets.Dropdown(options=[0, 1, 2], value=0, description="axis")
slice_slider = widgets.IntSlider(min=0, max=img_size[0] - 1, value=img_size[0] // 2, description="slice")


def bound_slider(change):
    """The slice slider runs over the chosen axis's slices only (and starts in its middle)."""
    slice_slider.max = img_size[change["new"]] - 1
    slice_slider.value = img_size[change["new"]] // 2


axis_menu.observe(bound_slider, names="value")
interactive(show, axis=axis_menu, index=slice_slider);

# %% [markdown]
# ## 6. Batches, and the real datasets
# All datasets read one file per item, so a `DataLoader` with worker processes streams them (a full IXI split
# is over 10 GB as float32). Point the parameters above (or `OFG_IXI`, `OFG_OASIS`, `OFG_LPBA40`) at your
# copies to look at them here; the loaders never write next to your data.

# %%
loader = DataLoader(val, batch_size=2, num_workers=2, shuffle=False)
batch = next(iter(loader))
print({k: tuple(v.shape) for k, v in batch.items() if isinstance(v, torch.Tensor)})

for name, cls, root in (("IXI", IXI, ixi_root), ("OASIS", OASIS, oasis_root), ("LPBA40", LPBA40, lpba40_root)):
    if not root:
        print(f"{name}: no folder given, skipped")
        continue
    ds = cls(root, "val")
    item = ds[0]
    print(f"{name}: {len(ds)} validation pairs, {item['id']}, image {tuple(item['fixed'].shape)}, "
          f"{len(ds.labels)} scored labels, e.g. {ds.label_names[:3]}")

# %% [markdown]
# ## 7. Harder cohorts, and the 2-D track
# The default cohort is easy on purpose (every subject is the atlas, smoothly deformed, with nearly its contrast).
# Notebook 08 asks when OFG helps, so the cohort has options that make it harder, each a config key of a run
# (`ofg_lib.train.TrainConfig`) and an argument of `Embedded`; all are off by default:
#
# | config key | `Embedded` argument | what it does |
# |---|---|---|
# | `img_size: [H, W]` | `img_size=(H, W)` | the 2-D track: one axial slice (MNI z = +10 mm), deformed in-plane; ten labels |
# | `embedded_pairs: subject` | `pairs="subject"` | subject-to-subject pairs (the OASIS setting); the truth is composed |
# | `embedded_contrast: c` | `contrast=c` | each subject's grey matter, white matter and CSF get their own intensity |
# | `embedded_rms`, `embedded_rms_jitter`, `embedded_fine_rms` | `rms`, `rms_jitter`, `fine_rms` | larger, per-subject and multi-scale deformations |
# | `embedded_supersample: k` | `supersample=k` | subjects made on a k-times finer grid: as sharp as the atlas |
#
# Subject pairs: subject $a$ is the atlas $A$ warped by $u_a = \exp(v_a)$, so the map from the fixed subject $f$ to the
# moving subject $m$ is $(\mathrm{id}+u_m)^{-1}\circ(\mathrm{id}+u_f)$, with $(\mathrm{id}+u_m)^{-1} = \exp(-v_m)$:
# `disp_true = compose(inverse_m, u_f)` (`ofg_lib.transform.compose`). Below, one validation pair of each, in 2-D.

# %%
from ofg_lib.metrics import dice
from ofg_lib.transform import compose, warp
from ofg_lib.viz import show_cohorts

size2d = (96, 112)
plain = Embedded("val", size2d, n=1, seed=seed, cache=False)
options = {"2-D default": {}, "subject pairs": {"pairs": "subject"}, "contrast 0.5": {"contrast": 0.5},
           "large, multi-scale": {"rms": 4 * plain.rms, "rms_jitter": 0.5, "fine_rms": 2 * plain.rms},
           "supersample 2": {"supersample": 2}}
examples = {}
for name, kw in options.items():
    ds = Embedded("val", size2d, n=4, seed=seed, cache=False, **kw)
    it = ds.generate(0)
    d = float(np.nanmean(dice(it["moving_seg"][None], it["fixed_seg"][None], ds.labels).numpy()))
    examples[name] = (it, f"identity Dice {d:.2f}")
show_cohorts(examples)
plt.show()

# %% [markdown]
# **What the composed truth costs.** In atlas pairs `fixed_seg` *is* `warp(moving_seg, disp_true, "nearest")`. In
# subject pairs each subject's labels are the atlas's labels resampled once through its own map, so carrying the
# moving subject's labels by the truth resamples them a second time. The composed field itself is exact to
# interpolation (first number); the second nearest-neighbour resampling moves label boundaries by up to a voxel
# (second number: the Dice ceiling of a perfect registration is below 1 for subject pairs, as on real data).

# %%
ds = Embedded("val", size2d, n=4, seed=seed, cache=False, pairs="subject")
atlas_seg = ds.atlas()[1]
through, carried = [], []
for i in range(4):
    it, m = ds.generate(i), ds.subject(ds.partner(i))
    brain = it["fixed_seg"][None] > 0
    via_atlas = warp(atlas_seg, compose(m["disp"], it["disp_true"][None]), "nearest")
    through.append(float((via_atlas == it["fixed_seg"][None])[brain].float().mean()))
    moved = warp(it["moving_seg"][None], it["disp_true"][None], "nearest")
    carried.append(float((moved == it["fixed_seg"][None])[brain].float().mean()))
print(f"atlas labels through the composed map: {np.mean(through):.2%} of brain voxels agree with fixed_seg")
print(f"moving_seg carried by disp_true:       {np.mean(carried):.2%} (a second nearest-neighbour resampling)")

# %% [markdown]
# ## Summary
# - Every dataset yields the same item; the direction and scored labels of each follow the published code.
# - The embedded cohort is real anatomy with known, invertible deformations of realistic size and realistic
#   intensity differences, generated in seconds and cached; it needs no download.
# - Its options (2-D, subject pairs, tissue contrast, larger multi-scale deformations, supersampling) make it
#   harder without losing the ground truth; notebook 08 uses them.
#
# Next: notebook 02 explains how a displacement warps an image.
#
# ### Exercises
# 1. *Predict, then run.* Set `img_size = [40, 48, 56]`. What happens to the RMS of the true deformations printed in
#    section 2, and why? Hint: `Embedded` scales the deformation with the volume (`RMS_AT_FULL_SIZE` in
#    `ofg_lib/data/embedded.py`), so a displacement in voxels shrinks with the grid.
# 2. Build `Embedded("val", img_size, seed=1)` and compare its first subject with seed 0's. Which of `moving`,
#    `fixed`, `disp_true` change? Hint: the atlas is the moving image of every pair.
# 3. In section 4, count the folds of `disp_true` for a field made *without* integration: add
#    `ofg_lib.data.random_smooth_disp` fields of growing amplitude and find where `fold_fraction` leaves 0.
#    Hint: notebook 02, section on invertibility, does the same with a slider.
# 4. Compute the Dice of `item["moving_seg"]` against `item["fixed_seg"]` (the identity) and after
#    `warp(item["moving_seg"], item["disp_true"], "nearest")` with `ofg_lib.metrics.dice(..., val.labels)`.
#    Predict which labels gain the most before you run it. Hint: thin structures (CSF, ventricles) are the
#    most sensitive to misalignment.
