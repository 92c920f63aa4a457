"""Greedy removal of whole layers and residual blocks (the seed's "Example 2", done right).

Candidates are only removals that keep every shape valid: a layer with weights whose output
has its input's shape (it is bypassed), and a residual block ``Add([skip, branch])`` whose
branch derives from its skip (the block collapses to the skip path). At each step every
candidate is tried, the one that hurts the validation metric least is removed, the model is
fine-tuned briefly, and the removal is kept only while the metric stays within ``tolerance``
of the original model's; otherwise it is rolled back and the search stops. Every step is
reported.
"""

from __future__ import annotations

from typing import Optional

import tensorflow as tf

from tfx_model_pruning.engine.config import LayerRemovalConfig
from tfx_model_pruning.engine.graph import Model, keras_of
from tfx_model_pruning.engine.graph_edit import model_without, removal_candidates
from tfx_model_pruning.engine.results import LayerRemovalResult, RemovalStep
from tfx_model_pruning.engine.saved_model import compiled_metrics


def _compile_like(model: Model, template: Model, learning_rate: float) -> None:
    model.compile(
        optimizer=keras_of(model).optimizers.Adam(learning_rate), loss=template.loss, metrics=compiled_metrics(template)
    )


def _score(model: Model, dataset: tf.data.Dataset, metric: str) -> float:
    return float(model.evaluate(dataset, return_dict=True, verbose=0)[metric])


def remove_layers(
    model: Model,
    config: LayerRemovalConfig,
    train_dataset: tf.data.Dataset,
    eval_dataset: tf.data.Dataset,
    metric: Optional[str] = None,
) -> tuple[Model, LayerRemovalResult]:
    """Greedily removes layers/blocks while ``metric`` stays within ``config.tolerance``.

    ``metric`` is a name from ``model.evaluate`` (default: the first compiled metric, higher is
    better; ``"loss"`` is lower-is-better). Returns the final model and every step taken.
    """
    if getattr(model, "loss", None) is None:
        raise ValueError("layer removal evaluates and fine-tunes: the model needs its compiled loss")
    _compile_like(model, model, config.learning_rate)
    results = model.evaluate(eval_dataset, return_dict=True, verbose=0)
    metric = metric or next((name for name in results if name != "loss"), "loss")
    higher_is_better = metric != "loss"
    baseline = float(results[metric])

    def worse_by(value: float) -> float:
        return (baseline - value) if higher_is_better else (value - baseline)

    current, steps, stop_reason = model, [], f"max_removals ({config.max_removals}) reached"
    while len(steps) < config.max_removals:
        candidates = removal_candidates(current)
        if not candidates:
            stop_reason = "no candidate left"
            break
        trials = []
        for candidate in candidates:
            trial = model_without(current, candidate)
            _compile_like(trial, model, config.learning_rate)
            trials.append((worse_by(_score(trial, eval_dataset, metric)), candidate, trial))
        before_fine_tune, candidate, trial = min(trials, key=lambda t: t[0])
        if config.fine_tune_steps:
            trial.fit(train_dataset.repeat(), steps_per_epoch=config.fine_tune_steps, epochs=1, verbose=0)
        after = worse_by(_score(trial, eval_dataset, metric))
        kept = after <= config.tolerance + 1e-9
        steps.append(
            RemovalStep(
                removed=candidate.describe(),
                candidates=len(candidates),
                drop_before_fine_tune=before_fine_tune,
                drop_after_fine_tune=after,
                params=int(trial.count_params()),
                kept=kept,
            )
        )
        if not kept:
            stop_reason = f"removing {candidate.describe()} dropped {metric} beyond the tolerance; rolled back"
            break
        current = trial
    return current, LayerRemovalResult(
        metric=metric,
        baseline=baseline,
        tolerance=config.tolerance,
        steps=steps,
        stop_reason=stop_reason,
        params_before=int(model.count_params()),
        params_after=int(current.count_params()),
    )
