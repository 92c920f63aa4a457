"""Structured pruning: every dependency rule on small handmade models, checked by equivalence.

The rebuilt (smaller) model must compute what the original computes with the removed channels
disconnected (their consumer rows zeroed), to float tolerance (``equivalence.check_equivalent``).
"""

from dataclasses import asdict

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from equivalence import check_equivalent, forward
from masked_attention import MASKS, hidden_changes, masked_encoder
from pydantic import ValidationError

from tfx_model_pruning.engine.graph import attention_projections
from tfx_model_pruning.engine.importance import channel_scores
from tfx_model_pruning.engine.report import coverage_lines
from tfx_model_pruning.engine.structured import (
    StructuredPruningConfig,
    StructuredPruningError,
    analyse,
    prune_structured,
    removable_units,
)

L = keras.layers


def _width(model, name):
    return model.get_layer(name).output.shape[-1]


def test_sequential_dense_chain():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((10,)), L.Dense(16, activation="relu", name="a"), L.Dropout(0.2), L.Dense(12, name="b"),
         L.ReLU(), L.Dense(3, name="out")]
    )  # fmt: skip
    smaller, _ = check_equivalent(model)
    assert (_width(smaller, "a"), _width(smaller, "b"), _width(smaller, "out")) == (8, 6, 3)


def test_conv_batchnorm_pooling_flatten_dense():
    keras.utils.set_random_seed(0)
    image = keras.Input((10, 10, 3))
    x = L.Conv2D(8, 3, name="conv")(image)
    x = L.BatchNormalization()(x)
    x = L.Activation("relu")(x)
    x = L.MaxPooling2D()(x)
    x = L.ZeroPadding2D(1)(x)
    x = L.Flatten()(x)  # channels map to every spatial position's rows of the next kernel
    model = keras.Model(image, L.Dense(4, name="out")(x))
    smaller, _ = check_equivalent(model)
    assert _width(smaller, "conv") == 4
    assert smaller.get_layer("out").kernel.shape[0] == 6 * 6 * 4


def test_conv1d_global_pooling():
    keras.utils.set_random_seed(0)
    seq = keras.Input((20, 4))
    x = L.Conv1D(10, 3, activation="relu", name="conv")(seq)
    x = L.GlobalAveragePooling1D()(x)
    model = keras.Model(seq, L.Dense(2, name="out")(x))
    smaller, _ = check_equivalent(model, fraction=0.3)
    assert _width(smaller, "conv") == 7


@pytest.mark.parametrize("merge", [L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum])
def test_elementwise_merges_couple_their_inputs(merge):
    keras.utils.set_random_seed(0)
    image = keras.Input((8, 8, 3))
    a = L.Conv2D(8, 3, padding="same", name="a")(image)
    b = L.Conv2D(8, 3, padding="same", name="b")(image)
    x = merge(name="merge")([a, b])
    x = L.Conv2D(6, 1, name="c")(x)
    model = keras.Model(image, L.Dense(2, name="out")(L.GlobalMaxPooling2D()(x)))
    smaller, graph = check_equivalent(model)
    assert _width(smaller, "a") == _width(smaller, "b") == 4
    units = removable_units(graph, channel_scores(model, graph, "l1"))
    assert all(sorted(layer for layer, _ in u.producers) == ["a", "b"] for u in units if len(u.producers) > 1)


def test_residual_block_keeps_skip_and_branch_aligned():
    keras.utils.set_random_seed(0)
    image = keras.Input((8, 8, 3))
    stem = L.Conv2D(8, 3, padding="same", name="stem")(image)
    x = L.BatchNormalization()(stem)
    x = L.ReLU()(x)
    y = L.Conv2D(6, 3, padding="same", name="inner")(x)
    y = L.BatchNormalization()(y)
    y = L.ReLU()(y)
    y = L.Conv2D(8, 3, padding="same", name="expand")(y)
    y = L.BatchNormalization()(y)
    x = L.Add()([x, y])
    x = L.ReLU()(x)
    model = keras.Model(image, L.Dense(3, name="out")(L.GlobalAveragePooling2D()(x)))
    smaller, _ = check_equivalent(model)
    assert _width(smaller, "stem") == _width(smaller, "expand") == 4
    assert _width(smaller, "inner") == 3


