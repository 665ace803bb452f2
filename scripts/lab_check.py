"""`make test-lab`: the notebooks as a student meets them, in JupyterLab in a real headless Chromium.

Starts `jupyter lab` on loopback with a random token, serving fresh copies of the notebooks (build/lab/notebooks,
converted from the `.py` sources, so nothing is written into notebooks/), and drives Debian's `chromium` with
Playwright (`executable_path`: no browser download). For each notebook of NOTEBOOKS, at its CI-sized defaults:
open it with `?reset` (no tabs of an earlier session start kernels), wait for the kernel, Run All Cells, and
assert that every code cell ran, that no cell wrote an error or stderr, that no widget failed to render
("Error displaying widget", "Loading widget", a widget's text repr), and that moving one slider and clicking one
toggle of its live figure (`ofg_lib.viz.interactive`) redraws the figure's image. The kernel runs without CI /
OFG_STATIC, as under `make lab`, so widgets are live. On failure a screenshot and the server log are left in
build/lab/. Exits 0 with a message when no chromium is installed (the check needs one; `.ci/run` installs it).

    python scripts/lab_check.py [--keep] [NOTEBOOK ...]
"""
from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "lab"
NOTEBOOKS = ["02_spatial_transformer", "04_inner_optimizer"]
RUN_S = 600  # the longest a notebook may take to run all its cells
PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"
# what a widget shows when its frontend did not render it
WIDGET_FAILURES = ("Error displaying widget", "Loading widget", "interactive(children=", "VBox(children=",
                   "FloatSlider(value=", "IntSlider(value=", "ToggleButtons(")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lab_settings(out: Path) -> dict:
    """Settings folders of the test's server: the project's overrides (what `make lab` installs, so the test
    sees what a student sees) and, as user settings, only what the test needs: every cell in the page
    (JupyterLab 4 renders only the visible cells by default, so counting and reading cells needs them all)."""
    app, user, work = out / "app-settings", out / "user-settings", out / "workspaces"
    for d in (app, user / "@jupyterlab" / "notebook-extension", work):
        d.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "scripts" / "jupyterlab-overrides.json", app / "overrides.json")
    (user / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
        '{"windowingMode": "none"}')
    return {"app_settings_dir": app, "user_settings_dir": user, "workspaces_dir": work}


def start_lab(folder: Path, port: int, token: str, log) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "OFG_STATIC")}   # live widgets, as `make lab`
    env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
    cmd = [str(Path(sys.executable).parent / "jupyter"), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={folder}"]
    cmd += [f"--LabApp.{k}={v}" for k, v in lab_settings(OUT).items()]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder, start_new_session=True)
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {proc.returncode}; see {log.name}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
            return proc
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"jupyter lab did not answer on port {port} within 90 s; see {log.name}")


def stop(proc: subprocess.Popen) -> None:
    """Stop the server (SIGTERM: it shuts its kernels down, as on Ctrl-C), or kill its process group after 20 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


def image_of(box) -> str:
    """The src of the live figure's image inside a widget box (the matplotlib PNG in its Output)."""
    img = box.locator(".jp-OutputArea-output img").first
    img.wait_for(state="visible", timeout=60_000)
    return img.get_attribute("src") or ""


def wait_redrawn(box, before: str, what: str, timeout: float = 90) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        imgs = box.locator(".jp-OutputArea-output img")
        if imgs.count():
            src = imgs.first.get_attribute("src") or ""
            if src and src != before:
                return src
        time.sleep(0.25)
    raise AssertionError(f"the figure did not change within {timeout:.0f} s after {what}")


