"""Prunable weights and their keep-masks: the arithmetic every pruning method shares.

A mask is a boolean array of the weight's shape, True where the weight is kept; it is keyed by
the weight's ``key`` (``layer/path::attribute``), which is stable across save and load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional

import numpy as np
import tensorflow as tf

from tfx_model_pruning.engine.graph import leaf_layers, prunable_variables
from tfx_model_pruning.engine.restored import is_restored, kernel_variables


@dataclass
class PrunableWeight:
    """One prunable variable; ``key`` is stable across save/load (``layer/path::attribute``)."""

    key: str
    layer_name: str
    attribute: str
    variable: tf.Variable
    protected_by: Optional[str] = None

    @property
    def protected(self) -> bool:
        return self.protected_by is not None


def iter_prunable_weights(model: Any) -> Iterator[PrunableWeight]:
    """Every prunable weight of ``model`` (nested models and wrapped layers included), unprotected.

    A model restored without its Keras classes names its kernels by variable name instead.
    """
    if is_restored(model):
        for layer_name, attribute, variable in kernel_variables(model):
            yield PrunableWeight(f"{layer_name}::{attribute}", layer_name, attribute, variable)
        return
    for path, layer in leaf_layers(model):
        for attribute, variable in prunable_variables(layer):
            yield PrunableWeight(f"{path}::{attribute}", path, attribute, variable)


def apply_masks(weights: Iterable[PrunableWeight], masks: dict[str, np.ndarray]) -> None:
    """Zeroes every masked-out entry in place."""
    for weight in weights:
        mask = masks.get(weight.key)
        if mask is not None:
            weight.variable.assign(weight.variable.numpy() * mask.astype(weight.variable.dtype.as_numpy_dtype))


def keep_largest(values: np.ndarray, sparsity: float) -> np.ndarray:
    """Keeps all but the ``ceil(sparsity * size)`` smallest ``values``; ties broken by position.

    Rounding up means the measured sparsity is never below the target, so a release gate whose
    ``min_sparsity`` is that target cannot refuse the model by a rounding (0.6 of 20,001 weights).
    """
    flat = values.ravel()
    n_pruned = min(flat.size, int(math.ceil(sparsity * flat.size - 1e-9)))
    keep = np.ones(flat.size, dtype=bool)
    if n_pruned > 0:
        keep[np.argpartition(flat, n_pruned - 1, kind="introselect")[:n_pruned]] = False
    return keep.reshape(values.shape)


def n_of_m_mask(magnitudes: np.ndarray, n: int, m: int) -> np.ndarray:
    """Keeps the N largest of every M consecutive entries along the input axis (-2).

    When the input size is not a multiple of M, the last, shorter run also keeps its N largest.
    """
    moved = np.moveaxis(magnitudes, -2, -1)
    size = moved.shape[-1]
    padding = (-size) % m
    # Padding ranks below every real magnitude (which are >= 0), so it is dropped first.
    padded = np.pad(moved, [(0, 0)] * (moved.ndim - 1) + [(0, padding)], constant_values=-1.0)
    runs = padded.reshape(*padded.shape[:-1], -1, m)
    keep = np.zeros(runs.shape, dtype=bool)
    np.put_along_axis(keep, np.argsort(runs, axis=-1, kind="stable")[..., m - n :], True, axis=-1)
    keep = keep.reshape(padded.shape)[..., :size]
    return np.moveaxis(keep, -1, -2)
