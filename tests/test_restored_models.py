"""Models saved as TFX's examples save them: ``tf.saved_model.save``, no Keras metadata."""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras
from executor_calls import run_gate, run_retrain
from tfx.examples.penguin import penguin_utils_base
from tfx_example_models import save_penguin_example

from tfx_model_pruning.engine import (
    ExamplesMismatchError,
    LayerRemovalConfig,
    PruningConfig,
    StructuredPruningConfig,
    prune_saved_model,
)
from tfx_model_pruning.engine.data import read_serialized
from tfx_model_pruning.engine.restored import NeedsKerasModelError
from tfx_model_pruning.engine.saved_model import load_model, signature_specs
from tfx_model_pruning.evaluator_gate.config import GateConfig

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def restored_model(tmp_path_factory, penguin_transform_graph):
    path = save_penguin_example(
        tmp_path_factory.mktemp("restored") / "model", penguin_transform_graph, with_keras=False
    )
    os.makedirs(os.path.join(path, "assets.extra"))
    with open(os.path.join(path, "assets.extra", "tf_serving_warmup_requests"), "wb") as f:
        f.write(b"warm-up records")
    return path


def test_magnitude_pruning_keeps_signatures_and_assets_and_protects_the_output_layer(tmp_path, restored_model):
    out = str(tmp_path / "pruned")
    report = prune_saved_model(restored_model, out, PruningConfig(target_sparsity=0.8), latency_repeats=1)

    assert not os.path.exists(os.path.join(out, "keras_metadata.pb"))
    assert signature_specs(out) == signature_specs(restored_model)
    assert sorted(report.signatures) == ["serving_default", "transform_features"]
    with open(os.path.join(out, "assets.extra", "tf_serving_warmup_requests"), "rb") as f:
        assert f.read() == b"warm-up records"
    rows = {row.layer: row for row in report.weights}
    assert rows["dense_2"].protected_by == "output layer"  # found in the serving graph, not by name
    assert rows["dense"].protected_by is None and rows["dense_1"].protected_by is None
    assert abs(report.after.masked_sparsity - 0.8) <= 0.011
    assert report.after.flops is None  # not counted without Keras layers, and the report says so

    pruned = load_model(out)
    assert sorted(pruned.masks) == ["dense::kernel", "dense_1::kernel"]


def test_protected_layers_match_restored_layer_names(tmp_path, restored_model):
    config = PruningConfig(target_sparsity=0.5, protected_layers=["dense_1"])
    report = prune_saved_model(restored_model, str(tmp_path / "out"), config, latency_repeats=1)
    rows = {row.layer: row for row in report.weights}
    assert rows["dense_1"].nonzeros_after == rows["dense_1"].params
    assert rows["dense"].sparsity_after == pytest.approx(0.5)


@pytest.mark.parametrize(
    "config, what",
    [
        (StructuredPruningConfig(prune_fraction=0.5), "structured pruning"),
        (LayerRemovalConfig(label_key="species_xf"), "layer removal"),
    ],
)
def test_methods_that_need_the_layer_graph_refuse_with_the_module_change(tmp_path, restored_model, config, what):
    with pytest.raises(NeedsKerasModelError, match=f"^{what} needs the Keras layer graph.*model.save\\("):
        prune_saved_model(restored_model, str(tmp_path / "out"), config)
    assert not (tmp_path / "out").exists()


def test_the_taylor_criterion_without_a_loss_is_refused_naming_the_setting(tmp_path, restored_model):
    config = PruningConfig(target_sparsity=0.5, criterion="taylor", label_key="species_xf")
    with pytest.raises(NeedsKerasModelError, match="set `loss` in the pruning config"):
        prune_saved_model(restored_model, str(tmp_path / "out"), config)
    assert not (tmp_path / "out").exists()


