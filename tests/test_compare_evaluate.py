import numpy as np
import pytest
import torch

from conftest import smooth_disp, smooth_volume
from ofg_lib import models
from ofg_lib.compare import METRICS, markdown
from ofg_lib.files import load_checkpoint
from ofg_lib.stats import last_k_mean
from ofg_lib.data import Embedded
from ofg_lib.evaluate import evaluate, field_maps, load_model
from ofg_lib.metrics import fold_fraction, jacobian_det
from ofg_lib.transform import warp


def test_a_comparison_is_a_sweep_paired_by_seed_against_the_first_strategy():
    """The table compare writes: rows of the runner's schema, the second strategy against the first."""
    from ofg_lib.stats import paired
    row = {"point": "ofg", "overrides": {"strategy": "ofg"}, "val_dice": paired([0.71, 0.76], [0.70, 0.74])}
    p = row["val_dice"]
    assert p["per_seed"] == pytest.approx([0.01, 0.02])
    # spreads are sample standard deviations (ddof 1): |a - b| / sqrt(2) for two seeds
    assert (p["difference"], p["difference_std"]) == pytest.approx((0.015, 0.01 / 2 ** 0.5))
    assert (p["mean"], p["std"]) == pytest.approx((0.735, 0.05 / 2 ** 0.5))
    text = markdown({"strategies": ["unsupervised", "ofg"], "seeds": [0, 1], "last_k": 2,
                     "equal_steps": {"rows": [row]}, "equal_time": None})
    assert ("| ofg | Dice | 0.7200 ± 0.0283 | 0.7350 ± 0.0354 | +0.0150 ± 0.0071 (+0.0100, +0.0200) | "
            "[-0.0485, +0.0785] | 2 / 0 |") in text and "ddof 1" in text and "equal time" not in text


