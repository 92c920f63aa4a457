"""Importance criteria pick the units and weights that matter least."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from pydantic import ValidationError

from tfx_model_pruning.engine.config import PruningConfig, StructuredPruningConfig
from tfx_model_pruning.engine.importance import Criterion, CriterionError, MissingSampleError, channel_scores
from tfx_model_pruning.engine.magnitude import prune_model
from tfx_model_pruning.engine.structured import analyse, prune_structured

L = keras.layers


def _model_with_a_dead_and_an_unused_unit():
    """Unit 0 of `hidden` never fires (huge negative bias); unit 1 feeds nothing (zero rows)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    hidden = L.Dense(8, activation="relu", name="hidden")(inputs)
    model = keras.Model(inputs, L.Dense(3, name="out")(hidden))
    kernel, bias = model.get_layer("hidden").get_weights()
    kernel *= 5.0  # large weights everywhere: the weight norm alone cannot spot either unit
    bias[0] = -1e3
    model.get_layer("hidden").set_weights([kernel, bias])
    out_kernel, out_bias = model.get_layer("out").get_weights()
    out_kernel[1, :] = 0.0
    model.get_layer("out").set_weights([out_kernel, out_bias])
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _sample(n=128):
    rng = np.random.default_rng(0)
    return tf.constant(rng.normal(size=(n, 6)), tf.float32), tf.constant(rng.integers(0, 3, n))


@pytest.mark.parametrize("criterion", ["apoz", "mean_activation"])
def test_activation_criteria_score_a_dead_unit_lowest(criterion):
    model = _model_with_a_dead_and_an_unused_unit()
    graph = analyse(model)
    scores = channel_scores(model, graph, criterion, _sample())["hidden"]
    assert scores[0] == 0.0 and np.all(scores[2:] > 0)
    _, report = prune_structured(model, StructuredPruningConfig(prune_fraction=0.125, criterion=criterion), _sample())
    assert report.widths["hidden"].after == 7


def test_taylor_scores_a_unit_that_feeds_nothing_lowest():
    model = _model_with_a_dead_and_an_unused_unit()
    scores = channel_scores(model, analyse(model), "taylor", _sample())["hidden"]
    assert scores[1] == 0.0 and scores[0] == 0.0  # neither the unused nor the dead unit moves the loss
    assert np.all(scores[2:] > 0)


def test_activations_are_read_after_batchnorm_and_relu():
    image = keras.Input((6, 6, 2))
    x = L.Conv2D(4, 3, name="conv")(image)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(name="relu")(x)
    model = keras.Model(image, L.Dense(2, name="out")(L.Flatten()(x)))
    graph = analyse(model)
    end = graph.chain_end(graph.layer_outputs["conv"][0])
    assert end == graph.layer_outputs["relu"][0]


def test_data_criteria_need_a_sample():
    model = _model_with_a_dead_and_an_unused_unit()
    with pytest.raises(MissingSampleError, match="needs a sample"):
        channel_scores(model, analyse(model), "apoz")
    with pytest.raises(MissingSampleError, match="needs a sample"):
        prune_model(model, PruningConfig(target_sparsity=0.5, criterion="taylor", label_key="y"))


def test_unstructured_taylor_prunes_weights_without_gradient_first():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    hidden = L.Dense(8, activation="relu", name="hidden")(inputs)
    model = keras.Model(inputs, L.Dense(3, name="out")(hidden))
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    kernel, bias = model.get_layer("hidden").get_weights()
    kernel[0, :] = 10.0  # largest weights, but they read an input that is always zero
    model.get_layer("hidden").set_weights([kernel, bias])
    features, labels = _sample()
    features = tf.concat([tf.zeros([128, 1]), features[:, 1:]], axis=1)

    magnitude_model = keras.models.clone_model(model)
    magnitude_model.set_weights(model.get_weights())
    prune_model(magnitude_model, PruningConfig(target_sparsity=1 / 6))
    assert np.all(magnitude_model.get_layer("hidden").kernel.numpy()[0] == 10.0), "magnitude keeps them"

    prune_model(
        model, PruningConfig(target_sparsity=1 / 6, criterion="taylor", label_key="y"), None, (features, labels)
    )
    assert np.all(model.get_layer("hidden").kernel.numpy()[0] == 0.0), "taylor sees they do nothing"


def test_taylor_needs_a_label_key():
    with pytest.raises(ValidationError, match="needs label_key"):
        StructuredPruningConfig(prune_fraction=0.5, criterion="taylor")
    with pytest.raises(ValidationError, match="needs label_key"):
        PruningConfig(target_sparsity=0.5, criterion="taylor")


class _Negated(Criterion):
    """-|w| per channel: the order of l1, upside down in sign."""

    def __call__(self, model, targets, sample=None):
        return [-np.abs(t.per_channel(t.kernel.numpy())).sum(axis=0) for t in targets]


def test_a_negative_or_non_finite_score_is_refused_not_read_upside_down():
    model = _model_with_a_dead_and_an_unused_unit()
    with pytest.raises(CriterionError, match="_Negated gave hidden a negative score .* must be >= 0"):
        prune_structured(model, StructuredPruningConfig(prune_fraction=0.5), criterion=_Negated())
