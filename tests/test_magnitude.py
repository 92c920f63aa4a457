"""Engine: unstructured magnitude pruning on small handmade models."""

import re

import numpy as np
import pytest
import tf_keras as keras
from pydantic import ValidationError

from tfx_model_pruning.engine import PruningConfig, PruningConfigError, find_prunable_weights, prune_model


def _mlp(seed=0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((16,), name="x")
    x = keras.layers.Dense(32, activation="relu", name="hidden_a")(inputs)
    x = keras.layers.Dense(24, activation="relu", name="hidden_b")(x)
    outputs = keras.layers.Dense(4, name="head")(x)
    return keras.Model(inputs, outputs)


def _kernel(model, name):
    return model.get_layer(name).kernel.numpy()


def _zero_fraction(arrays):
    arrays = list(arrays)
    return sum(int((a == 0).sum()) for a in arrays) / sum(a.size for a in arrays)


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.8, 0.95])
def test_global_sparsity_is_exact_and_removes_the_smallest_weights(sparsity):
    model = _mlp()
    before = {name: _kernel(model, name) for name in ("hidden_a", "hidden_b")}
    prune_model(model, PruningConfig(target_sparsity=sparsity))
    after = {name: _kernel(model, name) for name in before}

    assert abs(_zero_fraction(after.values()) - sparsity) <= 0.005
    everything = np.concatenate([np.abs(v).ravel() for v in before.values()])
    kept = np.concatenate([np.abs(before[n])[after[n] != 0] for n in before])
    removed = np.concatenate([np.abs(before[n])[after[n] == 0] for n in before])
    assert removed.max() <= kept.min(), "a larger weight was pruned while a smaller one was kept"
    assert everything.size == kept.size + removed.size
    for name in before:  # survivors keep their exact values and positions (no scrambling)
        mask = after[name] != 0
        np.testing.assert_array_equal(after[name][mask], before[name][mask])
        assert after[name].shape == before[name].shape


def test_per_layer_sparsity_is_exact_in_every_layer():
    model = _mlp()
    prune_model(model, PruningConfig(target_sparsity=0.7, scope="per_layer"))
    for name in ("hidden_a", "hidden_b"):
        assert abs(_zero_fraction([_kernel(model, name)]) - 0.7) <= 0.005


def test_threshold_zeroes_exactly_the_weights_below_it():
    model = _mlp()
    before = _kernel(model, "hidden_b")
    threshold = float(np.median(np.abs(before)))
    prune_model(model, PruningConfig(magnitude_threshold=threshold))
    after = _kernel(model, "hidden_b")
    np.testing.assert_array_equal(after == 0, np.abs(before) < threshold)
    np.testing.assert_array_equal(after[np.abs(before) >= threshold], before[np.abs(before) >= threshold])


def test_output_layer_is_protected_by_default_and_can_be_unprotected():
    model = _mlp()
    head = _kernel(model, "head")
    prune_model(model, PruningConfig(target_sparsity=0.9))
    np.testing.assert_array_equal(_kernel(model, "head"), head)

    model = _mlp()
    prune_model(model, PruningConfig(target_sparsity=0.9, protect_output_layer=False))
    assert _zero_fraction([_kernel(model, "head")]) > 0


def test_output_layer_behind_an_activation_is_still_found():
    inputs = keras.Input((8,))
    x = keras.layers.Dense(8, name="hidden")(inputs)
    x = keras.layers.Dense(3, name="scores")(x)
    outputs = keras.layers.Softmax(name="probabilities")(x)
    model = keras.Model(inputs, outputs)
    weights = find_prunable_weights(model, PruningConfig(target_sparsity=0.5))
    assert {w.layer_name: w.protected_by for w in weights} == {"hidden": None, "scores": "output layer"}


def test_protected_layers_by_name_and_regex_are_untouched():
    model = _mlp()
    hidden_a = _kernel(model, "hidden_a")
    prune_model(model, PruningConfig(target_sparsity=0.5, protected_layers=["hidden_a"]))
    np.testing.assert_array_equal(_kernel(model, "hidden_a"), hidden_a)
    assert abs(_zero_fraction([_kernel(model, "hidden_b")]) - 0.5) <= 0.005

    model = _mlp()
    kernels = {n: _kernel(model, n) for n in ("hidden_a", "hidden_b")}
    unmatched = ["hidden_.", "nothing|other"]
    with pytest.raises(PruningConfigError, match=re.escape("['nothing|other'] match no layer")):
        prune_model(model, PruningConfig(target_sparsity=0.5, protected_layers=unmatched, protect_output_layer=False))
    prune_model(model, PruningConfig(target_sparsity=0.5, protected_layers=["hidden_."], protect_output_layer=False))
    for name, kernel in kernels.items():
        np.testing.assert_array_equal(_kernel(model, name), kernel)
    assert abs(_zero_fraction([_kernel(model, "head")]) - 0.5) <= 0.005


