"""Fine-tuning until recovered: each stop reason, the best weights put back with their zeros, the same run twice."""

import numpy as np
import pytest
import tf_keras as keras
from sklearn.datasets import load_digits

from tfx_model_pruning.engine import FineTuneConfig, PruningConfig, fine_tune, prune_model
from tfx_model_pruning.engine.config import RecoveryConfig
from tfx_model_pruning.engine.recovery import BUDGET, EPOCHS, PLATEAU, RECOVERED, Evaluator, RecoveryRecord


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    return (x[:1200], y[:1200]), (x[1200:], y[1200:])


def _mlp() -> keras.Model:
    inputs = keras.Input((64,), name="pixels")
    hidden = keras.layers.Dense(64, activation="relu", name="hidden_1")(inputs)
    hidden = keras.layers.Dense(64, activation="relu", name="hidden_2")(hidden)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(hidden))
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


@pytest.fixture(scope="module")
def trained(digits):
    """The parent's weights (trained on digits), and the weights and masks after 90% magnitude pruning."""
    (x, y), _ = digits
    keras.utils.set_random_seed(0)
    parent = _mlp()
    parent.fit(x, y, epochs=15, batch_size=32, verbose=0)
    model = _mlp()
    model.set_weights(parent.get_weights())
    _, masks = prune_model(model, PruningConfig(target_sparsity=0.9))
    return parent, model.get_weights(), masks


def _pruned(trained) -> tuple[keras.Model, dict]:
    parent, weights, masks = trained
    model = _mlp()
    model.set_weights(weights)
    return model, masks


def _zeros_hold(model: keras.Model, masks: dict) -> bool:
    return all(np.all(model.get_layer(key.split("::")[0]).kernel.numpy()[~mask] == 0) for key, mask in masks.items())


ACCURACY = "SparseCategoricalAccuracy"


def test_stops_once_recovered_within_the_tolerance_of_the_parent(digits, trained):
    train, val = digits
    model, masks = _pruned(trained)
    config = FineTuneConfig(recovery={"metric": ACCURACY, "tolerance": 0.01})
    result = fine_tune(model, train, val, config, masks, parent=trained[0], verbose=0)
    record = result.recovery

    parent_accuracy = keras.metrics.sparse_categorical_accuracy(val[1], trained[0].predict(val[0], verbose=0))
    assert record.parent == pytest.approx(float(np.mean(parent_accuracy)), abs=1e-6)
    assert record.stop_reason == RECOVERED and record.target == pytest.approx(record.parent - 0.01)
    assert record.evaluations[0].step == 0 and record.evaluations[0].metric < record.target  # pruning cost accuracy
    assert record.last.metric >= record.target and record.steps < config.budget_steps(38)
    assert record.steps == record.last.step and not record.restored_best
    assert _zeros_hold(model, masks)
    accuracy = np.mean(np.argmax(model.predict(val[0], verbose=0), axis=1) == val[1])
    assert accuracy == pytest.approx(record.last.metric, abs=1e-6)  # the weights kept are the ones measured
    assert "(stopped: recovered)" in record.summary() and f"in {record.steps} steps" in record.summary()


def test_a_budget_of_steps_stops_it_and_says_what_to_raise(digits, trained):
    train, val = digits
    model, masks = _pruned(trained)
    # A tolerance no model reaches in 20 steps.
    config = FineTuneConfig(recovery={"metric": ACCURACY, "tolerance": 1e-6, "max_steps": 20, "eval_every_steps": 10})
    record = fine_tune(model, train, val, config, masks, parent=trained[0], verbose=0).recovery
    assert (record.stop_reason, record.budget, record.steps) == (BUDGET, "max_steps", 20)
    assert [e.step for e in record.evaluations] == [0, 10, 20]
    assert record.summary().endswith("raise retrain.recovery.max_steps")
    assert _zeros_hold(model, masks)


def test_a_wall_budget_stops_it_at_the_next_evaluation(digits, trained):
    train, val = digits
    model, masks = _pruned(trained)
    config = FineTuneConfig(recovery={"metric": ACCURACY, "tolerance": 1e-6, "max_seconds": 1e-3})
    record = fine_tune(model, train, val, config, masks, parent=trained[0], verbose=0).recovery
    assert (record.stop_reason, record.budget, record.steps) == (BUDGET, "max_seconds", 0)


def test_a_plateau_stops_it_after_patience_evaluations(digits, trained):
    train, val = digits
    model, masks = _pruned(trained)
    # A rate too small to move the loss by the 0.1% that counts as progress.
    config = FineTuneConfig(
        learning_rate=1e-9, schedule="constant", recovery={"metric": ACCURACY, "tolerance": 1e-6, "patience": 3}
    )
    record = fine_tune(model, train, val, config, masks, parent=trained[0], verbose=0, optimizer="fresh").recovery
    assert record.stop_reason == PLATEAU and len(record.evaluations) == 4  # step 0, then three without progress
    assert "(stopped: no improvement)" in record.summary()


