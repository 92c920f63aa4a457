"""Models whose loading would run code shipped with them are refused unless explicitly allowed."""

import pytest
import tf_keras as keras
from tfx.types import standard_artifacts

from components.engine import load_keras_model
from components.engine.saved_model import UnsafeModelError, unsafe_layers
from components.prune import executor as prune_executor


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
        load_keras_model(path)
    assert load_keras_model(path, allow_unsafe_layers=True).model is not None


def test_builtin_layers_are_not_flagged(penguin_baseline):
    assert unsafe_layers(penguin_baseline + "/Format-Serving") == []


def test_prune_executor_refuses_an_unsafe_model_by_default(tmp_path):
    path = _save(tmp_path / "model", keras.layers.Lambda(lambda t: t * 3.0, name="triple"))
    model = standard_artifacts.Model()
    model.uri = path
    out, report = standard_artifacts.Model(), prune_executor.artifacts.PruningReport()
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
    assert load_keras_model(out.uri, allow_unsafe_layers=True).masks
