"""Importance criteria: which channels (structured) or weights (unstructured) matter least.

A criterion is an object with one call, ``criterion(model, targets, sample)``, returning one
score array per target (finite, non-negative, higher = keep). A target is a ``ChannelSource`` (a producer's output
channels: one score per channel) or a ``PrunableWeight`` (one score per entry). Built-ins are
registered by name, the names the configs accept; a user's criterion object can be passed to
``prune_structured``/``prune_model`` directly.

- ``l1``/``l2`` (alias ``magnitude``): norms of the channel's kernel slice; |w| for a weight.
- ``apoz``: 1 - average percentage of zeros of the channel's activation (Hu et al. 2016).
- ``mean_activation``: mean |activation|.
- ``taylor``: first-order Taylor, sum of |weight x d loss / d weight| (Molchanov et al. 2017).

Activations are read where the channel's channel-wise chain ends (after its BatchNorm and
ReLU, say), not at the raw convolution output, so APoZ sees the zeros a ReLU actually makes.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from tfx_model_pruning.engine.channels import ChannelGraph, hidden_key
from tfx_model_pruning.engine.graph import keras_of
from tfx_model_pruning.engine.keras_names import closest_name
from tfx_model_pruning.engine.layer_handlers import handler_for
from tfx_model_pruning.engine.masks import PrunableWeight
from tfx_model_pruning.engine.restored import call, is_restored

BATCH = 64


class MissingSampleError(ValueError):
    """A data-driven criterion was asked for without data."""


class CriterionError(ValueError):
    """The criterion cannot score this kind of target."""


@dataclass(frozen=True)
class ChannelSource:
    """A producer layer's output channels: the kernel that makes them and the tensor that carries them."""

    layer_name: str
    kernel: tf.Variable
    output_axis: int
    activation: Any  # the symbolic tensor where the channels' channel-wise chain ends; None for hidden units
    gates: int = 1  # blocks of columns per channel on the output axis (an LSTM's four gates)

    def per_channel(self, values: np.ndarray) -> np.ndarray:
        """``values`` of the kernel's shape as rows of the channel axis: shape (-1, channels)."""
        moved = np.moveaxis(values, self.output_axis, -1)
        channels = moved.shape[-1] // self.gates
        return moved.reshape(-1, self.gates, channels).reshape(-1, channels)


Target = Union[ChannelSource, PrunableWeight]


class Criterion(abc.ABC):
    """Scores targets. What a criterion needs is declared on its class, so the configs and the
    components validate a registered name without knowing it: ``needs_sample`` (it reads examples
    ``(features, labels)``), ``needs_labels`` (it reads their labels too) and ``scores_weights``
    (it can score single weights, as magnitude pruning asks; every criterion scores channels)."""

    needs_sample: ClassVar[bool] = False
    needs_labels: ClassVar[bool] = False
    scores_weights: ClassVar[bool] = True

    @abc.abstractmethod
    def __call__(self, model: Any, targets: Sequence[Target], sample: Optional[tuple[Any, Any]]) -> list[np.ndarray]:
        """One score array per target: per channel for a ChannelSource, per entry for a weight."""


class L1Norm(Criterion):
    def __call__(self, model, targets, sample=None):
        return [
            np.abs(t.per_channel(t.kernel.numpy())).sum(axis=0)
            if isinstance(t, ChannelSource)
            else np.abs(t.variable.numpy())
            for t in targets
        ]


class L2Norm(Criterion):
    def __call__(self, model, targets, sample=None):
        return [
            np.sqrt((t.per_channel(t.kernel.numpy()) ** 2).sum(axis=0))
            if isinstance(t, ChannelSource)
            else np.abs(t.variable.numpy())
            for t in targets
        ]


def _batches(sample, size=BATCH):
    features, labels = sample
    count = int(tf.shape(labels)[0]) if labels is not None else int(tf.shape(tf.nest.flatten(features)[0])[0])
    for start in range(0, count, size):
        chunk = tf.nest.map_structure(lambda t, begin=start: t[begin : begin + size], features)
        yield chunk, (labels[start : start + size] if labels is not None else None)


