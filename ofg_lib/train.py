"""Training: a problem-agnostic Trainer, resumable, on CPU, one GPU or several (notebook 05).

    python -m ofg_lib.train --config configs/cpu_smoke.yaml --out results/smoke
    python -m ofg_lib.train --config configs/cpu_smoke.yaml --set strategy=unsupervised --out results/smoke2
    python -m ofg_lib.train ... --resume          # continue OUT's run (the config must be the same)
    python -m ofg_lib.train ... --resume --set epochs=20   # extend it (see RESUMABLE; never shorter than done)
    torchrun --nproc_per_node 2 -m ofg_lib.train --config ... --out ...            # DDP, one process per device
    summary = ofg_lib.train.run({"model": "voxelmorph-1-tiny", "epochs": 2}, out="results/run1")

The trainer knows loops, schedules, checkpoints and logs; how a step's loss is made lives in
`ofg_lib.strategies`. Run folders are never silently replaced, mixed or reused:
- a training run claims its folder for as long as it runs (`ofg_lib.runs.claim`): a second run into the same
  folder is refused with the holder's pid, host and command;
- training into a folder that holds a run needs `resume` (same config, except the keys in RESUMABLE, and never
  fewer epochs than done) or `overwrite`; `resume=True` on a folder without a run is an error, `resume="auto"`
  (what the experiment runners use) starts one there;
- `exact=True` (the runners: compare, study, sweep, converge) reuses or resumes a run only when its whole stored
  config equals the requested one, epochs included (only the keys in RUNTIME may differ); else it refuses,
  naming the folder and the differing keys.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import io
import json
import math
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import (DeviceUnavailable, amp_available, fork_rng, distributed_backend, models, peak_memory_mb, rank_device, rng_state, seed_all,
               set_rng_state, synchronize)
from . import data as datasets
from . import device as resolve_device
from .evaluate import evaluate
from .metrics import ABSENT
from .optimizer import OPTIMIZERS, cpu_kernels, refine_with_history
from .paths import atomic_save, atomic_write, load_checkpoint, remove_partials, write_json
from .progress import progress_bar
from .runs import FolderBusyError, claim
from .strategies import STRATEGIES, Step, strategy

__all__ = ["TrainConfig", "Trainer", "run", "STRATEGIES", "strategy", "load_config", "main", "RESUMABLE",
           "RUNTIME", "RUN_FILES", "CLI_FLAGS", "plateaued"]


@dataclass
class TrainConfig:
    """Every key of a run, with its type and default. YAML files and notebook parameters use the same names.

    Values are converted to the declared type when the config is built (`lr: 1e-4` in YAML is a string to
    PyYAML and becomes the float 1e-4 here; an int key refuses 1.5; a bool key takes true or false only) and
    their ranges are checked then, not at the first step.
    """

    model: str = "voxelmorph-1"          # a name of ofg_lib.models.names()
    dataset: str = "embedded"            # embedded | ixi | oasis | lpba40
    data_root: str | None = None         # folder of the real dataset (or OFG_IXI / OFG_OASIS / OFG_LPBA40)
    subset: str | None = None            # "ofg": the OFG code's sample (IXI 200 train / 20 val, OASIS 200 train)
    img_size: tuple = (80, 96, 112)      # embedded cohort size, 3 sides, or 2 for the 2-D track; real datasets set their own
    embedded_rms: float | None = None    # RMS of the cohort's deformations in voxels (default: realistic for the size)
    embedded_pairs: str = "atlas"        # atlas (atlas -> subject, the IXI setting) | subject (subject -> subject, OASIS)
    embedded_contrast: float = 0.0       # per-subject tissue contrast strength (0: the atlas's contrast)
    embedded_rms_jitter: float = 0.0     # each subject's RMS is embedded_rms * U(1 - j, 1 + j)
    embedded_fine_rms: float = 0.0       # RMS (voxels) of a fine deformation component (a quarter the length scale)
    embedded_supersample: int = 1        # make subjects on a k-times finer grid: moving and fixed equally sharp
    data_seed: int = 0                   # the embedded cohort's seed: runs with other seeds train on the same data
    lpba40_normalize: bool = True        # min-max normalise LPBA40 images (the published loader does not: false)
    augment: str | None = None           # none | flip (default: flip for ixi and lpba40, as published; else none)
    strategy: str = "ofg"                # ofg | unsupervised | self-training | optimized-self-training | mix
    epochs: int = 10
    schedule_epochs: int | None = None   # horizon of the poly schedules (network and inner lr); default: epochs
    steps_per_epoch: int = 50            # training pairs per epoch (the published code: the whole split)
    batch_size: int = 1
    lr: float = 1e-4                     # network Adam lr (the paper: 1e-4), poly(0.9) decay over schedule_epochs
    lr_schedule: str = "poly"            # poly | constant
    ofg_reg: float = 0.02                # lambda of Eq. 3: smoothness weight of the OFG loss (and of mix, Eq. 7)
    unsup_reg: float = 1.0               # smoothness weight of the unsupervised loss (the published baseline: 1)
    inner_steps: int = 10                # instance-optimizer steps per training step (the paper: 10; 0: no refinement)
    inner_lr: float = 0.1                # its Adam lr (the paper: 0.1)
    inner_lr_schedule: str = "poly"      # poly (as published: decays with the network's) | constant
    inner_reg: float = 1.0               # smoothness weight inside the optimizer's energy (the paper: 1)
    inner_optimizer: str = "adam"        # adam | sgd
    optimizer_design: str = "instance"   # instance (OFG's) | downsample | optimizer-network (Sec. 4.6, Tables 3, 4) | network
    inner_downsample: int = 2            # downsample design: the field is optimised at 1/k resolution
    inner_coarse_energy: bool = False    # downsample design: evaluate the energy at 1/k too (fast; false: full res)
    network_passes: int = 1              # network designs: passes of the optimizer network per epoch ("VoxelMorph-n")
    ofg_every: int = 1                   # epoch-interval guidance (Fig. 6): OFG on every k-th epoch, else unsupervised
    ofg_prob: float = 1.0                # threshold-based guidance (Fig. 6): a step uses OFG when U(0, 1) < p
    warmup_strategy: str | None = None   # another strategy for the first warmup_epochs epochs, then `strategy` (Fig. 7)
    warmup_epochs: int = 0
    alpha: float = 1.0                   # mix (Eq. 7): weight of L_sim
    beta: float = 1.0                    # mix (Eq. 7): weight of L_opt (MSE to phi_opt)
    teacher: str | None = None           # checkpoint of a trained model (self-training strategies)
    teacher_steps: int = 100             # optimized self-training: optimizer steps on the teacher's field
    two_way: bool | None = None          # a second optimizer step per pair, fixed->moving (default: oasis, as published)
    val_pairs: int = 10                  # validation pairs (at most the split's size)
    val_every: int = 1                   # validate every n epochs (and after the last)
    plateau_tol: float | None = None     # stop early once the smoothed val Dice gains < tol over the last third
    plateau_min_steps: int = 0           # ... but not before this many steps (see `plateaued`)
    dice_absent: str = "skip"            # Dice of a label absent from both maps: skip | zero (published IXI, OASIS) | one
    seed: int = 0                        # network initialisation, data order, augmentation, OASIS partners
    device: str = "auto"                 # auto | cpu | cuda | cuda:N
    amp: bool = False                    # bf16 autocast of the network on CUDA (logged; ignored on CPU)
    num_workers: int = 0                 # DataLoader worker processes for the training pairs
    threads: int = 0                     # torch CPU threads (0: torch's default)
    progress: bool = True                # tqdm bars (quiet anyway under CI)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            setattr(self, f.name, _typed(f.name, f.type, getattr(self, f.name)))
        _validate(self)

    @property
    def horizon(self) -> int:
        """The length of the poly schedules in epochs: `schedule_epochs`, or the run's own `epochs`."""
        return self.schedule_epochs or self.epochs

    @property
    def augment_mode(self) -> str:
        return self.augment or ("flip" if self.dataset in ("ixi", "lpba40") else "none")