def check_notebook(page, base: str, token: str, name: str, log=print) -> dict:
    t0 = time.perf_counter()
    page.goto(f"{base}/lab/tree/{name}.ipynb?reset&token={token}")
    panel = page.locator(PANEL)
    panel.wait_for(timeout=90_000)
    # a kernel is up and idle (the toolbar's execution indicator), and no dialog asked anything on the way
    idle = page.locator(f"{PANEL} .jp-Notebook-ExecutionIndicator[data-status='idle']")
    dialog = page.locator(".jp-Dialog")
    deadline, settled = time.time() + 120, None
    while True:
        if dialog.count() and dialog.first.is_visible():
            raise AssertionError(f"{name}: a dialog opened with the notebook: {dialog.first.inner_text()[:200]!r}")
        if idle.count():
            settled = settled or time.time()
            if time.time() - settled > 1.0:       # idle, and still no dialog a second later
                break
        elif time.time() > deadline:
            raise AssertionError(f"{name}: no idle kernel within 120 s of opening")
        time.sleep(0.25)
    cells = panel.locator(".jp-CodeCell")
    n = cells.count()

    def ran() -> tuple[int, list]:
        prompts = [p.strip() for p in panel.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()]
        return sum(bool(re.fullmatch(r"\[(\d+|\*)\]:", p)) for p in prompts), prompts

    for attempt in range(3):      # Run > Run All Cells (again if the menu click did not start anything)
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
        started = time.time() + 20
        while ran()[0] == 0 and time.time() < started:
            time.sleep(0.25)
        if ran()[0]:
            break
    errors = panel.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    deadline = time.time() + RUN_S
    while True:
        if errors.count():       # a failing cell stops Run All: report it now, not after RUN_S
            raise AssertionError(f"{name}: a cell wrote an error or stderr:\n{errors.first.inner_text()[:2000]}")
        prompts = ran()[1]
        done = sum(bool(re.fullmatch(r"\[\d+\]:", p)) for p in prompts)
        if done == n:
            break
        if time.time() > deadline:
            raise AssertionError(f"{name}: {done} of {n} code cells ran within {RUN_S} s (prompts: {prompts})")
        time.sleep(0.5)
    page.wait_for_timeout(2000)   # widget views render after their cell's output arrives
    outputs = panel.locator(".jp-OutputArea-output")
    for i in range(outputs.count()):
        out = outputs.nth(i)
        mime = out.get_attribute("data-mime-type") or ""
        if mime == "application/vnd.jupyter.stderr":
            raise AssertionError(f"{name}: a cell wrote an error or stderr:\n{out.inner_text()[:2000]}")
        if mime == "application/vnd.jupyter.stdout":
            continue              # printed text (e.g. the live figure's own hint) is not a widget
        text = out.inner_text()
        bad = [w for w in WIDGET_FAILURES if w in text]
        if bad:
            raise AssertionError(f"{name}: a widget did not render ({', '.join(bad)}; output {mime}):\n{text[:1500]}")
    boxes = panel.locator(".jp-OutputArea-output .widget-vbox")
    if not boxes.count():
        raise AssertionError(f"{name}: no live widget (ofg_lib.viz.interactive) was displayed")
    box = boxes.last
    box.scroll_into_view_if_needed()
    first = image_of(box)
    # one slider: focus its handle and step it with the keyboard (noUiSlider's keyboard support)
    handle = box.locator(".widget-slider .noUi-handle").first
    handle.focus()
    page.keyboard.press("ArrowRight")
    second = wait_redrawn(box, first, "moving a slider")
    # one toggle: click a button of a ToggleButtons that is not the selected one
    toggle = box.locator(".widget-toggle-buttons button:not(.mod-active)").first
    toggle.click()
    wait_redrawn(box, second, "clicking a toggle")
    took = time.perf_counter() - t0
    log(f"[lab] {name}: {n} code cells ran, no errors, widgets live; a slider and a toggle redrew the figure "
        f"({took:.0f} s)")
    # shut this notebook's kernel down before the next one opens
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Kernel$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Shut Down Kernel$")).click()
    return {"notebook": name, "cells": n, "seconds": took}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("notebooks", nargs="*", default=NOTEBOOKS, help=f"notebook names (default: {' '.join(NOTEBOOKS)})")
    p.add_argument("--keep", action="store_true", help="keep build/lab/notebooks (the executed copies)")
    a = p.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        print("[lab] no chromium on the PATH: the browser check did not run (Debian: apt-get install chromium)")
        return 0
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(ROOT / "scripts"))
    from notebooks import convert
    t0 = time.perf_counter()
    folder = OUT / "notebooks"
    shutil.rmtree(OUT, ignore_errors=True)
    convert(folder)
    missing = [n for n in a.notebooks if not (folder / f"{n}.ipynb").exists()]
    if missing:
        p.error(f"no such notebook: {', '.join(missing)}")
    port, token = free_port(), secrets.token_hex(16)
    log = open(OUT / "server.log", "w")
    server = start_lab(folder, port, token, log)
    page = None
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium,
                                         args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                for name in a.notebooks:
                    try:
                        check_notebook(page, f"http://127.0.0.1:{port}", token, name)
                    except Exception:
                        shot = OUT / f"{name}-failure.png"
                        page.screenshot(path=str(shot), full_page=True)
                        print(f"[lab] {name} failed; screenshot {shot.relative_to(ROOT)}, server log "
                              f"{Path(log.name).relative_to(ROOT)}", file=sys.stderr)
                        raise
            finally:
                browser.close()
    finally:
        stop(server)
        log.close()
    if not a.keep:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"[lab] passed: {len(a.notebooks)} notebook(s) in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
