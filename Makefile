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

.PHONY: setup train test check-sync nbtest pytest export clean-nbs lab docs clean

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

# The whole suite: library in sync, notebooks clean, notebook tests, then pytest.
test: $(STAMP) check-sync nbtest pytest

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

# Needs the Quarto binary (not installable on every machine): renders the site into _docs/ and README.md.
docs: $(STAMP)
	$(BIN)/nbdev_docs

clean:
	rm -rf $(VENV) runs/ results/ _docs/ _proc/ *.egg-info
