"""Structured pruning of a real SavedModel: smaller, faster on paper, signatures intact."""

import os
from dataclasses import asdict

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tfx_model_pruning.engine import load_model, prune_saved_model
from tfx_model_pruning.engine.config import StructuredPruningConfig
from tfx_model_pruning.engine.data import read_serialized
from tfx_model_pruning.engine.prune import MissingExamplesError
from tfx_model_pruning.engine.saved_model import save_model
from tfx_model_pruning.engine.signatures import SignatureRebuildError
from tfx_model_pruning_pipelines import penguin_trainer


@pytest.mark.integration
def test_structured_pruning_shrinks_the_penguin_model_and_keeps_its_signature(
    tmp_path, penguin_baseline, penguin_files
):
    samples = read_serialized(penguin_files["train"], 32)
    out = str(tmp_path / "smaller")
    report = prune_saved_model(
        penguin_baseline, out, StructuredPruningConfig(prune_fraction=0.5), samples, latency_repeats=3
    )
    assert {name: asdict(width) for name, width in report.structure.widths.items()} == {
        "hidden_0": {"before": 64, "after": 32},
        "hidden_1": {"before": 64, "after": 32},
        "logits": {"before": 3, "after": 3},
    }
    assert report.after.params == 4 * 32 + 32 + 32 * 32 + 32 + 32 * 3 + 3
    assert report.after.flops == 2 * (4 * 32 + 32 * 32 + 32 * 3)
    assert report.after.flops < report.before.flops
    assert report.structure.barriers == {} and report.after.latency_ms_batch_64 > 0
    # Before and after are timed in alternation, each with its spread, so drift cannot pose as a gain.
    for stats in (report.before, report.after):
        assert stats.latency_timing == "in alternation"
        low, high = stats.latency_iqr_ms_batch_1
        assert low <= stats.latency_ms_batch_1 <= high

    served = tf.saved_model.load(out)
    assert list(served.signatures) == ["serving_default"]
    examples = read_serialized(penguin_files["eval"], 16)
    logits = served.signatures["serving_default"](examples=examples)["outputs"].numpy()
    reloaded = load_model(out)
    assert reloaded.model.get_layer("hidden_0").kernel.shape == (4, 32)
    assert reloaded.masks == {}
    parsed = tf.io.parse_example(
        examples, {k: tf.io.FixedLenFeature([1], tf.float32) for k in penguin_trainer.FEATURE_KEYS}
    )
    np.testing.assert_allclose(reloaded.model(parsed).numpy(), logits, rtol=1e-5, atol=1e-6)
    assert reloaded.model.loss is not None, "the compiled loss travels on for fine-tuning"


@pytest.mark.integration
def test_structured_pruning_needs_examples(tmp_path, penguin_baseline):
    with pytest.raises(MissingExamplesError, match="connect `examples`"):
        prune_saved_model(penguin_baseline, str(tmp_path / "x"), StructuredPruningConfig(prune_fraction=0.5))


def test_a_signature_with_extra_preprocessing_is_not_silently_dropped(tmp_path, penguin_files):
    model = penguin_trainer.build_model(hidden_units=(8,))
    spec = {k: tf.io.FixedLenFeature([1], tf.float32) for k in penguin_trainer.FEATURE_KEYS}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve(serialized):
        features = tf.io.parse_example(serialized, spec)
        return {"outputs": model({k: v * 100.0 for k, v in features.items()})}

    path = str(tmp_path / "scaled")
    save_model(model, path, {"serving_default": serve})
    samples = read_serialized(penguin_files["train"], 8)
    with pytest.raises(SignatureRebuildError, match="does more than parse tf.Examples"):
        prune_saved_model(path, str(tmp_path / "out"), StructuredPruningConfig(prune_fraction=0.5), samples)
    assert not os.path.exists(tmp_path / "out")


def _raw_input_model(tmp_path, extra=None):
    inputs = keras.Input((4,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Dense(8)(inputs)))

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def serve(x):
        return {"y": model(x) if extra is None else extra(model(x))}

    path = str(tmp_path / "raw")
    save_model(model, path, {"serving_default": serve})
    return path


def test_a_signature_taking_the_models_inputs_by_name_is_rebuilt_for_the_smaller_model(tmp_path, penguin_files):
    samples = read_serialized(penguin_files["train"], 8)
    out = str(tmp_path / "out")
    prune_saved_model(_raw_input_model(tmp_path), out, StructuredPruningConfig(prune_fraction=0.5), samples)
    pruned = load_model(out)
    x = tf.constant(np.random.default_rng(0).normal(size=(5, 4)), tf.float32)
    np.testing.assert_allclose(
        pruned.signatures["serving_default"](x=x)["y"].numpy(), pruned.model(x).numpy(), rtol=1e-5, atol=1e-6
    )
    assert pruned.model.layers[1].units == 4


def test_a_signature_of_another_form_is_refused(tmp_path, penguin_files):
    path = _raw_input_model(tmp_path, extra=lambda y: 2.0 * y)  # computes more than the model
    samples = read_serialized(penguin_files["train"], 8)
    with pytest.raises(SignatureRebuildError, match="computes more than the model"):
        prune_saved_model(path, str(tmp_path / "out"), StructuredPruningConfig(prune_fraction=0.5), samples)