# Keys that may differ when a run is resumed by hand (everything else must equal the stored config). `epochs`
# extends a run (or shortens an unfinished one, never below the epochs done); with poly schedules and no
# `schedule_epochs`, the remaining epochs then follow the new length, so an extended run equals no fresh run:
# set schedule_epochs to extend along one schedule. The runners (`exact=True`) accept differences in RUNTIME only:
# keys that change how fast a run goes or what it prints, not what it computes.
# "optimizer-network" is the paper's network-based optimizer (a persistent network of its own, trained on the
# optimizer's energy over the whole training split before each epoch); "network" is this project's earlier,
# cheaper stand-in (a per-epoch copy of the main model trained on this epoch's pairs: its labels lag by
# construction), kept so the committed ablation tables still name what they ran.
DESIGNS = ("instance", "downsample", "optimizer-network", "network")
RUNTIME = ("progress", "threads", "num_workers", "device")
RESUMABLE = ("epochs", "val_every", *RUNTIME)
CLI_FLAGS = ("out", "resume", "overwrite")       # arguments of run() and the CLI, not config keys
ENERGY_RISE_TOL = 1e-4   # refinement "raised the energy" when it ends this much above where it started
RENAMED = {"reg_weight": "ofg_reg (the 0.02 of Eq. 3; the optimizer's energy uses inner_reg, the unsupervised "
                         "loss unsup_reg)",
           "ixi_subset": "subset (it applies to OASIS too)"}
RUN_FILES = ("checkpoint.pt", "best.pt", "config.json", "log.csv", "summary.json")


def _typed(name: str, kind: str, value):
    """`value` converted to the field's declared type (a string such as "float | None"), or a clear error."""
    optional, base = kind.endswith("| None"), kind.split("|")[0].strip()
    if value is None:
        if optional:
            return None
        raise ValueError(f"{name} must be a {base}, got null")
    if base == "bool":
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value
    if base == "int":
        if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        return value
    if base == "float":
        if isinstance(value, bool):
            raise ValueError(f"{name} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number, got {value!r}") from None
    if base == "str":
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {value!r}")
        return value
    if base == "tuple":
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise ValueError(f"{name} must be a list such as [80, 96, 112], got {value!r}")
        return tuple(_typed(f"{name} entry", "int", v) for v in value)
    raise TypeError(f"{name}: no conversion for type {kind}")


