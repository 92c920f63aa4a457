"""Keras 3 models (``import keras``, TensorFlow's default Keras since 2.16) through every engine
method, as a data scientist uses them in a notebook: the same calls as for tf-keras."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from equivalence import check_equivalent, forward
from masked_attention import MASKS, hidden_changes, masked_encoder

from tfx_model_pruning.engine import (
    FineTuneConfig,
    LayerRemovalConfig,
    PruningConfig,
    StructuredPruningConfig,
    fine_tune,
    prune_model,
    prune_structured,
    remove_layers,
)
from tfx_model_pruning.engine.config import DistillationConfig, GradualPruningSchedule
from tfx_model_pruning.engine.efficiency import count_flops
from tfx_model_pruning.engine.graph import KERAS_3, TF_KERAS, generation
from tfx_model_pruning.engine.magnitude import find_prunable_weights
from tfx_model_pruning.engine.restored import KerasBackendError
from tfx_model_pruning.engine.sensitivity import allocate, sensitivity_curves

L = keras.layers


def _data(n=192, features=8):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, features)).astype("float32")
    return x, ((x[:, 0] > 0).astype("int64") + (x[:, 1] > 0).astype("int64"))


def _classifier(optimizer="adam"):
    """Functional, with a ``keras.ops`` residual the graph records as an operation, not a layer."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,), name="x")
    hidden = L.Dense(32, activation="relu", name="a")(inputs)
    branch = L.Dense(32, name="b")(hidden)
    joined = L.BatchNormalization(name="bn")(keras.ops.relu(hidden + branch))
    model = keras.Model(inputs, L.Dense(3, name="out")(L.Dense(16, activation="relu", name="c")(joined)))
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def _zeros(model, name):
    return float(np.mean(model.get_layer(name).kernel.numpy() == 0))


def test_the_engine_reads_keras_3_through_its_own_reader():
    model = _classifier()
    assert generation(model) is KERAS_3 and generation(keras.layers.Dense(2)) is KERAS_3
    import tf_keras

    assert generation(tf_keras.layers.Dense(2)) is TF_KERAS


@pytest.mark.parametrize(
    "config, expected",
    [
        (PruningConfig(target_sparsity=0.8), None),
        (PruningConfig(target_sparsity=0.6, scope="per_layer"), {"a": 0.6, "b": 0.6, "c": 0.6}),
        (PruningConfig(n_m="2:4"), {"a": 0.5, "b": 0.5, "c": 0.5}),
        (PruningConfig(target_sparsity=0.7, scope="per_layer", protected_layers=["b"]), {"a": 0.7, "b": 0.0}),
    ],
)
def test_magnitude_pruning_options_on_a_keras_3_model(config, expected):
    model = _classifier()
    weights, masks = prune_model(model, config)
    assert "out::kernel" not in masks  # the output layer is protected by default
    if expected is None:
        pruned = sum(int((~m).sum()) for m in masks.values()) / sum(m.size for m in masks.values())
        assert pruned == pytest.approx(0.8, abs=1e-3)
    for name, share in (expected or {}).items():
        assert _zeros(model, name) == pytest.approx(share, abs=0.01)  # ceil(share * 256) of 256 weights


def test_fine_tuning_keeps_the_zeros_at_every_step_and_the_callers_optimizer():
    x, y = _data()
    sgd = keras.optimizers.SGD(0.05, momentum=0.9)
    model = _classifier(sgd)
    _, masks = prune_model(model, PruningConfig(target_sparsity=0.7))
    seen = []

    class Watch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(_zeros(self.model, "a"))

    before, pruned_share = model.evaluate(x, y, verbose=0, return_dict=True)["loss"], _zeros(model, "a")
    result = fine_tune(
        model, (x, y), (x[:64], y[:64]), FineTuneConfig(epochs=3, batch_size=32), masks, verbose=0, callbacks=[Watch()]
    )
    assert model.optimizer is sgd and int(sgd.iterations.numpy()) == 3 * 6
    assert pruned_share > 0.3 and len(seen) == 18
    assert min(seen) >= pruned_share  # momentum never revives a pruned weight, batch after batch
    assert result.history["loss"][-1] < before and "val_accuracy" in result.history


def test_gradual_pruning_and_distillation_train_a_keras_3_student():
    x, y = _data(512)
    teacher = _classifier()
    teacher.fit(x, y, epochs=3, verbose=0)
    student = _classifier()
    student.set_weights(teacher.get_weights())
    config = FineTuneConfig(
        epochs=2,
        batch_size=32,
        gradual_pruning=GradualPruningSchedule(final_sparsity=0.6, begin_step=0, end_step=20, frequency=5),
        distillation=DistillationConfig(alpha=0.5, temperature=2.0),
    )
    result = fine_tune(student, (x, y), (x[:128], y[:128]), config, {}, teacher=teacher, verbose=0)
    pruned = sum(int((~mask).sum()) for mask in result.masks.values()) / sum(m.size for m in result.masks.values())
    assert set(result.masks) == {"a::kernel", "b::kernel", "c::kernel"} and pruned == pytest.approx(0.6, abs=0.01)
    held = sum(int((student.get_layer(n).kernel.numpy() == 0).sum()) for n in "abc")
    assert held >= sum(int((~mask).sum()) for mask in result.masks.values())  # every masked weight is zero
    assert result.history["val_accuracy"][-1] > 0.6


