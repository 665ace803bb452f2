"""The flat, typed config of a training run (notebook 05): every key with its type and default, loading from a
dict, a YAML file or `key=value` overrides, validation, and the comparison of a stored run's config with a
requested one (what resuming and the experiment runners' exact reuse rest on).

    cfg = ofg_lib.config.load_config("configs/cpu_smoke.yaml", ["epochs=3"])

The YAML keys, the notebooks' parameter cells and the CLI's `--set` use the same names. `ofg_lib.train`
re-exports `TrainConfig`, `load_config`, `RESUMABLE`, `RUNTIME` and `CLI_FLAGS` under their old names.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from . import data as datasets
from . import guidance, models, optimizer, strategies
from .metrics import ABSENT
from .guidance import DESIGNS  # noqa: F401 (re-exported)

__all__ = ["TrainConfig", "load_config", "config_differences", "check_resume", "from_namespace", "DESIGNS", "RUNTIME", "RESUMABLE",
           "CLI_FLAGS", "RENAMED"]


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
RUNTIME = ("progress", "threads", "num_workers", "device")
RESUMABLE = ("epochs", "val_every", *RUNTIME)
CLI_FLAGS = ("out", "resume", "overwrite")       # arguments of run() and the CLI, not config keys
RENAMED = {"reg_weight": "ofg_reg (the 0.02 of Eq. 3; the optimizer's energy uses inner_reg, the unsupervised "
                         "loss unsup_reg)",
           "ixi_subset": "subset (it applies to OASIS too)"}


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
    """The loop's keys here; each owner checks its own (data, models, strategies, optimizer, guidance)."""
    def need(ok, key, what):
        if not ok:
            raise ValueError(f"{key} must be {what}, got {getattr(cfg, key)!r}")

    need(re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", cfg.device) is not None, "device",
         "auto, cpu, cuda or cuda:N (mps on a Mac)")
    need(cfg.model in models.names(), "model", f"one of {', '.join(models.names())}")
    for owner in (strategies, datasets, optimizer, guidance):
        owner.check_config(cfg, need)
    for key in ("lr_schedule", "inner_lr_schedule"):
        need(getattr(cfg, key) in ("poly", "constant"), key, "'poly' or 'constant'")
    need(cfg.dice_absent in ABSENT, "dice_absent", f"one of {', '.join(ABSENT)}")
    need(cfg.plateau_tol is None or math.isfinite(cfg.plateau_tol), "plateau_tol", "null or a finite number")
    for key in ("epochs", "steps_per_epoch", "batch_size", "val_pairs", "val_every"):
        need(getattr(cfg, key) >= 1, key, "at least 1")
    for key in ("threads", "num_workers", "seed", "data_seed", "plateau_min_steps"):
        need(getattr(cfg, key) >= 0, key, "at least 0")
    need(cfg.schedule_epochs is None or cfg.schedule_epochs >= cfg.epochs, "schedule_epochs",
         f"null or at least epochs ({cfg.epochs}): a run stops on its schedule, never past its end")
    need(math.isfinite(cfg.lr) and cfg.lr > 0, "lr", "a finite number > 0")


def load_config(config=None, overrides=None) -> TrainConfig:
    """A TrainConfig from a dict, a YAML file or a TrainConfig, plus `key=value` overrides; unknown keys are errors."""
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


def check_resume(stored: dict, epochs_done: int, cfg: TrainConfig, path, exact: bool = False) -> None:
    """Refuse to continue the run of checkpoint `path` (its `stored` config, `epochs_done` epochs) under `cfg`
    when the configs differ outside RESUMABLE (outside RUNTIME with `exact`, the runners' rule) or when `cfg`
    asks for fewer epochs than done."""
    diff = config_differences(stored, cfg, RUNTIME if exact else RESUMABLE)
    if diff and exact:
        raise ValueError(f"{Path(path).parent} holds a run of another config, so it cannot be reused for this "
                         f"one (a runner reuses only identical runs, epochs included). Differences (stored -> "
                         f"requested): {'; '.join(diff)}. Delete the folder, or use another output folder.")
    if diff:
        raise ValueError(f"{path} was trained with another config; resuming would mix two runs. Differences "
                         f"(stored -> requested): {'; '.join(diff)}. Keys that may change on resume: "
                         f"{', '.join(RESUMABLE)}. Use another --out, or --overwrite to start again.")
    if epochs_done > cfg.epochs:
        raise ValueError(f"{path} has trained {epochs_done} epochs; resuming with epochs={cfg.epochs} "
                         f"would leave a run whose config, checkpoint and summary disagree. Ask for at least "
                         f"{epochs_done} epochs, or train a new run (another --out, or --overwrite).")


def from_namespace(namespace: dict, exclude=(), **values) -> dict:
    """The config keys a notebook's parameter cell defines: {key: namespace[key]} for every TrainConfig key
    found in `namespace` (e.g. `globals()`) and not in `exclude`, then `values` (conversions such as
    `data_root=data_root or None`).

    Parameter cells name their variables as the config keys, so a notebook builds its config in one call
    instead of re-typing each key; other names in the namespace (seeds, run_dir, imported modules) are ignored.
    `exclude` names the parameters that share a key's name but hold something else (a sweep's list of values).
    """
    keys = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in exclude]
    return {**{k: namespace[k] for k in keys if k in namespace}, **values}
