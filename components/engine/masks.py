"""Keep-masks over arrays of scores: the arithmetic every pruning method shares.

A mask is a boolean array of the weight's shape, True where the weight is kept.
"""

from __future__ import annotations

import numpy as np


def keep_largest(values: np.ndarray, sparsity: float) -> np.ndarray:
    """Keeps all but the ``round(sparsity * size)`` smallest ``values``; ties broken by position."""
    flat = values.ravel()
    n_pruned = int(round(sparsity * flat.size))
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
