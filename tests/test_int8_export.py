"""The int8 TFLite path: conversion, its own checks in the gate, and the push beside the SavedModel."""

import json
import os

import numpy as np
import pytest
import tf_keras as keras
from executor_calls import run_gate

from tfx_model_pruning.atomic_pusher.executor import publish_version
from tfx_model_pruning.engine.tflite_int8 import (
    Int8ConversionError,
    convert_int8,
    convert_int8_isolated,
    interpreter_latency,
    op_names,
    predict,
)
from tfx_model_pruning.evaluator_gate.config import GateConfig, Int8Export, MetricThreshold
from tfx_model_pruning.evaluator_gate.report import summary_markdown
from tfx_model_pruning.evaluator_gate.result import GateDecision

pytestmark = pytest.mark.integration


def _small_cnn():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))


def test_int8_model_answers_as_the_float_model_does_with_int8_kernels_only():
    model = _small_cnn()
    images = np.random.default_rng(0).random((100, 8, 8, 1), dtype=np.float32)
    tflite = convert_int8(model, [{"image": images}])
    assert {"CONV_2D", "FULLY_CONNECTED", "QUANTIZE", "DEQUANTIZE"} <= set(op_names(tflite))
    int8, reference = predict(tflite, {"image": images}, batch_size=32), model.predict(images, verbose=0)
    assert int8.shape == (100, 10)  # the last batch of 4 is a batch of its own
    assert np.abs(int8 - reference).max() < 0.02  # quantized, not another model
    timings = interpreter_latency(tflite, {"image": images}, [1, 32], repeats=5)
    assert sorted(timings) == [1, 32] and all(t.calls == 5 and t.p25_ms <= t.median_ms for t in timings.values())


def test_a_keras_3_model_converts_like_a_tf_keras_one(tmp_path):
    import keras as keras3

    keras3.utils.set_random_seed(0)
    inputs = keras3.Input((8, 8, 1), name="image")
    x = keras3.layers.Conv2D(8, 3, activation="relu")(inputs)
    model = keras3.Model(inputs, keras3.layers.Dense(10, activation="softmax")(keras3.layers.Flatten()(x)))
    model.save(str(tmp_path / "model.keras"))
    images = np.random.default_rng(0).random((50, 8, 8, 1), dtype=np.float32)
    tflite = convert_int8_isolated(str(tmp_path), {"image": images})  # from the saved .keras file, as the gate does
    assert np.abs(predict(tflite, {"image": images}) - np.asarray(model(images))).max() < 0.02


def test_a_converter_that_aborts_is_a_refusal_that_says_why(monkeypatch, tmp_path):
    import subprocess

    crashed = subprocess.CompletedProcess([], -6, "", "noise\nLLVM ERROR: Failed to infer result type(s).\n")
    monkeypatch.setattr(subprocess, "run", lambda *args, **kwargs: crashed)
    with pytest.raises(Int8ConversionError, match=r"converter failed \(exit -6\): LLVM ERROR: Failed to infer"):
        convert_int8_isolated(str(tmp_path), {"image": np.ones((2, 8, 8, 1), np.float32)})


def test_an_op_without_an_int8_kernel_is_named():
    import tensorflow as tf

    inputs = keras.Input((4,), name="x")
    outputs = keras.layers.Lambda(tf.math.erf)(inputs)
    with pytest.raises(Int8ConversionError, match="tf.Erf") as raised:
        convert_int8(keras.Model(inputs, outputs), [{"x": np.ones((10, 4), np.float32)}])
    assert raised.value.ops == ["tf.Erf"]


def _penguin_gate(**int8):
    return GateConfig(
        label_key="species",
        thresholds=[MetricThreshold(metric="SparseCategoricalAccuracy", lower_bound=0.5, max_absolute_drop=0.5)],
        int8_tflite=Int8Export(**int8),
    )


def test_gate_checks_the_int8_model_and_names_it_for_the_push(tmp_path, penguin_baseline, penguin_data):
    blessing, result, error = run_gate(tmp_path, penguin_baseline, penguin_baseline, penguin_data, _penguin_gate())
    assert error is None and result["blessed"]
    int8 = result["int8"]
    assert int8["passed"] and int8["error"] == ""
    assert os.path.getsize(int8["path"]) == int8["size_bytes"] and int8["path"].startswith(str(tmp_path))
    float_ms, int8_ms = result["weights"]["candidate"]["latency"]["32"], int8["latency"]["32"]
    assert float_ms["median_ms"] > 0 and int8_ms["median_ms"] > 0
    accuracy = int8["metrics"]["SparseCategoricalAccuracy"]
    assert abs(accuracy - int8["float_metrics"]["SparseCategoricalAccuracy"]) <= 0.01
    assert blessing.get_string_custom_property("int8_tflite_uri") == int8["path"]
    summary = summary_markdown(GateDecision.from_json(result))
    assert "pushed beside the SavedModel as `model_int8.tflite`" in summary
    assert "latency, batch 32 (ms: median, IQR)" in summary
    version, path = publish_version(
        penguin_baseline, str(tmp_path / "serving"), extra_files={"model_int8.tflite": int8["path"]}
    )
    with open(os.path.join(path, "model_int8.tflite"), "rb") as pushed, open(int8["path"], "rb") as checked:
        assert pushed.read() == checked.read()
    assert sorted(os.listdir(path)) == sorted([*os.listdir(penguin_baseline), "model_int8.tflite"])
    again, _ = publish_version(
        penguin_baseline, str(tmp_path / "serving"), extra_files={"model_int8.tflite": int8["path"]}
    )
    assert again == version  # the same model and int8 file: the version already holds them


def test_an_int8_model_that_fails_its_checks_stays_out_and_the_savedmodel_is_still_blessed(
    tmp_path, penguin_baseline, penguin_data
):
    config = _penguin_gate(max_latency_ratio=1e-6)  # no int8 model is a million times faster
    blessing, result, error = run_gate(tmp_path, penguin_baseline, penguin_baseline, penguin_data, config)
    assert error is None and result["blessed"], result["failed_checks"]
    assert not result["int8"]["passed"]
    (failed,) = [check for check in result["int8"]["checks"] if not check["passed"]]
    assert failed["bound_name"] == "max_latency_ratio" and failed["measured"] > 1e-6
    assert "int8_tflite_uri" not in blessing.mlmd_artifact.custom_properties
    summary = summary_markdown(GateDecision.from_json(result))
    assert "Left out of the push (the SavedModel's verdict stands alone): int8 interpreter latency" in summary
    with open(tmp_path / "evaluation" / "gate_result.json") as f:
        assert json.load(f)["int8"]["checks"] == result["int8"]["checks"]
