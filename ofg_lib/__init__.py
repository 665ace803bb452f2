"""OFG: on-the-fly guidance for learning-based image registration (Xin et al., arXiv 2308.15216).

Notebook-first reproduction; each module names the notebook that explains it.
Conventions (say once, used everywhere): tensors are (batch, channel, D, H, W); a displacement `disp`
has 3 channels in voxel units, channel i along axis i of the volume (see `ofg_lib.transform`).
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch

__version__ = "0.1.0"
__all__ = ["DeviceUnavailable", "device", "fork_rng", "seed_all", "synchronize", "rng_state", "set_rng_state", "rank_device",
           "distributed_backend", "replicas_agree", "amp_available", "__version__"]


def fork_rng():
    """A context in which seeding and drawing leave every global RNG as it was: the CPU's and each CUDA device's."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    return torch.random.fork_rng(devices=devices)


class DeviceUnavailable(RuntimeError):
    """A device was named that this machine does not have."""


def device(name: str = "auto") -> torch.device:
    """Resolve a device name; "auto" picks CUDA when available, else CPU.

    This is the only place in the library that names CUDA: everything below takes the device
    (and dtype) of the tensors it is given.
    """
    if not isinstance(name, (str, torch.device)):
        raise TypeError(f"device must be a string such as 'auto', 'cpu' or 'cuda:0', got {type(name).__name__}")
    if str(name) != "auto":
        dev = torch.device(name)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise DeviceUnavailable(f"device {name!r} was asked for but torch sees no CUDA device")
        return dev
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def synchronize(dev) -> None:
    """Wait for queued GPU work on `dev` (a no-op on CPU): call before reading a clock."""
    dev = torch.device(dev)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def seed_all(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices) in one place."""
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def rng_state() -> dict:
    """The state of every random generator (Python, NumPy, torch CPU and all CUDA devices), for checkpoints.

    Tensors and plain values only, so that a checkpoint loads with `torch.load(..., weights_only=True)`.
    """
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(internal), gauss],
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rank_device(dev: torch.device, local_rank: int) -> torch.device:
    """Under torchrun: this process's GPU (and make it current); CPU stays CPU."""
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    return dev


def distributed_backend(name: str) -> str:
    """nccl for GPUs, gloo for CPU processes."""
    return "nccl" if str(name) != "cpu" and torch.cuda.is_available() else "gloo"


def replicas_agree(model: torch.nn.Module, dev: torch.device, world: int) -> bool:
    """Under DDP (`world` processes), whether every process holds the same weights: the sum and the sum of
    squares of all parameters, gathered from every process, are equal."""
    flat = torch.cat([p.detach().double().flatten() for p in model.parameters()])
    mine = torch.stack([flat.sum(), flat.square().sum()]).to(dev)
    every = [torch.zeros_like(mine) for _ in range(world)]
    torch.distributed.all_gather(every, mine)
    return all(torch.equal(every[0], e) for e in every)


def amp_available(dev: torch.device) -> bool:
    """Whether bf16 autocast of the network is used on this device (GPUs only)."""
    return torch.device(dev).type == "cuda"


def peak_memory_mb(dev, reset: bool = False) -> float:
    """Peak memory so far in MiB: torch's peak allocation on a CUDA device (since the last reset), else the
    process's peak resident set (it never goes down: compare configs in separate processes).
    `reset=True` starts a new CUDA peak (no effect on a CPU) and returns the current value."""
    dev = torch.device(dev)
    if dev.type == "cuda":
        if reset:
            torch.cuda.reset_peak_memory_stats(dev)
        return torch.cuda.max_memory_allocated(dev) / 2 ** 20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024     # kilobytes on Linux
