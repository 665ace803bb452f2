"""The Table 1 report: built from small runs, every row and column, absent toolkits listed, not failing."""
import csv

import pytest
import torch

from ofg_lib import baselines, models
from ofg_lib.data import Embedded
from ofg_lib.report import COLUMNS, PAPER_IXI, classical_row, markdown, network_row, write_report


def _comparison(run_dir, size, seeds=(0, 1)):
    """Checkpoints laid out as notebook 05's `compare` writes them (untrained tiny networks, a logged history)."""
    for strategy in ("unsupervised", "ofg"):
        for seed in seeds:
            folder = run_dir / "compare" / f"{strategy}-seed{seed}"
            folder.mkdir(parents=True)
            torch.manual_seed(seed)
            model = models.build("voxelmorph-1-tiny", size)
            history = [{"epoch": e, "step": 10 * e, "sec_per_step_network": 0.5, "sec_per_step_data": 0.1,
                        "sec_per_step_inner": 1.0 if strategy == "ofg" else 0.0} for e in (1, 2)]
            torch.save({"model": model.state_dict(), "history": history,
                        "config": {"model": "voxelmorph-1-tiny", "img_size": list(size), "dataset": "embedded",
                                   "strategy": strategy, "epochs": 2, "steps_per_epoch": 10}}, folder / "checkpoint.pt")


def test_report_has_every_row_and_column(tmp_path, monkeypatch):
    size = (32, 32, 32)
    ds = Embedded("val", size, n=2, rms=2.0, root=tmp_path / "cohort")
    _comparison(tmp_path / "runs", size)
    net, evals = network_row(tmp_path / "runs", ds, 2, seeds=(0, 1), label="tiny")
    assert set(evals) == {"unsupervised", "ofg"}
    assert net["train_s_base"] == pytest.approx(20 * 0.6) and net["train_s_ofg"] == pytest.approx(20 * 1.6)
    assert 0 < net["dice_base"] <= 1 and net["infer_s"] > 0 and net["paper_dice_base"] is None
    assert network_row(tmp_path / "runs", ds, 1, seeds=(0,))[0]["method"] == "voxelmorph-1-tiny (32x32x32, 20 steps)"
    inst, r = classical_row("instance", ds, 2, **baselines.QUICK["instance"])
    assert inst["status"] == "ok" and r["first_disp"].shape == (1, 3, *size)
    assert inst["dice_base"] > net["dice_base"]  # optimised pairs beat an untrained network
    monkeypatch.setattr(baselines.shutil, "which", lambda name: None)
    nifty, none = classical_row("niftyreg", ds, 2)
    assert none is None and nifty["status"].startswith("not installed")
    assert nifty["paper_dice_base"] == PAPER_IXI["niftyreg"]["dice"][0]
    paths = write_report([inst, nifty, net], tmp_path / "out", notes="small")
    text = paths["md"].read_text()
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 3 and len({line.count("|") for line in table}) == 1   # header, rule, 3 rows
    assert "not installed" in table[3] and "0.585" in table[3]
    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == COLUMNS and [r["method"] for r in rows] == [inst["method"], "NiftyReg f3d", "tiny"]
    assert float(rows[2]["dice_ofg"]) == pytest.approx(net["dice_ofg"])
    with pytest.raises(ValueError, match="method, kind and status"):
        write_report([{"method": "x"}], tmp_path / "bad")


def test_markdown_marks_classical_rows_without_ofg():
    row = {"method": "m", "kind": "classical", "status": "ok", "dice_base": 0.7, "dice_base_std": 0.01,
           "folds_base": 0.0, "folds_brain_base": 0.0, "sdlogj_base": 0.05, "epe_base": 1.0, "infer_s": 2.0,
           "infer_device": "cpu", "paper_dice_base": None, "paper_dice_ofg": None, "paper_folds_base": None,
           "paper_folds_ofg": None, "paper_time": None}
    line = [x for x in markdown([row]).splitlines() if x.startswith("| m ")][0]
    assert "0.7000 ± 0.0100 |" in line and "| none |" in line and "2 (cpu)" in line
