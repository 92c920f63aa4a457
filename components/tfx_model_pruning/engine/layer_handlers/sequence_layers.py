"""Handlers of sequence layers: recurrent layers (LSTM, GRU, SimpleRNN, Bidirectional) and
MultiHeadAttention, whose heads are removed whole.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfx_model_pruning.engine.channels import ChannelBarrier
from tfx_model_pruning.engine.graph import (
    attention_axes,
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


# MultiHeadAttention's call arguments that say which positions attend to which: the explicit
# ``attention_mask`` (B, T, S), and Keras 3's per-input (B, T) and (B, S) masks when its graph
# records them as tensors (passed by hand). They carry no channels and apply to every head alike.
_ATTENTION_MASKS = ("attention_mask", "query_mask", "value_mask", "key_mask")


class MultiHeadAttentionHandler(LayerHandler):
    """Attention heads are hidden units: a head owns its query, key and value columns (kernel and
    bias) and its rows of the output projection, so whole heads go. The projections' input rows
    follow the query, key and value channels; the output projection makes new channels (joined
    with the residual stream where it is added back). Each head's softmax sees only its own
    scores, so removal is exact.

    Masks are followed: an ``attention_mask`` tensor (or Keras 3's ``query_mask``, ``value_mask``,
    ``key_mask``) is broadcast over the heads, so it is kept whole (its last axis is key
    positions, not channels) and passed unchanged; ``use_causal_mask`` is a constant the rebuilt
    call repeats; an implicit Keras mask (``Embedding(mask_zero=True)`` upstream) is in neither
    generation's recorded call: the rebuilt layers recompute it, and ``rebuild`` checks that they
    mask the same outputs. A mask with an axis per head, or any other tensor argument, is a barrier."""

    produces_channels = True

    def output_channels(self, layer, call, inputs, graph):
        if len(call.output_ids) != 1:
            raise ChannelBarrier("MultiHeadAttention returning its attention scores")
        shape = layer.get_config().get("output_shape")
        if shape is not None and len(tuple(shape)) != 1:
            raise ChannelBarrier("MultiHeadAttention with a multi-axis output_shape")
        arguments = call.input_arguments()
        if len(arguments) != len(inputs) or not {"query", "value"} <= set(arguments):
            raise ChannelBarrier(f"MultiHeadAttention called with {arguments}: no query and value to follow")
        unknown = sorted(set(arguments) - {"query", "value", "key", *_ATTENTION_MASKS})
        if unknown:
            raise ChannelBarrier(f"MultiHeadAttention called with a tensor as {unknown}: not followed")
        for name, tensor, channels in zip(arguments, call.input_tensors, inputs, strict=True):
            if name == "attention_mask":
                self._check_broadcast_over_heads(layer, call.input_tensors[arguments.index("query")], tensor)
            if name in _ATTENTION_MASKS:
                graph.freeze(channels, f"{name} of {layer.name}: its last axis is key positions, not channels")
        graph.new_hidden_units(layer.name, "heads", layer.get_config()["num_heads"])
        return [graph.new_channels(int(call.output_tensors[0].shape[-1]), producer=layer.name)]

    @staticmethod
    def _check_broadcast_over_heads(layer, query, mask) -> None:
        """A mask of lower rank than the scores is broadcast over the heads' axis (Keras inserts
        it there); one of the scores' rank may hold a row per head, which removal would misalign."""
        axes = attention_axes(layer)
        rank = mask.shape.rank if hasattr(mask.shape, "rank") else len(mask.shape)
        if axes is None or rank is None:
            raise ChannelBarrier("MultiHeadAttention with an attention_mask of unknown rank")
        scores_rank = len(query.shape) + len(axes)
        if rank >= scores_rank and mask.shape[-2 * len(axes) - 1] != 1:
            raise ChannelBarrier(
                f"MultiHeadAttention with an attention_mask of shape {tuple(mask.shape)}: an axis per head "
                f"(the scores have rank {scores_rank}), which removing heads would misalign"
            )

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
