"""The study runner of notebook 08: every stage runs, reuses finished runs, and its tables say what the runs say."""
import json

import numpy as np
import pytest

from ofg_lib import study
from ofg_lib.data import Embedded
from ofg_lib.files import load_checkpoint

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


def test_a_spec_is_the_parameter_cells_config_keys_and_the_studys_axes():
    """The notebook's one call (config.from_namespace) and the CLI's params section give the same spec; names
    that are no config keys (run_dir, report, seeds) stay out of the base config."""
    from ofg_lib.config import from_namespace
    cell = {"run_dir": "results/x", "model": "voxelmorph-1-tiny", "img_size": [32, 32], "lr": 1e-3, "epochs": 3,
            "steps_per_epoch": 5, "val_pairs": 2, "seeds": [0, 1], "last_k": 1, "settings": ["today", "large"],
            "equal_time": True, "variants": {}, "both_variants": {}, "budgets": [], "confirm_3d": None,
            "threads": 0, "progress": False, "report": "reports/study"}
    base = from_namespace(cell)
    assert set(base) == {"model", "img_size", "lr", "epochs", "steps_per_epoch", "val_pairs", "threads", "progress"}
    spec = study.make_spec(base, cell["settings"], cell["seeds"], last_k=1, equal_time=True, variants={},
                           both_variants={}, budgets=[], confirm_3d=None)
    assert spec == study.spec_from_params(cell)
    with pytest.raises(ValueError, match="needs steps_per_epoch"):
        study.make_spec({"img_size": [32, 32], "epochs": 1}, ["today"], [0])
    with pytest.raises(ValueError, match="unknown setting.*'hard'"):
        study.make_spec(base, ["hard"], [0])


def test_the_design_is_built_from_the_spec_and_counts_the_runs(done):
    import re
    _, result = done
    text = study.design_markdown(SPEC)
    assert "`voxelmorph-1-tiny` on the 2-D track (an axial slice, 32x32) for 2 epochs x 2 pairs = 4 steps" in text
    assert "network lr 0.001" in text and "25,000 times as many" in text
    assert "**Seeds** 0, 1: 2 paired differences" in text and "t with 1 degrees of freedom (t = 12.71)" in text
    assert "difficulty: today, subject, each at equal steps and at equal wall time" in text
    assert "`inner_steps_1` (inner_steps=1), OFG only" in text and "`paper_lr` (lr=0.0001), on `today`" in text
    assert "`today` also for 1 epoch (2 steps)" in text
    assert "3-D: one run per strategy and seed (0) at 16x16x16 (epochs=1, steps_per_epoch=2)" in text
    runs = int(re.search(r"In all \*\*(\d+) runs\*\*", text).group(1))
    timed = sum(r["comparison"] == "equal time" for r in result["rows"]) * len(SPEC["seeds"])
    assert runs == 20 and len(result["histories"]) == runs + timed      # what the study trained
    small = {**SPEC, "seeds": [0], "variants": {}, "both_variants": {}, "budgets": [], "confirm_3d": None,
             "equal_time": False}
    text = study.design_markdown(small)
    assert "no spread over seeds, no interval" in text and "In all **4 runs**." in text
    assert "inner optimizer: not varied" in text and "budget: not varied" in text and "3-D: none." in text


def test_the_settings_table_and_the_budget_and_3d_sentences_come_from_the_numbers():
    table = study.settings_markdown({"today": {"dice": 0.9, "epe": 0.421}, "large": {"dice": 0.4271, "epe": 1.8}},
                                    (32, 32))
    lines = table.splitlines()
    assert lines[0].startswith("| setting | what changes | config keys |") and len(lines) == 4
    assert lines[2].startswith("| today | today's cohort") and lines[2].endswith("| `{}` | 0.900 | 0.42 |")
    assert lines[3].endswith("| 0.427 | 1.80 |") and "'embedded_supersample': 2" in lines[3]
    rows = [_row("today-8ep", [0.80, 0.80], [0.78, 0.78], 8), _row("today", [0.85, 0.85], [0.84, 0.84], 24),
            _row("today-72ep", [0.852, 0.852], [0.86, 0.86], 72)]
    text = study.budget_markdown(study.plateau(rows, "today"), "today")
    assert text.startswith("Budget axis (today): unsupervised: Dice 0.800, 0.850, 0.852 at [8, 24, 72] epochs, "
                           "plateaued (last gain +0.0020); ofg: Dice 0.780, 0.840, 0.860")
    assert text.endswith("still rising (last gain +0.0200)")
    assert "fewer than two budgets" in study.budget_markdown(study.plateau(rows[:1], "today"), "today")
    c = {"setting": "large", "why": "the largest mean Dice gain in 2-D", "img_size": [16, 16, 16], "seeds": [0],
         "identity": {"dice": 0.4412, "epe": 1.0}}
    assert study.confirm_3d_markdown(c) == ("3-D confirmation: setting **large** (the largest mean Dice gain in 2-D), "
                                            "[16, 16, 16], seeds [0], identity Dice 0.441.")


def test_a_first_schema_report_converts_to_the_runners_rows():
    """scripts/migrate_study_report.py: old rows (one per metric, ddof-0 spreads) become one runner row per stage;
    every number follows from the stored ones (spreads rescaled to ddof 1, the interval from the per-seed values)."""
    import importlib.util

    from ofg_lib.files import REPO
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