def _validate(cfg: TrainConfig) -> None:
    def need(ok, key, what):
        if not ok:
            raise ValueError(f"{key} must be {what}, got {getattr(cfg, key)!r}")

    need(cfg.strategy in STRATEGIES, "strategy", f"one of {', '.join(STRATEGIES)}")
    need(re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", cfg.device) is not None, "device",
         "auto, cpu, cuda or cuda:N (mps on a Mac)")
    need(cfg.model in models.names(), "model", f"one of {', '.join(models.names())}")
    need(cfg.dataset in datasets.DATASETS, "dataset", f"one of {', '.join(datasets.DATASETS)}")
    for key in ("lr_schedule", "inner_lr_schedule"):
        need(getattr(cfg, key) in ("poly", "constant"), key, "'poly' or 'constant'")
    need(cfg.inner_optimizer in OPTIMIZERS, "inner_optimizer", f"one of {', '.join(OPTIMIZERS)}")
    need(cfg.optimizer_design in DESIGNS, "optimizer_design", f"one of {', '.join(DESIGNS)}")
    need(cfg.optimizer_design == "instance" or cfg.strategy == "ofg", "strategy",
         "'ofg' when optimizer_design is not 'instance' (the designs are OFG's pseudo-label makers)")
    need(1 <= cfg.inner_downsample <= 8, "inner_downsample", "an integer from 1 to 8")
    need(cfg.network_passes >= 1, "network_passes", "at least 1")
    need(cfg.ofg_every >= 1, "ofg_every", "at least 1")
    need(0 <= cfg.ofg_prob <= 1, "ofg_prob", "in [0, 1]")
    need((cfg.ofg_every == 1 and cfg.ofg_prob == 1) or cfg.strategy == "ofg", "strategy",
         "'ofg' when ofg_every or ofg_prob schedule the guidance")
    need(cfg.warmup_strategy in (None, *STRATEGIES), "warmup_strategy", f"null or one of {', '.join(STRATEGIES)}")
    need(cfg.warmup_epochs >= 0 and (cfg.warmup_epochs == 0 or cfg.warmup_strategy), "warmup_epochs",
         "0, or at least 1 with a warmup_strategy")
    need(cfg.augment in (None, *datasets.AUGMENTS), "augment", f"one of {', '.join(datasets.AUGMENTS)} (or null)")
    need(cfg.dice_absent in ABSENT, "dice_absent", f"one of {', '.join(ABSENT)}")
    need(cfg.subset in (None, "ofg"), "subset", "null or 'ofg'")
    need(cfg.subset is None or cfg.dataset in ("ixi", "oasis"), "subset", "null for this dataset (only ixi and "
         "oasis have the OFG code's sample)")
    need(len(cfg.img_size) in (2, 3) and min(cfg.img_size) >= 1, "img_size",
         "three positive sides, e.g. [80, 96, 112], or two for the 2-D track, e.g. [160, 192]")
    need(cfg.embedded_pairs in datasets.PAIRS, "embedded_pairs", f"one of {', '.join(datasets.PAIRS)}")
    need(0 <= cfg.embedded_rms_jitter < 1, "embedded_rms_jitter", "in [0, 1)")
    need(1 <= cfg.embedded_supersample <= 4, "embedded_supersample", "an integer from 1 to 4")
    for key in ("embedded_contrast", "embedded_fine_rms"):
        need(math.isfinite(getattr(cfg, key)) and getattr(cfg, key) >= 0, key, "a finite number >= 0")
    need(cfg.plateau_tol is None or math.isfinite(cfg.plateau_tol), "plateau_tol", "null or a finite number")
    for key in ("epochs", "steps_per_epoch", "batch_size", "val_pairs", "val_every"):
        need(getattr(cfg, key) >= 1, key, "at least 1")
    for key in ("inner_steps", "teacher_steps", "threads", "num_workers", "seed", "data_seed", "plateau_min_steps"):
        need(getattr(cfg, key) >= 0, key, "at least 0")
    need(cfg.schedule_epochs is None or cfg.schedule_epochs >= cfg.epochs, "schedule_epochs",
         f"null or at least epochs ({cfg.epochs}): a run stops on its schedule, never past its end")
    need(math.isfinite(cfg.lr) and cfg.lr > 0, "lr", "a finite number > 0")
    for key in ("inner_lr", "ofg_reg", "unsup_reg", "inner_reg", "alpha", "beta"):
        need(math.isfinite(getattr(cfg, key)) and getattr(cfg, key) >= 0, key, "a finite number >= 0")
    need(cfg.embedded_rms is None or (math.isfinite(cfg.embedded_rms) and cfg.embedded_rms >= 0), "embedded_rms",
         "null or a finite number >= 0")
    for key in ("strategy", "warmup_strategy"):
        if getattr(cfg, key) in ("self-training", "optimized-self-training") and not cfg.teacher:
            raise ValueError(f"{key} {getattr(cfg, key)!r} needs teacher: the checkpoint of a trained model")


