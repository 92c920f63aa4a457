"""Prune a SavedModel on disk into a new SavedModel with the same serving signatures."""

from __future__ import annotations

import tempfile
from typing import Any

import numpy as np

from components.engine.config import PruningConfig
from components.engine.magnitude import find_prunable_weights, prune_model
from components.engine.report import directory_size, gzip_size, layer_rows, weight_stats
from components.engine.saved_model import (
    load_keras_model,
    save_keras_model,
    verify_signatures_preserved,
)


def size_stats(model_dir: str) -> dict[str, int]:
    return {"saved_model_bytes": directory_size(model_dir), "gzip_bytes": gzip_size(model_dir)}


def prune_saved_model(input_path: str, output_dir: str, config: PruningConfig) -> dict[str, Any]:
    """Prunes the Keras SavedModel at ``input_path`` into ``output_dir``; returns the report.

    Example::

        report = prune_saved_model("trainer/model/7", "/tmp/pruned", PruningConfig(target_sparsity=0.8))
        report["after"]["masked_sparsity"]  # 0.8
    """
    loaded = load_keras_model(input_path)
    weights = find_prunable_weights(loaded.model, config)  # fails on a bad config before any work
    nonzeros_before = {w.key: int(np.count_nonzero(w.variable.numpy())) for w in weights}
    before = weight_stats(loaded.model, loaded.masks or None)
    # Sizes are compared with the dense model saved exactly as the pruned one will be, so the
    # difference is what pruning bought and not, say, optimizer state the input happened to carry.
    with tempfile.TemporaryDirectory() as dense_dir:
        save_keras_model(loaded.model, dense_dir, loaded.signatures, loaded.masks)
        before.update(size_stats(dense_dir))
    before["input_saved_model_bytes"] = directory_size(loaded.path)

    weights, masks = prune_model(loaded.model, config, loaded.masks)
    save_keras_model(loaded.model, output_dir, loaded.signatures, masks)
    verify_signatures_preserved(loaded.path, output_dir)

    return {
        "config": config.model_dump(),
        "input_model": loaded.path,
        "output_model": output_dir,
        "signatures": sorted(loaded.signatures),
        "before": before,
        "after": {**weight_stats(loaded.model, masks), **size_stats(output_dir)},
        "layers": layer_rows(weights, nonzeros_before),
    }