def test_raw_examples_are_transformed_for_fine_tuning_and_pruned_weights_stay_zero(
    tmp_path, restored_model, penguin_transform_graph, penguin_data, penguin_files
):
    pruned = str(tmp_path / "pruned")
    prune_saved_model(restored_model, pruned, PruningConfig(target_sparsity=0.8), latency_repeats=1)
    masks = load_model(pruned).masks
    out = run_retrain(
        pruned,
        penguin_data,
        tmp_path / "retrained",
        transform_graph=penguin_transform_graph,
        label_key="species_xf",
        loss="SparseCategoricalCrossentropy",
        epochs=8,
        learning_rate=0.01,
    ).uri
    history = json.load(open(os.path.join(out, "fine_tuning.json")))["history"]
    assert history["loss"][-1] < history["loss"][0] and len(history["val_loss"]) == 8

    retrained = load_model(os.path.join(out, "Format-Serving"))
    variables = {v.name.split(":")[0]: v.numpy() for v in retrained.model.variables}
    for key, mask in masks.items():
        assert np.all(variables[key.replace("::", "/")][~mask] == 0)
    assert retrained.masks.keys() == masks.keys()
    assert signature_specs(os.path.join(out, "Format-Serving")) == signature_specs(restored_model)
    served = tf.saved_model.load(os.path.join(out, "Format-Serving")).signatures["serving_default"]
    assert served(examples=read_serialized(penguin_files["eval"], 4))["outputs"].shape == (4, 3)


def test_gradual_pruning_and_distillation_fine_tune_a_model_saved_with_tf_saved_model_save(
    tmp_path, restored_model, penguin_transform_graph, penguin_data, penguin_files
):
    out = run_retrain(
        restored_model,
        penguin_data,
        tmp_path / "retrained",
        transform_graph=penguin_transform_graph,
        teacher_uri=restored_model,  # the unpruned Trainer model teaches its pruned self
        label_key="species_xf",
        loss="SparseCategoricalCrossentropy",
        epochs=20,
        steps_per_epoch=20,
        learning_rate=0.01,
        gradual_pruning={"final_sparsity": 0.8, "begin_step": 0, "end_step": 200, "frequency": 10},
        distillation={"temperature": 2.0, "alpha": 0.5},
    ).uri
    record = json.load(open(os.path.join(out, "fine_tuning.json")))
    assert record["weights"]["masked_sparsity"] == pytest.approx(0.8, abs=0.01)
    examples = read_serialized(penguin_files["eval"], 100)
    labels = tf.io.parse_example(examples, {"species": tf.io.FixedLenFeature([], tf.int64)})["species"].numpy()
    served = tf.saved_model.load(os.path.join(out, "Format-Serving")).signatures["serving_default"]
    accuracy = np.mean(np.argmax(served(examples=examples)["outputs"].numpy(), axis=-1) == labels)
    # It learned while it was pruned: 0.94-0.99 over seeds 0-3 here (a third is chance; the most common
    # species is 44%); the issue measured 0.97 for plain fine-tuning of the one-shot pruned model.
    assert accuracy >= 0.85

    retrained = load_model(os.path.join(out, "Format-Serving"))
    assert sorted(retrained.masks) == ["dense::kernel", "dense_1::kernel"]  # the output layer protected
    variables = {v.name.split(":")[0]: v.numpy() for v in retrained.model.variables}
    for key, mask in retrained.masks.items():
        assert np.all(variables[key.replace("::", "/")][~mask] == 0)
    assert signature_specs(os.path.join(out, "Format-Serving")) == signature_specs(restored_model)


@pytest.mark.parametrize(
    "model_fixture, options, error, message",
    [
        # tf.saved_model.save keeps no loss: it must be given
        ("restored_model", {"label_key": "species_xf"}, ValueError, "which keeps no loss; set `loss`"),
        (
            "restored_model",
            {"label_key": "sex", "loss": "SparseCategoricalCrossentropy"},
            ExamplesMismatchError,
            "label_key 'sex' is neither a transformed feature",
        ),
        # the project's own penguin model takes raw features: it was not trained after this transform
        ("penguin_baseline", {"label_key": "species"}, ExamplesMismatchError, "not trained on this Transform's output"),
    ],
    ids=["no_loss", "label_nowhere", "wrong_transform"],
)
def test_retrain_with_a_transform_graph_names_bad_input_before_training(
    request, tmp_path, penguin_transform_graph, penguin_data, model_fixture, options, error, message
):
    model = request.getfixturevalue(model_fixture)
    with pytest.raises(error, match=message):
        run_retrain(model, penguin_data, tmp_path / "out", transform_graph=penguin_transform_graph, epochs=1, **options)


