# %% [markdown]
# # 05 · OFG training: from Eq. 2-5 to a trained network, against unsupervised training
#
# **What this teaches.** How on-the-fly guidance trains a registration network: each step the network's
# prediction is refined by a few optimizer steps (notebook 04) and the network is supervised by the refined
# field; and how to compare that with unsupervised training honestly (same model, data, steps and seeds;
# paired differences; equal steps and equal wall time).
#
# **Cost.** The defaults (a tiny VoxelMorph at 48x64x64, 18 steps, one seed) take about a minute on a laptop
# CPU and only check that everything runs. The `cpu` profile (`make reproduce`) trains the published
# VoxelMorph-1 at 48x64x64 for 300 steps, three seeds, both strategies, plus the equal-time runs: about 25
# minutes on 2 CPU cores the first time (26 min measured), seconds once the runs exist. The `gpu` profile
# trains at 160x192x224 on one GPU.
# Code: `ofg_lib/strategies.py` (how a step makes its loss), `ofg_lib/train.py` (Trainer), `ofg_lib/config.py`
# (the keys), `ofg_lib/guidance.py` (pseudo labels), `ofg_lib/compare.py`.

# %% tags=["parameters"]
model = "voxelmorph-1-tiny"  # a name of ofg_lib.models.names()
dataset = "embedded"  # embedded | ixi | oasis | lpba40
data_root = ""  # folder of the real dataset (empty: the environment variable, see notebook 01)
img_size = [48, 64, 64]  # size of the embedded cohort (the real datasets bring their own)
embedded_rms = 0.0  # RMS of the cohort's deformations in voxels; 0: realistic for the size (sub-voxel when small)
data_seed = 0  # the embedded cohort's seed: every training seed sees the same data, as in the paper
epochs = 3  # epochs per run; validation after each
steps_per_epoch = 6  # training pairs per epoch
lr = 2e-3  # network Adam lr; the paper's 1e-4 barely leaves the identity in a run this short
lr_schedule = "constant"  # constant | poly (published: poly 0.9 over 500 epochs)
inner_steps = 10  # optimizer steps per training step (the paper: 10)
inner_lr = 0.1  # optimizer lr (the paper: 0.1)
inner_lr_schedule = "constant"  # constant | poly (published; decays OFG's guidance to zero at the end)
val_pairs = 3  # validation pairs
seeds = [0]  # one run per strategy and seed
last_k = 2  # a run's score: the mean of its last k validations
run_dir = "results/ci/05_training"  # where runs are written (relative to the checkout); finished runs are reused
threads = 0  # torch CPU threads (0: default)
device = "auto"  # "auto" uses a GPU when there is one

# %%
import inspect

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown, display

import ofg_lib
from ofg_lib import config, models, strategies, train, viz
from ofg_lib.compare import compare
from ofg_lib.data import from_config
from ofg_lib.evaluate import load_run
from ofg_lib.losses import ofg_loss
from ofg_lib.optimizer import refine
from ofg_lib.files import resolve
from ofg_lib.runs import RunFolder

out = resolve(run_dir) / "compare"
# the parameters above named as config keys, as one config (empty data_root / zero RMS: the defaults)
base = config.from_namespace(globals(), data_root=data_root or None, embedded_rms=embedded_rms or None)
print("device:", ofg_lib.device(device), "| runs in", out)

# %% [markdown]
# ## 1. The method, from the equations to the code
# The network $F_\theta$ predicts $\phi_{pre} = F_\theta(I_f, I_m)$ (Eq. 1). The optimizer refines a detached
# copy for `inner_steps` Adam steps on $E = \mathrm{LNCC}(I_f, I_m\circ\phi) + \|\nabla\phi\|^2$ (Eq. 2, 5),
# giving $\phi_{opt}$. The network is trained on
#
# $$L = \tfrac1n\sum(\phi_{pre} - \mathrm{sg}(\phi_{opt}))^2 + 0.02\,\|\nabla\phi_{pre}\|^2 \qquad \text{(Eq. 3)},$$
#
# so the gradient reaches $\theta$ only through $\phi_{pre}$. The unsupervised baseline trains on the image
# similarity directly: $L = \mathrm{LNCC}(I_f, I_m \circ \phi_{pre}) + \|\nabla\phi_{pre}\|^2$. Each strategy is
# one small function of the batch and the prediction (`ofg_lib/strategies.py`); `step.refine` runs the
# instance optimizer of notebook 04 on a detached copy, and the trainer times it. These two are:

# %%
print(inspect.getsource(strategies.ofg))
print(inspect.getsource(strategies.unsupervised))