def test_concatenate_maps_channel_offsets():
    keras.utils.set_random_seed(0)
    image = keras.Input((8, 8, 3))
    a = L.Conv2D(6, 3, padding="same", name="a")(image)
    b = L.Conv2D(10, 1, name="b")(image)
    x = L.Concatenate()([a, b])
    x = L.Conv2D(4, 1, name="c")(x)
    model = keras.Model(image, L.Dense(2, name="out")(L.Flatten()(x)))
    smaller, _ = check_equivalent(model)
    assert (_width(smaller, "a"), _width(smaller, "b")) == (3, 5)
    assert smaller.get_layer("c").kernel.shape[-2] == 8


def test_depthwise_and_separable_convolutions():
    keras.utils.set_random_seed(0)
    image = keras.Input((10, 10, 3))
    x = L.Conv2D(8, 3, name="conv")(image)
    x = L.DepthwiseConv2D(3, name="depthwise")(x)
    x = L.SeparableConv2D(6, 3, depth_multiplier=2, name="separable")(x)
    model = keras.Model(image, L.Dense(2, name="out")(L.GlobalAveragePooling2D()(x)))
    smaller, _ = check_equivalent(model)
    assert smaller.get_layer("depthwise").depthwise_kernel.shape[-2] == 4
    assert smaller.get_layer("separable").pointwise_kernel.shape[-2:] == (8, 3)


def test_lambda_is_a_barrier_and_reported():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    x = L.Dense(8, name="before")(inputs)
    x = L.Lambda(lambda t: t * 2.0, name="double")(x)
    x = L.Dense(8, name="after")(x)
    model = keras.Model(inputs, L.Dense(2, name="out")(x))
    smaller, graph = check_equivalent(model)
    assert "double" in graph.barriers
    assert _width(smaller, "before") == 8, "channels feeding a barrier keep their width"
    assert _width(smaller, "after") == 4


def test_softmax_mixes_channels_so_it_is_a_barrier():
    inputs = keras.Input((6,))
    x = L.Dense(8, name="scores")(inputs)
    x = L.Softmax(name="attention")(x)
    x = L.Dense(8, name="after")(x)
    model = keras.Model(inputs, L.Dense(2, name="out")(x))
    _, report = prune_structured(model, StructuredPruningConfig(prune_fraction=0.5))
    assert report.widths["scores"].after == 8
    assert "attention" in report.barriers


def test_output_layer_protected_layers_and_min_units():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    x = L.Dense(10, name="a")(inputs)
    x = L.Dense(10, name="b")(x)
    model = keras.Model(inputs, L.Dense(3, name="out")(x))
    with pytest.raises(StructuredPruningError, match=r"requested width of b \(2 of 10\) is below min_units=4"):
        prune_structured(model, StructuredPruningConfig(prune_fraction=0.8, protected_layers=["a"], min_units=4))
    config = StructuredPruningConfig(prune_fraction=0.8, protected_layers=["a"], min_units=4, scope="global")
    smaller, report = prune_structured(model, config)  # a global ranking stops at the minimum instead
    assert {name: asdict(width) for name, width in report.widths.items()} == {
        "a": {"before": 10, "after": 10},
        "b": {"before": 10, "after": 4},
        "out": {"before": 3, "after": 3},
    }


