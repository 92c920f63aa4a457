"""Importance criteria: which units (structured) or weights (unstructured) matter least.

Weight criteria (``l1``, ``l2``) read only the kernels. Data criteria use a sample of the train
split: ``apoz`` (1 - average percentage of zeros of a unit's activation, Hu et al. 2016),
``mean_activation`` (mean |activation|) and ``taylor`` (first-order Taylor, sum of
|weight x gradient| over a unit's weights, Molchanov et al. 2017). Activations are read where
the unit's channel-wise chain ends (after its BatchNorm and ReLU, say), not at the raw
convolution output, so APoZ sees the zeros a ReLU actually makes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import tensorflow as tf
import tf_keras as keras

if TYPE_CHECKING:
    from components.engine.structured import ChannelGraph

WEIGHT_CRITERIA = ("l1", "l2")
DATA_CRITERIA = ("apoz", "mean_activation", "taylor")
BATCH = 64


class MissingSampleError(ValueError):
    """A data-driven criterion was asked for without data."""


def _producers(graph: ChannelGraph) -> list[str]:
    return [name for name, kind in graph.layer_kinds.items() if kind == "producer"]


def _kernel_of(layer) -> tf.Variable:
    return layer.pointwise_kernel if hasattr(layer, "pointwise_kernel") else layer.kernel


def _batches(sample, size=BATCH):
    features, labels = sample
    count = int(tf.shape(labels)[0]) if labels is not None else int(tf.shape(tf.nest.flatten(features)[0])[0])
    for start in range(0, count, size):
        chunk = tf.nest.map_structure(lambda t, begin=start: t[begin : begin + size], features)
        yield chunk, (labels[start : start + size] if labels is not None else None)


def _chain_end(graph: ChannelGraph, tensor_id: str) -> str:
    """Follows a tensor through single-consumer channel-wise layers (BN, activations, pooling)."""
    while True:
        consumers = graph.consumers.get(tensor_id, [])
        if len(consumers) != 1 or graph.layer_kinds.get(consumers[0]) not in ("channelwise", "passthrough"):
            return tensor_id
        if len(graph.layer_inputs[consumers[0]]) != 1:
            return tensor_id
        tensor_id = graph.layer_outputs[consumers[0]][0]


def channel_scores(
    model: keras.Model, graph: ChannelGraph, criterion: str, sample: Optional[tuple[Any, Any]] = None
) -> dict[str, np.ndarray]:
    """Per producer layer, one importance score per output channel (higher = keep)."""
    producers = _producers(graph)
    if criterion in WEIGHT_CRITERIA:
        scores = {}
        for name in producers:
            kernel = _kernel_of(model.get_layer(name)).numpy()
            flat = kernel.reshape(-1, kernel.shape[-1])
            scores[name] = np.abs(flat).sum(axis=0) if criterion == "l1" else np.sqrt((flat**2).sum(axis=0))
        return scores
    if sample is None:
        raise MissingSampleError(f"criterion {criterion!r} needs a sample of examples")
    if criterion == "taylor":
        return _taylor_channel_scores(model, producers, sample)
    return _activation_scores(model, graph, producers, criterion, sample)


def _activation_scores(model, graph, producers, criterion, sample) -> dict[str, np.ndarray]:
    ends = [_chain_end(graph, graph.layer_outputs[name][0]) for name in producers]
    probe = keras.Model(model.inputs, [graph.tensors[tensor_id] for tensor_id in ends])
    totals = [None] * len(producers)
    count = 0
    for features, _ in _batches(sample):
        outputs = probe(features, training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        for index, activation in enumerate(outputs):
            values = tf.reshape(activation, [-1, activation.shape[-1]])
            statistic = tf.cast(values > 0, tf.float32) if criterion == "apoz" else tf.abs(values)
            batch_sum = tf.reduce_sum(statistic, axis=0).numpy()
            totals[index] = batch_sum if totals[index] is None else totals[index] + batch_sum
        count += int(tf.shape(values)[0])
    # For APoZ the score is the fraction of non-zero activations: 1 - APoZ.
    return {name: total / max(count, 1) for name, total in zip(producers, totals, strict=True)}


def _loss_of(model: keras.Model):
    if getattr(model, "loss", None) is None:
        raise MissingSampleError("the taylor criterion needs the model's compiled loss; the model has none")
    return keras.losses.get(model.loss) if isinstance(model.loss, str) else model.loss


def taylor_weight_scores(model: keras.Model, variables: list[tf.Variable], sample) -> list[np.ndarray]:
    """Sum over the sample's batches of |weight x d loss / d weight|, per weight."""
    loss_fn = _loss_of(model)
    totals = [np.zeros(v.shape, dtype=np.float64) for v in variables]
    for features, labels in _batches(sample):
        if labels is None:
            raise MissingSampleError("the taylor criterion needs labels in the sample")
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, model(features, training=False))
        for total, variable, gradient in zip(totals, variables, tape.gradient(loss, variables), strict=True):
            total += np.abs((variable * gradient).numpy())
    return totals


def _taylor_channel_scores(model, producers, sample) -> dict[str, np.ndarray]:
    kernels = [_kernel_of(model.get_layer(name)) for name in producers]
    per_weight = taylor_weight_scores(model, kernels, sample)
    return {
        name: scores.reshape(-1, scores.shape[-1]).sum(axis=0)
        for name, scores in zip(producers, per_weight, strict=True)
    }
