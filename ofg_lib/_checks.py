"""Input checks shared by the library: errors say what was expected and what was found."""
from __future__ import annotations

import torch


def volume(name: str, x, ndim_spatial=(2, 3)) -> int:
    """Check that `x` is a (B, C, *spatial) tensor with 2 or 3 spatial dims; return that count."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    nsp = x.dim() - 2
    if nsp not in ndim_spatial:
        want = " or ".join(f"{d + 2}-D (B, C{', D, H, W' if d == 3 else ', H, W'})" for d in ndim_spatial)
        raise ValueError(f"{name} must be {want}; got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return nsp


def one_of(name: str, value, options):
    """Return `value` if it is one of `options`; else a ValueError naming the argument, the options and the value
    (the project's one "must be one of" check, as MONAI's `look_up_option`)."""
    options = tuple(options)
    if value not in options:
        shown = ", ".join("null" if o is None else str(o) for o in options)
        raise ValueError(f"{name} must be one of {shown}, got {value!r}")
    return value


def same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {tuple(a.shape)} but {name_b} has {tuple(b.shape)}")


def disp_for(image_name: str, image: torch.Tensor, disp: torch.Tensor) -> None:
    """A displacement for `image` is (B, nsp, *spatial) with the image's batch and spatial size."""
    nsp = image.dim() - 2
    want = (image.shape[0], nsp, *image.shape[2:])
    if tuple(disp.shape) != want:
        raise ValueError(
            f"disp must have shape {want} (batch, {nsp} displacement channels, spatial size of {image_name}); "
            f"got {tuple(disp.shape)}"
        )


def finite(name: str, x: torch.Tensor) -> None:
    if x.is_floating_point() and x.numel():
        # one reduction without a full-size mask: min and max propagate NaN, and an Inf is the max or the min
        ok = bool(torch.isfinite(torch.stack(torch.aminmax(x))).all())
    else:
        ok = bool(torch.isfinite(x).all())
    if not ok:
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} has {bad} non-finite value(s) (NaN or Inf) out of {x.numel()}")


def renamed(where: str, given: dict, names: dict) -> None:
    """Refuse keywords a function no longer takes: an old name (a key of `names`) names its new one, anything
    else is an unexpected keyword, as Python would say."""
    for key in given:
        if key in names:
            raise TypeError(f"{where}(): {key}= is now {names[key]}= (the name of its config key)")
        raise TypeError(f"{where}() got an unexpected keyword argument {key!r}")
