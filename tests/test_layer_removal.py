"""Greedy layer and residual-block removal."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from equivalence import forward
from pydantic import ValidationError
from tfx import types
from tfx.types import standard_artifacts

from tfx_model_pruning import PruneComponent
from tfx_model_pruning.engine import load_model, prune_saved_model
from tfx_model_pruning.engine.config import LayerRemovalConfig
from tfx_model_pruning.engine.data import read_serialized
from tfx_model_pruning.engine.graph_edit import model_without as without
from tfx_model_pruning.engine.graph_edit import removal_candidates as find_candidates
from tfx_model_pruning.engine.layer_removal import remove_layers

L = keras.layers


def _residual_model():
    keras.utils.set_random_seed(0)
    image = keras.Input((8, 8, 1))
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="stem")(image)
    y = L.Conv2D(8, 3, padding="same", activation="relu", name="branch_a")(x)
    y = L.Conv2D(8, 3, padding="same", name="branch_b")(y)
    x = L.Add(name="add")([x, y])
    x = L.Conv2D(4, 1, name="narrow")(x)  # changes the width: never a candidate
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dense(6, activation="relu", name="d6")(x)
    return keras.Model(image, L.Dense(3, name="out")(x))


def test_candidates_keep_every_shape_valid():
    described = [c.describe() for c in find_candidates(_residual_model())]
    assert described == ["layer branch_a", "layer branch_b", "block add"]


def test_collapsing_a_block_equals_a_zero_branch():
    model = _residual_model()
    block = next(c for c in find_candidates(model) if c.kind == "block")
    collapsed = without(model, block)
    assert [layer.name for layer in collapsed.layers if layer.weights] == ["stem", "narrow", "d6", "out"]
    zero_branch = keras.models.clone_model(model)
    zero_branch.set_weights(model.get_weights())
    kernel, bias = zero_branch.get_layer("branch_b").get_weights()
    zero_branch.get_layer("branch_b").set_weights([np.zeros_like(kernel), np.zeros_like(bias)])
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(forward(collapsed, x), forward(zero_branch, x), atol=1e-6)
    assert collapsed.get_layer("stem") is not model.get_layer("stem"), "the result must not share weights"


def test_bypassing_an_identity_layer_changes_nothing():
    inputs = keras.Input((5,))
    identity = L.Dense(5, name="identity", kernel_initializer="identity", bias_initializer="zeros")(inputs)
    model = keras.Model(inputs, L.Dense(2, name="out")(identity))
    (candidate,) = find_candidates(model)
    x = np.random.default_rng(0).normal(size=(3, 5)).astype("float32")
    np.testing.assert_allclose(forward(without(model, candidate), x), forward(model, x), atol=1e-6)


def test_a_removal_that_hurts_beyond_tolerance_is_rolled_back():
    inputs = keras.Input((4,))
    scaled = L.Dense(4, name="scale", kernel_initializer=keras.initializers.Identity(10.0))(inputs)
    model = keras.Model(inputs, L.Dense(3, name="out")(scaled))
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    y = forward(model, x).argmax(axis=-1)  # the original is right on every example
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    final, report = remove_layers(
        model, LayerRemovalConfig(label_key="y", tolerance=0.0, fine_tune_steps=0), data, data
    )
    assert report.metric == "loss"
    assert report.steps[0].removed == "layer scale" and report.steps[0].kept is False
    assert report.removed == [] and final is model


def test_negative_tolerance_is_an_error_before_work():
    with pytest.raises(ValidationError, match="tolerance"):
        LayerRemovalConfig(label_key="y", tolerance=-0.01)
    with pytest.raises(ValidationError, match="tolerance"):
        PruneComponent(
            model=types.Channel(type=standard_artifacts.Model),
            examples=types.Channel(type=standard_artifacts.Examples),
            method="layer_removal", label_key="species", tolerance=-1.0,
        )  # fmt: skip


@pytest.mark.integration
def test_layer_removal_on_the_penguin_model_keeps_the_signature(tmp_path, penguin_baseline, penguin_files):
    config = LayerRemovalConfig(label_key="species", tolerance=0.02, fine_tune_steps=30, max_removals=1)
    train = read_serialized(penguin_files["train"], 1000)
    holdout = read_serialized(penguin_files["eval"], 1000)
    report = prune_saved_model(
        penguin_baseline, str(tmp_path / "out"), config, train, latency_repeats=2, holdout_examples=holdout
    )
    steps = report.layer_removal.steps
    assert steps[0].removed == "layer hidden_1" and steps[0].candidates == 1
    result = load_model(str(tmp_path / "out"))
    assert list(result.signatures) == ["serving_default"]
    if steps[0].kept:
        assert "hidden_1" not in [layer.name for layer in result.model.layers]
        assert report.after.params == report.before.params - (64 * 64 + 64)
    else:
        assert report.after.params == report.before.params
