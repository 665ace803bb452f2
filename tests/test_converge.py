"""Issue 19's machinery: schedule length apart from run length, the plateau rule, test-split scoring of the best
checkpoint, paired intervals, crossovers, and premise-aware ablation verdicts."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ofg_lib import train
from ofg_lib.converge import crossings, markdown, run_converge, seed_curves
from ofg_lib.data import from_config
from ofg_lib.evaluate import evaluate, load_model, score_run
from ofg_lib.files import load_checkpoint
from ofg_lib.stats import claim_verdict, interval, premise_holds
from ofg_lib.sweep import CLAIMS, ablation_verdicts, verdicts_markdown

TINY_2D = {"model": "voxelmorph-1-tiny", "img_size": [32, 48], "epochs": 2, "steps_per_epoch": 3, "val_pairs": 2,
           "lr": 1e-3, "inner_steps": 2, "progress": False, "threads": 1}

pytestmark = pytest.mark.usefixtures("cohort_cache")


# --------------------------------------------------------------------------------------- schedule_epochs
def test_a_run_stopped_on_a_longer_schedule_is_the_start_of_that_schedule(tmp_path):
    short = train.run({**TINY_2D, "epochs": 2, "schedule_epochs": 4}, out=tmp_path / "short")
    train.run({**TINY_2D, "epochs": 4}, out=tmp_path / "long")
    hs = load_checkpoint(tmp_path / "short" / "checkpoint.pt")["history"]
    hl = load_checkpoint(tmp_path / "long" / "checkpoint.pt")["history"]
    for a, b in zip(hs, hl[:2]):
        assert a["lr"] == b["lr"] and a["inner_lr"] == b["inner_lr"] and a["loss"] == b["loss"]
    assert hs[1]["lr"] == pytest.approx(1e-3 * (1 - 1 / 4) ** 0.9, abs=1e-8)
    assert hs[1]["inner_lr"] == pytest.approx(0.1 * (1 - 1 / 4) ** 0.9, abs=1e-8)
    # a run's own length is the default horizon: the 2-epoch run without schedule_epochs decays faster
    plain = train.run({**TINY_2D, "epochs": 2}, out=tmp_path / "plain")
    assert short["epochs"] == plain["epochs"] == 2
    hp = load_checkpoint(tmp_path / "plain" / "checkpoint.pt")["history"]
    assert hp[1]["lr"] == pytest.approx(1e-3 * 0.5 ** 0.9, abs=1e-8) and hp[1]["lr"] < hs[1]["lr"]


def test_schedule_epochs_must_cover_the_run():
    with pytest.raises(ValueError, match=r"schedule_epochs must be null or at least epochs \(5\)"):
        train.load_config({**TINY_2D, "epochs": 5, "schedule_epochs": 4})


# ------------------------------------------------------------------------------------------ plateau rule
def _hist(values, every=100):
    return [{"step": every * (i + 1), "val_dice": v} for i, v in enumerate(values)]


def test_the_plateau_rule():
    rising = np.linspace(0.5, 0.8, 30).tolist()
    assert not train.plateaued(_hist(rising), 0.002)
    flat = rising[:15] + [0.8] * 15
    assert train.plateaued(_hist(flat), 0.002)
    assert not train.plateaued(_hist(flat), 0.002, min_steps=10_000)   # not before min_steps
    assert not train.plateaued(_hist([0.8] * 9), 0.002)                 # fewer than two windows
    falling = rising[:15] + np.linspace(0.8, 0.7, 15).tolist()         # a decline is no gain either
    assert train.plateaued(_hist(falling), 0.002)
    # by hand: smoothed over 5, last third of 3000 steps starts at step 2000
    noisy = (0.7 + 0.01 * np.sin(np.arange(30))).tolist()
    smooth = np.convolve(noisy, np.ones(5) / 5, "valid")
    gain = smooth[-1] - smooth[2000 // 100 - 5]
    assert train.plateaued(_hist(noisy), 0.002) == (gain < 0.002)


def test_a_plateaued_run_stops_early_and_stays_stopped(tmp_path):
    cfg = {**TINY_2D, "epochs": 30, "steps_per_epoch": 1, "plateau_tol": 1.0}     # any gain < 1: stop at 10
    s = train.run(cfg, out=tmp_path / "p")
    assert s["epochs"] == 10 and s["stopped_early"] is True
    stamp = (tmp_path / "p" / "checkpoint.pt").stat().st_mtime_ns
    assert train.run(cfg, out=tmp_path / "p", resume="auto", exact=True)["epochs"] == 10
    assert (tmp_path / "p" / "checkpoint.pt").stat().st_mtime_ns == stamp


# ------------------------------------------------------------------------------------ test-split scoring
def test_score_run_scores_the_best_checkpoint_on_held_out_pairs(tmp_path):
    out = tmp_path / "r"
    train.run({**TINY_2D, "epochs": 3}, out=out)
    s = score_run(out, "test", 4, "best")
    model, cfg = load_model(out / "best.pt")
    ref = evaluate(model, from_config(cfg, "test"), 4, time_repeats=0)
    assert s["dice"] == pytest.approx(ref["dice"], abs=1e-12) and s["pairs"] == 4 and s["split"] == "test"
    val = evaluate(model, from_config(cfg, "val"), 4, time_repeats=0)
    assert s["dice"] != val["dice"]                                    # other pairs than the validation's
    best = load_checkpoint(out / "best.pt")
    assert s["step"] == best["step"]
    # the cache follows the checkpoint: a changed best.pt is scored again
    cache = out / "score-best-test-4.json"
    data = json.loads(cache.read_text())
    cache.write_text(json.dumps({**data, "dice": -1.0}))
    assert score_run(out, "test", 4, "best")["dice"] == -1.0             # same step: the cached value
    cache.write_text(json.dumps({**data, "dice": -1.0, "step": -5}))
    assert score_run(out, "test", 4, "best")["dice"] == pytest.approx(ref["dice"], abs=1e-12)
    # retrained under another config of the same length (--overwrite): the old caches go, nothing stale returns
    cache.write_text(json.dumps({**json.loads(cache.read_text()), "dice": -1.0}))
    train.run({**TINY_2D, "epochs": 3, "lr": 2e-3}, out=out, overwrite=True)
    assert not cache.exists()
    assert score_run(out, "test", 4, "best")["dice"] != -1.0


# -------------------------------------------------------------------------------------------- statistics
def test_interval_against_a_hand_computed_t_interval():
    d = [0.01, 0.02, -0.005, 0.015, 0.004]
    m, sd = np.mean(d), np.std(d, ddof=1)
    t = 2.7764451051977987                       # t(0.975, 4)
    iv = interval(d)
    assert iv["mean"] == pytest.approx(m) and iv["std"] == pytest.approx(sd)
    assert iv["low"] == pytest.approx(m - t * sd / math.sqrt(5)) and iv["high"] == pytest.approx(m + t * sd / math.sqrt(5))
    assert (iv["ahead"], iv["behind"], iv["significant"]) == (4, 1, False)
    assert interval([0.01])["low"] is None
    with pytest.raises(ValueError, match="finite"):
        interval([0.1, float("nan")])


def test_claim_verdicts_and_the_premise():
    below = [-0.02, -0.021, -0.019]
    assert claim_verdict(below)["verdict"] == "holds"
    assert claim_verdict([0.02, 0.021, 0.019])["verdict"] == "contradicted"
    assert claim_verdict([-0.02, 0.01, 0.005])["verdict"] == "unresolved"
    assert claim_verdict(below, needs_premise=True, premise=False)["verdict"] == "not testable here"
    assert claim_verdict(below, needs_premise=True, premise=True)["verdict"] == "holds"
    assert premise_holds([0.01, 0.012, 0.011]) and not premise_holds([0.01, -0.01, 0.011])


def _table(points):
    return {"rows": [{"point": p, "overrides": o, "val_dice": {"per_seed": d, "reference": 0.9}}
                     for p, o, d in points]}


def test_ablation_verdicts_are_computed_under_the_premise():
    tables = {"fig6_interval": _table([("ofg_every=2", {"ofg_every": 2}, [-0.02, -0.021, -0.019])]),
              "table34": _table([("optimizer_design=network", {}, [-0.05, -0.051, -0.049])])}
    ofg_loses = _table([("strategy=unsupervised", {"strategy": "unsupervised"}, [0.005, 0.006, 0.007])])
    ofg_wins = _table([("strategy=unsupervised", {"strategy": "unsupervised"}, [-0.005, -0.006, -0.007])])
    v = ablation_verdicts(tables, ofg_loses)
    got = {r["point"]: r["verdict"] for r in v["rows"]}
    assert got == {"ofg_every=2": "not testable here", "optimizer_design=network": "holds"}
    assert v["premise"]["holds"] is False
    assert {r["point"]: r["verdict"] for r in ablation_verdicts(tables, ofg_wins)["rows"]}["ofg_every=2"] == "holds"
    text = verdicts_markdown(v)
    assert "contradicted (unsupervised training is ahead)" in text and "1 holds, 0 contradicted, 0 unresolved, 1 not testable here" in text
    # the trend along an axis: points ordered by unsupervised share (ofg_prob falls), each step paired by seed
    axis = {"fig6_threshold": _table([("ofg_prob=0.25", {"ofg_prob": 0.25}, [-0.05, -0.04, -0.06]),
                                      ("ofg_prob=0.5", {"ofg_prob": 0.5}, [-0.01, -0.005, -0.02])])}
    t = ablation_verdicts(axis, ofg_wins)["trends"][0]
    assert t["points"] == ["ofg_prob=0.5", "ofg_prob=0.25"] and t["falls"]
    assert t["steps"][0]["mean"] == pytest.approx(-0.115 / 3) and t["steps"][0]["significant"]
    assert "falls at every step" in verdicts_markdown(ablation_verdicts(axis, ofg_wins))
    assert "Not testable here" in verdicts_markdown(ablation_verdicts(axis, ofg_loses))
    assert {c["table"] for c in CLAIMS} >= {"fig5", "fig6_interval", "fig6_threshold", "fig6_mix", "fig7", "table34"}


def test_the_committed_ablation_verdicts_are_the_computed_ones():
    from pathlib import Path
    folder = Path(__file__).resolve().parents[1] / "reports" / "ablations"
    tables = {c["table"]: json.loads((folder / f"{c['table']}.json").read_text()) for c in CLAIMS}
    v = ablation_verdicts(tables, json.loads((folder / "core.json").read_text()))
    assert (folder / "verdicts.md").read_text() == verdicts_markdown(v)


# ------------------------------------------------------------------------------------ curves and crossover
def test_crossings_of_a_smoothed_difference():
    steps = np.arange(1, 41) * 100
    diff = np.concatenate([np.full(20, -0.01), np.full(20, 0.01)])
    c = crossings(steps, diff, window=5)
    assert len(c) == 1 and c[0]["to"] == "ofg ahead" and 2100 <= c[0]["step"] <= 2500
    assert crossings(steps, np.full(40, -0.01)) == []


def test_seed_curves_keep_the_steps_every_run_reached():
    a = _hist([0.1, 0.2, 0.3])
    b = _hist([0.2, 0.3])
    steps, vals = seed_curves([a, b])
    assert steps.tolist() == [100, 200] and vals.tolist() == [[0.1, 0.2], [0.2, 0.3]]


def test_run_converge_end_to_end(tmp_path):
    spec = {"setting": "realistic", "seeds": [0, 1], "test_pairs": 3, "last_k": 2,
            "base": {**TINY_2D, "epochs": 2, "steps_per_epoch": 2, "lr_schedule": "constant",
                     "inner_lr_schedule": "constant"},
            "arms": {"constant": {}}}
    r = run_converge(spec, tmp_path / "c", log=lambda m: None)
    arm = r["arms"]["constant"]
    assert arm["seeds"] == [0, 1] and len(arm["points"]) == 4
    assert set(arm["curves"]) == {"unsupervised", "ofg"} and set(arm["equal_steps"]["row"]) >= {"point", "dice"}
    dice = arm["test_best"]["dice"]         # the runner's row: OFG against unsupervised, a paired record per metric

    def test_dice(folder):              # independently of score_run and its cache
        model, cfg = load_model(folder / "best.pt")
        return evaluate(model, from_config(cfg, "test"), 3, time_repeats=0)["dice"]
    runs = tmp_path / "c" / "constant"
    assert dice["per_seed"] == pytest.approx(
        [test_dice(runs / f"ofg-seed{s}") - test_dice(runs / f"unsupervised-seed{s}") for s in (0, 1)])
    text = markdown(r)
    assert "Verdict (2 seeds)" in text and "best checkpoint, test split" in text
    assert (tmp_path / "c" / "converge.json").exists()


def test_run_converge_pairs_runs_that_stopped_at_different_steps(monkeypatch, tmp_path):
    """Runs end at their own plateau: the difference curve covers the steps every run reached."""
    import ofg_lib.converge as C
    lengths = {"unsupervised": 16, "ofg": 48}

    def fake_history(cfg, folder):
        n = lengths[cfg["strategy"]]
        base = 0.6 if cfg["strategy"] == "unsupervised" else 0.55
        return [{"epoch": i + 1, "step": 250 * (i + 1), "val_dice": base + 0.003 * i + 0.001 * cfg["seed"], "fold_fraction": 0.0,
                 "sdlogj": 0.05, "epe": 1.0, "sec_per_step_network": 0.01, "sec_per_step_inner": 0.0}
                for i in range(n)]

    monkeypatch.setattr(C, "train_history", fake_history)
    monkeypatch.setattr(C, "score_run", lambda folder, *a, **k: {"dice": 0.7 + 0.01 * ("ofg" in str(folder)),
                        "fold_fraction": 0.0, "sdlogj": 0.05, "epe": 1.0, "step": 1000})
    spec = {"setting": "today", "seeds": [0, 1, 2], "test_pairs": 3,
            "base": {**TINY_2D, "epochs": 48, "steps_per_epoch": 250}, "arms": {"constant": {}}}
    result = run_converge(spec, tmp_path, log=lambda m: None)
    arm = result["arms"]["constant"]
    assert C.save_figure(result, tmp_path / "f.png").stat().st_size > 10_000
    assert "Validation Dice fell by more than" not in C.verdict(arm)     # these curves only rise
    assert "3 run(s) reached the step cap" in C.verdict(arm)             # the OFG runs ran all 48 epochs
    assert len(arm["curve"]["step"]) == 16 and len(arm["curves"]["ofg"]["step"]) == 48
    assert arm["curve"]["difference"] == pytest.approx([-0.05] * 16)
    assert arm["crossings"] == []
    dice = arm["test_best"]["dice"]
    assert dice["difference"] == pytest.approx(0.01) and dice["ahead"] == 3
    eq = arm["equal_steps"]
    assert eq["steps"] == [4000] * 3          # the unsupervised runs stopped at 16 x 250 steps
    assert eq["row"]["dice"]["per_seed"] == pytest.approx([-0.05] * 3)   # best up to step 4000: 0.55+0.045 vs 0.6+0.045


def test_the_readme_blocks_are_the_computed_ones():
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "scripts"))
    import readme_blocks
    text = (root / "README.md").read_text()
    for name, body in readme_blocks.blocks().items():
        assert readme_blocks.current(text, name) == body, f"README block {name}: run python scripts/readme_blocks.py"


# ------------------------------------------------------------------- Table 3: a persistent optimizer network
def test_the_optimizer_network_is_its_own_persistent_network(tmp_path, monkeypatch):
    import ofg_lib.guidance as guidance
    calls = []
    real = guidance.unsupervised_loss

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(guidance, "unsupervised_loss", counting)      # the energy the optimizer network learns
    cfg = {**TINY_2D, "optimizer_design": "optimizer-network", "epochs": 2, "steps_per_epoch": 2}
    t = train.Trainer.from_config({**cfg, "epochs": 1})
    main0 = [p.detach().clone() for p in t.model.parameters()]
    helper0 = [p.detach().clone() for p in t.guide.net.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(main0, helper0))       # its own initialisation
    t.fit()
    assert len(calls) == len(t.train_set)                                    # one pass over the whole split
    assert any(not torch.equal(a, b.detach()) for a, b in zip(helper0, t.guide.net.parameters()))
    # persistent and resumable: 1 epoch + resume = 2 epochs straight, for both networks
    train.run(cfg, out=tmp_path / "straight")
    train.run({**cfg, "epochs": 1}, out=tmp_path / "cut")
    train.run(cfg, out=tmp_path / "cut", resume=True)
    a, b = (load_checkpoint(tmp_path / n / "checkpoint.pt") for n in ("straight", "cut"))
    for key in ("model", "optimizer_network"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key


# ------------------------------------------------------------------ Table 4: a downsampled optimizer, coarse energy
def test_the_coarse_energy_downsample_optimizer_is_refinement_on_coarse_images():
    import torch.nn.functional as F
    from ofg_lib.optimizer import refine_with_history
    from ofg_lib.transform import resize_disp
    from conftest import smooth_disp, smooth_volume
    shape = (24, 32, 16)
    m, f = smooth_volume(shape, seed=3, dtype=torch.float32), smooth_volume(shape, seed=4, dtype=torch.float32)
    d = smooth_disp(shape, 1.5, dtype=torch.float32)
    r = refine_with_history(d, m, f, inner_steps=5, inner_lr=0.1, downsample=2, coarse_energy=True, final_energy=True)
    coarse = [s // 2 for s in shape]
    down = lambda x: F.interpolate(x, size=coarse, mode="trilinear", align_corners=True)   # noqa: E731
    by_hand = refine_with_history(resize_disp(d, coarse), down(m), down(f), inner_steps=5, inner_lr=0.05, final_energy=True)
    assert torch.allclose(r.coarse, by_hand.disp) and r.energies == by_hand.energies
    assert torch.allclose(r.disp, resize_disp(by_hand.disp, shape)) and r.disp.shape == d.shape
    assert r.final_energy < r.energies[0]                                   # it lowers its own (coarse) energy
    full = refine_with_history(d, m, f, inner_steps=5, inner_lr=0.1, downsample=2)     # today's design: another field
    assert not torch.allclose(full.disp, r.disp)


def test_score_only_trains_nothing_and_marks_runs_cut_by_a_time_limit(tmp_path):
    """`train=False` (the GPU path: runs trained in parallel processes under a time limit, scored afterwards)."""
    from ofg_lib.compare import train_history
    from ofg_lib.converge import stored_history
    from ofg_lib.study import setting_config

    spec = {"setting": "today", "seeds": [0, 1], "test_pairs": 2,
            "base": {**TINY_2D, "epochs": 2, "steps_per_epoch": 2, "lr_schedule": "constant",
                     "inner_lr_schedule": "constant"},
            "arms": {"a": {}}}
    base = {**spec["base"], **setting_config("today", TINY_2D["img_size"])}

    class Cut(Exception):
        pass

    def stop_after_first_epoch(trainer, row):
        raise Cut

    for strat in ("unsupervised", "ofg"):          # seed 0: both finished; seed 1: only OFG, cut after epoch 1
        train_history({**base, "strategy": strat, "seed": 0}, tmp_path / "a" / f"{strat}-seed0")
    with pytest.raises(Cut):
        train_history({**base, "strategy": "ofg", "seed": 1}, tmp_path / "a" / "ofg-seed1",
                      callbacks=[stop_after_first_epoch])
    logged = []
    r = run_converge(spec, tmp_path, log=logged.append, train=False)
    arm = r["arms"]["a"]
    assert arm["seeds"] == [0]                              # seed 1's pair is incomplete: skipped, not trained
    assert any("seed 1: skipped" in m for m in logged)
    assert not (tmp_path / "a" / "unsupervised-seed1").exists()
    assert stored_history({**base, "strategy": "ofg", "seed": 1}, tmp_path / "a" / "ofg-seed1")[-1]["step"] == 2
    assert not any(v["cut_short"] for v in arm["runs"].values())
    # the logs alone (what a GPU session sends back: config.json, log.csv, summary.json, score caches) give the
    # same report as the checkpoints
    unsup0 = tmp_path / "a" / "unsupervised-seed0"
    for name in ("checkpoint.pt", "best.pt"):
        (unsup0 / name).unlink()
    again = run_converge(spec, tmp_path, log=lambda m: None, train=False)["arms"]["a"]
    assert again["test_best"] == arm["test_best"] and again["last_k"] == arm["last_k"]
    assert again["curve"] == arm["curve"] and again["runs"]["unsupervised/0"]["steps"] == 4
    cache = unsup0 / "score-best-test-2.json"
    good = cache.read_text()
    cache.write_text(json.dumps({**json.loads(good), "step": 1000}))  # a cache of a step the log never reached
    with pytest.raises(ValueError, match="does not reach"):
        run_converge(spec, tmp_path, log=lambda m: None, train=False)
    cache.unlink()                                                  # no checkpoint and no cache: not scored
    assert "a" not in run_converge(spec, tmp_path, log=lambda m: None, train=False)["arms"]
    cache.write_text(good)
    # the cut run, paired with a finished one: marked cut, and the verdict says so
    train_history({**base, "strategy": "unsupervised", "seed": 1}, tmp_path / "a" / "unsupervised-seed1")
    r = run_converge(spec, tmp_path, log=lambda m: None, train=False)
    runs = r["arms"]["a"]["runs"]
    assert runs["ofg/1"]["cut_short"] and runs["ofg/1"]["steps"] == 2 and not runs["ofg/1"]["stopped_early"]
    text = markdown(r)
    assert "not a converged comparison, since 1 run(s) were cut" in text and "Cut runs, scored where they stopped: ofg/1" in text
    # a stored run of another config is refused, not scored
    with pytest.raises(ValueError, match="another config"):
        stored_history({**base, "strategy": "ofg", "seed": 1, "lr": 0.5}, tmp_path / "a" / "ofg-seed1")


def test_pareto_points_labels_and_the_computed_front(tmp_path, monkeypatch):
    import ofg_lib.converge as C

    monkeypatch.setattr(C, "train_history", lambda cfg, folder: [{"step": 10}])
    fake = {("unsupervised", 1.0): (0.60, 0.010), ("ofg", 0.02): (0.65, 0.001),
            ("unsupervised", 0.25): (0.66, 0.050), ("ofg", 0.05): (0.63, 0.002)}

    def fake_score(folder, *a, **k):
        name = Path(folder).name
        strat = "ofg" if "ofg" in name else "unsupervised"
        w = 0.25 if "0.25" in name else 0.05 if "0.05" in name else 1.0 if strat == "unsupervised" else 0.02
        d, f = fake[(strat, w)]
        seed = int(name[-1])
        return {"dice": d + 0.001 * seed, "fold_fraction": f, "sdlogj": 0.05, "epe": 1.0, "step": 10}

    monkeypatch.setattr(C, "score_run", fake_score)
    spec = {"setting": "today", "seeds": [0], "test_pairs": 2, "base": {**TINY_2D},
            "arms": {"a": {"lr": 3e-4, "seeds": [0, 1]}},
            "pareto": {"arm": "a", "seeds": [0, 1], "variants": {
                "unsup_reg_0.25": {"strategy": "unsupervised", "unsup_reg": 0.25}, "ofg_reg_0.05": {"strategy": "ofg", "ofg_reg": 0.05}}}}
    r = C.run_pareto(spec, tmp_path, log=lambda m: None)
    assert len(r["points"]) == 8
    labels = [x["label"] for x in r["summary"]]
    assert labels == ["unsupervised, unsup_reg 1", "OFG, ofg_reg 0.02", "unsupervised, unsup_reg 0.25",
                      "OFG, ofg_reg 0.05"]
    dice = {x["label"]: x["dice"] for x in r["summary"]}
    assert dice["OFG, ofg_reg 0.02"] == pytest.approx(0.6505)
    # unsup 1 is dominated by OFG 0.02 (more Dice, fewer folds) and by OFG 0.05; OFG 0.05 by OFG 0.02
    assert set(r["dominated"]["unsupervised, unsup_reg 1"]) == {"OFG, ofg_reg 0.02", "OFG, ofg_reg 0.05"}
    assert r["dominated"]["OFG, ofg_reg 0.05"] == ["OFG, ofg_reg 0.02"]
    assert r["dominated"]["OFG, ofg_reg 0.02"] == [] and r["dominated"]["unsupervised, unsup_reg 0.25"] == []
    text = C.pareto_markdown(r)
    assert "on the front" in text and "+0.0000" not in text
    with pytest.raises(ValueError, match="names no strategy"):
        C.run_pareto({**spec, "pareto": {**spec["pareto"], "variants": {"x": {"unsup_reg": 2}}}}, tmp_path,
                     log=lambda m: None)


def test_only_refuses_an_unknown_arm_or_strategy(tmp_path, capsys):
    from ofg_lib.converge import main
    spec = tmp_path / "s.yaml"
    spec.write_text("setting: today\nseeds: [0]\nbase: {img_size: [32, 48]}\narms: {a: {}}\n")
    for only in ("b/ofg/0", "a/ofg", "a/nope/0", "a/ofg/x"):
        with pytest.raises(SystemExit) as e:
            main(["--spec", str(spec), "--only", only])
        assert e.value.code == 2


def test_a_run_counts_as_plateaued_only_when_its_summary_says_so_for_the_step_it_reached(tmp_path):
    from ofg_lib.converge import _plateaued
    from ofg_lib.runs import RunFolder
    h = [{"step": 250, "val_dice": 0.5}, {"step": 500, "val_dice": 0.6}]
    assert not _plateaued(tmp_path, h)                                   # no summary: cut, not plateaued
    (tmp_path / "summary.json").write_text(json.dumps({"stopped_early": True, "steps": 500}))
    assert _plateaued(tmp_path, h)
    (tmp_path / "summary.json").write_text(json.dumps({"stopped_early": True, "steps": 250}))
    assert not _plateaued(tmp_path, h)                                   # the summary is of another length
    (tmp_path / "summary.json").write_text(json.dumps({"stopped_early": False, "steps": 500}))
    assert not _plateaued(tmp_path, h)
    (tmp_path / "log.csv").write_text("epoch,step,lr,val_dice\n1,250,0.001,\n2,500,1e-3,0.61\n")
    rows = RunFolder(tmp_path).read_log()
    assert rows == [{"epoch": 1, "step": 250, "lr": 0.001}, {"epoch": 2, "step": 500, "lr": 0.001, "val_dice": 0.61}]
    assert isinstance(rows[0]["step"], int) and "val_dice" not in rows[0]   # unvalidated rows carry no metric


def test_where_ofg_stands_reads_each_status_off_its_interval():
    from ofg_lib.converge import where_ofg_stands
    from ofg_lib.stats import paired

    def arm(diffs, cut=()):
        row = {"point": "ofg", "dice": paired(0.7 + np.array(diffs), [0.7] * len(diffs))}
        runs = {f"ofg/{i}": {"cut_short": f"ofg/{i}" in cut} for i in range(len(diffs))}
        return {"seeds": list(range(len(diffs))), "test_best": row, "runs": runs, "overrides": {"lr": 3e-4},
                "equal_steps": {"steps": [100] * len(diffs), "row": row}}
    conv = {"spec": {"setting": "realistic", "base": {"img_size": [96, 112]}},
            "arms": {"up": arm([0.03, 0.02, 0.04]), "down": arm([-0.03, -0.02, -0.04]), "flat": arm([0.05, -0.04, 0.01])}}
    par = {"spec": {"arm": "up", "seeds": [0, 1, 2]}, "summary": [{"label": "unsupervised, unsup_reg 1"}, {"label": "unsupervised, unsup_reg 2"},
                                              {"label": "OFG, ofg_reg 0.02"}],
           "dominated": {"unsupervised, unsup_reg 1": ["OFG, ofg_reg 0.02"], "unsupervised, unsup_reg 2": [],
                         "OFG, ofg_reg 0.02": []}}
    c3 = {"spec": {"setting": "realistic", "base": {"img_size": [48, 64, 64]}},
          "arms": {"a": arm([0.01, -0.01, 0.0], cut=("ofg/0",))}}
    lines = where_ofg_stands(conv, par, c3).splitlines()
    assert lines[0].endswith("OFG ahead, the 95 % interval excludes 0.") and "ahead in 3 of 3" in lines[0]
    assert lines[1].endswith("OFG behind, the 95 % interval excludes 0.")
    assert lines[2].endswith("not resolved, the 95 % interval includes 0.")
    assert "1 of the 2 unsupervised weights; not dominated: unsupervised, unsup_reg 2." in lines[3]
    assert "not a converged comparison (1 runs cut" in lines[4] and lines[-1].startswith("- Not tested here")
    # each line says under which model, data, schedules and budget it holds (TrainConfig's defaults filled in)
    assert "voxelmorph-1, embedded `realistic` cohort at 96x112; network lr 0.0003 poly, inner lr 0.1 poly" in lines[0]
    assert "(3 seeds, seed means)" in lines[3] and "at 48x64x64" in lines[4]


def test_the_one_paired_record_against_numpy_and_scipy():
    """stats.paired is the record every sweep row uses: means, ddof-1 spreads, per-seed differences and the t
    interval, checked against numpy and scipy directly."""
    from scipy import stats as st

    from ofg_lib.stats import paired, sd
    mine, ref = [0.70, 0.74, 0.69, 0.75], [0.68, 0.70, 0.70, 0.71]
    r = paired(mine, ref)
    d = np.subtract(mine, ref)
    assert r["mean"] == pytest.approx(np.mean(mine)) and r["reference"] == pytest.approx(np.mean(ref))
    assert r["std"] == pytest.approx(np.std(mine, ddof=1)) and r["reference_std"] == pytest.approx(np.std(ref, ddof=1))
    assert r["per_seed"] == pytest.approx(d.tolist()) and r["difference_std"] == pytest.approx(np.std(d, ddof=1))
    lo, hi = st.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=st.sem(d))
    assert (r["low"], r["high"]) == (pytest.approx(lo), pytest.approx(hi))
    assert (r["ahead"], r["behind"], r["n"]) == (3, 1, 4)
    assert sd([0.5]) == 0.0 and paired([0.5], [0.4])["low"] is None
    with pytest.raises(ValueError, match="same seeds"):
        paired([0.1, 0.2], [0.1])


def test_only_takes_threads_as_a_runtime_key(tmp_path, capsys):
    """`--threads` trains one run with another CPU thread count; a run started with other threads is reused."""
    import yaml
    from ofg_lib.converge import main
    spec = tmp_path / "s.yaml"
    base = {**TINY_2D, "epochs": 1, "steps_per_epoch": 2, "lr_schedule": "constant", "inner_lr_schedule": "constant"}
    spec.write_text(yaml.safe_dump({"setting": "today", "seeds": [0], "run_dir": str(tmp_path / "runs"),
                                    "base": base, "arms": {"a": {}}}))
    threads = torch.get_num_threads()
    try:
        main(["--spec", str(spec), "--only", "a/unsupervised/0", "--threads", "1"])
        folder = tmp_path / "runs" / "a" / "unsupervised-seed0"
        assert json.loads((folder / "config.json").read_text())["threads"] == 1
        main(["--spec", str(spec), "--only", "a/unsupervised/0", "--threads", "2"])   # reused, not refused
    finally:
        torch.set_num_threads(threads)
    assert capsys.readouterr().out.count("[converge] a/unsupervised/0: 2 steps") == 2
