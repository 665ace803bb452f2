import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ofg_lib import train

TINY = {"model": "voxelmorph-1-tiny", "img_size": [32, 32, 48], "epochs": 2, "steps_per_epoch": 2,
        "val_pairs": 2, "lr": 1e-3, "inner_steps": 3, "progress": False, "threads": 1}
REQUIRED = {"strategy", "model", "dataset", "steps", "val_dice", "fold_fraction", "epe", "sec_per_step_network",
            "sec_per_step_inner", "seed", "device"}


pytestmark = pytest.mark.usefixtures("cohort_cache")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    os.environ.setdefault("OFG_DATA_DIR", str(tmp_path_factory.getbasetemp() / "cohort"))
    out = tmp_path_factory.mktemp("teacher")
    train.run({**TINY, "strategy": "unsupervised", "epochs": 1}, out=out)
    return str(out / "checkpoint.pt")


@pytest.mark.parametrize("strategy", ["unsupervised", "ofg", "mix", "self-training", "optimized-self-training"])
def test_every_strategy_trains_and_reports(strategy, teacher, tmp_path):
    extra = {"teacher": teacher, "teacher_steps": 3} if "self" in strategy else {}
    summary = train.run({**TINY, "strategy": strategy, **extra}, out=tmp_path)
    assert REQUIRED <= set(summary) and summary["steps"] == 4 and summary["strategy"] == strategy
    assert 0 <= summary["val_dice"] <= 1 and summary["epe"] > 0
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 4
    log = (tmp_path / "log.csv").read_text().splitlines()
    assert len(log) == 3 and "val_dice" in log[0]
    if strategy in ("ofg", "mix"):
        assert "energy_before" in log[0] and summary["sec_per_step_inner"] > 0


def test_checkpoints_evaluate_at_the_size_they_were_trained(tmp_path):
    from ofg_lib.evaluate import load_model
    # ViT-V-Net's position embeddings depend on the size it was built for: loading at another size would fail
    train.run({**TINY, "model": "vit-v-net-tiny", "strategy": "unsupervised", "epochs": 1, "steps_per_epoch": 1,
               "img_size": [64, 64, 64]}, out=tmp_path)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["img_size"] == [64, 64, 64]
    state["config"]["img_size"] = [96, 96, 96]          # a real dataset's config does not give the size
    torch.save(state, tmp_path / "edited.pt")
    model, _ = load_model(tmp_path / "edited.pt")
    assert model(torch.zeros(1, 2, 64, 64, 64)).shape == (1, 3, 64, 64, 64)


def test_ofg_inner_optimizer_lowers_the_energy(tmp_path):
    train.run({**TINY, "strategy": "ofg", "epochs": 1, "steps_per_epoch": 3, "inner_lr_schedule": "constant"},
              out=tmp_path)
    row = next(iter(__import__("csv").DictReader(open(tmp_path / "log.csv"))))
    assert float(row["energy_after"]) < float(row["energy_before"])


def test_resumed_run_ends_with_the_same_weights(tmp_path):
    cfg = {**TINY, "strategy": "ofg", "epochs": 3}
    train.run(cfg, out=tmp_path / "straight")

    def stop_after_first_epoch(trainer, row):
        if trainer.epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train.run(cfg, out=tmp_path / "killed", callbacks=[stop_after_first_epoch])
    assert torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    summary = train.run(cfg, out=tmp_path / "killed", resume=True)
    assert summary["steps"] == 6
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown config key.*learning_rate"):
        train.load_config({"learning_rate": 1})
    with pytest.raises(ValueError, match="strategy must be one of"):
        train.load_config({"strategy": "distillation"})
    with pytest.raises(ValueError, match="needs teacher"):
        train.load_config({"strategy": "self-training"})
    with pytest.raises(ValueError, match="model must be one of"):
        train.load_config({"model": "resnet"})
    with pytest.raises(FileNotFoundError):
        train.load_config(tmp_path / "missing.yaml")
    cfg = train.load_config({"epochs": 3}, ["strategy=unsupervised", "img_size=[32, 32, 32]"])
    assert cfg.strategy == "unsupervised" and cfg.img_size == (32, 32, 32) and cfg.epochs == 3


def run_cli(args, env_extra=None, cwd=None):
    env = {**os.environ, "CI": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def test_command_line(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**TINY, "epochs": 1}))
    res = run_cli(["-m", "ofg_lib.train", "--config", str(config), "--set", "strategy=unsupervised",
                   "--out", str(tmp_path / "out")])
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert REQUIRED <= set(summary) and summary["strategy"] == "unsupervised"
    bad = run_cli(["-m", "ofg_lib.train", "--config", str(config), "--set", "epoch=3", "--out", str(tmp_path / "x")])
    assert bad.returncode == 2 and "unknown config key" in bad.stderr


def test_ddp_two_cpu_processes_keep_replicas_identical(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**TINY, "epochs": 1, "steps_per_epoch": 2, "device": "cpu"}))
    res = run_cli(["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
                   "-m", "ofg_lib.train", "--config", str(config), "--out", str(tmp_path / "ddp")],
                  env_extra={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["replicas_agree"] is True
    assert summary["steps"] == 2


def test_shipped_configs_are_valid():
    for path in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"):
        cfg = train.load_config(path)
        assert cfg.model in train.models.names(), path.name


def test_a_diverging_run_stops_with_a_clear_error(tmp_path, monkeypatch):
    def nan_loss(step, phi):
        return phi.sum() * float("nan"), {}

    monkeypatch.setitem(train.STRATEGIES, "unsupervised", nan_loss)
    with pytest.raises(FloatingPointError, match="diverged at step 1.*lower lr"):
        train.run({**TINY, "strategy": "unsupervised", "epochs": 1}, out=tmp_path)


def test_a_notebooks_parameters_become_its_config_in_one_call():
    """config.from_namespace: the TrainConfig keys a parameter cell defines, other names ignored, then overrides."""
    from ofg_lib.config import from_namespace
    cell = {"model": "voxelmorph-1-tiny", "lr": 2e-3, "inner_steps": 5, "seeds": [0, 1], "run_dir": "x",
            "data_root": "", "train": train, "np": None}
    base = from_namespace(cell, data_root=cell["data_root"] or None)
    assert base == {"model": "voxelmorph-1-tiny", "lr": 2e-3, "inner_steps": 5, "data_root": None}
    assert train.load_config(base).inner_steps == 5
