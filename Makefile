# Set up a virtual environment (torch first, so pip never pulls a multi-GB CUDA build), then run.
# The environment is the active one ($VIRTUAL_ENV) if there is one, else .venv here; VENV=DIR picks another.
PYTHON ?= python3
VENV ?= $(or $(VIRTUAL_ENV),.venv)
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lamina-setup

.PHONY: setup train test test-slow bench

setup: $(STAMP)

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
		{ echo "lamina needs Python 3.10 or newer; $(PYTHON) is $$($(PYTHON) --version 2>&1). Run: make PYTHON=python3.X"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

train: setup
	$(PY) -m lamina train --overwrite

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

bench: setup
	$(PY) -m lamina bench attn hgrn --out runs/bench-cpu
