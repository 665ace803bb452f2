# %% [markdown]
# # 08 · When does OFG help? A study on a laptop: difficulty, budget and the inner optimizer
#
# **What this teaches.** How to test a method's claim where it can fail: vary what the claim depends on (how
# hard the data are, how long training runs, how the inner optimizer is set), compare OFG with unsupervised
# training paired by seed at equal steps and at equal wall time, and read the answer from the table, whatever
# it is. The paper reports +0.6 to +2.3 Dice points for OFG after 500 epochs on real brains; notebook 05 found
# OFG behind at 300 CPU steps on the easy embedded cohort.
#
# **Cost.** On a laptop CPU the defaults (a tiny 2-D VoxelMorph at 32x32, two settings, one seed) take well
# under a minute and only check that everything runs. The `cpu` profile (`make reproduce`) runs a small study at
# 64x80 on 2 CPU cores; its time is printed in section 3 and stated in the README. `make reproduce
# PROFILE=study` (or `python -m ofg_lib.study --profile study`) runs the whole study at 96x112 plus a 3-D
# confirmation on the CPU; section 6 reads its committed summary and states its wall time; section 7 reads the
# committed summary of the run-to-plateau study (`python -m ofg_lib.converge`, constant lrs, best checkpoint on
# test pairs). No GPU is needed; with one, every run uses it (`device: auto`).
# Code: `ofg_lib/study.py` (the study), `ofg_lib/sweep.py` (the runner), `ofg_lib/stats.py` (the paired
# difference), `ofg_lib/data/embedded.py` (the harder cohorts).

# %% tags=["parameters"]
run_dir = "results/ci/08_study"  # where the study's runs go (relative to the checkout); finished runs are reused
model = "voxelmorph-1-tiny"  # voxelmorph-1 / -2 (and -tiny) build in 2-D
img_size = [32, 32]  # two sides: the 2-D track (an axial slice); three: 3-D
lr = 1e-3  # network Adam lr, both strategies (the paper: 1e-4 over 500 epochs; see section 1)
epochs = 3  # epochs per run (poly decay of lr and inner lr over them, as published)
steps_per_epoch = 5  # training pairs per epoch
val_pairs = 2  # validation pairs (validation after every epoch: the learning curves)
seeds = [0]  # paired by seed: the same initialisation, data and data order for both strategies
last_k = 1  # a run's score: the mean of its last k validations
settings = ["today", "large"]  # names of ofg_lib.study.SETTINGS; the first also carries the variants and budgets
equal_time = True  # also train unsupervised for OFG's wall time
variants = {}  # {name: OFG-only overrides}, e.g. {"inner_lr_constant": {"inner_lr_schedule": "constant"}}
both_variants = {}  # {name: overrides for both strategies}, e.g. {"paper_lr": {"lr": 1e-4}}
budgets = []  # other numbers of epochs for the first setting (the budget axis)
confirm_3d = None  # None, or {"img_size": [48, 64, 64], "epochs": ..., "steps_per_epoch": ..., "seeds": [...]}
gallery_size = [96, 112]  # the size at which section 2 pictures the cohorts
threads = 0  # torch CPU threads (0: default)
progress = False  # per-epoch progress bars
report = "reports/study"  # the full study's committed summary (section 6)
converge_report = "reports/converge"  # the run-to-plateau study's committed summary (section 7)

# %%
import json
import time

import matplotlib.pyplot as plt
import numpy as np
import scipy.stats
from IPython.display import Markdown, display

from ofg_lib import config, study, sweep, viz
from ofg_lib.data import Embedded, from_config
from ofg_lib.data.embedded import edge_strength
from ofg_lib.files import resolve

# one run's config: the parameters above that are TrainConfig keys (model, img_size, lr, epochs, ...), in one call
base = config.from_namespace(globals())
# the study: that config and the axes it is varied along (what `study.run_study` takes)
spec = study.make_spec(base, settings, seeds, last_k=last_k, equal_time=equal_time, variants=variants,
                       both_variants=both_variants, budgets=budgets, confirm_3d=confirm_3d)
out = resolve(run_dir)
print("every run:", base, "\nruns in", out)

