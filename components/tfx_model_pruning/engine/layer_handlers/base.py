"""The kinds of handler every layer handler is one of: a barrier (the default), a pass-through,
a channel-wise layer, a producer of new channels; and what a handler returns (``Kept``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import keras as keras3
import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfx_model_pruning.engine.channels import ChannelBarrier, ChannelGraph
from tfx_model_pruning.engine.graph import (
    Keras3Operation,
    LayerCall,
    generation,
)

L = keras.layers


# Activations that normalise across channels: dropping a channel would change the others.
_CROSS_CHANNEL_ACTIVATIONS = {"softmax", "log_softmax"}


# Per weight attribute: (input-channel axis, output-channel axis); None where it has none.
WeightAxes = dict[str, tuple[Optional[int], Optional[int]]]


# The input and output shapes (batch axis first) of a layer's first call that read one tensor and made one.
CallShapes = tuple[tuple, tuple]


def _spatial(shape: tuple) -> int:
    """Positions a per-position matrix is applied at: every axis between the batch and the channels."""
    return int(np.prod([d for d in shape[1:-1]])) if len(shape) > 2 else 1


@dataclass
class Kept:
    """Channel positions of one layer call: per input tensor, of its (first) output, and of its
    hidden units by kind. ``rebuild`` hands a handler the kept ones; disconnection the dropped."""

    inputs: list[np.ndarray]
    output: Optional[np.ndarray]
    hidden: dict[str, np.ndarray] = field(default_factory=dict)
    arguments: list[str] = field(default_factory=list)  # the call argument each input was passed as

    @property
    def first_input(self) -> np.ndarray:
        return self.inputs[0] if self.inputs else np.zeros(0, dtype=np.int64)


class LayerHandler:
    """Base handler: the layer is a barrier. Subclass and override what the layer supports.

    ``produces_channels``: the layer's output channels are new, prunable units.
    ``channelwise``: output channel i depends on input channel i only (activations are read
    where such a chain ends).
    """

    produces_channels = False
    channelwise = False

    def output_channels(
        self, layer: keras.layers.Layer, call: LayerCall, inputs: list[list[int]], graph: ChannelGraph
    ) -> list[list[int]]:
        """Channel nodes of each output tensor of ``call``; raises ChannelBarrier if unknown."""
        raise ChannelBarrier(
            f"{type(layer).__name__} is not understood by the channel analysis (register a layer handler for it)"
        )

    def sliced_weights(
        self, layer: keras.layers.Layer, keep_in: np.ndarray, keep_out: Optional[np.ndarray]
    ) -> list[np.ndarray]:
        """The layer's weights with only the kept input (and, for a producer, output) channels."""
        return layer.get_weights()

    def resized_config(self, layer: keras.layers.Layer, width: int) -> dict[str, Any]:
        """The layer's config with ``width`` output channels: a producer's new width, or a layer
        whose config spells out the width it passes on (``Reshape``'s target shape)."""
        return layer.get_config()

    def scored_kernel(self, layer: keras.layers.Layer) -> Optional[tuple[tf.Variable, int]]:
        """``(variable, output-channel axis)`` that weight criteria score a channel by (producers)."""
        return None

    def gates(self, layer: keras.layers.Layer) -> int:
        """How many blocks of columns the scored kernel's output axis holds per channel (LSTM: 4)."""
        return 1

    def disconnected_weights(
        self, layer: keras.layers.Layer, dropped_in: np.ndarray, dropped_out: np.ndarray
    ) -> list[np.ndarray]:
        """The weights with every connection from the ``dropped_in`` input channels zeroed, and
        whatever else a removed output channel feeds inside the layer (a recurrent state)."""
        return layer.get_weights()

    def scored_hidden(self, layer: keras.layers.Layer, kind: str) -> tuple[tf.Variable, int]:
        """``(variable, unit axis)`` that scores the layer's hidden units of ``kind`` (heads)."""
        raise NotImplementedError(f"{type(self).__name__} declares no hidden units")

    def macs(self, layer: keras.layers.Layer, shapes: Optional[CallShapes]) -> Optional[int]:
        """Multiply-accumulates of one call on one example, given its ``shapes`` (None when the
        call did not read and make one tensor); None where the handler cannot say, counted as 0."""
        return None

    # The general forms, given every input's and the hidden units' positions. The defaults call
    # the simple methods above, which is all a one-input layer without hidden units needs.

    def rebuilt_config(self, layer: keras.layers.Layer, kept: Kept) -> dict[str, Any]:
        return self.resized_config(layer, len(kept.output))

    def rebuilt_weights(self, layer: keras.layers.Layer, kept: Kept) -> list[np.ndarray]:
        return self.sliced_weights(layer, kept.first_input, kept.output if self.produces_channels else None)

    def disconnected(self, layer: keras.layers.Layer, dropped: Kept) -> list[np.ndarray]:
        return self.disconnected_weights(layer, dropped.first_input, dropped.output)


