"""Progress and key figures, reported through one standard logger so any front end can show them.

The engine and the executors log here; ``prune-pipeline`` draws the records as one line per
component and a progress bar on a terminal, a notebook or Kubeflow's pod log shows them as plain
log lines. Nothing here prints.

    from tfx_model_pruning.engine import progress
    progress.figure("sparsity 0.80")           # the key figure of the running step
    progress.advance(3, 20, "epoch 3/20")      # a step of a longer job
"""

from __future__ import annotations

import logging

LOGGER_NAME = "tfx_model_pruning.progress"
logger = logging.getLogger(LOGGER_NAME)


def figure(text: str) -> None:
    """The running step's key figure (what its one line on the terminal ends with)."""
    logger.info(text, extra={"figure": text})


def advance(done: int, total: int, text: str) -> None:
    """``done`` of ``total`` units of the running step are finished."""
    logger.info(text, extra={"progress": (done, total)})