def test_mixed_model_with_every_rule():
    keras.utils.set_random_seed(0)
    image = keras.Input((12, 12, 3))
    x = L.Conv2D(16, 3, padding="same", name="c1")(image)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    y = L.Conv2D(16, 3, padding="same", name="c2")(x)
    y = L.BatchNormalization()(y)
    x = L.Add()([x, y])
    x = L.Activation("relu")(x)
    z = L.SeparableConv2D(8, 3, padding="same", name="sep")(x)
    w = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = L.Concatenate()([z, w])
    x = L.MaxPooling2D()(x)
    x = L.Conv2D(12, 1, name="c3")(x)
    x = L.Lambda(lambda t: t, name="identity_lambda")(x)
    x = L.Conv2D(10, 1, name="c4")(x)
    x = L.Flatten()(x)
    x = L.Dense(20, activation="relu", name="d1")(x)
    x = L.Dropout(0.1)(x)
    model = keras.Model(image, L.Dense(5, name="out")(x))
    smaller, graph = check_equivalent(model, width_multiple=1)  # exact halves, to see each rule
    widths = {name: _width(smaller, name) for name in ("c1", "c2", "sep", "c3", "c4", "d1", "out")}
    assert widths == {"c1": 8, "c2": 8, "sep": 4, "c3": 12, "c4": 5, "d1": 10, "out": 5}
    assert list(graph.barriers) == ["identity_lambda"]


def test_subclassed_model_is_refused():
    class Tiny(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = L.Dense(4)

        def call(self, x):
            return self.dense(x)

    model = Tiny()
    model(np.zeros((1, 3), "float32"))
    with pytest.raises(StructuredPruningError, match="subclassed"):
        prune_structured(model, StructuredPruningConfig(prune_fraction=0.5))


def test_nothing_removable_is_an_error():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, L.Dense(2, name="out")(L.Dense(4, name="a")(inputs)))
    with pytest.raises(StructuredPruningError, match="no unit or filter can be removed"):
        prune_structured(model, StructuredPruningConfig(prune_fraction=0.5, protected_layers=["a"]))
    with pytest.raises(StructuredPruningError, match="match no layer"):
        prune_structured(model, StructuredPruningConfig(prune_fraction=0.5, protected_layers=["nope"]))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prune_fraction": 0.0},
        {"prune_fraction": 1.0},
        {"prune_fraction": 0.5, "min_units": 0},
        {"prune_fraction": 0.5, "protected_layers": ["conv_("]},
    ],
)
def test_invalid_structured_configs(kwargs):
    with pytest.raises(ValidationError):
        StructuredPruningConfig(**kwargs)


def test_a_concat_then_add_group_is_charged_per_layer_not_its_whole_quota_on_each():
    # NASNet's shape: two 22-filter convolutions concatenated, then added to a 44-filter one. The
    # 44 coupled units are one family; at 0.5 the family loses 22 units, not 22 filters of each side.
    keras.utils.set_random_seed(0)
    image = keras.Input((6, 6, 3))
    a = L.Conv2D(22, 3, padding="same", name="a")(image)
    b = L.Conv2D(22, 3, padding="same", name="b")(image)
    c = L.Conv2D(44, 3, padding="same", name="c")(image)
    joined = L.Add()([L.Concatenate()([a, b]), c])
    head = L.Conv2D(8, 1, name="head")(L.ReLU()(joined))
    model = keras.Model(image, L.Dense(3, name="out")(L.GlobalAveragePooling2D()(head)))
    smaller, _ = check_equivalent(model)
    assert _width(smaller, "a") + _width(smaller, "b") == _width(smaller, "c") == 22
    assert _width(smaller, "a") >= 1 and _width(smaller, "b") >= 1


