"""One figure per widget: static where no widget frontend runs, live in JupyterLab (every notebook's sliders)."""
from __future__ import annotations

__all__ = ["interactive"]


def interactive(fn, **controls):
    """`fn(**values)` drawn at the controls' current values: one figure, static or live.

    Static (OFG_STATIC or CI set: `make reproduce`, `make test`, `make html`, where no widget frontend renders
    widgets): the figure is an ordinary cell output, which papermill, nbval and the HTML course keep. Live
    (anything else, i.e. a kernel started by JupyterLab): the controls, then the figure inside an ipywidgets
    Output below them, redrawn in place on every change, so there is only ever one figure and it always matches
    the controls. Labels are shown whole (`description_width: initial`) and the controls wrap. Returns the widget
    box, or None when static.
    """
    import os

    from IPython.display import display
    values = lambda: {k: c.value for k, c in controls.items()}  # noqa: E731
    if os.environ.get("OFG_STATIC") or os.environ.get("CI"):
        fn(**values())
        return None
    import ipywidgets as widgets
    out = widgets.Output()

    def redraw(change=None):
        with out:
            out.clear_output(wait=True)
            fn(**values())

    for c in controls.values():
        if hasattr(c, "style") and hasattr(c.style, "description_width"):
            c.style.description_width = "initial"
        c.observe(redraw, names="value")
    box = widgets.VBox([widgets.HBox(list(controls.values()), layout=widgets.Layout(flex_flow="row wrap")), out])
    display(box)
    redraw()
    print("(live figure: if a reopened notebook shows 'Error displaying widget: model not found', run this cell "
          "again; widget state is not saved with the notebook)")
    return box

