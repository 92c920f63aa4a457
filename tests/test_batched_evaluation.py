"""The gate's one-pass evaluation gives TFMA's numbers, for every metric, model and slice it covers."""

import glob
import os
import shutil

import pytest
import tensorflow as tf
import tf_keras as keras
from executor_calls import run_gate, run_prune

from tfx_model_pruning.evaluator_gate import batched_evaluation
from tfx_model_pruning.evaluator_gate.config import GateConfig, MetricThreshold
from tfx_model_pruning_pipelines import penguin_trainer

pytestmark = pytest.mark.integration

ONE_PASS = "one pass over whole batches"


@pytest.fixture(scope="module")
def two_file_examples(tmp_path_factory, penguin_data):
    """The penguin splits, the eval split as two files (the train examples are the second)."""
    root = tmp_path_factory.mktemp("examples")
    shutil.copytree(os.path.join(penguin_data, "Split-train"), root / "Split-train")
    os.makedirs(root / "Split-eval")
    shutil.copy(glob.glob(os.path.join(penguin_data, "Split-eval", "*"))[0], root / "Split-eval" / "part-0.gz")
    shutil.copy(glob.glob(os.path.join(penguin_data, "Split-train", "*"))[0], root / "Split-eval" / "part-1.gz")
    return str(root)


def _config(evaluator, metrics, slice_metrics=(), label_key="species", **extra):
    return GateConfig(
        label_key=label_key,
        thresholds=[MetricThreshold(metric=name, lower_bound=0.0) for name in metrics],
        slice_feature="species" if slice_metrics else None,
        slice_thresholds=[MetricThreshold(metric=name, lower_bound=0.0) for name in slice_metrics],
        evaluator=evaluator,
        **extra,
    )


def _both_ways(tmp_path, candidate, baseline, examples, **config):
    _, by_tfma, error = run_gate(tmp_path / "tfma", candidate, baseline, examples, _config("tfma", **config))
    assert error is None, error
    _, one_pass, error = run_gate(tmp_path / "one_pass", candidate, baseline, examples, _config("auto", **config))
    assert error is None, error
    return by_tfma, one_pass


def _assert_same_numbers(by_tfma, one_pass):
    assert by_tfma["evaluated_by"].startswith("TFMA's per-example evaluator")
    assert one_pass["evaluated_by"].startswith(ONE_PASS)
    assert set(one_pass["slices"]) == set(by_tfma["slices"])
    for label, expected in [("Overall", by_tfma["metrics"]), *by_tfma["slices"].items()]:
        got = one_pass["metrics"] if label == "Overall" else one_pass["slices"][label]
        assert set(got) == set(expected), label
        for model, values in expected.items():
            assert set(got[model]) == set(values), (label, model)
            for metric, value in values.items():
                assert got[model][metric] == pytest.approx(value, abs=1e-6, rel=1e-6), (label, model, metric)


def test_one_pass_equals_tfma_for_two_models_every_slice_and_many_batches(
    tmp_path, monkeypatch, penguin_baseline, two_file_examples
):
    # A sparse candidate with no fine-tuning, so its numbers differ from the parent's.
    candidate, _ = run_prune(penguin_baseline, tmp_path / "prune", target_sparsity=0.9)
    monkeypatch.setattr(batched_evaluation, "MAX_BATCH_SIZE", 17)  # many batches per file, partial last ones
    by_tfma, one_pass = _both_ways(
        tmp_path,
        candidate.uri,
        penguin_baseline,
        two_file_examples,
        metrics=["SparseCategoricalAccuracy", "SparseCategoricalCrossentropy"],
        slice_metrics=["SparseCategoricalAccuracy", "SparseTopKCategoricalAccuracy"],
    )
    _assert_same_numbers(by_tfma, one_pass)
    counts = one_pass["metrics"]
    assert counts["candidate"]["example_count"] == counts["baseline"]["example_count"] > 300  # both files
    accuracy = "sparse_categorical_accuracy"
    assert counts["candidate"][accuracy] != counts["baseline"][accuracy]
    assert len(one_pass["slices"]) == 3
    verdicts = [
        [(check["name"], check["slice"], check["verdict"]) for check in result["checks"]]
        for result in (by_tfma, one_pass)
    ]
    assert verdicts[0] == verdicts[1]


