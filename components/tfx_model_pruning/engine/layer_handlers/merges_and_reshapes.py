"""Handlers of layers that join or reshape tensors: Add and the other element-wise merges,
Concatenate, Flatten, Reshape, and the TensorFlow ops and ``keras.ops`` calls recorded in a graph.
"""

from __future__ import annotations

from typing import Optional

import tensorflow as tf
from keras.src.ops import nn as keras3_nn
from keras.src.ops import numpy as keras3_numpy

from tfx_model_pruning.engine.channels import ChannelBarrier
from tfx_model_pruning.engine.layer_handlers.base import (
    LayerHandler,
    PassThrough,
)


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
