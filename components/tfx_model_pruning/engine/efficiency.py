"""What a model costs to run: analytic FLOPs and measured CPU latency."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import tensorflow as tf

from tfx_model_pruning.engine.data import model_features, model_input_specs
from tfx_model_pruning.engine.graph import generation, in_layer_graph, is_keras_model
from tfx_model_pruning.engine.layer_handlers import CallShapes, handler_for
from tfx_model_pruning.engine.restored import call, is_restored


def _call_shapes(layer) -> Optional[CallShapes]:
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
    """Multiply-accumulates of one call of ``layer``, as its layer handler counts them.

    0 for a layer whose handler cannot say (no matrix weights, or no handler: a layer structured
    pruning does not understand is not costed either), and for one outside the layer graph.
    """
    if not getattr(layer, "built", False) or not in_layer_graph(layer):
        return 0
    return handler_for(layer).macs(layer, _call_shapes(layer)) or 0


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