def test_the_best_evaluation_is_restored_with_its_zeros(digits, trained, monkeypatch):
    """The metric peaks at the second evaluation, then falls: those weights come back, zeros and all."""
    train, val = digits
    model, masks = _pruned(trained)
    scripted = iter([0.5, 0.9, 0.6, 0.6, 0.6, 0.6])
    seen = {}
    real_call = Evaluator.__call__

    def scripted_evaluation(self, evaluated):
        _, loss = real_call(self, evaluated)
        value = next(scripted)
        seen[value] = seen.get(value) or [w.copy() for w in model.get_weights()]
        return value, loss + 1.0 - value  # the loss no better after the peak either

    monkeypatch.setattr(Evaluator, "__call__", scripted_evaluation)
    config = FineTuneConfig(recovery={"metric": ACCURACY, "tolerance": 1e-6, "patience": 3, "eval_every_steps": 5})
    result = fine_tune(model, train, val, config, masks, verbose=0)
    record = result.recovery
    assert record.stop_reason == PLATEAU and record.best_step == 5 and record.restored_best
    assert (record.best.metric, record.last.metric) == (0.9, 0.6)
    for kept, best in zip(model.get_weights(), seen[0.9], strict=True):
        np.testing.assert_array_equal(kept, best)
    assert _zeros_hold(model, masks)
    assert result.final_loss == pytest.approx(record.best.loss)  # what require_learned judges


def test_the_same_seed_gives_the_same_run(digits, trained):
    train, val = digits
    runs = []
    for _ in range(2):
        model, masks = _pruned(trained)
        config = FineTuneConfig(seed=3, recovery={"metric": ACCURACY, "tolerance": 0.01})
        record = fine_tune(model, train, val, config, masks, parent=trained[0], verbose=0).recovery
        runs.append(([(e.step, e.metric, e.loss) for e in record.evaluations], model.get_weights()))
    assert runs[0][0] == runs[1][0]
    for first, second in zip(runs[0][1], runs[1][1], strict=True):
        np.testing.assert_array_equal(first, second)


def test_a_fixed_count_runs_every_epoch_and_is_compared_with_the_parent(digits, trained):
    train, val = digits
    model, masks = _pruned(trained)
    config = FineTuneConfig(epochs=2, recovery={"metric": ACCURACY})
    result = fine_tune(model, train, val, config, masks, parent=trained[0], verbose=0)
    steps = 2 * 38  # 1200 examples in batches of 32
    assert len(result.history["loss"]) == 2 and result.recovery.stop_reason == EPOCHS
    assert result.recovery.steps == steps and [e.step for e in result.recovery.evaluations] == [steps]
    assert "after a fixed 76 steps (stopped: epochs)" in result.recovery.summary()


def test_gradual_pruning_is_never_stopped_before_its_final_sparsity(digits, trained):
    train, val = digits
    parent, weights, _ = trained
    model = _mlp()
    model.set_weights(parent.get_weights())  # unpruned: the schedule prunes it
    schedule = {"final_sparsity": 0.8, "begin_step": 0, "end_step": 40, "frequency": 10}
    config = FineTuneConfig(
        gradual_pruning=schedule, recovery={"metric": ACCURACY, "tolerance": 0.5, "eval_every_steps": 10}
    )
    result = fine_tune(model, train, val, config, {}, parent=parent, verbose=0)
    record = result.recovery
    # The unpruned start already meets a tolerance of 0.5, but nothing stops before the batch that
    # makes the masks of step 40 has run: the first evaluation after it is at 50.
    assert record.stop_reason == RECOVERED and record.steps == 50 and record.best_step == 50
    kernels = [mask for key, mask in result.masks.items() if "logits" not in key]
    assert 1.0 - np.mean(np.concatenate([m.ravel() for m in kernels])) == pytest.approx(0.8, abs=0.01)


def test_the_record_reads_back_from_its_json(digits, trained):
    train, val = digits
    model, masks = _pruned(trained)
    config = FineTuneConfig(recovery={"metric": ACCURACY, "tolerance": 1e-6, "max_steps": 10})
    record = fine_tune(model, train, val, config, masks, parent=trained[0], verbose=0).recovery
    again = RecoveryRecord.from_json(record.to_json())
    assert again == record and again.summary() == record.summary()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"tolerance": 0.0}, "greater than 0"),
        ({"tolerance": -0.1}, "greater than 0"),
        ({"max_steps": 0}, "greater than or equal to 1"),
        ({"patience": 0}, "greater than or equal to 1"),
        ({"metric": "sparse_accuracy"}, "SparseCategoricalAccuracy"),
        ({"tolerance": 0.01, "relative_tolerance": 0.01}, "not both"),
    ],
)
def test_bad_recovery_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        RecoveryConfig(**settings)


