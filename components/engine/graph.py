"""The Keras layer graph, read in one place.

Everything else in the engine sees layers, their calls and tensor ids through this module; it
is the only one that touches tf-keras internals (``_nodes_by_depth``, ``_keras_history``,
nodes' ``flat_input_ids`` and ``map_arguments``), so a Keras upgrade is fixed here.

It holds:
- the calls of a functional/Sequential model in topological order (``layer_calls``);
- layers outside the graph (``attached_layers``), wrapped and nested layers (``leaf_layers``),
  the last weighted layers before the outputs (``output_weight_layers``);
- the layer-removal candidates and the model without one (``removal_candidates``,
  ``model_without``);
- the channel graph structured pruning works on (``ChannelGraph``, ``analyse_channels``),
  driven by a handler per layer that the caller supplies (see ``layer_handlers``);
- nested models flattened into one graph (``flatten_nested``), a call's argument names
  (``LayerCall.input_arguments``) and MultiHeadAttention's private projection layers
  (``attention_projections``);
- ``TFOpLambda``, the private class Keras records a TensorFlow op as (``x + y``), ConvNeXt's
  ``LayerScale`` and InceptionResNetV2's ``CustomScaleLayer`` (``x + r * scale``), which
  tf-keras defines only inside its application modules.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import tensorflow as tf
import tf_keras as keras
from tf_keras.src.applications.convnext import LayerScale as ConvNeXtLayerScale  # noqa: F401  (for layer_handlers)
from tf_keras.src.applications.inception_resnet_v2 import (  # noqa: F401  (for layer_handlers)
    CustomScaleLayer as InceptionResNetScale,
)
from tf_keras.src.layers.core.tf_op_layer import TFOpLambda  # noqa: F401  (for layer_handlers)

from tfx_model_pruning.engine.restored import PRUNABLE_WEIGHT_ATTRIBUTES


def tensor_id(tensor: Any) -> str:
    """The id Keras nodes use for a symbolic tensor."""
    return str(id(tensor))


def producing_layer(tensor: Any) -> keras.layers.Layer:
    """The layer whose call made the symbolic ``tensor`` (an ``Input`` for a model input)."""
    return tensor._keras_history.layer


def is_layer_graph(model: Any) -> bool:
    """True for a functional or Sequential model, whose calls can be read and replayed."""
    return bool(getattr(model, "_is_graph_network", False))


def in_layer_graph(layer: keras.layers.Layer) -> bool:
    """False for a layer set as a model attribute but never called in the model's graph."""
    return bool(layer.inbound_nodes)


def _is_symbolic(value: Any) -> bool:
    return tf.is_tensor(value) and keras.backend.is_keras_tensor(value)


@dataclass(frozen=True)
class LayerCall:
    """One call of a layer in a model's graph: which tensors it reads and makes."""

    layer: keras.layers.Layer
    input_ids: tuple[str, ...]
    output_ids: tuple[str, ...]
    input_tensors: tuple[Any, ...]
    output_tensors: tuple[Any, ...]
    _node: Any = field(repr=False, compare=False)

    def constant_arguments(self) -> list[Any]:
        """The call's arguments that are not symbolic tensors (scalars, constants, options), ``name`` aside."""
        args = tf.nest.flatten(self._node.call_args)
        kwargs = {k: v for k, v in (self._node.call_kwargs or {}).items() if k != "name"}
        values = args + tf.nest.flatten(kwargs)
        return [value for value in values if not _is_symbolic(value)]

    def input_arguments(self) -> list[str]:
        """The argument each input id was passed as (``query``, ``value``, ``key`` for attention):
        positional arguments by the name ``call`` gives them, keyword arguments by keyword."""
        parameters = list(inspect.signature(self.layer.call).parameters)
        names: list[str] = []
        for position, argument in enumerate(self._node.call_args):
            name = parameters[position] if position < len(parameters) else f"arg{position}"
            names += [name for value in tf.nest.flatten(argument) if _is_symbolic(value)]
        kwargs = self._node.call_kwargs or {}
        for keyword in sorted(kwargs):  # the order tf.nest, and so the node's input ids, use
            names += [keyword for value in tf.nest.flatten(kwargs[keyword]) if _is_symbolic(value)]
        return names

    def replay(self, computed: dict[str, Any], layer: Optional[keras.layers.Layer] = None) -> list[Any]:
        """Calls the layer (or ``layer`` in its place) again on the tensors ``computed`` holds for
        this call's input ids."""
        uses = self._node.flat_input_ids
        args, kwargs = self._node.map_arguments({i: [computed[i]] * uses.count(i) for i in uses})
        return tf.nest.flatten((layer or self.layer)(*args, **kwargs))


