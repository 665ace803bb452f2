"""Registration networks behind one interface, and a registry to add your own (notebook 05).

Every model maps the stacked pair `torch.cat([moving, fixed], 1)`, shape (B, 2, D, H, W), to a displacement
(B, 3, D, H, W) in voxels, in the convention of `ofg_lib.transform.warp`. Warping is the caller's job, so the
trainer is the same for every model.

    model = ofg_lib.models.build("voxelmorph-1", img_size=(160, 192, 224))
    disp = ofg_lib.models.predict(model, moving, fixed)        # the input convention, in one place
    ofg_lib.models.register("my-net", lambda img_size, **kw: MyNet(img_size, **kw))
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

__all__ = ["build", "names", "register", "count_parameters", "check_size", "predict", "pair_input"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_DIVISOR: dict[str, int] = {}
_DIMS: dict[str, tuple] = {}


def pair_input(moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
    """What every model takes: the pair stacked along channels, moving first, (B, 2, *spatial)."""
    return torch.cat([moving, fixed], 1)


def predict(model: nn.Module, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
    """The displacement (B, nsp, *spatial), voxels, that `model` predicts for warping `moving` onto `fixed`."""
    return model(pair_input(moving, fixed))


def register(name: str, builder: Callable[..., nn.Module], divisor: int = 1, overwrite: bool = False,
             dims=(3,)) -> None:
    """Make `build(name, img_size, **overrides)` call `builder(img_size, **overrides)`.

    `divisor`: every side of the input must be a multiple of it (checked before building). `dims`: the numbers
    of spatial dimensions the builder accepts (3 only, or (2, 3) for a model that also builds in 2-D).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a model name must be a non-empty string, got {name!r}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"a model named {name!r} is registered already (pass overwrite=True to replace it)")
    if not callable(builder):
        raise TypeError(f"builder must be callable, got {type(builder).__name__}")
    dims = tuple(int(d) for d in dims)
    if not dims or set(dims) - {2, 3}:
        raise ValueError(f"dims must list 2 and/or 3 spatial dimensions, got {dims}")
    _REGISTRY[name], _DIVISOR[name], _DIMS[name] = builder, int(divisor), dims


def names() -> list[str]:
    """The registered model names."""
    return sorted(_REGISTRY)


def check_size(name: str, img_size) -> tuple:
    """Return `img_size` as a tuple of ints (D, H, W), or (H, W) for a 2-D model; or say which sizes it accepts."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(names())}")
    size = tuple(int(s) for s in img_size)
    if len(size) not in (2, 3) or min(size) < 1:
        raise ValueError(f"img_size must be three positive sides (D, H, W), or two (H, W) in 2-D; got {img_size!r}")
    if len(size) not in _DIMS[name]:
        in_2d = [n for n in names() if 2 in _DIMS[n]]
        raise ValueError(f"{name} is a {' or '.join(f'{d}-D' for d in _DIMS[name])} model and img_size {size} is "
                         f"{len(size)}-D; models that build in 2-D: {', '.join(in_2d)}")
    d = _DIVISOR[name]
    bad = [s for s in size if s % d]
    if bad:
        fixed = tuple(max(d, round(s / d) * d) for s in size)
        raise ValueError(f"{name} needs every side of the input to be a multiple of {d}; {size} is not "
                         f"(nearest accepted size: {fixed})")
    return size


def build(name: str, img_size, **overrides) -> nn.Module:
    """Build a registered model for inputs of spatial size `img_size`; `overrides` go to its builder."""
    size = check_size(name, img_size)
    return _REGISTRY[name](size, **overrides)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


from . import transmorph, vit_v_net, voxelmorph  # noqa: E402,F401  (they register themselves)
