"""Names TFMA gives to Keras metrics, so thresholds can find their values."""

from __future__ import annotations

import tf_keras as keras


class UnknownMetricError(ValueError):
    """A threshold names a metric that is not a Keras metric class."""


def metric_output_name(class_name: str) -> str:
    """``SparseCategoricalAccuracy`` -> ``sparse_categorical_accuracy`` (the key TFMA writes)."""
    metric_class = getattr(keras.metrics, class_name, None)
    if not (isinstance(metric_class, type) and issubclass(metric_class, keras.metrics.Metric)):
        raise UnknownMetricError(
            f"{class_name!r} is not a Keras metric class name (e.g. 'SparseCategoricalAccuracy', 'AUC')"
        )
    return metric_class().name
