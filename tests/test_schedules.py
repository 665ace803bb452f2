"""Guidance schedules and optimizer designs of the ablations (paper Fig. 6, 7, Tables 2-4)."""
import pytest
import torch

from conftest import smooth_disp, smooth_volume
from ofg_lib.evaluate import evaluate
from ofg_lib.losses import grad_l2, lncc
from ofg_lib.optimizer import refine_with_history
from ofg_lib.train import Trainer, load_config
from ofg_lib.transform import resize_disp, warp

BASE = {"model": "voxelmorph-1-tiny", "img_size": [32, 32], "steps_per_epoch": 4, "val_pairs": 2, "progress": False}


@pytest.fixture(autouse=True)
def _data(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("OFG_DATA_DIR", str(tmp_path_factory.getbasetemp() / "data"))


def fit(**kw):
    t = Trainer.from_config({**BASE, **kw})
    t.fit()
    return t


def test_epoch_interval_guidance_uses_ofg_on_every_kth_epoch():
    t = fit(epochs=4, ofg_every=2)
    assert [r["guided_share"] for r in t.history] == [0.0, 1.0, 0.0, 1.0]
    assert "mse" not in t.history[0] and "sim" in t.history[0]          # unsupervised epochs log its terms
    assert "mse" in t.history[1] and "sim" not in t.history[1]


def test_threshold_guidance_matches_its_probability_and_is_reproducible():
    a = fit(epochs=3, steps_per_epoch=40, ofg_prob=0.3, inner_steps=1)
    shares = [r["guided_share"] for r in a.history]
    assert 0.15 < sum(shares) / 3 < 0.45 and len(set(shares)) > 1       # 120 coin flips at p = 0.3
    b = fit(epochs=3, steps_per_epoch=40, ofg_prob=0.3, inner_steps=1)
    assert [r["guided_share"] for r in b.history] == shares
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))
    assert [r["guided_share"] for r in fit(epochs=2, ofg_prob=0.0).history] == [0.0, 0.0]


def test_warmup_switches_strategy_at_the_right_epoch():
    t = fit(epochs=3, warmup_strategy="unsupervised", warmup_epochs=2)
    assert [r["guided_share"] for r in t.history] == [0.0, 0.0, 1.0]
    assert [r["guided_share"] for r in fit(epochs=1, strategy="unsupervised").history] == [0.0]


@pytest.mark.parametrize("bad, message", [
    ({"strategy": "unsupervised", "ofg_every": 2}, "'ofg' when ofg_every or ofg_prob"),
    ({"ofg_prob": 1.5}, "ofg_prob must be in"),
    ({"warmup_epochs": 2}, "with a warmup_strategy"),
    ({"warmup_strategy": "self-training", "warmup_epochs": 1}, "warmup_strategy 'self-training' needs teacher"),
    ({"optimizer_design": "bayesian"}, "optimizer_design must be one of"),
])
def test_schedule_config_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        load_config({**BASE, **bad})


def test_downsampled_optimizer_works_on_a_coarse_field_and_lowers_the_energy():
    fixed = smooth_volume((32, 40), seed=0, noise=0.0, coarse=8).float()
    moving = warp(fixed, smooth_disp((32, 40), 1.5, seed=4).float())
    start = smooth_disp((32, 40), 0.3, seed=9).float()
    r = refine_with_history(start, moving, fixed, inner_steps=10, inner_lr=0.1, downsample=4, final_energy=True)
    assert r.disp.shape == start.shape and r.final_energy < r.energies[0]
    # the parameter is a field of 8 x 10 vectors; the result is it upsampled
    assert r.coarse.shape == (1, 2, 8, 10)
    torch.testing.assert_close(resize_disp(r.coarse, (32, 40)), r.disp, atol=0, rtol=0)
    # and the prediction's fine detail is gone after the first resize (the paper's explanation of Table 4)
    full = refine_with_history(start, moving, fixed, inner_steps=0, downsample=1).disp
    assert torch.equal(full, start)
    assert not torch.allclose(refine_with_history(start, moving, fixed, inner_steps=0, downsample=4).disp, start, atol=1e-3)
    with pytest.raises(ValueError, match="fewer than 2 voxels"):
        refine_with_history(start, moving, fixed, downsample=32)