def test_a_single_file_is_cut_into_shards_for_several_workers_with_tfma_s_numbers(
    tmp_path, monkeypatch, penguin_baseline, penguin_data
):
    candidate, _ = run_prune(penguin_baseline, tmp_path / "prune", target_sparsity=0.9)
    monkeypatch.setattr(batched_evaluation, "MAX_BATCH_SIZE", 7)  # batches enough for three shards
    # As on a runner of three machines; here three worker threads, each with a shard of the one file.
    monkeypatch.setattr(batched_evaluation, "declared_workers", lambda args: 3)
    config = {"metrics": ["SparseCategoricalAccuracy"], "slice_metrics": ["SparseCategoricalAccuracy"]}
    by_tfma = run_gate(tmp_path / "tfma", candidate.uri, penguin_baseline, penguin_data, _config("tfma", **config))
    _, by_tfma, error = by_tfma
    assert error is None, error
    workers = ["--direct_num_workers=3", "--direct_running_mode=multi_threading"]
    _, sharded, error = run_gate(
        tmp_path / "sharded", candidate.uri, penguin_baseline, penguin_data, _config("auto", **config), workers
    )
    assert error is None, error
    assert len(glob.glob(os.path.join(penguin_data, "Split-eval", "*"))) == 1
    assert sharded["evaluated_by"].endswith("each file in 3 shards")
    _assert_same_numbers(by_tfma, sharded)


def test_shards_go_to_workers_that_would_otherwise_idle():
    assert batched_evaluation.declared_workers([]) == 1
    processes = ["--direct_num_workers=4", "--direct_running_mode=multi_processing"]
    assert batched_evaluation.declared_workers(processes) == 1  # on this machine's cores
    assert batched_evaluation.declared_workers(["--runner=DataflowRunner", "--max_num_workers=20"]) == 20
    assert batched_evaluation.declared_workers(["--runner=FlinkRunner", "--parallelism=8"]) == 8
    assert batched_evaluation.shards_per_file(workers=1, files=1) == 1
    assert batched_evaluation.shards_per_file(workers=20, files=3) == 7
    assert batched_evaluation.shards_per_file(workers=4, files=10) == 1  # files enough: none is read twice
    units = batched_evaluation.work_units([os.path.join(os.path.dirname(__file__), "data", "*.py")], 2)
    assert {unit.shard for unit in units} == {0, 1} and len(units) % 2 == 0


def test_one_pass_feeds_named_inputs_of_a_keras_saved_model(tmp_path, penguin_files, penguin_data):
    keras.utils.set_random_seed(0)
    model = penguin_trainer.build_model()
    model.fit(penguin_trainer.input_fn(penguin_files["train"], 20), steps_per_epoch=20, verbose=0)
    path = tmp_path / "keras_model"
    model.save(path / "Format-Serving", save_format="tf")  # serving_default takes the four features by name
    signature = tf.saved_model.load(str(path / "Format-Serving")).signatures["serving_default"]
    assert batched_evaluation.serialized_input_name(signature) is None
    by_tfma, one_pass = _both_ways(
        tmp_path, str(path), None, penguin_data, metrics=["SparseCategoricalAccuracy", "SparseCategoricalCrossentropy"]
    )
    _assert_same_numbers(by_tfma, one_pass)


def test_a_metric_tfma_implements_itself_goes_through_tfma(tmp_path, penguin_baseline, penguin_data):
    config = _config("auto", metrics=["SparseCategoricalAccuracy", "MeanSquaredError"])
    _, result, error = run_gate(tmp_path, penguin_baseline, None, penguin_data, config)
    assert error is None, error
    assert result["evaluated_by"] == (
        "TFMA's per-example evaluator: MeanSquaredError is computed by TFMA's own implementation, not by Keras"
    )
    assert result["metrics"]["candidate"]["example_count"] > 0


def test_one_pass_equals_tfma_on_tfx_penguin_example_with_a_transformed_label(
    tmp_path, penguin_transform_graph, penguin_data
):
    # TFX's own preprocessing_fn and serving signatures (penguin_utils_base), saved by
    # tf.saved_model.save as its run_fn does: the label exists only as transform_features' species_xf.
    from tfx_example_models import save_penguin_example

    model_dir = save_penguin_example(tmp_path / "model", penguin_transform_graph, with_keras=False)
    by_tfma, one_pass = _both_ways(
        tmp_path,
        model_dir,
        None,
        penguin_data,
        metrics=["SparseCategoricalAccuracy", "SparseCategoricalCrossentropy"],
        slice_metrics=["SparseCategoricalAccuracy"],
        label_key="species_xf",
        preprocessing_function_names=["transform_features"],
    )
    _assert_same_numbers(by_tfma, one_pass)
    assert one_pass["metrics"]["candidate"]["example_count"] == 100 and len(one_pass["slices"]) == 3
