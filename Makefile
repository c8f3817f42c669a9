# Two commands do all the set-up on a fresh machine:
#   make lab    set up, then start JupyterLab on notebooks/
#   make test   set up, then run the whole test suite (pytest + nbval over every notebook)
# Both are idempotent: a second run skips the work already done.

SHELL   := /bin/bash
PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.qlib-installed
PIP     := $(PY) -m pip --disable-pip-version-check

.PHONY: help setup data lab test bench train clean

help:
	@echo "make lab    set up (venv, pinned packages, qlib, data) and start JupyterLab"
	@echo "make test   set up and run the whole test suite (QLIB_SMOKE=1 shrinks notebook work)"
	@echo "make bench  FP32 vs INT8 benchmark table"
	@echo "make train  retrain the committed checkpoints (about 30 minutes on 2 cores)"

setup: $(STAMP) data

# Reinstalled only when requirements.txt or pyproject.toml change.
$(STAMP): requirements.txt pyproject.toml
	@if [ ! -x $(PY) ]; then echo "==> creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); fi
	@echo "==> installing the pinned packages from requirements.txt into $(VENV) (the first time takes minutes)"
	@$(PIP) install --quiet -r requirements.txt
	@echo "==> installing qlib (editable)"
	@$(PIP) install --quiet --no-deps -e .
	@touch $(STAMP)
	@echo "==> $(VENV) is ready"

data: $(STAMP)
	@bash scripts/ensure-data.sh $(PY)

# Extra options for JupyterLab, e.g. make lab LAB_ARGS="--no-browser --port 8899".
LAB_ARGS ?=
ROOT_ARGS := $(if $(filter 0,$(shell id -u)),--allow-root)

lab: setup
	@echo "==> starting JupyterLab on notebooks/ (Ctrl-C to stop)"
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks $(ROOT_ARGS) $(LAB_ARGS)

test: setup
	@echo "==> running the test suite: unit tests, then every notebook under nbval (QLIB_SMOKE=1)"
	QLIB_SMOKE=1 $(PY) -m pytest

bench: setup
	$(PY) -m qlib.bench

train: setup
	$(PY) -m qlib.train seednet-fmnist
	$(PY) -m qlib.train resnet18-fmnist

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
