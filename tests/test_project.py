"""The project's own contracts: pinned dependencies agree, params match notebooks, no hard-coded CUDA."""
import re
import tomllib
from pathlib import Path

import pytest
import torch
import yaml

import ofg_lib
from helpers import load_module

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    return load_module("scripts/notebooks.py", "nbscript")


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


def test_the_html_course_links_every_executed_notebook_with_its_lesson_and_cost(tmp_path, monkeypatch):
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output
    script = load_script()
    results = tmp_path / "results" / "ci"
    results.mkdir(parents=True)
    for stem, title in (("01_a", "01 · Title A"), ("02_b", "02 · Title B")):
        head = f"# {title}\n\n**What this teaches.** How {stem} works. More.\n\n**Cost.** A minute on a CPU; less on a GPU."
        nb = new_notebook(cells=[new_markdown_cell(head), new_code_cell("print(6 * 7)", outputs=[
            new_output("stream", name="stdout", text="42\n")])])
        nbformat.write(nb, results / f"{stem}.ipynb")
    monkeypatch.setattr(script, "ROOT", tmp_path)
    index = script.html("ci").read_text()
    for stem in ("01_a", "02_b"):
        assert f'href="{stem}.html"' in index and f"How {stem} works." in index
        assert "42" in (results / "html" / f"{stem}.html").read_text()
    assert "A minute on a CPU; less on a GPU." in index and "Title B" in index
    with pytest.raises(SystemExit, match="no executed notebooks"):
        script.html("gpu")


def test_every_notebook_header_gives_the_course_index_a_title_a_lesson_and_a_cost():
    import jupytext
    script = load_script()
    for src in script.sources():
        h = script.header(jupytext.read(src))
        assert h["title"].startswith(src.stem[:2]) and len(h["teaches"]) > 30 and "CPU" in h["cost"], src.name


def test_the_html_course_builds_from_an_executed_notebook(tmp_path, monkeypatch):
    """`make html` on a notebook really executed at its CI-sized defaults (through papermill, as reproduce does)."""
    import papermill as pm
    script = load_script()
    src = next(p for p in script.convert(tmp_path / "build") if p.stem.startswith("02"))
    results = tmp_path / "results" / "ci"
    results.mkdir(parents=True)
    monkeypatch.setenv("OFG_STATIC", "1")
    monkeypatch.setenv("OFG_DATA_DIR", str(tmp_path / "data"))
    pm.execute_notebook(str(src), str(results / src.name), kernel_name="python3", progress_bar=False,
                        cwd=str(script.ROOT), parameters={"rms": 2.5})
    monkeypatch.setattr(script, "ROOT", tmp_path)
    index = script.html("ci").read_text()
    page = (results / "html" / f"{src.stem}.html").read_text()
    assert f'href="{src.stem}.html"' in index and "02 · " in index
    assert "<img" in page or "image/png" in page                      # its figures were executed and embedded
    # offline (issue 24): no script from another host, MathJax where the page looks for it, formulas in the page
    import re
    sources = re.findall(r"<script[^>]*\bsrc=[\"']([^\"']+)", page)
    assert sources and not [u for u in sources if re.match(r"(https?:)?//", u)], sources
    for u in sources:
        assert (results / "html" / u).is_file(), u
    assert (results / "html" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").is_dir()
    assert "$$" in page and "http://" not in " ".join(sources) and "cdnjs" not in page and "unpkg.com" not in page
    # the values it ran with, once: papermill's cell folded into the notebook's own parameters cell
    assert "injected-parameters" not in page and "Parameters" not in page
    import html
    text = html.unescape(re.sub(r"<[^>]+>", "", page))
    assert page.count("(this run)") == 1 and "rms = 2.5  # RMS size" in text and "rms = 3.0" not in text
    # where Chromium is installed (the browser tests of the JupyterLab issue), the formulas are typeset offline
    import shutil
    import subprocess
    browser = shutil.which("chromium")
    if browser:
        run = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                              "--disable-quic", "--no-first-run", "--disable-background-networking",
                              "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'chromium'}",
                              "--virtual-time-budget=8000", "--dump-dom",
                              (results / "html" / f"{src.stem}.html").as_uri()],
                             capture_output=True, text=True, timeout=180)
        dom = run.stdout
        assert run.returncode == 0 and "<html" in dom, f"chromium failed ({run.returncode}): {run.stderr[-2000:]}"
        visible = html.unescape(re.sub(r"<[^>]+>", "", re.sub(r"<(script|style)[^>]*>.*?</\1>", "", dom, flags=re.S)))
        assert dom.count("<mjx-container") >= 5 and "$$" not in visible, run.stderr[-2000:]