def test_compare_trains_the_faster_strategy_to_the_slower_ones_time(tmp_path, monkeypatch):
    """Equal time: unsupervised (2.5x faster per step here) is trained again for floor(2 x 2.5) = 5 epochs in its
    own folder, and the equal-time row pairs OFG's run with that longer run, seed by seed."""
    from ofg_lib import compare, sweep
    monkeypatch.setenv("OFG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(sweep, "step_seconds", lambda hs: 2.5 if "mse" in hs[0][0] else 1.0)
    base = {"model": "voxelmorph-1-tiny", "img_size": [32, 32], "epochs": 2, "steps_per_epoch": 2, "val_pairs": 2,
            "progress": False}
    r = compare.compare(base, seeds=[0, 1], out=tmp_path / "c", last_k=1)
    assert r["equal_time_epochs"] == {"unsupervised": 5, "ofg": 2}
    hist = {f.name: load_checkpoint(f / "checkpoint.pt")["history"] for f in (tmp_path / "c").iterdir() if f.is_dir()}
    assert set(hist) == {"unsupervised-seed0", "unsupervised-seed1", "ofg-seed0", "ofg-seed1",
                         "unsupervised-seed0-equal-time-5ep", "unsupervised-seed1-equal-time-5ep"}
    for table, ref in (("equal_steps", "unsupervised-seed{}"), ("equal_time", "unsupervised-seed{}-equal-time-5ep")):
        v = r[table]["rows"][0]["val_dice"]
        assert v["per_seed"] == pytest.approx([hist[f"ofg-seed{s}"][-1]["val_dice"] - hist[ref.format(s)][-1]["val_dice"]
                                               for s in (0, 1)])
    assert len(hist["unsupervised-seed0-equal-time-5ep"]) == 5
    assert "**equal time** (unsupervised 5 epochs, ofg 2 epochs)" in (tmp_path / "c" / "comparison.md").read_text()


def test_score_averages_the_last_validations_up_to_an_epoch():
    history = [{"epoch": e, "val_dice": 0.1 * e, "fold_fraction": 0.0, "epe": 1.0} for e in range(1, 6)]
    assert last_k_mean(history, 4, 2, METRICS)["val_dice"] == pytest.approx(0.35)
    assert last_k_mean(history[:1] + [{"epoch": 2, "loss": 1.0}], 2, 3, METRICS)["val_dice"] == pytest.approx(0.1)
    assert last_k_mean(history, 4, 2, METRICS)["sdlogj"] is None          # not logged


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


def test_load_runs_makes_missing_runs_by_running_notebook_05_only_when_asked(tmp_path, monkeypatch):
    """Notebooks 06 and 07 call load_runs(..., make=True): a student who opens them first gets notebook 05's runs
    made (by running notebook 05 with this run_dir and seed); without make, or when making fails to produce them,
    the error names the folders and says what to run."""
    from ofg_lib import compare
    calls = []

    def fake_05(run_dir, seed):      # stands in for papermill: trains the two runs notebook 05 would
        calls.append((run_dir, seed))
        for s in ("unsupervised", "ofg"):
            compare.train_history({"model": "voxelmorph-1-tiny", "img_size": [32, 32], "epochs": 1,
                                   "steps_per_epoch": 1, "val_pairs": 1, "progress": False, "inner_steps": 2,
                                   "strategy": s, "seed": seed}, run_dir / "compare" / f"{s}-seed{seed}")

    monkeypatch.setenv("OFG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(compare, "run_notebook_05", fake_05)
    monkeypatch.setattr(compare, "NOTEBOOK_05_RUN_DIR", str(tmp_path / "r"))     # notebook 05's default folder
    with pytest.raises(FileNotFoundError, match="run notebook 05 with the same run_dir first"):
        compare.load_runs(tmp_path / "r", 1)
    assert calls == []
    # a folder that is not notebook 05's default (a profile's) is never filled with default-sized runs
    with pytest.raises(FileNotFoundError, match="run notebook 05 with the same run_dir first"):
        compare.load_runs(tmp_path / "profile", 1, make=True)
    assert calls == []
    runs = compare.load_runs(tmp_path / "r", 1, make=True)
    assert calls == [(tmp_path / "r", 1)] and set(runs) == {"unsupervised", "ofg"}
    assert runs["ofg"][1]["strategy"] == "ofg" and runs["ofg"][1]["seed"] == 1
    compare.load_runs(tmp_path / "r", 1, make=True)          # present now: notebook 05 is not run again
    assert len(calls) == 1
    monkeypatch.setattr(compare, "run_notebook_05", lambda run_dir, seed: None)   # ran, but made nothing
    with pytest.raises(FileNotFoundError, match="no trained runs"):
        compare.load_runs(tmp_path / "r", 0, make=True)


def test_notebook_05_default_run_dir_is_the_one_load_runs_fills():
    import ast
    from pathlib import Path

    import jupytext

    from ofg_lib.compare import NOTEBOOK_05_RUN_DIR
    nb = jupytext.read(Path(__file__).resolve().parents[1] / "notebooks" / "05_ofg_training.py")
    cell = next(c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", []))
    values = {n.targets[0].id: ast.literal_eval(n.value) for n in ast.parse(cell.source).body
              if isinstance(n, ast.Assign)}
    assert values["run_dir"] == NOTEBOOK_05_RUN_DIR


def test_run_notebook_05_executes_notebook_05_through_papermill(tmp_path, monkeypatch):
    """The real path of 06/07's way in, at a tiny size: notebook 05 runs in a fresh kernel with run_dir and seed
    injected, leaves its executed copy and both strategies' runs, and OFG_STATIC is restored afterwards."""
    from ofg_lib import compare
    monkeypatch.setenv("OFG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("OFG_STATIC", raising=False)
    out = compare.run_notebook_05(tmp_path / "r", 1, log=lambda *a: None,
                                  parameters={"img_size": [32, 32, 32], "epochs": 1, "steps_per_epoch": 1,
                                              "val_pairs": 1, "last_k": 1, "inner_steps": 2})
    assert out == tmp_path / "r" / "05_ofg_training.ipynb" and out.exists()
    runs = compare.load_runs(tmp_path / "r", 1)
    assert runs["ofg"][1]["seed"] == 1 and runs["ofg"][1]["img_size"] == [32, 32, 32]
    assert "OFG_STATIC" not in __import__("os").environ


def test_field_maps_hold_the_warp_the_jacobian_and_the_folds_of_one_pair():
    """What the figures draw, computed by the library: each entry against the function that defines it."""
    shape = (8, 9, 10)
    moving, fixed = smooth_volume(shape, seed=0), smooth_volume(shape, seed=1)
    moving_seg = (4 * moving).long()
    disp = smooth_disp(shape, 2.0)                               # folds somewhere
    brain = fixed[:, 0] > 0.5
    m = field_maps(disp, {"moving": moving, "fixed": fixed, "moving_seg": moving_seg}, mask=brain)
    assert m["fixed"] is fixed and m["moving"] is moving and m["disp"] is disp
    torch.testing.assert_close(m["warped"], warp(moving, disp))
    torch.testing.assert_close(m["difference"], (warp(moving, disp) - fixed).abs())
    assert torch.equal(m["warped_seg"], warp(moving_seg, disp, mode="nearest"))
    det = jacobian_det(disp)
    torch.testing.assert_close(m["det"], det)
    assert m["fold_count"] == int((det[brain] <= 0).sum()) > 0
    assert m["fold_percent"] == pytest.approx(100 * fold_fraction(disp, brain))
    alone = field_maps(disp)                                     # a field without a pair: its folds over all voxels
    assert set(alone) == {"disp", "det", "fold_count", "fold_percent"}
    assert alone["fold_percent"] == pytest.approx(100 * fold_fraction(disp))
