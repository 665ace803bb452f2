# The interface: make setup | test | test-lab | reproduce | html | lab | sync | bench | clean
# PROFILE=cpu (default, minutes on a laptop) or PROFILE=gpu (full size, one GPU): params/$(PROFILE).yaml
PYTHON  ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PROFILE ?= cpu
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: setup test test-lab reproduce html lab sync bench clean distclean

setup: $(STAMP)

# Reinstalls only when pyproject.toml changes; the stamp is written last, so a failed install is retried.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Unit tests, then every notebook under nbval (lax: cells must run; assert cells check the numbers); the 25
# slowest items are listed at the end (where to look when make test grows).
test: setup
	$(BIN)/python scripts/notebooks.py check-params
	rm -rf build/nbval && $(BIN)/python scripts/notebooks.py convert --out build/nbval >/dev/null
	CI=1 $(BIN)/python -m pytest -p no:cacheprovider --durations=25 tests build/nbval --nbval-lax

# JupyterLab in headless Chromium (Playwright, Debian's chromium): notebooks 02 and 04 run, widgets redraw
# (scripts/lab_check.py; screenshots in build/lab/ on failure; skips with a message when no chromium is installed).
test-lab: setup
	$(BIN)/python scripts/lab_check.py

# ONLY="02 05" runs the notebooks whose names start with those prefixes.
reproduce: setup
	$(BIN)/python scripts/notebooks.py reproduce --profile $(PROFILE) $(if $(ONLY),--only $(ONLY))

# The executed notebooks of a profile as static HTML with an index: results/$(PROFILE)/html/index.html
html: setup
	$(BIN)/python scripts/notebooks.py html --profile $(PROFILE)

# Pairs each .py with an .ipynb that names its kernel; installs JupyterLab settings overrides in the venv
# (double-clicking a .py opens it as a notebook; autoStartDefaultKernel: no "Select Kernel" dialog, which
# JupyterLab 4.6 shows even for a notebook that names its kernel); passes --allow-root when run as root.
LAB_SETTINGS := $(VENV)/share/jupyter/lab/settings
lab: sync
	mkdir -p $(LAB_SETTINGS)
	cp scripts/jupyterlab-overrides.json $(LAB_SETTINGS)/overrides.json
	$(BIN)/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root)

sync: setup
	$(BIN)/jupytext --set-kernel python3 --sync notebooks/[0-9][0-9]_*.py

bench: setup
	$(BIN)/python benchmarks/bench_lncc.py

clean:
	rm -rf build results .pytest_cache

distclean: clean
	rm -rf $(VENV) data/cohort* *.egg-info