# %% [markdown]
# ## 1. The design
# One question, **OFG minus unsupervised**, asked many times with everything else held equal: the same model,
# data, data order, initialisation and number of steps. There is one run per strategy and seed, and the
# difference is taken per seed (section 3 writes it out). A run's score is the mean of its last `last_k`
# validations (single validations jitter). Two budgets are compared:
#
# - **equal steps**: both strategies train `epochs x steps_per_epoch` steps;
# - **equal wall time**: OFG's inner optimizer costs time, so unsupervised training is run again for as many
#   epochs as OFG's time allows (seconds per step: the median over every epoch of every seed).
#
# The axes: **difficulty** (the settings below), **budget** (the first setting trained for other lengths; a
# strategy has *plateaued* when the longest budget gains less than half a Dice point over the next shorter one,
# `study.plateau`, which also gives the seed spread to judge larger gains by), and the **inner optimizer**
# (`variants`, e.g. a constant inner lr or 1 inner step instead of the published poly decay and 10 steps). The
# network lr is the same for both strategies; where it is not the paper's 1e-4, the reason is the budget (the
# paper trains for 100,000 steps), and a `both_variants` entry such as `{"paper_lr": {"lr": 1e-4}}` runs both
# strategies at the paper's lr. Nothing here is tuned toward either side: the settings were fixed before the
# first comparison ran. This run's design, in sentences built from the parameter cell:

# %%
display(Markdown(study.design_markdown(spec)))

# %% [markdown]
# The settings, with how far apart a pair starts (the identity's Dice and its end-point error to the true
# deformation, on the validation pairs):

# %%
identity = {name: study.identity_scores({**base, **study.setting_config(name, img_size)}, n=val_pairs)
            for name in settings}
display(Markdown(study.settings_markdown(identity, img_size)))

# %% [markdown]
# ## 2. The cohorts, side by side
# Every setting is an option of `ofg_lib.data.Embedded` (notebook 01 introduces them one by one). The top two rows
# are a validation pair with its label outlines; the bottom row is the true deformation on the fixed image. The
# paper's affinely aligned IXI pairs start at Dice 0.386 (Table 1, "Affine"); today's cohort starts far higher,
# which is one reason unsupervised similarity is almost the truth there.

# %%
examples = {}
for name in study.SETTINGS:
    cfg = {**base, "img_size": gallery_size, **study.setting_config(name, gallery_size)}
    ds = from_config(cfg, "val")
    ident = study.identity_scores(cfg, n=4)
    examples[name] = (ds[0], f"truth; identity Dice {ident['dice']:.2f}")
viz.show_cohorts(examples)
plt.show()

# %% [markdown]
# **Blur.** A subject is the atlas resampled through its deformation, and linear interpolation blurs: with
# `supersample=1` (today's cohort) every fixed image is a little blurrier than the moving atlas, a cue real pairs
# do not have. `supersample=k` makes the subject on a k-times finer grid and area-downsamples it, and the atlas
# goes through the same downsampling, so the two are equally sharp. The ratio below is the edge strength
# (`edge_strength`: the mean gradient magnitude in the brain) of a subject (without bias field and noise) over
# the atlas's: 1 is equally sharp. (Not the sharpness of notebook 07, a Hessian eigenvalue of a loss.)

# %%
for k in (1, 2, 3):
    ds = Embedded("val", gallery_size, n=4, cache=False, supersample=k)
    atlas, seg = ds.atlas()
    ratio = np.mean([edge_strength(s["image"], s["seg"] > 0) / edge_strength(atlas, seg > 0)
                     for s in (ds.subject(i, clean=True) for i in range(4))])
    print(f"supersample={k}: subject / atlas edge strength {ratio:.3f}")

# %% [markdown]
# ## 3. Run the study
# ### One comparison, by hand
# Take the first setting at equal steps. For each seed $s$ both strategies start from the same initialisation
# and see the same pairs in the same order; a run's score is the mean of its last `last_k` validation Dice
# values. The **paired difference** of seed $s$ is
#
# $$d_s = \mathrm{Dice}_{\mathrm{OFG},s} - \mathrm{Dice}_{\mathrm{unsup},s},$$
#
# and over the $n$ seeds the table reports its mean, its standard deviation (ddof 1) and a 95 % t interval:
#
# $$\bar d = \frac1n \sum_s d_s, \qquad \mathrm{sd} = \sqrt{\frac{1}{n-1}\sum_s (d_s - \bar d)^2}, \qquad
# \bar d \pm t_{0.975,\,n-1}\,\frac{\mathrm{sd}}{\sqrt n}.$$
#
# Pairing cancels what a seed does to both strategies alike (a lucky initialisation, an easy data order), so
# $\mathrm{sd}$ measures only how much the *difference* varies. With three seeds $t_{0.975,2} = 4.30$: an
# interval is wide, and a sign that holds in every seed is worth reporting beside it. With one seed there is no
# spread and no interval (the tables then show 0 and "-").
#
# The runs, one per strategy and seed, trained (or reused) one at a time in the folders the study uses
# (`out/SETTING/STRATEGY-seedN`), and the formula in numpy and scipy:

