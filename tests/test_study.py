"""The study runner of notebook 08: every stage runs, reuses finished runs, and its tables say what the runs say."""
import json

import numpy as np
import pytest

from ofg_lib import study
from ofg_lib.data import Embedded
from ofg_lib.paths import load_checkpoint

SPEC = {"base": {"model": "voxelmorph-1-tiny", "img_size": [32, 32], "epochs": 2, "steps_per_epoch": 2,
                 "val_pairs": 2, "progress": False, "lr": 1e-3},
        "settings": ["today", "subject"], "seeds": [0, 1], "last_k": 1, "equal_time": True,
        "variants": {"inner_steps_1": {"inner_steps": 1}}, "both_variants": {"paper_lr": {"lr": 1e-4}},
        "budgets": [1], "confirm_3d": {"img_size": [16, 16, 16], "epochs": 1, "steps_per_epoch": 2, "seeds": [0]}}


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    mp = pytest.MonkeyPatch()
    mp.setenv("OFG_DATA_DIR", str(root / "data"))
    result = study.run_study(SPEC, root / "out", log=lambda *a: None)
    yield root / "out", result
    mp.undo()


def test_every_stage_runs_and_is_tabulated(done):
    out, result = done
    tags = {(r["tag"], r["comparison"]) for r in result["rows"]}
    assert {("today", "equal steps"), ("subject", "equal steps"), ("today-inner_steps_1", "equal steps, OFG inner_steps_1"),
            ("today-paper_lr", "equal steps, both paper_lr"), ("today-1ep", "equal steps")} <= tags
    assert any(c == "equal steps, 3-D" for _, c in tags)
    for r in result["rows"]:                     # the runner's rows: one per stage, a paired record per metric
        for m in ("val_dice", "epe", "sdlogj"):
            assert len(r[m]["per_seed"]) == (1 if r["comparison"].endswith("3-D") else 2)
            assert r[m]["difference"] == pytest.approx(float(np.mean(r[m]["per_seed"])))
            assert r[m]["difference"] == pytest.approx(r[m]["mean"] - r[m]["reference"])
    saved = json.loads((out / "study.json").read_text())
    assert len(saved["rows"]) == len(result["rows"]) == len(tags)
    assert "| equal steps | today/ofg | Dice |" in (out / "study.md").read_text()


def test_paired_differences_are_ofg_minus_unsupervised_of_the_same_seed(done):
    out, result = done
    row = next(r for r in result["rows"] if r["tag"] == "today" and r["comparison"] == "equal steps")["val_dice"]
    for i, seed in enumerate(SPEC["seeds"]):
        dice = {s: load_checkpoint(out / "today" / f"{s}-seed{seed}" / "checkpoint.pt")["history"][-1]["val_dice"]
                for s in ("unsupervised", "ofg")}
        assert row["per_seed"][i] == pytest.approx(dice["ofg"] - dice["unsupervised"])   # last_k = 1


def test_equal_time_runs_unsupervised_for_ofgs_time(tmp_path, monkeypatch):
    from ofg_lib import sweep
    monkeypatch.setenv("OFG_DATA_DIR", str(tmp_path / "data"))
    # OFG 2.5 times slower per step: unsupervised gets floor(2 epochs x 2.5) = 5 epochs
    monkeypatch.setattr(sweep, "step_seconds", lambda hs: 2.5 if "mse" in hs[0][0] else 1.0)
    spec = {**SPEC, "settings": ["today"], "seeds": [0], "variants": {}, "both_variants": {}, "budgets": [],
            "confirm_3d": None}
    result = study.run_study(spec, tmp_path / "out", log=lambda *a: None)
    row = next(r for r in result["rows"] if r["comparison"] == "equal time")
    assert row["unsupervised_epochs"] == 5 and row["epochs"] == 2
    row = row["val_dice"]
    state = load_checkpoint(tmp_path / "out" / "today-equal-time-5ep" / "unsupervised-seed0" / "checkpoint.pt")
    assert state["epoch"] == 5 and state["config"]["epochs"] == 5
    assert row["per_seed"][0] == pytest.approx(result["histories"]["today/ofg/0"][-1]["val_dice"]
                                               - state["history"][-1]["val_dice"])
    monkeypatch.setattr(sweep, "step_seconds", lambda hs: 1.0)             # OFG not slower: no extra runs
    again = study.run_study(spec, tmp_path / "out2", log=lambda *a: None)
    assert not [r for r in again["rows"] if r["comparison"] == "equal time"]


def test_the_3d_confirmation_takes_the_best_or_the_hardest_setting(done):
    _, result = done
    gains = {r["setting"]: r["val_dice"]["difference"] for r in result["rows"]
             if r["comparison"] == "equal steps" and r["tag"] == r["setting"]}
    c = result["confirm_3d"]
    if max(gains.values()) > 0:
        assert c["setting"] == max(gains, key=gains.get)
    else:
        assert c["setting"] == min(result["settings"], key=lambda s: result["settings"][s]["identity"]["dice"])
    assert c["img_size"] == [16, 16, 16]


def test_a_second_call_reuses_every_run(done):
    out, result = done
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("checkpoint.pt")}
    again = study.run_study(SPEC, out, log=lambda *a: None)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("checkpoint.pt")} == stamps
    assert [r["val_dice"]["per_seed"] for r in again["rows"]] == [r["val_dice"]["per_seed"] for r in result["rows"]]


