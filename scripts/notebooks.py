"""Convert, check and run the notebooks (used by the Makefile; `python scripts/notebooks.py --help`).

- `convert --out DIR`: write every notebooks/NN_*.py (jupytext percent, the source) as DIR/NN_*.ipynb.
- `check-params`: every name in params/*.yaml must be a parameter of its notebook (papermill only warns).
- `reproduce --profile P`: run every notebook with params/P.yaml through papermill; executed copies go to
  results/P/NN_*.ipynb, written under a temporary name first and renamed when the run succeeded.
- `html --profile P`: the executed notebooks of results/P/ as static HTML pages in results/P/html/, with an
  index.html (title, what each notebook teaches, what it costs), ready to publish or hand out.
Never writes into notebooks/: papermill's injected-parameters cell would sync back into the source.
"""
from __future__ import annotations

import argparse
import ast
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def sources() -> list[Path]:
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))


def parameter_names(src: Path) -> set[str]:
    """Names assigned in the cell tagged `parameters` of a jupytext percent notebook."""
    import jupytext
    nb = jupytext.read(src)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise SystemExit(f"{src.name}: expected exactly one cell tagged 'parameters', found {len(cells)}")
    names = set()
    for node in ast.parse(cells[0].source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def _read_profile(profile: str) -> tuple[dict, list | None]:
    import yaml
    path = ROOT / "params" / f"{profile}.yaml"
    if not path.exists():
        known = ", ".join(p.stem for p in sorted((ROOT / "params").glob("*.yaml")))
        raise SystemExit(f"no parameter file {path.relative_to(ROOT)}; profiles: {known}")
    data = yaml.safe_load(path.read_text()) or {}
    only = data.pop("only", None) if isinstance(data, dict) else None
    if only is not None and not (isinstance(only, list) and all(isinstance(o, str) for o in only)):
        raise SystemExit(f"{path.name}: `only` must be a list of notebook name prefixes, e.g. [\"08\"]")
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise SystemExit(f"{path.name}: expected a mapping of notebook name -> {{parameter: value}} (and `only`)")
    return data, only


def load_profile(profile: str) -> dict:
    """{notebook: {parameter: value}} of params/PROFILE.yaml."""
    return _read_profile(profile)[0]


def profile_only(profile: str) -> list | None:
    """The notebook prefixes a profile runs by default (its `only` key), or None for every notebook."""
    return _read_profile(profile)[1]


def check_params() -> list[str]:
    """Every problem found in params/*.yaml, as messages (empty when all is well)."""
    stems = {s.stem: s for s in sources()}
    problems = []
    for path in sorted((ROOT / "params").glob("*.yaml")):
        for nb, values in load_profile(path.stem).items():
            if nb not in stems:
                problems.append(f"{path.name}: no notebook named {nb!r} (have: {', '.join(stems)})")
                continue
            unknown = set(values) - parameter_names(stems[nb])
            if unknown:
                problems.append(f"{path.name}: {nb} has no parameter(s) {', '.join(sorted(unknown))}")
    return problems


def convert(out: Path) -> list[Path]:
    import jupytext
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for src in sources():
        dst = out / f"{src.stem}.ipynb"
        nb = jupytext.read(src)
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        jupytext.write(nb, dst, fmt="ipynb")
        written.append(dst)
    return written


def reproduce(profile: str, only: list[str] | None = None) -> None:
    from ofg_lib.compare import execute_notebook
    problems = check_params()
    if problems:
        raise SystemExit("\n".join(problems))
    params = load_profile(profile)
    only = only or profile_only(profile)
    os.environ["OFG_STATIC"] = "1"  # widgets draw their static figure only (ofg_lib.viz.interactive)
    build, results = ROOT / "build" / profile, ROOT / "results" / profile
    results.mkdir(parents=True, exist_ok=True)
    for nb in convert(build):
        if only and not any(nb.stem.startswith(o) for o in only):
            continue
        final = results / nb.name
        partial = results / f".{nb.stem}.partial.ipynb"
        t0 = time.perf_counter()
        print(f"[{profile}] {nb.stem} ...", flush=True)
        execute_notebook(nb, partial, parameters=params.get(nb.stem, {}), cwd=ROOT)
        os.replace(partial, final)
        print(f"[{profile}] {nb.stem} done in {time.perf_counter() - t0:.0f} s -> {final.relative_to(ROOT)}",
              flush=True)


def header(nb) -> dict:
    """Title, first sentence of "What this teaches" and the "Cost" paragraph of a notebook's first cell."""
    text = nb.cells[0].source if nb.cells else ""
    title = next((line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("# ")), "")
    paragraphs = [" ".join(p.split()) for p in text.split("\n\n")]
    teaches = next((p for p in paragraphs if p.startswith("**What this teaches.**")), "")
    sentences = re.split(r"(?<!Eq)(?<!Fig)(?<!Sec)\.\s+(?=[A-Z])", teaches.replace("**What this teaches.**", "").strip())
    cost = next((p for p in paragraphs if p.startswith("**Cost.**")), "").replace("**Cost.**", "").strip()
    cost = cost.split(" Code: ")[0]
    teaches = sentences[0].rstrip(".") + "."
    return {"title": title, "teaches": teaches, "cost": cost}


TEMPLATES = Path(__file__).resolve().parent / "templates"
MATHJAX_DIR = "mathjax"          # beside the pages, referenced by a relative path
# MathJax 3 from the django-static-mathjax package: the full TeX build (every extension, nothing loaded on
# demand) and its CHTML fonts, about 1.7 MB in all.
MATHJAX_FILES = ("tex-chtml-full.js", "output/chtml/fonts/woff-v2")


def copy_mathjax(dest: Path) -> Path:
    """Copy MathJax (MATHJAX_FILES) from the installed package into `dest`; returns the script's path."""
    import importlib.resources
    import shutil
    try:
        src = importlib.resources.files("mathjax") / "static" / "mathjax" / "es5"
    except ModuleNotFoundError:
        raise SystemExit("MathJax is not installed: `make setup` installs it (django-static-mathjax)") from None
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / MATHJAX_FILES[0], dest / "tex-chtml.js")
    shutil.copytree(src / MATHJAX_FILES[1], dest / MATHJAX_FILES[1], dirs_exist_ok=True)
    return dest / "tex-chtml.js"


