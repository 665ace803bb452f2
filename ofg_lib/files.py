"""Where the project writes its own files (`data/`, `results/`, or OFG_DATA_DIR), and the one way it writes them.

Every file the project writes goes through `atomic_write` (text or bytes) or `atomic_save` (torch objects): the
content goes to a per-process temporary name in the same folder, `.NAME.PID.partial`, then is renamed over NAME.
Readers never see half a file, and several processes writing the same file never share a temporary name.
`load_checkpoint` is the one way checkpoints are read: tensors and plain values only (`weights_only=True`).
"""
from __future__ import annotations

import json
import math
import os
import pickle
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_PARTIAL = re.compile(r"^\..+\.(\d+)\.partial$")


def data_dir() -> Path:
    """The cache folder for generated data: $OFG_DATA_DIR, else the checkout's data/, else ~/.cache/ofg."""
    env = os.environ.get("OFG_DATA_DIR")
    if env:
        return Path(env).expanduser()
    if (REPO / "pyproject.toml").exists():
        return REPO / "data"
    return Path.home() / ".cache" / "ofg"


def _temporary(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.{os.getpid()}.partial")


def atomic_write(path, data: str | bytes) -> Path:
    """Write text or bytes to `path` through a per-process temporary name and a rename."""
    path = Path(path)
    tmp = _temporary(path)
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)
    return path


def atomic_save(obj, path) -> Path:
    """torch.save to a per-process temporary name in the same folder, then rename."""
    import torch
    path = Path(path)
    tmp = _temporary(path)
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path


def plain(value):
    """`value` with NaN and infinities replaced by None (strict JSON has no NaN), numpy scalars as Python numbers."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path, obj, indent: int = 1) -> Path:
    """Strict JSON (NaN written as null), atomically."""
    return atomic_write(path, json.dumps(plain(obj), indent=indent, allow_nan=False))


def remove_partials(folder) -> list[Path]:
    """Delete temporary files left in `folder` by writers that died (their process no longer exists)."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _PARTIAL.match(p.name)
        if m and not _alive(int(m.group(1))):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def load_checkpoint(path, what: str = "checkpoint") -> dict:
    """A checkpoint written by this project, read with `weights_only=True`: tensors and plain values only.

    A file that holds anything else (a pickled function or object: it could run code) is refused, and so is a
    truncated or foreign file, each with a message that names the file and what to do.
    """
    import torch
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path}: refused to load this {what}: it holds objects other than tensors and plain values "
                         f"(this project's checkpoints never do; the file may have been crafted to run code). "
                         f"Not loaded. Checkpoints written before ofg_lib 0.2 held NumPy RNG state and must be retrained. "
                         f"({(str(e).splitlines() or [''])[0][:200]})") from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError) as e:
        raise ValueError(f"{path}: not a readable {what} (truncated, or not written by torch.save: "
                         f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}); delete it and retrain, "
                         f"or train again with --overwrite") from None
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{path}: not a checkpoint of this project (expected a dict with 'model', found "
                         f"{type(state).__name__}{' with keys ' + ', '.join(map(str, state)) if isinstance(state, dict) else ''})")
    return state


def resolve(path) -> Path:
    """A path relative to the checkout (so notebooks run from any working directory find the same files)."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else REPO / path
