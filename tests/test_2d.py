"""The 2-D track and the harder embedded cohorts (issue: when does OFG help?).

Every core function in 2-D against a float64 numpy/scipy reference or its 3-D behaviour; the 2-D cohort's
contract; subject pairs, contrast, multi-scale deformations and supersampling.
"""
import json

import numpy as np
import pytest
import torch

from conftest import smooth_disp, smooth_volume
from ofg_lib import models
from ofg_lib.config import config_differences
from ofg_lib.data import Embedded, from_config, mni_template, mni_tissues
from ofg_lib.data.embedded import edge_strength
from ofg_lib.data.synthetic import random_deformation, smooth_field, subject_generator, tissue_contrast
from ofg_lib.losses import grad_l2, lncc
from ofg_lib.metrics import dice, epe, fold_fraction, jacobian_det, sdlogj
from ofg_lib.optimizer import refine_with_history
from ofg_lib.train import TrainConfig, load_config, run
from ofg_lib.transform import compose, warp

SIZE2 = (48, 56)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("cohort2d")


# ---------------------------------------------------------------- core functions in 2-D
def test_lncc_and_grad_l2_gradcheck_in_2d():
    a = smooth_volume((6, 7), seed=1, noise=0.5).requires_grad_(True)
    b = smooth_volume((6, 7), seed=2, noise=0.5).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f, w: lncc(f, w, window=3), (a, b))
    disp = smooth_disp((6, 7), 0.5).requires_grad_(True)
    assert torch.autograd.gradcheck(grad_l2, (disp,))


def test_grad_l2_2d_matches_numpy():
    disp = smooth_disp((9, 11), 1.0)
    d = disp[0].numpy()
    ref = (np.mean(np.diff(d, axis=1) ** 2) + np.mean(np.diff(d, axis=2) ** 2)) / 2
    assert abs(float(grad_l2(disp)) - ref) < 1e-12


def test_jacobian_2d_matches_numpy_and_counts_folds():
    disp = smooth_disp((12, 13), 1.5)
    u = disp[0].numpy()
    g = [np.gradient(u[i]) for i in range(2)]
    ref = (1 + g[0][0]) * (1 + g[1][1]) - g[0][1] * g[1][0]
    np.testing.assert_allclose(jacobian_det(disp)[0].numpy(), ref, atol=1e-12)
    assert fold_fraction(disp) == pytest.approx(float(np.mean(ref <= 0)))
    flip = torch.zeros(1, 2, 12, 13, dtype=torch.float64)
    flip[:, 1] = -2 * torch.arange(13, dtype=torch.float64)     # x -> -x along W: det = -1 everywhere
    assert fold_fraction(flip) == 1.0 and jacobian_det(flip).max() == pytest.approx(-1.0)
    assert sdlogj(torch.zeros(1, 2, 12, 13)) == 0.0
    assert epe(flip, torch.zeros_like(flip)) > 0


def test_refine_lowers_the_energy_in_2d():
    fixed = smooth_volume((32, 36), seed=0, noise=0.0, coarse=8).float()
    moving = warp(fixed, smooth_disp((32, 36), 1.5, seed=4).float())
    r = refine_with_history(torch.zeros(1, 2, 32, 36), moving, fixed, inner_steps=10, inner_lr=0.1, final_energy=True)
    assert r.disp.shape == (1, 2, 32, 36) and r.steps_taken == 10
    assert r.final_energy < r.energies[0]


def test_smooth_field_2d_has_unit_rms_and_zero_mean():
    f = smooth_field((40, 44), 2, 8, subject_generator(0, 1))
    assert f.shape == (1, 2, 40, 44)
    assert float(f.pow(2).sum(1).mean().sqrt()) == pytest.approx(1.0, rel=1e-5)
    assert float(f.mean(dim=(2, 3)).abs().max()) < 1e-6


def test_inverse_deformation_composes_to_identity():
    disp, inv = random_deformation((64, 72), 3.0, 16, subject_generator(3, 1), fine_rms=1.0, with_inverse=True)
    assert float(disp.pow(2).sum(1).mean().sqrt()) > 2.0
    residual = compose(inv, disp).norm(dim=1)                  # x -> x + u(x) + inv(x + u(x)) ~ x
    assert float(residual[:, 8:-8, 8:-8].mean()) < 0.05        # away from the borders, where samples leave the grid


# ---------------------------------------------------------------- models
@pytest.mark.parametrize("name", ["voxelmorph-1", "voxelmorph-2", "voxelmorph-1-tiny", "voxelmorph-2-tiny"])
def test_2d_models_map_a_pair_to_a_2_channel_field(name):
    net = models.build(name, (32, 48))
    assert isinstance(net.flow, torch.nn.Conv2d)
    out = net(torch.rand(2, 2, 32, 48))
    assert out.shape == (2, 2, 32, 48)


def test_3d_only_models_refuse_a_2d_size_clearly():
    with pytest.raises(ValueError, match="transmorph is a 3-D model.*models that build in 2-D: voxelmorph-1"):
        models.build("transmorph", (64, 64))
    with pytest.raises(ValueError, match="multiple of 16"):
        models.build("voxelmorph-1", (40, 48))


