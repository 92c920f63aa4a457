"""An int8 TFLite model beside the SavedModel: post-training quantization, measured with the interpreter.

Weights and activations are quantized to int8 from a representative sample of real inputs (the
eval split's, in the gate); the model keeps float inputs and outputs, so a client feeds it what
it feeds the SavedModel. Every op must have an int8 kernel (``TFLITE_BUILTINS_INT8``): a model
that would silently fall back to float for part of its graph is refused, naming the ops.

``keep_sparsity`` asks the converter to store sparse weights in TFLite's sparse format
(``Optimize.EXPERIMENTAL_SPARSITY``), which XNNPACK can run with sparse kernels where a model's
zeros form blocks; what that does to size and latency on a given CPU is a measurement
(``bench/int8_export.py``), not a promise.

Example::

    features = [{"image": batch} for batch in eval_batches]
    tflite = convert_int8(model, features)
    outputs = predict(tflite, {"image": eval_images})
"""

from __future__ import annotations

import os
import re
import time
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from tfx_model_pruning.engine.data import model_features, model_input_specs
from tfx_model_pruning.engine.restored import call
from tfx_model_pruning.engine.serving_latency import WARMUP_CALLS, ServingLatency


class Int8ConversionError(ValueError):
    """The model cannot be converted to an all-int8 TFLite model; the message names the ops."""

    def __init__(self, message: str, ops: Sequence[str] = ()):
        super().__init__(message)
        self.ops = list(ops)


def _forward(model: Any):
    specs = model_input_specs(model)
    signature = {name: tf.TensorSpec([None, *spec.shape[1:]], spec.dtype, name=name) for name, spec in specs.items()}

    @tf.function(autograph=False)
    def forward(**inputs):
        return call(model, model_features(model, inputs), training=False)

    return forward.get_concrete_function(**signature)


def _unsupported_ops(err: Exception) -> list[str]:
    """The op names a converter error blames: from its structured errors where TF gives them, else its text."""
    names = [e.operator.name for e in getattr(err, "errors", None) or [] if e.operator.name]
    if not names:
        names = re.findall(r"'(tf\.[A-Za-z0-9_]+|tfl\.[A-Za-z0-9_]+)'", str(err))
    return sorted(set(names))


def convert_int8(model: Any, representative: Iterable[Mapping[str, np.ndarray]], keep_sparsity: bool = False) -> bytes:
    """The model quantized to int8, from batches of its inputs by name (a few hundred examples in all).

    Raises:
      Int8ConversionError: an op has no int8 TFLite kernel (named), or the conversion failed.
    """
    batches = list(representative)
    if not batches:
        raise Int8ConversionError("no representative examples to calibrate the int8 ranges on")
    forward = _forward(model)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([forward], model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if keep_sparsity:
        converter.optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    input_names = [spec.name for spec in forward.structured_input_signature[1].values()]

    def samples():
        for batch in batches:
            for row in range(len(next(iter(batch.values())))):
                # One example at a time: the calibration graph has the batch dimension of one request.
                yield {name: np.asarray(batch[name][row : row + 1]) for name in input_names}

    converter.representative_dataset = samples
    try:
        return converter.convert()
    except Exception as err:
        ops = _unsupported_ops(err)
        what = f"ops without an int8 TFLite kernel: {', '.join(ops)}" if ops else " ".join(str(err).split())[:400]
        raise Int8ConversionError(f"int8 TFLite conversion failed: {what}", ops) from err


def _interpreter(tflite: bytes, batch_size: int, threads: Optional[int]):
    interpreter = tf.lite.Interpreter(model_content=tflite, num_threads=threads or os.cpu_count())
    for detail in interpreter.get_input_details():
        interpreter.resize_tensor_input(detail["index"], [batch_size, *detail["shape"][1:]])
    interpreter.allocate_tensors()
    return interpreter


def _inputs_by_name(interpreter) -> dict[str, int]:
    """Each input's tensor index by the feature name it was converted from (the signature's input names)."""
    (signature,) = interpreter.get_signature_list()
    details = interpreter.get_signature_runner(signature).get_input_details()
    return {name: detail["index"] for name, detail in details.items()}


def _set_inputs(interpreter, features: Mapping[str, np.ndarray], rows) -> None:
    for name, index in _inputs_by_name(interpreter).items():
        if name not in features:
            raise ValueError(f"the TFLite model's input {name!r} is none of the features {sorted(features)}")
        interpreter.set_tensor(index, np.asarray(features[name])[rows])


def predict(tflite: bytes, features: Mapping[str, np.ndarray], batch_size: int = 64) -> np.ndarray:
    """The TFLite model's (first) output for every row of ``features``, batch by batch."""
    total = len(next(iter(features.values())))
    results, interpreters = [], {}
    for start in range(0, total, batch_size):
        rows = min(batch_size, total - start)
        if rows not in interpreters:
            interpreters[rows] = _interpreter(tflite, rows, None)
        interpreter = interpreters[rows]
        _set_inputs(interpreter, features, slice(start, start + rows))
        interpreter.invoke()
        results.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy())
    return np.concatenate(results)


def interpreter_latency(
    tflite: bytes, features: Mapping[str, np.ndarray], batch_sizes: Sequence[int], repeats: int = 30
) -> dict[int, ServingLatency]:
    """Wall time of one ``invoke`` at each batch size, on rows of ``features`` (reused in turn if fewer)."""
    timings = {}
    total = len(next(iter(features.values())))
    for batch_size in dict.fromkeys(batch_sizes):
        interpreter = _interpreter(tflite, batch_size, None)
        _set_inputs(interpreter, features, [i % total for i in range(batch_size)])
        output = interpreter.get_output_details()[0]["index"]
        for _ in range(WARMUP_CALLS):
            interpreter.invoke()
        calls = []
        for _ in range(repeats):
            start = time.perf_counter()
            interpreter.invoke()
            interpreter.get_tensor(output)
            calls.append((time.perf_counter() - start) * 1000.0)
        median, p25, p75 = (float(q) for q in np.percentile(calls, [50, 25, 75]))
        timings[batch_size] = ServingLatency(median, p25, p75, len(calls))
    return timings


def op_names(tflite: bytes) -> list[str]:
    """The builtin op types of the TFLite model (what a serving runtime must have kernels for)."""
    interpreter = tf.lite.Interpreter(model_content=tflite)
    return sorted({detail["op_name"] for detail in interpreter._get_ops_details()})
