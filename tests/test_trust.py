"""Runs are never lost, mixed or hijacked; configs are typed; the published protocol where it differs from ours."""
import json
import math
import multiprocessing as mp
import os
import random
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from ofg_lib import train
from ofg_lib.data import OASIS, Embedded, flip_pair, from_config
from ofg_lib.evaluate import evaluate, load_model, load_run
from ofg_lib.metrics import dice, fold_fraction, sdlogj
from ofg_lib.files import load_checkpoint, remove_partials, write_json

TINY = {"model": "voxelmorph-1-tiny", "img_size": [32, 32, 32], "epochs": 1, "steps_per_epoch": 2,
        "val_pairs": 2, "lr": 1e-3, "inner_steps": 2, "progress": False, "threads": 1}


pytestmark = pytest.mark.usefixtures("cohort_cache")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-epoch run (module-wide; tests copy it before changing it)."""
    os.environ.setdefault("OFG_DATA_DIR", str(tmp_path_factory.getbasetemp() / "cohort"))
    out = tmp_path_factory.mktemp("finished")
    train.run({**TINY, "epochs": 2}, out=out)
    return out


def copy_run(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


class Evil:
    def __reduce__(self):
        return (os.system, ("touch " + os.environ["EVIL_MARK"],))


# ------------------------------------------------------------------------------------- lost runs
def test_training_into_a_folder_with_a_run_is_refused_and_leaves_it_intact(finished, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    before = (run / "checkpoint.pt").read_bytes()
    with pytest.raises(FileExistsError, match=f"{run}.*already holds a run.*--resume.*--overwrite"):
        train.run(TINY, out=run)
    assert (run / "checkpoint.pt").read_bytes() == before


def test_the_command_line_refuses_too_and_names_the_folder(finished, tmp_path):
    from test_train import run_cli
    run = copy_run(finished, tmp_path / "run")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(TINY))
    res = run_cli(["-m", "ofg_lib.train", "--config", str(config), "--out", str(run)])
    assert res.returncode == 1 and "already holds a run" in res.stderr and str(run) in res.stderr
    both = run_cli(["-m", "ofg_lib.train", "--config", str(config), "--out", str(run), "--resume", "--overwrite"])
    assert both.returncode == 2


def test_overwrite_keeps_the_old_run_until_the_new_one_has_a_checkpoint(finished, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    (run / "notes.txt").write_text("mine")
    old = load_checkpoint(run / "checkpoint.pt")

    def interrupt(trainer, row):
        raise KeyboardInterrupt

    # interrupted before its first checkpoint: the old run is whole (and Ctrl-C saves nothing)
    def stop_in_first_step(step, phi):
        raise KeyboardInterrupt

    import ofg_lib.strategies as S
    real = S.STRATEGIES["ofg"]
    S.STRATEGIES["ofg"] = stop_in_first_step
    try:
        with pytest.raises(KeyboardInterrupt):
            train.run({**TINY, "epochs": 3}, out=run, overwrite=True)
    finally:
        S.STRATEGIES["ofg"] = real
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == old["epoch"] == 2
    assert json.loads((run / "config.json").read_text())["epochs"] == 2
    # a new run that finishes an epoch replaces the run's files, and nothing else
    with pytest.raises(KeyboardInterrupt):
        train.run({**TINY, "epochs": 3}, out=run, overwrite=True, callbacks=[interrupt])
    new = load_checkpoint(run / "checkpoint.pt")
    assert new["epoch"] == 1 and new["config"]["epochs"] == 3 and len(new["history"]) == 1
    assert (run / "notes.txt").read_text() == "mine"
    assert len((run / "log.csv").read_text().splitlines()) == 2


def test_resume_refuses_a_changed_config_naming_each_key(finished, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    with pytest.raises(ValueError, match=r"img_size: \[32, 32, 32\] -> \[32, 32, 48\].*lr: 0.001 -> 0.002"):
        train.run({**TINY, "epochs": 2, "img_size": [32, 32, 48], "lr": 2e-3}, out=run, resume=True)
    with pytest.raises(ValueError, match="data_seed: 0 -> 1"):
        train.run({**TINY, "epochs": 2, "data_seed": 1}, out=run, resume=True)
    summary = train.run({**TINY, "epochs": 3, "threads": 2}, out=run, resume=True)   # resumable keys
    assert summary["epochs"] == 3 and summary["steps"] == 6


def test_a_step_that_makes_the_weights_non_finite_stops_and_writes_no_checkpoint(finished, tmp_path, monkeypatch):
    import ofg_lib.strategies as S

    def finite_loss_nan_gradient(step, phi):     # sqrt'(0) = inf: the loss is 0, the gradient NaN
        return torch.sqrt((phi * 0).sum()), {}

    monkeypatch.setitem(S.STRATEGIES, "ofg", finite_loss_nan_gradient)
    with pytest.raises(FloatingPointError, match=r"step 1 \(ofg, lr 0.001\).*weights are not finite"):
        train.run(TINY, out=tmp_path / "a")
    assert not (tmp_path / "a" / "checkpoint.pt").exists() and not (tmp_path / "a" / "best.pt").exists()
    # a blow-up in the last epoch of a resumed run leaves the last good checkpoint as it was
    run = copy_run(finished, tmp_path / "run")
    before = (run / "checkpoint.pt").read_bytes()
    with pytest.raises(FloatingPointError, match=r"step 5 .*the last checkpoint, .*checkpoint.pt, is untouched"):
        train.run({**TINY, "epochs": 3}, out=run, resume=True)
    assert (run / "checkpoint.pt").read_bytes() == before


def test_metrics_of_a_non_finite_field_are_nan_not_zero():
    phi = torch.zeros(1, 3, 8, 8, 8)
    phi[0, 0, 4, 4, 4] = float("nan")
    assert math.isnan(fold_fraction(phi)) and math.isnan(sdlogj(phi))
    assert math.isnan(fold_fraction(phi, torch.ones(1, 8, 8, 8, dtype=torch.bool)))

    class NaNNet(torch.nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], 3, *x.shape[2:]), float("nan"))

    r = evaluate(NaNNet(), Embedded("val", (32, 32, 32), n=1), time_repeats=0)
    assert math.isnan(r["dice"]) and math.isnan(r["fold_fraction"]) and math.isnan(r["epe"])


# ------------------------------------------------------------------------------------- foreign code
@pytest.mark.parametrize("where", ["resume", "teacher", "load_model", "load_run", "runners"])
def test_a_crafted_checkpoint_is_refused_everywhere_and_runs_nothing(finished, tmp_path, monkeypatch, where):
    mark = tmp_path / "pwned"
    monkeypatch.setenv("EVIL_MARK", str(mark))
    run = copy_run(finished, tmp_path / "run")
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["history"] = Evil()
    torch.save(state, run / "checkpoint.pt")
    with pytest.raises(ValueError, match="refused to load.*crafted"):
        if where == "resume":
            train.run({**TINY, "epochs": 2}, out=run, resume=True)
        elif where == "teacher":
            train.run({**TINY, "strategy": "self-training", "teacher": str(run / "checkpoint.pt")}, out=tmp_path / "s")
        elif where == "load_model":
            load_model(run / "checkpoint.pt")
        elif where == "load_run":
            load_run(run)
        else:                   # the runners' reader of a finished run's history (sweep.train_history)
            load_checkpoint(run / "checkpoint.pt")["history"]
    assert not mark.exists()


def test_a_corrupt_checkpoint_names_the_file_and_what_to_do(finished, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"{run / 'checkpoint.pt'}: not a readable checkpoint.*--overwrite"):
        train.run({**TINY, "epochs": 2}, out=run, resume=True)
    (run / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_model(run / "checkpoint.pt")
    torch.save({"weights": torch.zeros(1)}, run / "other.pt")
    with pytest.raises(ValueError, match="not a checkpoint of this project"):
        load_checkpoint(run / "other.pt")


# ------------------------------------------------------------------------------------- races and files
def _make_cohort(args):
    root, k = args
    Embedded("val", (16, 16, 16), n=1, root=f"{root}/{k}")
    Embedded("train", (16, 16, 16), n=1, root=f"{root}/{k}")
    return k


def test_several_processes_filling_fresh_cache_folders_at_once_do_not_collide(tmp_path):
    # all processes write each folder's manifest at once (the old fixed temporary name failed ~4 times in 240)
    jobs = [(str(tmp_path), k % 8) for k in range(48)]
    with mp.get_context("spawn").Pool(6) as pool:
        assert sorted(set(pool.map(_make_cohort, jobs, chunksize=1))) == list(range(8))
    for k in range(8):
        folder = next((tmp_path / str(k)).iterdir())
        assert json.loads((folder / "manifest.json").read_text())["size"] == [16, 16, 16]
        assert not list(folder.glob("*.partial"))


def test_a_corrupt_cached_subject_is_regenerated_and_dead_partials_removed(tmp_path):
    ds = Embedded("val", (16, 16, 16), n=1, root=tmp_path)
    item = ds[0]
    path = ds.folder / "val_000.pt"
    path.write_bytes(path.read_bytes()[:100])
    (ds.folder / ".val_001.pt.999999999.partial").write_bytes(b"left by a dead writer")
    again = Embedded("val", (16, 16, 16), n=1, root=tmp_path)
    assert not list(ds.folder.glob("*.partial"))
    assert torch.equal(again[0]["fixed"], item["fixed"])
    assert torch.load(path, weights_only=True)["fixed"].shape == (1, 16, 16, 16)   # rewritten whole


def test_partials_of_live_writers_are_kept(tmp_path):
    live = tmp_path / f".x.{os.getpid()}.partial"
    dead = tmp_path / ".x.999999999.partial"
    live.write_text("")
    dead.write_text("")
    assert remove_partials(tmp_path) == [dead] and live.exists()


def test_summary_and_json_outputs_are_strict_json(tmp_path):
    write_json(tmp_path / "a.json", {"x": float("nan"), "y": [1.0, float("inf")], "z": np.float64(2.5)})
    assert json.loads((tmp_path / "a.json").read_text(), parse_constant=lambda c: pytest.fail(c)) == \
        {"x": None, "y": [1.0, None], "z": 2.5}


def test_a_dataset_with_nothing_to_score_is_refused_at_start(tmp_path, monkeypatch):
    real = Embedded.__getitem__

    def unlabelled(self, i):
        item = real(self, i)
        if self.split == "val":
            item["moving_seg"] = torch.zeros_like(item["moving_seg"])
            item["fixed_seg"] = torch.zeros_like(item["fixed_seg"])
        return item

    monkeypatch.setattr(Embedded, "__getitem__", unlabelled)
    with pytest.raises(ValueError, match=r"embedded validation pair val_000 holds no evaluated label: labels found "
                                         r"\[0\], labels evaluated \[1, 2"):
        train.Trainer.from_config(TINY, tmp_path)


# ------------------------------------------------------------------------------------- typed configs
def test_yaml_and_set_values_take_the_declared_type(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lr: 1e-4\ninner_lr: 1e-1\nepochs: 3\nprogress: false\n")     # PyYAML reads 1e-4 as a string
    cfg = train.load_config(f)
    assert cfg.lr == 1e-4 and isinstance(cfg.lr, float) and cfg.inner_lr == 0.1 and cfg.epochs == 3
    cfg = train.load_config({}, ["lr=1e-4", "img_size=[32, 32, 32]", "amp=true"])
    assert cfg.lr == 1e-4 and isinstance(cfg.lr, float) and cfg.img_size == (32, 32, 32) and cfg.amp is True
    paper = train.load_config(Path(__file__).resolve().parents[1] / "configs" / "paper_ixi_ofg.yaml")
    assert paper.lr == 1e-4 and isinstance(paper.lr, float)


@pytest.mark.parametrize("values, message", [
    ({"epochs": 1.5}, "epochs must be an integer, got 1.5"),
    ({"amp": "yes"}, "amp must be true or false"),
    ({"amp": 1}, "amp must be true or false"),
    ({"lr": "fast"}, "lr must be a number"),
    ({"lr": 0}, "lr must be a finite number > 0"),
    ({"lr": float("inf")}, "lr must be a finite number > 0"),
    ({"inner_steps": -1}, "inner_steps must be at least 0"),
    ({"inner_lr": -0.1}, "inner_lr must be a finite number >= 0"),
    ({"inner_optimizer": "lbfgs"}, "inner_optimizer must be one of adam, sgd"),
    ({"embedded_rms": -1}, "embedded_rms must be null or a finite number >= 0"),
    ({"threads": -2}, "threads must be at least 0"),
    ({"batch_size": 0}, "batch_size must be at least 1"),
    ({"img_size": [32]}, "img_size must be three positive sides"),
    ({"img_size": 32}, "img_size must be a list"),
    ({"augment": "rotate"}, "augment must be one of none, flip"),
    ({"dice_absent": "nan"}, "dice_absent must be one of skip, zero, one"),
    ({"subset": "ofg"}, "subset must be null for this dataset"),
    ({"reg_weight": 0.02}, "reg_weight is now ofg_reg"),
    ({"ixi_subset": "ofg"}, "ixi_subset is now subset"),
])
def test_bad_config_values_are_refused_when_the_config_is_built(values, message):
    with pytest.raises(ValueError, match=message):
        train.load_config(values)


def test_inner_steps_zero_means_no_refinement(tmp_path):
    summary = train.run({**TINY, "inner_steps": 0}, out=tmp_path)
    row = load_run(tmp_path)[2][0]
    assert summary["steps"] == 2 and row["mse"] == 0.0 and math.isnan(row["energy_before"])


def test_num_workers_feeds_the_same_batches(tmp_path):
    a = train.run({**TINY, "num_workers": 0}, out=tmp_path / "a")
    b = train.run({**TINY, "num_workers": 1}, out=tmp_path / "b")
    wa, wb = load_run(tmp_path / "a")[0].state_dict(), load_run(tmp_path / "b")[0].state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa) and a["val_dice"] == b["val_dice"]


def test_data_seed_keeps_the_cohort_while_seed_changes_the_run(tmp_path):
    cfg0, cfg1 = train.load_config({**TINY, "seed": 0}), train.load_config({**TINY, "seed": 1})
    assert torch.equal(from_config(cfg0, "val")[0]["fixed"], from_config(cfg1, "val")[0]["fixed"])
    other = train.load_config({**TINY, "data_seed": 1})
    assert not torch.equal(from_config(cfg0, "val")[0]["fixed"], from_config(other, "val")[0]["fixed"])


# ------------------------------------------------------------------------------------- the published protocol
def test_flip_moves_atlas_and_subject_together():
    import itertools
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(1, 2, 3, 4)
    item = {"moving": x, "fixed": x + 100, "moving_seg": x.long(), "fixed_seg": x.long() + 7, "disp_true": x}
    combos = [c for k in range(4) for c in itertools.combinations((1, 2, 3), k)]
    seen = set()
    for seed in range(40):
        out = flip_pair(item, torch.Generator().manual_seed(seed))
        axes = [c for c in combos if torch.equal(out["moving"], x.flip(c) if c else x)]
        assert len(axes) == 1                                                   # a flip along some axes
        assert torch.equal(out["fixed"], out["moving"] + 100)                 # the subject flipped with it
        assert torch.equal(out["fixed_seg"], out["moving_seg"] + 7)           # and both label maps
        assert torch.equal(out["moving_seg"], out["moving"].long())
        assert "disp_true" not in out
        seen.add(axes[0])
    assert len(seen) == 8                                                        # every axis, independently


def test_ixi_and_lpba40_flip_by_default_as_published():
    assert train.load_config({"dataset": "ixi"}).augment_mode == "flip"
    assert train.load_config({"dataset": "lpba40"}).augment_mode == "flip"
    assert train.load_config({}).augment_mode == "none"
    assert train.load_config({"dataset": "ixi", "augment": "none"}).augment_mode == "none"


def _oasis(root, n=4, shape=(16, 16, 16)):
    rng = np.random.default_rng(0)
    for k in list(range(1, n + 1)) + [438, 439]:
        folder = root / f"OASIS_OAS1_{k:04d}_MR1"
        folder.mkdir(parents=True)
        img = rng.random(shape).astype(np.float32)
        seg = (rng.random(shape) * 4).astype(np.int16)
        nib.save(nib.Nifti1Image(img, np.eye(4)), folder / "aligned_norm.nii.gz")
        nib.save(nib.Nifti1Image(seg, np.eye(4)), folder / "aligned_seg35.nii.gz")
    return root


def test_oasis_trains_two_full_updates_per_pair_as_published(tmp_path):
    root = _oasis(tmp_path / "oasis")
    cfg = train.load_config({**TINY, "dataset": "oasis", "data_root": str(root), "val_pairs": 1,
                             "strategy": "unsupervised"})
    trainer = train.Trainer.from_config(cfg, tmp_path / "run")
    summary = trainer.fit()
    assert trainer.two_way and summary["steps"] == 2 and summary["updates"] == 4
    adam_steps = {int(s["step"]) for s in trainer.opt.state.values()}
    assert adam_steps == {4}                                                     # four optimizer steps, not two


def test_oasis_ofg_subset_is_the_published_sample_and_partners_follow_the_seed(tmp_path):
    root = _oasis(tmp_path / "oasis", n=205, shape=(4, 4, 4))
    ds = OASIS(root, "train", subset="ofg")
    subjects = sorted(root.glob("OASIS_OAS1_*_MR1"))
    train_subjects = [s for s in subjects if int(s.name[11:15]) < 438]
    random.seed(42)
    assert ds.subjects == sorted(random.sample(train_subjects, 200))
    a = train.load_config({"dataset": "oasis", "data_root": str(root), "seed": 1})
    b = train.load_config({"dataset": "oasis", "data_root": str(root), "seed": 2})
    ida = [from_config(a, "train")[i]["id"] for i in range(20)]
    idb = [from_config(b, "train")[i]["id"] for i in range(20)]
    assert ida != idb and ida == [from_config(a, "train")[i]["id"] for i in range(20)]


def test_both_fold_counts_on_a_field_with_known_folds():
    from ofg_lib.metrics import jacobian_det
    disp = torch.zeros(1, 3, 10, 10, 10)
    x = torch.arange(10, dtype=torch.float32)
    disp[0, 0, :5] = (-2 * x[:5]).view(5, 1, 1)          # x -> -x on the first half: det J = -1 there
    det_negative = jacobian_det(disp)[0] <= 0
    brain = torch.zeros(1, 10, 10, 10, dtype=torch.bool)
    brain[0, :3] = True                                   # the brain lies inside the folded slab
    assert fold_fraction(disp) == pytest.approx(float(det_negative.double().mean()))
    assert fold_fraction(disp, brain) == pytest.approx(float(det_negative[brain[0]].double().mean()))
    assert fold_fraction(disp) == pytest.approx(0.4) and fold_fraction(disp, brain) == 1.0   # the counts differ


def test_the_three_dice_conventions_for_absent_labels():
    a = torch.tensor([[1, 1, 2, 0]])
    b = torch.tensor([[1, 2, 2, 0]])
    labels = [1, 2, 3]                                    # 3 is in neither map
    skip, zero, one = (dice(a, b, labels, absent=m) for m in ("skip", "zero", "one"))
    assert skip[:2].tolist() == zero[:2].tolist() == one[:2].tolist() == pytest.approx([2 / 3, 2 / 3])
    assert math.isnan(skip[2]) and zero[2] == 0 and one[2] == 1
    assert float(np.nanmean(skip)) == pytest.approx(2 / 3) and float(zero.mean()) == pytest.approx(4 / 9)
    with pytest.raises(ValueError, match="absent must be one of skip, zero, one"):
        dice(a, b, labels, absent="nan")


def test_one_of_is_the_one_choice_check():
    from ofg_lib._checks import one_of
    assert one_of("mode", "a", ("a", "b")) == "a"
    with pytest.raises(ValueError, match=r"^mode must be one of a, b, null, got 'c'$"):
        one_of("mode", "c", ("a", "b", None))
    # the library's choices go through it: same message shape everywhere
    from ofg_lib.data import from_config
    from ofg_lib.optimizer import _make_optimizer
    with pytest.raises(ValueError, match=r"^dataset must be one of embedded, ixi, oasis, lpba40, got 'mnist'$"):
        from_config({"dataset": "mnist", "img_size": [32, 32]}, "val")
    with pytest.raises(ValueError, match=r"^optimizer must be one of adam, sgd, got 'lbfgs'$"):
        _make_optimizer("lbfgs", [torch.zeros(1, requires_grad=True)], 0.1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64, torch.int64])
def test_the_finite_check_finds_one_bad_value_anywhere(dtype):
    """`_checks.finite` (one min/max reduction for floats) against numpy's elementwise isfinite: one NaN, +Inf or
    -Inf at the first, a middle or the last element, of contiguous and permuted tensors; ints are always finite."""
    from ofg_lib._checks import finite
    x = torch.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5).to(dtype)
    finite("x", x)
    finite("empty", torch.empty(0, 3, dtype=dtype))
    if not dtype.is_floating_point:
        return
    for bad in (float("nan"), float("inf"), -float("inf")):
        for pos in (0, 57, x.numel() - 1):
            for view in (lambda t: t, lambda t: t.permute(0, 3, 1, 2)):
                y = x.clone()
                y.view(-1)[pos] = bad
                y = view(y)
                assert not np.isfinite(y.float().numpy()).all()
                with pytest.raises(ValueError, match="x has 1 non-finite value"):
                    finite("x", y)