def _require_sample(criterion: Criterion, sample) -> None:
    if sample is None:
        raise MissingSampleError(f"criterion {type(criterion).__name__} needs a sample of examples")


class _ActivationStatistic(Criterion):
    needs_sample = True
    scores_weights = False

    @staticmethod
    @abc.abstractmethod
    def statistic(values: tf.Tensor) -> tf.Tensor: ...

    def __call__(self, model, targets, sample=None):
        _require_sample(self, sample)
        if any(not isinstance(t, ChannelSource) for t in targets):
            raise CriterionError(f"{type(self).__name__} scores channels by their activations, not single weights")
        # No tensor carries a hidden unit (an attention head) alone: those are scored by weights.
        by_weights = {i for i, t in enumerate(targets) if t.activation is None}
        measured = [t for i, t in enumerate(targets) if i not in by_weights]
        scores = iter(self._measure(model, measured, sample) if measured else [])
        fallback = iter(L1Norm()(model, [targets[i] for i in sorted(by_weights)]))
        return [next(fallback) if i in by_weights else next(scores) for i in range(len(targets))]

    def _measure(self, model, targets, sample):
        probe = keras_of(model).Model(model.inputs, [t.activation for t in targets])
        totals: list[Optional[np.ndarray]] = [None] * len(targets)
        count = 0
        for features, _ in _batches(sample):
            outputs = probe(features, training=False)
            outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
            for index, activation in enumerate(outputs):
                values = tf.reshape(activation, [-1, activation.shape[-1]])
                batch_sum = tf.reduce_sum(self.statistic(values), axis=0).numpy()
                totals[index] = batch_sum if totals[index] is None else totals[index] + batch_sum
            count += int(tf.shape(values)[0])
        return [total / max(count, 1) for total in totals]


class APoZ(_ActivationStatistic):
    """The fraction of non-zero activations: 1 - APoZ."""

    @staticmethod
    def statistic(values):
        return tf.cast(values > 0, tf.float32)


class MeanActivation(_ActivationStatistic):
    @staticmethod
    def statistic(values):
        return tf.abs(values)


def _loss_of(model: Any) -> Callable:
    if is_restored(model) or getattr(model, "loss", None) is None:
        raise MissingSampleError(
            "the taylor criterion differentiates a loss, and the model carries none (a SavedModel without Keras "
            "metadata keeps no compiled loss): set `loss` in the pruning config, e.g. 'SparseCategoricalCrossentropy'"
        )
    return keras_of(model).losses.get(model.loss) if isinstance(model.loss, str) else model.loss


class Taylor(Criterion):
    """|w x d loss / d w|; the loss is the model's compiled one, or ``loss`` for a model without
    one (restored from a SavedModel, run through its call function, endpoint or signature)."""

    needs_sample = True
    needs_labels = True

    def __init__(self, loss: Optional[Callable] = None):
        self.loss = loss

    def __call__(self, model, targets, sample=None):
        _require_sample(self, sample)
        variables = [t.kernel if isinstance(t, ChannelSource) else t.variable for t in targets]
        loss_fn = self.loss or _loss_of(model)
        totals = [np.zeros(v.shape, dtype=np.float64) for v in variables]
        for features, labels in _batches(sample):
            if labels is None:
                raise MissingSampleError("the taylor criterion needs labels in the sample")
            with tf.GradientTape() as tape:
                loss = loss_fn(labels, call(model, features, training=False))
            for total, variable, gradient in zip(totals, variables, tape.gradient(loss, variables), strict=True):
                total += np.abs((variable * gradient).numpy())
        return [
            t.per_channel(total).sum(axis=0) if isinstance(t, ChannelSource) else total
            for t, total in zip(targets, totals, strict=True)
        ]


CRITERIA: dict[str, Criterion] = {}


