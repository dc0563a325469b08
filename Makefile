# citymodels — the two commands: `make demo` and `make test`.
# Both work on a fresh clone with nothing but one CPython 3.11 (3.11.2 and later), 3.12 or
# 3.13: they create .venv themselves (and .venv-sam, for the SAM CLI, and .venv-checkov when
# `make test` checks the template; .venv-py3.X for the unit tests on each other Python found).
# `make test` runs its checks TEST_JOBS (2) at a time: see `test` below.

SHELL := /bin/bash

# Any python3 runs tools/pythons.py, which finds the supported interpreters (PATH, pyenv,
# uv) and says what to install when there is none.
BOOTSTRAP := $(shell command -v python3 || command -v python || command -v python3.13 || command -v python3.12 || command -v python3.11)
# The functions' Lambda runtime, said once in template.yaml (Globals). .venv prefers that
# Python, so the local loop runs what Lambda runs; `sam build` needs it.
LAMBDA_RUNTIME := $(shell sed -n 's/^    Runtime: *\(python3\.[0-9][0-9]*\).*/\1/p' template.yaml | head -n 1)
LAMBDA_PYTHON_VERSION := $(LAMBDA_RUNTIME:python%=%)
# The interpreter of .venv: PYTHON=... if given (checked), else the one tools/pythons.py
# picks. Each of these is worked out once, when first used.
PYTHON_EXE = $(eval PYTHON_EXE := $(shell $(BOOTSTRAP) tools/pythons.py $(if $(PYTHON),check $(PYTHON),primary --prefer $(LAMBDA_PYTHON_VERSION))))$(PYTHON_EXE)
PY_VERSION = $(eval PY_VERSION := $(if $(PYTHON_EXE),$(shell $(PYTHON_EXE) -c 'import platform; print(platform.python_version())')))$(PY_VERSION)
# An interpreter of the Lambda runtime's version, for `sam build` (empty: none here).
LAMBDA_PYTHON = $(eval LAMBDA_PYTHON := $(shell $(BOOTSTRAP) tools/pythons.py find $(LAMBDA_PYTHON_VERSION)))$(LAMBDA_PYTHON)

VENV := .venv
BIN := $(VENV)/bin
# Every pip run: quiet, no look-up of a newer pip, and no byte-compiling of every module
# installed (half of pip's CPU time for .venv's set, measured): Python compiles the ones
# that are imported, when they first are, and keeps the .pyc.
PIP_INSTALL := -m pip install --quiet --disable-pip-version-check --no-compile
PINS_SUM := $(shell cksum < pyproject.toml | cut -d' ' -f1)
# A venv is brought up to date when the pins change, and made anew for another Python.
STAMP := $(VENV)/.installed-$(PINS_SUM)-py$(PY_VERSION)

# $(call make-venv,DIR,PYTHON,EXTRAS): DIR made with PYTHON (anew unless it already runs
# that very version), then this project installed into it, editable, with EXTRAS.
define make-venv
@test -n "$(2)" || { echo "no supported Python (see above), or name one: make $(MAKECMDGOALS) PYTHON=/path/to/python3.X"; exit 1; }
@want=$$($(2) -c 'import platform; print(platform.python_version())') && \
	have=$$($(1)/bin/python -c 'import platform; print(platform.python_version())' 2>/dev/null); \
	if [ "$$want" != "$$have" ]; then echo "$(1): Python $$want ($(2))"; rm -rf $(1); $(2) -m venv $(1) || exit 1; fi
$(1)/bin/python $(PIP_INSTALL) --upgrade pip
$(1)/bin/python $(PIP_INSTALL) -e '.[$(3)]'
@rm -f $(1)/.installed-*
endef

# The SAM CLI pins its own boto3/botocore, so it lives in a virtualenv of its own, at the
# version pinned in pyproject.toml ([tool.citymodels.tools] aws-sam-cli). cfn-lint is the
# one aws-sam-cli depends on (same venv), so `cfn-lint` and `sam validate --lint` agree.
SAM_VENV := .venv-sam
SAM_BIN := $(SAM_VENV)/bin
SAM_CLI_VERSION := $(shell sed -n 's/^aws-sam-cli *= *"\([^"]*\)".*/\1/p' pyproject.toml)
SAM_STAMP := $(SAM_VENV)/.installed-aws-sam-cli-$(SAM_CLI_VERSION)
# Offline checks still need a region for the ARNs the translator builds; any will do.
SAM_REGION ?= us-east-1
# `make deploy ENV=prod` picks samconfig.toml's [prod] section.
ENV ?= default
export SAM_CLI_TELEMETRY := 0