def merge_injected_parameters(nb):
    """The page shows the values a notebook ran with once: papermill's injected cell is folded into the
    notebook's own `parameters` cell (each injected `name = value` replaces that name's line, its comment kept;
    a name not found there is appended) and removed."""
    injected = next((c for c in nb.cells if "injected-parameters" in c.get("metadata", {}).get("tags", [])), None)
    own = next((c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if injected is None:
        return nb
    if own is None:                       # nothing to merge into: keep papermill's cell as the only one
        return nb
    lines = own.source.splitlines()
    for line in injected.source.splitlines():
        m = re.match(r"^([A-Za-z_]\w*) = (.*)$", line)
        if not m:
            continue
        name, value = m.groups()
        at = next((i for i, ln in enumerate(lines) if re.match(rf"^{name}\s*=", ln)), None)
        if at is not None and lines[at].count("=") >= 1 and _one_line(lines[at]):
            comment = lines[at].split("  #", 1)[1] if "  #" in lines[at] else None
            lines[at] = f"{name} = {value}" + (f"  # {comment.strip()} (this run)" if comment else "  # (this run)")
        else:
            lines.append(f"{name} = {value}  # (this run)")
    own.source = "\n".join(lines)
    nb.cells = [c for c in nb.cells if c is not injected]
    return nb


def _one_line(line: str) -> bool:
    """Whether an assignment is complete on its line (brackets balanced), so it can be replaced whole."""
    code = line.split("  #", 1)[0]
    return all(code.count(a) == code.count(b) for a, b in ("()", "[]", "{}"))


def html(profile: str) -> Path:
    """Static HTML pages of results/PROFILE/NN_*.ipynb and an index; returns the index's path."""
    import html as escape
    import nbformat
    from nbconvert import HTMLExporter
    results = ROOT / "results" / profile
    executed = sorted(results.glob("[0-9][0-9]_*.ipynb"))
    if not executed:
        raise SystemExit(f"no executed notebooks in {results}: run `make reproduce PROFILE={profile}` first")
    out = results / "html"
    out.mkdir(parents=True, exist_ok=True)
    copy_mathjax(out / MATHJAX_DIR)
    # the lab layout with nothing fetched from the network (scripts/templates/ofg_lab/index.html.j2)
    exporter = HTMLExporter(template_name="ofg_lab", extra_template_basedirs=[str(TEMPLATES)])
    rows = []
    for path in executed:
        nb = merge_injected_parameters(nbformat.read(path, as_version=4))
        body, _ = exporter.from_notebook_node(nb, resources={"mathjax_dir": MATHJAX_DIR})
        _write(out / f"{path.stem}.html", body)
        h = header(nb)
        rows.append(f'<tr><td><a href="{path.stem}.html">{escape.escape(h["title"] or path.stem)}</a></td>'
                    f'<td>{escape.escape(h["teaches"])}</td><td>{escape.escape(h["cost"])}</td></tr>')
    index = ("<!doctype html><html><head><meta charset='utf-8'><title>OFG, notebook first</title><style>"
             "body{font-family:sans-serif;max-width:70em;margin:2em auto}td{vertical-align:top;padding:.4em;"
             "border-bottom:1px solid #ddd}</style></head><body><h1>OFG: on-the-fly guidance, notebook first</h1>"
             f"<p>Executed notebooks of the <code>{escape.escape(profile)}</code> profile "
             "(<code>make reproduce</code>), in reading order.</p><table><tr><th>notebook</th><th>what it teaches"
             "</th><th>cost</th></tr>" + "".join(rows) + "</table></body></html>")
    return _write(out / "index.html", index)


def _write(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert")
    c.add_argument("--out", type=Path, required=True)
    sub.add_parser("check-params")
    r = sub.add_parser("reproduce")
    r.add_argument("--profile", default="cpu")
    r.add_argument("--only", nargs="*", help="notebook name prefixes, e.g. 02 03")
    h = sub.add_parser("html")
    h.add_argument("--profile", default="cpu")
    args = p.parse_args(argv)
    if args.cmd == "convert":
        for path in convert(args.out):
            print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    elif args.cmd == "check-params":
        problems = check_params()
        print("\n".join(problems) or "params OK")
        sys.exit(1 if problems else 0)
    elif args.cmd == "html":
        print(html(args.profile).relative_to(ROOT))
    else:
        reproduce(args.profile, args.only)


if __name__ == "__main__":
    main()
