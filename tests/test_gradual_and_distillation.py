"""Gradual pruning inside the compiled training step, and distillation from the unpruned model."""

import keras as keras3
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from pydantic import ValidationError
from tfx import types
from tfx.types import standard_artifacts

from tfx_model_pruning import RetrainComponent
from tfx_model_pruning.engine import FineTuneConfig, examples_dataset, fine_tune, load_model
from tfx_model_pruning.engine.config import DistillationConfig, GradualPruningSchedule
from tfx_model_pruning.engine.finetune import make_loss
from tfx_model_pruning.engine.gradual import (
    GradualPruner,
    as_class_logits,
    distillation_loss,
    masked_train_loop,
    per_example_loss,
)
from tfx_model_pruning.engine.magnitude import find_prunable_weights

MODEL = types.Channel(type=standard_artifacts.Model)
EXAMPLES = types.Channel(type=standard_artifacts.Examples)


def _mlp():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12,))
    x = keras.layers.Dense(32, activation="relu", name="a")(inputs)
    x = keras.layers.Dense(32, activation="relu", name="b")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="out")(x))


def _data(batches=200):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batches * 16, 12)).astype("float32")
    y = (x[:, 0] > 0).astype("int64") + (x[:, 1] > 0).astype("int64")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(16)


def _sparsity(model, names=("a", "b")):
    kernels = [model.get_layer(n).kernel.numpy() for n in names]
    return sum(int((k == 0).sum()) for k in kernels) / sum(k.size for k in kernels)


def test_schedule_reaches_its_target_on_time_and_zeros_stay_zero():
    model = _mlp()
    schedule = GradualPruningSchedule(final_sparsity=0.8, begin_step=10, end_step=100, frequency=15)
    pruner = GradualPruner(find_prunable_weights(model, schedule.as_pruning_config()), schedule)
    loss, optimizer = make_loss("SparseCategoricalCrossentropy", True), keras.optimizers.Adam(1e-2)

    beats = [step for step in range(130) if bool(pruner.should_update(tf.constant(step, tf.int64)))]
    assert beats == [10, 25, 40, 55, 70, 85, 100], "every `frequency` steps, and at end_step"

    masked_train_loop(model, _data(), 150, loss, optimizer, pruner=pruner)
    pruner_masks = pruner.numpy_masks()
    assert _sparsity(model) == pytest.approx(0.8, abs=0.005)
    for key, mask in pruner_masks.items():
        assert np.all(model.get_layer(key.split("::")[0]).kernel.numpy()[~mask] == 0)
    assert np.all(model.get_layer("out").kernel.numpy() != 0), "the output layer is protected"


def test_mask_update_hits_the_scheduled_sparsity_midway():
    model = _mlp()
    schedule = GradualPruningSchedule(final_sparsity=0.8, begin_step=10, end_step=100, frequency=15)
    pruner = GradualPruner(find_prunable_weights(model, schedule.as_pruning_config()), schedule)
    pruner.update_masks(pruner.sparsity_at(tf.constant(55, tf.int64)))
    pruner.apply()
    assert 0.05 < schedule.sparsity_at(55) < 0.8
    assert _sparsity(model) == pytest.approx(schedule.sparsity_at(55), abs=0.005)