def layer_calls(model: keras.Model) -> list[LayerCall]:
    """Every layer call of a functional/Sequential model, inputs first."""
    calls = []
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            outputs = node.outputs if isinstance(node.outputs, (list, tuple)) else [node.outputs]
            calls.append(
                LayerCall(
                    layer=node.layer,
                    input_ids=tuple(node.flat_input_ids),
                    output_ids=tuple(node.flat_output_ids),
                    input_tensors=tuple(tf.nest.flatten(node.keras_inputs)),
                    output_tensors=tuple(outputs),
                    _node=node,
                )
            )
    return calls


def call_counts(calls: list[LayerCall]) -> dict[str, int]:
    """How often each layer is called; a layer called twice shares its weights between calls."""
    counts: dict[str, int] = {}
    for call in calls:
        counts[call.layer.name] = counts.get(call.layer.name, 0) + 1
    return counts


def call_input_shapes(layer: keras.layers.Layer) -> list[tuple]:
    """Shapes of the tensors the layer's first call read (``MultiHeadAttention``'s query, value, key)."""
    node = layer.inbound_nodes[0]
    return [tuple(tensor.shape) for tensor in tf.nest.flatten(node.keras_inputs)]


def attention_projections(layer: keras.layers.MultiHeadAttention) -> tuple[keras.layers.Layer, ...]:
    """The query, key, value and output ``EinsumDense`` layers of a built MultiHeadAttention."""
    return layer._query_dense, layer._key_dense, layer._value_dense, layer._output_dense


def input_layer_names(model: keras.Model) -> list[str]:
    return [producing_layer(tensor).name for tensor in model.inputs]


def output_layer_names(model: keras.Model) -> list[str]:
    return [producing_layer(tensor).name for tensor in model.outputs]


def attached_layers(model: keras.Model) -> dict[str, keras.layers.Layer]:
    """Layers set as attributes of ``model`` but outside its layer graph, by attribute name.

    TFX's examples attach tf.Transform's layer this way (``model.tft_layer = ...``) so that the
    serving signatures, which call it, can be saved with the model.
    """
    outside = [layer for layer in model.layers if not in_layer_graph(layer)]
    return {
        name: value
        for name, value in vars(model).items()
        if not name.startswith("_") and any(value is layer for layer in outside)
    }


def wrapped_layers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """The layers a wrapper runs: ``Bidirectional``'s two directions, ``TimeDistributed``'s layer."""
    directions = [getattr(layer, name, None) for name in ("forward_layer", "backward_layer")]
    if all(isinstance(direction, keras.layers.Layer) for direction in directions):
        return directions  # Bidirectional also keeps the unbuilt template it was given as .layer
    inner = getattr(layer, "layer", None)
    return [inner] if isinstance(inner, keras.layers.Layer) and inner is not layer else []


def leaf_layers(model: keras.Model, prefix: str = "") -> Iterator[tuple[str, keras.layers.Layer]]:
    """``(path, layer)`` for every layer, descending into nested models and wrappers."""
    for layer in model.layers:
        path = f"{prefix}{layer.name}"
        if isinstance(layer, keras.Model):
            yield from leaf_layers(layer, prefix=f"{path}/")
        elif wrapped_layers(layer):
            for inner in wrapped_layers(layer):
                yield f"{path}/{inner.name}", inner
        else:
            yield path, layer


def prunable_variables(layer: keras.layers.Layer) -> Iterator[tuple[str, tf.Variable]]:
    """``(attribute, variable)`` for each matrix of connections the layer owns."""
    owners = [layer]
    if getattr(layer, "cell", None) is not None:  # RNN layers keep their kernels on the cell
        owners.append(layer.cell)
    for owner in owners:
        for attribute in PRUNABLE_WEIGHT_ATTRIBUTES:
            variable = getattr(owner, attribute, None)
            if isinstance(variable, tf.Variable) and variable.shape.rank and variable.shape.rank >= 2:
                yield attribute, variable


