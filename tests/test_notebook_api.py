"""The engine as a data scientist uses it in a notebook: in-memory arrays, their own optimizer and
verbosity, the model left as they had it."""

import os

import numpy as np
import pytest
import tf_keras as keras

from tfx_model_pruning.engine import FineTuneConfig, PruningConfig, fine_tune, prune_model
from tfx_model_pruning.engine.saved_model import save_model

L = keras.layers


def _data(n=96):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 8)).astype("float32")
    return x, (x[:, 0] > 0).astype("int64")


def _model(optimizer):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), L.Dense(16, activation="relu", name="hidden"), L.Dense(2)])
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def test_fine_tune_takes_numpy_arrays_without_a_label_key_and_keeps_the_callers_optimizer(capsys):
    x, y = _data()
    sgd = keras.optimizers.SGD(0.05, momentum=0.9)
    model = _model(sgd)
    _, masks = prune_model(model, PruningConfig(target_sparsity=0.5))
    result = fine_tune(model, (x, y), (x[:32], y[:32]), FineTuneConfig(epochs=2, batch_size=32), masks, verbose=0)
    assert model.optimizer is sgd and int(sgd.iterations.numpy()) == 2 * 3  # two epochs of three batches
    assert len(result.history["loss"]) == 2 and "val_accuracy" in result.history
    assert np.mean(model.get_layer("hidden").kernel.numpy() == 0) == pytest.approx(0.5)  # masks held
    assert "Epoch" not in capsys.readouterr().out  # verbose=0 is respected

    fine_tune(model, (x, y), None, FineTuneConfig(epochs=1, batch_size=32), masks, verbose=2)
    assert "3/3" in capsys.readouterr().out  # and so is verbose=2


def test_saving_leaves_the_callers_model_and_optimizer_state_as_they_were(tmp_path):
    x, y = _data()
    adam = keras.optimizers.Adam(0.01)
    model = _model(adam)
    model.fit(x, y, epochs=1, verbose=0)
    steps, weights = int(adam.iterations.numpy()), [w.numpy() for w in model.weights]
    save_model(model, str(tmp_path / "saved"), signatures=None)
    assert model.optimizer is adam and int(adam.iterations.numpy()) == steps
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(weights, model.weights, strict=True))
    model.fit(x, y, epochs=1, verbose=0)  # still trains on where it was
    assert int(adam.iterations.numpy()) == steps + 3
    assert os.path.isfile(tmp_path / "saved" / "saved_model.pb")
