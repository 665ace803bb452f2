"""ofg_lib.viz.interactive: one figure per widget, static where no widget frontend runs, live otherwise."""


# --- viz.interactive: one figure, static or live
def test_interactive_draws_one_figure_static_or_live(monkeypatch):
    import ipywidgets as widgets
    from ofg_lib.viz import interactive
    calls = []
    monkeypatch.setenv("CI", "1")                          # static: nbval, papermill, the HTML course
    assert interactive(lambda a: calls.append(a), a=widgets.IntSlider(value=1)) is None and calls == [1]
    monkeypatch.delenv("CI")
    monkeypatch.delenv("OFG_STATIC", raising=False)        # live: the figure lives in the Output below the controls
    calls.clear()
    s = widgets.IntSlider(value=2, max=5, description="a long description")
    box = interactive(lambda a: calls.append(a), a=s)
    assert calls == [2] and isinstance(box.children[1], widgets.Output)
    assert s.style.description_width == "initial"
    s.value = 4
    assert calls == [2, 4]                                 # redrawn once per change, in place