def test_downsample_design_trains():
    t = fit(epochs=1, optimizer_design="downsample", inner_downsample=2)
    assert t.history[0]["energy_after"] < t.history[0]["energy_before"]


def test_network_optimizer_trains_its_own_copy_and_leaves_the_main_model_alone():
    t = Trainer.from_config({**BASE, "epochs": 1, "optimizer_design": "network", "network_passes": 2})
    before = [p.detach().clone() for p in t.model.parameters()]
    t.guide.before_epoch(0, 1e-3, t.model, t.train_set, lambda: t.batches(0), t.device)
    assert all(torch.equal(p, q) for p, q in zip(before, t.model.parameters()))
    assert any(not torch.equal(p, q) for p, q in zip(before, t.guide.net.parameters()))
    item = t.train_set[0]
    m, f = item["moving"][None], item["fixed"][None]
    target, _ = t._refine(torch.zeros(1, 2, 32, 32), m, f, 10, 0.1)
    with torch.no_grad():
        torch.testing.assert_close(target, t.guide.net(torch.cat([m, f], 1)))
    t.fit()
    assert t.history[0]["guided_share"] == 1.0 and t.history[0]["sec_per_step_inner"] > 0
    assert t.history[0]["peak_memory_mb"] > 0


def test_validation_logs_the_unsupervised_convergence_loss():
    t = fit(epochs=1, strategy="ofg")
    r = evaluate(t.model, t.val_set, 2, time_repeats=0)
    sims, regs = [], []
    with torch.no_grad():
        for i in range(2):
            item = t.val_set[i]
            phi = t.model(torch.cat([item["moving"][None], item["fixed"][None]], 1))
            sims.append(float(lncc(item["fixed"][None], warp(item["moving"][None], phi))))
            regs.append(float(grad_l2(phi)))
    assert r["lncc"] == pytest.approx(sum(sims) / 2, rel=1e-6) and -1 < r["lncc"] < 0
    assert r["grad_l2"] == pytest.approx(sum(regs) / 2, rel=1e-6)
    assert t.history[0]["val_unsup_loss"] == pytest.approx(r["lncc"] + t.cfg.unsup_reg * r["grad_l2"])


@pytest.mark.parametrize("schedule", [{"ofg_prob": 0.5, "inner_steps": 2},
                                      {"optimizer_design": "network", "ofg_every": 2}])
def test_scheduled_runs_resume_bit_for_bit(tmp_path, schedule):
    from ofg_lib.train import run

    class Stop(Exception):
        pass

    def stop(trainer, row):
        if row["epoch"] == 2:
            raise Stop

    cfg = {**BASE, "epochs": 4, **schedule}
    whole = Trainer.from_config(cfg, tmp_path / "whole")
    whole.fit()
    with pytest.raises(Stop):
        run(cfg, out=tmp_path / "cut", callbacks=[stop])
    run(cfg, out=tmp_path / "cut", resume=True)
    cut = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(cut["model"][k], v) for k, v in whole.model.state_dict().items())
    assert [r["guided_share"] for r in cut["history"]] == [r["guided_share"] for r in whole.history]


def test_designs_and_schedules_apply_to_ofg_steps_only():
    with pytest.raises(ValueError, match="'ofg' when optimizer_design"):
        load_config({**BASE, "strategy": "mix", "optimizer_design": "network"})
    t = fit(epochs=2, optimizer_design="network", warmup_strategy="unsupervised", warmup_epochs=1)
    assert [r["guided_share"] for r in t.history] == [0.0, 1.0]
    assert t.history[0]["sec_per_step_inner"] == 0.0          # no optimizer network trained in the warm-up epoch
    assert t.history[1]["sec_per_step_inner"] > 0
