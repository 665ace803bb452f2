"""Training-time augmentation, as the published code does it (notebook 01)."""
from __future__ import annotations

import torch

AUGMENTS = ("none", "flip")
IMAGE_KEYS = ("moving", "fixed", "moving_seg", "fixed_seg")


def flip_pair(item: dict, generator: torch.Generator) -> dict:
    """Flip moving and fixed (and their label maps) together along each spatial axis with probability 1/2.

    The published IXI and LPBA40 training (`trans.RandomFlip`) draws one coin per axis and flips every image of
    the pair with it, so the pair stays a registration problem of the same kind. A true displacement
    (`disp_true`) is dropped: training does not use it, and a flipped field would need its components negated.
    """
    nsp = item["moving"].dim() - 1
    axes = [1 + a for a in range(nsp) if bool(torch.rand((), generator=generator) < 0.5)]
    out = {k: v for k, v in item.items() if k != "disp_true"}
    if axes:
        for k in IMAGE_KEYS:
            if k in out:
                out[k] = out[k].flip(axes)
    return out
