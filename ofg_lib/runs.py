"""Claiming a folder for one writer at a time: the run lock.

    with claim(out, "training run"):
        ...            # nothing else can train, register or sweep into `out` meanwhile

A folder is claimed by an exclusive `fcntl.flock` on `out/.lock`, held for as long as the claim lasts. The
operating system drops the lock when the holder's process ends, however it ends (finished, killed, crashed), so
there are no stale locks to clean up: a later process takes the folder over and says whose lock it was. The file
holds the holder's pid, host, start time and command, so the message of a refused claim names the holder.

`flock` locks are per open file, so two claims in one process also exclude each other. On network file
systems where flock is not shared between hosts, two hosts can still claim the same folder: use local disks
for run folders, or one host per folder.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

__all__ = ["claim", "Claim", "FolderBusyError", "LOCK_NAME"]

LOCK_NAME = ".lock"


class FolderBusyError(RuntimeError):
    """Another process (or another claim in this one) holds the folder."""


class Claim:
    """An exclusive claim on a folder (see the module docstring). Use `claim(folder, what)` as a context manager."""

    def __init__(self, folder, what: str = "run", log=None):
        self.folder, self.what = Path(folder), what
        self.log = log if log is not None else (lambda m: print(m, file=sys.stderr))
        self._fd = None

    @property
    def path(self) -> Path:
        return self.folder / LOCK_NAME

    def acquire(self) -> "Claim":
        if self._fd is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            for _ in range(20):              # the holder writes its details just after it takes the lock
                if holder:
                    break
                time.sleep(0.05)
                holder = _read(fd)
            os.close(fd)
            raise FolderBusyError(
                f"{self.folder} is in use by another {holder.get('what', 'run')}: pid {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')}, since {holder.get('started', '?')} ({holder.get('command', '?')}). "
                f"Wait for it to finish, or choose another --out.") from None
        previous = _read(fd)
        if previous.get("pid") not in (None, os.getpid()):
            self.log(f"{self.folder}: taking over the claim of pid {previous['pid']} on {previous.get('host', '?')} "
                     f"({previous.get('what', 'run')} since {previous.get('started', '?')}), which no longer holds it")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "what": self.what,
                "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)[:300]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)      # an empty lock file: nobody to take over from
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False


def claim(folder, what: str = "run", log=None) -> Claim:
    """A claim on `folder` (a context manager; `acquire()`/`release()` for longer scopes)."""
    return Claim(folder, what, log)


def _read(fd) -> dict:
    try:
        raw = os.pread(fd, 4096, 0)
        return json.loads(raw) if raw.strip() else {}
    except (OSError, ValueError):
        return {}