# %%
def paired_by_hand(d):
    """Mean, sd (ddof 1) and 95 % t interval of the per-seed differences d_s (the formula above)."""
    d = np.asarray(d, dtype=float)
    n, mean = len(d), d.mean()
    if n < 2:                                      # one seed: no spread, no interval
        return {"difference": mean, "difference_std": 0.0, "low": None, "high": None}
    sd = d.std(ddof=1)
    half = scipy.stats.t.ppf(0.975, n - 1) * sd / np.sqrt(n)
    return {"difference": mean, "difference_std": sd, "low": mean - half, "high": mean + half}


t0 = time.perf_counter()
first = settings[0]
cfg = {**base, **study.setting_config(first, img_size)}     # the first setting's cohort on top of every run's keys
runs = {(who, s): sweep.train_history({**cfg, "strategy": who, "seed": s}, out / first / f"{who}-seed{s}")
        for who in ("unsupervised", "ofg") for s in seeds}
dice = {who: np.array([np.mean([r["val_dice"] for r in runs[who, s] if "val_dice" in r][-last_k:]) for s in seeds])
        for who in ("unsupervised", "ofg")}
d = dice["ofg"] - dice["unsupervised"]
by_hand = paired_by_hand(d)
for s, unsup, ofg, d_s in zip(seeds, dice["unsupervised"], dice["ofg"], d):
    print(f"seed {s}: Dice unsupervised {unsup:.4f}, OFG {ofg:.4f}, d_s = {d_s:+.4f}")
print(f"{first}: mean {by_hand['difference']:+.4f}, sd {by_hand['difference_std']:.4f}, 95 % interval "
      + (f"[{by_hand['low']:+.4f}, {by_hand['high']:+.4f}]" if by_hand["low"] is not None else "- (one seed)"))

# %% [markdown]
# ### The whole study, in one call
# `study.run_study` asks the same question for every setting and axis, in the order of its module docstring,
# and writes `study.json` and `study.md` to the run folder. It finds the runs above finished and reuses them: a
# run is reused only when its whole stored config equals the requested one, so this also checks that the
# configs built by hand are the study's. Interrupt it at any time: the next call continues. Each stage is a
# sweep (`ofg_lib.sweep`, the runner of notebooks 05 and 09) with unsupervised training as the reference, so a
# row holds, per metric, both strategies' means, the per-seed differences $d_s$, their 95 % t interval and the
# sign count (`ofg_lib.stats.paired`).

# %%
result = study.run_study(spec, out, log=lambda *a: None)
print(f"{len(result['histories'])} runs ready in {time.perf_counter() - t0:.0f} s")
display(Markdown(study.table_markdown(result["rows"], columns=("val_dice", "epe"))))

# %% [markdown]
# The library's record of the first setting at equal steps is the hand computation above, to the last digits:

# %%
record = next(r for r in result["rows"] if r["tag"] == first and r["comparison"] == "equal steps")["val_dice"]
assert np.allclose(record["per_seed"], d, rtol=0, atol=1e-12)
assert abs(record["reference"] - dice["unsupervised"].mean()) <= 1e-12
assert abs(record["mean"] - dice["ofg"].mean()) <= 1e-12
for key, mine in by_hand.items():
    assert (mine is None and record[key] is None) or abs(record[key] - mine) <= 1e-12, (key, record[key], mine)
print(f"{first}, equal steps: per-seed differences, mean, sd and interval as computed by hand (to 1e-12)")

# %% [markdown]
# ## 4. Learning curves
# Validation Dice along training, mean and one standard deviation over seeds; the dashed line is unsupervised
# training run for OFG's wall time (its x axis is its own steps, so it runs past the others).


# %%
def curve_set(res, tag):
    c = {s: study.curves(res, tag, s) for s in ("unsupervised", "ofg")}
    timed = [t for t in {k.split("/")[0] for k in res["histories"]} if t.startswith(f"{tag}-equal-time")]
    if timed:
        c["unsupervised, equal time"] = study.curves(res, timed[0], "unsupervised")
    return c


