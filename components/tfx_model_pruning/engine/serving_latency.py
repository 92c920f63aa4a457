"""How long a served model takes to answer: its signature timed on real requests, as TF Serving calls it.

TF Serving's Classify, Regress and Predict APIs call a SavedModel signature: with a batch of
serialized tf.Examples when the signature parses them (a TFX Trainer's ``serving_default``), or
with the feature tensors it takes. The time measured here is that call, parsing included where the
signature parses, on examples of the eval split, until the outputs are numpy arrays.

Timing the Keras model on random tensors instead (``efficiency.cpu_latency_ms``) measured a
structurally pruned MobileNetV2 at 0.96x its parent where its signature takes 0.57x: what a
restored model's ``__call__`` adds around the graph hid the smaller compute. Models compared are
timed in alternation, call by call, with the same warm-up, so drift on a shared machine
(frequency scaling, other load) falls on every model alike.

Example::

    timings = time_signatures({"parent": parent.signatures["serving_default"],
                               "candidate": candidate.signatures["serving_default"]},
                              serialized_examples, batch_sizes=(1, 32), repeats=30)
    print(timings["candidate"][32].median_ms / timings["parent"][32].median_ms)
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf

from tfx_model_pruning.engine.data import FEATURE_KIND_DTYPES
from tfx_model_pruning.engine.signatures import serialized_input_name

# Calls of each model before any is timed: the first traces and allocates.
WARMUP_CALLS = 3


@dataclass(frozen=True)
class ServingLatency:
    """Wall time (ms) of one signature call on a batch: median, interquartile range, and how many calls."""

    median_ms: float
    p25_ms: float
    p75_ms: float
    calls: int

    @property
    def spread(self) -> float:
        """The interquartile range over the median: 0.1 means the middle half of calls lay within 10 %."""
        return (self.p75_ms - self.p25_ms) / self.median_ms if self.median_ms else 0.0

    @classmethod
    def of(cls, calls: Sequence[float]) -> ServingLatency:
        """The summary of one call's wall times (ms)."""
        median, p25, p75 = (float(q) for q in np.percentile(calls, [50, 25, 75]))
        return cls(median, p25, p75, len(calls))

    def to_json(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ServingLatency:
        return cls(**{key: data[key] for key in ("median_ms", "p25_ms", "p75_ms", "calls")})


def signature_inputs(signature: Any, serialized: Sequence[bytes], batch_size: int) -> dict[str, tf.Tensor]:
    """What a server passes ``signature`` for ``batch_size`` requests (examples reused in turn if fewer).

    A signature that takes serialized tf.Examples gets them; one that takes features gets them
    parsed from the examples beforehand, as a client of TF Serving's Predict API sends tensors.
    """
    if not serialized:
        raise ValueError("no examples to time the serving signature on")
    batch = [serialized[i % len(serialized)] for i in range(batch_size)]
    input_name = serialized_input_name(signature)
    if input_name is not None:
        return {input_name: tf.constant(batch, dtype=tf.string)}
    specs = signature.structured_input_signature[1]
    example = tf.train.Example.FromString(batch[0])
    feature_spec = {}
    for name, spec in specs.items():
        if name not in example.features.feature:
            raise ValueError(f"the signature's input {name!r} is not a feature of the examples")
        kind = example.features.feature[name].WhichOneof("kind")
        shape = [dim if dim is not None else 1 for dim in spec.shape[1:]]
        feature_spec[name] = tf.io.FixedLenFeature(shape, FEATURE_KIND_DTYPES[kind])
    parsed = tf.io.parse_example(tf.constant(batch, dtype=tf.string), feature_spec)
    return {name: tf.cast(parsed[name], spec.dtype) for name, spec in specs.items()}


def _answer(signature: Any, inputs: Mapping[str, tf.Tensor]) -> None:
    tf.nest.map_structure(lambda tensor: tensor.numpy(), signature(**inputs))


def time_signatures(
    signatures: Mapping[str, Any],
    serialized: Sequence[bytes],
    batch_sizes: Sequence[int],
    repeats: int = 30,
) -> dict[str, dict[int, ServingLatency]]:
    """Each signature's latency at each batch size, the signatures called in alternation.

    Args:
      signatures: model name -> its serving signature (a concrete function of a loaded SavedModel).
      serialized: serialized tf.Examples the requests are made of.
      batch_sizes: requests per call to time, e.g. ``(1, 32)``.
      repeats: timed calls of each signature at each batch size.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    timings: dict[str, dict[int, ServingLatency]] = {name: {} for name in signatures}
    for batch_size in dict.fromkeys(batch_sizes):
        runs = [
            (name, signature, signature_inputs(signature, serialized, batch_size), [])
            for name, signature in signatures.items()
        ]
        for _ in range(WARMUP_CALLS):
            for _, signature, inputs, _ in runs:
                _answer(signature, inputs)
        for _ in range(repeats):
            for _, signature, inputs, calls in runs:
                start = time.perf_counter()
                _answer(signature, inputs)
                calls.append((time.perf_counter() - start) * 1000.0)
        for name, _, _, calls in runs:
            timings[name][batch_size] = ServingLatency.of(calls)
    return timings