def _has_prunable_variables(layer: keras.layers.Layer) -> bool:
    return any(True for _ in prunable_variables(layer)) or any(
        any(True for _ in prunable_variables(inner)) for inner in wrapped_layers(layer)
    )


def output_weight_layers(model: keras.Model) -> set[str]:
    """Names of the last layers with prunable weights on each path to a model output."""
    found: set[str] = set()
    seen: set[int] = set()
    frontier = [producing_layer(tensor) for tensor in model.outputs]
    while frontier:
        layer = frontier.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if isinstance(layer, keras.Model):
            found |= output_weight_layers(layer)
            continue
        if _has_prunable_variables(layer):
            found.add(layer.name)
            continue
        for node in layer.inbound_nodes:
            inbound = node.inbound_layers
            frontier.extend(inbound if isinstance(inbound, (list, tuple)) else [inbound])
    return found


# Layer removal -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RemovalCandidate:
    """A layer or residual block whose removal keeps every shape valid."""

    kind: str  # "layer" or "block"
    name: str  # the bypassed layer, or the Add that closes the block
    bypass: tuple[tuple[str, str], ...]  # (output tensor id, replacement tensor id)

    def describe(self) -> str:
        return f"{self.kind} {self.name}"


def _shape(tensor) -> tuple:
    return tuple(tensor.shape[1:])


def removal_candidates(model: keras.Model) -> list[RemovalCandidate]:
    """A weighted layer whose output has its input's shape (bypassed), or ``Add([skip, branch])``
    whose branch derives from its skip (collapsed to the skip path)."""
    calls = layer_calls(model)
    counts = call_counts(calls)
    producer_of = {tensor: call for call in calls for tensor in call.output_ids}
    output_ids = {tensor_id(t) for t in model.outputs}
    candidates = []
    for call in calls:
        layer = call.layer
        if isinstance(layer, keras.layers.InputLayer) or counts[layer.name] > 1:
            continue
        if any(output in output_ids for output in call.output_ids):
            continue
        if isinstance(layer, keras.layers.Add) and len(call.input_ids) == 2:
            first, second = call.input_ids
            for skip, branch in ((first, second), (second, first)):
                if _is_ancestor(skip, branch, producer_of):
                    candidates.append(RemovalCandidate("block", layer.name, ((call.output_ids[0], skip),)))
                    break
            continue
        if layer.weights and len(call.input_ids) == 1 and len(call.output_tensors) == 1:
            if _shape(call.input_tensors[0]) == _shape(call.output_tensors[0]):
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


def _fresh_inputs(model: keras.Model) -> tuple[list[Any], dict[str, Any]]:
    """New ``Input`` tensors like the model's, and a map from the model's input ids to them."""
    new_inputs = [keras.Input(shape=_shape(t), dtype=t.dtype, name=producing_layer(t).name) for t in model.inputs]
    return new_inputs, {tensor_id(t): n for t, n in zip(model.inputs, new_inputs, strict=True)}


def _independent_model(model: keras.Model, new_inputs: list[Any], computed: dict[str, Any]) -> keras.Model:
    """The functional model from ``new_inputs`` to the replayed outputs, with weights of its own."""
    inputs = tf.nest.pack_sequence_as(model._nested_inputs, new_inputs)
    outputs = tf.nest.pack_sequence_as(model._nested_outputs, [computed[tensor_id(t)] for t in model.outputs])
    shared = keras.Model(inputs, outputs, name=model.name)
    return independent_clone(shared)


def independent_clone(model: keras.Model) -> keras.Model:
    """``clone_model`` with the weights copied layer by layer: a clone may order its layers, and
    so ``get_weights()``, differently (two branches from one input), so a whole-model copy can
    put one layer's weights into another."""
    clone = keras.models.clone_model(model)
    for layer in clone.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return clone


def model_without(model: keras.Model, candidate: RemovalCandidate) -> keras.Model:
    """A new, independent model with ``candidate`` removed (weights copied)."""
    bypass = dict(candidate.bypass)
    new_inputs, computed = _fresh_inputs(model)
    for call in layer_calls(model):
        if isinstance(call.layer, keras.layers.InputLayer):
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


def nested_graph_models(model: keras.Model) -> list[keras.Model]:
    """The functional/Sequential models called inside ``model`` as layers (ConvNeXt's blocks)."""
    return [
        layer
        for layer in model.layers
        if isinstance(layer, keras.Model) and is_layer_graph(layer) and in_layer_graph(layer)
    ]