# %% [markdown]
# One step of each on one training pair, with the network at its initialisation: `step.refine` here is
# notebook 04's `refine` itself (in training, the trainer passes a timed copy of it).

# %%
cfg, dev = train.load_config(base), ofg_lib.device(device)
ofg_lib.seed_all(seeds[0])
pair = {k: v[None].to(dev) for k, v in from_config(cfg, "train")[0].items() if k != "id"}
net = models.build(model, tuple(pair["fixed"].shape[2:])).to(dev)
phi_pred = models.predict(net, pair["moving"], pair["fixed"])  # the model sees the pair stacked, moving first
step = strategies.Step(pair["moving"], pair["fixed"], ["pair 0"], cfg, inner_lr,
                       lambda phi, m, f, n, lr: (refine(phi, m, f, inner_steps=n, inner_lr=lr,
                                                                 inner_reg=cfg.inner_reg), {}))
for name in ("ofg", "unsupervised"):
    loss, logs = strategies.STRATEGIES[name](step, phi_pred)
    print(f"{name:>13s}: loss {loss.item():.5f}  " + "  ".join(f"{k} {v:.5f}" for k, v in logs.items()))

# %% [markdown]
# ### One epoch of OFG by hand
# The trainer adds bookkeeping (timing, logs, checkpoints, schedules, other strategies) around a short loop.
# Here it is written out for one epoch, on a trainer's model and data: predict, refine a detached copy, Eq. 3,
# one Adam step (amsgrad, as published). A second trainer of the same config (same seed: same initial weights,
# same pairs in the same order) runs its own epoch, and the two networks must end with identical weights.

# %%
one = train.load_config({**base, "strategy": "ofg", "progress": False, "steps_per_epoch": 3})  # a short epoch
mine = train.Trainer.from_config(one)                  # the model, data and order of a run of this config, nothing trained
adam = torch.optim.Adam(mine.model.parameters(), lr=one.lr, amsgrad=True)
for batch in mine.batches(epoch=0):        # the first epoch's pairs, in the trainer's order
    moving, fixed = batch["moving"].to(mine.device), batch["fixed"].to(mine.device)
    phi_pred = models.predict(mine.model, moving, fixed)
    phi_opt = refine(phi_pred.detach(), moving, fixed, one.inner_steps, one.inner_lr, one.inner_reg)
    loss = ofg_loss(phi_pred, phi_opt, one.ofg_reg)
    adam.zero_grad()
    loss.backward()
    adam.step()

theirs = train.Trainer.from_config(one)
theirs.train_epoch()
same = all(torch.equal(a, b) for a, b in zip(mine.model.parameters(), theirs.model.parameters()))
print(f"after {one.steps_per_epoch} OFG steps the hand-written loop and the trainer hold identical weights: {same}")
assert same

# %% [markdown]
# Self-training (a frozen teacher's prediction as the target), optimized self-training (that prediction
# refined once, to convergence, and cached) and the general mix of Eq. 7 ($\alpha L_{sim} + \lambda L_{reg} +
# \beta L_{opt}$) are strategies too: `strategies.STRATEGIES` lists them. The weights are named for the loss
# they belong to: `ofg_reg` (0.02, Eq. 3), `unsup_reg` (1.0, the unsupervised loss), `inner_reg` (1.0, the
# optimizer's energy).
#
# ## 2. The runs
# The same model, data order and validation pairs for both strategies, for every seed; the seed changes the
# network's initialisation and the data order, `data_seed` the embedded cohort (fixed, so seeds vary the
# training run on the same data, as in the paper). `compare` reuses runs that have finished (they are
# checkpointed every epoch, and resume where they stopped if interrupted) only when the stored config equals the
# requested one, epochs included; a folder holding a run trained with another config (or length) is refused,
# naming the keys that differ, so changed parameters need another `run_dir`. While a run trains, its folder is
# claimed (`ofg_lib.runs`): a second process training into it stops at once with the holder's pid.

# %%
print(f"{model}: {models.count_parameters(models.build(model, img_size)):,} parameters")
result = compare(base, strategies=("unsupervised", "ofg"), seeds=tuple(seeds), out=out, last_k=last_k)

# %%
viz.plot_training({(s, seed): load_run(out / f"{s}-seed{seed}")[2] for s in ("unsupervised", "ofg") for seed in seeds})
plt.show()

