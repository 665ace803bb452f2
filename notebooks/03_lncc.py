# %% [markdown]
# # 03 · LNCC: the similarity the inner optimizer minimises
#
# **What this teaches.** Eq. 6 of the paper, local normalised cross-correlation, from the formula to a fast
# implementation: local sums over a window (first as a loop of shifted adds), why a *local* window, what the
# window size does (with a slider), the gradient derived by hand, agreement with independent references, and
# how much faster a separable box filter is than the published dense convolution.
#
# **Cost.** About 30 s on a laptop CPU at the default size (most of it timing the slow published code path);
# seconds on one GPU. Code: `ofg_lib/losses.py`; the full speed comparison is `benchmarks/bench_lncc.py`.

# %% tags=["parameters"]
img_size = [48, 56, 64]  # volume size (D, H, W) for the demonstrations and timings
window = 9  # LNCC window side (the paper: 9)
repeats = 3  # timing repeats (median reported)
seed = 0  # seeds the random fields
device = "auto"  # "auto" uses a GPU when there is one

# %%
import sys

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Markdown, display
from scipy.ndimage import uniform_filter

import ofg_lib
from ofg_lib.files import REPO
from ofg_lib.data import mni_template, random_smooth_disp
from ofg_lib.losses import box_sum, lncc
from ofg_lib.metrics import time_ms
from ofg_lib.transform import warp
from ofg_lib.viz import interactive, show_slices

img_size = tuple(img_size)
ofg_lib.seed_all(seed)
dev = ofg_lib.device(device)
image, labels = (t.to(dev) for t in mni_template(img_size))
print("device:", dev)

# %% [markdown]
# ## 1. The formula
# For every voxel $p$, take the window of $n^3$ voxels around it and compute the correlation coefficient of
# the `fixed` image $f$ and the `warped` image $w = I_m \circ \phi$ inside that window, squared:
#
# $$cc(p) = \frac{\Big(\sum_{p_i}(f(p_i)-\hat f(p))\,(w(p_i)-\hat w(p))\Big)^2}
# {\sum_{p_i}(f(p_i)-\hat f(p))^2 \;\sum_{p_i}(w(p_i)-\hat w(p))^2}$$
#
# where $\hat f(p)$, $\hat w(p)$ are the window means. Expanding the sums, everything comes from five
# **local sums** $S_f, S_w, S_{ff}, S_{ww}, S_{fw}$ (e.g. $S_{fw}(p) = \sum_{p_i} f(p_i)\,w(p_i)$, with
# $N = n^3$ terms):
#
# $$\text{cross} = S_{fw} - S_f S_w / N,\quad \text{var}_f = S_{ff} - S_f^2/N,\quad
# \text{var}_w = S_{ww} - S_w^2/N,\quad cc = \frac{\text{cross}^2}{\text{var}_f\,\text{var}_w + \varepsilon}.$$
#
# The loss averages over all $M$ voxels (of every image and channel of the batch) and negates,
#
# $$\mathcal{L}_\text{LNCC}(f, w) = -\frac{1}{M}\sum_p cc(p),$$
#
# about $-1$ at a perfect match, $0$ for unrelated images, minimised. As in the published code, windows at the
# border are zero-padded and still divided by the full $N$, and $\varepsilon = 10^{-5}$ is added to the product
# of the variances (so flat background, where both are 0, gives $cc = 0$).

# %% [markdown]
# ## 2. Local sums with a separable box filter
# A local sum is a box filter: with $r = (n-1)/2$ and zeros outside the volume,
#
# $$S_x(p) = \sum_{q:\ \|q - p\|_\infty \le r} x(q).$$
#
# The published code computes each one with a dense $n^3$ convolution: $n^3$ multiply-adds per voxel. A box is
# separable, $S_x = B_W\,B_H\,B_D\,x$, where the 1-D box along one axis is
#
# $$(B\,x)[i] = x[i] + \sum_{s=1}^{r} \big(x[i-s] + x[i+s]\big),$$
#
# so $3(n-1)$ adds per voxel instead. In code, the 1-D box is one loop of shifted, in-place adds:

