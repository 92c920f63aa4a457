"""Models whose loading would run code shipped with them are refused unless explicitly allowed."""

import json
import os

import pytest
import tf_keras as keras
from tfx.types import standard_artifacts

from tfx_model_pruning.artifacts import PruningReport
from tfx_model_pruning.engine import load_model
from tfx_model_pruning.engine.saved_model import UnsafeModelError, unsafe_layers
from tfx_model_pruning.prune import executor as prune_executor

pytestmark = pytest.mark.integration


class Doubling(keras.layers.Layer):
    def call(self, inputs):
        return inputs * 2.0


def _save(path, middle):
    inputs = keras.Input((3,), name="x")
    keras.Model(inputs, keras.layers.Dense(2, name="out")(middle(inputs))).save(str(path), save_format="tf")
    return str(path)


@pytest.mark.parametrize(
    "middle, expected",
    [
        (lambda: keras.layers.Lambda(lambda t: t + 1.0, name="plus_one"), "(Lambda)"),
        (lambda: Doubling(name="doubling"), "(Doubling)"),
    ],
)
def test_lambda_and_custom_layers_are_refused_unless_allowed(tmp_path, middle, expected):
    path = _save(tmp_path / "model", middle())
    assert any(expected in entry for entry in unsafe_layers(path))
    with pytest.raises(UnsafeModelError, match="runs code shipped with the model"):
        load_model(path)
    assert load_model(path, allow_unsafe_layers=True).model is not None


def test_builtin_layers_are_not_flagged(penguin_baseline):
    assert unsafe_layers(penguin_baseline + "/Format-Serving") == []


def test_prune_executor_refuses_an_unsafe_model_by_default(tmp_path):
    path = _save(tmp_path / "model", keras.layers.Lambda(lambda t: t * 3.0, name="triple"))
    model = standard_artifacts.Model()
    model.uri = path
    out, report = standard_artifacts.Model(), PruningReport()
    out.uri, report.uri = str(tmp_path / "out"), str(tmp_path / "report")
    config = '{"method": "magnitude", "target_sparsity": 0.5, "protect_output_layer": false}'
    with pytest.raises(UnsafeModelError, match="triple"):
        prune_executor.Executor().Do(
            {"input_model": [model]}, {"model": [out], "pruning_report": [report]}, {"pruning_config": config}
        )
    prune_executor.Executor().Do(
        {"input_model": [model]},
        {"model": [out], "pruning_report": [report]},
        {"pruning_config": config, "allow_unsafe_layers": 1},
    )
    assert load_model(out.uri, allow_unsafe_layers=True).masks


def _side_effect_lambda(marker):
    # Writes the marker when called: the proof that shipped bytecode ran.
    return lambda t, path=str(marker): (open(path, "w").write("ran"), t)[1]


def _save_hidden_lambda(path, marker, hiding):
    inputs = keras.Input((2, 3), name="x")
    if hiding == "time_distributed":
        hidden = keras.layers.TimeDistributed(keras.layers.Lambda(_side_effect_lambda(marker), name="inner"))(inputs)
    else:  # a nested Sequential block
        block = keras.Sequential([keras.layers.Lambda(_side_effect_lambda(marker), name="inner")], name="block")
        hidden = block(inputs)
    outputs = keras.layers.Dense(2, name="out")(keras.layers.Flatten()(hidden))
    keras.Model(inputs, outputs).save(str(path), save_format="tf")
    os.remove(marker)  # saving traced the lambda; only a load may write it again
    return str(path)


def _edit_metadata(path, edit):
    """Rewrites each node's metadata JSON text with ``edit``; returns how many changed."""
    from tf_keras.protobuf import saved_metadata_pb2

    metadata_path = os.path.join(path, "keras_metadata.pb")
    metadata = saved_metadata_pb2.SavedMetadata()
    with open(metadata_path, "rb") as f:
        metadata.ParseFromString(f.read())
    changed = 0
    for node in metadata.nodes:
        text = edit(node.metadata)
        changed += text != node.metadata
        node.metadata = text
    with open(metadata_path, "wb") as f:
        f.write(metadata.SerializeToString())
    return changed


def _disguise_lambda_node(path):
    """Makes the Lambda's own metadata node look like a built-in layer; the wrapper's config keeps the Lambda."""

    def disguise(text):
        if json.loads(text or "{}").get("class_name") != "Lambda":
            return text
        return json.dumps({"class_name": "Activation", "name": "relu", "config": {"name": "relu"}})

    assert _edit_metadata(path, disguise), "the test model has no Lambda node"


def _rename_lambda_metadata(path):
    """Renames the Lambda's metadata node and class the way an attacker would hide it."""

    def rename(text):
        text = text.replace('"class_name": "Lambda"', '"class_name": "Activation"')
        return text.replace('"function_type": "lambda", ', "").replace('"inner"', '"relu"')

    assert _edit_metadata(path, rename), "the test model has no Lambda metadata to rename"


@pytest.mark.parametrize("hiding", ["time_distributed", "nested_sequential", "renamed", "only_in_wrapper_config"])
def test_hidden_lambda_is_refused_before_its_code_runs(tmp_path, hiding):
    marker = tmp_path / "bytecode_ran"
    built = {"renamed": "nested_sequential", "only_in_wrapper_config": "time_distributed"}.get(hiding, hiding)
    path = _save_hidden_lambda(tmp_path / "model", marker, built)
    if hiding == "renamed":
        _rename_lambda_metadata(path)
        assert not any("(Lambda)" in entry for entry in unsafe_layers(path))
    if hiding == "only_in_wrapper_config":
        # Top-level nodes now all name built-in classes: only the nested configs hold the Lambda.
        _disguise_lambda_node(path)
    findings = unsafe_layers(path)
    assert findings, "the hidden Lambda was not found"
    if hiding == "renamed":
        assert any("marshalled Python bytecode" in entry for entry in findings), findings
    with pytest.raises(UnsafeModelError, match="runs code shipped with the model"):
        load_model(path)
    assert not marker.exists(), "the model's bytecode ran although the model was refused"


def test_a_wrapped_lambda_does_run_when_allowed(tmp_path):
    # Shows the side effect above is real: the same model loaded with consent runs its code.
    marker = tmp_path / "bytecode_ran"
    path = _save_hidden_lambda(tmp_path / "model", marker, "time_distributed")
    load_model(path, allow_unsafe_layers=True)
    assert marker.read_text() == "ran"


def test_stock_applications_are_not_flagged(tmp_path):
    model = keras.applications.MobileNetV3Small(weights=None, input_shape=(32, 32, 3), classes=3)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.save(str(tmp_path / "mnv3"), save_format="tf")
    assert unsafe_layers(str(tmp_path / "mnv3")) == []
