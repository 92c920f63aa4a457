# Component image for the pruning pipeline (local Beam, or Kubeflow Pipelines via TFX).
# Two stacks, as in setup.py and stacks/: STACK=1.21 (default: TFX 1.21, TF 2.21, Python 3.13 on
# Debian 13, whose glibc 2.41 its ml-metadata and TFDV wheels need) or STACK=1.16 (TFX 1.16,
# TF 2.16, Python 3.10 on Debian 12):
#   docker build -t tfx-model-pruning:0.1.0 .
#   docker build --build-arg STACK=1.16 -t tfx-model-pruning:0.1.0-tfx1.16 .
# The pinned stack is installed in its own layer, before the sources, so code edits rebuild in seconds.
ARG STACK=1.21

FROM python:3.13-slim-trixie AS base-1.21
# TFDV needs pyfarmhash, which has no wheel for Python 3.13 and compiles.
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*

FROM python:3.10.13-slim-bookworm AS base-1.16

FROM base-${STACK}
ARG STACK
ENV TF_USE_LEGACY_KERAS=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/pruning

# Dependencies only: setup.py with empty packages resolves exactly the pinned set.
COPY stacks/tfx-${STACK}.txt ./constraints.txt
COPY setup.py README.md ./
RUN mkdir -p components/tfx_model_pruning pipelines/tfx_model_pruning_pipelines \
    && touch components/tfx_model_pruning/__init__.py pipelines/tfx_model_pruning_pipelines/__init__.py \
    && pip install 'pip==26.3' wheel "$(grep -E '^setuptools==' constraints.txt || echo 'setuptools<70')" \
    && pip install -c constraints.txt . \
    && pip uninstall -y tfx-model-pruning \
    && rm -rf components pipelines build *.egg-info

COPY components ./components
COPY pipelines ./pipelines
RUN pip install --no-deps -c constraints.txt . && rm -rf build *.egg-info && pip check

RUN useradd --create-home --uid 1000 pruner
USER pruner

CMD ["prune-pipeline", "--help"]