def register_criterion(name: str, criterion: Criterion) -> None:
    """Makes ``criterion`` available by ``name`` to the engine's functions."""
    if not isinstance(criterion, Criterion):
        raise TypeError(f"{criterion!r} is not a Criterion")
    CRITERIA[name] = criterion


class UnknownCriterionError(KeyError, ValueError):
    """No criterion is registered under this name (a ValueError too, so pydantic reports it)."""

    def __str__(self) -> str:
        return str(self.args[0])


def get_criterion(criterion: Union[str, Criterion]) -> Criterion:
    """The criterion registered as ``criterion`` (a criterion object is returned as it is)."""
    if isinstance(criterion, Criterion):
        return criterion
    if criterion not in CRITERIA:
        close = closest_name(criterion, list(CRITERIA))
        raise UnknownCriterionError(
            f"unknown criterion {criterion!r}"
            + (f"; did you mean {close!r}?" if close else ".")
            + f" Registered: {', '.join(sorted(CRITERIA))}. A criterion of your own is registered with "
            "register_criterion(name, criterion) in a module the components load (module_file / module_path)."
        )
    return CRITERIA[criterion]


for _name, _criterion in {
    "l1": L1Norm(),
    "magnitude": L1Norm(),
    "l2": L2Norm(),
    "apoz": APoZ(),
    "mean_activation": MeanActivation(),
    "taylor": Taylor(),
}.items():
    register_criterion(_name, _criterion)


def channel_sources(model: Any, graph: ChannelGraph) -> list[ChannelSource]:
    """One ChannelSource per producer of the channel graph, and one per kind of hidden unit."""
    sources = []
    for name in graph.producers:
        layer = model.get_layer(name)
        handler = handler_for(layer)
        kernel, axis = handler.scored_kernel(layer)
        end = graph.chain_end(graph.layer_outputs[name][0])
        sources.append(ChannelSource(name, kernel, axis, graph.tensors[end], handler.gates(layer)))
    for name, by_kind in graph.hidden_nodes.items():
        layer = model.get_layer(name)
        for kind in by_kind:
            kernel, axis = handler_for(layer).scored_hidden(layer, kind)
            sources.append(ChannelSource(hidden_key(name, kind), kernel, axis, activation=None))
    return sources


def channel_scores(
    model: Any,
    graph: ChannelGraph,
    criterion: Union[str, Criterion],
    sample: Optional[tuple[Any, Any]] = None,
) -> dict[str, np.ndarray]:
    """Per producer layer, one importance score per output channel (higher = keep)."""
    sources = channel_sources(model, graph)
    scores = _checked(get_criterion(criterion), sources, get_criterion(criterion)(model, sources, sample))
    return {source.layer_name: score for source, score in zip(sources, scores, strict=True)}


def weight_scores(
    model: Any, weights: Sequence[PrunableWeight], criterion: Union[str, Criterion], sample=None
) -> dict[str, np.ndarray]:
    """Per weight key, one importance score per entry (higher = keep)."""
    scores = _checked(get_criterion(criterion), weights, get_criterion(criterion)(model, list(weights), sample))
    return {weight.key: score for weight, score in zip(weights, scores, strict=True)}


def _checked(criterion: Criterion, targets: Sequence[Target], scores: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The scores, refused unless one finite, non-negative array per target: layers are compared by
    their scores relative to a mean, which a negative score turns upside down."""
    scores = [np.asarray(score, dtype=np.float64) for score in scores]
    if len(scores) != len(targets):
        raise CriterionError(
            f"{type(criterion).__name__} returned {len(scores)} score arrays for {len(targets)} targets"
        )
    for target, score in zip(targets, scores, strict=True):
        name = getattr(target, "layer_name", "?")
        if not np.all(np.isfinite(score)):
            raise CriterionError(f"{type(criterion).__name__} gave {name} a NaN or infinite score")
        if np.any(score < 0):
            raise CriterionError(
                f"{type(criterion).__name__} gave {name} a negative score ({score.min():g}): importance scores "
                "must be >= 0, higher meaning keep"
            )
    return scores
