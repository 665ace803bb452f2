"""The project's own contracts: pinned dependencies agree, params match notebooks, no hard-coded CUDA."""
import importlib.util
import re
import tomllib
from pathlib import Path

import pytest
import torch
import yaml

import ofg_lib

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("nbscript", ROOT / "scripts" / "notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_environment_yml_lists_the_pyproject_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert set(pip) == wanted


def test_every_params_name_is_a_notebook_parameter():
    assert load_script().check_params() == []


def test_params_check_catches_unknown_names(tmp_path, monkeypatch):
    script = load_script()
    (tmp_path / "params").mkdir()
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "09_demo.py").write_text(
        '# %% tags=["parameters"]\nsize = 8  # help\n\n# %%\nprint(size)\n')
    (tmp_path / "params" / "x.yaml").write_text("09_demo: {size: 4, sise: 5}\n10_missing: {}\n")
    monkeypatch.setattr(script, "ROOT", tmp_path)
    monkeypatch.setattr(script, "NOTEBOOKS", tmp_path / "notebooks")
    problems = script.check_params()
    assert any("sise" in p for p in problems) and any("10_missing" in p for p in problems)


def test_every_notebook_has_one_parameters_cell_and_says_what_it_costs():
    script = load_script()
    for src in script.sources():
        assert script.parameter_names(src), src.name
        head = src.read_text()[:1500].lower()
        assert "cpu" in head and "gpu" in head, f"{src.name} must say what it costs on CPU and GPU"
        assert "cuda" not in src.read_text().replace("CUDA", ""), f"{src.name} hard-codes cuda"


def test_no_cuda_in_the_library_outside_the_device_helper():
    pattern = re.compile(r"""\.cuda\(|["']cuda|torch\.cuda""")
    for path in (ROOT / "ofg_lib").rglob("*.py"):
        if path.name == "__init__.py" and path.parent.name == "ofg_lib":
            continue
        assert not pattern.search(path.read_text()), f"{path.relative_to(ROOT)} names CUDA"


def test_device_helper_and_seed():
    assert ofg_lib.device("cpu") == torch.device("cpu")
    assert ofg_lib.device("auto").type in ("cpu", "cuda")
    with pytest.raises(RuntimeError):
        ofg_lib.device("nope")
    ofg_lib.seed_all(3)
    a = torch.rand(3)
    ofg_lib.seed_all(3)
    assert torch.equal(a, torch.rand(3))