def test_report_thins_the_curves_and_keeps_the_table(done, tmp_path):
    _, result = done
    path = study.write_report(result, tmp_path, 1.5, "2 test cores", "python -m ofg_lib.study", points=1)
    saved = json.loads(path.read_text())
    assert saved["wall_time_h"] == 1.5 and saved["rows"] == json.loads(json.dumps(result["rows"]))
    for key, rows in saved["histories"].items():
        assert len(rows) <= 2 and rows[-1]["step"] == result["histories"][key][-1]["step"]
    assert "1.5 h on 2 test cores" in (tmp_path / "study.md").read_text()


def _row(tag, unsup, ofg, epochs, comparison="equal steps", epe=None):
    """A study row as the runner writes it: Dice (and EPE) as paired records, OFG against unsupervised."""
    from ofg_lib.stats import paired
    return {"tag": tag, "setting": "today", "comparison": comparison, "epochs": epochs, "point": f"{tag}/ofg",
            "overrides": {"strategy": "ofg"}, "val_dice": paired(ofg, unsup),
            **({"epe": paired(epe[1], epe[0])} if epe else {})}


def test_plateau_rule():
    rows = [_row("today-8ep", [0.80, 0.80], [0.78, 0.78], 8), _row("today", [0.85, 0.85], [0.84, 0.84], 24),
            _row("today-72ep", [0.852, 0.852], [0.86, 0.86], 72)]
    p = study.plateau(rows, "today")
    assert p["unsupervised"]["epochs"] == [8, 24, 72]
    assert p["unsupervised"]["plateaued"] and p["unsupervised"]["last_gain"] == pytest.approx(0.002)
    assert not p["ofg"]["plateaued"] and p["ofg"]["last_gain"] == pytest.approx(0.02)
    assert p["ofg"]["last_std"] == 0.0
    assert study.plateau(rows[:1], "today")["ofg"]["plateaued"] is None


def test_conclusion_is_built_from_the_rows():
    rows = [_row("today", [0.80, 0.81], [0.82, 0.83], 24, epe=([1.0, 1.0], [0.9, 0.8])),
            _row("large", [0.6, 0.6], [0.59, 0.61], 24)]
    text = study.conclusion({"rows": rows})
    assert "OFG is ahead in every seed in 1 of 2 comparisons" in text
    assert "**today, equal steps** (+0.0200 Dice)" in text
    assert "seeds disagree (1 of 2 ahead, 1 behind)" in text and "EPE -0.150 voxels" in text
    tie = study.conclusion({"rows": [_row("today", [0.8, 0.8], [0.8, 0.8], 24)]})
    assert "no difference in any seed" in tie and "none of the comparisons" in tie


def test_curves_average_over_seeds():
    result = {"histories": {"today/ofg/0": [{"step": 10, "val_dice": 0.5}, {"step": 20, "val_dice": 0.7}],
                            "today/ofg/1": [{"step": 10, "val_dice": 0.7}, {"step": 20, "val_dice": 0.9}]}}
    steps, mean, std = study.curves(result, "today", "ofg")
    assert steps.tolist() == [10, 20] and mean.tolist() == pytest.approx([0.6, 0.8])
    assert std.tolist() == pytest.approx([0.1, 0.1])
    with pytest.raises(KeyError, match="no runs for today/unsupervised"):
        study.curves(result, "today", "unsupervised")


def test_settings_scale_with_the_image_size():
    for size in ((96, 112), (48, 64, 64)):
        rms = Embedded("val", size, n=1, cache=False).rms
        cfg = study.setting_config("large", size)
        assert cfg["embedded_rms"] == pytest.approx(4 * rms, abs=1e-4)
        assert cfg["embedded_fine_rms"] == pytest.approx(2 * rms, abs=1e-4)
    assert study.setting_config("today", (32, 32)) == {}
    with pytest.raises(ValueError, match="unknown setting 'hard'"):
        study.setting_config("hard", (32, 32))


def test_spec_from_the_notebook_parameters():
    spec = study.spec_from_params({"img_size": [64, 80], "epochs": 3, "steps_per_epoch": 4, "settings": ["today"],
                                   "seeds": [0], "variants": None, "confirm_3d": None})
    assert spec["base"]["img_size"] == [64, 80] and spec["variants"] == {} and spec["budgets"] == []


def test_a_first_schema_report_converts_to_the_runners_rows():
    """scripts/migrate_study_report.py: old rows (one per metric, ddof-0 spreads) become one runner row per stage;
    every number follows from the stored ones (spreads rescaled to ddof 1, the interval from the per-seed values)."""
    import importlib.util

    from ofg_lib.paths import REPO
    from ofg_lib.stats import paired
    spec = importlib.util.spec_from_file_location("migrate", REPO / "scripts" / "migrate_study_report.py")
    migrate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migrate)
    unsup, ofg = [0.80, 0.83, 0.81], [0.79, 0.84, 0.78]
    old = [{"tag": "today", "setting": "today", "comparison": "equal steps", "metric": m, "epochs": 24,
            "unsupervised": float(np.mean(unsup)), "unsupervised_std": float(np.std(unsup)),
            "ofg": float(np.mean(ofg)), "ofg_std": float(np.std(ofg)),
            "difference": float(np.mean(np.subtract(ofg, unsup))), "difference_std": float(np.std(np.subtract(ofg, unsup))),
            "per_seed": np.subtract(ofg, unsup).tolist()} for m in ("val_dice", "epe")]
    new = migrate.convert({"rows": old, "settings": {}})
    assert len(new["rows"]) == 1 and new["rows"][0]["epochs"] == 24 and "migrated" in new
    want = paired(ofg, unsup)
    for m in ("val_dice", "epe"):
        got = new["rows"][0][m]
        assert set(got) == set(want)
        for k, v in want.items():
            assert got[k] == (pytest.approx(v) if not isinstance(v, bool) else v), k
