"""Plots shared by the notebooks, by what they draw: slices, fields, curves, landscapes, widgets.

Every name is importable from here as before (`from ofg_lib.viz import show_slices`, `viz.plot_curves`).
"""
from .curves import *  # noqa: F401,F403
from .fields import *  # noqa: F401,F403
from .landscapes import *  # noqa: F401,F403
from .slices import *  # noqa: F401,F403
from .widgets import *  # noqa: F401,F403
from . import curves, fields, landscapes, slices, widgets

__all__ = [*slices.__all__, *fields.__all__, *curves.__all__, *landscapes.__all__, *widgets.__all__]