def flatten_nested(model: keras.Model) -> keras.Model:
    """``model`` itself when it nests no functional/Sequential model; otherwise a new, independent
    model computing the same thing with every nested model's layers called at its top level.

    A nested layer whose name is already taken is renamed ``<nested model>_<layer>``. Layers set
    as attributes (a tf.Transform layer) and the compiled loss carry over.
    """
    if not is_layer_graph(model) or not nested_graph_models(model):
        return model
    nested = nested_graph_models(model)
    taken = {layer.name for layer in model.layers if not any(layer is inner for inner in nested)}
    renamed: list[tuple[keras.layers.Layer, keras.layers.Layer]] = []

    def replay_into(graph_model: keras.Model, computed: dict[str, Any], prefix: str) -> None:
        for call in layer_calls(graph_model):
            layer = call.layer
            if isinstance(layer, keras.layers.InputLayer):
                continue
            if isinstance(layer, keras.Model) and is_layer_graph(layer):
                inner = {tensor_id(t): computed[i] for t, i in zip(layer.inputs, call.input_ids, strict=True)}
                replay_into(layer, inner, f"{prefix}{layer.name}_")
                computed.update(zip(call.output_ids, [inner[tensor_id(t)] for t in layer.outputs], strict=True))
                continue
            stand_in = None
            if prefix and layer.name in taken:
                stand_in = type(layer).from_config({**layer.get_config(), "name": f"{prefix}{layer.name}"})
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


# Channel graph -------------------------------------------------------------------------------


class ChannelBarrier(Exception):
    """Raised by a layer handler for a call it cannot track channels through; says why."""


class UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def add(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, node: int) -> int:
        while self.parent[node] != node:
            self.parent[node] = self.parent[self.parent[node]]
            node = self.parent[node]
        return node

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass
class ChannelGraph:
    """Channel nodes of every tensor, who produces them, and which are frozen (and why).

    Every output channel of a producer is a node; nodes joined (``join``) are one removable
    unit; a frozen node freezes its whole unit.
    """

    tensor_channels: dict[str, list[int]] = field(default_factory=dict)
    node_producer: dict[int, tuple[str, int]] = field(default_factory=dict)  # node -> (layer, output index)
    frozen: dict[int, str] = field(default_factory=dict)
    barriers: dict[str, str] = field(default_factory=dict)
    approximate: dict[str, str] = field(default_factory=dict)  # layers a removal changes beyond disconnection
    layer_inputs: dict[str, list[str]] = field(default_factory=dict)
    layer_outputs: dict[str, list[str]] = field(default_factory=dict)
    producers: list[str] = field(default_factory=list)
    channelwise: set[str] = field(default_factory=set)  # output channel i depends on input channel i only
    tensors: dict[str, Any] = field(default_factory=dict)
    consumers: dict[str, list[str]] = field(default_factory=dict)
    sets: UnionFind = field(default_factory=UnionFind)
    # How many units each producer key makes: a producer's output width, or a layer's count of
    # hidden units (``"<layer>:heads"``: attention heads no tensor carries one by one).
    unit_counts: dict[str, int] = field(default_factory=dict)
    hidden_nodes: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # layer -> kind -> nodes
    layer_arguments: dict[str, list[str]] = field(default_factory=dict)  # per input id: query, value, ...

    def new_channels(self, count: int, producer: Optional[str] = None) -> list[int]:
        nodes = [self.sets.add() for _ in range(count)]
        if producer is not None:
            for index, node in enumerate(nodes):
                self.node_producer[node] = (producer, index)
            self.unit_counts[producer] = count
        return nodes

    def new_hidden_units(self, layer_name: str, kind: str, count: int) -> list[int]:
        """Units inside a layer (its attention heads), removable like channels, keyed ``layer:kind``."""
        nodes = self.new_channels(count, producer=hidden_key(layer_name, kind))
        self.hidden_nodes.setdefault(layer_name, {})[kind] = nodes
        return nodes

    def hidden_units(self, layer_name: str) -> dict[str, list[int]]:
        """The layer's hidden units by kind (``{"heads": nodes}``)."""
        return self.hidden_nodes.get(layer_name, {})

    def join(self, a: int, b: int) -> None:
        self.sets.union(a, b)

    def freeze(self, nodes, reason: str) -> None:
        for node in nodes:
            self.frozen.setdefault(node, reason)

    def unit_of(self, node: int) -> int:
        return self.sets.find(node)

    def input_channels(self, layer_name: str) -> list[int]:
        """Channel nodes of a layer's first input."""
        inputs = self.layer_inputs.get(layer_name)
        return self.tensor_channels.get(inputs[0], []) if inputs else []

    def output_channels(self, layer_name: str) -> list[int]:
        return self.tensor_channels[self.layer_outputs[layer_name][0]]

    def chain_end(self, tensor: str) -> str:
        """Follows a tensor through single-consumer channel-wise layers (BN, activations, pooling)."""
        while True:
            consumers = self.consumers.get(tensor, [])
            if len(consumers) != 1 or consumers[0] not in self.channelwise:
                return tensor
            if len(self.layer_inputs[consumers[0]]) != 1:
                return tensor
            tensor = self.layer_outputs[consumers[0]][0]


