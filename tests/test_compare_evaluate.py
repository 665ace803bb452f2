import numpy as np
import pytest
import torch

from ofg_lib import models
from ofg_lib.compare import _score, markdown, paired
from ofg_lib.data import Embedded
from ofg_lib.evaluate import evaluate, load_model


def test_paired_differences_are_per_seed():
    scores = {"unsupervised/0": {"val_dice": 0.70, "fold_fraction": 0.01, "epe": 1.0},
              "unsupervised/1": {"val_dice": 0.74, "fold_fraction": 0.02, "epe": 0.9},
              "ofg/0": {"val_dice": 0.71, "fold_fraction": 0.0, "epe": 1.1},
              "ofg/1": {"val_dice": 0.76, "fold_fraction": 0.0, "epe": 0.8}}
    p = paired(scores, ("unsupervised", "ofg"), (0, 1))
    assert p["val_dice"]["per_seed"] == pytest.approx([0.01, 0.02])
    assert p["val_dice"]["difference"] == pytest.approx((0.015, 0.005))
    assert p["val_dice"]["ofg"] == pytest.approx((0.735, 0.025))
    text = markdown({"strategies": ["unsupervised", "ofg"], "seeds": [0, 1], "last_k": 2,
                     "paired": {"equal_steps": p}})
    assert "| Dice | 0.7200 ± 0.0200 | 0.7350 ± 0.0250 | +0.0150 ± 0.0050 |" in text


def test_score_averages_the_last_validations_up_to_an_epoch():
    history = [{"epoch": e, "val_dice": 0.1 * e, "fold_fraction": 0.0, "epe": 1.0} for e in range(1, 6)]
    assert _score(history, 4, 2)["val_dice"] == pytest.approx(0.35)
    assert _score(history[:1] + [{"epoch": 2, "loss": 1.0}], 2, 3)["val_dice"] == pytest.approx(0.1)


def test_evaluate_a_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("OFG_DATA_DIR", str(tmp_path / "cohort"))
    size = (32, 32, 48)
    model = models.build("voxelmorph-1-tiny", size)
    torch.save({"model": model.state_dict(), "config": {"model": "voxelmorph-1-tiny", "img_size": list(size),
                                                         "dataset": "embedded"}}, tmp_path / "c.pt")
    net, cfg = load_model(tmp_path / "c.pt")
    r = evaluate(net, Embedded("val", size, n=2), time_repeats=1)
    assert r["dice_per_label"].shape == (2, 12) and 0 < r["dice"] <= 1
    assert r["fold_fraction"] == r["fold_fraction_brain"] == 0.0 and r["epe"] > 0 and r["inference_ms"] > 0 and np.isfinite(r["sdlogj"])
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_model(tmp_path / "missing.pt")


def test_the_equal_time_budget_is_the_median_step_so_a_slowed_epoch_does_not_move_it():
    from ofg_lib.compare import step_seconds
    clean = [{"sec_per_step_network": 0.3, "sec_per_step_inner": 0.1} for _ in range(9)]
    slowed = clean[:8] + [{"sec_per_step_network": 3.0, "sec_per_step_inner": 1.0}]
    assert step_seconds([clean, slowed]) == pytest.approx(0.4)