def test_the_report_says_how_much_of_the_whole_model_went_and_warns_when_barriers_kept_most():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    free = L.Dense(8, name="free")(inputs)
    stuck = L.Dense(24, name="stuck")(inputs)
    stuck = L.Lambda(lambda t: t * 2.0, name="opaque")(stuck)  # a barrier: its 24 channels stay
    model = keras.Model(inputs, L.Dense(2, name="out")(L.Concatenate()([free, stuck])))
    _, change = prune_structured(model, StructuredPruningConfig(prune_fraction=0.5))
    assert (change.channels_before, change.channels_removed) == (8 + 24 + 2, 4)
    assert change.removed_share == pytest.approx(4 / 34)
    lines = coverage_lines(change, 0.5)
    assert lines[0].startswith("**Warning: far less was removed than asked.** Removed 4 of 34")
    assert not coverage_lines(change, 0.1)[0].startswith("**Warning")
    # Told to, it fails instead, naming the barrier.
    with pytest.raises(StructuredPruningError, match=r"only 4 of 34 .* below min_removed_share=0.3.*opaque"):
        prune_structured(model, StructuredPruningConfig(prune_fraction=0.5, min_removed_share=0.3))
    with pytest.raises(ValidationError, match="can never be met"):
        StructuredPruningConfig(prune_fraction=0.5, min_removed_share=0.6)


def test_tensorflow_ops_residuals_hard_swish_and_squeeze_excite_are_followed():
    # RegNet's `x + y` residual, MobileNetV3's hard-swish (x * relu6(x + 3) / 6) and an
    # EfficientNet-style squeeze-and-excite gate (Reshape to (1, 1, C), broadcasting Multiply).
    keras.utils.set_random_seed(0)
    image = keras.Input((6, 6, 3))
    stem = L.Conv2D(8, 3, padding="same", name="stem")(image)
    residual = tf.nn.relu(stem + L.Conv2D(8, 3, padding="same", name="branch")(stem))
    swished = residual * tf.nn.relu6(residual + 3.0) * (1.0 / 6.0)
    squeezed = L.Dense(4, activation="relu", name="se_reduce")(L.GlobalAveragePooling2D()(swished))
    gate = L.Reshape((1, 1, 8))(L.Dense(8, activation="sigmoid", name="se_expand")(squeezed))
    head = L.Conv2D(6, 1, name="head")(L.Multiply()([swished, gate]))
    model = keras.Model(image, L.Dense(3, name="out")(L.GlobalAveragePooling2D()(head)))
    smaller, graph = check_equivalent(model)
    assert graph.barriers == {}
    assert [_width(smaller, n) for n in ("stem", "branch", "se_reduce", "se_expand", "head")] == [4, 4, 2, 4, 3]


def test_a_tensorflow_op_with_a_per_channel_constant_is_a_barrier():
    inputs = keras.Input((4,))
    scaled = L.Dense(4, name="a")(inputs) * tf.constant([1.0, 2.0, 3.0, 4.0])
    graph = analyse(keras.Model(inputs, L.Dense(2, name="out")(scaled)))
    assert list(graph.barriers.values()) == ["tf.math.multiply with a non-scalar constant"]


@pytest.mark.parametrize("groups, filters, after", [(2, 12, (6, 1)), (8, 8, (4, 4))])
def test_grouped_convolutions_lose_whole_groups(groups, filters, after):
    keras.utils.set_random_seed(0)
    image = keras.Input((6, 6, 3))
    stem = L.Conv2D(8, 3, padding="same", name="stem")(image)
    grouped = L.Conv2D(filters, 3, padding="same", groups=groups, name="grouped")(L.ReLU()(stem))
    head = L.Conv2D(5, 1, name="head")(L.BatchNormalization()(grouped))
    model = keras.Model(image, L.Dense(3, name="out")(L.GlobalAveragePooling2D()(head)))
    smaller, graph = check_equivalent(model)
    assert graph.barriers == {}
    assert (_width(smaller, "grouped"), smaller.get_layer("grouped").groups) == after
    assert _width(smaller, "stem") == 4  # a group's input channels go with it