def _take(layer: keras.layers.Layer, axes: WeightAxes, keep_in, keep_out) -> list[np.ndarray]:
    values = layer.get_weights()
    position = {id(variable): index for index, variable in enumerate(layer.weights)}
    for attribute, (in_axis, out_axis) in axes.items():
        variable = getattr(layer, attribute, None)
        if variable is None or id(variable) not in position:
            continue
        index = position[id(variable)]
        if in_axis is not None:
            values[index] = np.take(values[index], keep_in, axis=in_axis)
        if out_axis is not None and keep_out is not None:
            values[index] = np.take(values[index], keep_out, axis=out_axis)
    return values


class PassThrough(LayerHandler):
    """One input, one output, the same channels, no per-channel weights (activations, pooling, ...).

    A ``mask`` argument besides the input (a padding mask given to ``GlobalAveragePooling1D``, or
    the implicit mask Keras 3 records in a one-input call) selects positions, not channels: it is
    kept whole and passed unchanged."""

    channelwise = True

    def output_channels(self, layer, call, inputs, graph):
        arguments = call.input_arguments()
        named = zip(arguments, inputs, strict=True) if len(arguments) == len(inputs) else []
        masks = [channels for name, channels in named if name == "mask"]
        if len(inputs) - len(masks) != 1 or arguments[:1] == ["mask"] or len(call.output_ids) != 1:
            raise ChannelBarrier(f"{type(layer).__name__} with {len(inputs)} inputs")
        for channels in masks:
            graph.freeze(channels, f"mask of {layer.name}: its last axis is positions, not channels")
        return [list(inputs[0])]


class ChannelWise(PassThrough):
    """Like PassThrough, with weights indexed by channel (``weight_axes``: attribute -> axis);
    ``width_argument`` names the config key that spells out the width, if one does."""

    def __init__(self, weight_axes: dict[str, int], width_argument: Optional[str] = None):
        self.weight_axes = weight_axes
        self.width_argument = width_argument

    def sliced_weights(self, layer, keep_in, keep_out):
        return _take(layer, {name: (axis, None) for name, axis in self.weight_axes.items()}, keep_in, None)

    def resized_config(self, layer, width):
        config = layer.get_config()
        if self.width_argument is not None:
            config[self.width_argument] = width
        return config


class ActivationHandler(PassThrough):
    def output_channels(self, layer, call, inputs, graph):
        if generation(layer).activation_name(layer.activation) in _CROSS_CHANNEL_ACTIVATIONS:
            raise ChannelBarrier("cross-channel activation")
        return super().output_channels(layer, call, inputs, graph)


