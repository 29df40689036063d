# Two commands do all set-up on a fresh machine:
#   make demo   - venv + install + dataset, then the Social-JEPA demo on Fashion-MNIST (runs/demo)
#   make test   - venv + install + dataset, then the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= runs/demo

.PHONY: demo test setup data

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml plugins/sjalign-randproj/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q -e plugins/sjalign-randproj
	touch $@

data:
	bash scripts/ensure-data.sh

demo: setup data
	$(PY) examples/demo.py --out $(OUT)

test: setup data
	$(PY) -m pytest -q
