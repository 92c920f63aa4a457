"""Engine: pruning a real SavedModel keeps its signatures, masks and reloadability."""

import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from tfx_example_models import penguin_example_model

from tfx_model_pruning.engine import (
    ModelLoadError,
    PruningConfig,
    load_model,
    prune_saved_model,
    save_model,
)
from tfx_model_pruning.engine.saved_model import (
    MASKS_RELATIVE_PATH,
    SignatureMismatchError,
    verify_signatures_preserved,
)


def _serialized_examples(files, count=32):
    return tf.constant([r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP").take(count)])


@pytest.mark.integration
def test_pruned_model_reloads_with_identical_signatures_and_consistent_outputs(
    tmp_path, penguin_baseline, penguin_files
):
    out = str(tmp_path / "pruned")
    report = prune_saved_model(penguin_baseline, out, PruningConfig(target_sparsity=0.8))

    assert abs(report.after.masked_sparsity - 0.8) <= 0.005
    assert report.signatures == ["serving_default"]
    verify_signatures_preserved(os.path.join(penguin_baseline, "Format-Serving"), out)

    served = tf.saved_model.load(out)
    assert list(served.signatures) == ["serving_default"]
    examples = _serialized_examples(penguin_files["eval"])
    served_logits = served.signatures["serving_default"](examples=examples)["outputs"].numpy()

    reloaded = load_model(out)
    assert set(reloaded.masks) == {"hidden_0::kernel", "hidden_1::kernel"}
    for key, mask in reloaded.masks.items():
        kernel = reloaded.model.get_layer(key.split("::")[0]).kernel.numpy()
        np.testing.assert_array_equal(kernel == 0, ~mask)
    keras_logits = reloaded.signatures["serving_default"](examples=examples)["outputs"].numpy()
    np.testing.assert_allclose(served_logits, keras_logits, rtol=1e-5, atol=1e-6)

    original = tf.saved_model.load(os.path.join(penguin_baseline, "Format-Serving"))
    original_logits = original.signatures["serving_default"](examples=examples)["outputs"].numpy()
    assert not np.allclose(original_logits, served_logits), "the served graph must use the pruned weights"


@pytest.mark.integration
def test_report_counts_and_sizes(tmp_path, penguin_baseline):
    report = prune_saved_model(penguin_baseline, str(tmp_path / "pruned"), PruningConfig(target_sparsity=0.8))
    before, after = report.before, report.after
    assert before.params == after.params, "unstructured pruning keeps every shape"
    assert after.nonzero_params == before.nonzero_params - (after.kernel_zeros - before.kernel_zeros)
    assert after.weights_gzip_bytes < 0.5 * before.weights_gzip_bytes
    assert after.gzip_bytes < before.gzip_bytes
    rows = {row.layer: row for row in report.weights}
    assert rows["logits"].protected_by == "output layer"
    assert rows["logits"].nonzeros_after == rows["logits"].params
    pruned_zeros = sum(r.params - r.nonzeros_after for r in rows.values() if not r.protected_by)
    pruned_params = sum(r.params for r in rows.values() if not r.protected_by)
    assert pruned_zeros / pruned_params == pytest.approx(after.masked_sparsity)


def test_missing_model_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nowhere"))


def test_directory_without_a_saved_model(tmp_path):
    (tmp_path / "Format-Serving").mkdir()
    with pytest.raises(ModelLoadError, match="no saved_model.pb"):
        load_model(str(tmp_path))


@pytest.mark.integration
def test_corrupt_saved_model(tmp_path, penguin_baseline):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(os.path.join(penguin_baseline, "Format-Serving"), broken)
    (broken / "saved_model.pb").write_bytes(b"this is not a protobuf")
    with pytest.raises(ModelLoadError, match="could not load"):
        load_model(str(broken))


def test_saved_model_without_keras_metadata_or_variables_is_refused(tmp_path):
    class Doubler(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def __call__(self, x):
            return 2 * x

    path = str(tmp_path / "plain")
    tf.saved_model.save(Doubler(), path)
    with pytest.raises(ModelLoadError, match="neither Keras metadata nor trainable variables"):
        load_model(path)


def test_signature_check_catches_a_changed_signature(tmp_path):
    inputs = keras.Input((3,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))

    def signature(model, dtype):
        @tf.function(input_signature=[tf.TensorSpec([None, 3], dtype, name="x")])
        def serve(x):
            return {"y": model(tf.cast(x, tf.float32))}

        return {"serving_default": serve}

    save_model(model, str(tmp_path / "a"), signature(model, tf.float32))
    save_model(model, str(tmp_path / "b"), signature(model, tf.float64))
    with pytest.raises(SignatureMismatchError, match="changed=\\['serving_default'\\]"):
        verify_signatures_preserved(str(tmp_path / "a"), str(tmp_path / "b"))


@pytest.mark.integration
def test_masks_are_stored_where_serving_ignores_them(tmp_path, penguin_baseline):
    out = tmp_path / "pruned"
    prune_saved_model(penguin_baseline, str(out), PruningConfig(target_sparsity=0.5))
    assert (out / MASKS_RELATIVE_PATH).is_file()
    assert MASKS_RELATIVE_PATH.startswith("assets.extra")


def _raw_tensor_model(input_order):
    inputs = {name: keras.Input((1,), name=name) for name in input_order}
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(keras.layers.Concatenate()(list(inputs.values())))
    outputs = {
        "score": keras.layers.Dense(1, name="score")(hidden),
        "logits": keras.layers.Dense(3, name="logits")(hidden),
    }
    return keras.Model(inputs, outputs)


def test_signatures_compare_by_name_not_by_key_order(tmp_path):
    # The same inputs and outputs, declared in another order: the same serving interface.
    first, second = _raw_tensor_model(["b", "a", "c"]), _raw_tensor_model(["c", "b", "a"])
    first.save(str(tmp_path / "first"), save_format="tf")
    second.save(str(tmp_path / "second"), save_format="tf")
    verify_signatures_preserved(str(tmp_path / "first"), str(tmp_path / "second"))


def test_a_raw_tensor_signature_with_several_inputs_and_outputs_is_kept(tmp_path):
    model = _raw_tensor_model(["culmen_length_mm", "flipper_length_mm", "body_mass_g"])
    model.save(str(tmp_path / "model"), save_format="tf")
    out = str(tmp_path / "pruned")
    config = PruningConfig(target_sparsity=0.5, protect_output_layer=False)
    prune_saved_model(str(tmp_path / "model"), out, config, latency_repeats=1)  # signatures, not timings
    verify_signatures_preserved(str(tmp_path / "model"), out)
    signature = tf.saved_model.load(out).signatures["serving_default"]
    assert sorted(signature.structured_input_signature[1]) == ["body_mass_g", "culmen_length_mm", "flipper_length_mm"]
    assert sorted(signature.structured_outputs) == ["logits", "score"]


def test_tfx_penguin_example_model_keeps_its_signature_after_pruning(tmp_path):
    # The model TFX's own example module builds (tfx/examples/penguin/penguin_utils_keras.py): four
    # raw-tensor inputs, which the previous repr() comparison refused as a changed signature.
    from tfx_model_pruning.engine.saved_model import unsafe_layers

    penguin_example_model().save(str(tmp_path / "model"), save_format="tf")
    assert unsafe_layers(str(tmp_path / "model")) == []
    report = prune_saved_model(
        str(tmp_path / "model"), str(tmp_path / "pruned"), PruningConfig(target_sparsity=0.8), latency_repeats=1
    )
    assert abs(report.after.masked_sparsity - 0.8) <= 0.01
    verify_signatures_preserved(str(tmp_path / "model"), str(tmp_path / "pruned"))


def _saved_with_outputs(directory, outputs: dict) -> str:
    """A SavedModel whose serving signature returns ``outputs``: name -> (dtype, shape after the batch)."""
    module = tf.Module()

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve(examples):
        batch = tf.shape(examples)[0]
        return {
            name: tf.zeros(tf.concat([[batch], tf.constant(shape, tf.int32)], 0), dtype)
            for name, (dtype, shape) in outputs.items()
        }

    tf.saved_model.save(module, str(directory), signatures={"serving_default": serve})
    return str(directory)


def test_signatures_compare_by_name_dtype_and_shape_never_by_key_order(tmp_path):
    from tfx_model_pruning.engine.saved_model import signature_specs

    outputs = {name: (tf.float32, [1]) for name in ("a_xf", "b_xf", "label_xf")}
    reference = signature_specs(_saved_with_outputs(tmp_path / "reference", outputs))
    shuffled = {name: outputs[name] for name in ["label_xf", "a_xf", "b_xf"]}
    assert signature_specs(_saved_with_outputs(tmp_path / "shuffled", shuffled)) == reference
    changes = {
        "retyped": {**outputs, "label_xf": (tf.int64, [1])},
        "reshaped": {**outputs, "a_xf": (tf.float32, [])},
        "renamed": {("c_xf" if name == "a_xf" else name): spec for name, spec in outputs.items()},
    }
    for name, changed in changes.items():
        assert signature_specs(_saved_with_outputs(tmp_path / name, changed)) != reference, name