class Producer(LayerHandler):
    """A layer whose output channels are new units: Dense, convolutions, a user's own.

    ``width_argument`` is the config key of the output width (``units``, ``filters``);
    ``weight_axes`` maps each weight attribute to its (input, output) channel axes. The first
    attribute with an output axis is the kernel that weight criteria score; disconnection zeroes
    its input axis, if it has one (an Embedding's table has none: its inputs are token ids).
    """

    produces_channels = True

    def __init__(self, width_argument: str, weight_axes: WeightAxes):
        self.width_argument = width_argument
        self.weight_axes = weight_axes
        self.kernel_attribute = next(name for name, (_, output_axis) in weight_axes.items() if output_axis is not None)

    def output_channels(self, layer, call, inputs, graph):
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            raise ChannelBarrier("channels_first")
        if len(call.output_tensors) != 1 or call.output_tensors[0].shape[-1] is None:
            raise ChannelBarrier(f"{type(layer).__name__} output of unknown width")
        channels = graph.new_channels(int(call.output_tensors[0].shape[-1]), producer=layer.name)
        activation = generation(layer).activation_name(getattr(layer, "activation", None))
        if activation in _CROSS_CHANNEL_ACTIVATIONS:
            graph.freeze(channels, f"{layer.name} has a {activation} activation")
        return [channels]

    def sliced_weights(self, layer, keep_in, keep_out):
        return _take(layer, self.weight_axes, keep_in, keep_out)

    def resized_config(self, layer, width):
        config = layer.get_config()
        config[self.width_argument] = width
        return config

    def scored_kernel(self, layer):
        return getattr(layer, self.kernel_attribute), self.weight_axes[self.kernel_attribute][1]

    def macs(self, layer, shapes):
        """A Dense's count: every input channel meets every output channel at each position. A
        kernel without an input axis is a lookup table (Embedding): it multiplies nothing."""
        if shapes is None or self.weight_axes[self.kernel_attribute][0] is None:
            return None
        in_shape, out_shape = shapes
        return int(in_shape[-1] * out_shape[-1] * _spatial(out_shape))

    def disconnected_weights(self, layer, dropped_in, dropped_out):
        values = layer.get_weights()
        if self.weight_axes[self.kernel_attribute][0] is None:
            return values
        position = {id(variable): index for index, variable in enumerate(layer.weights)}
        kernel = getattr(layer, self.kernel_attribute)
        values[position[id(kernel)]] = _zeroed(
            values[position[id(kernel)]], dropped_in, self.weight_axes[self.kernel_attribute][0]
        )
        return values


class KeepsChannels(PassThrough):
    """Channel-wise with per-channel constants in its config or state (``Normalization``'s mean and
    variance, ``Rescaling`` by a vector): its channels pass, but are kept, so the layer is never
    resized. At a model's input, where these layers sit, the channels are kept anyway."""

    def output_channels(self, layer, call, inputs, graph):
        (channels,) = super().output_channels(layer, call, inputs, graph)
        if not self._scalar_only(layer):
            graph.freeze(channels, f"{layer.name} holds per-channel constants")
        return [channels]

    @staticmethod
    def _scalar_only(layer) -> bool:
        if isinstance(layer, (L.Rescaling, keras3.layers.Rescaling)):
            return all(np.size(value) == 1 for value in (layer.scale, layer.offset))
        return False


class Barrier(LayerHandler):
    """Registered for a class that must stop the analysis, with the reason."""

    def __init__(self, reason: str):
        self.reason = reason

    def output_channels(self, layer, call, inputs, graph):
        raise ChannelBarrier(self.reason)


def _zeroed(values: np.ndarray, dropped: np.ndarray, axis: int) -> np.ndarray:
    values = values.copy()
    index = [slice(None)] * values.ndim
    index[axis] = dropped
    values[tuple(index)] = 0
    return values


_HANDLERS: dict[type, tuple[LayerHandler, bool]] = {}


_UNKNOWN = LayerHandler()


def register_layer_handler(layer_class: type, handler: LayerHandler, *, every_subclass: bool = False) -> None:
    """Makes structured pruning track channels through ``layer_class`` with ``handler``.

    ``every_subclass`` extends it to subclasses that override ``call`` too (for barriers).
    """
    if not (isinstance(layer_class, type) and issubclass(layer_class, (keras.layers.Layer, Keras3Operation))):
        raise TypeError(f"{layer_class!r} is not a tf-keras or Keras 3 Layer class")
    if not isinstance(handler, LayerHandler):
        raise TypeError(f"{handler!r} is not a LayerHandler")
    _HANDLERS[layer_class] = (handler, every_subclass)


def unregister_layer_handler(layer_class: type) -> None:
    _HANDLERS.pop(layer_class, None)


def registered_handlers() -> dict[type, tuple[LayerHandler, bool]]:
    """Every registered layer class -> (its handler, whether it covers subclasses that override ``call``)."""
    return dict(_HANDLERS)


def handler_for(layer: keras.layers.Layer) -> LayerHandler:
    """The handler registered for the layer's class, or for the nearest ancestor whose ``call``
    it inherits; the barrier handler otherwise."""
    cls = type(layer)
    for ancestor in cls.__mro__:
        if ancestor in _HANDLERS:
            handler, every_subclass = _HANDLERS[ancestor]
            return handler if every_subclass or cls.call is ancestor.call else _UNKNOWN
    return _UNKNOWN