def load_config(config=None, overrides=None) -> TrainConfig:
    """A TrainConfig from a dict, a YAML file or a TrainConfig, plus `key=value` overrides; unknown keys are errors."""
    import yaml
    if isinstance(config, TrainConfig):
        values = dataclasses.asdict(config)
    elif config is None:
        values = {}
    elif isinstance(config, (str, Path)):
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: config file not found")
        values = _yaml(path.read_text(), str(path))
        if values is None:
            raise ValueError(f"{path}: the config file is empty (or holds only comments); write the keys to change, "
                             "e.g. `epochs: 5`, or leave out --config to train with the defaults")
        if not isinstance(values, dict):
            raise ValueError(f"{path}: a config is a flat YAML mapping of key: value")
        flags = sorted(set(values) & set(CLI_FLAGS))
        if flags:
            raise ValueError(f"{path}: {', '.join(flags)} are command-line flags (--{' --'.join(flags)}), not "
                             "config keys")
    else:
        values = dict(config)
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"--set takes key=value, got {item!r}")
        key, value = item.split("=", 1)
        key = key.strip()
        if key in CLI_FLAGS:
            raise ValueError(f"--set {item}: {key} is a command-line flag, not a config key: use --{key}")
        values[key] = _yaml(value, f"--set {item}")
    renamed = [f"{k} is now {RENAMED[k]}" for k in values if k in RENAMED]
    if renamed:
        raise ValueError("renamed config key(s): " + "; ".join(renamed))
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known - {"out", "resume", "overwrite"})
    if unknown:
        raise ValueError(f"unknown config key(s): {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
    return TrainConfig(**{k: v for k, v in values.items() if k in known})


@functools.cache
def _unique_key_loader():
    """A yaml SafeLoader that refuses duplicate keys (PyYAML keeps the last one silently); built once."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (line {key_node.start_mark.line + 1})", key_node.start_mark)
            seen.add(key)
        return yaml.SafeLoader.construct_mapping(loader, node, deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return Loader


def _yaml(text: str, where: str):
    """YAML text parsed with duplicate keys refused; a syntax error becomes a ValueError naming `where`."""
    import yaml
    try:
        return yaml.load(text, Loader=_unique_key_loader())
    except yaml.constructor.ConstructorError as e:
        if (e.problem or "").startswith("duplicate key"):
            raise ValueError(f"{where}: {e.problem}: give each key once") from None
        raise ValueError(f"{where}: not valid YAML ({' '.join(str(e).split())[:300]})") from None
    except yaml.YAMLError as e:
        first = " ".join(str(e).split())[:300]
        raise ValueError(f"{where}: not valid YAML ({first})") from None


def config_differences(stored: dict, cfg: TrainConfig, ignore=RESUMABLE) -> list[str]:
    """`key: stored -> requested` for every key (outside `ignore`) where a stored run's config differs.

    A key the stored config lacks was added to TrainConfig after the run; its default reproduces the behaviour
    the run had, so it counts as stored with its default value.
    """
    want = json.loads(json.dumps(dataclasses.asdict(cfg)))
    defaults = json.loads(json.dumps(dataclasses.asdict(TrainConfig())))
    stored = {**{k: v for k, v in defaults.items() if k not in stored}, **stored}
    keys = sorted((set(stored) | set(want)) - set(ignore))
    return [f"{k}: {stored.get(k, '(absent)')!r} -> {want.get(k, '(absent)')!r}" for k in keys
            if stored.get(k, "(absent)") != want.get(k, "(absent)")]


# ---------------------------------------------------------------------------------------------- helpers
def _collate(items):
    batch = {k: torch.stack([it[k] for it in items]) for k in items[0] if k != "id"}
    batch["id"] = [it["id"] for it in items]
    return batch


def _poly(base, epoch, epochs):
    return round(base * (1 - epoch / epochs) ** 0.9, 8)


PLATEAU_WINDOW = 5     # validations in the moving average of the plateau rule


def plateaued(history, tol: float, min_steps: int = 0, window: int = PLATEAU_WINDOW) -> bool:
    """The plateau rule: the validation Dice, smoothed by a moving average over `window` validations, gained
    less than `tol` over the last third of the run (in steps), and the run has taken at least `min_steps` steps.

    A rule of the history alone, so a resumed run stops where an uninterrupted one did.
    """
    rows = [r for r in history if r.get("val_dice") is not None]
    if not rows or rows[-1]["step"] < min_steps or len(rows) < 2 * window:
        return False
    dice = np.array([r["val_dice"] for r in rows], dtype=float)
    smooth = np.convolve(dice, np.ones(window) / window, mode="valid")     # smooth[i] ends at rows[i + window - 1]
    steps = np.array([r["step"] for r in rows])[window - 1:]
    then = int(np.searchsorted(steps, steps[-1] * 2 / 3, side="right")) - 1
    return then >= 0 and then < len(smooth) - 1 and float(smooth[-1] - smooth[then]) < tol


def _finite_parameters(model) -> bool:
    """Whether every parameter is finite (one device synchronisation)."""
    return bool(torch.stack([torch.isfinite(p.detach()).all() for p in model.parameters()]).all())


def check_scored(dataset, n: int, name: str) -> None:
    """Fail at start-up when a validation pair has nothing to score (no evaluated label, or no labelled voxel)."""
    for i in range(min(n, len(dataset))):
        item = dataset[i]
        if "fixed_seg" not in item or "moving_seg" not in item:
            raise ValueError(f"{name} validation pair {item.get('id', i)} has no label maps: nothing to score")
        found = set(torch.unique(item["fixed_seg"]).tolist()) | set(torch.unique(item["moving_seg"]).tolist())
        scored = found & set(dataset.labels)
        if not scored or not bool((item["fixed_seg"] > 0).any()):
            shown = sorted(found)[:20]
            raise ValueError(f"{name} validation pair {item.get('id', i)} holds no evaluated label: labels found "
                             f"{shown}{' ...' if len(found) > 20 else ''}, labels evaluated "
                             f"{list(dataset.labels)[:20]}{' ...' if len(dataset.labels) > 20 else ''}")


# ---------------------------------------------------------------------------------------------- trainer
class Trainer:
    """Trains `cfg.model` with `cfg.strategy`; `fit()` runs (or resumes) all epochs and returns the summary."""

    def __init__(self, cfg: TrainConfig, out: str | Path | None = None, callbacks=(), overwrite: bool = False):
        if out is not None and not str(out).strip():
            raise ValueError("out is empty (an unset variable in --out \"$OUT\"?): give a run folder, or leave out "
                             "out (None) to train without writing files")
        self.cfg, self.out, self.callbacks = cfg, Path(out) if out is not None else None, list(callbacks)
        self.overwrite = overwrite
        self.rank, self.world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        self.distributed = self.world > 1
        if self.distributed and not torch.distributed.is_initialized():
            torch.distributed.init_process_group(distributed_backend(cfg.device))
        dev = resolve_device(cfg.device)
        if self.distributed:
            dev = rank_device(dev, int(os.environ.get("LOCAL_RANK", 0)))
        self.device = dev
        if self.distributed and cfg.plateau_tol is not None:
            raise ValueError("plateau_tol stops a run on rank 0's validation, which the other ranks do not see: "
                             "use it in single-process runs")
        self._threads_before = torch.get_num_threads()   # restored when fit() ends (one process runs many runs)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        seed_all(cfg.seed)
        self.train_set, self.val_set = datasets.from_config(cfg, "train"), datasets.from_config(cfg, "val")
        check_scored(self.val_set, cfg.val_pairs, cfg.dataset)
        self.img_size = tuple(self.val_set[0]["fixed"].shape[1:])
        self.model = models.build(cfg.model, self.img_size).to(dev)
        self.net = self.model
        if self.distributed:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[dev.index] if dev.index is not None else None)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, amsgrad=True)
        self.amp = bool(cfg.amp and amp_available(dev))
        self.two_way = cfg.two_way if cfg.two_way is not None else cfg.dataset == "oasis"
        self.teacher, self.cache = None, {}
        self.pseudo_net = self.pseudo_opt = None
        if cfg.optimizer_design == "optimizer-network":
            with fork_rng():                             # its own initialisation; the global RNGs are left as they were
                torch.manual_seed(cfg.seed + 7919)
                self.pseudo_net = models.build(cfg.model, self.img_size).to(dev)
            self.pseudo_opt = torch.optim.Adam(self.pseudo_net.parameters(), lr=cfg.lr, amsgrad=True)
        if cfg.teacher:
            self.teacher = self._load_teacher(cfg.teacher)
        self.epoch, self.step, self.updates, self.best_dice, self.history = 0, 0, 0, -1.0, []
        self.inner_lr = cfg.inner_lr
        self.timer = {"network": 0.0, "inner": 0.0, "data": 0.0}
        self.current = cfg.strategy          # the strategy of the step being taken (schedules switch it)
        self._claimed = False

    def _load_teacher(self, path):
        state = load_checkpoint(path, "teacher checkpoint")
        size = tuple(state.get("img_size") or state["config"]["img_size"])
        if size != self.img_size:
            raise ValueError(f"{path}: the teacher was trained at {size}, this run's data are {self.img_size}")
        teacher = models.build(state["config"]["model"], self.img_size).to(self.device).eval()
        teacher.load_state_dict(state["model"])
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher

    # -- files ------------------------------------------------------------------------------------------
    def state(self) -> dict:
        """The checkpoint: tensors and plain values only (it loads with weights_only=True)."""
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(), "epoch": self.epoch,
                "img_size": list(self.img_size), "step": self.step, "updates": self.updates,
                "best_dice": self.best_dice, "history": self.history,
                "config": json.loads(json.dumps(dataclasses.asdict(self.cfg))), "rng": rng_state(),
                **({"optimizer_network": self.pseudo_net.state_dict(),
                    "optimizer_network_adam": self.pseudo_opt.state_dict()} if self.pseudo_opt is not None else {})}

    def _claim(self):
        """Before the first file of this run: with overwrite, delete the old run's files (only RUN_FILES)."""
        if self._claimed or self.out is None or self.rank != 0:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        remove_partials(self.out)
        if self.overwrite:
            for name in RUN_FILES:
                (self.out / name).unlink(missing_ok=True)
            for cached in self.out.glob("score-*.json"):     # ofg_lib.evaluate.score_run's caches of the old run
                cached.unlink(missing_ok=True)
        write_json(self.out / "config.json", dataclasses.asdict(self.cfg))
        self._claimed = True

    def save(self, name="checkpoint.pt"):
        if self.out is None or self.rank != 0:
            return
        if not _finite_parameters(self.model):
            raise FloatingPointError(f"refusing to write {self.out / name}: the weights are not finite")
        self._claim()
        atomic_save(self.state(), self.out / name)

    def load(self, path, exact: bool = False):
        """Continue the run of checkpoint `path`: its config must match (module docstring), epochs never shrink."""
        state = load_checkpoint(path)
        diff = config_differences(state["config"], self.cfg, RUNTIME if exact else RESUMABLE)
        if diff and exact:
            raise ValueError(f"{Path(path).parent} holds a run of another config, so it cannot be reused for this "
                             f"one (a runner reuses only identical runs, epochs included). Differences (stored -> "
                             f"requested): {'; '.join(diff)}. Delete the folder, or use another output folder.")
        if diff:
            raise ValueError(f"{path} was trained with another config; resuming would mix two runs. Differences "
                             f"(stored -> requested): {'; '.join(diff)}. Keys that may change on resume: "
                             f"{', '.join(RESUMABLE)}. Use another --out, or --overwrite to start again.")
        if state["epoch"] > self.cfg.epochs:
            raise ValueError(f"{path} has trained {state['epoch']} epochs; resuming with epochs={self.cfg.epochs} "
                             f"would leave a run whose config, checkpoint and summary disagree. Ask for at least "
                             f"{state['epoch']} epochs, or train a new run (another --out, or --overwrite).")
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.epoch, self.step, self.best_dice = state["epoch"], state["step"], state["best_dice"]
        self.updates, self.history = state.get("updates", state["step"]), state["history"]
        set_rng_state(state["rng"])
        if self.pseudo_opt is not None:
            self.pseudo_net.load_state_dict(state["optimizer_network"])
            self.pseudo_opt.load_state_dict(state["optimizer_network_adam"])

    def _write_log(self):
        keys = list(dict.fromkeys(k for row in self.history for k in row))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        w.writerows(self.history)
        atomic_write(self.out / "log.csv", buf.getvalue())

    # -- one epoch --------------------------------------------------------------------------------------
    def _order(self, epoch):
        """Training items of an epoch: a permutation seeded by (seed, epoch), cycled; this rank's share."""
        g = torch.Generator().manual_seed(self.cfg.seed * 100003 + epoch)
        n = len(self.train_set)
        need = self.cfg.steps_per_epoch * self.cfg.batch_size * self.world
        idx = torch.cat([torch.randperm(n, generator=g) for _ in range(math.ceil(need / n))])[:need].tolist()
        return idx[self.rank::self.world]

    def _loader(self, epoch):
        order, bs = self._order(epoch), self.cfg.batch_size
        batches = [order[i * bs:(i + 1) * bs] for i in range(self.cfg.steps_per_epoch)]
        # its own generator: a DataLoader would otherwise draw its worker seed from the global torch RNG
        return torch.utils.data.DataLoader(self.train_set, batch_sampler=batches, collate_fn=_collate,
                                           num_workers=self.cfg.num_workers,
                                           generator=torch.Generator().manual_seed(self.cfg.seed + epoch))

    def _augment(self, batch, g):
        if self.cfg.augment_mode == "none":
            return batch
        items = [{k: batch[k][b] for k in batch if k != "id"} for b in range(len(batch["id"]))]
        items = [{**datasets.flip_pair(it, g), "id": key} for it, key in zip(items, batch["id"])]
        return _collate(items)

    def _refine(self, phi, moving, fixed, steps, lr):
        """The instance optimizer on a detached copy of `phi`, timed; returns phi_opt and the energy log.

        The optimizer design applies to OFG steps only (`self.current == "ofg"`): with `optimizer_design: network`
        the pseudo label is the optimizer network's prediction, with `downsample` the field is optimised at
        1/`inner_downsample` resolution; other strategies that refine (mix, optimized self-training) always use
        the instance optimizer.
        """
        synchronize(self.device)
        t0 = time.perf_counter()
        design = self.cfg.optimizer_design if self.current == "ofg" else "instance"
        if design in ("network", "optimizer-network"):
            with torch.no_grad():
                target = models.predict(self.pseudo_net, moving, fixed).float()
            synchronize(self.device)
            self.timer["inner"] += time.perf_counter() - t0
            return target.to(phi.dtype), {}
        r = refine_with_history(phi.detach().float(), moving.float(), fixed.float(), steps=steps, lr=lr,
                                reg_weight=self.cfg.inner_reg, optimizer=self.cfg.inner_optimizer,
                                final_energy=True, downsample=self.cfg.inner_downsample if design == "downsample" else 1,
                                coarse_energy=self.cfg.inner_coarse_energy)
        synchronize(self.device)
        self.timer["inner"] += time.perf_counter() - t0
        logs = {"energy_before": r.energies[0] if r.energies else float("nan"),
                "energy_after": r.final_energy if r.final_energy is not None else float("nan")}
        return r.disp.to(phi.dtype), logs

    def train_persistent_optimizer_network(self, epoch: int, lr: float):
        """The paper's network-based optimizer (Sec. 4.6, Table 3): a network of its own (same architecture,
        its own initialisation, weights and Adam, never re-copied from the main model), trained before each
        guided epoch for `network_passes` passes over the whole training split on the optimizer's energy,
        LNCC + inner_reg * grad_l2; its predictions are that epoch's pseudo labels. Checkpointed with the run."""
        from .losses import unsupervised_loss
        from .transform import warp
        synchronize(self.device)
        t0 = time.perf_counter()
        net, opt = self.pseudo_net, self.pseudo_opt
        for group in opt.param_groups:
            group["lr"] = lr
        net.train()
        n, bs = len(self.train_set), self.cfg.batch_size
        for p in range(self.cfg.network_passes):
            g = torch.Generator().manual_seed(self.cfg.seed * 100003 + epoch * 101 + p + 424243)
            order = torch.randperm(n, generator=g).tolist()
            for i in range(0, n, bs):
                batch = _collate([self.train_set[j] for j in order[i:i + bs]])
                moving, fixed = batch["moving"].to(self.device), batch["fixed"].to(self.device)
                opt.zero_grad(set_to_none=True)
                phi = models.predict(net, moving, fixed)
                unsupervised_loss(fixed, warp(moving, phi), phi, self.cfg.inner_reg).backward()
                opt.step()
        net.eval()
        synchronize(self.device)
        self.timer["inner"] += time.perf_counter() - t0

    def train_optimizer_network(self, epoch: int, lr: float):
        """The network-based optimizer (Sec. 4.6, Table 3): a copy of the main model, trained for
        `network_passes` passes over this epoch's training pairs with the unsupervised loss; its predictions are
        the epoch's pseudo labels. The main model is not touched (its weights change only in its own steps)."""
        import copy
        synchronize(self.device)
        t0 = time.perf_counter()
        helper = copy.deepcopy(self.model).train()
        opt = torch.optim.Adam(helper.parameters(), lr=lr, amsgrad=True)
        for p in range(self.cfg.network_passes):
            for batch in self._loader(epoch):
                moving, fixed = batch["moving"].to(self.device), batch["fixed"].to(self.device)
                opt.zero_grad(set_to_none=True)
                phi = models.predict(helper, moving, fixed)
                step = Step(moving, fixed, batch["id"], self.cfg, self.inner_lr, self._refine)
                STRATEGIES["unsupervised"](step, phi)[0].backward()
                opt.step()
        self.pseudo_net = helper.eval()
        synchronize(self.device)
        self.timer["inner"] += time.perf_counter() - t0

    def may_guide(self, epoch: int) -> bool:
        """Whether an epoch can take OFG steps under the schedule (after the warm-up, on an `ofg_every` epoch)."""
        cfg = self.cfg
        return cfg.strategy == "ofg" and epoch >= cfg.warmup_epochs and (epoch + 1) % cfg.ofg_every == 0

    def step_strategy(self, epoch: int, coin: torch.Generator) -> str:
        """The strategy of one training step under the guidance schedule (warm-up, ofg_every, ofg_prob).

        Warm-up: `warmup_strategy` for epochs 0 .. warmup_epochs - 1. Epoch-interval guidance: OFG on epochs
        k, 2k, ... (1-based), unsupervised on the others. Threshold-based guidance: OFG when a uniform draw from
        `coin` (seeded by seed and epoch: resumable) falls below `ofg_prob`, as the paper describes it.
        """
        cfg = self.cfg
        if epoch < cfg.warmup_epochs:
            return cfg.warmup_strategy
        if cfg.strategy == "ofg":
            if (epoch + 1) % cfg.ofg_every:
                return "unsupervised"
            if cfg.ofg_prob < 1 and not float(torch.rand((), generator=coin)) < cfg.ofg_prob:
                return "unsupervised"
        return cfg.strategy

    def _update(self, moving, fixed, ids, lr, name=None):
        """One network update on one direction of a batch; returns the loss and the strategy's logs."""
        name = name or self.cfg.strategy
        self.current = name
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            phi = models.predict(self.net, moving, fixed)
        bad = int((~torch.isfinite(phi.detach())).sum())
        if bad:      # before any strategy sees it: one message for every strategy
            raise FloatingPointError(f"training diverged at step {self.step + 1} ({name}, lr {lr:g}): the network "
                                     f"predicted {bad} non-finite displacement value(s); lower lr")
        step = Step(moving, fixed, ids, self.cfg, self.inner_lr, self._refine, self.teacher, self.cache)
        loss, logs = STRATEGIES[name](step, phi.float())
        total = float(loss.detach())
        if not math.isfinite(total):
            raise FloatingPointError(f"training diverged at step {self.step + 1} ({name}, lr {lr:g}): "
                                     f"the loss is {total}; lower lr")
        loss.backward()
        self.opt.step()
        self.updates += 1
        if not _finite_parameters(self.model):
            where = f"; the last checkpoint, {self.out / 'checkpoint.pt'}, is untouched" if self.out else ""
            raise FloatingPointError(f"training diverged at step {self.step + 1} ({name}, lr {lr:g}): "
                                     f"the weights are not finite after the optimizer step{where}; lower lr")
        return total, logs

    def train_epoch(self):
        cfg, epoch = self.cfg, self.epoch
        lr = _poly(cfg.lr, epoch, cfg.horizon) if cfg.lr_schedule == "poly" else cfg.lr
        self.inner_lr = _poly(cfg.inner_lr, epoch, cfg.horizon) if cfg.inner_lr_schedule == "poly" else cfg.inner_lr
        for group in self.opt.param_groups:
            group["lr"] = lr
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(epoch)
        self.net.train()
        sums, counts, count, guided = {}, {}, 0, 0
        flips = torch.Generator().manual_seed(cfg.seed * 100003 + epoch + 7919)
        coin = torch.Generator().manual_seed(cfg.seed * 100003 + epoch + 15485863)
        self.timer = {"network": 0.0, "inner": 0.0, "data": 0.0}
        peak_memory_mb(self.device, reset=True)        # a new GPU peak per epoch (the CPU's is per process)
        if cfg.optimizer_design == "network" and self.may_guide(epoch):
            self.train_optimizer_network(epoch, lr)
        if cfg.optimizer_design == "optimizer-network" and self.may_guide(epoch):
            self.train_persistent_optimizer_network(epoch, lr)
        batches = iter(self._loader(epoch))
        bar = progress_bar(range(cfg.steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs} {cfg.strategy}",
                           disable=not cfg.progress or self.rank != 0, leave=False)
        for _ in bar:
            t_data = time.perf_counter()
            batch = self._augment(next(batches), flips)
            batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            directions = [(batch["moving"], batch["fixed"], batch["id"])]
            if self.two_way:          # the published OASIS training: a second full update, fixed -> moving
                directions.append((batch["fixed"], batch["moving"], [f"{k}:reverse" for k in batch["id"]]))
            synchronize(self.device)
            t0, inner0 = time.perf_counter(), self.timer["inner"]
            self.timer["data"] += t0 - t_data
            total, name = 0.0, self.step_strategy(epoch, coin)
            guided += name != "unsupervised"
            for moving, fixed, ids in directions:
                loss, logs = self._update(moving, fixed, ids, lr, name)
                if "energy_after" in logs:      # the optimizer should lower its energy; count when it did not
                    rose = logs["energy_after"] > logs["energy_before"] + ENERGY_RISE_TOL
                    logs = {**logs, "energy_rise_share": float(rose)}
                total += loss / len(directions)
                for k, v in logs.items():       # averaged over the steps that log them (schedules mix strategies)
                    sums[k] = sums.get(k, 0.0) + v / len(directions)
                    counts[k] = counts.get(k, 0) + 1 / len(directions)
            synchronize(self.device)
            self.timer["network"] += time.perf_counter() - t0 - (self.timer["inner"] - inner0)
            sums["loss"] = sums.get("loss", 0.0) + total
            count += 1
            self.step += 1
            if cfg.progress:
                bar.set_postfix(loss=f"{total:.4f}")
        counts["loss"] = count
        if sums.get("energy_rise_share", 0) > 0:
            share = sums["energy_rise_share"] / counts["energy_rise_share"]
            warnings.warn(f"epoch {epoch + 1}: the instance optimizer raised its energy (by > {ENERGY_RISE_TOL:g}) in "
                          f"{100 * share:.0f} % of its refinements (inner_lr {self.inner_lr:g}): its pseudo labels are "
                          f"worse than the field it started from; lower inner_lr", RuntimeWarning, stacklevel=2)
        return {"epoch": epoch + 1, "step": self.step, "updates": self.updates, "lr": lr, "inner_lr": self.inner_lr,
                "guided_share": guided / count, **{k: v / counts[k] for k, v in sums.items()},
                "sec_per_step_network": self.timer["network"] / count,
                "sec_per_step_inner": self.timer["inner"] / count, "sec_per_step_data": self.timer["data"] / count,
                "peak_memory_mb": peak_memory_mb(self.device)}

    def validate(self) -> dict:
        self.model.eval()
        r = evaluate(self.model, self.val_set, self.cfg.val_pairs, self.device, time_repeats=0, amp=self.amp,
                     absent=self.cfg.dice_absent)
        return {"val_dice": r["dice"], "val_dice_std": r["dice_std"], "fold_fraction": r["fold_fraction"],
                "fold_fraction_brain": r["fold_fraction_brain"], "sdlogj": r["sdlogj"], "epe": r["epe"],
                # the unsupervised loss on the validation pairs, whatever the strategy (Table 2's convergence loss)
                "val_unsup_loss": r["lncc"] + self.cfg.unsup_reg * r["grad_l2"]}

    # -- the loop ---------------------------------------------------------------------------------------
    def fit(self, resume: bool | str = False, exact: bool = False) -> dict:
        """Train all epochs. A folder holding a run needs `resume` (continue it) or `overwrite` (replace it).

        `resume=True` continues the folder's run and refuses a folder without one; `resume="auto"` continues
        one if there is one and starts one if not. `exact=True` continues (or reuses, when finished) only a run of
        the identical config (module docstring). The folder is claimed (`ofg_lib.runs`) until fit returns.
        """
        if resume not in (False, True, "auto"):
            raise ValueError(f"resume must be False, True or 'auto', got {resume!r}")
        try:
            if resume is True and (self.out is None or not (self.out / "checkpoint.pt").exists()):
                self._nothing_to_resume()            # before claiming: a mistyped --out is not created
            if self.out is None or self.rank != 0:
                return self._fit(resume, exact)
            with claim(self.out, "training run"):
                return self._fit(resume, exact)
        finally:
            torch.set_num_threads(self._threads_before)

    def _nothing_to_resume(self):
        where = f"{self.out} holds no run (no checkpoint.pt)" if self.out is not None else "no run folder given"
        raise FileNotFoundError(f"nothing to resume: {where}. Leave out --resume (resume) to start a new run")

    def _fit(self, resume, exact) -> dict:
        cfg = self.cfg
        existing = self.out is not None and (self.out / "checkpoint.pt").exists()
        if resume is True and not existing:        # checked again under the claim
            self._nothing_to_resume()
        if existing and resume:
            self.load(self.out / "checkpoint.pt", exact)
        elif existing and not self.overwrite:
            raise FileExistsError(f"{self.out} already holds a run (checkpoint.pt): pass --resume (resume=True) to "
                                  f"continue it, or --overwrite (overwrite=True) to replace it, or choose another "
                                  f"--out")
        if self.rank == 0 and not (existing and self.overwrite):
            self._claim()        # with overwrite, the old run stays until the new one writes its first checkpoint
        while self.epoch < cfg.epochs and not self.stopped():
            row = self.train_epoch()
            last = self.epoch + 1 == cfg.epochs
            if self.rank == 0 and ((self.epoch + 1) % cfg.val_every == 0 or last):
                row.update(self.validate())
                if row["val_dice"] > self.best_dice:
                    self.best_dice = row["val_dice"]
                    self.save("best.pt")
            self.epoch += 1
            self.history.append(row)
            if self.rank == 0 and self.out is not None:
                self.save()
                self._write_log()
            for cb in self.callbacks:
                cb(self, row)
        # Ctrl-C (KeyboardInterrupt) is not caught: the checkpoint of the last finished epoch is already on disk,
        # and saving mid-epoch weights under that epoch's number would break bit-identical resumption.
        return self.summary()

    def stopped(self) -> bool:
        """Whether the plateau rule (`plateau_tol`) ends the run before `epochs`."""
        return self.cfg.plateau_tol is not None and plateaued(self.history, self.cfg.plateau_tol,
                                                              self.cfg.plateau_min_steps)

    def replicas_agree(self) -> bool | None:
        """Under DDP, whether every process holds the same weights (None when not distributed)."""
        if not self.distributed:
            return None
        flat = torch.cat([p.detach().double().flatten() for p in self.model.parameters()])
        mine = torch.stack([flat.sum(), flat.square().sum()]).to(self.device)
        every = [torch.zeros_like(mine) for _ in range(self.world)]
        torch.distributed.all_gather(every, mine)
        return all(torch.equal(every[0], e) for e in every)

    def summary(self) -> dict:
        last_val = next((r for r in reversed(self.history) if "val_dice" in r), {})
        rows = self.history or [{}]
        s = {"strategy": self.cfg.strategy, "model": self.cfg.model, "dataset": self.cfg.dataset,
             "img_size": list(self.img_size), "epochs": self.epoch, "steps": self.step, "updates": self.updates,
             **{k: last_val.get(k) for k in ("val_dice", "val_dice_std", "fold_fraction", "fold_fraction_brain",
                                                "sdlogj", "epe")},
             "best_val_dice": self.best_dice if self.best_dice >= 0 else None,
             "stopped_early": self.epoch < self.cfg.epochs and self.stopped(),
             "sec_per_step_network": float(np.mean([r.get("sec_per_step_network", 0) for r in rows])),
             "sec_per_step_inner": float(np.mean([r.get("sec_per_step_inner", 0) for r in rows])),
             "sec_per_step_data": float(np.mean([r.get("sec_per_step_data", 0) for r in rows])),
             "seed": self.cfg.seed, "data_seed": self.cfg.data_seed, "device": str(self.device), "amp": self.amp,
             "world_size": self.world, "replicas_agree": self.replicas_agree(),
             "parameters": models.count_parameters(self.model),
             # the CPU convolution path this process used (models/layers.py); a resumed run may have mixed both,
             # which changes its numbers at float32 rounding only
             "cpu_channels_last": models.layers.cpu_channels_last() if self.device.type == "cpu" else None,
             # and whether its instance optimizer ran the fused CPU kernels (optimizer.cpu_kernels; same caveat)
             "cpu_kernels": cpu_kernels() if self.device.type == "cpu" else None}
        if self.out is not None and self.rank == 0:
            self._claim()
            write_json(self.out / "summary.json", s)
        return s


def run(config, out=None, resume: bool | str = False, callbacks=(), overwrite: bool = False,
        exact: bool = False) -> dict:
    """Train from a config (dict, YAML path or TrainConfig) and return the summary dict.

    A folder that already holds a run is refused unless `resume=True` (continue it: the config must equal the
    stored one except for RESUMABLE keys) or `overwrite=True` (replace it: the old run's RUN_FILES are deleted
    when the new run writes its first checkpoint, at the end of its first epoch; nothing else in the folder).
    `resume="auto"` resumes a run if the folder holds one and starts one if not; `exact=True` reuses only a run of
    the identical config (see the module docstring). The process's torch thread count is restored afterwards.
    """
    if isinstance(config, dict):
        out = out if out is not None else config.get("out")
        resume = resume or bool(config.get("resume", False))
        overwrite = overwrite or bool(config.get("overwrite", False))
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: continue the run or replace it")
    cfg = load_config(config)
    threads = torch.get_num_threads()
    try:
        return Trainer(cfg, out, callbacks, overwrite=overwrite).fit(resume=resume, exact=exact)
    finally:
        torch.set_num_threads(threads)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m ofg_lib.train", description="Train a registration network.")
    p.add_argument("--config", help="flat YAML mapping of TrainConfig keys")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--out", required=True, help="run folder: checkpoint.pt, log.csv, summary.json")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--resume", action="store_true", help="continue OUT's run (same config)")
    what.add_argument("--overwrite", action="store_true",
                      help="replace OUT's run (its files are deleted when the new run writes its first checkpoint)")
    args = p.parse_args(argv)
    if not args.out.strip():
        p.error("--out is empty (an unset variable in --out \"$OUT\"?): give the run folder")
    try:
        cfg = load_config(args.config, args.set)
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    try:
        summary = Trainer(cfg, args.out, overwrite=args.overwrite).fit(resume=args.resume)
    except KeyboardInterrupt:
        print(f"\nstopped; {args.out}/checkpoint.pt holds the last finished epoch (if any): continue with "
              f"--resume", file=sys.stderr)
        sys.exit(130)
    except (FileExistsError, ValueError, FileNotFoundError, FloatingPointError, FolderBusyError,
            DeviceUnavailable) as e:       # anything else is a bug: its traceback is worth seeing
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    if int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps(summary, indent=1))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
