# One entry point for setup, the main job, the tests and the benchmark, on either stack:
#   STACK=1.16: TFX 1.16, TF 2.16, Python 3.10 (.python-version), pins in stacks/tfx-1.16.txt, venv .venv
#   STACK=1.21: TFX 1.21, TF 2.21, Python 3.13, protobuf 6, pins in stacks/tfx-1.21.txt, venv .venv-1.21
# STACK defaults to the newest this machine runs natively (stacks/native.sh). STACK=1.21 on a glibc
# older than 2.39 (Debian 12) runs the same target inside a Debian 13 root filesystem (stacks/debian13.sh).

STACK ?= $(shell sh stacks/native.sh)
PIP_CACHE ?= $(HOME)/.cache/pip
OUTPUT_DIR ?=
VERSION := $(shell sed -n 's/.*version="\([^"]*\)".*/\1/p' setup.py)
IMAGE_TAG ?= tfx-model-pruning:$(VERSION)

ifeq ($(STACK),1.16)
VENV ?= .venv
PYTHON_VERSION := 3.10
STACK_PYTHON ?= $(shell pyenv which python 2>/dev/null || command -v python3.10)
SETUPTOOLS := setuptools<70
else ifeq ($(STACK),1.21)
VENV ?= .venv-1.21
PYTHON_VERSION := 3.13
STACK_PYTHON ?= $(shell command -v python3.13)
SETUPTOOLS := setuptools==80.10.2
else
$(error STACK must be 1.16 or 1.21, not '$(STACK)')
endif
CONSTRAINTS := stacks/tfx-$(STACK).txt
# Empty where this machine runs the stack itself; else the wrapper that runs make inside Debian 13.
ELSEWHERE := $(if $(filter 1.21,$(STACK)),$(if $(filter 1.21,$(shell sh stacks/native.sh)),,stacks/debian13.sh))

.PHONY: setup run test unit bench lint readme clean image stack

stack:
	@echo "stack: TFX $(STACK) (Python $(PYTHON_VERSION), $(VENV))$(if $(ELSEWHERE), inside Debian 13 via $(ELSEWHERE): this machine's glibc is older than 2.39,)"

ifneq ($(ELSEWHERE),)
setup run test unit bench lint readme: stack
	$(ELSEWHERE) make $@ STACK=$(STACK) $(if $(OUTPUT_DIR),OUTPUT_DIR=$(OUTPUT_DIR))
else
$(VENV)/.installed: setup.py $(CONSTRAINTS)
	@test -n "$(STACK_PYTHON)" || { echo "Python $(PYTHON_VERSION) not found (TFX $(STACK) stack): install it, or set STACK_PYTHON" >&2; exit 1; }
	@$(STACK_PYTHON) -c 'import sys; assert sys.version_info[:2] == tuple(map(int, "$(PYTHON_VERSION)".split("."))), sys.version' \
	  || { echo "$(STACK_PYTHON) is not Python $(PYTHON_VERSION)" >&2; exit 1; }
	test -x $(VENV)/bin/python || $(STACK_PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --cache-dir $(PIP_CACHE) 'pip==26.3' '$(SETUPTOOLS)' wheel
	$(VENV)/bin/pip install --quiet --cache-dir $(PIP_CACHE) -c $(CONSTRAINTS) -e '.[dev]'
	touch $@

setup: stack $(VENV)/.installed

run: setup
	$(VENV)/bin/prune-pipeline run-local$(if $(OUTPUT_DIR), --output-dir $(OUTPUT_DIR))

test: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
	$(VENV)/bin/python -m pytest -q -n 2 tests  # two workers: one per core of these machines

# The unit tier: no pipeline, no Beam, no subprocess, no trained-and-saved baseline (tests/conftest.py).
unit: setup
	$(VENV)/bin/python -m pytest -q -m "not integration" tests

bench: setup
	$(VENV)/bin/python bench/digits_pruning.py --seeds 3

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# The README's configuration reference, generated from the code (tests/test_readme_reference.py checks it).
readme: setup
	$(VENV)/bin/python -m tfx_model_pruning_pipelines.reference --write README.md
endif

# Needs a Docker engine (the development machines have none). Tag = the compiled pipeline's default image.
image:
	docker build --build-arg STACK=$(STACK) -t $(IMAGE_TAG) .

clean:
	rm -rf .venv .venv-1.21 runs .pytest_cache
