"""Models that carry tf.Transform preprocessing, as TFX's examples build them."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras
from executor_calls import run_gate
from tfx.examples.penguin import penguin_utils_base
from tfx_example_models import save_penguin_example

from tfx_model_pruning.engine import LayerRemovalConfig, PruningConfig, StructuredPruningConfig, prune_saved_model
from tfx_model_pruning.engine.data import read_serialized
from tfx_model_pruning.engine.prune import UnclonableLayerError
from tfx_model_pruning.engine.saved_model import signature_specs, unsafe_layers
from tfx_model_pruning.evaluator_gate.config import GateConfig

pytestmark = pytest.mark.integration


def test_transform_layer_is_trusted_while_a_lambda_is_still_refused(tmp_path, penguin_transform_graph):
    model_dir = save_penguin_example(tmp_path / "model", penguin_transform_graph, with_keras=True)
    assert unsafe_layers(model_dir) == []

    with_lambda = keras.Sequential([keras.layers.Lambda(lambda x: x * 2, input_shape=(4,), name="doubler")])
    with_lambda.tft_layer = tft.TFTransformOutput(penguin_transform_graph).transform_features_layer()
    with_lambda.save(str(tmp_path / "with_lambda"), save_format="tf")
    found = unsafe_layers(str(tmp_path / "with_lambda"))
    assert found and all("doubler" in finding for finding in found)


@pytest.mark.parametrize(
    "config",
    [
        StructuredPruningConfig(scope="sensitivity", flops_budget=0.5, label_key="species_xf"),
        LayerRemovalConfig(label_key="species_xf"),
    ],
    ids=["structured_sensitivity", "layer_removal"],
)
def test_methods_that_clone_the_whole_model_refuse_a_transform_layer_before_any_work(
    tmp_path, penguin_transform_graph, config
):
    model_dir = save_penguin_example(tmp_path / "model", penguin_transform_graph, with_keras=True)
    with pytest.raises(UnclonableLayerError, match="transform_features_layer.*method='magnitude'"):
        prune_saved_model(model_dir, str(tmp_path / "out"), config)
    assert not (tmp_path / "out").exists()


def _without(serialized, feature):
    examples = []
    for record in serialized.numpy():
        example = tf.train.Example.FromString(record)
        del example.features.feature[feature]
        examples.append(example.SerializeToString())
    return tf.constant(examples)


def test_structured_pruning_rebuilds_the_signatures_around_the_transform_layer(
    tmp_path, penguin_transform_graph, penguin_files
):
    model_dir = save_penguin_example(tmp_path / "model", penguin_transform_graph, with_keras=True)
    out = str(tmp_path / "out")
    samples = read_serialized(penguin_files["train"], 64)
    report = prune_saved_model(
        model_dir, out, StructuredPruningConfig(prune_fraction=0.5), sample_examples=samples, latency_repeats=1
    )
    assert report.structure.removed_units > 0
    assert signature_specs(out) == signature_specs(model_dir)

    original, pruned = tf.saved_model.load(model_dir).signatures, tf.saved_model.load(out).signatures
    examples = read_serialized(penguin_files["eval"], 16)
    # A serving request carries no label: the rebuilt signature parses only what the transform reads.
    assert pruned["serving_default"](examples=_without(examples, "species"))["outputs"].shape == (16, 3)
    before, after = original["transform_features"](examples=examples), pruned["transform_features"](examples=examples)
    assert sorted(before) == sorted(after)
    for key in before:
        np.testing.assert_allclose(before[key].numpy(), after[key].numpy())


def test_magnitude_pruning_keeps_the_transform_signatures_of_a_keras_saved_model(
    tmp_path, penguin_transform_graph, penguin_files
):
    model_dir = save_penguin_example(tmp_path / "model", penguin_transform_graph, with_keras=True)
    out = str(tmp_path / "out")
    report = prune_saved_model(model_dir, out, PruningConfig(target_sparsity=0.8))
    assert report.after.masked_sparsity >= 0.79
    assert sorted(signature_specs(out)) == ["serving_default", "transform_features"]
    examples = read_serialized(penguin_files["eval"], 8)
    transformed = tf.saved_model.load(out).signatures["transform_features"](examples=examples)
    assert sorted(transformed) == sorted(f"{name}_xf" for name in [*penguin_utils_base.FEATURE_KEYS, "species"])


def test_the_gate_evaluates_a_keras_saved_transform_model_on_raw_examples(
    tmp_path, penguin_transform_graph, penguin_data
):
    model_dir = save_penguin_example(tmp_path / "model", penguin_transform_graph, with_keras=True)
    config = GateConfig(
        label_key="species_xf",
        preprocessing_function_names=["transform_features"],
        thresholds=[{"metric": "SparseCategoricalAccuracy", "lower_bound": 0.0}],
        max_flops=10**6,
    )
    _, result, error = run_gate(tmp_path, model_dir, None, penguin_data, config)
    assert error is None, error
    assert result["metrics"]["candidate"]["example_count"] == 100
    assert result["weights"]["candidate"]["flops"] > 0  # counted from the Keras layers
