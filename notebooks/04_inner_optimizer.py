# %% [markdown]
# # 04 · The inner optimizer: where OFG's pseudo ground truth comes from
#
# **What this teaches.** Section 3.4 of the paper: an instance optimizer whose only parameter is the
# displacement field. Starting from the network's prediction $\phi_{pred}$, a few Adam steps on the energy of
# Eq. 5 give $\phi_{opt}$, the target that OFG trains the network toward. We write the loop in a few lines and check
# it against `refine`, refine a field on a pair of the embedded cohort (notebook 01), whose true displacement is
# known, start once from the identity and once from a partial prediction (the on-the-fly regime), vary
# `inner_steps`, `inner_lr`, `inner_reg` and the optimizer, and see from Adam's update rule why SGD needs a very
# different `inner_lr`. The parameters are named as the config keys of a training run (`ofg_lib.config`).
#
# **Cost.** Under a minute on a laptop CPU: about 20 s on 2 cores at the default 64x80x96 (nbval, measured), about
# 30 s at 80x96x112 (`make reproduce`); a few seconds on one GPU (the `gpu` profile runs 160x192x224). Code: `ofg_lib/optimizer.py` (`refine`), built on notebooks 02 and 03.

# %% tags=["parameters"]
img_size = [64, 80, 96]  # volume size (D, H, W); the paper: 160x192x224 (make reproduce: 80x96x112)
subject = 0  # which validation subject of the embedded cohort
inner_steps = 10  # inner steps per training step (the paper: 10)
inner_lr = 0.1  # Adam learning rate of the inner optimizer (the paper: 0.1)
inner_reg = 1.0  # lambda, the weight of grad_l2 in the energy (the published code: 1)
sgd_lr = 1000.0  # a learning rate at which plain SGD moves at all (see section 7)
pred_fraction = 0.5  # section 4 starts from phi_pred: this fraction of disp_true, a stand-in for a network
widget_size = [40, 48, 56]  # centre crop that the widget of section 8 refines (under a second per redraw on CPU)
seed = 0  # seed of the embedded cohort
device = "auto"  # "auto" uses a GPU when there is one

# %%
img_size = tuple(img_size)
widget_size = tuple(min(w, s) for w, s in zip(widget_size, img_size))

# %%
import time

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Markdown, display

import ofg_lib
from ofg_lib import viz
from ofg_lib.data import Embedded
from ofg_lib.losses import grad_l2, lncc
from ofg_lib.metrics import dice, epe, fold_fraction
from ofg_lib.optimizer import cpu_kernels_set, refine, refine_with_history
from ofg_lib.transform import warp
from ofg_lib.viz import show_slices

ofg_lib.seed_all(seed)
dev = ofg_lib.device(device)
cohort = Embedded("val", img_size=img_size, seed=seed)
pair = {k: v[None].to(dev) for k, v in cohort[subject].items() if k != "id"}
moving, fixed, disp_true = pair["moving"], pair["fixed"], pair["disp_true"]
brain = pair["fixed_seg"][:, 0] > 0
print("device:", dev, "| true displacement: mean %.2f, max %.2f voxels"
      % (disp_true.norm(dim=1)[brain].mean(), disp_true.norm(dim=1).max()))

# %% [markdown]
# ## 1. The pair and what "better" means
# The moving image is the atlas (the MNI152 template); the fixed image is a subject: the atlas warped by a
# known smooth deformation, with a bias field, a gamma change and noise. Besides the energy we can measure the
# end-point error (EPE, the mean length of $\phi - \phi_{true}$ in the brain, in voxels) against the true
# displacement, the Dice of the 12 labels and the folds. A real registration has no $\phi_{true}$; this cohort
# was built so that we can see whether lowering the energy also moves the field toward the truth.

# %%
def evaluate(disp):
    """EPE in the brain (voxels), mean Dice over the 12 labels, folds (% of brain voxels)."""
    warped_seg = warp(pair["moving_seg"], disp, mode="nearest")
    return {"EPE": epe(disp, disp_true, brain), "Dice": float(dice(warped_seg, pair["fixed_seg"], cohort.labels).nanmean()),
            "folds %": 100 * fold_fraction(disp, brain)}