def test_schedule_sparsity_follows_the_polynomial():
    schedule = GradualPruningSchedule(initial_sparsity=0.1, final_sparsity=0.9, begin_step=0, end_step=100)
    assert schedule.sparsity_at(0) == pytest.approx(0.1)
    assert schedule.sparsity_at(50) == pytest.approx(0.9 - 0.8 * 0.5**3)
    assert schedule.sparsity_at(100) == schedule.sparsity_at(500) == pytest.approx(0.9)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"final_sparsity": 0.5, "initial_sparsity": 0.6, "end_step": 10}, "must exceed"),
        ({"final_sparsity": 0.5, "begin_step": 10, "end_step": 10}, "must come after"),
        ({"final_sparsity": 0.5, "end_step": 50, "frequency": 100}, "longer than the pruning window"),
        ({"final_sparsity": 1.0, "end_step": 50}, "less than 1"),
    ],
)
def test_schedules_that_cannot_work_are_rejected(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        GradualPruningSchedule(**kwargs)


def test_a_schedule_longer_than_training_is_an_error_before_training():
    schedule = GradualPruningSchedule(final_sparsity=0.9, end_step=1000, frequency=100)
    with pytest.raises(ValueError, match="would never reach its target"):
        schedule.check_fits(500)
    with pytest.raises(ValidationError, match="would never reach its target"):
        FineTuneConfig(label_key="y", epochs=2, steps_per_epoch=100, gradual_pruning=schedule)
    with pytest.raises(ValidationError, match="would never reach its target"):
        RetrainComponent(
            model=MODEL, examples=EXAMPLES, label_key="y", epochs=2, steps_per_epoch=100,
            gradual_pruning={"final_sparsity": 0.9, "end_step": 1000, "frequency": 100},
        )  # fmt: skip
    model = _mlp()
    before = model.get_weights()
    with pytest.raises(ValueError, match="would never reach its target"):
        masked_train_loop(
            model, _data(), 500, make_loss("SparseCategoricalCrossentropy", True), keras.optimizers.Adam(),
            pruner=GradualPruner(find_prunable_weights(model, schedule.as_pruning_config()), schedule),
        )  # fmt: skip
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))