def test_kernels_smaller_than_min_weights_are_left_whole():
    model = _mlp()
    hidden_a = _kernel(model, "hidden_a")  # 16 x 32 = 512 weights; hidden_b has 768
    weights, _ = prune_model(model, PruningConfig(target_sparsity=0.5, min_weights=600))
    np.testing.assert_array_equal(_kernel(model, "hidden_a"), hidden_a)
    assert abs(_zero_fraction([_kernel(model, "hidden_b")]) - 0.5) <= 0.005
    assert {w.layer_name: w.protected_by for w in weights}["hidden_a"] == "fewer than min_weights=600 weights"
    with pytest.raises(PruningConfigError, match="every prunable layer is protected"):
        prune_model(_mlp(), PruningConfig(target_sparsity=0.5, min_weights=10_000))


def test_pattern_matching_no_layer_is_an_error():
    with pytest.raises(PruningConfigError, match=re.escape("['encoder.*'] match no layer")):
        prune_model(_mlp(), PruningConfig(target_sparsity=0.5, protected_layers=["encoder.*"]))


def test_everything_protected_is_an_error():
    with pytest.raises(PruningConfigError, match="every prunable layer is protected"):
        prune_model(_mlp(), PruningConfig(target_sparsity=0.5, protected_layers=["hidden_.*"]))


def test_conv_depthwise_separable_embedding_and_recurrent_kernels_are_pruned():
    image = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, name="conv")(image)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.DepthwiseConv2D(3, name="depthwise")(x)
    x = keras.layers.SeparableConv2D(8, 3, name="separable")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    tokens = keras.Input((5,), dtype="int32")
    t = keras.layers.Embedding(50, 6, name="embedding")(tokens)
    t = keras.layers.LSTM(4, name="lstm")(t)
    x = keras.layers.Concatenate()([x, t])
    model = keras.Model([image, tokens], keras.layers.Dense(2, name="head")(x))

    weights, _ = prune_model(model, PruningConfig(target_sparsity=0.6, scope="per_layer"))
    pruned = {w.key for w in weights if not w.protected}
    assert pruned == {
        "conv::kernel",
        "depthwise::depthwise_kernel",
        "separable::depthwise_kernel",
        "separable::pointwise_kernel",
        "embedding::embeddings",
        "lstm::kernel",
        "lstm::recurrent_kernel",
    }
    for weight in weights:
        if not weight.protected:
            values = weight.variable.numpy()  # a count of zeros can only be as fine as 1/size
            # ceil(0.6 * size) weights: never below the target, at most one weight above it.
            assert 0.6 <= _zero_fraction([values]) <= 0.6 + 1.0 / values.size, weight.key
    assert not np.any(model.get_layer("bn").gamma.numpy() == 0), "BatchNorm must not be pruned"