start = torch.zeros(1, 3, *img_size, device=dev)  # the identity: a poor first guess
print("identity:", {k: round(v, 4) for k, v in evaluate(start).items()})
show_slices({"moving": moving, "fixed": fixed, "|fixed - moving|": (fixed - moving).abs()})
plt.show()

# %% [markdown]
# ## 2. The energy, the update rule, and the loop
# The optimizer's only parameter is the field $\phi$ (3 channels, in voxels). Its energy is Eq. 5 of the paper,
# with the regulariser of Eq. 4 weighted by $\lambda$ (`inner_reg`):
#
# $$E(\phi) = \mathrm{LNCC}(I_f,\, I_m \circ \phi) + \lambda\, \|\nabla \phi\|^2,
# \qquad \phi_{opt} \approx \operatorname*{arg\,min}_{\phi} E(\phi)
# \ \text{ reached by } K \text{ steps (`inner_steps`)}
# \text{ from } \phi^{(0)} = \phi_{pred}.$$
#
# As in the published code, both terms are **means** over the $N$ voxels: LNCC is $-\mathrm{mean}_p\, cc(p)$
# (notebook 03) and $\|\nabla\phi\|^2$ is the mean squared forward difference along the three axes
# (`grad_l2`). Eq. 2 of the paper writes the step as plain gradient descent,
# $\phi^{(n+1)} = \phi^{(n)} - \eta\, \nabla E(\phi^{(n)})$; the published code, and `refine`, use Adam with the
# *amsgrad* variant instead. Elementwise, for every voxel and channel, with $g_t = \nabla E(\phi_{t-1})$,
# $m_0 = v_0 = \hat v^{max}_0 = 0$ and PyTorch's defaults $\beta_1 = 0.9$, $\beta_2 = 0.999$, $\epsilon = 10^{-8}$:
#
# $$m_t = \beta_1 m_{t-1} + (1-\beta_1)\, g_t, \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2)\, g_t^2, \qquad
# \hat v^{max}_t = \max(\hat v^{max}_{t-1},\, v_t),$$
#
# $$\phi_t = \phi_{t-1} - \eta\, \frac{m_t / (1-\beta_1^t)}{\sqrt{\hat v^{max}_t / (1-\beta_2^t)} + \epsilon}.$$
#
# The fractions $1/(1-\beta^t)$ are the bias corrections (the averages start at 0), and $\hat v^{max}$ makes the
# denominator never shrink. Note what the step does **not** depend on (up to $\epsilon$): the scale of $g$.
# Multiply $E$ by 1000 and $m$ grows by 1000, $\sqrt{\hat v^{max}}$ by 1000, the step not at all. Section 7
# builds on this.
#
# Here is the whole optimizer: a leaf copy of the field, warp, energy, backward, step. (`callback` is only
# for the plots of section 4; it sees the field before each step.)

# %%
def adam_loop(phi_pred, moving, fixed, inner_steps=10, inner_lr=0.1, inner_reg=1.0, callback=None):
    """The instance optimizer: Adam (amsgrad) on a copy of the field, the energy of Eq. 5."""
    phi = phi_pred.detach().clone().requires_grad_(True)  # the only parameter; phi_pred itself is never changed
    opt = torch.optim.Adam([phi], lr=inner_lr, amsgrad=True)
    for _ in range(inner_steps):
        warped = warp(moving, phi)
        energy = lncc(fixed, warped) + inner_reg * grad_l2(phi)
        if callback is not None:
            callback(energy.detach(), phi.detach())
        opt.zero_grad()
        energy.backward()
        opt.step()
    return phi.detach()


