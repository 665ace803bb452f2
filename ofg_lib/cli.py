"""The training command line: `python -m ofg_lib.train --config FILE --out DIR [--set KEY=VALUE] [--resume |
--overwrite]` (see `ofg_lib.train`). Errors a user can fix are one line on stderr (exit 1); Ctrl-C leaves the
last finished epoch's checkpoint and says how to continue (exit 130).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from . import DeviceUnavailable
from .config import load_config
from .runs import FolderBusyError

__all__ = ["main"]


def main(argv=None):
    from .train import Trainer
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
        summary = Trainer.from_config(cfg, args.out, overwrite=args.overwrite).fit(resume=args.resume)
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
