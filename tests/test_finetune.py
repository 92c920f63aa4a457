"""Engine: fine-tuning keeps pruned weights at exactly zero, and input errors are clear."""

import numpy as np
import pytest
import tf_keras as keras

from tfx_model_pruning.engine import (
    ExamplesMismatchError,
    FineTuneConfig,
    KeepPrunedWeightsZero,
    PruningConfig,
    examples_dataset,
    fine_tune,
    load_model,
    prune_model,
    prune_saved_model,
)
from tfx_model_pruning.engine.finetune import make_loss, mask_variables


@pytest.fixture
def pruned_penguin(tmp_path, penguin_baseline):
    out = str(tmp_path / "pruned")
    prune_saved_model(penguin_baseline, out, PruningConfig(target_sparsity=0.9))
    return load_model(out)


@pytest.mark.integration
def test_zeros_survive_fine_tuning_and_the_rest_learns(pruned_penguin, penguin_files):
    model, masks = pruned_penguin.model, pruned_penguin.masks
    before = {key: model.get_layer(key.split("::")[0]).kernel.numpy().copy() for key in masks}
    config = FineTuneConfig(label_key="species", epochs=3, learning_rate=0.05)
    train = examples_dataset(penguin_files["train"], model, "species", 16, shuffle_buffer=256)
    history = fine_tune(model, train, None, config, masks).history

    assert len(history["loss"]) == 3
    for key, mask in masks.items():
        after = model.get_layer(key.split("::")[0]).kernel.numpy()
        assert np.all(after[~mask] == 0), f"{key}: a pruned weight came back"
        assert not np.allclose(after[mask], before[key][mask]), f"{key}: surviving weights did not train"
    # Without the masks the same optimizer revives pruned weights: the callback is what holds them.
    free = keras.models.clone_model(model)
    free.set_weights(model.get_weights())
    free.compile(optimizer=keras.optimizers.Adam(0.05), loss=make_loss("SparseCategoricalCrossentropy", True))
    free.fit(train, epochs=1, verbose=0)
    revived = sum(int(np.count_nonzero(free.get_layer(k.split("::")[0]).kernel.numpy()[~m])) for k, m in masks.items())
    assert revived > 0


@pytest.mark.integration
def test_steps_per_epoch_repeats_the_data(pruned_penguin, penguin_files):
    model = pruned_penguin.model
    train = examples_dataset(penguin_files["train"], model, "species", 64)
    config = FineTuneConfig(label_key="species", epochs=1, steps_per_epoch=20)  # 20 > 4 batches per pass
    history = fine_tune(model, train, None, config, pruned_penguin.masks).history
    assert len(history["loss"]) == 1


@pytest.mark.integration
def test_absent_label_key_names_the_available_features(pruned_penguin, penguin_files):
    with pytest.raises(ExamplesMismatchError, match=r"label_key 'island' .*body_mass_g"):
        examples_dataset(penguin_files["train"], pruned_penguin.model, "island", 8)


def test_model_input_absent_from_examples(penguin_files):
    inputs = keras.Input((1,), name="beak_colour")
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    with pytest.raises(ExamplesMismatchError, match="model input 'beak_colour'"):
        examples_dataset(penguin_files["train"], model, "species", 8)


def test_unknown_loss_name():
    with pytest.raises(ValueError, match="not a Keras loss class name"):
        make_loss("sparse_crossentropy_typo", True)


def _small_pruned_model(steps_per_execution):
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(8,))
    outputs = keras.layers.Dense(3)(keras.layers.Dense(16, activation="relu", name="hidden")(inputs))
    model = keras.Model(inputs, outputs)
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    model.compile(optimizer=optimizer, loss="mse", steps_per_execution=steps_per_execution)
    _, masks = prune_model(model, PruningConfig(target_sparsity=0.75, protect_output_layer=False))
    return model, masks


def test_the_masks_hold_at_every_step_inside_the_compiled_loop_and_leave_with_the_callback():
    x, y = np.random.default_rng(0).normal(size=(256, 8)), np.random.default_rng(1).normal(size=(256, 3))
    kernels = []
    for steps_per_execution in (1, 4):
        # Four steps per call of the train function: a per-batch Python hook sees only every fourth,
        # so momentum would move the pruned weights in between and the two runs would part.
        model, masks = _small_pruned_model(steps_per_execution)
        hold = KeepPrunedWeightsZero(mask_variables(model, masks))
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[hold])
        kernels.append([weight.numpy() for weight in model.trainable_weights])
        assert "train_step" not in vars(model), "the model's own train step is back after fit"
    for one_step, four_steps in zip(*kernels, strict=True):
        np.testing.assert_allclose(four_steps, one_step, rtol=1e-5, atol=1e-6)
    (key,) = [key for key in masks if key.startswith("hidden")]
    kernel, pruned = model.get_layer("hidden").kernel, ~masks[key]
    assert np.all(kernel.numpy()[pruned] == 0) and np.any(kernel.numpy()[~pruned] != 0)

    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # without the callback nothing holds the zeros
    assert np.any(kernel.numpy()[pruned] != 0)


def test_epochs_0_returns_the_model_untouched_with_its_masks():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="a"), keras.layers.Dense(2, name="b")])
    model.compile("adam", "sparse_categorical_crossentropy")
    _, masks = prune_model(model, PruningConfig(target_sparsity=0.5))
    before = [weight.numpy().copy() for weight in model.weights]
    x, y = np.ones((16, 4), "float32"), np.zeros(16, "int64")
    config = FineTuneConfig(epochs=0)
    assert not config.fine_tunes and FineTuneConfig(epochs=1).fine_tunes and FineTuneConfig().fine_tunes
    result = fine_tune(model, (x, y), None, config, masks, verbose=0)
    for weight, kept in zip(before, model.weights, strict=True):
        np.testing.assert_array_equal(weight, kept.numpy())
    assert result.history == {} and set(result.masks) == set(masks) and result.recovery is None


def test_epochs_0_with_settings_that_only_act_while_training_names_them_all():
    from pydantic import ValidationError

    from tfx_model_pruning.engine.config import DistillationConfig

    with pytest.raises(ValidationError, match=r"so distillation, recovery would never take effect: drop them"):
        FineTuneConfig(epochs=0, distillation=DistillationConfig(), recovery={"metric": "AUC"})
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        FineTuneConfig(epochs=-1)
