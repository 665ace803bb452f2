"""A run folder: its files (`RunFolder`, the one place that knows their names) and the lock that gives it one
writer at a time (`claim`).

    folder = RunFolder(out)
    folder.start(config, overwrite=False)      # config.json; with overwrite, the old run's files go
    folder.save(state)                         # checkpoint.pt (atomically); folder.save(state, "best"): best.pt
    folder.write_log(history); folder.write_summary(summary)
    folder.history(); folder.config(); folder.summary(); folder.read_log()    # and read back

The lock:

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

__all__ = ["claim", "Claim", "FolderBusyError", "LOCK_NAME", "RunFolder", "RUN_FILES", "trained_size"]

LOCK_NAME = ".lock"
# The files of a run; `overwrite` deletes exactly these (and the score caches), nothing else in the folder.
RUN_FILES = ("checkpoint.pt", "best.pt", "config.json", "log.csv", "summary.json")


def nothing_to_resume(out) -> None:
    """Raise the error of `--resume` without a run to resume (`out` None: no run folder was given)."""
    where = f"{out} holds no run (no checkpoint.pt)" if out is not None else "no run folder given"
    raise FileNotFoundError(f"nothing to resume: {where}. Leave out --resume (resume) to start a new run")


class RunFolder:
    """The files of one training run in `path`: checkpoint.pt (the last finished epoch), best.pt (the best
    validation), config.json, log.csv (one row per epoch), summary.json, and the score caches of
    `ofg_lib.evaluate.score_run` (score-WHICH-SPLIT-N.json). Every write is atomic (a temporary name, then a rename)."""

    def __init__(self, path):
        self.path = Path(path)

    def checkpoint(self, which: str = "last") -> Path:
        """checkpoint.pt (`which="last"`) or best.pt (`"best"`)."""
        if which not in ("last", "best"):
            raise ValueError(f"which must be 'last' or 'best', got {which!r}")
        return self.path / ("checkpoint.pt" if which == "last" else "best.pt")

    def holds_run(self) -> bool:
        return self.checkpoint().exists()

    def history(self, which: str = "last") -> list:
        """The history rows stored in a checkpoint (the last one's: every finished epoch)."""
        from .files import load_checkpoint
        return load_checkpoint(self.checkpoint(which))["history"]

    def config(self) -> dict:
        """config.json: the run's whole config as written when it started."""
        return json.loads((self.path / "config.json").read_text())

    def summary(self) -> dict:
        """summary.json: what the run's last `fit` returned."""
        return json.loads((self.path / "summary.json").read_text())

    def has_logs(self) -> bool:
        """Whether the folder holds a run's logs (config.json and log.csv), with or without its checkpoints."""
        return (self.path / "config.json").exists() and (self.path / "log.csv").exists()

    def read_log(self) -> list[dict]:
        """log.csv as the trainer's history rows: numbers as int or float, empty cells left out."""
        import csv

        def num(v):             # the trainer writes ints as ints ("250") and floats by repr ("0.001", "1e-05")
            try:
                return int(v)
            except ValueError:
                return float(v)
        with open(self.path / "log.csv", newline="") as fh:   # an empty cell (a row without validation) is left
            return [{k: num(v) for k, v in row.items() if v not in ("", None)}   # out, as in the checkpoint's history
                    for row in csv.DictReader(fh)]

    def score_cache(self, which: str, split: str, n) -> Path:
        return self.path / f"score-{which}-{split}-{n if n is not None else 'all'}.json"

    def continues(self, resume, overwrite: bool) -> bool:
        """Whether training here continues the folder's run: with `resume` (True or "auto") when it holds one.

        Refuses `resume=True` on a folder without a run (FileNotFoundError) and a folder holding a run without
        `resume` or `overwrite` (FileExistsError), saying what to do instead.
        """
        if resume is True and not self.holds_run():
            nothing_to_resume(self.path)
        if self.holds_run() and not resume and not overwrite:
            raise FileExistsError(f"{self.path} already holds a run (checkpoint.pt): pass --resume (resume=True) "
                                  f"to continue it, or --overwrite (overwrite=True) to replace it, or choose another "
                                  f"--out")
        return bool(resume) and self.holds_run()

    def start(self, config: dict, overwrite: bool = False) -> None:
        """Before a run's first file: the folder made, half-written files of a killed run removed, with
        `overwrite` the old run's RUN_FILES and score caches deleted; then config.json written."""
        from .files import remove_partials, write_json
        self.path.mkdir(parents=True, exist_ok=True)
        remove_partials(self.path)
        if overwrite:
            for name in RUN_FILES:
                (self.path / name).unlink(missing_ok=True)
            for cached in self.path.glob("score-*.json"):
                cached.unlink(missing_ok=True)
        write_json(self.path / "config.json", config)

    def save(self, state: dict, which: str = "last") -> None:
        """Write a checkpoint (`which`: "last", checkpoint.pt, or "best", best.pt) atomically."""
        from .files import atomic_save
        atomic_save(state, self.checkpoint(which))

    def write_log(self, history: list) -> None:
        """log.csv: one row per epoch, columns in order of first appearance."""
        import csv
        import io

        from .files import atomic_write
        keys = list(dict.fromkeys(k for row in history for k in row))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
        atomic_write(self.path / "log.csv", buf.getvalue())

    def write_summary(self, summary: dict) -> None:
        from .files import write_json
        write_json(self.path / "summary.json", summary)


def trained_size(state: dict) -> tuple[int, ...]:
    """The image size a checkpoint's model was trained at: the trainer stores the data's size (`img_size`; a real
    dataset sets its own), older checkpoints only the config's."""
    return tuple(int(n) for n in (state.get("img_size") or state["config"]["img_size"]))


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