# %%
def box_sum_1d(x, window):
    """Window sums along axis 0, zeros outside: shift s adds the neighbour s to the left and s to the right."""
    r = window // 2
    out = x.clone()
    for s in range(1, r + 1):
        out[s:] += x[:-s]  # out[i] += x[i - s]
        out[:-s] += x[s:]  # out[i] += x[i + s]
    return out


v = torch.arange(8.0)
print("x =", v.tolist(), " box of 3:", box_sum_1d(v, 3).tolist())
assert np.array_equal(box_sum_1d(v, 3).numpy(), np.convolve(v.numpy(), np.ones(3), mode="same"))

# %% [markdown]
# The 3-D box applies the 1-D one along D, H and W in turn. It agrees with `ofg_lib.losses.box_sum` (which
# does the same with `narrow` views, for any number of spatial axes) and with the dense convolution:

# %%
def box_sum_3d(x, window):
    for axis in (2, 3, 4):  # D, H, W of (B, C, D, H, W)
        x = box_sum_1d(x.movedim(axis, 0), window).movedim(0, axis)
    return x


x = image.double()
assert torch.allclose(box_sum_3d(x, window), box_sum(x, window))
dense = torch.nn.functional.conv3d(x, torch.ones(1, 1, window, window, window, dtype=x.dtype, device=dev),
                                   padding=window // 2)
print("max |box_sum - dense conv3d| =", float((box_sum(x, window) - dense).abs().max()))
print(f"adds per voxel at window {window}: dense {window**3}, separable {3 * (window - 1)}")

# %% [markdown]
# ## 3. Why a local window
# Intensity relations between two MR scans vary across the brain (bias fields, contrast), and what
# registration needs is a measure that asks *every neighbourhood* to line up. Below, the template against
# itself after a bias field and a gamma change (a different scanner, say), and against a misaligned copy, by
# the global correlation coefficient squared and by LNCC.

# %%
zz = torch.linspace(-1, 1, img_size[0], device=dev).view(1, 1, -1, 1, 1)
other_scanner = (image * (1 + 0.4 * zz)).clamp(0, 1) ** 0.7
misaligned = warp(image, random_smooth_disp(img_size, 3.0, seed=seed).to(dev))
scores = {}
for name, img in [("same image", image), ("bias field + gamma", other_scanner), ("misaligned", misaligned)]:
    g = float(torch.corrcoef(torch.stack([image.flatten(), img.flatten()]))[0, 1] ** 2)
    scores[name] = (g, float(lncc(image, img, window)))
    print(f"{name:20s} global cc^2 = {g:.3f}   LNCC = {scores[name][1]:.3f}")
show_slices({"fixed": image, "bias + gamma": other_scanner,
             # reduction="none": the per-voxel loss -cc; its mean is LNCC
             "cc map vs bias + gamma": -lncc(image, other_scanner, window, reduction="none"),
             "cc map vs misaligned": -lncc(image, misaligned, window, reduction="none")}, vmin=0, vmax=1)
plt.show()
lost = {k: [1 - v / ref for v, ref in zip(scores[k], scores["same image"])] for k in scores}  # share lost
assert lost["misaligned"][1] > lost["misaligned"][0]  # LNCC notices the misalignment more than global cc^2
display(Markdown(
    f"The smooth intensity change costs the global $cc^2$ {100 * lost['bias field + gamma'][0]:.0f} % and LNCC "
    f"{100 * lost['bias field + gamma'][1]:.0f} % of its value; the misalignment costs the global $cc^2$ "
    f"{100 * lost['misaligned'][0]:.0f} % but LNCC {100 * lost['misaligned'][1]:.0f} %: a local measure is "
    f"more sensitive to *where* things are. Note that the template against itself scores "
    f"{scores['same image'][1]:.2f}, not $-1$: windows in the flat background have zero variance and contribute "
    f"$cc = 0$ to the mean. That is the published definition, kept as is."))

# %% [markdown]
# ## 4. What the window size does
# Shift the template along one axis and watch LNCC as a function of the shift: small windows give a sharp
# minimum (precise, but a narrow basin that gradient steps can miss); large windows a wide, smooth basin
# (robust to large misalignment, less precise, and more work). The paper uses 9.

# %%
shifts = np.arange(-6, 6.5, 0.5)
fig, ax = plt.subplots(figsize=(6, 3.5))
for win in (3, 5, 9, 15):
    values = []
    for s in shifts:
        d = torch.zeros(1, 3, *img_size, device=dev)
        d[:, 1] = float(s)
        values.append(float(lncc(image, warp(image, d), win)))
    ax.plot(shifts, values, label=f"window {win}")
ax.set_xlabel("shift along H (voxels)")
ax.set_ylabel("LNCC (lower is better)")
ax.legend()
plt.show()

# %% [markdown]
# The maps show the same trade-off in space. With the slider, change the window and watch the local
# correlation $cc(p)$ against the two images of section 3: a small window sees fine structure and flags every
# edge the misalignment moved (and the background, where it has no variance); a large one averages over
# neighbourhoods that are partly aligned and partly not, so the map grows smooth and, in the limit of a
# window as large as the volume, tends to the global $cc^2$. In JupyterLab the slider redraws; an executed
# copy shows window 3, to compare with section 3's maps at the paper's 9.

# %%
def window_view(window):
    maps = {name: -lncc(image, img, window, reduction="none") for name, img in [("bias + gamma", other_scanner),
                                                                                ("misaligned", misaligned)]}
    show_slices({"fixed": image, "misaligned": misaligned,
                 **{f"cc vs {k}\nLNCC {-float(m.mean()):.3f}": m for k, m in maps.items()}}, vmin=0, vmax=1)
    plt.suptitle(f"window {window}: local correlation cc(p), 0 (black) to 1 (white)", y=1.08)
    plt.show()


interactive(window_view, window=widgets.IntSlider(value=3, min=1, max=31, step=2, description="window"));

# %% [markdown]
# ## 5. The gradient, by hand
# The inner optimizer needs $\partial\mathcal{L}/\partial w$ at every step. Autograd through the five local
# sums would store them all and run a transposed convolution for each; the chain rule done once by hand needs
# three box filters. $cc$ depends on $w$ only through $S_w, S_{ww}, S_{fw}$ ($S_f$ and $S_{ff}$ are constants).
#
# **Step 1**, through $cc = \text{cross}^2/\text{den}$ with $\text{den} = \text{var}_f\,\text{var}_w + \varepsilon$:
#
# $$\frac{\partial cc}{\partial\,\text{cross}} = \frac{2\,\text{cross}}{\text{den}} = 2A,\qquad
# \frac{\partial cc}{\partial\,\text{var}_w} = -\frac{\text{cross}^2\,\text{var}_f}{\text{den}^2} = -B,\qquad
# A = \frac{\text{cross}}{\text{den}},\quad B = \frac{cc\,\text{var}_f}{\text{den}}.$$
#
# **Step 2**, through $\text{cross} = S_{fw} - S_f S_w/N$ and $\text{var}_w = S_{ww} - S_w^2/N$:
#
# $$\frac{\partial cc}{\partial S_{fw}} = 2A,\qquad \frac{\partial cc}{\partial S_{ww}} = -B,\qquad
# \frac{\partial cc}{\partial S_w} = 2A\Big(-\frac{S_f}{N}\Big) - B\Big(-\frac{2 S_w}{N}\Big)
# = 2\Big(\frac{B\,S_w}{N} - A\,\hat f\Big).$$
#
# Call half of these the coefficient maps $c_0 = B S_w/N - A\hat f$, $c_1 = -B/2$, $c_2 = A$.
#
# **Step 3**, through the box filters. $S_x(p) = \sum_q K(p, q)\,x(q)$ with $K(p, q) = 1$ when $q$ lies in
# $p$'s window (and in the volume), for $x = w$, $w^2$ and $f w$, so
# $\partial S_w(p)/\partial w(q) = K(p,q)$, $\partial S_{ww}(p)/\partial w(q) = 2w(q)K(p,q)$ and
# $\partial S_{fw}(p)/\partial w(q) = f(q)K(p,q)$. Every $p$ whose window holds $q$ contributes:
#
# $$\frac{\partial\mathcal{L}}{\partial w(q)} = -\frac{2}{M}\sum_p K(p,q)\big[c_0(p) + 2w(q)\,c_1(p)
# + f(q)\,c_2(p)\big] = -\frac{2}{M}\Big[\mathcal{B}c_0 + 2w\,\mathcal{B}c_1 + f\,\mathcal{B}c_2\Big](q).$$
#
# The sum $\sum_p K(p,q)\,c(p)$ is the *adjoint* of the box filter, and since $K(p,q) = K(q,p)$ ($q$ is in
# $p$'s window exactly when $p$ is in $q$'s, zero padding included) the adjoint is the box filter itself,
# $\mathcal{B} = $ `box_sum`. That is all `_LNCC.backward` in `ofg_lib/losses.py` does: the forward pass
# stores $c_0, c_1, c_2$, the backward pass box-filters them and makes two multiply-adds. The gradient with
# respect to $f$ is the same with $f$ and $w$ exchanged.
#
# The derivation in code, checked against autograd through the formula of section 1 and against the
# library's hand-written backward, in float64. The picture shows where the gradient lives: on the edges that
# the misalignment moved, and in the background only within a window or two of the brain (a box of
# coefficients, box-filtered again); far from the brain it is exactly zero. Notebook 04 carries it through
# the warp to the displacement, $\partial\mathcal{L}/\partial u = \partial\mathcal{L}/\partial w\;\nabla w$.

# %%
f, w = image.double(), misaligned.double().requires_grad_(True)
n = window**3
s_f, s_w, s_ff, s_ww, s_fw = box_sum(torch.cat([f, w, f * f, w * w, f * w], 1), window).split(1, 1)
cross, var_f, var_w = s_fw - s_f * s_w / n, s_ff - s_f**2 / n, s_ww - s_w**2 / n
den = var_f * var_w + 1e-5
cc = cross**2 / den
(grad_autograd,) = torch.autograd.grad(-cc.mean(), w)  # the reference: autograd through the formula
with torch.no_grad():  # steps 1-3 above
    A, B = cross / den, cc * var_f / den
    c0, c1, c2 = B * s_w / n - A * s_f / n, -B / 2, A
    grad_by_hand = -2 / f.numel() * (box_sum(c0, window) + 2 * w * box_sum(c1, window) + f * box_sum(c2, window))
(grad_library,) = torch.autograd.grad(lncc(f, w, window), w)  # _LNCC.backward
for name, g in [("by hand", grad_by_hand), ("ofg_lib.lncc", grad_library)]:
    rel = float((g - grad_autograd).abs().max() / grad_autograd.abs().max())
    print(f"{name:13s} max |grad - autograd| / max |autograd| = {rel:.1e}")
    assert rel < 1e-10
fig, axes = plt.subplots(1, 3, figsize=(9, 3))
show_slices({"fixed": image, "warped (misaligned)": misaligned}, axes=axes[:2])
m = float(grad_by_hand.abs().flatten().quantile(0.99))  # colour scale: the largest 1 % saturate
show_slices({"dL/dw (blue < 0 < red)": grad_by_hand}, cmap="RdBu_r", axes=axes[2:], vmin=-m, vmax=m)
plt.show()

# %% [markdown]
# ## 6. Agreement with independent references
# A float64 numpy version (scipy's `uniform_filter` for the local means) and, where installed, MONAI's
# `LocalNormalizedCrossCorrelationLoss` with a rectangular kernel. MONAI differs in two details: it clamps each
# variance at `smooth_dr` instead of adding eps to their product, and adds `smooth_nr` to the numerator; with
# `smooth_nr=0` the two agree wherever the variances are not tiny (here, on a noisy pair).

# %%
def numpy_lncc(f, w, win, eps=1e-5):
    box = lambda a: uniform_filter(a, size=win, mode="constant") * win**3  # noqa: E731
    n = win**3
    sf, sw, sff, sww, sfw = (box(a) for a in (f, w, f * f, w * w, f * w))
    cross, vf, vw = sfw - sf * sw / n, sff - sf * sf / n, sww - sw * sw / n
    return -np.mean(cross**2 / (vf * vw + eps))


f64, w64 = image[0, 0].double().cpu().numpy(), misaligned[0, 0].double().cpu().numpy()
ours = float(lncc(image.double(), misaligned.double(), window))
print(f"ofg_lib {ours:.10f}  numpy float64 {numpy_lncc(f64, w64, window):.10f}")
assert abs(ours - numpy_lncc(f64, w64, window)) < 1e-8
try:
    from monai.losses import LocalNormalizedCrossCorrelationLoss
    gen = torch.Generator(device="cpu").manual_seed(seed)
    noisy = [image.double() + 0.3 * torch.rand(image.shape, generator=gen, dtype=torch.float64).to(dev),
             misaligned.double() + 0.3 * torch.rand(image.shape, generator=gen, dtype=torch.float64).to(dev)]
    monai_loss = LocalNormalizedCrossCorrelationLoss(spatial_dims=3, kernel_size=window, kernel_type="rectangular",
                                                     smooth_nr=0.0, smooth_dr=1e-5)
    m, o = float(monai_loss(noisy[1], noisy[0])), float(lncc(noisy[0], noisy[1], window))
    print(f"noisy pair: ofg_lib {o:.8f}  MONAI {m:.8f}")
    assert abs(m - o) < 1e-6
except ImportError:
    print("MONAI is not installed (it is in the dev extra); skipping that comparison")

# %% [markdown]
# ## 7. Speed
# Forward and backward, as the inner optimizer uses it, on this notebook's size and device: the box filter
# with the backward of section 5 against the published dense convolutions with autograd's backward. The
# benchmark script compares against MONAI and neurite too, and times the whole 10-step inner loop; its output
# is in the README.

# %%
# The published formula lives beside the benchmarks that time it (benchmarks/published.py), not in the library.
sys.path.insert(0, str(REPO / "benchmarks"))
from published import lncc_conv3d  # noqa: E402

w = misaligned.clone().requires_grad_(True)
rows = {name: time_ms(lambda s=sim: s(image, w, window).backward(), dev, repeats)
        for name, sim in [("ofg_lib.lncc (box filter)", lncc), ("published conv3d", lncc_conv3d)]}
base = rows["ofg_lib.lncc (box filter)"]
for name, ms in rows.items():
    print(f"{name:28s} {ms:9.1f} ms   {ms / base:6.1f}x")

# %% [markdown]
# ## Summary
# - LNCC needs five local sums; a separable box filter, a loop of shifted adds along each axis, gets them with
#   $3(n-1)$ adds per voxel instead of $n^3$.
# - Its gradient is three more box filters of per-voxel coefficients, because a zero-padded box is its own
#   adjoint (section 5 derives it; `_LNCC` in `ofg_lib/losses.py` follows it line by line).
# - The implementation matches a float64 reference (section 6 asserts 1e-8) and MONAI where their definitions
#   agree.
# - A local window is robust to smooth intensity changes; the window size trades precision for basin width.
#
# Next: notebook 04 uses LNCC and the regulariser to refine a displacement: OFG's instance optimizer.

# %% [markdown]
# ### Exercises
# 1. *Predict, then run.* What does `box_sum_1d(torch.ones(8), 5)` return? Why are the end values smaller,
#    and what does that do to $cc$ near the border of the volume? Hint: zeros outside; the published LNCC
#    still divides those sums by the full $N$, so border means are biased toward 0.
# 2. *Predict, then run.* Set the slider (or call `window_view(1)`) to window 1. What is $cc$ everywhere, and
#    the LNCC? Hint: a one-voxel window has $\text{cross} = fw - fw = 0$.
# 3. *Predict, then run.* Where is the gradient of section 5 exactly zero? Check with
#    `(grad_by_hand == 0).float().mean()` and compare with the share of background voxels,
#    `(image == 0).float().mean()`. Hint: $A = B = 0$ wherever a window holds only background, and the gradient
#    at $q$ box-filters the coefficients of the windows around $q$: it vanishes more than $n - 1$ voxels from
#    the brain.
# 4. *Predict, then run.* Replace `1e-5` by `1e-1` in `den` (section 5) and in `lncc(image, image, window,
#    eps=0.1)`. Does the self-score move toward $-1$ or toward 0, and where does the map change most? Hint: at a
#    perfect match $\text{cross}^2 = \text{var}_f\,\text{var}_w$, so $cc = 1/(1 + \varepsilon/\text{cross}^2)$:
#    low-contrast windows lose most.
# 5. *Predict, then run.* Set `window = 15` and rerun section 7. By what factor should the dense convolution's
#    time grow, and the box filter's? Hint: $n^3$ against $3(n-1)$ adds per voxel: $(15/9)^3 \approx 4.6$ and
#    $14/8 \approx 1.8$; memory traffic makes the measured ratios smaller.
