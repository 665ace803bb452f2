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
__all__ = ["device", "seed_all", "synchronize", "__version__"]


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
            raise RuntimeError(f"device {name!r} was asked for but torch sees no CUDA device")
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