def all_curves(res, tags):
    fig, axes = plt.subplots(1, len(tags), figsize=(4.2 * len(tags), 3.2), squeeze=False)
    for ax, tag in zip(axes[0], tags):
        viz.plot_curves(curve_set(res, tag), ax=ax, title=tag)
    fig.tight_layout()
    plt.show()


all_curves(result, settings)

# %% [markdown]
# ## 5. What this run says
# The sentences are built from the table above (nothing typed in): the sign of each paired Dice difference,
# whether every seed agrees, and the end-point error to the true deformation.

# %%
display(Markdown(study.conclusion(result)))
assert all(np.isfinite(r["val_dice"]["difference"]) for r in result["rows"])
if budgets:
    b = study.plateau(result["rows"], first)
    display(Markdown(study.budget_markdown(b, first)))
    viz.plot_budget(b, steps_per_epoch)
    plt.show()

# %% [markdown]
# ## 6. The full study
# `make reproduce PROFILE=study` (params/study.yaml) runs the study at full size with the published
# VoxelMorph-1. Its summary is committed in `reports/study/` (the table, the learning curves, the wall time) and
# read here, so that this notebook states the full study's numbers under every profile; its design below is
# built from the spec stored with it.

# %%
path = resolve(report) / "study.json"
full = json.loads(path.read_text()) if path.exists() else None
if full:
    print(f"full study: {full['wall_time_h']:.1f} h on {full['machine']}")
    display(Markdown(study.design_markdown(full["spec"])))
    display(Markdown(study.table_markdown(full["rows"], columns=("val_dice", "epe"))))
    all_curves(full, full["spec"]["settings"])
    display(Markdown(study.conclusion(full)))
    if full["spec"].get("budgets"):
        first_full = full["spec"]["settings"][0]
        display(Markdown(study.budget_markdown(study.plateau(full["rows"], first_full), first_full)))
    if "confirm_3d" in full:
        display(Markdown(study.confirm_3d_markdown(full["confirm_3d"])))
else:
    print(f"no committed study summary at {path}: run `make reproduce PROFILE=study`")

# %% [markdown]
# Every interval of that table follows from its per-seed differences by the formula of section 3 (its rows were
# converted from the study's first schema, ddof-0 spreads rescaled, so they agree to about 1e-11, not to the
# last digit):

# %%
if full:
    for r in full["rows"]:
        for m in ("val_dice", "epe"):
            mine = paired_by_hand(r[m]["per_seed"])
            assert all((mine[k] is None and r[m][k] is None) or abs(mine[k] - r[m][k]) < 1e-9 for k in mine), \
                (r["tag"], r["comparison"], m)
    v = full["rows"][0]["val_dice"]
    print(f"{full['rows'][0]['tag']}, {full['rows'][0]['comparison']}: d_s = {np.round(v['per_seed'], 4).tolist()}, "
          f"t(0.975, {v['n'] - 1}) = {scipy.stats.t.ppf(0.975, v['n'] - 1):.2f}, interval "
          f"[{v['low']:+.4f}, {v['high']:+.4f}]; all {2 * len(full['rows'])} lines of the table agree with the formula")

# %% [markdown]
# ## 7. Trained until it plateaus, with OFG's guidance kept on
# Sections 3-6 share two blind spots. With the published poly decay over the run's own length, the inner lr is
# $0.1\,(1 - e/E)^{0.9}$: in a run's last epochs the pseudo label sits a few hundredths of a voxel from the
# prediction, so the epochs that are scored train a smoother, not OFG (notebook 07). And no run is near its
# plateau. `python -m ofg_lib.converge` (spec: `configs/studies/converge.yaml`) asks the question again on the
# `realistic` setting (subject pairs, larger multi-scale deformations, tissue contrast, supersampled: all of the
# single-factor settings at once) at 96x112, with **constant** network and inner lrs, each run trained until
# the plateau rule holds (`ofg_lib.schedule.plateaued`: the validation Dice, averaged over 5 validations, gains
# less than `plateau_tol` over the last third of the run) or the step cap. The headline score is each run's
# **best-validation checkpoint scored on held-out test pairs**; differences are paired by seed with a 95 % t
# interval. Its committed summary is read here; every sentence below is computed from it.

# %%
from ofg_lib import converge

