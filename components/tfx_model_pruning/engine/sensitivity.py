"""Sensitivity analysis: how much each layer can be pruned, and a per-layer allocation from it.

Each prunable layer is pruned alone (by magnitude) at several sparsities and the model's loss
is measured on a sample of held-out examples. From those curves a greedy allocation meets a
global parameter budget with the least predicted loss: repeatedly take the next sparsity step
of the layer whose step costs the least loss per parameter removed. Structured pruning
allocates per channel family with the same curves (``structured.structured_allocation``).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import tensorflow as tf
from matplotlib.figure import Figure

from tfx_model_pruning.engine.graph import keras_of
from tfx_model_pruning.engine.masks import PrunableWeight, keep_largest
from tfx_model_pruning.engine.results import Curve, SensitivityResult


class BudgetError(ValueError):
    """The requested budget cannot be met with the allowed sparsities."""


def sample_loss(model: Any, sample) -> float:
    features, labels = sample
    loss_fn = model.loss if not isinstance(model.loss, str) else keras_of(model).losses.get(model.loss)
    return float(loss_fn(labels, model(features, training=False)))


def sensitivity_curves(
    model: Any, weights: Sequence[PrunableWeight], levels: Sequence[float], sample
) -> tuple[float, list[Curve]]:
    """Loss of the model with each targeted layer pruned alone at each level (others dense)."""
    dense_loss = sample_loss(model, sample)
    curves = []
    for weight in weights:
        if weight.protected:
            continue
        original = weight.variable.numpy()
        losses = []
        for level in levels:
            weight.variable.assign(original * keep_largest(np.abs(original), level))
            losses.append(sample_loss(model, sample))
        weight.variable.assign(original)
        curves.append(Curve(weight.key, int(original.size), list(levels), losses))
    return dense_loss, curves


def allocate(curves: list[Curve], dense_loss: float, target_sparsity: float) -> dict[str, float]:
    """Per-layer sparsities whose parameter-weighted mean reaches ``target_sparsity``.

    Raises:
      BudgetError: even every layer at its highest level would not reach the target.
    """
    total = sum(c.params for c in curves)
    most = sum(c.params * max(c.levels) for c in curves) / total
    if most + 1e-9 < target_sparsity:
        raise BudgetError(
            f"target sparsity {target_sparsity} cannot be met: with every layer at its highest level "
            f"({max(curves[0].levels)}) the pruned layers reach {most:.4f}"
        )
    position = {c.key: -1 for c in curves}  # index into levels; -1 = dense
    removed = 0.0
    while removed / total + 1e-12 < target_sparsity:
        best, best_cost = None, np.inf
        for curve in curves:
            index = position[curve.key]
            if index + 1 >= len(curve.levels):
                continue
            level_before = curve.levels[index] if index >= 0 else 0.0
            loss_before = curve.losses[index] if index >= 0 else dense_loss
            params = (curve.levels[index + 1] - level_before) * curve.params
            cost = max(curve.losses[index + 1] - loss_before, 0.0) / max(params, 1e-12)
            if cost < best_cost:
                best, best_cost = curve, cost
        index = position[best.key]
        level_before = best.levels[index] if index >= 0 else 0.0
        removed += (best.levels[index + 1] - level_before) * best.params
        position[best.key] = index + 1
    return {c.key: (c.levels[position[c.key]] if position[c.key] >= 0 else 0.0) for c in curves}


def plot_curves(curves: list[Curve], dense_loss: float, allocation: dict[str, float], path: str) -> None:
    """Writes a PNG of every layer's loss-vs-sparsity curve, marking the allocated sparsity."""
    figure = Figure(figsize=(7, 4.5))  # not pyplot: no global backend switched under a notebook user
    axes = figure.subplots()
    for curve in curves:
        line = axes.plot([0.0] + curve.levels, [dense_loss] + curve.losses, marker="o", label=curve.key)[0]
        chosen = allocation.get(curve.key, 0.0)
        if chosen > 0:
            axes.plot([chosen], [curve.losses[curve.levels.index(chosen)]], marker="*", markersize=14,
                      color=line.get_color())  # fmt: skip
    axes.axhline(dense_loss, color="grey", linestyle=":", label="dense")
    axes.set_xlabel("sparsity of this layer alone")
    axes.set_ylabel("loss on held-out sample")
    axes.set_title("Pruning sensitivity (★ = allocated)")
    axes.legend(fontsize="small")
    figure.tight_layout()
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "wb") as f:
        figure.savefig(f, format="png", dpi=110)


def sensitivity_report(dense_loss: float, curves: list[Curve], allocation: dict[str, float]) -> SensitivityResult:
    return SensitivityResult(dense_loss, curves, allocation)
