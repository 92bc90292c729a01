# portrait_nb: `make train` and `make test` are the two entry points (see README.md).
# Everything runs inside .venv, created from the system Python on first use.
SHELL := /bin/bash
PYTHON ?= python3
# GPU users: make train TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PRESET ?= cpu
RUN_DIR ?= $(CURDIR)/runs/$(PRESET)
# OpenMP threads that spin while waiting make parallel torch processes (nbdev_test's workers) 20x slower on 2 cores
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup train test check-sync nbtest pytest export clean-nbs lab docs browser clean

setup: $(STAMP)

$(STAMP): settings.ini setup.py
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "portrait_nb needs Python >= 3.11, found " + sys.version'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name portrait_nb --display-name "Python (portrait_nb)" >/dev/null
	touch $(STAMP)

# The main job: the training notebook through papermill, on the CPU, with the `cpu` preset.
train: $(STAMP)
	mkdir -p $(RUN_DIR)
	$(BIN)/papermill nbs/train.ipynb $(RUN_DIR)/train.ipynb --cwd nbs -k portrait_nb \
		-p preset $(PRESET) -p out_dir $(RUN_DIR)
	@echo "Executed notebook and outputs: $(RUN_DIR)"

# The whole suite: library in sync, notebooks clean, notebook tests, then pytest (tests/test_site.py needs the browser).
test: $(STAMP) browser check-sync nbtest pytest

# Headless Chromium for the documentation site's browser test: Debian's package, installed when missing where apt-get and root
# are available (there a failed install fails the target); elsewhere tests/test_site.py is skipped and says why.
CHROMIUM := /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) && exit 0; \
	if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "Installing Chromium (Debian package 'chromium') for tests/test_site.py ..."; export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }; \
	else echo "No apt-get as root here: install Chromium at $(CHROMIUM) to run tests/test_site.py (it is skipped otherwise)."; fi

check-sync: $(STAMP)
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	cp -r portrait_nb $$tmp/lib; $(BIN)/nbdev_export; \
	if ! diff -r -q -x __pycache__ $$tmp/lib portrait_nb; then \
	  echo "FAIL: nbdev_export changed portrait_nb/: the library was not in sync with nbs/ (the export is now written; review and commit it)."; exit 1; fi; \
	cp -r nbs $$tmp/nbs; $(BIN)/nbdev_clean --fname $$tmp/nbs >/dev/null; \
	if ! diff -r -q -x '.ipynb_checkpoints' nbs $$tmp/nbs; then \
	  echo "FAIL: nbdev_clean would change the notebooks above: run 'make clean-nbs' and commit."; exit 1; fi; \
	echo "check-sync: portrait_nb/ matches nbs/, notebooks are clean."

nbtest: $(STAMP)
	$(BIN)/nbdev_test --n_workers 2 --timing

pytest: $(STAMP)
	$(BIN)/python -m pytest tests/ -q

export: $(STAMP)
	$(BIN)/nbdev_export

clean-nbs: $(STAMP)
	$(BIN)/nbdev_clean

lab: $(STAMP)
	$(BIN)/jupyter lab nbs/

# The documentation: the Quarto site in _docs/ (nbdev_docs, which also regenerates README.md) where `quarto` is on PATH,
# and always the offline HTML site in _site/ (portrait_nb.site: nbdev's processors + nbconvert, no network, no Quarto).
docs: $(STAMP)
	@if command -v quarto >/dev/null 2>&1; then echo "quarto found: nbdev_docs renders the Quarto site into _docs/"; $(BIN)/nbdev_docs; \
	else echo "quarto not on PATH: no Quarto site (nbdev_docs); building the offline site only"; fi
	$(BIN)/python -m portrait_nb.site --out _site

clean:
	rm -rf $(VENV) runs/ results/ _docs/ _proc/ _site/ *.egg-info
