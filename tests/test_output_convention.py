"""Engine: fine-tuning reads whether a model outputs probabilities or logits, refuses a
``from_logits`` that contradicts it, and refuses a fine-tune that ended at the uniform guess."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tfx_model_pruning.engine import FineTuneConfig, fine_tune
from tfx_model_pruning.engine.finetune import FineTuneResult, NoLearningError, require_learned
from tfx_model_pruning.engine.outputs import (
    LOGITS,
    PROBABILITIES,
    OutputConventionError,
    no_information_loss,
    output_convention,
)


def _binary(activation: str, reshape: bool = False) -> keras.Model:
    """TFX's taxi model ends in Dense(1, sigmoid) followed by a Reshape((1,))."""
    inputs = keras.Input((4,), name="x")
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    output = keras.layers.Dense(1, activation=activation)(hidden)
    if reshape:
        output = keras.layers.Reshape((1,))(output)
    return keras.Model(inputs, output)


def _restored(tmp_path, model: keras.Model):
    path = str(tmp_path / "restored")
    tf.saved_model.save(model, path)  # as TFX's example modules save: no Keras metadata
    return tf.saved_model.load(path)


def _separable_data(n: int = 512, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype("float32").reshape(-1, 1)
    return x, y


@pytest.mark.parametrize(
    "activation, reshape, expected",
    [("sigmoid", True, PROBABILITIES), ("sigmoid", False, PROBABILITIES), ("linear", False, LOGITS)],
)
def test_keras_models_are_read_from_their_final_activation(activation, reshape, expected):
    convention, evidence = output_convention(_binary(activation, reshape))
    assert convention == expected
    assert activation in evidence


def test_softmax_layers_and_undecidable_activations():
    inputs = keras.Input((4,))
    logits = keras.layers.Dense(3)(inputs)
    assert output_convention(keras.Model(inputs, keras.layers.Softmax()(logits)))[0] == PROBABILITIES
    assert output_convention(keras.Model(inputs, keras.layers.Activation("softmax")(logits)))[0] == PROBABILITIES
    relu_out = keras.Model(inputs, keras.layers.Dense(3, activation="relu")(inputs))
    convention, evidence = output_convention(relu_out)
    assert convention is None and "relu" in evidence


@pytest.mark.parametrize("activation, expected", [("sigmoid", PROBABILITIES), ("linear", LOGITS)])
def test_restored_models_are_read_from_their_output_op(tmp_path, activation, expected):
    restored = _restored(tmp_path, _binary(activation, reshape=True))
    convention, evidence = output_convention(restored)
    assert convention == expected, evidence


def test_fine_tuning_a_sigmoid_model_without_from_logits_learns(tmp_path):
    """The taxi case: BinaryCrossentropy on a sigmoid output; from_logits is read, not assumed True."""
    x, y = _separable_data()
    restored = _restored(tmp_path, _binary("sigmoid", reshape=True))
    config = FineTuneConfig(loss="BinaryCrossentropy", epochs=8, learning_rate=0.02, batch_size=32)
    result = fine_tune(restored, (x, y), (x, y), config, masks={}, verbose=0)
    assert result.no_information_loss == pytest.approx(math.log(2))
    assert result.loss["from_logits"] is False and "Sigmoid" in result.loss["evidence"]  # in fine_tuning.json
    assert result.final_loss < 0.5 * math.log(2), result.history
    require_learned(result)
    predictions = restored(x, training=False).numpy()
    assert 0.0 <= predictions.min() and predictions.max() <= 1.0
    assert np.mean((predictions > 0.5) == (y > 0.5)) > 0.9


@pytest.mark.parametrize("restored", [False, True])
def test_a_from_logits_that_contradicts_the_model_is_refused_before_training(tmp_path, restored):
    x, y = _separable_data(64)
    model = _binary("sigmoid", reshape=True)
    if restored:
        model = _restored(tmp_path, model)
    before = [v.numpy().copy() for v in (model.variables if restored else model.weights)]
    config = FineTuneConfig(loss="BinaryCrossentropy", from_logits=True, epochs=1)
    with pytest.raises(OutputConventionError, match=r"from_logits=True .* outputs probabilities .*sigmoid|Sigmoid"):
        fine_tune(model, (x, y), None, config, masks={}, verbose=0)
    after = [v.numpy() for v in (model.variables if restored else model.weights)]
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True)), "it trained before refusing"


def test_a_subclassed_model_is_read_from_its_outputs_on_a_sample():
    class Scorer(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3, activation="softmax")

        def call(self, inputs):
            return self.dense(inputs)

    model = Scorer()
    x = np.random.default_rng(3).normal(size=(16, 4)).astype("float32")
    model(x)
    assert output_convention(model)[0] is None
    convention, evidence = output_convention(model, lambda: x)
    assert convention == PROBABILITIES and "no layer graph" in evidence and "sample" in evidence


def test_a_loss_without_from_logits_needs_no_convention():
    x = np.random.default_rng(1).normal(size=(64, 4)).astype("float32")
    inputs = keras.Input((4,))
    relu_out = keras.Model(inputs, keras.layers.Dense(1, activation="relu")(inputs))
    result = fine_tune(relu_out, (x, x[:, :1]), None, FineTuneConfig(loss="MeanSquaredError", epochs=1), {}, verbose=0)
    assert result.no_information_loss is None
    # The structure does not tell; outputs outside [0, 1] on real examples cannot be probabilities.
    assert output_convention(relu_out)[0] is None
    relu_out.layers[-1].bias.assign([100.0])
    convention, evidence = output_convention(relu_out, lambda: x)
    assert convention == LOGITS and "leave [0, 1]" in evidence


def test_no_information_loss_is_ln_k():
    inputs = keras.Input((4,))
    three = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    assert no_information_loss(three, keras.losses.SparseCategoricalCrossentropy()) == pytest.approx(math.log(3))
    assert no_information_loss(_binary("sigmoid"), "binary_crossentropy") == pytest.approx(math.log(2))
    assert no_information_loss(three, keras.losses.MeanSquaredError()) is None


def test_a_fine_tune_that_ended_at_the_uniform_guess_is_refused():
    """A sigmoid model trained as if it output logits sits at ln 2 (the taxi report: 0.6931 every epoch)."""
    stuck = FineTuneResult({"loss": [0.6932, 0.6931], "val_loss": [0.6931, 0.6931]}, {}, math.log(2))
    with pytest.raises(NoLearningError, match=r"validation loss of 0.6931, at or above 0.6931 \(ln 2\)"):
        require_learned(stuck)
    worse = FineTuneResult({"loss": [1.2, 1.15]}, {}, math.log(3))
    with pytest.raises(NoLearningError, match=r"training loss .*ln 3"):
        require_learned(worse)
    require_learned(FineTuneResult({"loss": [0.69, 0.4], "val_loss": [0.69, 0.45]}, {}, math.log(2)))
    require_learned(FineTuneResult({"loss": [5.0]}, {}, None))  # a regression loss has no such floor
