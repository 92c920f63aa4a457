"""TFX's own Chicago taxi example (``taxi_utils_native_keras.py``): 10 of its 18 CSV columns
have missing values (9 in the slice read here) and reach the tf.Transform layer as SparseTensors
(VarLenFeature); its label ``tips_xf`` is computed by the transform. Structured pruning rebuilds
its serving signatures around that layer, parsing the sparse features as the original does, and
the whole chain runs end to end: magnitude pruning with the module as it ships (``from_logits``
read from its sigmoid, not given), structured pruning with its one-line change (``model.save``).
"""

import os

import numpy as np
import pytest
import tensorflow as tf
import yaml
from conftest import analyse_transform
from tfx.examples.chicago_taxi_pipeline import taxi_utils_native_keras
from tfx_example_models import (
    TAXI_HIDDEN_UNITS,
    TAXI_MODULE,
    taxi_examples,
    taxi_instances,
    taxi_module_saving_with_keras,
    taxi_raw_spec,
    taxi_rows,
    train_taxi_example,
    write_taxi_csv,
)

from tfx_model_pruning.engine import StructuredPruningConfig, load_model, prune_saved_model
from tfx_model_pruning.engine.saved_model import signature_specs
from tfx_model_pruning.engine.signatures import rebuild_example_signatures, without_feature
from tfx_model_pruning.evaluator_gate.checks import ANSWERS_VARY, BEATS_MAJORITY
from tfx_model_pruning_pipelines import cli
from tfx_model_pruning_pipelines.results import run_result

pytestmark = pytest.mark.integration

# The first 2,000 rows of the 15,002 (plus the last, see taxi_rows): 77% of their labels are 0,
# and the example's model trained on them beats that (80% on the next 2,000 rows; 1,500 rows
# gave 77.5% against 75.4%, too close to gate on).
TAXI_TRAIN_ROWS = 2000
HELD_OUT = slice(TAXI_TRAIN_ROWS, TAXI_TRAIN_ROWS + 300)
# The pipeline hashes its CSV 2:1 into train and eval, and the gate blesses only a model whose
# accuracy's 95% interval clears the majority share: 4,000 rows (~2,670 train, ~1,330 eval) give
# 83% against 77% (interval from 81%); 3,000 gave 79.1% against 75.4% (from 76.5%), too close.
TAXI_PIPELINE_ROWS = 4000
SPARSE = [
    "pickup_community_area",
    "pickup_latitude",
    "pickup_longitude",
    "dropoff_latitude",
    "dropoff_longitude",
    "pickup_census_tract",
    "dropoff_census_tract",
    "company",
    "dropoff_community_area",
]


@pytest.fixture(scope="module")
def taxi_slice():
    header, rows = taxi_rows(TAXI_TRAIN_ROWS)
    spec = taxi_raw_spec(header, rows)
    _, more = taxi_rows(HELD_OUT.stop)
    return {
        "spec": spec,
        "train": taxi_examples(header, rows, spec),
        "held_out": taxi_examples(header, more[HELD_OUT], spec),
        "rows": (header, rows),
    }


@pytest.fixture(scope="module")
def taxi_transform_graph(tmp_path_factory, taxi_slice):
    """The transform TFX's taxi example computes (its own ``preprocessing_fn``) over the slice."""
    header, rows = taxi_slice["rows"]
    return analyse_transform(
        taxi_utils_native_keras.preprocessing_fn,
        taxi_slice["spec"],
        taxi_instances(header, rows, taxi_slice["spec"]),
        str(tmp_path_factory.mktemp("taxi_transform_graph")),
        str(tmp_path_factory.mktemp("taxi_tft_tmp")),
    )


def test_the_slice_reads_the_features_with_missing_values_as_sparse(taxi_slice):
    spec = taxi_slice["spec"]
    assert sorted(name for name, feature in spec.items() if isinstance(feature, tf.io.VarLenFeature)) == sorted(SPARSE)
    assert isinstance(spec["tips"], tf.io.FixedLenFeature) and len(spec) == 18