def test_earlier_masks_stay_masked_when_pruning_again():
    model = _mlp()
    _, first = prune_model(model, PruningConfig(target_sparsity=0.5))
    for layer in ("hidden_a", "hidden_b"):  # training noise on pruned positions must not revive them
        kernel = model.get_layer(layer).kernel
        kernel.assign(kernel.numpy() + 1e-3)
    _, second = prune_model(model, PruningConfig(target_sparsity=0.7), existing_masks=first)
    for key in first:
        assert not np.any(second[key] & ~first[key]), key
    assert abs(_zero_fraction([_kernel(model, "hidden_a"), _kernel(model, "hidden_b")]) - 0.7) <= 0.005


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"target_sparsity": 0.0}, "greater than 0"),
        ({"target_sparsity": 1.0}, "less than 1"),
        ({"target_sparsity": 1.5}, "less than 1"),
        ({"target_sparsity": -0.1}, "greater than 0"),
        ({}, "exactly one"),
        ({"target_sparsity": 0.5, "magnitude_threshold": 0.1}, "exactly one"),
        ({"magnitude_threshold": 0.1, "scope": "per_layer"}, "scope applies to target_sparsity"),
        ({"target_sparsity": 0.5, "protected_layers": ["dense_("]}, "not a valid regular expression"),
        ({"target_sparsity": 0.5, "scope": "layerwise"}, "global"),
    ],
)
def test_invalid_configs_are_rejected(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        PruningConfig(**kwargs)


@pytest.mark.parametrize("pattern, expected_sparsity", [("2:4", 0.5), ("1:4", 0.75), ("3:8", 0.625)])
def test_n_of_m_keeps_the_largest_n_of_every_m_along_the_input_axis(pattern, expected_sparsity):
    model = _mlp()
    before = _kernel(model, "hidden_a")  # 16 x 32: input size is a multiple of 4 and 8
    prune_model(model, PruningConfig(n_m=pattern))
    after = _kernel(model, "hidden_a")
    n, m = (int(p) for p in pattern.split(":"))
    runs_after = after.T.reshape(32, 16 // m, m)
    runs_before = np.abs(before.T.reshape(32, 16 // m, m))
    assert np.all((runs_after != 0).sum(axis=-1) == n)
    kept_min = np.where(runs_after != 0, runs_before, np.inf).min(axis=-1)
    dropped_max = np.where(runs_after == 0, runs_before, -np.inf).max(axis=-1)
    assert np.all(dropped_max <= kept_min)
    assert _zero_fraction([after]) == pytest.approx(expected_sparsity)


def test_n_of_m_on_a_conv_kernel_and_a_ragged_input_axis():
    image = keras.Input((6, 6, 6))
    x = keras.layers.Conv2D(4, 3, name="conv")(image)  # kernel 3x3x6x4: input axis of 6 = one run of 4 + 2
    model = keras.Model(image, keras.layers.Dense(2, name="head")(keras.layers.Flatten()(x)))
    prune_model(model, PruningConfig(n_m="2:4"))
    kernel = np.moveaxis(model.get_layer("conv").kernel.numpy(), -2, -1)
    assert np.all((kernel[..., :4] != 0).sum(axis=-1) == 2)
    assert np.all((kernel[..., 4:] != 0).sum(axis=-1) == 2), "the short tail run keeps its N largest"


@pytest.mark.parametrize("pattern", ["4:4", "5:4", "0:4", "2-4", "2:4:8"])
def test_invalid_n_of_m(pattern):
    with pytest.raises(ValidationError):
        PruningConfig(n_m=pattern)


def _wrapped_recurrent_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 16), name="sequence")
    x = keras.layers.Bidirectional(keras.layers.LSTM(32, return_sequences=True, name="lstm"), name="bidirectional")(
        inputs
    )
    x = keras.layers.TimeDistributed(keras.layers.Dense(32, name="dense"), name="per_step")(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    outputs = keras.layers.TimeDistributed(keras.layers.Dense(3, name="dense_1"), name="head")(
        keras.layers.Reshape((1, 32))(x)
    )
    return keras.Model(inputs, outputs)


def test_layers_inside_bidirectional_and_time_distributed_are_pruned_and_reported():
    from tfx_model_pruning.engine.report import layer_rows, weight_stats

    model = _wrapped_recurrent_model()
    nonzeros_before = {
        w.key: int(np.count_nonzero(w.variable.numpy()))
        for w in find_prunable_weights(model, PruningConfig(target_sparsity=0.8))
    }
    weights, masks = prune_model(model, PruningConfig(target_sparsity=0.8))
    rows = {f"{row.layer}::{row.weight}": row for row in layer_rows(weights, nonzeros_before)}

    lstm_keys = [
        f"bidirectional/{direction}_lstm::{attribute}"
        for direction in ("forward", "backward")
        for attribute in ("kernel", "recurrent_kernel")
    ]
    assert set(lstm_keys + ["per_step/dense::kernel"]) <= set(rows)
    assert rows["head/dense_1::kernel"].protected_by == "output layer"
    assert sum(rows[key].params for key in lstm_keys) == 2 * (16 * 128 + 32 * 128)  # every LSTM weight counted
    pruned = [row for row in rows.values() if row.protected_by is None]
    measured = sum(row.params - row.nonzeros_after for row in pruned) / sum(row.params for row in pruned)
    assert abs(measured - 0.8) <= 0.001

    # Each sparsity figure is measured over the weights it names: the masked ones, then every kernel.
    stats = weight_stats(model, masks)
    assert abs(stats["masked_sparsity"] - measured) <= 1e-9
    every = sum(row.params for row in rows.values())
    assert stats["kernel_params"] == every
    assert abs(stats["kernel_sparsity"] - sum(r.params - r.nonzeros_after for r in rows.values()) / every) < 1e-9


def test_a_target_sparsity_is_never_missed_by_rounding():
    from tfx_model_pruning.engine.masks import keep_largest

    values = np.random.default_rng(0).normal(size=20_001)
    for target in (0.6, 0.8, 0.95, 0.3333):
        pruned = 1 - keep_largest(values, target).mean()
        assert target <= pruned <= target + 1 / values.size
