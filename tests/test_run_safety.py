"""Runs are never mixed or silently reused; no silent no-ops; messages a user can act on (issue 22).

Every test here failed before the run lock, the exact-reuse rule and the message fixes.
"""
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from ofg_lib import train
from ofg_lib.compare import compare, train_history
from ofg_lib.files import load_checkpoint
from ofg_lib.register import main as register_main
from ofg_lib.runs import FolderBusyError, claim
from ofg_lib.sweep import sweep

from test_train import run_cli

TINY = {"model": "voxelmorph-1-tiny", "img_size": [32, 32, 32], "epochs": 1, "steps_per_epoch": 2,
        "val_pairs": 2, "lr": 1e-3, "inner_steps": 2, "progress": False, "threads": 1}
TINY_2D = {**TINY, "img_size": [32, 48]}

pytestmark = pytest.mark.usefixtures("cohort_cache")

HOLD = """
import sys, time
from ofg_lib.runs import claim
with claim(sys.argv[1], "training run"):
    print("held", flush=True)
    time.sleep(900)
"""


@pytest.fixture
def holder(tmp_path):
    """A child process that holds the claim on tmp_path/held until killed."""
    folder = tmp_path / "held"
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    yield folder, p
    p.kill()
    p.wait()


def _yaml(tmp_path, cfg, name="c.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


# ------------------------------------------------------------------------------- 1. one writer per folder
def test_a_claimed_folder_refuses_a_second_run_naming_the_holder(holder):
    folder, p = holder
    with pytest.raises(FolderBusyError, match=f"{folder} is in use by another training run: pid {p.pid} on .*"):
        train.run(TINY, out=folder)
    assert not (folder / "config.json").exists()          # the second run wrote nothing
    with pytest.raises(FolderBusyError):                  # and so does every runner's point folder
        train_history(TINY, folder)


def test_a_dead_holders_claim_is_taken_over_with_a_message(holder, capsys):
    folder, p = holder
    p.kill()
    p.wait()
    with claim(folder, "test", log=print):
        pass
    assert f"taking over the claim of pid {p.pid}" in capsys.readouterr().out


def test_two_claims_in_one_process_exclude_each_other(tmp_path):
    with claim(tmp_path / "f"):
        with pytest.raises(FolderBusyError, match="in use by another run: pid %d" % os.getpid()):
            claim(tmp_path / "f").acquire()
    with claim(tmp_path / "f"):          # released: claimable again
        pass


def test_two_command_line_trainings_into_one_folder_do_not_mix(tmp_path):
    config = _yaml(tmp_path, {**TINY, "steps_per_epoch": 12})
    out = tmp_path / "race"
    cmd = lambda seed, lr: [sys.executable, "-m", "ofg_lib.train", "--config", str(config), "--set", f"seed={seed}",
                            "--set", f"lr={lr}", "--out", str(out)]
    env = {**os.environ, "CI": "1"}
    procs = [subprocess.Popen(cmd(1, 0.001), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env),
             subprocess.Popen(cmd(2, 0.003), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 1], results
    loser = next(r for r in results if r[0] == 1)
    assert "in use by another training run" in loser[2] or "already holds a run" in loser[2]
    assert "Traceback" not in loser[2]
    winner = next(i for i, r in enumerate(results) if r[0] == 0)
    seed = (1, 2)[winner]
    stored = json.loads((out / "config.json").read_text())
    assert stored["seed"] == seed and load_checkpoint(out / "checkpoint.pt")["config"]["seed"] == seed
    assert json.loads((out / "summary.json").read_text())["seed"] == seed


# ------------------------------------------------------------------- 2. runs of another config are not reused
def test_a_runner_reuses_only_identical_runs(tmp_path):
    folder = tmp_path / "point"
    h2 = train_history({**TINY, "epochs": 2}, folder)
    stamp = (folder / "checkpoint.pt").stat().st_mtime_ns
    # identical but for runtime keys: reused, nothing retrained
    assert train_history({**TINY, "epochs": 2, "threads": 2, "progress": True}, folder) == h2
    assert (folder / "checkpoint.pt").stat().st_mtime_ns == stamp
    # another length: refused, naming the folder and the key
    with pytest.raises(ValueError, match=f"{folder} holds a run of another config.*epochs: 2 -> 1"):
        train_history({**TINY, "epochs": 1}, folder)
    with pytest.raises(ValueError, match="epochs: 2 -> 3"):     # not silently extended either
        train_history({**TINY, "epochs": 3}, folder)
    with pytest.raises(ValueError, match="val_every: 1 -> 2"):
        train_history({**TINY, "epochs": 2, "val_every": 2}, folder)
    assert (folder / "checkpoint.pt").stat().st_mtime_ns == stamp


def test_sweep_and_compare_refuse_finished_runs_of_another_length(tmp_path):
    sweep({**TINY, "epochs": 2}, {"ofg_prob": [0.5]}, seeds=[0], out=tmp_path / "sw", log=lambda m: None)
    with pytest.raises(ValueError, match=r"reference/seed0 holds a run of another config.*epochs: 2 -> 1"):
        sweep({**TINY, "epochs": 1}, {"ofg_prob": [0.5]}, seeds=[0], out=tmp_path / "sw", log=lambda m: None)
    compare({**TINY, "epochs": 2}, seeds=[0], out=tmp_path / "cmp", equal_time=False)
    with pytest.raises(ValueError, match=r"unsupervised-seed0 holds a run of another config.*epochs: 2 -> 1"):
        compare({**TINY, "epochs": 1}, seeds=[0], out=tmp_path / "cmp", equal_time=False)


def test_resume_never_shrinks_a_run(tmp_path):
    out = tmp_path / "run"
    train.run({**TINY, "epochs": 2}, out=out)
    config = _yaml(tmp_path, TINY)
    res = run_cli(["-m", "ofg_lib.train", "--config", str(config), "--set", "epochs=1", "--out", str(out),
                   "--resume"])
    assert res.returncode == 1 and "has trained 2 epochs" in res.stderr and "Traceback" not in res.stderr
    assert json.loads((out / "config.json").read_text())["epochs"] == 2
    # extending is allowed, and the whole run says 3 epochs afterwards
    summary = train.run({**TINY, "epochs": 3}, out=out, resume=True)
    assert summary["epochs"] == 3 and json.loads((out / "config.json").read_text())["epochs"] == 3


# ----------------------------------------------------------------------------------------- 3. silent no-ops
def test_an_empty_out_is_refused(tmp_path):
    config = _yaml(tmp_path, TINY)
    res = run_cli(["-m", "ofg_lib.train", "--config", str(config), "--out", ""])
    assert res.returncode == 2 and "--out is empty" in res.stderr
    with pytest.raises(ValueError, match="out is empty"):
        train.run(TINY, out="")


def test_resume_needs_a_run_to_resume(tmp_path):
    config = _yaml(tmp_path, TINY)
    for folder in (tmp_path / "missing", tmp_path / "empty"):
        if folder.name == "empty":
            folder.mkdir()
        res = run_cli(["-m", "ofg_lib.train", "--config", str(config), "--out", str(folder), "--resume"])
        assert res.returncode == 1 and f"nothing to resume: {folder} holds no run" in res.stderr
        assert not (folder / "checkpoint.pt").exists()
        assert folder.exists() == (folder.name == "empty")      # a mistyped --out is not created
    # what the runners use instead: resume when there is a run, start one when not
    assert train.run(TINY, out=tmp_path / "auto", resume="auto")["epochs"] == 1


@pytest.mark.parametrize("text, message", [
    ("", "the config file is empty"),
    ("# only a comment\n", "the config file is empty"),
    ("epochs: 1\nlr: 0.001\nepochs: 3\n", "duplicate key 'epochs' \\(line 3\\)"),
    ("epochs: [1\n", "not valid YAML"),
    ("overwrite: true\n", "overwrite are command-line flags"),
])
def test_config_files_that_would_be_misread_are_refused(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"{path}: {message}"):
        train.load_config(path)


@pytest.mark.parametrize("item, message", [
    ("overwrite=true", "overwrite is a command-line flag, not a config key: use --overwrite"),
    ("img_size=[32,32", "--set img_size=\\[32,32: not valid YAML"),
    ("device=gpu", "device must be auto, cpu, cuda or cuda:N"),
])
def test_bad_overrides_are_named(item, message):
    with pytest.raises(ValueError, match=message):
        train.load_config(TINY, [item])


def test_the_command_line_prints_no_traceback_for_bad_input(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1\n")
    cases = [["--config", str(bad)], ["--set", "img_size=[32,32"], ["--set", "device=gpu"],
             ["--set", "overwrite=true"]]
    if not torch.cuda.is_available():
        cases.append(["--set", "device=cuda"])
    for extra in cases:
        res = run_cli(["-m", "ofg_lib.train", *extra, "--out", str(tmp_path / "o")])
        assert res.returncode in (1, 2) and "Traceback" not in res.stderr and "error" in res.stderr, (extra, res.stderr)


def test_ctrl_c_stops_with_a_resume_hint(tmp_path):
    # 12 epochs: after the first checkpoint, eleven remain (seconds) to receive the signal; resuming runs them.
    # The child starts with SIGINT at its default: a shell that runs pytest in the background (`make test &`)
    # ignores SIGINT, the child would inherit that, and Python installs no KeyboardInterrupt handler then.
    config = _yaml(tmp_path, {**TINY, "epochs": 12, "steps_per_epoch": 4})
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "ofg_lib.train", "--config", str(config), "--out", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "CI": "1"},
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while not (out / "checkpoint.pt").exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.2)
    assert p.poll() is None, "the run ended before the test could interrupt it"
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "stopped" in err and "--resume" in err and "Traceback" not in err, err
    assert train.run({**TINY, "epochs": 12, "steps_per_epoch": 4}, out=out, resume=True)["epochs"] == 12


# ------------------------------------------------------------------------------------------------ register
def _nii(path, array):
    nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4)), str(path))
    return str(path)


