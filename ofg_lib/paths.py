"""Where the project writes its own files: `data/` and `results/` of the checkout, or OFG_DATA_DIR."""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """The cache folder for generated data: $OFG_DATA_DIR, else the checkout's data/, else ~/.cache/ofg."""
    env = os.environ.get("OFG_DATA_DIR")
    if env:
        return Path(env).expanduser()
    if (REPO / "pyproject.toml").exists():
        return REPO / "data"
    return Path.home() / ".cache" / "ofg"


def atomic_save(obj, path: Path) -> None:
    """torch.save to a temporary name in the same folder, then rename: readers never see half a file."""
    import torch
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def resolve(path) -> Path:
    """A path relative to the checkout (so notebooks run from any working directory find the same files)."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else REPO / path
