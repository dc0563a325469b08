# citymodels — the two commands: `make demo` and `make test`.
# Both work on a fresh clone with nothing but Python 3.11: they create .venv themselves.

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# The venv is rebuilt when the pins change.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

# The SageMaker scikit-learn container's Python (framework 1.2-1). Code under preprocessing/
# and layers/common/citymodels runs there, so it is checked against that version.
CONTAINER_PY := 3.9

.PHONY: demo test lint typecheck unit container-check bench clean help

help:
	@echo "make demo   - set up .venv and run the demo on the local stack"
	@echo "make test   - set up .venv and run lint, type checks and the whole test suite"
	@echo "make bench  - run the benchmarks (JSON on stdout)"

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.11 is required"; exit 1; }
	@rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/citymodels demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy layers/common/citymodels devkit/citymodels_devkit preprocessing

# ruff already checks the container-side code's syntax for py39 (pyproject.toml); where
# an interpreter of that version exists, the processing script and the inference
# handlers also really run under it.
container-check: $(STAMP)
	$(BIN)/python -m citymodels_devkit.container_check --python-version $(CONTAINER_PY)

unit: $(STAMP)
	$(BIN)/python -m pytest tests

test: lint typecheck container-check unit

bench: $(STAMP)
	@for b in bench/bench_*.py; do $(BIN)/python $$b; done

clean:
	rm -rf $(VENV) .citymodels .mypy_cache .ruff_cache .pytest_cache build