def test_transposed_convolutions_are_pruned_with_their_kernel_axes_swapped():
    keras.utils.set_random_seed(0)
    image = keras.Input((4, 4, 3))
    upsampled = L.Conv2DTranspose(8, 3, strides=2, padding="same", name="up")(image)
    features = L.Conv2D(6, 3, name="c")(L.ReLU()(upsampled))
    smaller, _ = check_equivalent(keras.Model(image, L.Dense(2, name="out")(L.Flatten()(features))))
    assert _width(smaller, "up") == 4 and smaller.get_layer("up").kernel.shape == (3, 3, 4, 3)


@pytest.mark.parametrize("recurrent", [L.LSTM, L.GRU, L.SimpleRNN])
def test_recurrent_layers_lose_hidden_units_with_every_gate_and_their_recurrent_row(recurrent):
    keras.utils.set_random_seed(0)
    steps = keras.Input((5, 4))
    projected = L.Dense(10, name="project")(steps)
    sequence = recurrent(8, return_sequences=True, name="first")(projected)
    last = recurrent(6, name="second")(sequence)
    model = keras.Model(steps, L.Dense(3, name="out")(last))
    smaller, graph = check_equivalent(model)
    assert graph.barriers == {}
    assert [_width(smaller, name) for name in ("project", "first", "second")] == [5, 4, 3]


def test_layer_normalization_is_pruned_through_and_reported_as_not_exact():
    # LayerNorm normalises over the channels, so the kept channels see a new mean and variance:
    # the rebuilt model is LayerNorm over the kept channels, which the disconnected original is not.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    hidden = L.Dense(16, name="a")(inputs)
    normalised = L.LayerNormalization(name="ln")(hidden)
    model = keras.Model(inputs, L.Dense(3, name="out")(L.Dense(8, name="b")(normalised)))
    smaller, change = prune_structured(model, StructuredPruningConfig(prune_fraction=0.5))
    assert change.barriers == {} and change.widths["a"].after == 8
    assert list(change.approximate) == ["ln"]

    x = np.random.default_rng(0).normal(size=(4, 6)).astype("float32")
    kernel, bias = model.get_layer("a").get_weights()
    kept = [
        i for i in range(16) if any(np.array_equal(kernel[:, i], k) for k in smaller.get_layer("a").kernel.numpy().T)
    ]
    h = x @ kernel[:, kept] + bias[kept]
    gamma, beta = (w[kept] for w in model.get_layer("ln").get_weights())
    expected = gamma * (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-3) + beta
    probe = keras.Model(smaller.inputs, smaller.get_layer("ln").output)
    np.testing.assert_allclose(forward(probe, x), expected, rtol=1e-4, atol=1e-5)


def test_convnext_layer_scale_follows_its_channels():
    from tf_keras.src.applications.convnext import LayerScale

    keras.utils.set_random_seed(0)
    image = keras.Input((4, 4, 3))
    features = L.Conv2D(8, 1, name="pw")(image)
    scaled = LayerScale(0.5, 8, name="scale")(features)
    model = keras.Model(image, L.Dense(2, name="out")(L.GlobalAveragePooling2D()(L.Conv2D(4, 1, name="c")(scaled))))
    smaller, graph = check_equivalent(model)
    assert graph.barriers == {} and smaller.get_layer("scale").gamma.shape == (4,)


def test_embedding_widths_go_with_the_layer_that_reads_them():
    keras.utils.set_random_seed(0)
    tokens = keras.Input((5,), dtype="int32")
    embedded = L.Embedding(20, 8, name="embed")(tokens)
    model = keras.Model(tokens, L.Dense(2, name="out")(L.LSTM(6, name="lstm")(embedded)))
    smaller, graph = check_equivalent(model)
    assert graph.barriers == {}
    assert (_width(smaller, "embed"), _width(smaller, "lstm")) == (4, 3)
    assert smaller.get_layer("embed").embeddings.shape == (20, 4)