def test_a_fresh_optimizer_peaks_at_a_share_of_the_models_own_rate_after_a_warm_up(digits, trained):
    train, val = digits
    model, masks = _pruned(trained)  # compiled with Adam(1e-2)
    config = FineTuneConfig(recovery={"metric": ACCURACY, "max_steps": 40})
    result = fine_tune(model, train, val, config, masks, parent=trained[0], verbose=0, optimizer="fresh")
    assert result.learning_rate == {"peak": pytest.approx(0.3 * 1e-2), "schedule": "warmup_cosine", "steps": 40}
    schedule = model.optimizer._learning_rate  # the schedule itself (learning_rate is its current value)
    rates = [float(schedule(step)) for step in (0, 2, 10, 39)]
    assert rates[0] == 0.0 and rates[1] == pytest.approx(0.003)  # 5% of 40 steps of warm-up
    assert rates[1] > rates[2] > rates[3] > 0.0  # then the cosine down


@pytest.mark.parametrize("generation", ["tf_keras", "keras"])
def test_batch_norm_statistics_are_recomputed_as_the_mean_over_train_batches(generation):
    import keras as keras3
    import tensorflow as tf

    from tfx_model_pruning.engine.recovery import batch_norm_layers, recalibrate_batch_norm

    library = keras if generation == "tf_keras" else keras3
    inputs = library.Input((3,))
    model = library.Model(inputs, library.layers.BatchNormalization(momentum=0.999, name="bn")(inputs))
    x = np.random.default_rng(0).normal(loc=[5.0, -2.0, 0.5], size=(128, 3)).astype("float32")
    layers = batch_norm_layers(model)
    assert [layer.name for layer in layers] == ["bn"]
    read = recalibrate_batch_norm(model, layers, tf.data.Dataset.from_tensor_slices((x, x[:, 0])).batch(32))
    assert read == 4 and layers[0].momentum == 0.999  # its own momentum back
    np.testing.assert_allclose(np.asarray(layers[0].moving_mean), x.mean(axis=0), rtol=1e-4)
    # The variance: the mean of the four batches' own (what the layer normalizes with in training).
    batch_variances = x.reshape(4, 32, 3).var(axis=1).mean(axis=0)
    np.testing.assert_allclose(np.asarray(layers[0].moving_variance), batch_variances, rtol=1e-4)


@pytest.mark.parametrize("form", ["live", "tf_keras SavedModel", "tf_keras HDF5", "keras3 .keras"])
def test_the_models_own_rate_is_where_its_schedule_ended_also_once_saved(tmp_path, digits, form):
    """The rate fine-tuning scales is the one training ended on: a decaying schedule read at its
    last step (1e-2 halved 4 times = 6.25e-4), not at its first (1e-2), in every saved form."""
    import keras as keras3

    from tfx_model_pruning.engine.finetune import trained_learning_rate
    from tfx_model_pruning.engine.prune import prune_saved_model
    from tfx_model_pruning.engine.saved_model import load_model

    (x, y), _ = digits
    library = keras3 if form.startswith("keras3") else keras
    library.utils.set_random_seed(0)
    model = library.Sequential(
        [
            library.Input((64,)),
            library.layers.Dense(32, activation="relu"),
            library.layers.Dense(10, activation="softmax"),
        ]
    )
    schedule = library.optimizers.schedules.ExponentialDecay(1e-2, decay_steps=10, decay_rate=0.5)
    model.compile(library.optimizers.Adam(schedule), "sparse_categorical_crossentropy")
    model.fit(x[:320], y[:320], batch_size=32, epochs=4, verbose=0)  # 40 steps
    if form == "tf_keras SavedModel":
        model.save(str(tmp_path / "model"))
        model = load_model(str(tmp_path / "model")).model
    elif form == "tf_keras HDF5":
        model.save(str(tmp_path / "model.h5"))
        model = keras.models.load_model(str(tmp_path / "model.h5"))
    elif form == "keras3 .keras":
        (tmp_path / "model").mkdir()
        model.save(str(tmp_path / "model" / "model.keras"))
        model = load_model(str(tmp_path / "model")).model
    assert int(model.optimizer.iterations) == 40
    assert trained_learning_rate(model) == pytest.approx(6.25e-4, rel=1e-5)
    if form in ("tf_keras SavedModel", "keras3 .keras"):  # and after pruning, which saves a fresh optimizer
        pruned = tmp_path / "pruned"
        prune_saved_model(str(tmp_path / "model"), str(pruned), PruningConfig(target_sparsity=0.5), latency_repeats=0)
        assert trained_learning_rate(load_model(str(pruned)).model) == pytest.approx(6.25e-4, rel=1e-5)
