"""The FLOP formula, layer type by layer type, against multiply-accumulates counted by hand."""

import keras as keras3
import pytest
import tf_keras as keras

from tfx_model_pruning.engine.efficiency import count_flops, layer_macs
from tfx_model_pruning.engine.layer_handlers import Producer, register_layer_handler, unregister_layer_handler

L = keras.layers


@pytest.mark.parametrize(
    "input_shape, layer, macs",
    [
        ((16,), L.Dense(8), 16 * 8),
        ((5, 16), L.Dense(8), 16 * 8 * 5),  # applied at each of 5 positions
        ((10, 2), L.Conv1D(4, 3), 3 * 2 * 4 * 8),  # valid padding: 8 output positions
        ((8, 8, 3), L.Conv2D(4, 3, padding="same"), 3 * 3 * 3 * 4 * 64),
        ((8, 8, 3), L.Conv2D(4, 3, strides=2, padding="same"), 3 * 3 * 3 * 4 * 16),
        ((8, 8, 6), L.Conv2D(6, 3, padding="same", groups=3), 3 * 3 * 2 * 6 * 64),  # each filter sees 2 channels
        ((4, 4, 4, 1), L.Conv3D(2, 2), 2 * 2 * 2 * 1 * 2 * 27),
        ((8, 8, 3), L.DepthwiseConv2D(3, padding="same"), 3 * 3 * 3 * 64),
        ((8, 8, 3), L.DepthwiseConv2D(3, padding="same", depth_multiplier=2), 3 * 3 * 3 * 2 * 64),
        ((8, 8, 3), L.SeparableConv2D(4, 3, padding="same"), (3 * 3 * 3 + 3 * 4) * 64),
        ((10, 3), L.SeparableConv1D(4, 3, padding="same"), (3 * 3 + 3 * 4) * 10),
        ((8, 8, 3), L.BatchNormalization(), 0),
        ((8, 8, 3), L.MaxPooling2D(), 0),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, L.Layer) else None,
)
def test_multiply_accumulates_of_one_example(input_shape, layer, macs):
    inputs = keras.Input(input_shape)
    keras.Model(inputs, layer(inputs))
    assert layer_macs(layer) == macs


def test_model_flops_are_two_per_multiply_accumulate_nested_models_included():
    inner_inputs = keras.Input((8,))
    inner = keras.Model(inner_inputs, L.Dense(4)(inner_inputs), name="inner")
    inputs = keras.Input((16,))
    model = keras.Model(inputs, inner(L.Dense(8)(inputs)))
    assert count_flops(model) == 2 * (16 * 8 + 8 * 4)


@pytest.mark.parametrize(
    "layer, macs",
    [
        (L.LSTM(8), 4 * (6 * 8 + 8 * 8) * 5),  # four gates, input and recurrent matrices, every step
        (L.GRU(8, return_sequences=True), 3 * (6 * 8 + 8 * 8) * 5),
        (L.SimpleRNN(8), (6 * 8 + 8 * 8) * 5),
        (L.Bidirectional(L.LSTM(8)), 2 * 4 * (6 * 8 + 8 * 8) * 5),
        (L.Conv1DTranspose(4, 3, strides=2, padding="same"), 3 * 4 * 6 * 5),  # each input step scatters a kernel
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, L.Layer) else None,
)
def test_recurrent_and_transposed_layers_count_every_step(layer, macs):
    inputs = keras.Input((5, 6))
    keras.Model(inputs, layer(inputs))
    assert layer_macs(layer) == macs


def test_multi_head_attention_counts_projections_scores_and_output():
    query, value = keras.Input((5, 8)), keras.Input((7, 6))
    attention = L.MultiHeadAttention(num_heads=2, key_dim=4)
    keras.Model([query, value], attention(query, value))
    heads, key_dim, value_dim = 2, 4, 4
    expected = (
        5 * 8 * heads * key_dim  # query projection
        + 7 * 6 * heads * key_dim  # key projection (the key is the value)
        + 7 * 6 * heads * value_dim  # value projection
        + heads * 5 * 7 * (key_dim + value_dim)  # scores and weighted values
        + 5 * heads * value_dim * 8  # output projection back to the query's width
    )
    assert layer_macs(attention) == expected


def test_an_attention_mask_is_not_counted_as_the_key():
    # Call tensors come positional first, then keywords in sorted order: attention_mask before key.
    query, value, key = keras.Input((5, 8)), keras.Input((7, 6)), keras.Input((7, 3))
    masked, plain = L.MultiHeadAttention(num_heads=2, key_dim=4), L.MultiHeadAttention(num_heads=2, key_dim=4)
    mask = keras.Input((5, 7), dtype="bool")
    keras.Model([query, value, key, mask], masked(query, value, key=key, attention_mask=mask))
    keras.Model([query, value, key], plain(query, value, key=key))
    heads, key_dim = 2, 4
    expected = (
        5 * 8 * heads * key_dim  # query projection
        + 7 * 3 * heads * key_dim  # key projection, from the key's 3 channels
        + 7 * 6 * heads * key_dim  # value projection
        + heads * 5 * 7 * (key_dim + key_dim)  # scores and weighted values
        + 5 * heads * key_dim * 8  # output projection
    )
    assert layer_macs(masked) == layer_macs(plain) == expected


def _scaled_dense(generation):
    """A user's Dense with a learned per-unit output scale, in the given Keras generation."""

    class ScaledDense(generation.layers.Layer):
        def __init__(self, units, **kwargs):
            super().__init__(**kwargs)
            self.units = units

        def build(self, input_shape):
            self.kernel = self.add_weight(name="kernel", shape=(input_shape[-1], self.units))
            self.scale = self.add_weight(name="scale", shape=(self.units,))

        def call(self, inputs):
            return (inputs @ self.kernel) * self.scale

    return ScaledDense


@pytest.mark.parametrize("generation", [keras, keras3], ids=["tf_keras", "keras3"])
def test_a_custom_layer_counts_its_flops_once_registered_with_a_handler(generation):
    scaled_dense = _scaled_dense(generation)
    inputs = generation.Input((5, 16))
    model = generation.Model(inputs, scaled_dense(4)(generation.layers.Dense(8)(inputs)))
    dense = 16 * 8 * 5  # at each of 5 positions
    # Without a handler the layer is not understood, so it costs nothing, as any unknown layer.
    assert count_flops(model) == 2 * dense
    register_layer_handler(scaled_dense, Producer("units", {"kernel": (0, 1), "scale": (None, 0)}))
    try:
        assert count_flops(model) == 2 * (dense + 8 * 4 * 5)  # counted as a Dense of 8 -> 4
    finally:
        unregister_layer_handler(scaled_dense)


def test_a_subclass_with_its_own_call_is_not_counted_as_its_parent():
    class ClippedDense(L.Dense):
        def call(self, inputs):
            return keras.backend.clip(super().call(inputs), -1.0, 1.0)

    inputs = keras.Input((16,))
    clipped, plain = ClippedDense(8), L.Dense(8)
    keras.Model(inputs, [clipped(inputs), plain(inputs)])
    # Its call computes something else: like structured pruning, FLOPs need its own handler.
    assert (layer_macs(clipped), layer_macs(plain)) == (0, 16 * 8)
