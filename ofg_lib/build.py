"""What a training run is made of, built from its config: the one place that builds (notebook 05).

`trainer_parts(config, out)` returns the keyword arguments of `ofg_lib.train.Trainer`: the config, the device
(this process's one under DDP), the seeded model (wrapped for DDP), the train and validation sets, the guidance
(`ofg_lib.guidance.Guide`), the teacher of the self-training strategies and the run folder. The trainer builds
nothing itself (as minGPT's `Trainer(config, model, train_dataset)`), so a notebook or a new experiment can
hand it other parts. Order matters for reproducibility: the global RNGs are seeded, then the data are made,
then the model is initialised (the optimizer network draws its own initialisation without touching them).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from . import data, device as resolve_device, distributed_backend, guidance, models, rank_device, replicas_agree
from . import seed_all
from .config import load_config
from .evaluate import load_teacher
from .optimizer import cpu_kernels
from .runs import RunFolder

__all__ = ["trainer_parts", "describe"]


def trainer_parts(config, out=None) -> dict:
    """The parts of a Trainer for `config` (dict, YAML path or TrainConfig) writing into `out` (None: no files).

    Sets the process's torch thread count to `threads` (when given) and returns the count before as
    `threads_before`, which the trainer restores when `fit` ends.
    """
    if out is not None and not str(out).strip():
        raise ValueError("out is empty (an unset variable in --out \"$OUT\"?): give a run folder, or leave out "
                         "out (None) to train without writing files")
    cfg = load_config(config)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(distributed_backend(cfg.device))
    dev = resolve_device(cfg.device)
    if world > 1:
        dev = rank_device(dev, int(os.environ.get("LOCAL_RANK", 0)))
    if world > 1 and cfg.plateau_tol is not None:
        raise ValueError("plateau_tol stops a run on rank 0's validation, which the other ranks do not see: "
                         "use it in single-process runs")
    threads_before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_all(cfg.seed)
    train_set, val_set = data.from_config(cfg, "train"), data.from_config(cfg, "val")
    data.check_scored(val_set, cfg.val_pairs, cfg.dataset)
    img_size = tuple(val_set[0]["fixed"].shape[1:])
    model = models.build(cfg.model, img_size).to(dev)
    net = model if world == 1 else torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[dev.index] if dev.index is not None else None)
    return {"cfg": cfg, "device": dev, "model": model, "net": net, "train_set": train_set, "val_set": val_set,
            "img_size": img_size,
            "guide": guidance.Guide(cfg, img_size, dev),
            "teacher": load_teacher(cfg.teacher, img_size, dev) if cfg.teacher else None,
            "folder": RunFolder(Path(out)) if out is not None else None, "rank": rank, "world": world,
            "threads_before": threads_before}


def describe(model, device, world: int = 1, amp: bool = False) -> dict:
    """The facts of a run's parts that its summary records: device, mixed precision, processes, parameters, CPU
    paths."""
    cpu = device.type == "cpu"
    return {"device": str(device), "amp": amp, "world_size": world,
            "replicas_agree": replicas_agree(model, device, world) if world > 1 else None,
            "parameters": models.count_parameters(model),
            # the CPU convolution path this process used (models/layers.py); a resumed run may have mixed both,
            # which changes its numbers at float32 rounding only
            "cpu_channels_last": models.layers.cpu_channels_last() if cpu else None,
            # and whether its instance optimizer ran the fused CPU kernels (optimizer.cpu_kernels; same caveat)
            "cpu_kernels": cpu_kernels() if cpu else None}