def test_without_the_transform_the_missing_inputs_are_named(tmp_path, restored_model, penguin_data):
    with pytest.raises(ExamplesMismatchError, match="model input 'culmen_length_mm_xf' is not a feature"):
        run_retrain(restored_model, penguin_data, tmp_path / "out", label_key="species", loss="MeanSquaredError")


ACCURACY = {"metric": "SparseCategoricalAccuracy", "lower_bound": 0.5}


@pytest.mark.parametrize(
    "options, message",
    [
        ({"label_key": "species_xf"}, "the model's 'transform_features' signature outputs it: set preprocessing_fun"),
        (
            {"label_key": "species_xf", "preprocessing_function_names": ["transform"]},
            "the candidate model has no signature 'transform'; it has ['serving_default', 'transform_features']",
        ),
        ({"label_key": "sex", "preprocessing_function_names": ["transform_features"]}, "label_key 'sex' is not a"),
    ],
)
def test_the_gate_names_a_missing_label_or_signature_before_evaluating(
    tmp_path, restored_model, penguin_data, options, message
):
    config = GateConfig(thresholds=[ACCURACY], min_eval_examples=1, **options)
    blessing, result, error = run_gate(tmp_path, restored_model, None, penguin_data, config)
    assert error is not None and message in str(error)
    assert blessing.get_int_custom_property("blessed") == 0
    assert not (tmp_path / "evaluation" / "tfma").exists()  # refused before Beam ran


def test_a_serving_model_without_the_candidates_transform_signature_is_named_as_another_pipelines(
    tmp_path, restored_model, penguin_baseline, penguin_data
):
    # Another pipeline's model (raw features, no transform_features) is the newest version here.
    shutil.copytree(os.path.join(penguin_baseline, "Format-Serving"), tmp_path / "serving" / "3")
    config = GateConfig(
        label_key="species_xf",
        preprocessing_function_names=["transform_features"],
        thresholds=[ACCURACY],
        min_eval_examples=1,
        serving_model_dir=str(tmp_path / "serving"),
    )
    blessing, _, error = run_gate(tmp_path, restored_model, None, penguin_data, config)
    assert error is not None, "the gate compared with another pipeline's model"
    message = str(error)
    assert f"the serving model {tmp_path / 'serving' / '3'} has no signature 'transform_features'" in message
    assert "appears to belong to another model or pipeline" in message and "push.destination" in message
    assert blessing.get_int_custom_property("blessed") == 0
    assert not (tmp_path / "evaluation" / "tfma").exists()  # refused before Beam ran


def test_the_gate_reads_a_transformed_label_through_the_preprocessing_signature(tmp_path, restored_model, penguin_data):
    config = GateConfig(
        label_key="species_xf",
        preprocessing_function_names=["transform_features"],
        thresholds=[ACCURACY],
        max_flops=10**6,
    )
    _, result, error = run_gate(tmp_path, restored_model, restored_model, penguin_data, config)
    assert error is None
    assert result["metrics"]["candidate"]["example_count"] == 100
    assert result["weights"]["candidate"]["flops"] is None
    # FLOPs are not counted without Keras layers, so a FLOPs bound refuses, and says why.
    assert "FLOPs <= max_flops" in result["failed_checks"]
    (flops,) = [check for check in result["checks"] if check["name"] == "FLOPs <= max_flops"]
    assert "saved without its Keras layers" in flops["detail"]


