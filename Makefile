# One entry point for setup, the main job, the tests and the benchmark.
# The interpreter is Python 3.10 (.python-version); the venv is pinned by constraints.txt.

VENV ?= .venv
PYTHON_310 ?= $(shell pyenv which python 2>/dev/null || command -v python3.10)
PIP_CACHE ?= $(HOME)/.cache/pip
# Empty: run-local's own default, runs/<pipeline name> (runs/penguin-pruning for the penguin preset).
OUTPUT_DIR ?=
VERSION := $(shell sed -n 's/.*version="\([^"]*\)".*/\1/p' setup.py)
IMAGE_TAG ?= tfx-model-pruning:$(VERSION)

.PHONY: setup run test unit bench lint clean image

$(VENV)/.installed: setup.py constraints.txt
	@test -n "$(PYTHON_310)" || { echo "Python 3.10 not found: install it (pyenv install 3.10.13) or set PYTHON_310" >&2; exit 1; }
	@$(PYTHON_310) -c 'import sys; assert sys.version_info[:2] == (3, 10), sys.version' \
	  || { echo "$(PYTHON_310) is not Python 3.10" >&2; exit 1; }
	test -x $(VENV)/bin/python || $(PYTHON_310) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --cache-dir $(PIP_CACHE) 'pip==26.3' 'setuptools<70' wheel
	$(VENV)/bin/pip install --quiet --cache-dir $(PIP_CACHE) -c constraints.txt -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

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

# Needs a Docker engine (the development machines have none). Tag = the compiled pipeline's default image.
image:
	docker build -t $(IMAGE_TAG) .

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) runs .pytest_cache