# %% [markdown]
# The MSE between the prediction and its refined target is the OFG loss's data term: it stays small because the
# target is always only ten steps away from the prediction ("on the fly"), unlike a fixed pseudo ground truth.
# The energy after refinement is below the energy before at every epoch: the target is always better than the
# prediction by the optimizer's measure, which is what keeps pulling the network forward.
#
# ## 3. The comparison
# Each score is the mean of a run's last validations; the difference is paired by seed (OFG minus
# unsupervised). At **equal steps** both strategies took the same number of network updates; at **equal wall
# time** the faster one (unsupervised) kept training until it had used OFG's time. `compare` is a sweep
# (`ofg_lib.sweep`, the runner of notebooks 08 and 09 too) with unsupervised training as the reference: each
# row holds, per metric, both means, the per-seed differences, their 95 % t interval and the sign count.

# %%
display(Markdown((out / "comparison.md").read_text()))
for setting in ("equal_steps", "equal_time"):
    if result[setting]:
        d = result[setting]["rows"][0]["val_dice"]     # the OFG row, paired against unsupervised (the reference)
        print(f"{setting}: OFG - unsupervised Dice = {d['difference']:+.4f} ± {d['difference_std']:.4f} "
              f"over {len(seeds)} seed(s)")
summaries = [RunFolder(out / f"{s}-seed{seeds[0]}").summary() for s in ("unsupervised", "ofg")]
for s in summaries:
    print(f"{s['strategy']:>13s}: {s['sec_per_step_network']:.3f} s/step network + "
          f"{s['sec_per_step_inner']:.3f} s/step inner optimizer on {s['device']}")
assert all(0 <= r["val_dice"][k] <= 1 for r in result["equal_steps"]["rows"] for k in ("mean", "reference"))

# %% [markdown]
# ## 4. How to read it
# The sentence below is built from the table this run computed (not typed in): it states the sign of the
# paired Dice difference and whether every seed agrees. The numbers measured with the `cpu` profile are in the
# README ("Results so far"), with the profile they came from. Two cautions: at small sizes with realistic
# deformations (this notebook's default, sub-voxel) nearest-neighbour label warping, and hence Dice, hardly moves
# while the end-point error improves, so read EPE first there; and single validations jitter, which is why the
# scores average the last few. A few hundred CPU steps are far from the paper's 500 epochs on real data; the
# `gpu` profile and `configs/paper_ixi_ofg.yaml` are the way to test its claim at its own budget.

# %%
d = result["equal_steps"]["rows"][0]["val_dice"]
signs = {"OFG ahead": d["ahead"], "OFG behind": d["behind"]}
side = "ahead of" if d["difference"] > 0 else "behind"
agree = max(signs.values()) == len(seeds)
display(Markdown(f"At equal steps OFG is **{side}** unsupervised training by {abs(d['difference']):.4f} Dice "
                 f"(± {d['difference_std']:.4f} over {len(seeds)} seed(s)); "
                 + ("every seed agrees on the sign." if agree else
                    f"the seeds disagree on the sign ({signs}), so this run does not separate the two.")))

# %% [markdown]
# To run on a GPU or the real data: `make reproduce PROFILE=gpu`, or set `dataset` and `data_root` above.
# Outside a notebook: `python -m ofg_lib.train --config FILE.yaml --out DIR` (add `--resume` to continue).
#
# ## Summary
# - OFG is one strategy function: refine a detached copy of the prediction, then an MSE to it plus 0.02 ×
#   smoothness; the optimizer is not used at inference.
# - Compare strategies with the same seeds and data, paired differences over several seeds and the mean of the
#   last validations, at equal steps and at equal wall time.
#
# Next: notebook 06 evaluates the trained networks (per-label Dice, folds, SDlogJ, EPE, inference time).
#
# ### Exercises
# 1. *Predict, then run.* Set `inner_steps = 1` and add `"inner_optimizer": "sgd"` to `base` with a large
#    `inner_lr` (e.g. 2000). Predict the comparison before you run it. Hint: notebook 07, section 2: one SGD step
#    makes OFG's gradient the unsupervised one scaled by 2 lr / N.
# 2. Set `inner_lr_schedule = "poly"` (the published schedule) and compare the last epochs' MSE term with the
#    constant schedule's. Hint: the inner lr reaches 0 at the end of a poly schedule.
# 3. Change `run_dir` and a training parameter together, then rerun with the old `run_dir` only: read the error
#    message. Which keys may differ for `compare` to reuse a run (`ofg_lib.train.RUNTIME`), which for a
#    resume by hand (`RESUMABLE`), and why is `epochs` in the second list but not the first?
# 4. Add a seed to `seeds` and watch the spread of the paired difference: how many seeds would you need before
#    trusting a Dice difference of 0.01? Hint: compare the difference's std over seeds with its mean.