def test_attention_heads_go_whole_with_their_query_key_value_columns_and_output_rows():
    keras.utils.set_random_seed(0)
    tokens = keras.Input((6, 10))
    x = L.Dense(16, name="embed")(tokens)
    attended = L.MultiHeadAttention(num_heads=4, key_dim=8, value_dim=6, name="mha")(x, x)
    x = L.Add(name="residual")([x, attended])
    model = keras.Model(tokens, L.Dense(2, name="out")(L.GlobalAveragePooling1D()(L.Dense(12, name="ffn")(x))))
    smaller, graph = check_equivalent(model)
    assert graph.barriers == {}
    mha = smaller.get_layer("mha")
    assert mha.get_config()["num_heads"] == 2
    # The residual stream (embed + attention output) lost half its channels together.
    assert _width(smaller, "embed") == _width(smaller, "mha") == 8
    assert attention_projections(mha)[0].kernel.shape == (8, 2, 8) and attention_projections(mha)[2].kernel.shape == (
        8,
        2,
        6,
    )
    assert attention_projections(mha)[3].kernel.shape == (2, 6, 8)
    _, change = prune_structured(model, StructuredPruningConfig(prune_fraction=0.5))
    assert (change.widths["mha:heads"].before, change.widths["mha:heads"].after) == (4, 2)


def test_cross_attention_follows_query_key_and_value_streams_separately():
    keras.utils.set_random_seed(0)
    query_in, memory_in = keras.Input((5, 7), name="q"), keras.Input((9, 3), name="m")
    query = L.Dense(12, name="query_proj")(query_in)
    key = L.Dense(10, name="key_proj")(memory_in)
    value = L.Dense(6, name="value_proj")(memory_in)
    attended = L.MultiHeadAttention(num_heads=2, key_dim=4, name="cross")(query, value, key=key)
    model = keras.Model([query_in, memory_in], L.Dense(2, name="out")(L.Flatten()(attended)))
    smaller, graph = check_equivalent(model)
    cross = smaller.get_layer("cross")
    assert graph.barriers == {} and graph.layer_arguments["cross"] == ["query", "value", "key"]
    assert attention_projections(cross)[0].kernel.shape[0] == 6
    assert attention_projections(cross)[1].kernel.shape[0] == 5 and attention_projections(cross)[2].kernel.shape[0] == 3
    assert cross.get_config()["output_shape"] is None  # the output is as wide as the query again

    smaller, _ = check_equivalent(model, protected_layers=["query_proj"])
    cross = smaller.get_layer("cross")
    # The query keeps its 12 channels and the output has 6: output_shape is written out.
    assert attention_projections(cross)[0].kernel.shape[0] == 12 and _width(smaller, "cross") == 6
    assert tuple(cross.get_config()["output_shape"]) == (6,)


@pytest.mark.parametrize("mask", MASKS)
def test_masked_attention_loses_whole_heads_and_ffn_units_exactly(mask):
    # An attention_mask input, use_causal_mask=True, or Embedding(mask_zero=True)'s padding mask.
    # The residual stream is kept (protected at its source), so LayerNorm sees every channel and
    # removal is exact; check_equivalent feeds random masks and token ids with padding (0) in them.
    smaller, graph = check_equivalent(masked_encoder(keras, mask), protected_layers=["embed"])
    assert graph.barriers == {}
    for block in range(2):
        assert smaller.get_layer(f"mha{block}").get_config()["num_heads"] == 2
        assert _width(smaller, f"ffn{block}") == 16
    if mask == "attention_mask":
        assert graph.layer_arguments["mha0"] == ["query", "value", "attention_mask"]
    assert smaller.get_layer("embed").get_config()["mask_zero"] == (mask == "padding")


@pytest.mark.parametrize("mask", MASKS)
def test_a_pruned_masked_encoder_still_ignores_what_its_mask_hides(mask):
    # Tokens no query may attend to, tokens after the causal cut, or more padding: the outputs the
    # mask shields stay the same (each check fails when the rebuilt attention drops its mask).
    model = masked_encoder(keras, mask, length=None if mask == "padding" else 8)
    smaller, change = prune_structured(model, StructuredPruningConfig(prune_fraction=0.5))
    assert change.barriers == {}
    assert [change.widths[name].after for name in ("mha0:heads", "mha1:heads", "ffn0", "ffn1", "embed")] == [
        2, 2, 16, 16, 8
    ]  # fmt: skip
    first, second, compare = hidden_changes(mask)
    compare(forward(model, first), forward(model, second))
    compare(forward(smaller, first), forward(smaller, second))