def test_a_profile_may_run_only_some_notebooks(tmp_path, monkeypatch):
    script = load_script()
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "one.yaml").write_text('only: ["08"]\n08_x: {a: 1}\n')
    (tmp_path / "params" / "bad.yaml").write_text("only: 8\n")
    monkeypatch.setattr(script, "ROOT", tmp_path)
    assert script.profile_only("one") == ["08"] and script.load_profile("one") == {"08_x": {"a": 1}}
    with pytest.raises(SystemExit, match="`only` must be a list"):
        script.load_profile("bad")
    assert load_script().profile_only("study") == ["08"] and load_script().profile_only("cpu") is None


def test_the_lab_settings_we_ship_are_settings_of_the_installed_jupyterlab():
    """scripts/jupyterlab-overrides.json (installed by `make lab`, read by `make test-lab`) names plugins and keys
    the installed JupyterLab's schemas define, with values of their types: a renamed setting would be ignored
    silently, and the student would meet the "Select Kernel" dialog again."""
    import json
    import sys
    schemas = Path(sys.prefix) / "share" / "jupyter" / "lab" / "schemas"
    if not schemas.is_dir():
        pytest.skip("JupyterLab's schemas are not installed in this environment")
    overrides = json.loads((ROOT / "scripts" / "jupyterlab-overrides.json").read_text())
    assert overrides["@jupyterlab/notebook-extension:tracker"]["autoStartDefaultKernel"] is True
    assert overrides["@jupyterlab/docmanager-extension:plugin"]["defaultViewers"]["python"] == "Jupytext Notebook"
    types = {"boolean": bool, "string": str, "object": dict}
    for plugin, values in overrides.items():
        package, name = plugin.split(":")
        schema = json.loads((schemas / package / f"{name}.json").read_text())
        for key, value in values.items():
            prop = schema["properties"].get(key)
            assert prop is not None, f"{plugin} has no setting {key!r}"
            if prop.get("type") in types:
                assert isinstance(value, types[prop["type"]]), (plugin, key, value)
            if "enum" in prop:
                assert value in prop["enum"], (plugin, key, value, prop["enum"])


def test_the_lab_check_skips_with_a_message_without_chromium(monkeypatch, capsys):
    lab = load_module("scripts/lab_check.py", "lab_check")
    monkeypatch.setattr(lab.shutil, "which", lambda name: None)
    assert lab.main([]) == 0
    assert "no chromium on the PATH" in capsys.readouterr().out


def test_notebooks_run_through_papermill_leave_no_kernel_warning_on_stderr(tmp_path, capfd):
    """`compare.execute_notebook` (make reproduce, notebook 05 made on demand) runs the kernel over IPC on POSIX:
    the executed cell's output is there, and ipykernel's "running over TCP without encryption" warning, which a
    TCP kernel prints on the caller's stderr, is not."""
    import os

    import nbformat
    from ofg_lib.compare import execute_notebook
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 6 * 7\nprint(x)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    src, out = tmp_path / "t.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nb, src)
    execute_notebook(src, out, cwd=tmp_path)
    outputs = nbformat.read(out, as_version=4).cells[0].outputs
    assert any("42" in o.get("text", "") for o in outputs)
    if os.name == "posix":
        assert "without encryption" not in capfd.readouterr().err
