# The two commands of the README's quick start; each sets itself up on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

GPU_CHECK_OUT ?= bench/out/gpu_check

.PHONY: demo test test-fast bench gpu-check clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/prunetune demo

# the whole suite: what CI runs (.ci/run)
test: $(STAMP)
	$(PY) -m pytest -q tests

# the fast lane while working: the markers decide (no `slow` end-to-end runs, no `cluster` workflow);
# well under 2 minutes on 2 cores. `make test` stays the whole suite.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not cluster" --hypothesis-profile=fast tests

# The one-shot check for a machine with a GPU: no install step, no Ray, no network (bench/gpu_check.py)
gpu-check:
	PYTHONPATH=. $(PYTHON) bench/gpu_check.py --out $(GPU_CHECK_OUT)

clean-venv:
	rm -rf $(VENV)