def test_attention_whose_scores_or_per_head_mask_removal_would_change_stays_a_barrier():
    tokens = keras.Input((6, 8))
    per_head, shared = keras.Input((2, 6, 6), dtype="bool"), keras.Input((1, 6, 6), dtype="bool")
    x = L.Dense(8, name="a")(tokens)
    scored, _ = L.MultiHeadAttention(num_heads=2, key_dim=4, name="scored")(x, x, return_attention_scores=True)
    headwise = L.MultiHeadAttention(num_heads=2, key_dim=4, name="headwise")(x, x, attention_mask=per_head)
    broadcast = L.MultiHeadAttention(num_heads=2, key_dim=4, name="broadcast")(x, x, attention_mask=shared)
    joined = L.Concatenate()([scored, headwise, broadcast])
    model = keras.Model([tokens, per_head, shared], L.Dense(2)(L.Flatten()(joined)))
    barriers = analyse(model).barriers
    assert barriers["scored"] == "MultiHeadAttention returning its attention scores"
    assert "an axis per head" in barriers["headwise"]
    assert "broadcast" not in barriers  # a (B, 1, T, S) mask is broadcast over the heads too


def test_a_rebuild_that_would_drop_the_padding_mask_is_refused():
    # supports_masking set on the layer, not in its config: the rebuilt Conv1D would drop the
    # mask and the attention and pooling after it would read the padding.
    tokens = keras.Input((8,), dtype="int32")
    conv = L.Conv1D(16, 1, name="conv")
    conv.supports_masking = True
    x = conv(L.Embedding(30, 16, mask_zero=True, name="embed")(tokens))
    x = L.MultiHeadAttention(num_heads=4, key_dim=4, name="mha")(x, x)
    model = keras.Model(tokens, L.Dense(2)(L.GlobalAveragePooling1D()(L.Dense(16, name="ffn")(x))))
    with pytest.raises(StructuredPruningError, match="Keras masks .* differ"):
        prune_structured(model, StructuredPruningConfig(prune_fraction=0.5))


def _block(name: str, width: int) -> keras.Model:
    inputs = keras.Input((width,))
    hidden = L.Dense(width * 2, activation="relu", name="dense")(inputs)  # the same name in every block
    return keras.Model(inputs, L.Add()([inputs, L.Dense(width, name="back")(hidden)]), name=name)


def test_nested_blocks_are_flattened_into_one_graph_and_pruned_through():
    from tfx_model_pruning.engine.graph_edit import flatten_nested

    keras.utils.set_random_seed(0)
    inputs = keras.Input((5,))
    x = L.Dense(8, name="stem")(inputs)
    x = _block("block_1", 8)(x)
    x = keras.Sequential([L.Dense(12, activation="relu", name="seq_dense"), L.BatchNormalization()], name="seq")(x)
    x = _block("block_2", 12)(x)
    model = keras.Model(inputs, L.Dense(2, name="out")(x))

    flat = flatten_nested(model)
    assert not any(isinstance(layer, keras.Model) for layer in flat.layers)
    assert {"dense", "block_2_dense", "seq_dense"} <= {layer.name for layer in flat.layers}
    sample = np.random.default_rng(0).normal(size=(4, 5)).astype("float32")
    np.testing.assert_array_equal(forward(flat, sample), forward(model, sample))
    assert flat.get_layer("dense") is not model.get_layer("block_1").get_layer("dense")  # weights of its own

    smaller, graph = check_equivalent(model)
    assert graph.barriers == {}
    assert (_width(smaller, "stem"), _width(smaller, "dense"), _width(smaller, "block_2_dense")) == (4, 8, 16)


