"""Classical baselines in our convention: each toolkit's transform read back as our voxel displacement."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from ofg_lib import baselines
from ofg_lib.baselines import Baseline, available, register_classical
from ofg_lib.data import Embedded
from ofg_lib.evaluate import evaluate
from ofg_lib.losses import lncc
from ofg_lib.metrics import dice
from ofg_lib.transform import warp

from conftest import smooth_volume

# Shortened schedules (the conventions do not depend on them; the full settings run in notebook 06).
FAST = baselines.QUICK
TOOLKITS = ["syn", "elastix", "niftyreg"]


def _skip_unavailable(method):
    reason = available(method)
    if reason:
        pytest.skip(f"{method}: {reason}")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("baseline-cohort")
    return {3: Embedded("val", (32, 40, 40), n=1, rms=2.0, root=root)[0],
            2: Embedded("val", (48, 56), n=1, rms=2.0, root=root)[0]}


def _batch(item):
    return {k: v[None] for k, v in item.items() if k != "id"}


@pytest.mark.parametrize("dims", [3, 2])
@pytest.mark.parametrize("method", TOOLKITS)
def test_toolkit_transform_read_in_our_convention(method, dims, pairs, tmp_path, monkeypatch):
    """Our warp of the moving labels by the returned field = the toolkit's own nearest-neighbour resampling;
    and the toolkit leaves no file behind in the working directory."""
    _skip_unavailable(method)
    monkeypatch.chdir(tmp_path)
    p = _batch(pairs[dims])
    disp, theirs = register_classical(method, p["moving"], p["fixed"], threads=1, labels=p["moving_seg"], **FAST[method])
    assert disp.shape == (1, dims, *p["moving"].shape[2:]) and disp.dtype == torch.float32
    ours = warp(p["moving_seg"], disp, mode="nearest")
    labelled = (ours > 0) | (theirs > 0)
    agreement = float((ours[labelled] == theirs[labelled]).double().mean())
    assert agreement >= 0.98, f"{method} {dims}-D: {agreement:.4f} of labelled voxels agree"
    labels = list(Embedded.labels) if dims == 3 else sorted(set(p["fixed_seg"].unique().tolist()) - {0})
    before = float(dice(p["moving_seg"], p["fixed_seg"], labels).mean())
    after = float(dice(ours, p["fixed_seg"], labels).mean())
    assert after > before + 0.02, f"{method}: Dice {before:.3f} -> {after:.3f}"
    assert not list(tmp_path.iterdir()), f"{method} wrote {list(tmp_path.iterdir())}"


@pytest.mark.parametrize("method", TOOLKITS + ["instance"])
def test_known_translation_has_the_right_axes_and_sign(method):
    """moving(p) = fixed(p - t)  =>  disp = t (warp(moving, disp)(p) = moving(p + disp)): checks axes and sign
    independently of the toolkit's own resampling."""
    _skip_unavailable(method)
    fixed = smooth_volume((40, 44, 48), seed=3, coarse=6, noise=0.0, dtype=torch.float32)
    t = (2.0, -1.5, 1.0)
    moving = torch.from_numpy(ndimage.shift(fixed[0, 0].numpy(), t, order=3, mode="nearest"))[None, None]
    disp = register_classical(method, moving, fixed, threads=1, **FAST[method])
    inner = disp[0, :, 10:-10, 10:-10, 10:-10].reshape(3, -1).median(dim=1).values
    np.testing.assert_allclose(inner.numpy(), t, atol=0.35, err_msg=f"{method}: median displacement {inner}")


def test_instance_lowers_the_energy_and_improves_dice(pairs):
    p = _batch(pairs[3])
    disp, warped_seg = register_classical("instance", p["moving"], p["fixed"], labels=p["moving_seg"], **FAST["instance"])
    assert float(lncc(p["fixed"], warp(p["moving"], disp))) < float(lncc(p["fixed"], p["moving"])) - 0.02
    before = float(dice(p["moving_seg"], p["fixed_seg"], Embedded.labels).mean())
    assert float(dice(warped_seg, p["fixed_seg"], Embedded.labels).mean()) > before + 0.02
    with pytest.raises(ValueError, match="same length"):
        register_classical("instance", p["moving"], p["fixed"], levels=(2, 1), steps=(10,))


def test_baseline_is_scored_like_a_network(pairs, tmp_path):
    ds = Embedded("val", (32, 40, 40), n=2, rms=2.0, root=tmp_path)
    method = Baseline("instance", **FAST["instance"])
    r = evaluate(method, ds, n=2, time_repeats=0)
    assert len(method.seconds) == 2
    assert method.first.shape == (1, 3, 32, 40, 40)
    assert 0 < r["dice"] <= 1 and r["epe"] is not None and np.isfinite(r["sdlogj"])
    with pytest.raises(ValueError, match=r"cat\(\[moving, fixed\], 1\)"):
        method(torch.zeros(1, 1, 8, 8, 8))


def test_bad_inputs_and_missing_toolkits(monkeypatch, pairs):
    p = _batch(pairs[3])
    with pytest.raises(ValueError, match="method must be one of"):
        register_classical("demons", p["moving"], p["fixed"])
    with pytest.raises(ValueError, match="same single-channel"):
        register_classical("instance", p["moving"], p["fixed"][..., :-1])
    bad = p["moving"].clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        register_classical("instance", bad, p["fixed"])
    with pytest.raises(ValueError, match="labels"):
        register_classical("instance", p["moving"], p["fixed"], labels=p["moving_seg"][..., :-1])
    monkeypatch.setattr(baselines.shutil, "which", lambda name: None)
    assert available("niftyreg").startswith("not installed: reg_f3d, reg_transform, reg_resample")
    with pytest.raises(RuntimeError, match="niftyreg: not installed"):
        register_classical("niftyreg", p["moving"], p["fixed"])
    with pytest.raises(RuntimeError, match="not installed"):
        Baseline("niftyreg")