def test_2d_and_3d_voxelmorph_share_the_design():
    p2 = models.count_parameters(models.build("voxelmorph-1", (32, 32)))
    p3 = models.count_parameters(models.build("voxelmorph-1", (32, 32, 32)))
    assert p3 == 274387
    # every 3^3 kernel becomes 3^2: weights shrink by 3, biases stay (and the flow conv has 2 outputs, not 3)
    assert 0.3 * p3 < p2 < 0.4 * p3


# ---------------------------------------------------------------- the 2-D cohort
def test_2d_template_is_an_axial_slice_with_ten_labels():
    image, labels = mni_template(SIZE2)
    assert image.shape == labels.shape == (1, 1, *SIZE2)
    assert set(labels.unique().tolist()) == set(range(11))
    tissues = mni_tissues(SIZE2)
    assert tissues.shape == (1, 3, *SIZE2) and float(tissues.min()) >= 0 and float(tissues.max()) <= 1
    with pytest.raises(ValueError, match="three sides"):
        mni_template((48,))


def test_2d_cohort_contract_and_truth(root):
    ds = Embedded("val", SIZE2, root=root, n=2)
    item = ds[0]
    assert item["moving"].shape == item["fixed"].shape == (1, *SIZE2)
    assert item["disp_true"].shape == (2, *SIZE2)
    assert ds.labels == tuple(range(1, 11)) and len(ds.label_names) == 10
    warped = warp(item["moving_seg"][None], item["disp_true"][None], mode="nearest")
    assert torch.equal(warped[0], item["fixed_seg"])
    assert ds.folder.name == f"embedded-{SIZE2[0]}x{SIZE2[1]}-seed0"
    again = Embedded("val", SIZE2, root=root, n=2, cache=False).generate(0)
    assert all(torch.equal(again[k], item[k]) for k in again)


def subject_cohort(root, **kw):
    return Embedded("val", SIZE2, root=root, n=3, pairs="subject", **kw)


def test_subject_pairs_truth_is_the_composed_map(root):
    ds = subject_cohort(root)
    atlas_seg = ds.atlas()[1]
    for i in range(3):
        item, m = ds[i], ds.subject(ds.partner(i))
        assert ds.partner(i) != i
        assert torch.equal(item["moving_seg"], m["seg"][0])            # the moving image is another subject
        brain = item["fixed_seg"] > 0
        # the atlas's labels carried through the moving subject's map and then the truth = the fixed labels
        through = warp(atlas_seg, compose(m["disp"], item["disp_true"][None]), mode="nearest")[0]
        assert float((through == item["fixed_seg"])[brain].float().mean()) >= 0.99
        # the moving subject's (already resampled) labels carried by the truth: a second nearest-neighbour
        # resampling costs a few per cent at this size (notebook 01 prints the number at the study's size)
        carried = warp(item["moving_seg"][None], item["disp_true"][None], mode="nearest")[0]
        agree = float((carried == item["fixed_seg"])[brain].float().mean())
        identity = float((item["moving_seg"] == item["fixed_seg"])[brain].float().mean())
        assert agree >= 0.8 and agree > identity + 0.1
        # the composition in the other order (a plausible mistake) is measurably worse
        inverse = ds.subject(ds.partner(i), inverse=True)["inverse"]
        wrong = compose(ds.subject(i)["disp"], inverse)
        wrong_through = warp(atlas_seg, compose(m["disp"], wrong), mode="nearest")[0]
        assert float((wrong_through == item["fixed_seg"])[brain].float().mean()) < 0.985


def test_contrast_changes_intensities_not_labels_and_is_deterministic(root):
    plain = Embedded("val", SIZE2, root=root, n=2)
    varied = Embedded("val", SIZE2, root=root, n=2, contrast=0.5)
    assert varied.folder != plain.folder and "contrast0.5" in varied.folder.name
    a, b = plain[1], varied[1]
    for k in ("moving", "moving_seg", "fixed_seg", "disp_true"):
        assert torch.equal(a[k], b[k]), k
    assert float((a["fixed"] - b["fixed"]).abs().mean()) > 0.01
    assert torch.equal(Embedded("val", SIZE2, n=2, contrast=0.5, cache=False).generate(1)["fixed"], b["fixed"])
    manifest = json.loads((varied.folder / "manifest.json").read_text())
    assert manifest["options"] == {"contrast": "0.5"}