# The SageMaker scikit-learn container's Python (framework 1.2-1). Code under preprocessing/
# and layers/common/citymodels runs there, so it is checked against that version.
CONTAINER_PY := 3.9

.PHONY: demo test lint typecheck unit container-check bench clean help venv sam-venv pythons \
	layer-requirements template-check cfn-lint sam-validate sam-build-check build deploy \
	checkov checkov-venv \
	unit-other-pythons unit-on unit-on-others

help:
	@echo "make demo     - set up .venv and run the demo on the local stack"
	@echo "make test     - set up .venv (and .venv-sam, .venv-checkov) and run lint, type checks,"
	@echo "                the whole test suite, the template checks (cfn-lint, sam validate,"
	@echo "                sam build, checkov) and the unit tests on each other supported Python"
	@echo "                found, two at a time (TEST_JOBS=1: one after another); each check's"
	@echo "                output is printed whole when it ends"
	@echo "make pythons  - the Pythons found here, and which ones make uses (PYTHON=... to choose)"
	@echo "make bench    - run the benchmarks (JSON on stdout)"
	@echo "make build    - sam build into .aws-sam/build (what sam deploy uploads)"
	@echo "make deploy   - build, then sam deploy with samconfig.toml [ENV] (ENV=default|prod)"

$(STAMP): pyproject.toml
	$(call make-venv,$(VENV),$(PYTHON_EXE),dev)
	@touch $@

venv: $(STAMP)

pythons:
	@$(BOOTSTRAP) tools/pythons.py list
	@echo ".venv: $(or $(PYTHON_EXE),none) $(PY_VERSION); Lambda runtime $(LAMBDA_RUNTIME): $(or $(LAMBDA_PYTHON),no Python $(LAMBDA_PYTHON_VERSION) here)"

# $(call tool-venv,DIR,NAME,VERSION): DIR made anew with .venv's Python, holding NAME at
# VERSION (the pin in pyproject.toml's [tool.citymodels.tools]) and what it pins itself.
define tool-venv
@test -n "$(3)" || { echo "pyproject.toml has no [tool.citymodels.tools] $(2) pin"; exit 1; }
@test -n "$(PYTHON_EXE)" || exit 1
@rm -rf $(1)
$(PYTHON_EXE) -m venv $(1)
$(1)/bin/python $(PIP_INSTALL) --upgrade pip
$(1)/bin/python $(PIP_INSTALL) '$(2)==$(3)'
@touch $@
endef

$(SAM_STAMP):
	$(call tool-venv,$(SAM_VENV),aws-sam-cli,$(SAM_CLI_VERSION))

sam-venv: $(SAM_STAMP)

# checkov pins many packages of its own (boto3, networkx, pydantic...), so it too lives in
# a virtualenv of its own, at the version pinned in pyproject.toml ([tool.citymodels.tools]).
CHECKOV_VENV := .venv-checkov
CHECKOV_BIN := $(CHECKOV_VENV)/bin
CHECKOV_VERSION := $(shell sed -n 's/^checkov *= *"\([^"]*\)".*/\1/p' pyproject.toml)
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed-checkov-$(CHECKOV_VERSION)

$(CHECKOV_STAMP):
	$(call tool-venv,$(CHECKOV_VENV),checkov,$(CHECKOV_VERSION))

checkov-venv: $(CHECKOV_STAMP)

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

# The unit tests again on every other supported Python found here, one per version (the
# lowest patch release found: Debian 12's 3.11.2 rather than a later 3.11), each in a
# .venv-py3.X of its own. The whole suite runs on .venv's Python (`unit`). A make of its
# own (below) has one unit-on-3.X target per Python, so that under -j (`make test`) one
# Python's tests run while the next one's venv is made, or beside another's tests.
unit-other-pythons: $(STAMP)
	@others=$$($(BOOTSTRAP) tools/pythons.py others --primary $(PYTHON_EXE)); \
	if [ -z "$$others" ]; then echo "unit tests on other Pythons: none found besides $(PY_VERSION)"; exit 0; fi; \
	$(MAKE) --no-print-directory unit-on-others PYTHON_EXE=$(PYTHON_EXE) \
		OTHER_PYTHONS="$$(while read -r version exe; do [ -z "$$exe" ] || printf '%s=%s ' "$$version" "$$exe"; done <<< "$$others")"