# %% [markdown]
# `refine(phi_pred, moving, fixed, inner_steps, inner_lr, inner_reg)` runs the same loop, faster: the fixed image's
# local
# sums are computed once, on the CPU the whole step runs as a few fused kernels (`ofg_lib/_refine_cpu.py`: the
# warp keeps the interpolant's slope for the gradient, the box sums slide a window, Adam updates in place), and it
# stops with a warning if a step would make the field non-finite. Those change the order of floating-point
# operations, so the two results are not bitwise equal. In float32 the differences are rounding-sized almost
# everywhere, but Adam divides by $\sqrt{\hat v}$, so where a gradient is close to zero a rounding difference can
# change a step noticeably. In float64 the rounding is $10^{-16}$, and refine's PyTorch path (the one these six
# lines spell out; `cpu_kernels_set(False)` selects it) must agree with the loop to a billionth of a voxel: that
# is the check (on the centre crop of section 8, `widget_size`: float64 is slow on a CPU, and the loop is the same
# at any size). The CPU kernels compute the same energy and gradient to float64 rounding
# (`tests/test_optimizer.py`), but from the identity every sample sits on a kink of the (tri)linear interpolant,
# where a rounding-sized difference in the field picks the other one-sided slope; on this pair's flat background
# that makes their fields differ by about `inner_lr` after two steps, even in float64. We print that difference too.