@pytest.mark.parametrize("share_transform_layer", [False, True], ids=["as_run_fn_saves", "layer_called_first_eagerly"])
def test_structured_pruning_of_the_taxi_model_rebuilds_signatures_that_parse_its_sparse_features(
    tmp_path, taxi_slice, taxi_transform_graph, share_transform_layer
):
    train, held_out = taxi_slice["train"], taxi_slice["held_out"]
    model_dir = train_taxi_example(
        tmp_path / "model", taxi_transform_graph, train, epochs=30, share_transform_layer=share_transform_layer
    )
    original = tf.saved_model.load(model_dir).signatures
    labels = original["transform_features"](examples=held_out)["tips_xf"].numpy().ravel()
    predicted = original["serving_default"](examples=held_out)["outputs"].numpy().ravel() > 0.5
    assert np.mean(predicted == labels) > max(np.mean(labels), 1 - np.mean(labels))  # beats the majority

    out = str(tmp_path / "pruned")
    report = prune_saved_model(model_dir, out, StructuredPruningConfig(prune_fraction=0.5), sample_examples=train[:64])
    widths = report.structure.widths
    hidden = ["dense", "dense_1", "dense_2", "dense_3"]
    assert [widths[name].before for name in hidden] == TAXI_HIDDEN_UNITS
    assert all(widths[name].after < widths[name].before for name in hidden), widths
    assert widths["dense_4"].before == widths["dense_4"].after == 1
    assert report.structure.params_after < report.structure.params_before
    assert sorted(signature_specs(out)) == ["serving_default", "transform_features"]
    assert signature_specs(out) == signature_specs(model_dir)

    # The form the signatures were proven with on the 64 sample examples, around the original
    # model, also reproduces the original on rows it never saw (missing values included).
    loaded = load_model(model_dir)
    twins = rebuild_example_signatures(loaded.model, loaded.signatures, loaded.model, train[:64])
    np.testing.assert_allclose(
        twins["serving_default"](examples=held_out)["outputs"].numpy(),
        original["serving_default"](examples=held_out)["outputs"].numpy(),
        rtol=1e-5,
        atol=1e-6,
    )

    pruned = tf.saved_model.load(out).signatures
    # A serving request carries no label, and a sparse feature may be absent: both are served.
    request = without_feature(without_feature(held_out, "tips"), "company")
    served = pruned["serving_default"](examples=request)["outputs"].numpy()
    assert served.shape == (held_out.shape[0], 1)
    assert np.all(np.isfinite(served)) and np.all((served >= 0) & (served <= 1))
    # A dense raw feature is required, by the original and the rebuilt signature alike.
    for signatures in (original, pruned):
        with pytest.raises(tf.errors.InvalidArgumentError, match="fare"):
            signatures["serving_default"](examples=without_feature(held_out, "fare"))
    before, after = original["transform_features"](examples=held_out), pruned["transform_features"](examples=held_out)
    assert sorted(before) == sorted(after) and "tips_xf" in after
    for key in before:
        np.testing.assert_array_equal(before[key].numpy(), after[key].numpy())


def _pipeline_file(project, method):
    """The user's pipeline file: TFX's taxi module as it ships for magnitude pruning; with the
    one-line ``model.save`` change for structured pruning. No from_logits anywhere: it is read
    from the model (its last Dense has a sigmoid)."""
    write_taxi_csv(project / "data" / "taxi.csv", TAXI_PIPELINE_ROWS)
    if method == "structured":
        trainer_module, prune = taxi_module_saving_with_keras(project), {"method": "structured", "prune_fraction": 0.5}
    else:
        trainer_module, prune = TAXI_MODULE, {"method": "magnitude", "target_sparsity": 0.8}
    description = {
        "name": "tfx-taxi",
        "data": {"root": "data", "format": "csv", "label_key": "tips"},  # hashed 2:1 into train and eval
        "model": {
            "trainer_module": trainer_module,
            "transform_module": TAXI_MODULE,  # as the tfx package ships it
            "train_steps": 2000,  # batches of 40: 30 epochs of the ~2,670 train rows
        },
        "prune": prune,
        "retrain": {"label_key": "tips_xf", "loss": "BinaryCrossentropy", "epochs": 3},
        "gate": {
            "label_key": "tips_xf",
            "preprocessing_function_names": ["transform_features"],
            "thresholds": [{"metric": "BinaryAccuracy", "lower_bound": 0.7, "max_absolute_drop": 0.02}],
            "compare_with": ["parent"],
        },
    }
    (project / "pipeline.yaml").write_text(yaml.safe_dump(description))
    return str(project / "pipeline.yaml")