def hidden_key(layer_name: str, kind: str) -> str:
    return f"{layer_name}:{kind}"


def _width(tensor) -> Optional[int]:
    dim = tensor.shape[-1]
    return int(dim) if dim is not None else None


HandlerLookup = Callable[[keras.layers.Layer], Any]


def analyse_channels(model: keras.Model, handler_for: HandlerLookup, protected: tuple[str, ...] = ()) -> ChannelGraph:
    """Builds the channel graph of a functional or Sequential tf-keras model.

    ``handler_for(layer)`` returns the layer's handler (``layer_handlers.handler_for``): an
    object with ``produces_channels``, ``channelwise`` and
    ``output_channels(layer, call, inputs, graph) -> list of channel lists`` that raises
    ``ChannelBarrier`` where it cannot follow the channels.
    """
    if not is_layer_graph(model):
        raise ChannelBarrier(
            f"{model.name} is a subclassed model; structured pruning needs a functional or Sequential graph"
        )
    graph = ChannelGraph()
    patterns = [re.compile(p) for p in protected]
    calls = layer_calls(model)
    counts = call_counts(calls)
    for call in calls:
        layer = call.layer
        graph.layer_inputs[layer.name] = list(call.input_ids)
        graph.layer_outputs[layer.name] = list(call.output_ids)
        graph.layer_arguments[layer.name] = call.input_arguments()
        graph.tensors.update(zip(call.output_ids, call.output_tensors, strict=True))
        for tensor in call.input_ids:
            graph.consumers.setdefault(tensor, []).append(layer.name)
        if isinstance(layer, keras.layers.InputLayer) or not call.input_ids:
            for output, tensor in zip(call.output_ids, call.output_tensors, strict=True):
                graph.tensor_channels[output] = graph.new_channels(_width(tensor) or 0)
                graph.freeze(graph.tensor_channels[output], "model input")
            continue
        inputs = [graph.tensor_channels.get(tensor) for tensor in call.input_ids]
        handler = handler_for(layer)
        try:
            if counts[layer.name] > 1:
                raise ChannelBarrier("layer called more than once (shared weights)")
            if any(channels is None for channels in inputs):
                raise ChannelBarrier("input of unknown width")
            outputs = handler.output_channels(layer, call, inputs, graph)
        except ChannelBarrier as barrier:
            reason = str(barrier)
            graph.barriers[layer.name] = reason
            for channels in inputs:
                graph.freeze(channels or [], f"feeds barrier {layer.name} ({reason})")
            for output, tensor in zip(call.output_ids, call.output_tensors, strict=True):
                graph.tensor_channels[output] = graph.new_channels(_width(tensor) or 0)
                graph.freeze(graph.tensor_channels[output], f"output of barrier {layer.name}")
            continue
        graph.tensor_channels.update(zip(call.output_ids, outputs, strict=True))
        if handler.produces_channels:
            graph.producers.append(layer.name)
            if any(p.fullmatch(layer.name) for p in patterns):
                graph.freeze(outputs[0], f"{layer.name} is protected")
        if handler.channelwise:
            graph.channelwise.add(layer.name)

    for tensor in model.outputs:
        graph.freeze(graph.tensor_channels.get(tensor_id(tensor), []), "reaches a model output")
    return graph
