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

.PHONY: help setup data browser lab test test-qnnpack site bench train clean student

help:
	@echo "make lab    set up (venv, pinned packages, qlib, data) and start JupyterLab"
	@echo "make test   set up and run the whole test suite (QLIB_SMOKE=1 shrinks notebook work)"
	@echo "make site   the HTML edition: every notebook executed at full size, into site/ (45 minutes on a busy 2-core machine)"
	@echo "make bench  FP32 vs INT8 accuracy, size and latency per engine: table and figures in build/bench/"
	@echo "make student  write the student copies (solutions stubbed) to student/"
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

# Debian's chromium for the browser tests (tests/test_browser.py); apt-get where it is missing.
browser:
	@bash scripts/ensure-browser.sh

test: setup browser
	@echo "==> running the test suite: unit tests, then every notebook under nbval (QLIB_SMOKE=1)"
	QLIB_SMOKE=1 $(PY) -m pytest

# The notebooks and the pipeline again, as on a machine without the x86 engine (Apple Silicon, ARM):
# the course engine becomes qnnpack (qlib.engines.course_engine). CI runs it after make test.
test-qnnpack: setup
	@echo "==> the notebooks and the PTQ / QAT pipeline under QLIB_ENGINE=qnnpack"
	QLIB_ENGINE=qnnpack QLIB_SMOKE=1 $(PY) -m pytest notebooks tests/test_ptq.py tests/test_qat.py tests/test_bad_input_pipeline.py tests/test_inspection.py

# Student copies: each solution replaced by nbgrader's stub, nbgrader metadata, outputs stripped.
# Refuses to overwrite a copy a learner changed: make student STUDENT_ARGS=--force replaces it.
student: $(STAMP)
	$(PY) -m qlib.student --out student $(STUDENT_ARGS)

# The HTML edition: make site SITE_ARGS="--smoke 01" builds one page at smoke size.
site: setup
	$(PY) -m qlib.site $(SITE_ARGS)

bench: setup
	$(PY) -m qlib.bench

train: setup
	$(PY) -m qlib.train seednet-fmnist
	$(PY) -m qlib.train resnet18-fmnist

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
