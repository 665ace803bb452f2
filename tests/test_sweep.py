"""The sweep runner: grids, reuse, resume, and paired differences against the reference."""
import csv

import pytest

from ofg_lib.paths import load_checkpoint
from ofg_lib.sweep import folder_name, points, sweep

BASE = {"model": "voxelmorph-1-tiny", "img_size": [32, 32], "epochs": 2, "steps_per_epoch": 2, "val_pairs": 2,
        "progress": False, "inner_steps": 2}


@pytest.fixture(autouse=True)
def _data(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("OFG_DATA_DIR", str(tmp_path_factory.getbasetemp() / "data"))


def test_points_and_names():
    assert points({"a": [1, 2], "b": ["x"]}) == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]
    assert points([{"a": 1}, {}]) == [{"a": 1}, {}]
    assert folder_name({"strategy": "ofg", "ofg_prob": 0.5}) == "ofg_prob=0.5,strategy=ofg"
    assert folder_name({"img_size": [32, 32]}) == "img_size=_32,32_"
    assert folder_name({}) == "reference"
    with pytest.raises(ValueError, match="non-empty list"):
        points({"a": []})
    with pytest.raises(TypeError):
        points("ofg_every=2")


class Stop(Exception):
    pass


def test_sweep_pairs_points_with_the_reference_and_reuses_and_resumes(tmp_path):
    out = tmp_path / "sweep"

    def stop_after_first_epoch(trainer, row):
        if trainer.cfg.ofg_prob == 0.5 and trainer.cfg.seed == 1 and row["epoch"] == 1:
            raise Stop

    with pytest.raises(Stop):
        sweep(BASE, {"ofg_prob": [0.5]}, seeds=[0, 1], out=out, last_k=1, callbacks=[stop_after_first_epoch],
              log=lambda *a: None)
    assert load_checkpoint(out / "ofg_prob=0.5" / "seed1" / "checkpoint.pt")["epoch"] == 1
    result = sweep(BASE, {"ofg_prob": [0.5]}, seeds=[0, 1], out=out, last_k=1, log=lambda *a: None)
    assert load_checkpoint(out / "ofg_prob=0.5" / "seed1" / "checkpoint.pt")["epoch"] == 2     # resumed
    row = result["rows"][0]
    for i, seed in enumerate((0, 1)):
        mine = load_checkpoint(out / "ofg_prob=0.5" / f"seed{seed}" / "checkpoint.pt")["history"][-1]["val_dice"]
        ref = load_checkpoint(out / "reference" / f"seed{seed}" / "checkpoint.pt")["history"][-1]["val_dice"]
        assert row["val_dice"]["per_seed"][i] == pytest.approx(mine - ref)
    assert 0 < row["guided_share"] < 1 and "val_unsup_loss" in row and "peak_memory_mb" not in row
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("checkpoint.pt")}
    again = sweep(BASE, {"ofg_prob": [0.5]}, seeds=[0, 1], out=out, last_k=1, log=lambda *a: None)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("checkpoint.pt")} == stamps                # reused
    assert again["rows"] == result["rows"]
    with open(out / "sweep.csv") as f:
        table = list(csv.DictReader(f))
    assert {r["metric"] for r in table} >= {"val_dice", "epe", "val_unsup_loss"}
    assert all(r["point"] == "ofg_prob=0.5" for r in table)


def test_a_reference_of_another_strategy(tmp_path):
    result = sweep(BASE, [{"strategy": "ofg"}], seeds=[0], out=tmp_path / "s", reference={"strategy": "unsupervised"},
                   last_k=1, log=lambda *a: None)
    ref = load_checkpoint(tmp_path / "s" / "reference-strategy=unsupervised" / "seed0" / "checkpoint.pt")
    assert ref["config"]["strategy"] == "unsupervised"
    assert result["rows"][0]["guided_share"] == 1.0


def test_measure_step_runs_a_config_in_a_fresh_process():
    from ofg_lib.sweep import measure_step
    r = measure_step({**BASE, "strategy": "ofg"}, steps=2)
    assert set(r) == {"sec_per_step_network", "sec_per_step_inner", "peak_memory_mb", "training_extra_mb"}
    assert r["sec_per_step_inner"] > 0 and r["peak_memory_mb"] > 100 and r["training_extra_mb"] >= 0
    with pytest.raises(RuntimeError, match="unknown config key"):
        measure_step({**BASE, "no_such_key": 1})
