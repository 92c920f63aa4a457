"""Transformer encoders whose attention is masked each way Keras allows, in either generation:
an explicit ``attention_mask`` input, ``use_causal_mask=True``, and the implicit padding mask of
``Embedding(mask_zero=True)``; and inputs that change only what the mask hides."""

import numpy as np

MASKS = ("attention_mask", "causal", "padding")
VOCABULARY, PAD = 30, 0


def masked_encoder(keras, mask: str, length=8, blocks=2):
    """Embedding -> ``blocks`` x (attention, Add, LayerNorm, feed-forward, Add, LayerNorm) -> logits.

    ``attention_mask``: a second input, ``(length, length)`` booleans, passed as the attention
    mask; ``causal``: ``use_causal_mask=True``; ``padding``: ``Embedding(mask_zero=True)``, whose
    mask every layer passes on, and a mask-respecting average pool. The first two give logits
    per position, the pooled one per sequence. ``length=None`` takes sequences of any length.
    """
    L = keras.layers
    keras.utils.set_random_seed(0)
    tokens = keras.Input((length,), dtype="int32", name="tokens")
    inputs = [tokens]
    x = L.Embedding(VOCABULARY, 16, mask_zero=mask == "padding", name="embed")(tokens)
    call = {}
    if mask == "attention_mask":
        inputs.append(keras.Input((length, length), dtype="bool", name="allowed"))
        call = {"attention_mask": inputs[1]}
    elif mask == "causal":
        call = {"use_causal_mask": True}
    for block in range(blocks):
        attended = L.MultiHeadAttention(num_heads=4, key_dim=4, name=f"mha{block}")(x, x, **call)
        x = L.LayerNormalization(name=f"ln{block}a")(L.Add(name=f"res{block}a")([x, attended]))
        hidden = L.Dense(32, activation="relu", name=f"ffn{block}")(x)
        x = L.LayerNormalization(name=f"ln{block}b")(L.Add(name=f"res{block}b")([x, L.Dense(16)(hidden)]))
    if mask == "padding":
        x = L.GlobalAveragePooling1D(name="pool")(x)
    model = keras.Model(inputs if len(inputs) > 1 else tokens, L.Dense(2, name="logits")(x))
    _randomise_layer_norms(model)
    return model


def _randomise_layer_norms(model):
    """LayerNorms start as the identity's scale; random ones make a dropped mask show sooner."""
    rng = np.random.default_rng(2)
    for layer in model.layers:
        if type(layer).__name__ == "LayerNormalization":
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape) for w in layer.get_weights()])


def hidden_changes(mask: str, length=8, batch=4):
    """Two inputs that differ only where the mask hides, and the outputs that must not change.

    Returns ``(first, second, compare)``: ``compare(output_a, output_b)`` asserts what the mask
    guarantees. ``attention_mask``: the same tokens and mask, other tokens at the key positions
    no query may attend to (beyond each row's length), compared at the positions before it;
    ``causal``: other tokens after each row's cut, compared at the positions up to it;
    ``padding``: the same sentences padded to ``length`` and to ``2 * length``, compared whole.
    """
    rng = np.random.default_rng(3)
    lengths = rng.integers(2, length - 1, size=batch)
    tokens = rng.integers(1, VOCABULARY, size=(batch, length)).astype("int32")
    beyond = np.arange(length)[None, :] >= lengths[:, None]
    other = np.where(beyond, rng.integers(1, VOCABULARY, size=tokens.shape), tokens).astype("int32")
    before = ~beyond

    def at_kept_positions(a, b):
        np.testing.assert_allclose(a[before], b[before], rtol=1e-4, atol=1e-5)
        assert not np.allclose(a[beyond], b[beyond], atol=1e-4), "the change reached no output: vacuous"

    if mask == "attention_mask":
        allowed = np.broadcast_to(before[:, None, :], (batch, length, length)).copy()
        return [tokens, allowed], [other, allowed], at_kept_positions
    if mask == "causal":
        return tokens, other, at_kept_positions
    padded = np.where(beyond, PAD, tokens).astype("int32")
    longer = np.concatenate([padded, np.full_like(padded, PAD)], axis=1)

    def whole(a, b):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)

    return padded, longer, whole
