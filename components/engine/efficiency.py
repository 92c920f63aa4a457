"""What a model costs to run: analytic FLOPs and measured CPU latency."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

import keras as keras3
import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfx_model_pruning.engine.data import model_features, model_input_specs
from tfx_model_pruning.engine.graph import call_input_shapes, generation, in_layer_graph, is_keras_model
from tfx_model_pruning.engine.layer_handlers import EinsumDenseHandler
from tfx_model_pruning.engine.restored import call, is_restored


def _kind(*names: str) -> tuple[type, ...]:
    """The layer classes of these names in both Keras generations (a name one lacks is skipped)."""
    found = (getattr(layers, name, None) for layers in (keras.layers, keras3.layers) for name in names)
    return tuple(cls for cls in found if isinstance(cls, type))


def _spatial(shape) -> int:
    return int(np.prod([d for d in shape[1:-1]])) if len(shape) > 2 else 1


_RECURRENT_GATES = ((_kind("LSTM"), 4), (_kind("GRU"), 3), (_kind("SimpleRNN"), 1))


def _recurrent_macs(layer, in_shape) -> int:
    """Every timestep multiplies the input and the previous state by each gate's matrices."""
    gates = next((count for kind, count in _RECURRENT_GATES if isinstance(layer, kind)), None)
    if gates is None or in_shape[1] is None:
        return 0
    units = layer.units
    return int(gates * (in_shape[-1] * units + units * units) * in_shape[1])


def _attention_macs(layer) -> int:
    """Projections of query, key and value, the scores, the weighted values, and the output."""
    shapes = call_input_shapes(layer)
    query, value = shapes[0], shapes[1]
    key = shapes[2] if len(shapes) > 2 else value
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


def _call_shapes(layer) -> Optional[tuple[tuple, tuple]]:
    """The input and output shapes of the layer's first call; None unless it read and made one tensor."""
    reader = generation(layer)
    nodes = reader.inbound_nodes(layer)
    if not nodes:
        return None
    inputs, outputs = reader.node_input_tensors(nodes[0]), reader.node_output_tensors(nodes[0])
    if len(inputs) != 1 or len(outputs) != 1:
        return None
    return tuple(inputs[0].shape), tuple(outputs[0].shape)


def layer_macs(layer) -> int:
    """Multiply-accumulates of one call of ``layer`` (0 for layers without matrix weights)."""
    if not getattr(layer, "built", False) or not in_layer_graph(layer):
        return 0
    if isinstance(layer, _kind("MultiHeadAttention")):
        return _attention_macs(layer)
    shapes = _call_shapes(layer)
    if shapes is None:
        return 0
    in_shape, out_shape = shapes
    if isinstance(layer, _kind("Bidirectional")):
        return _recurrent_macs(layer.forward_layer, in_shape) + _recurrent_macs(layer.backward_layer, in_shape)
    if isinstance(layer, _kind("RNN")):
        return _recurrent_macs(layer, in_shape)
    if isinstance(layer, _kind("Dense")):
        return int(in_shape[-1] * out_shape[-1] * _spatial(out_shape))
    if isinstance(layer, _kind("EinsumDense")):
        return int(in_shape[-1] * out_shape[-1] * _spatial(out_shape)) if EinsumDenseHandler.matrix_form(layer) else 0
    if isinstance(layer, _kind("SeparableConv1D", "SeparableConv2D")):
        depthwise = int(np.prod(layer.depthwise_kernel.shape))
        pointwise = int(np.prod(layer.pointwise_kernel.shape))
        return (depthwise + pointwise) * _spatial(out_shape)
    if isinstance(layer, _kind("DepthwiseConv1D", "DepthwiseConv2D")):
        kernel = layer.depthwise_kernel if hasattr(layer, "depthwise_kernel") else layer.kernel  # tf-keras, Keras 3
        return int(np.prod(kernel.shape)) * _spatial(out_shape)
    if isinstance(layer, _kind("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose")):
        return int(np.prod(layer.kernel.shape)) * _spatial(in_shape)  # each input position is scattered
    if isinstance(layer, _kind("Conv1D", "Conv2D", "Conv3D")):
        return int(np.prod(layer.kernel.shape)) * _spatial(out_shape)
    return 0


def count_flops(model: Any) -> Optional[int]:
    """FLOPs of one example's forward pass through the matrix layers (2 per multiply-accumulate).

    None for a model restored without its Keras layers: their input shapes are not known.
    """
    if is_restored(model):
        return None
    total = 0
    for layer in model.layers:
        total += count_flops(layer) if is_keras_model(layer) else 2 * layer_macs(layer)
    return total


def _random_inputs(model: Any, batch_size: int):
    rng = np.random.default_rng(0)
    inputs = {}
    for name, spec in model_input_specs(model).items():
        shape = [batch_size] + [d if d is not None else 1 for d in spec.shape[1:]]
        values = rng.normal(size=shape) if spec.dtype.is_floating else rng.integers(0, 2, size=shape)
        inputs[name] = tf.constant(values, dtype=spec.dtype)
    return model_features(model, inputs)


def cpu_latency_ms(model: Any, batch_size: int, repeats: int = 30) -> float:
    """Median wall time (ms) of a compiled forward pass on ``batch_size`` random examples."""
    return alternating_latency([model], batch_size, repeats)[0].median_ms


@dataclass(frozen=True)
class Latency:
    """Wall time of one forward pass, in ms: the median and the interquartile range."""

    median_ms: float
    p25_ms: float
    p75_ms: float


def alternating_latency(models: list[Any], batch_size: int, repeats: int = 50) -> list[Latency]:
    """Each model's latency on ``batch_size`` random examples, the models timed in alternation.

    Alternating cancels the drift (frequency scaling, caches, other load) that makes two
    back-to-back medians of the *same* model differ by tens of percent on a shared machine.
    """
    runs = []
    for model in models:
        inputs = _random_inputs(model, batch_size)
        forward = tf.function(lambda x, m=model: call(m, x, training=False))
        for _ in range(5):
            forward(inputs)
        runs.append((forward, inputs, []))
    for _ in range(repeats):
        for forward, inputs, timings in runs:
            start = time.perf_counter()
            tf.nest.map_structure(lambda t: t.numpy(), forward(inputs))
            timings.append((time.perf_counter() - start) * 1000.0)
    return [Latency(*(float(q) for q in np.percentile(timings, [50, 25, 75]))) for _, _, timings in runs]


def latency_ratio(model: Any, reference: Any, batch_size: int, repeats: int = 50) -> float:
    """Median latency of ``model`` over that of ``reference``, timed in alternation."""
    candidate, base = alternating_latency([model, reference], batch_size, repeats)
    return candidate.median_ms / base.median_ms


# The batch sizes reports time a forward pass at: one request, and a batch.
LATENCY_BATCH_SIZES = (1, 64)


def efficiency_stats(model: Any, repeats: int = 30, with_latency: bool = True) -> dict[str, Any]:
    stats: dict[str, Any] = {"flops": count_flops(model)}
    for batch_size in LATENCY_BATCH_SIZES if with_latency else ():
        stats[f"latency_ms_batch_{batch_size}"] = cpu_latency_ms(model, batch_size, repeats=repeats)
    return stats
