"""A serving baseline from another pipeline is named as such, before any evaluation."""

import types

import pytest
import tensorflow as tf

from tfx_model_pruning.evaluator_gate.config import GateConfig
from tfx_model_pruning.evaluator_gate.executor import GateInputError, check_model_inputs


def _signature(**inputs: tf.TensorSpec):
    return types.SimpleNamespace(structured_input_signature=((), inputs), structured_outputs={"output_0": None})


def _serving_dir(tmp_path) -> str:
    version = tmp_path / "serving" / "7"
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"")
    return str(tmp_path / "serving")


def test_a_serving_model_whose_inputs_differ_from_the_candidates_belongs_to_another_pipeline(tmp_path):
    config = GateConfig(
        label_key="tips",
        thresholds=[{"metric": "BinaryAccuracy", "lower_bound": 0.5}],
        serving_model_dir=_serving_dir(tmp_path),
    )
    taxi = {"serving_default": _signature(examples=tf.TensorSpec([None], tf.string, "examples"))}
    penguin = {"serving_default": _signature(culmen_length_mm=tf.TensorSpec([None, 1], tf.float32))}
    with pytest.raises(GateInputError) as raised:
        check_model_inputs(config, {"candidate": taxi, "serving": penguin}, ["tips", "trip_miles"])
    message = str(raised.value)
    assert message.startswith(f"the serving model {tmp_path / 'serving' / '7'} takes other inputs")
    assert "appears to belong to another model or pipeline" in message
    assert "push.destination" in message and "--output-dir" in message

    # Same inputs: the same pipeline's earlier release, compared as usual.
    same = check_model_inputs(config, {"candidate": taxi, "serving": dict(taxi)}, ["tips", "trip_miles"])
    assert same == ["tips", "trip_miles"]
    # A shape another saver may write differently ([None] vs [None, 1]) is not another model.
    reshaped = {"serving_default": _signature(examples=tf.TensorSpec([None, 1], tf.string, "examples"))}
    assert check_model_inputs(config, {"candidate": taxi, "serving": reshaped}, ["tips"]) == ["tips"]