def test_distillation_loss_mixes_hard_and_soft_terms_per_example():
    hard = make_loss("SparseCategoricalCrossentropy", True)
    labels = tf.constant([0, 2])
    student = tf.constant([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    teacher = tf.constant([[1.0, 1.0, -2.0], [0.0, 0.0, 3.0]])
    only_hard = distillation_loss(DistillationConfig(alpha=1.0), hard)(labels, student, teacher)
    assert only_hard.shape == (2,)  # one value per example: a distributed step averages them over the batch
    assert float(tf.reduce_mean(only_hard)) == pytest.approx(float(hard(labels, student)))
    self_soft = distillation_loss(DistillationConfig(alpha=0.0), hard)(labels, student, student)
    np.testing.assert_allclose(self_soft.numpy(), 0.0, atol=1e-6)
    soft = distillation_loss(DistillationConfig(alpha=0.0, temperature=2.0), hard)(labels, student, teacher)
    kl = keras.losses.KLDivergence()(tf.nn.softmax(teacher / 2.0), tf.nn.softmax(student / 2.0))
    assert float(tf.reduce_mean(soft)) == pytest.approx(4.0 * float(kl), rel=1e-5)


@pytest.mark.parametrize("generation", ["tf_keras", "keras3"])
def test_per_example_loss_averages_to_what_the_loss_reduces_to(generation):
    losses = keras.losses if generation == "tf_keras" else keras3.losses
    rng = np.random.default_rng(0)
    labels = tf.constant(rng.integers(0, 4, size=(5, 7)))  # a sequence: a loss per time step
    logits = tf.constant(rng.normal(size=(5, 7, 4)).astype("float32"))
    reduced = losses.SparseCategoricalCrossentropy(from_logits=True)
    per_example = per_example_loss(reduced, labels, logits)
    assert per_example.shape == (5,)
    assert float(tf.reduce_mean(per_example)) == pytest.approx(float(reduced(labels, logits)), rel=1e-6)
    probabilities = tf.nn.softmax(logits)  # a loss given as a plain function
    per_example = per_example_loss(losses.sparse_categorical_crossentropy, labels, probabilities)
    expected = tf.reduce_mean(losses.sparse_categorical_crossentropy(labels, probabilities))
    assert float(tf.reduce_mean(per_example)) == pytest.approx(float(expected), rel=1e-6)


def test_distillation_without_a_teacher_is_refused_at_construction():
    with pytest.raises(ValueError, match="needs a teacher_model"):
        RetrainComponent(model=MODEL, examples=EXAMPLES, label_key="y", distillation={"temperature": 2.0})
    with pytest.raises(ValidationError, match="alpha"):
        RetrainComponent(
            model=MODEL, examples=EXAMPLES, label_key="y", distillation={"alpha": 1.5}, teacher_model=MODEL
        )


@pytest.mark.integration
def test_gradual_pruning_with_distillation_on_penguin(penguin_baseline, penguin_files):
    student = load_model(penguin_baseline)
    teacher = load_model(penguin_baseline).model
    config = FineTuneConfig(
        label_key="species", epochs=4, batch_size=16, steps_per_epoch=15,
        gradual_pruning=GradualPruningSchedule(final_sparsity=0.85, end_step=40, frequency=5),
        distillation=DistillationConfig(temperature=2.0, alpha=0.5),
    )  # fmt: skip
    train = examples_dataset(penguin_files["train"], student.model, "species", 16, shuffle_buffer=256)
    evaluation = examples_dataset(penguin_files["eval"], student.model, "species", 32)
    result = fine_tune(student.model, train, evaluation, config, {}, teacher=teacher)
    assert set(result.masks) == {"hidden_0::kernel", "hidden_1::kernel"}
    total = sum(m.size for m in result.masks.values())
    assert sum(int((~m).sum()) for m in result.masks.values()) / total == pytest.approx(0.85, abs=0.005)
    assert len(result.history["loss"]) == 4 and result.history["val_sparse_categorical_accuracy"][0] > 0.8


@pytest.mark.parametrize("outputs", ["sigmoid", "softmax"])
def test_a_student_ending_in_a_sigmoid_or_softmax_is_distilled_towards_its_teacher(outputs):
    """Class scores are compared as logits: log-probabilities, and two classes for one sigmoid column
    (a softmax over one column is always 1, which distilled nothing)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 4)).astype("float32")
    width, activation = (1, "sigmoid") if outputs == "sigmoid" else (3, "softmax")

    def network(seed):
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((4,))
        hidden = keras.layers.Dense(16, activation="relu")(inputs)
        return keras.Model(inputs, keras.layers.Dense(width, activation=activation)(hidden))

    teacher, student = network(1), network(2)
    labels = np.zeros((256, 1), "float32") if outputs == "sigmoid" else np.zeros(256, "int64")
    loss = "BinaryCrossentropy" if outputs == "sigmoid" else "SparseCategoricalCrossentropy"
    student.compile(optimizer=keras.optimizers.Adam(0.02))
    gap_before = np.abs(student(x).numpy() - teacher(x).numpy()).mean()
    # alpha 0: only the soft term trains, so the student can only move towards the teacher.
    config = FineTuneConfig(loss=loss, epochs=20, batch_size=32, distillation=DistillationConfig(alpha=0.0))
    fine_tune(student, (x, labels), None, config, {}, teacher=teacher, verbose=0)
    gap_after = np.abs(student(x).numpy() - teacher(x).numpy()).mean()
    assert gap_after < 0.5 * gap_before, (gap_before, gap_after)


def test_class_logits_of_probabilities_and_of_one_column():
    p = tf.constant([[0.2], [0.9]])
    np.testing.assert_allclose(
        tf.nn.softmax(as_class_logits(p, probabilities=True)).numpy(), [[0.8, 0.2], [0.1, 0.9]], rtol=1e-5
    )
    z = tf.constant([[0.0], [2.0]])
    np.testing.assert_allclose(
        tf.nn.softmax(as_class_logits(z, probabilities=False)).numpy()[:, 1], tf.sigmoid(z).numpy()[:, 0], rtol=1e-5
    )
    scores = tf.constant([[1.0, 2.0, 3.0]])
    assert as_class_logits(scores, probabilities=False) is scores