# `make unit-on OTHER_PYTHON=/path/to/python3.X`: the unit tests on that one Python.
ifdef OTHER_PYTHON
OTHER_PYTHONS := $(shell $(OTHER_PYTHON) -c 'import platform; print(platform.python_version())')=$(OTHER_PYTHON)
unit-on: unit-on-others
endif

# OTHER_PYTHONS: VERSION=EXE words (3.11.2=/usr/bin/python3.11). Each Python gets a
# .venv-py3.X and a target unit-on-3.X. This project is installed into one venv at a time,
# each after .venv (order-only prerequisites): setuptools writes citymodels.egg-info into
# the source tree, and two editable installs at once could read each other's half-written
# metadata. Installing the dependencies, the long part, is in the same step, so each
# Python's venv waits for the previous one's; its tests need not.
ifdef OTHER_PYTHONS
other-stamp = $(VENV)-py$(basename $(1))/.installed-$(PINS_SUM)-py$(1)

# $(call other-python-rules,VERSION,EXE,STAMP BEFORE IT)
define other-python-rules
$(call other-stamp,$(1)): pyproject.toml | $(3)
	$$(call make-venv,$(VENV)-py$(basename $(1)),$(2),dev)
	@touch $$@

unit-on-$(basename $(1)): $(call other-stamp,$(1))
	$(VENV)-py$(basename $(1))/bin/python -m pytest tests/unit -q -p no:cacheprovider
endef

other-before := $(STAMP)
define add-other-python
$(eval $(call other-python-rules,$(1),$(2),$(other-before)))
$(eval other-before := $(call other-stamp,$(1)))
$(eval unit-on-others: unit-on-$(basename $(1)))
$(eval .PHONY: unit-on-$(basename $(1)))
endef
$(foreach p,$(OTHER_PYTHONS),$(call add-other-python,$(firstword $(subst =, ,$(p))),$(lastword $(subst =, ,$(p)))))
endif

unit-on-others:

# --- the template ---------------------------------------------------------------------

# layers/common/requirements.txt is generated from pyproject.toml's dependencies.
layer-requirements:
	$(BOOTSTRAP) tools/gen_layer_requirements.py

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
# tools/check_build.py checks what the artifacts really hold. Without a container, SAM
# builds with a local interpreter of the runtime's version: the one found is put first on
# the PATH. Where there is none, this check says so and the others still run.
NO_LAMBDA_PYTHON = NOT RUN: sam build needs Python $(LAMBDA_PYTHON_VERSION) (template.yaml's Runtime \
	$(LAMBDA_RUNTIME)) and none was found here (make pythons). Install it (pyenv install \
	$(LAMBDA_PYTHON_VERSION), or your system's python$(LAMBDA_PYTHON_VERSION) package) and run this again.

sam-build-check: $(SAM_STAMP) $(STAMP)
	$(BIN)/python tools/gen_layer_requirements.py --check
	@if [ -z "$(LAMBDA_PYTHON)" ]; then echo "$(NO_LAMBDA_PYTHON)"; exit 0; fi; \
	out=$$(mktemp -d) && trap 'rm -rf "$$out"' EXIT && \
		echo "PATH=$(dir $(LAMBDA_PYTHON)):\$$PATH $(SAM_BIN)/sam build --template template.yaml --build-dir $$out/build" && \
		if PATH="$(dir $(LAMBDA_PYTHON)):$$PATH" $(SAM_BIN)/sam build --template template.yaml \
			--build-dir "$$out/build" > "$$out/build.log" 2>&1; then grep -h "Build Succeeded" "$$out/build.log"; \
		else cat "$$out/build.log"; exit 1; fi && \
		$(BIN)/python tools/check_build.py "$$out/build"

# checkov's CloudFormation checks on template.yaml (SAM resources included): any failed
# check fails; a skipped one is skipped in the template's Metadata, with the reason.
# --skip-download: no call to Prisma Cloud for guideline links (works offline).
checkov: $(CHECKOV_STAMP)
	$(CHECKOV_BIN)/checkov --quiet --compact --skip-download --framework cloudformation --file template.yaml

template-check: cfn-lint sam-validate sam-build-check checkov