def test_tissue_contrast_scales_each_tissue_mean():
    # crisp tissues with textured intensities: each tissue's mean becomes m_t exp(strength z_t), texture kept
    labels = torch.randint(0, 3, (1, 1, 20, 24), generator=torch.Generator().manual_seed(0))
    tissues = torch.cat([(labels == t).float() for t in range(3)], 1)
    image = (0.3 + 0.2 * labels.float()) * (1 + 0.1 * torch.rand(1, 1, 20, 24))
    out = tissue_contrast(image, tissues, 0.5, subject_generator(0, 0, 1))
    z = torch.randn(3, generator=subject_generator(0, 0, 1))
    for t in range(3):
        mask = labels == t
        ratio = float(out[mask].mean() / image[mask].mean())
        assert ratio == pytest.approx(float(torch.exp(0.5 * z[t])), rel=1e-5)
        assert float((out[mask] - image[mask]).std()) < 1e-5          # a constant shift per tissue
    assert torch.equal(tissue_contrast(image, tissues, 0.0, subject_generator(0)), image)
    real = tissue_contrast(*mni_template(SIZE2)[:1], mni_tissues(SIZE2), 0.5, subject_generator(0, 0, 1))
    assert real.shape == (1, 1, *SIZE2) and bool(torch.isfinite(real).all())


def test_larger_multiscale_deformations_lower_identity_dice(root):
    plain = Embedded("val", SIZE2, root=root, n=3)
    large = Embedded("val", SIZE2, root=root, n=3, rms=4 * plain.rms, rms_jitter=0.5, fine_rms=2 * plain.rms)

    def identity(ds):
        return np.mean([np.nanmean(dice(ds[i]["moving_seg"], ds[i]["fixed_seg"], ds.labels).numpy())
                        for i in range(3)])

    assert identity(large) < identity(plain) - 0.1
    rms = [float(large[i]["disp_true"].pow(2).sum(0).mean().sqrt()) for i in range(3)]
    assert max(rms) / min(rms) > 1.1                               # the per-subject jitter
    assert all(fold_fraction(large[i]["disp_true"][None]) == 0 for i in range(3))   # still invertible


def test_supersampling_makes_moving_and_fixed_equally_sharp():
    ratios = {}
    for k in (1, 2):
        ds = Embedded("val", (64, 80), n=3, cache=False, supersample=k)
        atlas, seg = ds.atlas()
        ratios[k] = np.mean([edge_strength(s["image"], s["seg"] > 0) / edge_strength(atlas, seg > 0)
                             for s in (ds.subject(i, clean=True) for i in range(3))])
    assert ratios[1] < 0.97 and abs(1 - ratios[2]) < abs(1 - ratios[1])


@pytest.mark.parametrize("kwargs, message", [
    ({"pairs": "atlases"}, "pairs must be one of"),
    ({"contrast": -1}, "contrast must be"),
    ({"rms_jitter": 1.0}, "rms_jitter must be"),
    ({"supersample": 0}, "supersample must be"),
    ({"img_size": (32,)}, "three sides"),
])
def test_cohort_options_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Embedded(**{"split": "val", "img_size": SIZE2, "cache": False, **kwargs})


# ---------------------------------------------------------------- configs and training
def test_configs_select_the_2d_track_and_the_options():
    cfg = load_config({"img_size": [32, 48], "embedded_pairs": "subject", "embedded_contrast": "0.3",
                       "embedded_supersample": 2, "model": "voxelmorph-1-tiny"})
    ds = from_config(cfg, "val")
    assert ds.img_size == (32, 48) and ds.pairs == "subject" and ds.contrast == 0.3 and ds.supersample == 2
    for bad, message in (({"embedded_pairs": "x"}, "embedded_pairs"), ({"embedded_rms_jitter": 1.5}, "jitter"),
                         ({"img_size": [32]}, "img_size")):
        with pytest.raises(ValueError, match=message):
            load_config(bad)


def test_runs_stored_before_new_keys_still_resume():
    stored = json.loads(json.dumps({k: v for k, v in TrainConfig().__dict__.items()
                                    if not k.startswith("embedded_") or k == "embedded_rms"}))
    assert config_differences(stored, TrainConfig()) == []
    assert config_differences(stored, TrainConfig(embedded_contrast=0.2)) == ["embedded_contrast: 0.0 -> 0.2"]


def test_a_2d_run_trains_and_writes_its_summary(tmp_path, monkeypatch):
    monkeypatch.setenv("OFG_DATA_DIR", str(tmp_path / "data"))
    cfg = {"model": "voxelmorph-1-tiny", "img_size": [32, 32], "epochs": 2, "steps_per_epoch": 3, "val_pairs": 2,
           "progress": False, "embedded_pairs": "subject"}
    summary = run(cfg, out=tmp_path / "run")
    stored = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert stored == json.loads(json.dumps(summary))
    assert stored["img_size"] == [32, 32] and stored["epochs"] == 2 and stored["steps"] == 6
    assert 0 < stored["val_dice"] <= 1 and stored["epe"] > 0 and stored["fold_fraction"] >= 0


def test_the_2d_speed_benchmark_runs(tmp_path, monkeypatch, capsys):
    from helpers import load_module
    monkeypatch.setenv("OFG_DATA_DIR", str(tmp_path / "data"))
    bench = load_module("benchmarks/bench_2d.py", "bench_2d")
    bench.main(["--model", "voxelmorph-1-tiny", "--size", "32", "32", "--steps", "50", "--warmup", "2"])
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] in (["unsupervised"], ["ofg"])}
    assert float(rows["unsupervised"][2]) == 1.0 and float(rows["ofg"][1]) > 0
