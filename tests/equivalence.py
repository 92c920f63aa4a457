"""The structured-pruning equivalence check: the rebuilt model equals the original with the
removed channels disconnected (their consumer rows zeroed), to float tolerance."""

import keras as keras3
import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfx_model_pruning.engine.structured import StructuredPruningConfig, apply_removal, plan_removal


def forward(model, inputs) -> np.ndarray:
    """One eager call: what ``predict`` computes, without tracing a predict function per model."""
    return np.asarray(model(inputs, training=False))


def _randomise_batchnorm(model):
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if isinstance(layer, (keras.layers.BatchNormalization, keras3.layers.BatchNormalization)):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights(
                [rng.uniform(0.5, 1.5, gamma.shape), rng.normal(size=beta.shape), rng.normal(size=mean.shape),
                 rng.uniform(0.5, 1.5, var.shape)]
            )  # fmt: skip


def check_equivalent(model, fraction=0.5, **config):
    """Prunes ``model`` and asserts the rebuilt model equals the disconnected original."""
    _randomise_batchnorm(model)
    cfg = StructuredPruningConfig(prune_fraction=fraction, **config)
    plan = plan_removal(model, cfg)
    assert plan.chosen, "nothing was removed, so nothing is tested"
    smaller, _ = apply_removal(plan, cfg)
    reference = plan.disconnected()

    rng = np.random.default_rng(0)
    dtypes = [tf.as_dtype(t.dtype) for t in model.inputs]  # tf-keras gives a DType, Keras 3 a name
    inputs = [
        rng.integers(0, 20, size=(3, *t.shape[1:])).astype(dtype.name)  # token ids for an Embedding
        if dtype.is_integer
        else rng.random(size=(3, *t.shape[1:])) < 0.7  # an attention mask
        if dtype.is_bool
        else rng.normal(size=(3, *t.shape[1:])).astype("float32")
        for t, dtype in zip(model.inputs, dtypes, strict=True)
    ]
    inputs = inputs[0] if len(inputs) == 1 else inputs
    got, want, dense = (forward(m, inputs) for m in (smaller, reference, model))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert not np.allclose(dense, want, atol=1e-4), "removal changed nothing: the check would be vacuous"
    assert smaller.count_params() < model.count_params()
    return smaller, plan.graph
