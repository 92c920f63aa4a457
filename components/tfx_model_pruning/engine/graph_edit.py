"""Models rebuilt from the layer graph: what can be removed, and the model without it.

- the layer-removal candidates, a layer or a residual block whose removal keeps every shape
  valid, and the model without one (``removal_candidates``, ``model_without``);
- a clone that shares no layer with its original (``independent_clone``);
- nested models flattened into one graph (``flatten_nested``).

The graph is read through ``graph`` (its per-generation readers); nothing here touches Keras internals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras as keras3
import tensorflow as tf
import tf_keras as keras

from tfx_model_pruning.engine.graph import (
    Keras3AddOperation,
    Layer,
    LayerCall,
    Model,
    attached_layers,
    batchless_shape,
    call_counts,
    generation,
    in_layer_graph,
    is_input_layer,
    is_keras_model,
    is_layer,
    is_layer_graph,
    keras_of,
    layer_calls,
    model_layers,
    tensor_id,
)


@dataclass(frozen=True)
class RemovalCandidate:
    """A layer or residual block whose removal keeps every shape valid."""

    kind: str  # "layer" or "block"
    name: str  # the bypassed layer, or the Add that closes the block
    bypass: tuple[tuple[str, str], ...]  # (output tensor id, replacement tensor id)

    def describe(self) -> str:
        return f"{self.kind} {self.name}"


def _is_add(layer: Layer) -> bool:
    return isinstance(layer, (keras.layers.Add, keras3.layers.Add, Keras3AddOperation))


def removal_candidates(model: Model) -> list[RemovalCandidate]:
    """A weighted layer whose output has its input's shape (bypassed), or ``Add([skip, branch])``
    whose branch derives from its skip (collapsed to the skip path)."""
    calls = layer_calls(model)
    counts = call_counts(calls)
    producer_of = {tensor: call for call in calls for tensor in call.output_ids}
    output_ids = {tensor_id(t) for t in model.outputs}
    candidates = []
    for call in calls:
        layer = call.layer
        if is_input_layer(layer) or counts[layer.name] > 1:
            continue
        if any(output in output_ids for output in call.output_ids):
            continue
        if _is_add(layer) and len(call.input_ids) == 2:
            first, second = call.input_ids
            for skip, branch in ((first, second), (second, first)):
                if _is_ancestor(skip, branch, producer_of):
                    candidates.append(RemovalCandidate("block", layer.name, ((call.output_ids[0], skip),)))
                    break
            continue
        if getattr(layer, "weights", None) and len(call.input_ids) == 1 and len(call.output_tensors) == 1:
            if batchless_shape(call.input_tensors[0]) == batchless_shape(call.output_tensors[0]):
                candidates.append(RemovalCandidate("layer", layer.name, ((call.output_ids[0], call.input_ids[0]),)))
    return candidates


def _is_ancestor(ancestor_id: str, tensor: str, producer_of: dict[str, LayerCall]) -> bool:
    frontier, seen = [tensor], set()
    while frontier:
        current = frontier.pop()
        if current == ancestor_id:
            return True
        if current in seen or current not in producer_of:
            continue
        seen.add(current)
        frontier.extend(producer_of[current].input_ids)
    return False


def _fresh_inputs(model: Model) -> tuple[list[Any], dict[str, Any]]:
    """New ``Input`` tensors like the model's, and a map from the model's input ids to them."""
    reader = generation(model)
    new_inputs = [reader.input_like(t) for t in model.inputs]
    return new_inputs, {tensor_id(t): n for t, n in zip(model.inputs, new_inputs, strict=True)}


def _independent_model(model: Model, new_inputs: list[Any], computed: dict[str, Any]) -> Model:
    """The functional model from ``new_inputs`` to the replayed outputs, with weights of its own."""
    reader = generation(model)
    inputs = tf.nest.pack_sequence_as(reader.nested_inputs(model), new_inputs)
    outputs = tf.nest.pack_sequence_as(reader.nested_outputs(model), [computed[tensor_id(t)] for t in model.outputs])
    shared = reader.keras.Model(inputs, outputs, name=model.name)
    return independent_clone(shared)


def independent_clone(model: Model) -> Model:
    """``clone_model`` with the weights copied layer by layer: a clone may order its layers, and
    so ``get_weights()``, differently (two branches from one input), so a whole-model copy can
    put one layer's weights into another."""
    clone = keras_of(model).models.clone_model(model)
    for layer in clone.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return clone


def model_without(model: Model, candidate: RemovalCandidate) -> Model:
    """A new, independent model with ``candidate`` removed (weights copied)."""
    bypass = dict(candidate.bypass)
    new_inputs, computed = _fresh_inputs(model)
    for call in layer_calls(model):
        if is_input_layer(call.layer):
            continue
        if all(output in bypass for output in call.output_ids):
            for output in call.output_ids:
                if bypass[output] in computed:
                    computed[output] = computed[bypass[output]]
            continue
        if any(tensor not in computed for tensor in call.input_ids):
            continue  # only reachable through the removed branch
        computed.update(zip(call.output_ids, call.replay(computed), strict=True))
    return _independent_model(model, new_inputs, computed)


def nested_graph_models(model: Model) -> list[Model]:
    """The functional/Sequential models called inside ``model`` as layers (ConvNeXt's blocks)."""
    return [
        layer for layer in model.layers if is_keras_model(layer) and is_layer_graph(layer) and in_layer_graph(layer)
    ]


def flatten_nested(model: Model) -> Model:
    """``model`` itself when it nests no functional/Sequential model; otherwise a new, independent
    model computing the same thing with every nested model's layers called at its top level.

    A nested layer whose name is already taken is renamed ``<nested model>_<layer>``. Layers set
    as attributes (a tf.Transform layer) and the compiled loss carry over.
    """
    if not is_layer_graph(model) or not nested_graph_models(model):
        return model
    nested = nested_graph_models(model)
    taken = {layer.name for layer in model_layers(model) if not any(layer is inner for inner in nested)}
    renamed: list[tuple[Layer, Layer]] = []

    def replay_into(graph_model: Model, computed: dict[str, Any], prefix: str) -> None:
        for call in layer_calls(graph_model):
            layer = call.layer
            if is_input_layer(layer):
                continue
            if is_keras_model(layer) and is_layer_graph(layer):
                inner = {tensor_id(t): computed[i] for t, i in zip(layer.inputs, call.input_ids, strict=True)}
                replay_into(layer, inner, f"{prefix}{layer.name}_")
                computed.update(zip(call.output_ids, [inner[tensor_id(t)] for t in layer.outputs], strict=True))
                continue
            stand_in = None
            if prefix and layer.name in taken:
                stand_in = type(layer).from_config({**layer.get_config(), "name": f"{prefix}{layer.name}"})
                if is_layer(layer):
                    renamed.append((stand_in, layer))
            if prefix:
                taken.add(layer.name)
            computed.update(zip(call.output_ids, call.replay(computed, stand_in), strict=True))

    new_inputs, computed = _fresh_inputs(model)
    replay_into(model, computed, "")
    for stand_in, original in renamed:
        stand_in.set_weights(original.get_weights())
    flat = _independent_model(model, new_inputs, computed)
    for attribute, layer in attached_layers(model).items():
        setattr(flat, attribute, layer)
    if getattr(model, "loss", None) is not None:
        flat.compile(loss=model.loss)
    return flat
