"""The Keras layer graph, read in one place.

Everything else in the engine sees layers, their calls and tensor ids through this module; it
is the only one that touches Keras internals, with one reader per Keras generation behind one
interface (``KerasGeneration``: ``TF_KERAS`` reads tf-keras's nodes, ``flat_input_ids`` and
``map_arguments``; ``KERAS_3`` reads Keras 3's nodes, ``SymbolicArguments`` and ``keras.ops``
operations), so handlers, criteria and methods are written once and a Keras upgrade is fixed here.

It holds:
- the calls of a functional/Sequential model in topological order (``layer_calls``);
- layers outside the graph (``attached_layers``), wrapped and nested layers (``leaf_layers``),
  the last weighted layers before the outputs (``output_weight_layers``);
- a call's argument names (``LayerCall.input_arguments``), MultiHeadAttention's private
  projection layers and attention axes (``attention_projections``, ``attention_axes``), and the
  Keras mask a symbolic tensor carries (``has_keras_mask``);
- ``TFOpLambda``, the private class Keras records a TensorFlow op as (``x + y``), ConvNeXt's
  ``LayerScale`` and InceptionResNetV2's ``CustomScaleLayer`` (``x + r * scale``), which
  tf-keras defines only inside its application modules.

What is built from this reading lives beside it: models rebuilt without a layer or block, clones
and flattened nests in ``graph_edit``; the channel graph structured pruning works on in ``channels``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Iterator, Optional

import keras as keras3  # TensorFlow's default Keras since 2.16
import tensorflow as tf
import tf_keras as keras

# Keras 3's private classes the handlers need: its applications' scale layers, and the base
# class of every ``keras.ops`` call recorded in a Functional graph (``x + y``, ``ops.relu(x)``).
from keras.src.applications.convnext import LayerScale as Keras3ConvNeXtLayerScale  # noqa: E402,F401,I001
from keras.src.ops.numpy import Add as Keras3AddOperation  # noqa: E402,F401  (for graph_edit)
from keras.src.ops.operation import Operation as Keras3Operation  # noqa: E402
from tf_keras.src.applications.convnext import LayerScale as ConvNeXtLayerScale  # noqa: F401  (for layer_handlers)
from tf_keras.src.applications.inception_resnet_v2 import (  # noqa: F401  (for layer_handlers)
    CustomScaleLayer as InceptionResNetScale,
)
from tf_keras.src.layers.core.tf_op_layer import TFOpLambda  # noqa: F401  (for layer_handlers)

from tfx_model_pruning.engine.restored import (
    PRUNABLE_WEIGHT_ATTRIBUTES,
    KerasBackendError,  # noqa: F401  (raised by generation())
    require_tensorflow_backend,
    variable_of,
)


class KerasGeneration:
    """One Keras generation's internals, read in one place: how its functional graph records a
    call (nodes, their tensors and arguments), how a call is replayed, and its public module.

    ``TF_KERAS`` reads tf-keras (Keras 2: ``_nodes_by_depth`` of nodes with ``flat_input_ids``,
    ``map_arguments`` and ``keras_inputs``); ``KERAS_3`` reads Keras 3 (nodes with an
    ``operation``, ``arguments`` (``SymbolicArguments``) and ``input_tensors``; ``keras.ops`` calls
    are operations in the graph as layers are). Everything else in the engine is written once.
    """

    label: str
    keras: ModuleType

    def owns(self, value: Any) -> bool:
        raise NotImplementedError

    def graph_model(self, model: Any) -> Any:
        """The object holding the layer graph (Keras 3's Sequential keeps it on a Functional)."""
        return model

    def is_layer_graph(self, model: Any) -> bool:
        raise NotImplementedError

    def inbound_nodes(self, layer: Any) -> list:
        raise NotImplementedError

    def node_operation(self, node: Any) -> Any:
        raise NotImplementedError

    def node_input_tensors(self, node: Any) -> list:
        raise NotImplementedError

    def node_output_tensors(self, node: Any) -> list:
        raise NotImplementedError

    def node_arguments(self, node: Any) -> tuple[tuple, dict]:
        raise NotImplementedError

    def node_input_ids(self, node: Any) -> list[str]:
        return [tensor_id(tensor) for tensor in self.node_input_tensors(node)]

    def replay(self, node: Any, computed: dict[str, Any], operation: Any) -> list[Any]:
        raise NotImplementedError

    def is_symbolic(self, value: Any) -> bool:
        raise NotImplementedError

    def nested_inputs(self, model: Any) -> Any:
        raise NotImplementedError

    def nested_outputs(self, model: Any) -> Any:
        raise NotImplementedError

    def activation_name(self, activation: Any) -> str:
        name = self.keras.activations.serialize(activation or self.keras.activations.linear)
        return name if isinstance(name, str) else str(name)

    def input_like(self, tensor: Any) -> Any:
        """A new ``Input`` with the shape, dtype and name of a model input."""
        return self.keras.Input(shape=batchless_shape(tensor), dtype=tensor.dtype, name=producing_layer(tensor).name)


class _TfKeras(KerasGeneration):
    label = "tf-keras"
    keras = keras

    def owns(self, value):
        return isinstance(value, keras.layers.Layer)

    def is_layer_graph(self, model):
        return bool(getattr(model, "_is_graph_network", False))

    def inbound_nodes(self, layer):
        return list(layer.inbound_nodes)

    def node_operation(self, node):
        return node.layer

    def node_input_tensors(self, node):
        return list(tf.nest.flatten(node.keras_inputs))

    def node_output_tensors(self, node):
        return list(node.outputs) if isinstance(node.outputs, (list, tuple)) else [node.outputs]

    def node_arguments(self, node):
        return tuple(node.call_args), dict(node.call_kwargs or {})

    def node_input_ids(self, node):
        return list(node.flat_input_ids)

    def replay(self, node, computed, operation):
        uses = node.flat_input_ids
        args, kwargs = node.map_arguments({i: [computed[i]] * uses.count(i) for i in uses})
        return tf.nest.flatten(operation(*args, **kwargs))

    def is_symbolic(self, value):
        return tf.is_tensor(value) and keras.backend.is_keras_tensor(value)

    def nested_inputs(self, model):
        return model._nested_inputs

    def nested_outputs(self, model):
        return model._nested_outputs


class _Keras3(KerasGeneration):
    label = "Keras 3"
    keras = keras3

    def owns(self, value):
        return isinstance(value, Keras3Operation)

    def graph_model(self, model):
        # A built Sequential runs through a Functional it keeps; an unbuilt one has no graph yet.
        if isinstance(model, keras3.Sequential):
            return getattr(model, "_functional", None) or model
        return model

    def is_layer_graph(self, model):
        return hasattr(self.graph_model(model), "_nodes_by_depth")

    def inbound_nodes(self, layer):
        return list(layer._inbound_nodes)

    def node_operation(self, node):
        return node.operation

    def node_input_tensors(self, node):
        return list(node.input_tensors)

    def node_output_tensors(self, node):
        return list(node.output_tensors)

    def node_arguments(self, node):
        return tuple(node.arguments.args), dict(node.arguments.kwargs)

    def replay(self, node, computed, operation):
        args, kwargs = node.arguments.fill_in(
            {id(tensor): computed[tensor_id(tensor)] for tensor in node.input_tensors}
        )
        return list(keras3.tree.flatten(operation(*args, **kwargs)))

    def is_symbolic(self, value):
        return isinstance(value, keras3.KerasTensor)

    def nested_inputs(self, model):
        return self.graph_model(model)._inputs_struct

    def nested_outputs(self, model):
        return self.graph_model(model)._outputs_struct


TF_KERAS: KerasGeneration = _TfKeras()
KERAS_3: KerasGeneration = _Keras3()
GENERATIONS = (TF_KERAS, KERAS_3)


def generation_of(value: Any) -> Optional[KerasGeneration]:
    """The Keras generation a model, layer or ``keras.ops`` operation belongs to; None for anything else
    (a model restored with ``tf.saved_model.load``)."""
    return next((generation for generation in GENERATIONS if generation.owns(value)), None)


def generation(value: Any) -> KerasGeneration:
    """Like ``generation_of``, for a value that must be a Keras object of either generation.

    Raises:
      KerasBackendError: a Keras 3 model on the JAX or PyTorch backend.
      TypeError: not a Keras model or layer.
    """
    found = generation_of(value)
    if found is None:
        raise TypeError(f"{type(value).__name__} is neither a tf-keras nor a Keras 3 model or layer")
    if found is KERAS_3:
        require_tensorflow_backend()
    return found


def is_keras_model(value: Any) -> bool:
    """True for a tf-keras or Keras 3 model (False for a model restored with ``tf.saved_model.load``)."""
    return isinstance(value, (keras.Model, keras3.Model))


def keras_of(value: Any) -> ModuleType:
    """The ``keras`` module of the value's generation (``tf_keras`` or Keras 3)."""
    return generation(value).keras


def batchless_shape(tensor: Any) -> tuple:
    """A tensor's shape without its batch axis."""
    return tuple(tensor.shape[1:])


def tensor_id(tensor: Any) -> str:
    """The id this module gives a symbolic tensor (the one tf-keras nodes use too)."""
    return str(id(tensor))


def producing_layer(tensor: Any) -> Any:
    """The layer (or Keras 3 operation) whose call made the symbolic ``tensor`` (an ``Input`` for a
    model input). Both generations keep it first in the tensor's ``_keras_history``."""
    return tensor._keras_history[0]


def is_layer_graph(model: Any) -> bool:
    """True for a functional or Sequential model, whose calls can be read and replayed."""
    found = generation_of(model)
    return found is not None and found.is_layer_graph(model)


def in_layer_graph(layer: Any) -> bool:
    """False for a layer set as a model attribute but never called in the model's graph."""
    return bool(generation(layer).inbound_nodes(layer))


def model_layers(model: Any) -> list:
    """The model's layers, and for Keras 3 the ``keras.ops`` operations its graph calls."""
    if generation(model) is KERAS_3 and is_layer_graph(model):
        return list(KERAS_3.graph_model(model).operations)
    return list(model.layers)


Layer = Any  # a tf-keras or Keras 3 layer (or, in a Keras 3 graph, a ``keras.ops`` operation)
Model = Any  # a tf-keras or Keras 3 model


@dataclass(frozen=True)
class LayerCall:
    """One call of a layer in a model's graph: which tensors it reads and makes."""

    layer: Layer
    input_ids: tuple[str, ...]
    output_ids: tuple[str, ...]
    input_tensors: tuple[Any, ...]
    output_tensors: tuple[Any, ...]
    _node: Any = field(repr=False, compare=False)
    _generation: KerasGeneration = field(repr=False, compare=False, default=TF_KERAS)

    def constant_arguments(self) -> list[Any]:
        """The call's arguments that are not symbolic tensors (scalars, constants, options), ``name`` aside."""
        args, kwargs = self._generation.node_arguments(self._node)
        kwargs = {k: v for k, v in kwargs.items() if k != "name"}
        values = tf.nest.flatten(list(args)) + tf.nest.flatten(kwargs)
        return [value for value in values if not self._generation.is_symbolic(value)]

    def input_arguments(self) -> list[str]:
        """The argument each input id was passed as (``query``, ``value``, ``key`` for attention):
        positional arguments by the name ``call`` gives them, keyword arguments by keyword."""
        call = getattr(self.layer, "call", None) or self.layer
        try:
            parameters = list(inspect.signature(call).parameters)
        except (TypeError, ValueError):
            parameters = []
        args, kwargs = self._generation.node_arguments(self._node)
        symbolic = self._generation.is_symbolic
        passed: list[tuple[str, Any]] = []
        for position, argument in enumerate(args):
            name = parameters[position] if position < len(parameters) else f"arg{position}"
            passed += [(name, value) for value in tf.nest.flatten(argument) if symbolic(value)]
        for keyword in sorted(kwargs):
            passed += [(keyword, value) for value in tf.nest.flatten(kwargs[keyword]) if symbolic(value)]
        # Matched by identity: the order of keyword tensors among the node's inputs differs between
        # tf-keras releases (sorted in 2.16, as passed in 2.21); a tensor passed twice (self-attention's
        # query and value) takes its names in the order they were passed.
        names_by_tensor: dict[int, list[str]] = {}
        for name, value in passed:
            names_by_tensor.setdefault(id(value), []).append(name)
        if len(passed) != len(self.input_tensors) or any(id(t) not in names_by_tensor for t in self.input_tensors):
            return [name for name, _ in passed]
        return [names_by_tensor[id(tensor)].pop(0) for tensor in self.input_tensors]

    def replay(self, computed: dict[str, Any], layer: Optional[Layer] = None) -> list[Any]:
        """Calls the layer (or ``layer`` in its place) again on the tensors ``computed`` holds for
        this call's input ids."""
        return self._generation.replay(self._node, computed, layer or self.layer)


def _layer_call(reader: KerasGeneration, node: Any) -> LayerCall:
    inputs, outputs = reader.node_input_tensors(node), reader.node_output_tensors(node)
    return LayerCall(
        layer=reader.node_operation(node),
        input_ids=tuple(reader.node_input_ids(node)),
        output_ids=tuple(tensor_id(tensor) for tensor in outputs),
        input_tensors=tuple(inputs),
        output_tensors=tuple(outputs),
        _node=node,
        _generation=reader,
    )


def layer_calls(model: Model) -> list[LayerCall]:
    """Every layer call of a functional/Sequential model, inputs first."""
    reader = generation(model)
    graph_model = reader.graph_model(model)
    return [
        _layer_call(reader, node)
        for depth in sorted(graph_model._nodes_by_depth, reverse=True)
        for node in graph_model._nodes_by_depth[depth]
    ]


def call_counts(calls: list[LayerCall]) -> dict[str, int]:
    """How often each layer is called; a layer called twice shares its weights between calls."""
    counts: dict[str, int] = {}
    for call in calls:
        counts[call.layer.name] = counts.get(call.layer.name, 0) + 1
    return counts


def call_argument_shapes(layer: Layer) -> dict[str, tuple]:
    """Shapes of the tensors the layer's first call read, by argument (``MultiHeadAttention``'s
    ``query``, ``value``, ``key``, ``attention_mask``); the first tensor of an argument that holds several."""
    reader = generation(layer)
    call = _layer_call(reader, reader.inbound_nodes(layer)[0])
    shapes: dict[str, tuple] = {}
    for name, tensor in zip(call.input_arguments(), call.input_tensors, strict=True):
        shapes.setdefault(name, tuple(tensor.shape))
    return shapes


def first_call_inputs(layer: Layer) -> list[Any]:
    """The symbolic tensors the layer's first call read."""
    reader = generation(layer)
    return reader.node_input_tensors(reader.inbound_nodes(layer)[0])


def attention_projections(layer: Layer) -> tuple[Layer, ...]:
    """The query, key, value and output ``EinsumDense`` layers of a built MultiHeadAttention
    (the same private attributes in both generations)."""
    return layer._query_dense, layer._key_dense, layer._value_dense, layer._output_dense


def attention_axes(layer: Layer) -> Optional[tuple[int, ...]]:
    """The axes a built MultiHeadAttention attends over (the same private attribute in both
    generations): its scores have the query's rank plus one axis per attention axis, the heads'
    axis ``2 * len(axes) + 1`` from the end, where a lower-rank ``attention_mask`` is broadcast."""
    axes = getattr(layer, "_attention_axes", None)
    return tuple(axes) if axes is not None else None


def has_keras_mask(tensor: Any) -> bool:
    """Whether Keras attached a mask (which positions are padding) to the symbolic tensor: made by
    ``Embedding(mask_zero=True)`` or ``Masking`` and passed on by every layer that supports
    masking. Both generations keep it as ``_keras_mask``; layers read it at call time, so a
    node's arguments need not record it."""
    return getattr(tensor, "_keras_mask", None) is not None


def is_input_layer(layer: Layer) -> bool:
    return isinstance(layer, (keras.layers.InputLayer, keras3.layers.InputLayer))


def is_layer(value: Any) -> bool:
    """A layer of either generation (a Keras 3 ``keras.ops`` operation is not one)."""
    return isinstance(value, (keras.layers.Layer, keras3.layers.Layer))


def input_layer_names(model: Model) -> list[str]:
    return [producing_layer(tensor).name for tensor in model.inputs]


def output_layer_names(model: Model) -> list[str]:
    return [producing_layer(tensor).name for tensor in model.outputs]


def attached_layers(model: Model) -> dict[str, Layer]:
    """Layers set as attributes of ``model`` but outside its layer graph, by attribute name.

    TFX's examples attach tf.Transform's layer this way (``model.tft_layer = ...``) so that the
    serving signatures, which call it, can be saved with the model.
    """
    return {
        name: value
        for name, value in vars(model).items()
        if not name.startswith("_") and is_layer(value) and value is not model and not in_layer_graph(value)
    }


def wrapped_layers(layer: Layer) -> list[Layer]:
    """The layers a wrapper runs: ``Bidirectional``'s two directions, ``TimeDistributed``'s layer."""
    directions = [getattr(layer, name, None) for name in ("forward_layer", "backward_layer")]
    if all(is_layer(direction) for direction in directions):
        return directions  # Bidirectional also keeps the unbuilt template it was given as .layer
    inner = getattr(layer, "layer", None)
    return [inner] if is_layer(inner) and inner is not layer else []


def leaf_layers(model: Model, prefix: str = "") -> Iterator[tuple[str, Layer]]:
    """``(path, layer)`` for every layer, descending into nested models and wrappers."""
    for layer in model.layers:
        path = f"{prefix}{layer.name}"
        if is_keras_model(layer):
            yield from leaf_layers(layer, prefix=f"{path}/")
        elif wrapped_layers(layer):
            for inner in wrapped_layers(layer):
                yield f"{path}/{inner.name}", inner
        else:
            yield path, layer


def prunable_variables(layer: Layer) -> Iterator[tuple[str, tf.Variable]]:
    """``(attribute, variable)`` for each matrix of connections the layer owns, as the
    ``tf.Variable`` that holds it (a Keras 3 variable's own)."""
    owners = [("", layer)]
    if getattr(layer, "cell", None) is not None:  # RNN layers keep their kernels on the cell
        owners.append(("", layer.cell))
    if is_built_attention(layer):  # its projections are sublayers, not in model.layers
        owners += [(f"{projection.name}/", projection) for projection in attention_projections(layer)]
    for prefix, owner in owners:
        for attribute in PRUNABLE_WEIGHT_ATTRIBUTES:
            variable = variable_of(getattr(owner, attribute, None))
            if variable is not None and variable.shape.rank and variable.shape.rank >= 2:
                yield prefix + attribute, variable


def is_built_attention(layer: Layer) -> bool:
    """A built MultiHeadAttention of either generation (or a subclass), projections in place."""
    return getattr(layer, "_query_dense", None) is not None and getattr(layer, "_output_dense", None) is not None


def prunable_sublayer(layer: Layer, attribute: str) -> Layer:
    """The layer that owns ``attribute`` as ``prunable_variables`` names it: ``query/kernel`` is the
    attention layer's query projection's, ``kernel`` the layer's own (or its RNN cell's)."""
    if "/" not in attribute:
        return layer
    name = attribute.split("/", 1)[0]
    return next(projection for projection in attention_projections(layer) if projection.name == name)


def _has_prunable_variables(layer: Layer) -> bool:
    return any(True for _ in prunable_variables(layer)) or any(
        any(True for _ in prunable_variables(inner)) for inner in wrapped_layers(layer)
    )


def output_weight_layers(model: Model) -> set[str]:
    """Names of the last layers with prunable weights on each path to a model output."""
    found: set[str] = set()
    seen: set[int] = set()
    frontier = [producing_layer(tensor) for tensor in model.outputs]
    while frontier:
        layer = frontier.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if is_keras_model(layer):
            found |= output_weight_layers(layer)
            continue
        if _has_prunable_variables(layer):
            found.add(layer.name)
            continue
        reader = generation(layer)
        for node in reader.inbound_nodes(layer):
            frontier.extend(producing_layer(tensor) for tensor in reader.node_input_tensors(node))
    return found
