# One entry point for setup, the main job, the tests and the benchmark, on either stack:
#   STACK=1.16: TFX 1.16, TF 2.16, Python 3.10 (.python-version), pins in stacks/tfx-1.16.txt, venv .venv
#   STACK=1.21: TFX 1.21, TF 2.21, protobuf 6, on Python 3.13 (PY=3.13, the default: pins in
#               stacks/tfx-1.21.txt, venv .venv-1.21), 3.12 or 3.11 (PY=3.12: stacks/tfx-1.21-py3.12.txt,
#               .venv-1.21-py3.12); a Python not on PATH is taken from pyenv's versions.
# STACK defaults to the newest this machine runs natively (stacks/native.sh). STACK=1.21 on a glibc
# older than 2.39 (Debian 12) runs the same target inside a Debian 13 root filesystem (stacks/debian13.sh).

STACK ?= $(shell sh stacks/native.sh)
PIP_CACHE ?= $(HOME)/.cache/pip
OUTPUT_DIR ?=
VERSION := $(shell sed -n 's/.*version="\([^"]*\)".*/\1/p' setup.py)
IMAGE_TAG ?= tfx-model-pruning:$(VERSION)

# V=1 shows pip's own output; by default it goes to $(INSTALL_LOG) (its warnings about the
# machine's pip settings and setuptools' editable-install notes are not this project's progress),
# and its last lines are printed only when an install fails.
V ?=
INSTALL_LOG = $(VENV)/install.log
# In a variable: a comma written inside $(call ...) would split its argument.
DOCS_EXTRAS := .[dev,docs]
quietly = $(if $(V),$(1),$(1) --quiet >>$(INSTALL_LOG) 2>&1 || { tail -n 40 $(INSTALL_LOG) >&2; exit 1; })

PYENV_VERSIONS := $(or $(PYENV_ROOT),$(HOME)/.pyenv)/versions
ifeq ($(STACK),1.16)
PY ?= 3.10
VENV ?= .venv
STACK_PYTHON ?= $(shell pyenv which python 2>/dev/null || command -v python3.10)
SETUPTOOLS := setuptools<70
CONSTRAINTS := $(if $(filter 3.10,$(PY)),stacks/tfx-1.16.txt,stacks/tfx-1.16-py$(PY).txt)
else ifeq ($(STACK),1.21)
PY ?= 3.13
VENV ?= $(if $(filter 3.13,$(PY)),.venv-1.21,.venv-1.21-py$(PY))
STACK_PYTHON ?= $(shell command -v python$(PY) || ls -d $(PYENV_VERSIONS)/$(PY).*/bin/python$(PY) 2>/dev/null | tail -n 1)
SETUPTOOLS := setuptools==80.10.2
CONSTRAINTS := $(if $(filter 3.13,$(PY)),stacks/tfx-1.21.txt,stacks/tfx-1.21-py$(PY).txt)
else
$(error STACK must be 1.16 or 1.21, not '$(STACK)')
endif
PYTHON_VERSION := $(PY)
ifeq ($(wildcard $(CONSTRAINTS)),)
$(error no tested pins for TFX $(STACK) on Python $(PY): $(CONSTRAINTS) is missing (STACK=1.16 runs 3.10; STACK=1.21 runs 3.11, 3.12 and 3.13))
endif
# Empty where this machine runs the stack itself; else the wrapper that runs make inside Debian 13.
ELSEWHERE := $(if $(filter 1.21,$(STACK)),$(if $(filter 1.21,$(shell sh stacks/native.sh)),,stacks/debian13.sh))

.PHONY: setup run test unit bench lint docs docs-reference clean image stack

stack:
	@echo "stack: TFX $(STACK) (Python $(PYTHON_VERSION), $(VENV))$(if $(ELSEWHERE), inside Debian 13 via $(ELSEWHERE): this machine's glibc is older than 2.39,)"

ifneq ($(ELSEWHERE),)
setup run test unit bench lint docs docs-reference: stack
	$(ELSEWHERE) make $@ STACK=$(STACK) PY=$(PY) $(if $(V),V=$(V)) $(if $(OUTPUT_DIR),OUTPUT_DIR=$(OUTPUT_DIR))
else
$(VENV)/.installed: setup.py $(CONSTRAINTS)
	@test -n "$(STACK_PYTHON)" || { echo "Python $(PYTHON_VERSION) not found (TFX $(STACK) stack): install it, or set STACK_PYTHON" >&2; exit 1; }
	@$(STACK_PYTHON) -c 'import sys; assert sys.version_info[:2] == tuple(map(int, "$(PYTHON_VERSION)".split("."))), sys.version' \
	  || { echo "$(STACK_PYTHON) is not Python $(PYTHON_VERSION)" >&2; exit 1; }
	@echo "setting up TFX $(STACK) on Python $(PY) in $(VENV) from $(CONSTRAINTS) (pip's output: $(INSTALL_LOG)) ..."
	@test -x $(VENV)/bin/python || $(STACK_PYTHON) -m venv $(VENV)
	@$(call quietly,$(VENV)/bin/pip install --cache-dir $(PIP_CACHE) 'pip==26.3' '$(SETUPTOOLS)' wheel)
	@$(call quietly,$(VENV)/bin/pip install --cache-dir $(PIP_CACHE) -c $(CONSTRAINTS) -e '.[dev]')
	@touch $@

setup: stack $(VENV)/.installed

run: setup
	@$(VENV)/bin/prune-pipeline run-local$(if $(OUTPUT_DIR), --output-dir $(OUTPUT_DIR))

test: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
	$(VENV)/bin/python -m pytest -q -n 2 tests  # two workers: one per core of these machines

# The unit tier: no pipeline, no Beam, no subprocess, no trained-and-saved baseline (tests/conftest.py).
unit: setup
	$(VENV)/bin/python -m pytest -q -n 2 -m "not integration" tests

bench: setup
	$(VENV)/bin/python bench/digits_pruning.py --seeds 3

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# The docs site (mkdocs.yml, docs/) into build/site; --strict: every warning, a broken link or anchor
# included, fails it. Its tools are setup.py's `docs` extra, added to the stack's venv on first use.
# NO_MKDOCS_2_WARNING: mkdocs-material's own banner about MkDocs 2.0, not this build's news.
$(VENV)/.docs-installed: $(VENV)/.installed setup.py
	@$(call quietly,$(VENV)/bin/pip install --cache-dir $(PIP_CACHE) -c $(CONSTRAINTS) -e '$(DOCS_EXTRAS)')
	@touch $@

docs: setup $(VENV)/.docs-installed
	TF_CPP_MIN_LOG_LEVEL=3 PYTHONWARNINGS=ignore NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir build/site

# The configuration reference of docs/configuration.md, generated from the code (tests/test_docs_reference.py checks it).
docs-reference: setup
	$(VENV)/bin/python -m tfx_model_pruning_pipelines.reference --write docs/configuration.md
endif

# Needs a Docker engine (the development machines have none). Tag = the compiled pipeline's default image.
image:
	docker build --build-arg STACK=$(STACK) -t $(IMAGE_TAG) .

clean:
	rm -rf .venv .venv-1.21 .venv-1.21-py3.11 .venv-1.21-py3.12 runs .pytest_cache build