# `make test`: every check below, TEST_JOBS at a time (2: this project's machines have 2
# cores; TEST_JOBS=1 runs them one after another). The whole suite on .venv's Python is the
# longest, and waits on its local stacks as much as it computes; beside it run the template
# checks and the unit tests on each other Python found, and the virtualenvs they need are
# made (pip) while .venv is. Each check's output is printed whole when it ends (make's
# --output-sync; where make has none, as macOS's make 3.81, they run one at a time); a
# failed one is named by make (`*** [Makefile:N: check] Error 1`), no new check starts, and
# `make test` fails once the running ones end. A check that could not run here is named
# again at the very end. The list's order is make's order of starting them: the whole suite
# first, and the template checks, short ones, last, where they fill a job slot the others
# leave.
TEST_JOBS ?= 2
TEST_CHECKS := unit lint typecheck container-check unit-other-pythons template-check
OUTPUT_SYNC := $(if $(filter output-sync,$(.FEATURES)),--output-sync=target)

test:
	@echo "make test: $(TEST_CHECKS), $(if $(OUTPUT_SYNC),$(TEST_JOBS),1) at a time; each one's output follows when it ends"
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory $(if $(OUTPUT_SYNC),-j$(TEST_JOBS) $(OUTPUT_SYNC),-j1) \
		PYTHON_EXE=$(PYTHON_EXE) $(TEST_CHECKS); status=$$?; \
	echo "make test: $$([ $$status = 0 ] && echo passed || echo FAILED) in $$(( $$(date +%s) - start )) s"; \
	exit $$status
	@if [ -z "$(LAMBDA_PYTHON)" ]; then echo "$(NO_LAMBDA_PYTHON)"; fi

# --- deployment (needs AWS credentials; never part of `make test`) -------------------

build: $(SAM_STAMP) $(STAMP)
	$(BIN)/python tools/gen_layer_requirements.py --check
	@test -n "$(LAMBDA_PYTHON)" || { echo "$(NO_LAMBDA_PYTHON)"; exit 1; }
	PATH="$(dir $(LAMBDA_PYTHON)):$$PATH" $(SAM_BIN)/sam build --template template.yaml

deploy: build
	$(SAM_BIN)/sam deploy --config-env $(ENV)

bench: $(STAMP)
	@for b in bench/bench_*.py; do $(BIN)/python $$b; done

# --- benchmark peers ------------------------------------------------------------------

# bench/bench_endpoint.py measures Seldon MLServer beside the local endpoint when
# .venv-bench exists (else it reports "mlserver": null). MLServer lives in a virtualenv of
# its own, at the versions pinned in bench/peers/requirements.txt (every package held by
# bench/peers/constraints.txt); it is rebuilt when those files change. MLServer 1.7 runs
# on Python 3.9-3.12: a 3.11 or 3.12 found here.
.PHONY: bench-venv bench-peers
BENCH_VENV := .venv-bench
BENCH_PINS := bench/peers/requirements.txt bench/peers/constraints.txt
BENCH_STAMP := $(BENCH_VENV)/.installed-$(shell cat $(BENCH_PINS) 2>/dev/null | cksum | cut -d' ' -f1)
BENCH_PYTHON = $(eval BENCH_PYTHON := $(shell $(BOOTSTRAP) tools/pythons.py find 3.11 || $(BOOTSTRAP) tools/pythons.py find 3.12))$(BENCH_PYTHON)

$(BENCH_STAMP): $(BENCH_PINS)
	@test -n "$(BENCH_PYTHON)" || { echo "MLServer 1.7 needs Python 3.11 or 3.12 (make pythons): none was found"; exit 1; }
	@rm -rf $(BENCH_VENV)
	$(BENCH_PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python $(PIP_INSTALL) --upgrade pip
	$(BENCH_VENV)/bin/python $(PIP_INSTALL) -r bench/peers/requirements.txt \
		-c bench/peers/constraints.txt
	@touch $@

bench-venv: $(BENCH_STAMP)

# The endpoint benchmark with its peer (JSON on stdout).
bench-peers: $(STAMP) $(BENCH_STAMP)
	$(BIN)/python bench/bench_endpoint.py

clean:
	rm -rf $(VENV) $(VENV)-py3.* $(SAM_VENV) $(CHECKOV_VENV) .citymodels .mypy_cache .ruff_cache .pytest_cache build .aws-sam