def test_rescaling_and_normalization_at_the_input_are_no_barriers():
    keras.utils.set_random_seed(0)
    image = keras.Input((6, 6, 3))
    x = L.Rescaling(1 / 255.0)(image)
    x = L.Normalization(mean=[0.1, 0.2, 0.3], variance=[1.0, 2.0, 3.0])(x)
    x = L.Conv2D(8, 3, name="conv")(x)
    x = L.Rescaling([0.5] * 8, name="per_channel")(x)
    model = keras.Model(image, L.Dense(2, name="out")(L.GlobalAveragePooling2D()(L.Conv2D(6, 1, name="c")(x))))
    graph = analyse(model)
    assert graph.barriers == {}
    smaller, _ = check_equivalent(model)
    # A per-channel rescale keeps its channels: its constants are in the config, not in weights.
    assert _width(smaller, "conv") == 8 and _width(smaller, "c") == 3


@pytest.mark.parametrize("multiple, widths", [(8, (16, 16, 24, 6)), (1, (10, 12, 20, 6)), (16, (10, 12, 32, 6))])
def test_kept_widths_round_up_to_a_multiple_and_narrow_groups_stay_exact(multiple, widths):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    a = L.Dense(20, name="a")(inputs)
    b = L.Dense(24, name="b")(L.Add()([a, L.Dense(20, name="a2")(inputs)]))  # a + a2: one group of 20
    c = L.Dense(40, name="c")(b)
    d = L.Dense(12, name="d")(c)  # keeps 6 < multiple: left exact
    model = keras.Model(inputs, L.Dense(2, name="out")(d))
    smaller, _ = check_equivalent(model, width_multiple=multiple)
    assert tuple(_width(smaller, name) for name in ("a", "b", "c", "d")) == widths
    assert _width(smaller, "a2") == _width(smaller, "a")
    # The rounding gives back the most important of the units chosen for removal.
    _, change = prune_structured(model, StructuredPruningConfig(prune_fraction=0.5, width_multiple=multiple))
    assert change.widths["c"].after == widths[2]


def test_a_residual_chain_through_two_stages_loses_about_half_of_every_layer():
    # InceptionResNetV2's shape: a concat trunk, scaled residuals (CustomScaleLayer), and a
    # reduction whose max-pool branch carries the whole first-stage trunk into the second.
    from tfx_model_pruning.engine.graph import InceptionResNetScale

    keras.utils.set_random_seed(0)
    image = keras.Input((8, 8, 3))
    trunk = L.Concatenate()([L.Conv2D(8, 1, name="a")(image), L.Conv2D(8, 3, padding="same", name="b")(image)])
    for block in range(1, 5):
        trunk = InceptionResNetScale(0.17)([trunk, L.Conv2D(16, 1, name=f"r{block}")(L.ReLU()(trunk))])
    stage_2 = L.Concatenate()([L.Conv2D(16, 1, strides=2, name="c")(trunk), L.MaxPooling2D()(trunk)])
    stage_2 = InceptionResNetScale(0.1)([stage_2, L.Conv2D(32, 1, name="r5")(L.ReLU()(stage_2))])
    model = keras.Model(image, L.Dense(2, name="out")(L.GlobalAveragePooling2D()(stage_2)))
    smaller, graph = check_equivalent(model, width_multiple=1)
    assert graph.barriers == {}
    _, change = prune_structured(model, StructuredPruningConfig(prune_fraction=0.5, width_multiple=1))
    # Units of the first stage span six layers, those of the second two; judged by their mean
    # relative score, both lose their share (summed scores kept every first-stage channel).
    for name in ("a", "b", "r1", "r4", "c", "r5"):
        width = change.widths[name]
        assert width.after < width.before, name
    assert 0.4 <= change.removed_share <= 0.6
