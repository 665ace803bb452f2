"""Progress bars that work in Jupyter and stay quiet under CI (CI or OFG_QUIET set)."""
from __future__ import annotations

import os

from tqdm.auto import tqdm


def progress_bar(iterable=None, disable: bool | None = None, **kwargs):
    """`tqdm.auto.tqdm`, disabled when CI or OFG_QUIET is set in the environment (unless `disable=False`)."""
    quiet = bool(os.environ.get("CI") or os.environ.get("OFG_QUIET"))
    return tqdm(iterable, disable=quiet if disable is None else (disable or quiet), **kwargs)
