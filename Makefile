# One way in: every target creates the virtualenv it needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Lambda runs Python 3.13; use it locally too when it is installed (pyenv or system).
PYTHON ?= $(shell for p in python3.13 $$HOME/.pyenv/versions/3.13*/bin/python3.13 python3.12 python3; do \
             $$p -c 'import sys; assert sys.version_info >= (3, 11)' >/dev/null 2>&1 && { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
# Inside .venv so that sam build (which skips .venv) never copies it into the functions.
SAM_VENV := $(VENV)/sam
STAMP := $(VENV)/.installed
export SAM_CLI_TELEMETRY := 0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help venv test lint format typecheck template-lint security build run bench soak deploy clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.txt
	@test -n "$(PYTHON)" || { echo "Python >= 3.11 is required (3.13 preferred)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP) ## create .venv with the project and its dev tools

test: $(STAMP) ## run the test suite
	$(BIN)/pytest -n 2 -q

lint: $(STAMP) ## ruff + mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP) ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

$(SAM_VENV)/.installed:
	test -x $(SAM_VENV)/bin/python || $(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/pip install -q aws-sam-cli cfn-lint
	touch $@

template-lint: $(SAM_VENV)/.installed ## sam validate --lint (cfn-lint)
	$(SAM_VENV)/bin/sam validate --lint --template template.yaml --region us-east-1

# checkov in its own virtualenv (inside .venv, so sam build never copies it), on a Python its
# dependencies support.
CHECKOV_VENV := $(VENV)/checkov
CHECKOV_PYTHON ?= $(shell for p in python3.12 python3.11 $(PYTHON); do \
             $$p -c 'import sys; assert sys.version_info >= (3, 9)' >/dev/null 2>&1 && { echo $$p; break; }; done)

$(CHECKOV_VENV)/.installed:
	test -x $(CHECKOV_VENV)/bin/python || $(CHECKOV_PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q 'checkov>=3.2,<4'
	touch $@

security: template-lint $(CHECKOV_VENV)/.installed ## template scans: cfn-lint and checkov (skips justified in .checkov.yaml / template Metadata)
	$(CHECKOV_VENV)/bin/checkov --file template.yaml --config-file .checkov.yaml

# sam build needs python3.13 on PATH (the functions' runtime): the project venv provides it when
# it was made with 3.13, else one installed elsewhere on PATH must.
build: $(SAM_VENV)/.installed $(STAMP) ## sam build (no Docker)
	@PATH="$(CURDIR)/$(BIN):$$PATH" command -v python3.13 >/dev/null || { echo "sam build needs \
	python3.13 (the functions' runtime) on PATH: install Python 3.13, then make clean build"; exit 1; }
	PATH="$(CURDIR)/$(BIN):$$PATH" $(SAM_VENV)/bin/sam build --template template.yaml

# What `sam build` runs for each function (template.yaml: BuildMethod: makefile, samconfig.toml:
# build in source), with ARTIFACTS_DIR set: requirements.txt for the functions' architecture, the
# bridge's functions/ and shared/, and their bytecode compiled by the runtime's Python.
LAMBDA_PYTHON ?= python3.13
LAMBDA_PLATFORM ?= manylinux2014_aarch64
build-%Function:
	@test -n "$(ARTIFACTS_DIR)" || { echo "ARTIFACTS_DIR is not set: sam build sets it"; exit 1; }
	$(LAMBDA_PYTHON) -m fme_bridge.package "$(ARTIFACTS_DIR)" --platform $(LAMBDA_PLATFORM)

# PARAMS="AlarmTopicArn=arn:…" adds to the parameter_overrides samconfig.toml keeps for the
# environment: given to sam deploy alone, --parameter-overrides would replace them all (Stage too).
deploy: build ## sam deploy --config-env ENV (ENV=dev by default); PARAMS="Name=value …" adds parameters
	@overrides="$$($(BIN)/python -c "$$SAMCONFIG_OVERRIDES" $(or $(ENV),dev))" || exit 1; \
	set -x; $(SAM_VENV)/bin/sam deploy --config-env $(or $(ENV),dev) \
		$(if $(PARAMS),--parameter-overrides "$$overrides $(PARAMS)")

# The parameter_overrides of a samconfig.toml environment, as one string (a TOML list joined).
define SAMCONFIG_OVERRIDES
import sys, tomllib
env = sys.argv[1]
config = tomllib.load(open("samconfig.toml", "rb"))
deployable = [name for name, section in config.items() if isinstance(section, dict) and "deploy" in section]
if env not in deployable:
    sys.exit(f"samconfig.toml has no deploy settings for ENV={env}: one of {', '.join(deployable)}")
value = config[env]["deploy"].get("parameters", {}).get("parameter_overrides", "")
print(" ".join(value) if isinstance(value, list) else value)
endef
export SAMCONFIG_OVERRIDES

run: $(STAMP) ## the whole bridge locally (no AWS account, no Docker), with a demo; ARGS="--port 3100" passes flags
	$(BIN)/fme-bridge local --demo $(ARGS)

# Figures of a soak run: inside .venv, which sam build does not copy into the functions.
SOAK_FIGURES := $(VENV)/soak/figures.jsonl

soak: $(STAMP) ## reliability suite at soak scale; writes its figures to docs/reliability.md
	mkdir -p $(dir $(SOAK_FIGURES)) && rm -f $(SOAK_FIGURES)
	RELIABILITY_SOAK=1 RELIABILITY_FIGURES=$(CURDIR)/$(SOAK_FIGURES) $(BIN)/pytest -n 2 -q -p no:cacheprovider tests/reliability
	$(BIN)/python -m tests.reliability.report $(SOAK_FIGURES) docs/reliability.md

bench: $(STAMP) ## benchmarks (not part of make test)
	$(BIN)/python -m bench

clean: ## remove virtualenvs and build output
	rm -rf $(VENV) .aws-sam .pytest_cache .mypy_cache .ruff_cache
