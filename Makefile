# The two commands of the README's quick start; each sets itself up on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

GPU_CHECK_OUT ?= bench/out/gpu_check

.PHONY: demo test bench gpu-check clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/prunetune demo

test: $(STAMP)
	$(PY) -m pytest -q tests

# The one-shot check for a machine with a GPU: no install step, no Ray, no network (bench/gpu_check.py)
gpu-check:
	PYTHONPATH=. $(PYTHON) bench/gpu_check.py --out $(GPU_CHECK_OUT)

clean-venv:
	rm -rf $(VENV)
