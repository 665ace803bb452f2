"""ofg_lib.viz draws what it is given: the images in its figures are the arrays passed (no warping, no Jacobians,
no fold counts of its own); `interactive` makes one figure per widget, static where no widget frontend runs."""
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from ofg_lib.viz import interactive, method_columns, pair_panels, plot_refined, show_folds, show_registration


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def fake_maps(shape=(6, 8, 10), seed=0):
    """A dict shaped like `evaluate.field_maps(disp, pair)` but made of unrelated random arrays: a figure that
    shows them unchanged cannot have computed them."""
    g = torch.Generator().manual_seed(seed)
    nsp = len(shape)
    image = lambda: torch.rand(1, 1, *shape, generator=g)  # noqa: E731
    return {"fixed": image(), "moving": image(), "warped": image(), "difference": image(),
            "disp": 0.3 * torch.randn(1, nsp, *shape, generator=g), "det": 2 * torch.rand(1, *shape, generator=g) - 0.2,
            "fold_count": 7, "fold_percent": 1.25}


def shown(ax, i=0):
    """The array of the i-th image of an axes, as imshow received it."""
    return np.ma.getdata(ax.images[i].get_array())


def grid_rows(ax):
    """The first deformed grid line of an axes: plot_grid draws row 0 at (0 + d[0][0], x + d[1][0])."""
    return ax.lines[0].get_xydata()


# --- the registration panels draw the given maps
def test_pair_panels_draw_the_given_maps_at_the_slice_asked_for():
    maps = {"a": fake_maps(seed=0), "b": fake_maps(seed=1)}
    axes = pair_panels(maps, index=2)
    for row, m in enumerate(maps.values()):
        for ax, key in zip(axes[row, :4], ("fixed", "moving", "warped", "difference")):
            np.testing.assert_array_equal(shown(ax), m[key][0, 0, 2].numpy().T)
        np.testing.assert_array_equal(shown(axes[row, 4]), m["det"][0, 2].numpy().T)   # det J, folds over it
        np.testing.assert_array_equal(grid_rows(axes[row, 4])[:, 1], np.arange(10) + m["disp"][0, 2, 2, 0].numpy())
    assert [ax.get_title() for ax in axes[1]] == ["fixed", "moving", "b: warped", "b: |warped - fixed|",
                                                  "b: grid and det J"]


def test_method_columns_draw_every_method_on_one_difference_scale():
    maps = {"a": fake_maps(seed=0), "b": fake_maps(seed=1)}
    maps["b"]["difference"] = 3 * maps["b"]["difference"]
    fig = method_columns(maps)                                    # the middle slice, 3 of 6
    axes = np.array(fig.axes).reshape(4, 3)
    np.testing.assert_array_equal(shown(axes[0, 0]), maps["a"]["fixed"][0, 0, 3].numpy().T)
    np.testing.assert_array_equal(shown(axes[1, 0]), maps["a"]["moving"][0, 0, 3].numpy().T)
    top = float(maps["b"]["difference"][0, 0, 3].max())
    for col, m in enumerate(maps.values(), start=1):
        np.testing.assert_array_equal(shown(axes[0, col]), m["warped"][0, 0, 3].numpy().T)
        np.testing.assert_array_equal(shown(axes[1, col]), m["difference"][0, 0, 3].numpy().T)
        assert axes[1, col].images[0].get_clim() == pytest.approx((0, top))
        np.testing.assert_array_equal(grid_rows(axes[2, col])[:, 0], m["disp"][0, 1, 3, 0].numpy())
        np.testing.assert_array_equal(shown(axes[3, col]), m["det"][0, 3].numpy().T)


def test_show_registration_draws_a_2d_pair_whole():
    m = fake_maps(shape=(8, 10))
    _, axes = plt.subplots(1, 3)
    show_registration(m, [axes[0], axes[1], axes[2], axes[2]])
    np.testing.assert_array_equal(shown(axes[0]), m["warped"][0, 0].numpy().T)
    np.testing.assert_array_equal(shown(axes[1]), m["difference"][0, 0].numpy().T)
    np.testing.assert_array_equal(shown(axes[2]), m["det"][0].numpy().T)
    folds = np.ma.getmaskarray(axes[2].images[1].get_array())     # black where det <= 0: unmasked there
    np.testing.assert_array_equal(~folds, m["det"][0].numpy().T <= 0)


def test_show_folds_titles_the_given_count_and_draws_the_given_det():
    m = fake_maps()
    fig = show_folds(m, sweep={"displacement": ([1.0, 2.0], [0.0, 3.0])}, rms=1.5, index=4)
    grid, det, sweep = fig.axes[:3]
    np.testing.assert_array_equal(shown(det), m["det"][0, 4].numpy().T)
    assert det.get_title() == "det J: 7 voxels fold (1.25 %)"
    assert grid.get_title() == "deformed grid (slice 4, axes H, W)"
    np.testing.assert_array_equal(sweep.lines[-1].get_xydata(), [[1.5, 1.25]])     # this field, at its count


def test_plot_refined_shows_the_given_magnitudes_on_one_scale():
    g = torch.Generator().manual_seed(0)
    magnitudes = {name: torch.rand(1, 1, 6, 8, 10, generator=g) for name in ("a", "b", "c")}
    phi = 0.3 * torch.randn(1, 3, 6, 8, 10, generator=g)
    fig = plot_refined(phi, magnitudes, vmax=2.0, title="t")
    for ax, m in zip(fig.axes, magnitudes.values()):
        np.testing.assert_array_equal(shown(ax), m[0, 0, 3].numpy().T)
        assert ax.images[0].get_clim() == (0, 2.0)
    np.testing.assert_array_equal(grid_rows(fig.axes[3])[:, 0], phi[0, 1, 3, 0].numpy())


# --- viz.interactive: one figure, static or live
def test_interactive_draws_one_figure_static_or_live(monkeypatch):
    import ipywidgets as widgets
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
