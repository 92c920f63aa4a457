# Component image for the pruning pipeline (local Beam, or Kubeflow Pipelines via TFX).
# The pinned stack is installed in its own layer, before the sources, so code edits rebuild in seconds.
FROM python:3.10.13-slim-bookworm

ENV TF_USE_LEGACY_KERAS=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/pruning

# Dependencies only: setup.py with empty packages resolves exactly the pinned set.
COPY constraints.txt setup.py README.md ./
RUN mkdir -p components pipelines \
    && touch components/__init__.py pipelines/__init__.py \
    && pip install 'pip==26.3' 'setuptools<70' wheel \
    && pip install -c constraints.txt . \
    && pip uninstall -y tfx-model-pruning \
    && rm -rf components pipelines build *.egg-info

COPY components ./components
COPY pipelines ./pipelines
RUN pip install --no-deps -c constraints.txt . && rm -rf build *.egg-info && pip check

RUN useradd --create-home --uid 1000 pruner
USER pruner

CMD ["prune-pipeline", "--help"]
