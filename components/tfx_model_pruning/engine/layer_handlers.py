"""Layer handlers: how channels flow through each layer class, and which weights a channel owns.

Structured pruning asks the handler of every layer call two things: which channel nodes its
outputs carry (new ones for a *producer* such as Dense or Conv2D, its input's for a
channel-wise layer, joined ones for an ``Add``), and, once channels are removed, which slices
of the layer's weights remain. A layer without a handler is a barrier: the channels around it
are frozen, which is always safe. The FLOPs count asks the same handler for the layer's
multiply-accumulates (``macs``); a layer without one counts none.

Built-in layers are registered below through ``register_layer_handler``, the same call a user
makes for a custom layer::

    from tfx_model_pruning.engine.layer_handlers import Producer, register_layer_handler

    register_layer_handler(ScaledDense, Producer("units", {"kernel": (0, 1), "bias": (None, 0),
                                                           "scale": (None, 0)}))

A handler applies to its class and to subclasses that do not override ``call``; a subclass
with its own ``call`` computes something else, so it needs its own registration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import keras as keras3
import numpy as np
import tensorflow as tf
import tf_keras as keras
from keras.src.applications.inception_resnet_v2 import CustomScaleLayer as Keras3InceptionResNetScale
from keras.src.ops import nn as keras3_nn
from keras.src.ops import numpy as keras3_numpy

from tfx_model_pruning.engine.graph import (
    ChannelBarrier,
    ChannelGraph,
    ConvNeXtLayerScale,
    InceptionResNetScale,
    Keras3ConvNeXtLayerScale,
    Keras3Operation,
    LayerCall,
    TFOpLambda,
    attention_projections,
    call_input_shapes,
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
    """One input, one output, the same channels, no per-channel weights (activations, pooling, ...)."""

    channelwise = True

    def output_channels(self, layer, call, inputs, graph):
        if len(inputs) != 1 or len(call.output_ids) != 1:
            raise ChannelBarrier(f"{type(layer).__name__} with {len(inputs)} inputs")
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


class LayerNormalizationHandler(ChannelWise):
    """Normalises each position over its channels: removing channels changes the mean and variance
    the others see, so the rebuilt model is close to, not equal to, the disconnected original. The
    group is pruned and the report names the layer; fine-tuning recovers the difference."""

    channelwise = False  # an output channel depends on every input channel's statistics

    def __init__(self):
        super().__init__({"gamma": 0, "beta": 0})

    def output_channels(self, layer, call, inputs, graph):
        rank = len(call.input_tensors[0].shape)
        axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
        if [axis % rank for axis in axes] != [rank - 1]:
            raise ChannelBarrier("LayerNormalization over more than the channel axis")
        graph.approximate[layer.name] = "normalises over the channels: the kept ones see new statistics"
        return super().output_channels(layer, call, inputs, graph)


class BatchNormalizationHandler(ChannelWise):
    def __init__(self):
        super().__init__({"gamma": 0, "beta": 0, "moving_mean": 0, "moving_variance": 0})

    def output_channels(self, layer, call, inputs, graph):
        rank = len(call.input_tensors[0].shape)
        axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
        if [axis % rank for axis in axes] != [rank - 1]:
            raise ChannelBarrier("BatchNormalization over a non-channel axis")
        return super().output_channels(layer, call, inputs, graph)


class DepthwiseConvHandler(ChannelWise):
    def __init__(self):
        # tf-keras calls the kernel depthwise_kernel, Keras 3 kernel.
        super().__init__({"depthwise_kernel": -2, "kernel": -2, "bias": 0})

    def output_channels(self, layer, call, inputs, graph):
        if layer.depth_multiplier != 1:
            raise ChannelBarrier("depth_multiplier > 1")
        return super().output_channels(layer, call, inputs, graph)

    def macs(self, layer, shapes):
        if shapes is None:
            return None
        kernel = layer.depthwise_kernel if hasattr(layer, "depthwise_kernel") else layer.kernel  # tf-keras, Keras 3
        return int(np.prod(kernel.shape)) * _spatial(shapes[1])


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


class EinsumDenseHandler(Producer):
    """An EinsumDense whose kernel is one matrix from the input's last axis to the output's last
    (``ab,bc->ac``, ``abc,cd->abd``, ``...b,bc->...c``) is a Dense by another name; any other
    equation is a barrier (MultiHeadAttention's projections are read by its own handler)."""

    def __init__(self):
        super().__init__("output_shape", {"kernel": (0, 1), "bias": (None, 0)})

    @staticmethod
    def matrix_form(layer) -> bool:
        equation = str(layer.get_config().get("equation", ""))
        try:
            operands, output = equation.replace(" ", "").split("->")
            features, kernel = operands.split(",")
        except ValueError:
            return False
        bias_axes = layer.get_config().get("bias_axes")
        return (
            len(kernel) == 2
            and features[-1:] == kernel[0]
            and output[-1:] == kernel[1]
            and kernel[0] not in output
            and features[:-1] == output[:-1]
            and bias_axes in (None, "", kernel[1])
        )

    def output_channels(self, layer, call, inputs, graph):
        if not self.matrix_form(layer):
            raise ChannelBarrier(
                f"EinsumDense {layer.get_config().get('equation')!r} is not one matrix over the last axis"
            )
        return super().output_channels(layer, call, inputs, graph)

    def resized_config(self, layer, width):
        config = layer.get_config()
        shape = config["output_shape"]
        config["output_shape"] = width if isinstance(shape, int) else (*tuple(shape)[:-1], width)
        return config

    def macs(self, layer, shapes):
        # Any other equation is not counted: its cost depends on the whole equation, not two widths.
        return super().macs(layer, shapes) if self.matrix_form(layer) else 0


def _zeroed(values: np.ndarray, dropped: np.ndarray, axis: int) -> np.ndarray:
    values = values.copy()
    index = [slice(None)] * values.ndim
    index[axis] = dropped
    values[tuple(index)] = 0
    return values


class ConvolutionHandler(Producer):
    """Conv1D/2D/3D. A grouped convolution (``groups > 1``; depthwise when ``groups`` equals the
    channels) loses whole groups: a group's input channels and its filters form one unit."""

    def __init__(self):
        super().__init__("filters", {"kernel": (-2, -1), "bias": (None, 0)})

    def output_channels(self, layer, call, inputs, graph):
        (channels,) = super().output_channels(layer, call, inputs, graph)
        groups = getattr(layer, "groups", 1)
        if groups == 1:
            return [channels]
        incoming = inputs[0]
        in_size, out_size = len(incoming) // groups, len(channels) // groups
        for group in range(groups):
            members = (
                incoming[group * in_size : (group + 1) * in_size] + channels[group * out_size : (group + 1) * out_size]
            )
            for member in members[1:]:
                graph.join(members[0], member)
        return [channels]

    def sliced_weights(self, layer, keep_in, keep_out):
        if getattr(layer, "groups", 1) == 1:
            return super().sliced_weights(layer, keep_in, keep_out)
        # Whole groups go, so each kept filter still reads its group's inputs at the same offsets.
        return _take(layer, {"kernel": (None, -1), "bias": (None, 0)}, keep_in, keep_out)

    def resized_config(self, layer, width):
        config = super().resized_config(layer, width)
        if getattr(layer, "groups", 1) != 1:
            config["groups"] = width // (layer.filters // layer.groups)
        return config

    def disconnected_weights(self, layer, dropped_in, dropped_out):
        if getattr(layer, "groups", 1) == 1:
            return super().disconnected_weights(layer, dropped_in, dropped_out)
        in_size, out_size = layer.kernel.shape[-2], layer.filters // layer.groups
        columns = np.array(
            [g * out_size + k for g in sorted({int(i) // in_size for i in dropped_in}) for k in range(out_size)]
        )
        return [_zeroed(values, columns, -1) for values in layer.get_weights()]

    def macs(self, layer, shapes):
        # The kernel's size counts the window and, for a grouped convolution, only a group's inputs.
        return int(np.prod(layer.kernel.shape)) * _spatial(shapes[1]) if shapes is not None else None


class ConvTransposeHandler(Producer):
    """Conv1D/2D/3DTranspose: the kernel is stored as (..., out, in), and each input position
    scatters a whole kernel into the output."""

    def __init__(self):
        super().__init__("filters", {"kernel": (-1, -2), "bias": (None, 0)})

    def macs(self, layer, shapes):
        return int(np.prod(layer.kernel.shape)) * _spatial(shapes[0]) if shapes is not None else None


class SeparableConvHandler(Producer):
    """Depthwise then pointwise: an input channel owns ``depth_multiplier`` pointwise rows."""

    def __init__(self):
        super().__init__("filters", {"pointwise_kernel": (-2, -1), "bias": (None, 0)})

    def _rows(self, layer, channels: np.ndarray) -> np.ndarray:
        multiplier = layer.depth_multiplier
        return (channels[:, None] * multiplier + np.arange(multiplier)[None, :]).ravel()

    def sliced_weights(self, layer, keep_in, keep_out):
        depthwise, pointwise, *bias = layer.get_weights()
        pointwise = pointwise[..., self._rows(layer, keep_in), :][..., keep_out]
        return [depthwise[..., keep_in, :], pointwise] + [b[keep_out] for b in bias]

    def disconnected_weights(self, layer, dropped_in, dropped_out):
        depthwise, *rest = layer.get_weights()
        return [_zeroed(depthwise, dropped_in, -2), *rest]

    def macs(self, layer, shapes):
        if shapes is None:
            return None
        kernels = (layer.depthwise_kernel, layer.pointwise_kernel)
        return sum(int(np.prod(kernel.shape)) for kernel in kernels) * _spatial(shapes[1])


class RecurrentHandler(LayerHandler):
    """LSTM (4 gates), GRU (3), SimpleRNN (1): a hidden unit owns its column in every gate of the
    input kernel, the recurrent kernel and the bias, and its row of the recurrent kernel (the
    state it feeds back)."""

    produces_channels = True

    def __init__(self, gates: int):
        self._gates = gates

    def gates(self, layer):
        return self._gates

    def output_channels(self, layer, call, inputs, graph):
        if getattr(layer, "return_state", False) or getattr(layer, "go_backwards", False) or len(inputs) != 1:
            raise ChannelBarrier(f"{type(layer).__name__} returning its state, reversed, or with several inputs")
        return [graph.new_channels(layer.units, producer=layer.name)]

    def _columns(self, layer, units: np.ndarray) -> np.ndarray:
        return np.concatenate([gate * layer.units + units for gate in range(self._gates)])

    def sliced_weights(self, layer, keep_in, keep_out):
        kernel, recurrent, *bias = layer.get_weights()
        columns = self._columns(layer, keep_out)
        return [
            kernel[keep_in][:, columns],
            recurrent[keep_out][:, columns],
            *[b[..., columns] for b in bias],
        ]

    def resized_config(self, layer, width):
        return {**layer.get_config(), "units": width}

    def scored_kernel(self, layer):
        return layer.cell.kernel, -1

    def disconnected_weights(self, layer, dropped_in, dropped_out):
        kernel, recurrent, *bias = layer.get_weights()
        return [_zeroed(kernel, dropped_in, 0), _zeroed(recurrent, dropped_out, 0), *bias]

    def macs(self, layer, shapes):
        """Every timestep multiplies the input and the previous state by each gate's matrices."""
        if shapes is None or shapes[0][1] is None:
            return None
        in_shape, units = shapes[0], layer.units
        return int(self.gates(layer) * (in_shape[-1] * units + units * units) * in_shape[1])


class BidirectionalHandler(LayerHandler):
    """A barrier to the channel analysis (its two directions' units are concatenated or merged);
    its cost is that of each direction, read from that layer's own handler."""

    def macs(self, layer, shapes):
        return sum(handler_for(part).macs(part, shapes) or 0 for part in (layer.forward_layer, layer.backward_layer))


class MultiHeadAttentionHandler(LayerHandler):
    """Attention heads are hidden units: a head owns its query, key and value columns (kernel and
    bias) and its rows of the output projection, so whole heads go. The projections' input rows
    follow the query, key and value channels; the output projection makes new channels (joined
    with the residual stream where it is added back). Each head's softmax sees only its own
    scores, so removal is exact."""

    produces_channels = True

    def output_channels(self, layer, call, inputs, graph):
        if len(call.output_ids) != 1:
            raise ChannelBarrier("MultiHeadAttention returning its attention scores")
        shape = layer.get_config().get("output_shape")
        if shape is not None and len(tuple(shape)) != 1:
            raise ChannelBarrier("MultiHeadAttention with a multi-axis output_shape")
        arguments = call.input_arguments()
        if not {"query", "value"} <= set(arguments) or set(arguments) - {"query", "value", "key"}:
            raise ChannelBarrier(f"MultiHeadAttention called with {arguments} (a mask is not followed)")
        graph.new_hidden_units(layer.name, "heads", layer.get_config()["num_heads"])
        return [graph.new_channels(int(call.output_tensors[0].shape[-1]), producer=layer.name)]

    @staticmethod
    def _kept_inputs(layer, kept: Kept) -> dict[str, np.ndarray]:
        positions = {name: index for index, name in enumerate(kept.arguments)}
        positions.setdefault("key", positions["value"])  # key defaults to value
        return {name: kept.inputs[positions[name]] for name in ("query", "key", "value")}

    def scored_kernel(self, layer):
        return attention_projections(layer)[-1].kernel, -1

    def scored_hidden(self, layer, kind):
        return attention_projections(layer)[-1].kernel, 0  # (heads, dim, channels)

    def macs(self, layer, shapes):
        """Projections of query, key and value, the scores, the weighted values, and the output.
        The call reads two or three tensors, so their shapes come from the call, not ``shapes``."""
        input_shapes = call_input_shapes(layer)
        query, value = input_shapes[0], input_shapes[1]
        key = input_shapes[2] if len(input_shapes) > 2 else value
        if any(dim is None for shape in (query, value, key) for dim in shape[1:]):
            return 0
        config = layer.get_config()
        heads, key_dim = config["num_heads"], config["key_dim"]
        value_dim = config.get("value_dim") or key_dim
        queries, values = int(np.prod(query[1:-1])), int(np.prod(value[1:-1]))
        output_dim = config.get("output_shape") or query[-1]
        output_dim = int(np.prod(output_dim)) if isinstance(output_dim, (list, tuple)) else int(output_dim)
        return int(
            queries * query[-1] * heads * key_dim
            + values * key[-1] * heads * key_dim
            + values * value[-1] * heads * value_dim
            + heads * queries * values * (key_dim + value_dim)
            + queries * heads * value_dim * output_dim
        )

    def rebuilt_config(self, layer, kept):
        config = layer.get_config()
        widths = {name: len(index) for name, index in self._kept_inputs(layer, kept).items()}
        heads = len(kept.hidden["heads"])
        config["num_heads"] = heads
        for name in ("query", "key", "value"):
            shape = config.get(f"{name}_shape")
            if shape is not None:
                config[f"{name}_shape"] = tf.TensorShape([*list(shape)[:-1], widths[name]])
        if config.get("output_shape") is not None or len(kept.output) != widths["query"]:
            config["output_shape"] = (len(kept.output),)
        return config

    def rebuilt_weights(self, layer, kept):
        rows = self._kept_inputs(layer, kept)
        heads = kept.hidden["heads"]
        values = []
        *projections, output = attention_projections(layer)
        for projection, name in zip(projections, ("query", "key", "value"), strict=True):
            kernel, *bias = projection.get_weights()  # (channels, heads, dim), (heads, dim)
            values += [kernel[rows[name]][:, heads], *[b[heads] for b in bias]]
        kernel, *bias = output.get_weights()  # (heads, dim, channels), (channels,)
        return [*values, kernel[heads][..., kept.output], *[b[kept.output] for b in bias]]

    def disconnected(self, layer, dropped):
        rows = self._kept_inputs(layer, dropped)
        values = []
        *projections, output = attention_projections(layer)
        for projection, name in zip(projections, ("query", "key", "value"), strict=True):
            kernel, *bias = projection.get_weights()
            values += [_zeroed(kernel, rows[name], 0), *bias]
        kernel, *bias = output.get_weights()
        return [*values, _zeroed(kernel, dropped.hidden["heads"], 0), *bias]


class FlattenHandler(LayerHandler):
    """Channels last: the flat vector repeats the channels once per spatial position."""

    def output_channels(self, layer, call, inputs, graph):
        width = call.output_tensors[0].shape[-1]
        if not inputs[0] or width is None:
            raise ChannelBarrier("Flatten of unknown shape")
        return [list(inputs[0]) * (int(width) // len(inputs[0]))]


class ElementwiseMergeHandler(LayerHandler):
    """Add, Multiply, ...: channel i of every input meets channel i of the others, so they are joined."""

    def output_channels(self, layer, call, inputs, graph):
        if len({len(channels) for channels in inputs}) != 1:
            raise ChannelBarrier("merge of inputs with different widths (broadcast)")
        for channels in inputs[1:]:
            for a, b in zip(inputs[0], channels, strict=True):
                graph.join(a, b)
        return [list(inputs[0])]


class ConcatenateHandler(ElementwiseMergeHandler):
    """Along channels: the inputs' channels side by side; along another axis: a merge."""

    def output_channels(self, layer, call, inputs, graph):
        rank = len(call.output_tensors[0].shape)
        if layer.axis in (-1, rank - 1):
            return [[c for channels in inputs for c in channels]]
        return super().output_channels(layer, call, inputs, graph)


class ReshapeHandler(PassThrough):
    """A reshape that keeps the last axis keeps every channel's index (row-major order), e.g.
    squeeze-and-excite's ``(C,) -> (1, 1, C)``; any other reshape mixes channels."""

    def output_channels(self, layer, call, inputs, graph):
        width_in, width_out = call.input_tensors[0].shape[-1], call.output_tensors[0].shape[-1]
        if width_in is None or width_in != width_out:
            raise ChannelBarrier(f"reshape changes the channel axis ({width_in} -> {width_out})")
        return super().output_channels(layer, call, inputs, graph)

    def resized_config(self, layer, width):
        config = layer.get_config()
        config["target_shape"] = (*tuple(config["target_shape"])[:-1], width)
        return config


# TensorFlow ops Keras records as TFOpLambda layers (``x + y``, ``tf.nn.relu6(x)``, ``x * (1/6)``)
# whose output channel i depends on channel i of each input only.
ELEMENTWISE_TF_OPS = frozenset(
    {
        "__operators__.add", "math.add", "math.subtract", "math.multiply", "math.truediv", "math.divide",
        "math.maximum", "math.minimum", "math.negative", "math.abs", "math.square", "math.exp",
        "nn.relu", "nn.relu6", "nn.elu", "nn.selu", "nn.gelu", "nn.silu", "nn.swish", "nn.leaky_relu",
        "math.sigmoid", "nn.sigmoid", "math.tanh", "nn.tanh", "math.softplus", "nn.softplus",
    }
)  # fmt: skip


def _is_scalar(value) -> bool:
    if isinstance(value, (bool, int, float)):
        return True
    size = getattr(value, "size", None) if not isinstance(value, tf.Tensor) else int(tf.size(value))
    return size == 1


class ElementwiseOpHandler(ElementwiseMergeHandler):
    """A TFOpLambda of an elementwise op: with scalars it passes channels through; between
    tensors of one width it joins them, as ``Add`` does; a width-1 tensor broadcast over the
    channels (a gate) is frozen and the other's channels pass."""

    channelwise = True

    def op_name(self, layer) -> Optional[str]:
        """The op's name if it is a known elementwise one; None otherwise."""
        symbol = getattr(layer, "symbol", None)
        return f"tf.{symbol}" if symbol in ELEMENTWISE_TF_OPS else None

    def output_channels(self, layer, call, inputs, graph):
        name = self.op_name(layer)
        if name is None:
            raise ChannelBarrier(f"{getattr(layer, 'symbol', type(layer).__name__)} is not a known elementwise op")
        if not all(_is_scalar(value) for value in call.constant_arguments()):
            raise ChannelBarrier(f"{name} with a non-scalar constant")
        if len(call.output_tensors) != 1:
            raise ChannelBarrier(f"{name} with several outputs")
        width = call.output_tensors[0].shape[-1]
        wide = [channels for channels in inputs if len(channels) == width]
        for channels in inputs:
            if len(channels) == 1 and width != 1:
                graph.freeze(channels, f"broadcast over every channel by {layer.name}")
            elif len(channels) != width:
                raise ChannelBarrier(f"{name} broadcasts {len(channels)} channels to {width}")
        return super().output_channels(layer, call, wide, graph)


# ``keras.ops`` calls Keras 3 records in a Functional graph (``x + y`` is ``ops.add``) whose output
# channel i depends on channel i of each input only.
ELEMENTWISE_KERAS_OPS = (
    keras3_numpy.Add, keras3_numpy.Subtract, keras3_numpy.Multiply, keras3_numpy.Divide, keras3_numpy.TrueDivide,
    keras3_numpy.Maximum, keras3_numpy.Minimum, keras3_numpy.Negative, keras3_numpy.Absolute, keras3_numpy.Square,
    keras3_numpy.Exp, keras3_numpy.Tanh,
    keras3_nn.Relu, keras3_nn.Relu6, keras3_nn.Sigmoid, keras3_nn.Softplus, keras3_nn.Silu, keras3_nn.LeakyRelu,
    keras3_nn.HardSigmoid, keras3_nn.HardSilu, keras3_nn.Elu, keras3_nn.Selu, keras3_nn.Gelu,
)  # fmt: skip


class KerasOpHandler(ElementwiseOpHandler):
    """A Keras 3 ``keras.ops`` elementwise operation in a Functional graph, read as the TFOpLambda
    of the same op is; any other operation is a barrier."""

    def op_name(self, layer):
        return f"keras.ops.{type(layer).__name__}" if isinstance(layer, ELEMENTWISE_KERAS_OPS) else None


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


def handler_for(layer: keras.layers.Layer) -> LayerHandler:
    """The handler registered for the layer's class, or for the nearest ancestor whose ``call``
    it inherits; the barrier handler otherwise."""
    cls = type(layer)
    for ancestor in cls.__mro__:
        if ancestor in _HANDLERS:
            handler, every_subclass = _HANDLERS[ancestor]
            return handler if every_subclass or cls.call is ancestor.call else _UNKNOWN
    return _UNKNOWN


_PASS_THROUGH = (
    "InputLayer", "ReLU", "LeakyReLU", "ELU", "ThresholdedReLU", "Identity",
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
    "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
    "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D", "Cropping3D",
    "UpSampling1D", "UpSampling2D", "UpSampling3D",
)  # fmt: skip


def _register_builtins() -> None:
    """The same handlers for tf-keras's layers and Keras 3's (a name one generation lacks is skipped)."""
    for layers in (keras.layers, keras3.layers):

        def classes(*names, layers=layers):
            return [getattr(layers, name) for name in names if isinstance(getattr(layers, name, None), type)]

        for layer_class in classes(*_PASS_THROUGH):
            register_layer_handler(layer_class, PassThrough())
        for layer_class in classes("Activation"):
            register_layer_handler(layer_class, ActivationHandler())
        for layer_class in classes("Rescaling", "Normalization"):
            register_layer_handler(layer_class, KeepsChannels())
        for layer_class in classes("Softmax"):
            register_layer_handler(layer_class, Barrier("softmax mixes channels"))
        for layer_class in classes("BatchNormalization"):
            register_layer_handler(layer_class, BatchNormalizationHandler())
        for layer_class in classes("LayerNormalization"):
            register_layer_handler(layer_class, LayerNormalizationHandler())
        for layer_class in classes("DepthwiseConv2D", "DepthwiseConv1D"):
            register_layer_handler(layer_class, DepthwiseConvHandler())
        for layer_class in classes("Dense"):
            register_layer_handler(layer_class, Producer("units", {"kernel": (-2, -1), "bias": (None, 0)}))
        for layer_class in classes("EinsumDense"):
            register_layer_handler(layer_class, EinsumDenseHandler())
        for layer_class in classes("Embedding"):
            register_layer_handler(layer_class, Producer("output_dim", {"embeddings": (None, 1)}))
        for layer_class in classes("Conv1D", "Conv2D", "Conv3D"):
            register_layer_handler(layer_class, ConvolutionHandler())
        for layer_class in classes("SeparableConv1D", "SeparableConv2D"):
            register_layer_handler(layer_class, SeparableConvHandler())
        for layer_class in classes("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"):
            register_layer_handler(layer_class, ConvTransposeHandler())
        for layer_class in classes("Flatten"):
            register_layer_handler(layer_class, FlattenHandler())
        for layer_class in classes("MultiHeadAttention"):
            register_layer_handler(layer_class, MultiHeadAttentionHandler())
        for name, gates in (("LSTM", 4), ("GRU", 3), ("SimpleRNN", 1)):
            for layer_class in classes(name):
                register_layer_handler(layer_class, RecurrentHandler(gates))
        for layer_class in classes("Bidirectional"):
            register_layer_handler(layer_class, BidirectionalHandler())
        for layer_class in classes("Reshape"):
            register_layer_handler(layer_class, ReshapeHandler())
        for layer_class in classes("Concatenate"):
            register_layer_handler(layer_class, ConcatenateHandler())
        for layer_class in classes("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"):
            register_layer_handler(layer_class, ElementwiseMergeHandler())
    register_layer_handler(TFOpLambda, ElementwiseOpHandler())
    register_layer_handler(Keras3Operation, KerasOpHandler(), every_subclass=True)  # every keras.ops call
    for layer_scale in (ConvNeXtLayerScale, Keras3ConvNeXtLayerScale):
        register_layer_handler(layer_scale, ChannelWise({"gamma": 0}, width_argument="projection_dim"))
    # InceptionResNetV2's residual: inputs[0] + inputs[1] * scale, with a scalar scale.
    for scale in (InceptionResNetScale, Keras3InceptionResNetScale):
        register_layer_handler(scale, ElementwiseMergeHandler())
    register_layer_handler(keras.Model, Barrier("nested model"), every_subclass=True)
    register_layer_handler(keras3.Model, Barrier("nested model"), every_subclass=True)
    # A Keras 3 layer without a handler of its own is a barrier, not a keras.ops operation.
    register_layer_handler(keras3.layers.Layer, LayerHandler(), every_subclass=True)


_register_builtins()