# %%
kw = dict(inner_steps=inner_steps, inner_lr=inner_lr, inner_reg=inner_reg)
diff32 = (adam_loop(start, moving, fixed, **kw) - refine(start, moving, fixed, **kw)).abs()
print(f"float32: max |loop - refine| = {float(diff32.max()):.2e} voxels, mean {float(diff32.mean()):.2e}")
crop = (slice(None), slice(None), *(slice((n - w) // 2, (n - w) // 2 + w) for n, w in zip(img_size, widget_size)))
m64, f64, s64 = moving[crop].double(), fixed[crop].double(), start[crop].double()
with cpu_kernels_set(False):
    ours, theirs = adam_loop(s64, m64, f64, **kw), refine(s64, m64, f64, **kw)
print(f"float64: max |loop - refine's PyTorch path| = {float((ours - theirs).abs().max()):.2e} voxels")
assert torch.allclose(ours, theirs, rtol=0, atol=1e-9), "the six-line loop and refine disagree"
kernels = refine(s64, m64, f64, **kw)
print(f"float64: max |loop - refine's CPU kernels| = {float((ours - kernels).abs().max()):.2e} voxels, "
      f"{float(((ours - kernels).abs() > 1e-6).float().mean()):.0%} of the components above 1e-6")
del m64, f64, s64, ours, theirs, kernels

# %% [markdown]
# ## 3. Refining from the identity
# From here on we call the library. `refine` copies its input into a leaf tensor and returns the result
# detached: in training, no gradient flows from $\phi_{opt}$ back into the network. `refine_with_history` also
# keeps the energy before every step.

# %%
t0 = time.perf_counter()
run = refine_with_history(start, moving, fixed, final_energy=True, **kw)
elapsed = time.perf_counter() - t0
print(f"{inner_steps} steps in {elapsed:.2f} s; energy {run.energies[0]:.4f} -> {run.final_energy:.4f}")
print("refined: ", {k: round(v, 4) for k, v in evaluate(run.disp).items()})
assert run.final_energy < run.energies[0]
assert evaluate(run.disp)["EPE"] < evaluate(start)["EPE"]

fields = {n: refine(start, moving, fixed, inner_steps=n, inner_lr=inner_lr, inner_reg=inner_reg)
          for n in (1, 5, inner_steps)}
fig, axes = plt.subplots(1, 5, figsize=(16, 3.2))
axes[0].plot(range(len(run.energies) + 1), run.energies + [run.final_energy], "o-")
axes[0].set_xlabel("step")
axes[0].set_ylabel("energy")
show_slices({**{f"|phi| after {n}": f.norm(dim=1, keepdim=True) for n, f in fields.items()},
             "|true displacement|": disp_true.norm(dim=1, keepdim=True)}, axes=axes[1:], cmap="viridis",
            vmin=0, vmax=float(disp_true.norm(dim=1).max()))
plt.tight_layout()
plt.show()

# %% [markdown]
# The steps from the identity recover only part of the deformation. That is by design: OFG never starts from the
# identity (except at the very first training steps, when the network predicts about zero).
#
# ## 4. On the fly: starting from a prediction
# In training, the start is the network's current prediction $\phi_{pred}$, and the target only needs to be a
# little better than it. We have no network here, so we stand in for one with a field that is partly right:
# `pred_fraction` times the true displacement (a crude stand-in: a real network's errors point in all
# directions, not only along the truth). We run the same `inner_steps` steps from there and from the identity,
# record the
# energy and the EPE before every step, and look at the error maps $|\phi - \phi_{true}|$. OFG's supervision
# signal is the difference $\phi_{opt} - \phi_{pred}$ (its loss, Eq. 3, is the mean of its square), so we print
# its size too.

# %%
def trace(phi_start):
    """phi_opt after `steps`, and (energy, EPE) before each step and after the last: a (steps + 1, 2) array."""
    rows = []
    record = lambda energy, phi: rows.append((float(energy), epe(phi, disp_true, brain)))  # noqa: E731
    phi_opt = adam_loop(phi_start, moving, fixed, callback=record, **kw)
    with torch.no_grad():
        final = lncc(fixed, warp(moving, phi_opt)) + inner_reg * grad_l2(phi_opt)
    rows.append((float(final), epe(phi_opt, disp_true, brain)))
    return phi_opt, np.array(rows)


phi_pred = pred_fraction * disp_true
starts = {"identity": start, f"phi_pred = {pred_fraction:g} disp_true": phi_pred}
runs = {name: trace(phi0) for name, phi0 in starts.items()}
(phi_id, curve_id), (phi_opt, curve_pred) = runs.values()
errors = {"identity, after": phi_id - disp_true, "phi_pred, before": phi_pred - disp_true,
          "phi_pred, after": phi_opt - disp_true}
viz.plot_two_starts({n: r[1] for n, r in runs.items()}, {n: e.norm(dim=1, keepdim=True) for n, e in errors.items()},
                    vmax=float(disp_true.norm(dim=1).max()))
plt.show()

# %%
lines = ["| start | energy before → after | EPE before → after (voxels) "
         "| RMS length of phi_opt - phi_start (voxels) |",
         "|---|---|---|---|"]
for (name, (phi_end, curve)), phi0 in zip(runs.items(), starts.values()):
    rms = float((phi_end - phi0).square().sum(1).mean().sqrt())
    lines.append(f"| {name} | {curve[0, 0]:.4f} → {curve[-1, 0]:.4f} | {curve[0, 1]:.3f} → {curve[-1, 1]:.3f} "
                 f"| {rms:.3f} |")
gain = {name: curve[0, 1] - curve[-1, 1] for name, (_, curve) in runs.items()}
lines.append(f"\n{inner_steps} steps remove {gain['identity']:.3f} voxels of EPE from the identity and "
             f"{curve_pred[0, 1] - curve_pred[-1, 1]:.3f} from phi_pred, which ends at {curve_pred[-1, 1]:.3f} voxels "
             f"against {curve_id[-1, 1]:.3f} from the identity. "
             + ("In both cases phi_opt is closer to the truth than its start" if min(gain.values()) > 0 else
                "Not every start ends closer to the truth")
             + ": that, not convergence, is what OFG asks of its target at each training step.")
display(Markdown("\n".join(lines)))
assert all(g > 0 for g in gain.values()), "ten steps should lower the EPE from either start"

# %% [markdown]
# ## 5. How many steps, and how large
# More steps and a larger learning rate move further per training step but cost time (every inner step is a
# warp, an LNCC and their backward, on top of the network's own step) and, past a point, fit noise or fold.
# Each row refines from the identity; the plot after the three sweeps draws the tables.

# %%
def sweep(name, values, **fixed_args):
    print(f"{name:>10s} | {'energy':>8s} {'EPE':>6s} {'Dice':>6s} {'folds %':>8s} {'time s':>7s}")
    out = {}
    for v in values:
        args = {**kw, **fixed_args, name: v}
        t0 = time.perf_counter()
        r = refine_with_history(start, moving, fixed, final_energy=True, **args)
        m = {**evaluate(r.disp), "energy": r.final_energy, "time": time.perf_counter() - t0}
        out[v] = m
        print(f"{v!s:>10s} | {m['energy']:8.4f} {m['EPE']:6.3f} {m['Dice']:6.3f} {m['folds %']:8.4f} {m['time']:7.2f}")
    return out


by_steps = sweep("inner_steps", [1, 5, 10, 20, 40])
by_lr = sweep("inner_lr", [0.01, 0.1, 0.5])

# %% [markdown]
# ## 6. The regulariser
# `inner_reg` ($\lambda$) trades similarity for smoothness. Without it, a field can chase intensity noise and
# fold; with too much, it cannot follow the deformation. The energy column includes the weighted regulariser, so
# compare EPE, Dice and folds across these rows, not the energy.

# %%
by_reg = sweep("inner_reg", [0.0, 1.0, 10.0], inner_steps=40)
viz.plot_sweeps({"inner_steps": by_steps, "inner_lr": by_lr, "inner_reg (40 steps)": by_reg})
plt.show()
best = min(by_reg, key=lambda w: by_reg[w]["EPE"])
display(Markdown(
    f"Lowest EPE after 40 steps at `inner_reg` = {best:g} ({by_reg[best]['EPE']:.3f} voxels; the published 1 "
    f"gives {by_reg[1.0]['EPE']:.3f}, none gives {by_reg[0.0]['EPE']:.3f} with {by_reg[0.0]['folds %']:.2f} % of "
    "the brain folded). The true field of this cohort is very smooth by construction, so a strong regulariser "
    "is rewarded here; real anatomy has less smooth differences, so do not read a best weight off this pair."))

# %% [markdown]
# ## 7. Adam or SGD
# The paper says the optimizer can be "Adam or SGD". The update rule of section 2 says why they are not
# interchangeable at the same learning rate. At the first step $m_1 = (1-\beta_1) g$ and
# $\hat v^{max}_1 = (1-\beta_2) g^2$, so after the bias corrections the step is
# $\eta\, g / (|g| + \epsilon) \approx \eta\, \mathrm{sign}(g)$: every component whose gradient is well above
# $\epsilon$ moves by `inner_lr` voxels, whatever the size of its gradient. SGD's step is $\eta\, g$, and $g$
# is tiny: both terms of $E$ are means over $N$ voxels, so each voxel's gradient is of order $1/N$. We compute the
# gradient at the identity, assert that one step of `refine` moves each component by $\eta |g| / (|g| + \epsilon)$
# (in float64 on the centre crop, as in section 2: in float32 a gradient near $\epsilon$ is mostly rounding, and
# its step follows the rounding), and see what SGD would do with the same gradient.

# %%
phi = start.clone().requires_grad_(True)
(lncc(fixed, warp(moving, phi)) + inner_reg * grad_l2(phi)).backward()
g = phi.grad.abs()
moved = (refine(start, moving, fixed, inner_steps=1, inner_lr=inner_lr, inner_reg=inner_reg) - start).abs()
m64, f64, phi64 = moving[crop].double(), fixed[crop].double(), start[crop].double().requires_grad_(True)
(lncc(f64, warp(m64, phi64)) + inner_reg * grad_l2(phi64)).backward()
g64 = phi64.grad.abs()
moved64 = (refine(phi64.detach(), m64, f64, inner_steps=1, inner_lr=inner_lr, inner_reg=inner_reg)
           - phi64.detach()).abs()
assert torch.allclose(moved64, inner_lr * g64 / (g64 + 1e-8), rtol=1e-6, atol=1e-9), \
    "Adam's first step is not lr |g|/(|g|+eps)"
del m64, f64, phi64, g64, moved64
q10, g_med, q90 = np.quantile(g[g > 0].double().cpu().numpy(), [0.1, 0.5, 0.9])
print(f"N = {start[0, 0].numel():,} voxels; {float((g > 0).float().mean()):.1%} of the components have a gradient; "
      f"among them |g| is {q10:.1e} (10th percentile), {g_med:.1e} (median), {q90:.1e} (90th)")
has_g = g > 0
far, near = float((moved[has_g] > 0.9 * inner_lr).float().mean()), float((g[has_g] < 1e-8).float().mean())
print(f"Adam, one step at lr {inner_lr:g}: of the components with a gradient, {far:.0%} "
      f"moved by 0.9 lr or more (|g| > 9 eps) and {near:.0%} by less than lr / 2 "
      f"(|g| < eps); the largest move is {float(moved.max()):.4f} voxels")
print(f"SGD, one step: lr {inner_lr:g} moves the median component by {inner_lr * g_med:.1e} voxels; "
      f"sgd_lr {sgd_lr:g} moves it "
      f"by {sgd_lr * g_med:.1e}, the 90th percentile by {sgd_lr * q90:.1e} and the largest by "
      f"{sgd_lr * float(g.max()):.2f}; "
      f"moving the median component by {inner_lr:g} voxels would take lr ~ {inner_lr / g_med:.0e}")
del phi

# %% [markdown]
# So at lr 0.1 SGD leaves the field where it was. A learning rate large enough to move the median component by
# `inner_lr` voxels would throw the components with the largest gradients far past any sensible step, since the
# gradients printed above spread over orders of magnitude; and the right value depends on $N$ (the `gpu`
# profiles, with 8 times more voxels, pass an `sgd_lr` 8 times larger). Adam's normalisation gives every
# component whose gradient is well above $\epsilon$ a step of about `inner_lr`. That is why the published code uses
# Adam with lr 0.1.
#
# One caveat the numbers above show: $\epsilon = 10^{-8}$ is not negligible here. With gradients of order
# $1/N$, some components sit below $\epsilon$, where Adam's step is about $\eta\,|g|/\epsilon$, SGD with a
# learning rate of $\eta/\epsilon$; the larger the volume, the larger that share.

# %%
by_opt = {name: refine_with_history(start, moving, fixed, inner_steps=inner_steps, inner_lr=l,
                                    inner_reg=inner_reg,
                                    optimizer=opt, final_energy=True)
          for name, opt, l in [("adam lr %g" % inner_lr, "adam", inner_lr),
                               ("sgd lr %g" % inner_lr, "sgd", inner_lr),
                               ("sgd lr %g" % sgd_lr, "sgd", sgd_lr)]}
fig, ax = plt.subplots(figsize=(5, 3.2))
for name, r in by_opt.items():
    print(f"{name:>14s}: energy {r.energies[0]:.4f} -> {r.final_energy:.4f}, max |phi| = "
          f"{float(r.disp.norm(dim=1).max()):.4f} voxels, EPE {evaluate(r.disp)['EPE']:.3f}")
    ax.plot(r.energies + [r.final_energy], "o-", ms=3, label=name)
ax.set_xlabel("step")
ax.set_ylabel("energy")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## 8. Try it: steps, lr and $\lambda$
# The widget refines a centre crop of the pair (`widget_size`, smaller than the volume so that one redraw takes
# under a second on a laptop CPU; samples outside the crop read zero, so the border of the crop aligns less well).
# It shows the refined field's magnitude next to the truth, the error map with its EPE, and the grid deformed by
# the field's in-plane components, where folds show as crossing lines. The figure below is drawn at the
# parameters' values; in JupyterLab the sliders under it redraw it. Try `inner_reg` 0 with 40 steps, a large
# `inner_lr`, and the start `phi_pred`.

# %%
crop = (..., *(slice((s - c) // 2, (s - c) // 2 + c) for s, c in zip(img_size, widget_size)))
small = {"moving": moving[crop], "fixed": fixed[crop], "disp_true": disp_true[crop], "brain": brain[crop]}


def explore(inner_steps, inner_lr, inner_reg, init):
    phi0 = small["disp_true"] * (pred_fraction if init == "phi_pred" else 0.0)
    t0 = time.perf_counter()
    phi_opt = refine(phi0, small["moving"], small["fixed"], inner_steps=inner_steps, inner_lr=inner_lr,
                     inner_reg=inner_reg)
    took = time.perf_counter() - t0
    before, after = (epe(p, small["disp_true"], small["brain"]) for p in (phi0, phi_opt))
    truth = small["disp_true"]
    magnitudes = {"|phi|": phi_opt.norm(dim=1, keepdim=True), "|disp_true|": truth.norm(dim=1, keepdim=True),
                  "|phi - disp_true|": (phi_opt - truth).norm(dim=1, keepdim=True)}
    viz.plot_refined(phi_opt, magnitudes, vmax=float(truth.norm(dim=1).max()), title=(
        f"{inner_steps} steps from {init}, inner_lr {inner_lr:g}, inner_reg {inner_reg:g} ({took:.2f} s): "
        f"EPE {before:.3f} -> "
        f"{after:.3f} voxels, folds {100 * fold_fraction(phi_opt, small['brain']):.2f} %"))
    plt.show()


panel = viz.interactive(
    explore,
    inner_steps=widgets.IntSlider(value=inner_steps, min=0, max=max(40, inner_steps), description="inner_steps"),
    inner_lr=widgets.FloatLogSlider(value=inner_lr, base=10, min=-3, max=0, step=0.25, description="inner_lr"),
    inner_reg=widgets.SelectionSlider(options=sorted({0.0, 0.1, 1.0, 10.0, 100.0, inner_reg}), value=inner_reg,
                                       description="inner_reg"),
    init=widgets.ToggleButtons(options=["identity", "phi_pred"], value="identity", description="start"))

# %% [markdown]
# ## Summary
# - The instance optimizer is a few lines: Adam (amsgrad) on a copy of the field, energy LNCC + $\lambda$ grad_l2;
#   `refine` is those lines made faster, and agrees with them to float64 rounding.
# - Ten steps lower the energy and the error against the true field, from the identity and from a partial
#   prediction alike; OFG only asks that $\phi_{opt}$ be better than $\phi_{pred}$ at each training step.
# - Adam's step is about `inner_lr` voxels whatever the gradient's scale; SGD's is `inner_lr` times a gradient of
#   order $1/N$, so it needs a learning rate that grows with the volume.
# - `inner_reg` keeps the refined field smooth; without it, the field folds.
#
# Next: notebook 05 trains a network with these pseudo ground truths.
#
# ### Exercises
# 1. *Predict, then run.* In section 7, set `sgd_lr` to 10 times, then 100 times its value. Sketch SGD's energy
#    curve for each before you run it: does it fall like Adam's, diverge, or stall? Hint: the step is $\eta g$,
#    and the largest $|g|$, printed there, is orders of magnitude above the median; a step of several voxels
#    samples the moving image where the gradient no longer says anything.
# 2. In `adam_loop`, replace `amsgrad=True` by `amsgrad=False` and rerun the assertion of section 2. Predict
#    whether it still passes, and if not, how large `max |loop - refine|` becomes. Hint: $\hat v^{max}$ differs
#    from $v$ only where $v$ has decreased; after the first step that needs $|g_t| < \sqrt{1-\beta_2}\,|g_1|$,
#    about $0.03\,|g_1|$. And one component that steps differently changes its neighbours' gradients.
# 3. Set `pred_fraction = 0.95` (a nearly perfect prediction). Predict the EPE curve of section 4 for the
#    start `phi_pred`: can ten steps of Adam at lr 0.1 make a nearly right field worse? Hint: the first step
#    moves every component with a gradient by about `inner_lr` voxels, however small that gradient is; and the
#    minimum of the energy is not the true field (noise, bias field, the regulariser). Then try `lr = 0.02`.
# 4. In the widget, start from `phi_pred`, set `inner_reg` to 0 and `inner_steps` to 40. Predict the folds and
#    whether the EPE ends below or above where it started; then compare with `inner_reg` 10.
# 5. OFG's network sees only $\phi_{opt} - \phi_{pred}$. Using the RMS column of section 4, argue whether
#    doubling `inner_steps` doubles the signal; then check it by rerunning section 4 with `inner_steps = 20`.
