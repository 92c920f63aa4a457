"""Handlers of sequence layers: recurrent layers (LSTM, GRU, SimpleRNN, Bidirectional) and
MultiHeadAttention, whose heads are removed whole.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfx_model_pruning.engine.channels import ChannelBarrier
from tfx_model_pruning.engine.graph import (
    attention_projections,
    call_argument_shapes,
)
from tfx_model_pruning.engine.layer_handlers.base import (
    Kept,
    LayerHandler,
    _zeroed,
    handler_for,
)


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
        The call reads two or more tensors (a mask too), so their shapes come from the call, not ``shapes``."""
        shapes = call_argument_shapes(layer)  # by argument: a mask or a keyword key may come third
        query, value = shapes["query"], shapes["value"]
        key = shapes.get("key", value)
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
