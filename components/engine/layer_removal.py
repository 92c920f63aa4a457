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

from dataclasses import dataclass
from typing import Any, Optional

import tensorflow as tf
import tf_keras as keras

from components.engine.config import LayerRemovalConfig


@dataclass(frozen=True)
class Candidate:
    kind: str  # "layer" or "block"
    name: str  # the bypassed layer, or the Add that closes the block
    bypass: tuple[tuple[str, str], ...]  # (output tensor id, replacement tensor id)

    def describe(self) -> str:
        return f"{self.kind} {self.name}"


def _nodes(model: keras.Model):
    for depth in sorted(model._nodes_by_depth, reverse=True):
        yield from model._nodes_by_depth[depth]


def _shape(tensor) -> tuple:
    return tuple(tensor.shape[1:])


def find_candidates(model: keras.Model) -> list[Candidate]:
    """Removals that keep every shape in ``model`` valid."""
    calls: dict[str, int] = {}
    producer_of: dict[str, Any] = {}
    for node in _nodes(model):
        calls[node.layer.name] = calls.get(node.layer.name, 0) + 1
        for tensor_id in node.flat_output_ids:
            producer_of[tensor_id] = node
    output_ids = {str(id(t)) for t in model.outputs}
    candidates = []
    for node in _nodes(model):
        layer = node.layer
        if isinstance(layer, keras.layers.InputLayer) or calls[layer.name] > 1:
            continue
        outputs = tf.nest.flatten(node.outputs)
        if any(tensor_id in output_ids for tensor_id in node.flat_output_ids):
            continue
        if isinstance(layer, keras.layers.Add) and len(node.flat_input_ids) == 2:
            first, second = node.flat_input_ids
            for skip, branch in ((first, second), (second, first)):
                if _is_ancestor(skip, branch, producer_of):
                    candidates.append(Candidate("block", layer.name, ((node.flat_output_ids[0], skip),)))
                    break
            continue
        if layer.weights and len(node.flat_input_ids) == 1 and len(outputs) == 1:
            if _shape(node.keras_inputs[0]) == _shape(outputs[0]):
                candidates.append(Candidate("layer", layer.name, ((node.flat_output_ids[0], node.flat_input_ids[0]),)))
    return candidates


def _is_ancestor(ancestor_id: str, tensor_id: str, producer_of: dict[str, Any]) -> bool:
    frontier, seen = [tensor_id], set()
    while frontier:
        current = frontier.pop()
        if current == ancestor_id:
            return True
        if current in seen or current not in producer_of:
            continue
        seen.add(current)
        frontier.extend(producer_of[current].flat_input_ids)
    return False


def without(model: keras.Model, candidate: Candidate) -> keras.Model:
    """A new, independent model with ``candidate`` removed (weights copied)."""
    bypass = dict(candidate.bypass)
    new_inputs = [keras.Input(shape=_shape(t), dtype=t.dtype, name=t._keras_history.layer.name) for t in model.inputs]
    computed: dict[str, tf.Tensor] = {str(id(t)): n for t, n in zip(model.inputs, new_inputs, strict=True)}
    for node in _nodes(model):
        if isinstance(node.layer, keras.layers.InputLayer):
            continue
        if all(tensor_id in bypass for tensor_id in node.flat_output_ids):
            for tensor_id in node.flat_output_ids:
                if bypass[tensor_id] in computed:
                    computed[tensor_id] = computed[bypass[tensor_id]]
            continue
        if any(tensor_id not in computed for tensor_id in node.flat_input_ids):
            continue  # only reachable through the removed branch
        uses = node.flat_input_ids
        args, kwargs = node.map_arguments({i: [computed[i]] * uses.count(i) for i in uses})
        outputs = tf.nest.flatten(node.layer(*args, **kwargs))
        computed.update(zip(node.flat_output_ids, outputs, strict=True))
    inputs = tf.nest.pack_sequence_as(model._nested_inputs, new_inputs)
    outputs = tf.nest.pack_sequence_as(model._nested_outputs, [computed[str(id(t))] for t in model.outputs])
    shared = keras.Model(inputs, outputs, name=model.name)
    independent = keras.models.clone_model(shared)
    independent.set_weights(shared.get_weights())
    return independent


def _compile_like(model: keras.Model, template: keras.Model, learning_rate: float) -> None:
    from components.engine.saved_model import compiled_metrics

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate), loss=template.loss, metrics=compiled_metrics(template)
    )


def _score(model: keras.Model, dataset: tf.data.Dataset, metric: str) -> float:
    return float(model.evaluate(dataset, return_dict=True, verbose=0)[metric])


def remove_layers(
    model: keras.Model,
    config: LayerRemovalConfig,
    train_dataset: tf.data.Dataset,
    eval_dataset: tf.data.Dataset,
    metric: Optional[str] = None,
) -> tuple[keras.Model, dict[str, Any]]:
    """Greedily removes layers/blocks while ``metric`` stays within ``config.tolerance``.

    ``metric`` is a name from ``model.evaluate`` (default: the first compiled metric, higher is
    better; ``"loss"`` is lower-is-better). Returns the final model and the step report.
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

    current, steps = model, []
    while len(steps) < config.max_removals:
        candidates = find_candidates(current)
        if not candidates:
            steps.append({"stop": "no candidate left"})
            break
        trials = []
        for candidate in candidates:
            trial = without(current, candidate)
            _compile_like(trial, model, config.learning_rate)
            trials.append((worse_by(_score(trial, eval_dataset, metric)), candidate, trial))
        before_fine_tune, candidate, trial = min(trials, key=lambda t: t[0])
        if config.fine_tune_steps:
            trial.fit(train_dataset.repeat(), steps_per_epoch=config.fine_tune_steps, epochs=1, verbose=0)
        after = worse_by(_score(trial, eval_dataset, metric))
        kept = after <= config.tolerance + 1e-9
        steps.append(
            {
                "removed": candidate.describe(),
                "candidates": len(candidates),
                "drop_before_fine_tune": before_fine_tune,
                "drop_after_fine_tune": after,
                "params": int(trial.count_params()),
                "kept": kept,
            }
        )
        if not kept:
            break
        current = trial
    return current, {
        "metric": metric,
        "baseline": baseline,
        "tolerance": config.tolerance,
        "steps": steps,
        "removed": [s["removed"] for s in steps if s.get("kept")],
        "params_before": int(model.count_params()),
        "params_after": int(current.count_params()),
    }