@pytest.fixture
def nifti_pair(tmp_path):
    g = np.random.default_rng(0)
    shape = (32, 32, 32)
    seg = (np.indices(shape).sum(0) // 16 + 1).astype(np.int16)
    return {"moving": _nii(tmp_path / "m.nii.gz", g.random(shape).astype(np.float32)),
            "fixed": _nii(tmp_path / "f.nii.gz", g.random(shape).astype(np.float32)),
            "seg": _nii(tmp_path / "s.nii.gz", seg)}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reg") / "run"
    os.environ.setdefault("OFG_DATA_DIR", str(tmp_path_factory.getbasetemp() / "cohort"))
    train.run(TINY, out=out)
    return out


def test_register_owns_its_outputs_and_lists_them(nifti_pair, tiny_run, tmp_path, capsys):
    out = tmp_path / "reg"
    base = ["--run", str(tiny_run), "--moving", nifti_pair["moving"], "--fixed", nifti_pair["fixed"],
            "--out", str(out)]
    assert register_main([*base, "--moving-seg", nifti_pair["seg"]]) == 0
    assert (out / "warped_seg.nii.gz").exists()
    (out / "mine.txt").write_text("not the register's")
    # a second registration without labels: the first one's warped labels must not stay beside its files
    assert register_main([*base, "--fixed-seg", nifti_pair["seg"]]) == 0
    assert not (out / "warped_seg.nii.gz").exists() and (out / "mine.txt").exists()
    summary = json.loads((out / "register.json").read_text())
    assert sorted(os.path.basename(v) for v in summary["outputs"].values()) == sorted(
        ["warped.nii.gz", "disp_vox.nii.gz", "disp_mm.nii.gz", "register.json"])
    assert all(os.path.exists(v) for v in summary["outputs"].values())
    assert "dice" not in summary and "without a moving one (--moving-seg)" in summary["dice_note"]
    assert "without a moving one" in capsys.readouterr().out
    # a registration that fails before it has anything to write leaves the earlier one's outputs
    before = (out / "warped.nii.gz").read_bytes()
    assert register_main(["--run", str(tiny_run), "--moving", str(out / "missing.nii.gz"), "--fixed",
                          nifti_pair["fixed"], "--out", str(out)]) == 2
    assert (out / "warped.nii.gz").read_bytes() == before and (out / "register.json").exists()


def test_register_with_best_only_and_refusals(nifti_pair, tiny_run, tmp_path, capsys):
    best_only = tmp_path / "best_only"
    best_only.mkdir()
    shutil.copy(tiny_run / "best.pt", best_only / "best.pt")
    args = ["--moving", nifti_pair["moving"], "--fixed", nifti_pair["fixed"]]
    assert register_main(["--run", str(best_only), "--which", "best", *args, "--out", str(tmp_path / "b")]) == 0
    if not torch.cuda.is_available():
        assert register_main(["--run", str(tiny_run), *args, "--out", str(tmp_path / "c"), "--device", "cuda"]) == 2
        assert "torch sees no CUDA device" in capsys.readouterr().err
    with claim(tmp_path / "busy", "training run"):
        assert register_main(["--run", str(tiny_run), *args, "--out", str(tmp_path / "busy")]) == 2
        assert "is in use by another training run" in capsys.readouterr().err


def test_register_says_plainly_that_2d_runs_cannot_register_volumes(nifti_pair, tmp_path, capsys):
    run2d = tmp_path / "run2d"
    train.run(TINY_2D, out=run2d)
    assert register_main(["--run", str(run2d), "--moving", nifti_pair["moving"], "--fixed", nifti_pair["fixed"],
                          "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "is a run of the 2-D track" in err and "needs a 3-D run" in err


# ------------------------------------------------------------------------------------ 4. actionable messages
@pytest.mark.parametrize("strategy", ["ofg", "unsupervised"])
def test_divergence_gives_one_message_for_every_strategy(tmp_path, strategy):
    with pytest.raises(FloatingPointError, match=rf"training diverged at step \d+ \({strategy}, lr 1e\+06\): .*"
                                                 r"lower lr"):
        train.run({**TINY, "epochs": 3, "steps_per_epoch": 4, "strategy": strategy, "lr": 1e6}, out=tmp_path / "r")


def test_a_refinement_that_raises_its_energy_is_reported(tmp_path):
    with pytest.warns(RuntimeWarning, match=r"epoch 1: the instance optimizer raised its energy .* lower inner_lr"):
        train.run({**TINY, "inner_lr": 1e12}, out=tmp_path / "r")
    row = load_checkpoint(tmp_path / "r" / "checkpoint.pt")["history"][0]
    assert row["energy_rise_share"] > 0


def test_unusual_oasis_folder_names_are_named(tmp_path):
    from ofg_lib.data import OASIS
    for name in ("OASIS_OAS1_0001_MR1", "OASIS_OAS1_0002_MR1", "OASIS_OAS1_0001_copy_MR1"):
        (tmp_path / name).mkdir()
    with pytest.raises(ValueError, match="OASIS_OAS1_0001_copy_MR1 look like OASIS subjects but are not named"):
        OASIS(tmp_path, "train")


@pytest.mark.parametrize("array", [np.array(["ab", "cd"]), np.array([1, "a", None], dtype=object)])
def test_a_pickle_of_non_numeric_arrays_is_named(tmp_path, array):
    from ofg_lib.data.readers import load_pkl
    path = tmp_path / "subject_1.pkl"
    path.write_bytes(pickle.dumps((array, np.zeros(3))))
    with pytest.raises(ValueError, match=f"{path}: expected numeric arrays .*item 0: dtype"):
        load_pkl(path, 2)


def test_study_names_a_missing_profile():
    res = run_cli(["-m", "ofg_lib.study", "--profile", "nope"])
    assert res.returncode == 2 and "no profile 'nope'" in res.stderr and "study" in res.stderr
    assert "Traceback" not in res.stderr


# -------------------------------------------------------------------------------------- 5. process state
def test_a_run_restores_the_thread_count(tmp_path):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        train.run({**TINY, "threads": 1})
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        train.run({**TINY, "threads": 2})
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
