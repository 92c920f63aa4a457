"""Names the gate gives the metrics TFMA computes, and the metric TFMA cannot: non-finite predictions."""

from __future__ import annotations

import json
from typing import Any, Iterable, Optional

import apache_beam as beam
import numpy as np
from tensorflow_model_analysis.metrics import metric_types, metric_util
from tensorflow_model_analysis.proto import config_pb2  # TFMA 0.52 no longer re-exports its protos
from tf_keras.src.utils.generic_utils import to_snake_case

from tfx_model_pruning.engine.keras_names import UnknownKerasNameError, metric_class

NON_FINITE_PREDICTIONS = "non_finite_predictions"


# A threshold naming a metric that is not a Keras metric class the gate can compute.
UnknownMetricError = UnknownKerasNameError


def metric_output_name(class_name: str) -> str:
    """``SparseCategoricalAccuracy`` -> ``sparse_categorical_accuracy``: the key the gate reads.

    The name is set explicitly in TFMA's config (``metric_config``), so it never depends on
    what else is computed: left to Keras, a second ``AUC`` would be called ``auc_1``.
    """
    metric_class(class_name)  # raises UnknownMetricError, with the closest name
    return to_snake_case(class_name)


def metric_config(class_name: str) -> config_pb2.MetricConfig:
    """TFMA's config for a Keras metric class, named as ``metric_output_name`` says."""
    return config_pb2.MetricConfig(class_name=class_name, config=json.dumps({"name": metric_output_name(class_name)}))


def non_finite_predictions_config() -> config_pb2.MetricConfig:
    return config_pb2.MetricConfig(class_name=NonFinitePredictions.__name__, module=__name__)


class NonFinitePredictions(metric_types.Metric):
    """Counts NaN and infinite values in a model's predictions on the eval split.

    Accuracy-like metrics stay finite when predictions are not (an argmax of NaN is a class),
    so a broken model could meet every bound; this count makes it visible to the gate.
    """

    def __init__(self, name: str = NON_FINITE_PREDICTIONS):
        super().__init__(metric_util.merge_per_key_computations(_non_finite_computations), name=name)


def _non_finite_computations(
    name: str = NON_FINITE_PREDICTIONS,
    eval_config: Optional[config_pb2.EvalConfig] = None,
    model_name: str = "",
    output_name: str = "",
    example_weighted: bool = False,
    sub_key: Optional[metric_types.SubKey] = None,
    aggregation_type: Optional[metric_types.AggregationType] = None,
    class_weights: Optional[dict[int, float]] = None,
    preprocessors: Any = None,
) -> metric_types.MetricComputations:
    key = metric_types.MetricKey(
        name=name, model_name=model_name, output_name=output_name, example_weighted=example_weighted
    )
    return [
        metric_types.MetricComputation(
            keys=[key], preprocessors=None, combiner=_NonFiniteCombiner(key, model_name, output_name)
        )
    ]


class _NonFiniteCombiner(beam.CombineFn):
    def __init__(self, key: metric_types.MetricKey, model_name: str, output_name: str):
        self._key = key
        self._model_name = model_name
        self._output_name = output_name

    def create_accumulator(self) -> int:
        return 0

    def add_input(self, accumulator: int, element: metric_types.StandardMetricInputs) -> int:
        predictions = element.get_predictions(self._model_name, self._output_name)
        return accumulator + sum(_count_non_finite(value) for value in _arrays(predictions))

    def merge_accumulators(self, accumulators: Iterable[int]) -> int:
        return sum(accumulators)

    def extract_output(self, accumulator: int) -> dict[metric_types.MetricKey, float]:
        return {self._key: float(accumulator)}


def _arrays(value) -> Iterable[Any]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _arrays(item)
    elif value is not None:
        yield value


def _count_non_finite(value) -> int:
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.number):
        return 0
    return int(array.size - np.count_nonzero(np.isfinite(array)))


metric_types.register_metric(NonFinitePredictions)