def test_structured_pruning_with_keras_ops_in_the_graph_equals_the_disconnected_original():
    smaller, graph = check_equivalent(_classifier())
    assert graph.barriers == {}
    # hidden + branch joins a and b: they lose the same channels; bn follows them.
    assert smaller.get_layer("a").units == smaller.get_layer("b").units == 16
    assert smaller.get_layer("bn").gamma.shape == (16,)


@pytest.mark.parametrize("criterion", ["l2", "apoz", "taylor"])
def test_structured_criteria_read_a_keras_3_model(criterion):
    x, y = _data()
    model = _classifier()
    model.fit(x, y, epochs=1, verbose=0)
    smaller, change = prune_structured(
        model, StructuredPruningConfig(prune_fraction=0.5, criterion=criterion, label_key="y"), sample=(x, y)
    )
    assert change.widths["c"].after == 8 and smaller.count_params() < model.count_params()


def _transformer_encoder():
    keras.utils.set_random_seed(0)
    tokens = keras.Input((16,), dtype="int32", name="tokens")
    x = L.Embedding(200, 32, name="embedding")(tokens)
    attended = L.MultiHeadAttention(num_heads=4, key_dim=8, name="mha")(x, x)
    x = L.LayerNormalization(name="ln1")(x + attended)
    x = L.LayerNormalization(name="ln2")(x + L.Dense(32, name="ffn_out")(L.Dense(64, activation="relu")(x)))
    return keras.Model(tokens, L.Dense(2, name="out")(L.GlobalAveragePooling1D()(x)))


def test_a_keras_3_transformer_encoder_loses_whole_heads_and_ffn_units_exactly():
    # The residual stream is kept (protected at its source), so LayerNorm sees every channel and
    # removal is exact: the heads (EinsumDense projections) and the feed-forward units go.
    smaller, graph = check_equivalent(_transformer_encoder(), protected_layers=["embedding"])
    assert graph.barriers == {}
    assert smaller.get_layer("mha").get_config()["num_heads"] == 2


def _mask_ops_only(barriers):
    """Keras 3 records the ops that compute a pooling layer's padding mask from the token ids
    (``not_equal``, and ``logical_or`` at each Add): they carry no channels, so they are barriers
    that freeze nothing prunable."""
    return all(name.startswith(("not_equal", "logical_or")) for name in barriers)


@pytest.mark.parametrize("mask", MASKS)
def test_keras_3_masked_attention_loses_whole_heads_and_ffn_units_exactly(mask):
    smaller, graph = check_equivalent(masked_encoder(keras, mask), protected_layers=["embed"])
    assert _mask_ops_only(graph.barriers) and "pool" not in graph.barriers
    for block in range(2):
        assert smaller.get_layer(f"mha{block}").get_config()["num_heads"] == 2
        assert smaller.get_layer(f"ffn{block}").units == 16
    assert smaller.get_layer("embed").get_config()["mask_zero"] == (mask == "padding")


@pytest.mark.parametrize("mask", MASKS)
def test_a_pruned_keras_3_masked_encoder_still_ignores_what_its_mask_hides(mask):
    # One block for the padding mask: Keras 3's MultiHeadAttention clears the mask of the tensor
    # it reads, so the residual Add after it drops the padding mask at run time and a second
    # block attends to the padding, in the original as in any pruned copy.
    blocks = 1 if mask == "padding" else 2
    model = masked_encoder(keras, mask, length=None if mask == "padding" else 8, blocks=blocks)
    smaller, change = prune_structured(model, StructuredPruningConfig(prune_fraction=0.5))
    assert _mask_ops_only(change.barriers)
    for block in range(blocks):
        assert (change.widths[f"mha{block}:heads"].after, change.widths[f"ffn{block}"].after) == (2, 16)
    first, second, compare = hidden_changes(mask)
    compare(forward(model, first), forward(model, second))
    compare(forward(smaller, first), forward(smaller, second))


def test_keras_3_query_and_value_masks_passed_by_hand_are_followed():
    keras.utils.set_random_seed(0)
    query_in, memory_in = keras.Input((5, 6), name="q"), keras.Input((7, 4), name="m")
    query_mask, value_mask = keras.Input((5,), dtype="bool"), keras.Input((7,), dtype="bool")
    query, memory = L.Dense(12, name="query_proj")(query_in), L.Dense(10, name="memory_proj")(memory_in)
    attended = L.MultiHeadAttention(num_heads=4, key_dim=4, name="cross")(
        query, memory, query_mask=query_mask, value_mask=value_mask
    )
    model = keras.Model([query_in, memory_in, query_mask, value_mask], L.Dense(2)(L.Flatten()(attended)))
    smaller, graph = check_equivalent(model)
    assert graph.barriers == {} and graph.layer_arguments["cross"] == ["query", "value", "query_mask", "value_mask"]
    assert smaller.get_layer("cross").get_config()["num_heads"] == 2