@pytest.mark.integration
@pytest.mark.parametrize(
    "config",
    [
        StructuredPruningConfig(prune_fraction=0.5, criterion="apoz", sample_size=100),
        StructuredPruningConfig(prune_fraction=0.5, criterion="taylor", label_key="species"),
    ],
)
def test_data_driven_criteria_read_the_sample_examples(tmp_path, penguin_baseline, penguin_files, config):
    samples = read_serialized(penguin_files["train"], 200)
    report = prune_saved_model(penguin_baseline, str(tmp_path / "out"), config, samples, latency_repeats=2)
    assert asdict(report.structure.widths["hidden_0"]) == {"before": 64, "after": 32}
    with pytest.raises(MissingExamplesError, match=f"criterion '{config.criterion}' reads examples"):
        prune_saved_model(penguin_baseline, str(tmp_path / "other"), config)


def test_a_saved_model_with_a_nested_block_and_attention_is_pruned_with_its_signature_proven(tmp_path, penguin_files):
    keras.utils.set_random_seed(0)
    inputs = {key: keras.layers.Input(shape=(1,), name=key) for key in penguin_trainer.FEATURE_KEYS}
    x = keras.layers.Dense(32, activation="relu", name="embed")(keras.layers.concatenate(list(inputs.values())))
    tokens = keras.layers.Reshape((4, 8), name="tokens")(x)  # four "tokens" of width 8: a barrier, kept
    attended = keras.layers.MultiHeadAttention(num_heads=4, key_dim=8, name="attention")(tokens, tokens)
    block = keras.Sequential(
        [keras.layers.Dense(64, activation="relu", name="inner"), keras.layers.Dense(16, name="inner_out")],
        name="block",
    )
    x = block(keras.layers.Flatten()(attended))
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    source = str(tmp_path / "model" / "Format-Serving")
    model.save(source, save_format="tf", signatures=penguin_trainer.serving_signatures(model))

    out = str(tmp_path / "smaller")
    samples = read_serialized(penguin_files["train"], 32)
    report = prune_saved_model(
        str(tmp_path / "model"), out, StructuredPruningConfig(prune_fraction=0.5), samples, latency_repeats=1
    )
    widths = {name: (w.before, w.after) for name, w in report.structure.widths.items()}
    assert widths["attention:heads"] == (4, 2) and widths["inner"] == (64, 32) and widths["inner_out"] == (16, 8)
    assert "block" not in report.structure.barriers and report.after.params < report.before.params

    served = tf.saved_model.load(out)
    examples = read_serialized(penguin_files["eval"], 8)
    assert served.signatures["serving_default"](examples=examples)["outputs"].shape == (8, 3)


class _RawFeatures(keras.Model):
    """Stands in for tf.Transform's layer (a Model without a config, so it is revived from its
    saved call): raw dense, sparse and ragged features in, the model's inputs out."""

    def get_config(self):
        raise NotImplementedError

    def call(self, raw):
        return {
            "fare_x": raw["fare"] * 0.1,
            "tip_x": tf.sparse.to_dense(raw["tip"])[:, :1] + tf.zeros_like(raw["fare"]),
            "tokens_x": tf.reduce_sum(raw["tokens"], axis=1, keepdims=True) / 3.0,
        }


def _raw_example(fare: float, tip: list, tokens: list) -> bytes:
    feature = {"fare": tf.train.Feature(float_list=tf.train.FloatList(value=[fare]))}
    if tip:
        feature["tip"] = tf.train.Feature(float_list=tf.train.FloatList(value=tip))
    feature["tokens"] = tf.train.Feature(float_list=tf.train.FloatList(value=tokens))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def test_signatures_around_a_layer_taking_sparse_and_ragged_raw_features_are_rebuilt(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = {name: keras.Input((1,), name=name) for name in ("fare_x", "tip_x", "tokens_x")}
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")(keras.layers.Concatenate()(list(inputs.values())))
    model = keras.Model(inputs, keras.layers.Dense(1)(hidden))
    model.raw_features = _RawFeatures()
    spec = {
        "fare": tf.io.FixedLenFeature([1], tf.float32),
        "tip": tf.io.VarLenFeature(tf.float32),
        "tokens": tf.io.RaggedFeature(tf.float32),
    }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve(serialized):
        return {"outputs": model(model.raw_features(tf.io.parse_example(serialized, spec)))}

    path = str(tmp_path / "raw")
    save_model(model, path, {"serving_default": serve})
    rng = np.random.default_rng(0)
    examples = tf.constant(
        [
            _raw_example(
                float(rng.uniform(5, 50)), [float(rng.uniform(0, 5))] if i % 3 else [], list(rng.random(i % 4))
            )
            for i in range(48)
        ]
    )
    out = str(tmp_path / "out")
    report = prune_saved_model(
        path,
        out,
        StructuredPruningConfig(prune_fraction=0.5),
        examples[:32],
        latency_repeats=0,
        allow_unsafe_layers=True,
    )
    assert report.structure.widths["hidden"].after < 16
    pruned = tf.saved_model.load(out).signatures["serving_default"]
    # Rows of any length, with and without the sparse feature, as the original parses them.
    served = pruned(examples=examples[32:])["outputs"].numpy()
    assert served.shape == (16, 1) and np.all(np.isfinite(served))
    with pytest.raises(tf.errors.InvalidArgumentError, match="fare"):
        pruned(examples=tf.constant([tf.train.Example().SerializeToString()]))
