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

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from tfx_model_pruning.engine.data import model_features, model_input_specs
from tfx_model_pruning.engine.restored import call
from tfx_model_pruning.engine.saved_model import load_model
from tfx_model_pruning.engine.serving_latency import WARMUP_CALLS, ServingLatency


class Int8ConversionError(ValueError):
    """The model cannot be converted to an all-int8 TFLite model; the message names the ops."""

    def __init__(self, message: str, ops: Sequence[str] = ()):
        super().__init__(message)
        self.ops = list(ops)


def _forward(model: Any) -> tuple[Any, Any]:
    """The model's forward pass by input name, its variables frozen; and a trackable holding it."""
    specs = model_input_specs(model)
    signature = {name: tf.TensorSpec([None, *spec.shape[1:]], spec.dtype, name=name) for name, spec in specs.items()}

    @tf.function(autograph=False)
    def forward(**inputs):
        return call(model, model_features(model, inputs), training=False)

    # Frozen (variables become constants), then given named inputs again: left as resources, Keras 3's
    # variables reach the TFLite model as READ_VARIABLE ops that fail when it runs (TF 2.21).
    concrete = forward.get_concrete_function(**signature)
    frozen = convert_variables_to_constants_v2(concrete)
    ordered = list(concrete.structured_input_signature[1].values())

    @tf.function(input_signature=ordered, autograph=False)
    def frozen_forward(*inputs):
        return frozen(*inputs)

    holder = tf.Module()  # the converter reads the signature's input names from a trackable
    holder.forward = frozen_forward
    return frozen_forward.get_concrete_function(), holder


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
    forward, holder = _forward(model)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([forward], holder)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if keep_sparsity:
        converter.optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    input_names = [spec.name for spec in forward.structured_input_signature[0]]

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


# Exit status of the conversion child when the converter refused the model (the reason in its JSON file).
_REFUSED = 3


def convert_int8_isolated(
    model_dir: str,
    representative: Mapping[str, np.ndarray],
    keep_sparsity: bool = False,
    allow_unsafe_layers: bool = False,
    allow_ops: Sequence[str] = (),
    timeout_s: float = 1800.0,
) -> bytes:
    """``convert_int8`` of the model at ``model_dir``, in a child process.

    The TFLite converter can abort its process on a graph it does not expect (an MLIR "LLVM
    ERROR" on a Keras 3 model's unfrozen variables under TensorFlow 2.16 did): in a child, that is
    a failed conversion, reported, and the caller (the gate) goes on. The child loads the model as the
    caller would, graph scan included.
    """
    with tempfile.TemporaryDirectory(prefix="int8-") as work:
        names = ("calibration.npz", "model.tflite", "error.json")
        calibration, output, error = (os.path.join(work, name) for name in names)
        np.savez(calibration, **{name: np.asarray(value) for name, value in representative.items()})
        command = [sys.executable, "-m", "tfx_model_pruning.engine.tflite_int8", model_dir, calibration, output, error]
        command += ["--keep-sparsity"] * keep_sparsity + ["--allow-unsafe-layers"] * allow_unsafe_layers
        command += [f"--allow-op={op}" for op in allow_ops]
        try:
            child = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired as err:
            raise Int8ConversionError(f"int8 TFLite conversion took more than {timeout_s:.0f} s; stopped") from err
        if child.returncode == _REFUSED:
            with open(error) as f:
                refusal = json.load(f)
            raise Int8ConversionError(refusal["message"], refusal["ops"])
        if child.returncode != 0:
            lines = [line for line in child.stderr.splitlines() if "ERROR" in line or "Error" in line]
            why = (lines or child.stderr.splitlines() or ["no output"])[-1].strip()[:300]
            raise Int8ConversionError(f"the TFLite converter failed (exit {child.returncode}): {why}")
        with open(output, "rb") as f:
            return f.read()


def _convert_in_child(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="convert_int8_isolated's child")
    parser.add_argument("model_dir")
    parser.add_argument("calibration")
    parser.add_argument("output")
    parser.add_argument("error")
    parser.add_argument("--keep-sparsity", action="store_true")
    parser.add_argument("--allow-unsafe-layers", action="store_true")
    parser.add_argument("--allow-op", action="append", default=[])
    args = parser.parse_args(argv)
    model = load_model(args.model_dir, args.allow_unsafe_layers, args.allow_op).model
    with np.load(args.calibration) as calibration:
        representative = {name: calibration[name] for name in calibration.files}
    try:
        tflite = convert_int8(model, [representative], keep_sparsity=args.keep_sparsity)
    except Int8ConversionError as err:
        with open(args.error, "w") as f:
            json.dump({"message": str(err), "ops": err.ops}, f)
        return _REFUSED
    with open(args.output, "wb") as f:
        f.write(tflite)
    return 0


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
        timings[batch_size] = ServingLatency.of(calls)
    return timings


def op_names(tflite: bytes) -> list[str]:
    """The builtin op types of the TFLite model (what a serving runtime must have kernels for)."""
    interpreter = tf.lite.Interpreter(model_content=tflite)
    return sorted({detail["op_name"] for detail in interpreter._get_ops_details()})


if __name__ == "__main__":
    sys.exit(_convert_in_child())
