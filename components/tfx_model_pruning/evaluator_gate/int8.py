"""The int8 TFLite model's own checks: converted from the candidate, scored and timed with the interpreter.

The float candidate is scored on the same eval examples with the same Keras metrics, so a drop
is the int8 conversion's alone. Nothing here decides the SavedModel's blessing.
"""

from __future__ import annotations

import gzip
import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from tfx_model_pruning.engine.data import model_input_specs, parse_sample
from tfx_model_pruning.engine.keras_names import metric_class
from tfx_model_pruning.engine.restored import call
from tfx_model_pruning.engine.saved_model import LoadedModel
from tfx_model_pruning.engine.tflite_int8 import (
    Int8ConversionError,
    convert_int8_isolated,
    interpreter_latency,
    predict,
)
from tfx_model_pruning.evaluator_gate.checks import FLOAT32_SLACK
from tfx_model_pruning.evaluator_gate.config import GateConfig
from tfx_model_pruning.evaluator_gate.result import BOUND, DROP, RATIO, REQUIREMENT, CheckResult, Int8Result
from tfx_model_pruning.serving_versions import INT8_TFLITE_FILE

FLOAT_LABEL = "float candidate"


def _metric(name: str, labels: np.ndarray, predictions: np.ndarray) -> float:
    metric = metric_class(name)()
    metric.update_state(labels, predictions)
    return float(metric.result())


def _numpy_features(features: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {name: np.asarray(value) for name, value in features.items()}


def check_int8(
    config: GateConfig,
    loaded: LoadedModel,
    serialized: tf.Tensor,
    float_latency: Optional[Mapping[str, Any]],
    output_dir: str,
    allow_unsafe_layers: bool = False,
    allow_ops: Sequence[str] = (),
) -> Int8Result:
    """Converts the model to int8 into ``output_dir``, then checks it; a failed conversion is a result too.

    The conversion runs in a child process (``convert_int8_isolated``): a converter that aborts
    fails the int8 model, not the gate.

    Args:
      loaded: the float candidate, as the gate loaded it.
      serialized: eval examples (at most ``int8_tflite.max_eval_examples``).
      float_latency: the float candidate's serving latency by batch size ("1", "32"), as the gate timed it.
    """
    export, model = config.int8_tflite, loaded.model
    model_inputs, labels = parse_sample(model, serialized, config.label_key)
    labels = np.asarray(labels)
    if not isinstance(model_inputs, Mapping):  # a model of one input takes it as a tensor
        (name,) = model_input_specs(model)
        features = {name: np.asarray(model_inputs)}
    else:
        features = _numpy_features(model_inputs)
    calibration = {name: value[: export.representative_examples] for name, value in features.items()}
    try:
        tflite = convert_int8_isolated(
            loaded.path, calibration, export.keep_sparsity, allow_unsafe_layers=allow_unsafe_layers, allow_ops=allow_ops
        )
    except Int8ConversionError as err:
        check = CheckResult(
            "int8 TFLite conversion", False, None, None, str(err), kind=REQUIREMENT, metric="int8_conversion"
        )
        return Int8Result(path="", error=str(err), ops=err.ops, checks=[check], examples=len(labels))
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, INT8_TFLITE_FILE)
    with open(path, "wb") as f:
        f.write(tflite)
    float_predictions = np.asarray(call(model, model_inputs, training=False))
    int8_predictions = predict(tflite, features)
    checks, metrics, float_metrics = [], {}, {}
    for threshold in config.thresholds:
        value = _metric(threshold.metric, labels, int8_predictions)
        reference = _metric(threshold.metric, labels, float_predictions)
        metrics[threshold.metric], float_metrics[threshold.metric] = value, reference
        drop = reference - value if threshold.higher_is_better else value - reference
        checks.append(
            CheckResult(
                f"int8 {threshold.metric} drop vs {FLOAT_LABEL} <= int8_tflite.max_drop",
                drop <= export.max_drop + FLOAT32_SLACK,
                drop,
                export.max_drop,
                f"{len(labels)} eval examples: float {reference:.4f}, int8 {value:.4f}",
                metric=threshold.metric,
                reference=FLOAT_LABEL,
                comparator="<=",
                kind=DROP,
                bound_name="max_drop",
                reference_value=reference,
            )
        )
        for bound_name, comparator in (("lower_bound", ">="), ("upper_bound", "<=")):
            bound = getattr(threshold, bound_name)
            if bound is not None:
                passed = value >= bound if comparator == ">=" else value <= bound
                checks.append(
                    CheckResult(
                        f"int8 {threshold.metric} {comparator} {bound_name}",
                        passed,
                        value,
                        bound,
                        f"the int8 model on {len(labels)} eval examples",
                        metric=threshold.metric,
                        comparator=comparator,
                        kind=BOUND,
                        bound_name=bound_name,
                    )
                )
    batch_sizes = sorted({1, config.latency_batch_size})
    latency = interpreter_latency(tflite, features, batch_sizes, config.latency_repeats)
    if export.max_latency_ratio is not None:
        float_ms = (float_latency or {}).get(str(config.latency_batch_size), {}).get("median_ms")
        int8_ms = latency[config.latency_batch_size].median_ms
        checks.append(
            CheckResult(
                f"int8 interpreter latency (batch {config.latency_batch_size}) vs {FLOAT_LABEL} "
                "<= int8_tflite.max_latency_ratio",
                float_ms is not None and int8_ms / float_ms <= export.max_latency_ratio,
                int8_ms / float_ms if float_ms else None,
                export.max_latency_ratio,
                f"int8 {int8_ms:.3g} ms in the TFLite interpreter, float SavedModel {float_ms or float('nan'):.3g} ms",
                metric="int8_latency_ms_ratio",
                reference=FLOAT_LABEL,
                comparator="<=",
                kind=RATIO,
                bound_name="max_latency_ratio",
                reference_value=float_ms,
            )
        )
    return Int8Result(
        path=path,
        size_bytes=len(tflite),
        gzip_bytes=len(gzip.compress(tflite)),
        latency={str(batch): timing.to_json() for batch, timing in latency.items()},
        metrics=metrics,
        float_metrics=float_metrics,
        examples=len(labels),
        checks=checks,
    )
