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

.PHONY: help setup data browser lab test test-qnnpack site bench train clean student arm64 record-arm64 test-arm64

help:
	@echo "make lab    set up (venv, pinned packages, qlib, data) and start JupyterLab"
	@echo "make test   set up and run the whole test suite (QLIB_SMOKE=1 shrinks notebook work)"
	@echo "make site   the HTML edition: every notebook executed at full size, into site/ (45 minutes on a busy 2-core machine)"
	@echo "make bench  FP32 vs INT8 accuracy, size and latency per engine: table and figures in build/bench/"
	@echo "make student  write the student copies (solutions stubbed) to student/"
	@echo "make train  retrain the committed checkpoints (about 30 minutes on 2 cores)"
	@echo "make arm64  Linux ARM64 torch under qemu-user in build/arm64-qemu (root for apt; a 454 MB wheel)"
	@echo "make record-arm64  record its int8 kernels (--quick) into data/kernel-recordings/arm64"
	@echo "make test-arm64  the smoke notebooks (00 01 04 07 08; 11 must stop) on a kernel running ARM64 torch under qemu"

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

# Linux ARM64 (aarch64) as a CPU kind: PyTorch's real aarch64 wheel under qemu-user on this x86
# machine (scripts/arm64-qemu.sh; not part of make test). ARM_CPU picks qemu's CPU model.
ARM     := build/arm64-qemu
ARM_CPU ?= neoverse-n1
ARM_NOTEBOOKS ?= 00_setup_and_tour 01_quantization_math 04_preparing_resnet 07_conversion_and_inspection 08_int8_internals

arm64: $(STAMP)
	@HOST_PYTHON=$(PY) bash scripts/arm64-qemu.sh $(ARM)

# The note is written from the recording's own "cpu" entry (read on the host) and qemu's version.
ARM_NOTE_PY = import glob, sys; from qlib.int8.recordings import load; \
  cpu = load(sorted(glob.glob("build/arm64-rec/*.pt"))[0])["cpu"]; \
  engines = sorted(p[len("build/arm64-rec/add-"):-3] for p in glob.glob("build/arm64-rec/add-*.pt")); \
  midr = open("$(ARM)/cpu/$(ARM_CPU)/sys/devices/system/cpu/cpu0/regs/identification/midr_el1").read().strip(); \
  print(f"Recorded with python -m qlib.int8.record --quick under {sys.argv[1]} (qemu-user, -cpu $(ARM_CPU): MIDR_EL1 {midr}, flags {cpu['flags']}) on an x86-64 host, " \
  f"running PyTorch {cpu['torch']} for {cpu['system']} {cpu['machine']} (the official Linux aarch64 wheel, a CUDA build " \
  f"whose CUDA libraries are stubbed; its CPU kernels are unchanged); engines {', '.join(engines)} and onednn with the x86 " \
  f"qconfig (fbgemm does not run on ARM); {cpu['threads']} threads; torch.backends.cpu.get_cpu_capability() = " \
  f"{cpu['aten_capability']}. On Linux aarch64 the x86 and onednn engines run oneDNN's ARM kernels. This is Linux ARM64, " \
  "not macOS: Apple Silicon's torch is a separate build, not verified here.")

record-arm64: arm64 data
	rm -rf build/arm64-rec
	ARM_CPU=$(ARM_CPU) $(ARM)/arm-python -m qlib.int8.record build/arm64-rec --quick
	$(file >build/arm64-note.py,$(ARM_NOTE_PY))
	$(PY) -m qlib.int8.compact build/arm64-rec data/kernel-recordings/arm64 --recorded qemu \
	  --note "$$($(PY) build/arm64-note.py "$$(qemu-aarch64-static --version | head -1)")"
	@# oneDNN's ARM kernels (engines x86 and onednn there) are not all reproduced: a replay that is not
	@# exact everywhere is reported, not an error; the qnnpack files must be exact.
	$(PY) -m qlib.int8.replay data/kernel-recordings/arm64 | tee build/arm64-replay.txt || true
	@grep -q " recordings exact$$" build/arm64-replay.txt && ! grep -E "^[a-z0-9-]*qnnpack[a-z0-9-]*\.pt\.xz: NOT EXACT" build/arm64-replay.txt

# nbval on the host drives a Jupyter kernel that runs under qemu (kernelspec arm64-qemu in $(ARM)/kernels).
# Notebook 11 must stop at its first cell with its RuntimeError on ARM; nbval would run on past it,
# so it runs under nbconvert, which stops at the first error, and that error is checked.
ARM_JUPYTER := QLIB_SMOKE=1 ARM_CPU=$(ARM_CPU) JUPYTER_PATH=$(CURDIR)/$(ARM)
test-arm64: arm64 data
	@status=0; \
	$(ARM_JUPYTER) $(PY) -m pytest -p no:cacheprovider -o addopts="" -ra \
	  --nbval-lax --nbval-kernel-name arm64-qemu --nbval-kernel-startup-timeout=600 --nbval-cell-timeout=3000 \
	  $(foreach n,$(ARM_NOTEBOOKS),notebooks/$(n).ipynb) || status=1; \
	echo "==> notebook 11 under the ARM kernel: it must stop at its first cell with its RuntimeError"; \
	out=$$($(ARM_JUPYTER) $(VENV)/bin/jupyter nbconvert --to notebook --execute --stdout \
	  --ExecutePreprocessor.kernel_name=arm64-qemu --ExecutePreprocessor.startup_timeout=600 \
	  --ExecutePreprocessor.timeout=3000 notebooks/11_beyond_eager_mode_pt2e.ipynb 2>&1 >/dev/null); \
	if sed "s/\x1b\[[0-9;]*m//g" <<<"$$out" | grep -q "RuntimeError: Notebook 11 needs an x86-64 CPU"; then \
	  echo "==> notebook 11 stopped there, as it must"; \
	else echo "$$out" | tail -30; echo "notebook 11 did not stop with its RuntimeError" >&2; status=1; fi; \
	exit $$status

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