path = resolve(converge_report) / "converge.json"
if path.exists():
    conv = json.loads(path.read_text())
    display(Markdown(converge.markdown(conv)))
    for arm in conv["arms"]:
        fig, axes = plt.subplots(1, 2, figsize=(13, 3.6), gridspec_kw={"width_ratios": [2, 1]})
        converge.plot_curves(conv, arm, ax=axes[0])
        converge.plot_pareto([{**p, "label": p["strategy"]} for p in conv["arms"][arm]["points"]], "sdlogj",
                             ax=axes[1])
        axes[1].set_title("one point per run (test split)")
        plt.tight_layout()
        plt.show()
else:
    print(f"no committed summary at {path}: run `python -m ofg_lib.converge`")

# %% [markdown]
# **A fair baseline.** OFG trades Dice for smoothness, and the baseline's smoothness weight was fixed at 1. The
# spec's `pareto` section trains both strategies at several smoothness weights (`unsup_reg`, `ofg_reg`; the
# table lists them) on one arm and scores each run like the headline; a strategy is better only where its
# points lie above and to the left of the other's (more Dice, fewer folds). Which labels are dominated is
# computed, not read off.

# %%
path = resolve(converge_report) / "pareto.json"
if path.exists():
    par = json.loads(path.read_text())
    display(Markdown(converge.pareto_markdown(par)))
    converge.pareto_figure(par)
    plt.show()
else:
    print(f"no committed summary at {path}: run `python -m ofg_lib.converge` (its `pareto` section)")

# %% [markdown]
# **In 3-D.** The same study at 48x64x64 (`configs/studies/converge3d.yaml`) was trained on a GPU
# (`scripts/gpu_run.sh`, part `converge3d`) under a time limit, and the OFG runs the limit cut were resumed on a
# CPU (README, "In 3-D"). Where a run is still cut short, the verdict says so and points to the row at equal
# steps, the only like-for-like one then.

# %%
path = resolve(converge_report).parent / "converge3d" / "converge.json"
if path.exists():
    conv3 = json.loads(path.read_text())
    for arm, a in conv3["arms"].items():
        display(Markdown(f"**{arm}**, trained on {conv3.get('machine')}: {converge.verdict(a)}"))
        converge.plot_curves(conv3, arm)
        plt.show()
else:
    print(f"no committed summary at {path}: `CONVERGE3D_S=300 bash scripts/gpu_run.sh` on a GPU")

# %% [markdown]
# ## Summary
# - A claim about a training method is a claim about a regime: ask it along the axes it depends on, paired by
#   seed, at equal steps and at equal time, and let the table write the conclusion.
# - The paired difference $d_s$ = OFG minus unsupervised of the same seed; the table's "±" is its sd (ddof 1)
#   and its interval $\bar d \pm t_{0.975,n-1}\,\mathrm{sd}/\sqrt n$: a few lines of numpy (section 3), the
#   same numbers as `ofg_lib.stats.paired`.
# - The harder cohorts are options of the embedded data (`embedded_pairs`, `embedded_contrast`,
#   `embedded_rms`, `embedded_rms_jitter`, `embedded_fine_rms`, `embedded_supersample`); the 2-D track is a
#   two-sided `img_size`; everything else (warp, LNCC, the optimizer, the metrics, the models, the trainer) is
#   the same code in 2-D and 3-D.
#
# ### Exercises
# 1. *Predict, then run.* Add `"inner_steps_1": {"inner_steps": 1}` to `variants`. One Adam step of lr 0.1 moves
#    every voxel by about 0.1 voxel: predict whether OFG then trails unsupervised training by more or by less.
#    Hint: notebook 07, section 2 (what one step of the inner optimizer makes of OFG's gradient).
# 2. Set `settings = ["contrast"]` and raise the contrast (`SETTINGS["contrast"]`, or `embedded_contrast` in a
#    config): at what strength does the similarity's optimum move far enough from the truth that the EPE of
#    both strategies grows? Which strategy's EPE grows faster, and why might it?
# 3. Add a budget (`budgets = [2 * epochs]`) and apply the plateau rule of section 1 by hand to the two points.
#    Is half a Dice point the right tolerance for your number of seeds? Hint: compare it with the seed spread.
# 4. Build your own setting: add an entry to `ofg_lib.study.SETTINGS` (say, subject pairs with large
#    deformations) and rerun sections 1-5 with it. Which of the settings' changes does OFG respond to most?