@pytest.mark.parametrize("name", ["MobileNetV2", "ResNet50", "EfficientNetB0"])
def test_keras_3_applications_are_pruned_to_the_disconnected_original(name):
    model = getattr(keras.applications, name)(weights=None, input_shape=(64, 64, 3), classes=5)
    smaller, graph = check_equivalent(model)
    assert graph.barriers == {}
    assert count_flops(smaller) < 0.5 * count_flops(model)


def test_a_plain_einsum_dense_is_a_dense_and_any_other_equation_a_barrier():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5, 6))
    x = L.EinsumDense("abc,cd->abd", output_shape=(5, 12), bias_axes="d", name="proj")(inputs)
    x = L.Flatten()(L.Dense(6, name="tail")(L.Activation("relu")(x)))
    y = L.Flatten()(L.EinsumDense("abc,cde->abde", output_shape=(5, 2, 4), name="split")(inputs))
    model = keras.Model(inputs, L.Dense(2, name="out")(L.Concatenate()([x, y])))
    smaller, graph = check_equivalent(model)
    assert "split" in graph.barriers and "proj" not in graph.barriers
    assert smaller.get_layer("proj").kernel.shape == (6, 6)
    assert count_flops(model) == 2 * (5 * 6 * 12 + 5 * 12 * 6 + 2 * (30 + 40))  # split counts 0: not a matrix


def test_layer_removal_drops_a_keras_3_identity_block():
    x, y = _data(256)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    h = L.Dense(16, activation="relu", name="in")(inputs)
    block = L.Add(name="block")([h, L.Dense(16, name="branch_b")(L.Dense(16, activation="relu", name="branch_a")(h))])
    model = keras.Model(inputs, L.Dense(3, name="out")(block))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(x, y, epochs=5, verbose=0)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    smaller, result = remove_layers(
        model, LayerRemovalConfig(label_key="y", max_removals=1, tolerance=1.0, fine_tune_steps=5), data, data
    )
    assert result.steps and smaller.count_params() < model.count_params()


def test_flops_of_a_keras_3_model_equal_those_of_the_same_tf_keras_model():
    import tf_keras

    def build(k):
        inputs = k.Input((16, 16, 3))
        x = k.layers.Conv2D(8, 3, padding="same")(inputs)
        x = k.layers.DepthwiseConv2D(3, padding="same")(x)
        x = k.layers.SeparableConv2D(12, 3)(x)
        x = k.layers.GlobalAveragePooling2D()(x)
        return k.Model(inputs, k.layers.Dense(4)(x))

    assert count_flops(build(keras)) == count_flops(build(tf_keras)) > 0


def test_sensitivity_allocation_measures_a_keras_3_model():
    x, y = _data()
    model = _classifier()
    model.fit(x, y, epochs=2, verbose=0)
    weights = find_prunable_weights(model, PruningConfig(target_sparsity=0.6))
    dense_loss, curves = sensitivity_curves(model, weights, (0.3, 0.6, 0.9), (x, y))
    assert [curve.key for curve in curves] == ["a::kernel", "b::kernel", "c::kernel"]
    assert all(curve.losses[-1] > dense_loss for curve in curves)  # 90% of a layer gone costs loss
    allocation = allocate(curves, dense_loss, 0.6)
    assert set(allocation) == {"a::kernel", "b::kernel", "c::kernel"}


def test_a_keras_3_model_on_another_backend_is_refused_naming_the_setting(monkeypatch):
    model = _classifier()
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    for call in (
        lambda: prune_model(model, PruningConfig(target_sparsity=0.5)),
        lambda: prune_structured(model, StructuredPruningConfig(prune_fraction=0.5)),
        lambda: fine_tune(model, _data(), None, FineTuneConfig(epochs=1), {}),
    ):
        with pytest.raises(KerasBackendError, match="KERAS_BACKEND=tensorflow"):
            call()


def test_a_keras_3_model_is_fine_tuned_until_it_recovers_its_parent():
    x, y = _data(512)
    parent = _classifier()
    parent.fit(x, y, epochs=10, verbose=0)
    student = _classifier()
    student.set_weights(parent.get_weights())
    _, masks = prune_model(student, PruningConfig(target_sparsity=0.8))
    config = FineTuneConfig(batch_size=32, recovery={"metric": "SparseCategoricalAccuracy", "tolerance": 0.02})
    result = fine_tune(student, (x, y), (x[:256], y[:256]), config, masks, parent=parent, verbose=0, optimizer="fresh")
    record = result.recovery
    assert record.stop_reason == "recovered" and record.best.metric >= record.parent - 0.02
    assert isinstance(student.optimizer, keras.optimizers.Adam)  # a Keras 3 optimizer for a Keras 3 model
    assert record.evaluations[0].step == 0 and record.steps == record.last.step > 0
    held = sum(int((student.get_layer(n).kernel.numpy() == 0).sum()) for n in "abc")
    assert held >= sum(int((~mask).sum()) for mask in masks.values())
