# Set up (torch first, so pip never pulls a multi-GB CUDA build), then run.
PYTHON ?= python3

.PHONY: setup train test test-slow bench

setup:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q torch==2.13.0
	@$(PYTHON) -m pip install -q -e '.[dev]'

train: setup
	$(PYTHON) -m lamina train --overwrite

test: setup
	$(PYTHON) -m pytest -q

test-slow: setup
	$(PYTHON) -m pytest -q -m slow

bench: setup
	$(PYTHON) -m lamina bench attn hgrn --out runs/bench-cpu