def _bucket_by_vocabulary(inputs):
    # A vocabulary makes the transform carry an asset file that serving reads at every request.
    mass_bucket = tf.strings.as_string(tf.cast(inputs["body_mass_g"] // 1000.0, tf.int64))
    return {
        "mass_bucket_xf": tft.compute_and_apply_vocabulary(mass_bucket, vocab_filename="mass_buckets"),
        "culmen_length_mm_xf": tft.scale_to_z_score(inputs["culmen_length_mm"]),
        "species_xf": inputs["species"],
    }


@pytest.fixture(scope="module")
def vocabulary_model(tmp_path_factory, penguin_files):
    from conftest import analyse_penguin_transform

    graph = analyse_penguin_transform(
        _bucket_by_vocabulary,
        penguin_files["train"],
        str(tmp_path_factory.mktemp("vocabulary_graph")),
        str(tmp_path_factory.mktemp("vocabulary_tmp")),
    )
    keras.backend.clear_session()
    bucket = keras.Input((1,), name="mass_bucket_xf", dtype=tf.int64)
    culmen = keras.Input((1,), name="culmen_length_mm_xf")
    embedded = keras.layers.Flatten()(keras.layers.Embedding(16, 4)(bucket))
    hidden = keras.layers.Dense(16, activation="relu")(keras.layers.concatenate([embedded, culmen]))
    model = keras.Model([bucket, culmen], keras.layers.Dense(3)(hidden))
    signatures = penguin_utils_base.make_serving_signatures(model, tft.TFTransformOutput(graph))
    path = str(tmp_path_factory.mktemp("vocabulary_model") / "model")
    tf.saved_model.save(model, path, signatures=signatures)
    return path, graph


def test_vocabulary_assets_survive_pruning_and_fine_tuning_without_the_source(
    tmp_path, vocabulary_model, penguin_data, penguin_files
):
    source, graph = vocabulary_model
    examples = read_serialized(penguin_files["eval"], 32)
    buckets = tf.saved_model.load(source).signatures["transform_features"](examples=examples)["mass_bucket_xf"]
    copy = str(tmp_path / "source")
    shutil.copytree(source, copy)

    pruned = str(tmp_path / "pruned")
    report = prune_saved_model(copy, pruned, PruningConfig(target_sparsity=0.7), latency_repeats=1)
    assert {row.layer for row in report.weights} >= {"embedding", "dense"}  # embeddings are pruned too
    retrained = run_retrain(
        pruned,
        penguin_data,
        tmp_path / "retrained",
        transform_graph=graph,
        label_key="species_xf",
        loss="SparseCategoricalCrossentropy",
        # The model was never trained: enough epochs to leave the uniform guess (ln 3), which Retrain refuses.
        epochs=10,
        learning_rate=0.05,
    ).uri
    shutil.rmtree(copy)
    shutil.rmtree(pruned)  # the fine-tuned model must hold its own copy of the vocabulary

    final = os.path.join(retrained, "Format-Serving")
    assert os.listdir(os.path.join(final, "assets")) == ["mass_buckets"]
    signatures = tf.saved_model.load(final).signatures
    np.testing.assert_array_equal(signatures["transform_features"](examples=examples)["mass_bucket_xf"], buckets)
    assert signatures["serving_default"](examples=examples)["outputs"].shape == (32, 3)


def test_run_local_releases_an_imported_model_saved_with_tf_saved_model_save(tmp_path, penguin_baseline, capsys):
    from tfx_model_pruning_pipelines import cli
    from tfx_model_pruning_pipelines.results import run_result

    keras_model = load_model(penguin_baseline)
    plain = str(tmp_path / "plain")
    tf.saved_model.save(keras_model.model, plain, signatures=dict(keras_model.signatures))
    assert not os.path.exists(os.path.join(plain, "keras_metadata.pb"))

    out = tmp_path / "run"
    arguments = ["run-local", "--output-dir", str(out), "--run-id", "plain", "--baseline-model", plain]
    code = cli.main([*arguments, "--epochs", "10", "--loss", "SparseCategoricalCrossentropy"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    result = run_result(str(out / "metadata.sqlite"), "plain")
    assert result.blessed and result.pushed
    assert signature_specs(result.pushed_destination) == signature_specs(plain)
    assert result.gate_result["weights"]["candidate"]["masked_sparsity"] >= 0.8
