"""The sweep runner: grids, reuse, resume, and paired differences against the reference."""
import csv

import pytest

from ofg_lib.files import load_checkpoint
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


def test_test_split_scores_of_the_best_checkpoints_and_sample_spreads(tmp_path):
    """With test_pairs, each run's best-validation checkpoint is scored on the test split (score_run's numbers,
    paired by seed); spreads are sample standard deviations (ddof 1)."""
    import numpy as np

    from ofg_lib.evaluate import score_run
    out = tmp_path / "s"
    result = sweep(BASE, [{"strategy": "unsupervised"}], seeds=[0, 1], out=out, last_k=1, log=lambda *a: None,
                   test_pairs=3)
    row = result["rows"][0]
    assert result["test_pairs"] == 3 and result["ddof"] == 1
    mine = [score_run(out / "strategy=unsupervised" / f"seed{s}", "test", 3, "best") for s in (0, 1)]
    ref = [score_run(out / "reference" / f"seed{s}", "test", 3, "best") for s in (0, 1)]
    assert all(m["split"] == "test" and m["pairs"] == 3 and m["which"] == "best" for m in mine + ref)
    diff = [m["dice"] - r["dice"] for m, r in zip(mine, ref)]
    assert row["test_dice"]["per_seed"] == pytest.approx(diff)
    assert row["test_dice"]["mean"] == pytest.approx(np.mean([m["dice"] for m in mine]))
    assert row["test_dice"]["std"] == pytest.approx(np.std([m["dice"] for m in mine], ddof=1))
    assert row["test_dice"]["difference_std"] == pytest.approx(np.std(diff, ddof=1))
    assert row["test_epe"]["per_seed"] == pytest.approx([m["epe"] - r["epe"] for m, r in zip(mine, ref)])
    with open(out / "sweep.csv") as f:
        assert "test_dice" in {r["metric"] for r in csv.DictReader(f)}
    # without test_pairs nothing is scored on the test split
    plain = sweep(BASE, [{"strategy": "unsupervised"}], seeds=[0], out=out, last_k=1, log=lambda *a: None)
    assert "test_dice" not in plain["rows"][0] and plain["rows"][0]["val_dice"]["std"] == 0.0


def test_verdict_notes_follow_the_designs_in_the_table():
    from ofg_lib.sweep import ablation_verdicts, verdict_metric

    def table(points, metric="val_dice", **extra):
        return {**extra, "rows": [{"point": p, "overrides": o, metric: {"per_seed": [-0.02, -0.021, -0.019],
                                                                         "reference": 0.9}} for p, o in points]}
    core = {"rows": [{"point": "strategy=unsupervised", "overrides": {"strategy": "unsupervised"},
                      "val_dice": {"per_seed": [-0.01, -0.011, -0.012], "reference": 0.9}}]}
    old = {"table34": table([("a", {"optimizer_design": "network"}), ("b", {"optimizer_design": "downsample"})]),
           "fig5": table([("self-training", {"teacher": "runs/strategy=unsupervised/seed0/checkpoint.pt"})])}
    notes = {r["table"]: r["note"] for r in ablation_verdicts(old, core)["rows"]}
    assert "per-epoch copy" in notes["table34"] and "full resolution" in notes["table34"]
    assert "same short budget" in notes["fig5"]
    new = {"table34": table([("a", {"optimizer_design": "optimizer-network"}),
                             ("b", {"optimizer_design": "downsample", "inner_coarse_energy": True})]),
           "fig5": table([("self-training", {"teacher": "runs/teacher-24ep/best.pt"})])}
    assert all(r["note"] is None for r in ablation_verdicts(new, core)["rows"])
    best = {"fig5": table([("self-training", {"teacher": "runs/strategy=unsupervised/seed0/best.pt"})])}
    assert "best-validation checkpoint" in ablation_verdicts(best, core)["rows"][0]["note"]
    # the verdicts use the test split's Dice only when every table (and the premise) carries it
    assert verdict_metric(new) == "val_dice"
    tested = {k: table([("a", {})], "test_dice", test_pairs=40) for k in ("fig5", "core")}
    assert verdict_metric(tested) == "test_dice"
    assert verdict_metric({**tested, "x": table([("a", {})])}) == "val_dice"
    tested["core"]["rows"][0]["point"] = "strategy=unsupervised"
    tested["core"]["rows"][0]["overrides"] = {"strategy": "unsupervised"}
    v = ablation_verdicts({"fig5": tested["fig5"]}, tested["core"])
    assert v["metric"] == "test_dice" and v["rows"][0]["verdict"] == "holds"


def test_table_markdown_shows_the_score_the_sweep_used():
    from ofg_lib.sweep import table_markdown
    from ofg_lib.stats import paired
    row = {"point": "ofg_every=2", "sec_per_step_inner": 0.0123, "guided_share": 0.5,
           **{m: paired([0.70, 0.72], [0.71, 0.74]) for m in ("val_dice", "epe", "fold_fraction_brain")},
           **{m: paired([0.60, 0.64], [0.62, 0.65]) for m in ("test_dice", "test_epe", "test_fold_fraction_brain")}}
    assert "| point | Dice | vs reference | EPE |" in table_markdown({"rows": [row]})
    plain = table_markdown({"rows": [row]}, versus="OFG")
    assert "| point | Dice | vs OFG | EPE |" in plain and "test Dice" not in plain
    assert "| ofg_every=2 | 0.7100 ± 0.0141 | -0.0150 ± 0.0071 |" in plain and "| 0.0123 | 0.50 |" in plain
    tested = table_markdown({"rows": [row], "test_pairs": 40}, versus="OFG")
    assert "| point | test Dice | vs OFG |" in tested and "| ofg_every=2 | 0.6200 ± 0.0283 | -0.0150 ± 0.0071 |" in tested
    assert "| 62.0000 ± 2.8284 |" in tested          # folds in percent
    # the long layout (compare, the study): one line per metric, both means, per-seed differences, interval, signs
    long = table_markdown([row], columns=("val_dice",), versus="unsupervised", long=True, label="run",
                          extra=("comparison",))
    assert long.splitlines()[0] == ("| comparison | run | metric | unsupervised | this run | this run - unsupervised "
                                    "(per seed) | 95 % CI | seeds above / below |")
    assert long.splitlines()[1].count("---") == 8
    assert ("|  | ofg_every=2 | Dice | 0.7250 ± 0.0212 | 0.7100 ± 0.0141 | -0.0150 ± 0.0071 (-0.0100, -0.0200) | "
            "[-0.0785, +0.0485] | 0 / 2 |") in long
