# citymodels — the two commands: `make demo` and `make test`.
# Both work on a fresh clone with nothing but Python 3.11: they create .venv themselves
# (and .venv-sam, for the SAM CLI, when `make test` checks the template).

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# The venv is brought up to date when the pins change (created if missing).
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

# The SAM CLI pins its own boto3/botocore, so it lives in a virtualenv of its own, at the
# version pinned in pyproject.toml ([tool.citymodels.tools] aws-sam-cli). cfn-lint is the
# one aws-sam-cli depends on (same venv), so `cfn-lint` and `sam validate --lint` agree.
SAM_VENV := .venv-sam
SAM_BIN := $(SAM_VENV)/bin
SAM_CLI_VERSION := $(shell $(PYTHON) -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["tool"]["citymodels"]["tools"]["aws-sam-cli"])' 2>/dev/null)
SAM_STAMP := $(SAM_VENV)/.installed-aws-sam-cli-$(SAM_CLI_VERSION)
# Offline checks still need a region for the ARNs the translator builds; any will do.
SAM_REGION ?= us-east-1
# `make deploy ENV=prod` picks samconfig.toml's [prod] section.
ENV ?= default
export SAM_CLI_TELEMETRY := 0

# The SageMaker scikit-learn container's Python (framework 1.2-1). Code under preprocessing/
# and layers/common/citymodels runs there, so it is checked against that version.
CONTAINER_PY := 3.9

.PHONY: demo test lint typecheck unit container-check bench clean help venv sam-venv \
	layer-requirements template-check cfn-lint sam-validate sam-build-check build deploy

help:
	@echo "make demo     - set up .venv and run the demo on the local stack"
	@echo "make test     - set up .venv (and .venv-sam) and run lint, type checks, the whole"
	@echo "                test suite and the template checks (cfn-lint, sam validate, sam build)"
	@echo "make bench    - run the benchmarks (JSON on stdout)"
	@echo "make build    - sam build into .aws-sam/build (what sam deploy uploads)"
	@echo "make deploy   - build, then sam deploy with samconfig.toml [ENV] (ENV=default|prod)"

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.11 is required"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

venv: $(STAMP)

$(SAM_STAMP):
	@test -n "$(SAM_CLI_VERSION)" || { echo "pyproject.toml has no [tool.citymodels.tools] aws-sam-cli pin (or Python < 3.11)"; exit 1; }
	@rm -rf $(SAM_VENV)
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_BIN)/python -m pip install --quiet --upgrade pip
	$(SAM_BIN)/python -m pip install --quiet 'aws-sam-cli==$(SAM_CLI_VERSION)'
	@touch $@

sam-venv: $(SAM_STAMP)

demo: $(STAMP)
	$(BIN)/citymodels demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Each function directory is checked on its own: every handler is a module named `app`.
typecheck: $(STAMP)
	$(BIN)/mypy layers/common/citymodels devkit/citymodels_devkit preprocessing tools
	@for dir in functions/*/; do \
		echo "$(BIN)/mypy $$dir*.py"; \
		MYPYPATH="$$dir" $(BIN)/mypy $$dir*.py || exit 1; \
	done

# ruff already checks the container-side code's syntax for py39 (pyproject.toml); where
# an interpreter of that version exists, the processing script and the inference
# handlers also really run under it.
container-check: $(STAMP)
	$(BIN)/python -m citymodels_devkit.container_check --python-version $(CONTAINER_PY)

unit: $(STAMP)
	$(BIN)/python -m pytest tests

# --- the template ---------------------------------------------------------------------

# layers/common/requirements.txt is generated from pyproject.toml's dependencies.
layer-requirements:
	$(PYTHON) tools/gen_layer_requirements.py

# cfn-lint checks template.yaml (SAM resources against SAM's schemas), then the plain
# CloudFormation the SAM translator makes of it (what SAM generates, and every Ref and
# GetAtt on a generated resource). Suppressed rules, if any, are justified in the
# template's Metadata.
cfn-lint: $(SAM_STAMP)
	$(SAM_BIN)/cfn-lint template.yaml
	@out=$$(mktemp -d) && trap 'rm -rf "$$out"' EXIT && \
		$(SAM_BIN)/python tools/translate_template.py template.yaml "$$out/translated.json" && \
		echo "$(SAM_BIN)/cfn-lint $$out/translated.json" && \
		$(SAM_BIN)/cfn-lint "$$out/translated.json"

sam-validate: $(SAM_STAMP)
	$(SAM_BIN)/sam validate --lint --region $(SAM_REGION) --template template.yaml

# A full `sam build` (layer dependencies from PyPI for the functions' architecture, no
# Docker) into a throw-away directory, so a test run never touches .aws-sam/build; then
# tools/check_build.py checks what the artifacts really hold.
sam-build-check: $(SAM_STAMP)
	$(PYTHON) tools/gen_layer_requirements.py --check
	@out=$$(mktemp -d) && trap 'rm -rf "$$out"' EXIT && \
		echo "$(SAM_BIN)/sam build --template template.yaml --build-dir $$out/build" && \
		if $(SAM_BIN)/sam build --template template.yaml --build-dir "$$out/build" \
			> "$$out/build.log" 2>&1; then grep -h "Build Succeeded" "$$out/build.log"; \
		else cat "$$out/build.log"; exit 1; fi && \
		$(PYTHON) tools/check_build.py "$$out/build"

template-check: cfn-lint sam-validate sam-build-check

test: lint typecheck container-check unit template-check

# --- deployment (needs AWS credentials; never part of `make test`) -------------------

build: $(SAM_STAMP)
	$(PYTHON) tools/gen_layer_requirements.py --check
	$(SAM_BIN)/sam build --template template.yaml

deploy: build
	$(SAM_BIN)/sam deploy --config-env $(ENV)

bench: $(STAMP)
	@for b in bench/bench_*.py; do $(BIN)/python $$b; done

# --- benchmark peers ------------------------------------------------------------------

# bench/bench_endpoint.py measures Seldon MLServer beside the local endpoint when
# .venv-bench exists (else it reports "mlserver": null). MLServer lives in a virtualenv of
# its own, at the versions pinned in bench/peers/requirements.txt (every package held by
# bench/peers/constraints.txt); it is rebuilt when those files change.
.PHONY: bench-venv bench-peers
BENCH_VENV := .venv-bench
BENCH_PINS := bench/peers/requirements.txt bench/peers/constraints.txt
BENCH_STAMP := $(BENCH_VENV)/.installed-$(shell cat $(BENCH_PINS) 2>/dev/null | cksum | cut -d' ' -f1)

$(BENCH_STAMP): $(BENCH_PINS)
	@test -n "$(PYTHON)" || { echo "Python 3.11 is required"; exit 1; }
	@rm -rf $(BENCH_VENV)
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet -r bench/peers/requirements.txt \
		-c bench/peers/constraints.txt
	@touch $@

bench-venv: $(BENCH_STAMP)

# The endpoint benchmark with its peer (JSON on stdout).
bench-peers: $(STAMP) $(BENCH_STAMP)
	$(BIN)/python bench/bench_endpoint.py

clean:
	rm -rf $(VENV) $(SAM_VENV) .citymodels .mypy_cache .ruff_cache .pytest_cache build .aws-sam