@pytest.mark.parametrize("method", ["magnitude", "structured"])
def test_the_tfx_taxi_example_is_pruned_retrained_gated_and_pushed(tmp_path, method):
    config = _pipeline_file(tmp_path / "project", method)
    out = tmp_path / "run"
    assert cli.main(["run-local", "--config", config, "--output-dir", str(out), "--run-id", "taxi-1"]) == 0
    result = run_result(str(out / "metadata.sqlite"), "taxi-1")
    assert result.blessed and result.pushed, result.gate_result
    accuracy = {name: m["binary_accuracy"] for name, m in result.gate_result["metrics"].items()}
    print("taxi BinaryAccuracy", method, accuracy)
    assert accuracy["candidate"] >= 0.7 and accuracy["baseline"] - accuracy["candidate"] <= 0.02 + 1e-6
    # It beats answering "no tip" to everyone, by its 95% interval, and does not answer one thing to all.
    checks = {check["name"]: check for check in result.gate_result["checks"]}
    beats = checks[BEATS_MAJORITY]
    assert beats["passed"] and beats["interval"][0] > beats["bound"] > 0.7, beats
    assert checks[ANSWERS_VARY]["passed"] and checks[ANSWERS_VARY]["measured"] == 2

    trainer_dir, pushed_dir = result.gate_result["models"]["baseline"], result.pushed_destination
    assert signature_specs(pushed_dir) == signature_specs(trainer_dir)
    assert sorted(signature_specs(pushed_dir)) == ["serving_default", "transform_features"]
    if method == "structured":
        structure = result.pruning_report.structure
        print("taxi widths", structure.widths, structure.params_before, structure.params_after)
        assert structure.removed_units > 0 and structure.params_after < structure.params_before
        assert os.path.isfile(os.path.join(pushed_dir, "keras_metadata.pb"))
    else:  # as the module saves it: tf.saved_model.save, no Keras metadata; the zeros are held
        assert not os.path.isfile(os.path.join(pushed_dir, "keras_metadata.pb"))
        assert result.gate_result["weights"]["candidate"]["masked_sparsity"] >= 0.8

    header, rows = taxi_rows(HELD_OUT.stop)
    held_out = taxi_examples(header, rows[HELD_OUT], taxi_raw_spec(header, rows[:TAXI_TRAIN_ROWS]))
    served = tf.saved_model.load(pushed_dir).signatures["serving_default"](examples=without_feature(held_out, "tips"))
    assert served["outputs"].shape == (held_out.shape[0], 1) and np.all(np.isfinite(served["outputs"].numpy()))


def test_the_tfx_taxi_example_with_no_fine_tuning_is_judged_as_pruned_and_says_so(tmp_path):
    """retrain.epochs 0 on TFX's taxi module as it ships (tf.saved_model.save, sparse features, a
    sigmoid): the pruned model reaches the gate untouched, and every record says it was not fine-tuned."""
    config_path = _pipeline_file(tmp_path / "project", "magnitude")
    description = yaml.safe_load(open(config_path))
    description["retrain"] = {"label_key": "tips_xf", "epochs": 0}
    (tmp_path / "project" / "pipeline.yaml").write_text(yaml.safe_dump(description))
    out = tmp_path / "run"
    code = cli.main(["run-local", "--config", config_path, "--output-dir", str(out), "--run-id", "taxi-0"])
    result = run_result(str(out / "metadata.sqlite"), "taxi-0")
    assert code == (0 if result.blessed else 3), (code, result.gate_result.get("failed_checks"))
    gate = result.gate_result
    assert gate["not_fine_tuned"].startswith("not fine-tuned (retrain.epochs: 0)") and gate["fine_tuning"] is None
    assert gate["weights"]["candidate"]["masked_sparsity"] >= 0.8
    pruned, candidate = load_model(result.pruning_report.output_model), load_model(gate["models"]["candidate"])
    for weight, kept in zip(pruned.model.variables, candidate.model.variables, strict=True):
        np.testing.assert_array_equal(weight.numpy(), kept.numpy())
    print("taxi epochs 0 BinaryAccuracy", {name: m["binary_accuracy"] for name, m in gate["metrics"].items()})
