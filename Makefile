# Set-up and the two everyday commands. Needs only Python 3.10+ and make.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean-venv

# The environment: a virtual environment in .venv with rablip installed editable (dev extra).
# Rebuilt only when missing or when pyproject.toml changed.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py $(ARGS)

test: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled $(PY) -m pytest -q $(ARGS)

# ruff, and the layer contract in pyproject.toml (import-linter): a module imports only its own layer
# and the layers below it.
lint: $(STAMP)
	$(PY) -m ruff check rablip scripts tests run_pretrain.py run_finetune.py run_eval.py
	$(VENV)/bin/lint-imports --no-cache

clean-venv:
	rm -rf $(VENV)
