"""Component executors on the real penguin data, called the way a TFX launcher calls them."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from executor_calls import artifact, examples_artifact, run_gate, run_prune, run_retrain
from tfx.types import standard_artifacts

from tfx_model_pruning.artifacts import PruningReport
from tfx_model_pruning.engine import ExamplesMismatchError, load_model
from tfx_model_pruning.engine import prune as engine_prune
from tfx_model_pruning.engine.prune import size_stats, weight_and_size_stats
from tfx_model_pruning.engine.results import LayerWidth, PruningResult
from tfx_model_pruning.evaluator_gate.config import GateConfig, MetricThreshold
from tfx_model_pruning.prune import executor as prune_executor

pytestmark = pytest.mark.integration


def _accuracy_gate(min_sparsity=None, efficiency=None, **bounds):
    return GateConfig(
        label_key="species",
        thresholds=[MetricThreshold(metric="SparseCategoricalAccuracy", **bounds)],
        min_sparsity=min_sparsity,
        **(efficiency or {}),
    )


@pytest.fixture(scope="module")
def pruned(tmp_path_factory, penguin_baseline):
    return run_prune(penguin_baseline, tmp_path_factory.mktemp("prune"), target_sparsity=0.8)


def test_prune_executor_writes_model_report_and_properties(pruned):
    model, report = pruned
    with open(os.path.join(report.uri, "report.json")) as f:
        payload = json.load(f)
    assert abs(payload["after"]["masked_sparsity"] - 0.8) <= 0.005
    assert model.get_float_custom_property("sparsity") == pytest.approx(payload["after"]["masked_sparsity"])
    assert report.get_int_custom_property("nonzero_params") == payload["after"]["nonzero_params"]
    summary = open(os.path.join(report.uri, "summary.md")).read()
    assert "| hidden_1 " in summary and "output layer" in summary
    loaded = load_model(model.uri)  # TFX layout: <uri>/Format-Serving
    assert loaded.path.endswith("Format-Serving") and "serving_default" in loaded.signatures
    # The pruned model's graph census, as ML Metadata holds it.
    assert model.get_string_custom_property("graph_scan") == "passed"
    assert model.get_int_custom_property("graph_op_types") == len(loaded.scan.ops) > 10
    assert model.get_int_custom_property("graph_functions") == loaded.scan.functions
    assert model.get_string_custom_property("graph_allowed_ops") == "[]"


def test_retrain_executor_keeps_zeros_and_signatures(tmp_path, pruned, penguin_data):
    model = run_retrain(pruned[0].uri, penguin_data, tmp_path / "retrained", label_key="species", epochs=2)
    loaded = load_model(model.uri)
    assert set(loaded.masks) == {"hidden_0::kernel", "hidden_1::kernel"}
    for key, mask in loaded.masks.items():
        kernel = loaded.model.get_layer(key.split("::")[0]).kernel.numpy()
        np.testing.assert_array_equal(kernel == 0, ~mask)
    assert list(loaded.signatures) == ["serving_default"]
    history = json.load(open(os.path.join(model.uri, "fine_tuning.json")))
    assert len(history["history"]["loss"]) == 2 and "val_loss" in history["history"]
    assert history["loss"]["evidence"] == "compiled loss"  # no loss configured: the one the model was saved with
    assert model.get_float_custom_property("sparsity") == pytest.approx(0.8, abs=0.005)
    assert model.get_string_custom_property("graph_scan") == "passed"
    assert model.get_int_custom_property("graph_op_types") == len(loaded.scan.ops)


def test_retrain_executor_fine_tunes_until_recovered_and_records_why_it_stopped(
    tmp_path, pruned, penguin_data, penguin_baseline
):
    recovery = {"metric": "SparseCategoricalAccuracy", "tolerance": 0.005, "max_steps": 64, "eval_every_steps": 16}
    model = run_retrain(
        pruned[0].uri, penguin_data, tmp_path / "retrained", parent_uri=penguin_baseline, label_key="species",
        recovery=recovery,
    )  # fmt: skip
    record = json.load(open(os.path.join(model.uri, "fine_tuning.json")))
    recovered = record["recovery"]
    assert recovered["metric"] == "SparseCategoricalAccuracy" and 0.9 <= recovered["parent"] <= 1.0
    assert recovered["stop_reason"] in ("recovered", "plateau", "budget") and recovered["steps"] <= 64
    steps = [e["step"] for e in recovered["evaluations"]]
    assert steps == list(range(0, recovered["steps"] + 1, 16))  # step 0, then every 16 batches
    assert record["learning_rate"]["schedule"] == "warmup_cosine" and record["learning_rate"]["steps"] == 64
    # The artifact's ML Metadata says the same.
    assert model.get_string_custom_property("recovery_summary") == recovered["summary"]
    assert model.get_string_custom_property("recovery_stop_reason") == recovered["stop_reason"]
    assert model.get_int_custom_property("recovery_steps") == recovered["steps"]
    assert model.get_float_custom_property("recovery_parent") == pytest.approx(recovered["parent"])
    assert model.get_float_custom_property("recovery_best") == pytest.approx(recovered["best"]["metric"])
    loaded = load_model(model.uri)
    for key, mask in loaded.masks.items():  # the weights kept, best or last, have their zeros
        np.testing.assert_array_equal(loaded.model.get_layer(key.split("::")[0]).kernel.numpy() == 0, ~mask)


def test_retrain_executor_uses_a_module_file_input_fn(tmp_path, pruned, penguin_data):
    calls = tmp_path / "calls.txt"
    module = tmp_path / "my_input.py"
    module.write_text(
        f"""
from tfx_model_pruning.engine import examples_dataset

def input_fn(file_paths, model, label_key, batch_size, shuffle_buffer, seed):
    with open({str(calls)!r}, "a") as f:
        f.write(f"{{len(file_paths)}} {{batch_size}}\\n")
    return examples_dataset(file_paths, model, label_key, batch_size, shuffle_buffer, seed)
"""
    )
    run_retrain(pruned[0].uri, penguin_data, tmp_path / "out", module_file=str(module), label_key="species", epochs=1)
    # Train at the configured batch; the evaluations while fine-tuning in whole batches of 256.
    assert calls.read_text().splitlines() == ["1 32", "1 256"]


def test_retrain_executor_rejects_an_absent_label_key(tmp_path, pruned, penguin_data):
    with pytest.raises(ExamplesMismatchError, match="label_key 'island'"):
        run_retrain(pruned[0].uri, penguin_data, tmp_path / "out", label_key="island", epochs=1)
    assert not (tmp_path / "out" / "Format-Serving").exists()


def test_gate_blesses_a_model_within_its_bounds(tmp_path, pruned, penguin_baseline, penguin_data):
    config = _accuracy_gate(lower_bound=0.5, max_absolute_drop=0.5, max_relative_drop=0.5, min_sparsity=0.79)
    blessing, result, error = run_gate(tmp_path, pruned[0].uri, penguin_baseline, penguin_data, config)
    assert error is None
    assert result["blessed"] is True and result["failed_checks"] == []
    assert blessing.get_int_custom_property("blessed") == 1
    assert os.listdir(blessing.uri) == ["BLESSED"]
    assert result["metrics"]["baseline"]["example_count"] == 100
    assert result["metrics"]["candidate"]["example_count"] == 100
    accuracy = result["metrics"]["candidate"]["sparse_categorical_accuracy"]
    assert 0.5 <= accuracy <= 1.0
    checks = {c["name"]: c for c in result["checks"]}
    drop = checks["sparse_categorical_accuracy drop vs parent <= max_absolute_drop"]
    assert drop["measured"] == pytest.approx(result["metrics"]["baseline"]["sparse_categorical_accuracy"] - accuracy)
    assert checks["sparsity >= min_sparsity"]["measured"] == pytest.approx(0.8, abs=0.005)
    assert result["weights"]["candidate"]["nonzero_params"] < result["weights"]["baseline"]["nonzero_params"]
    assert os.path.isdir(os.path.join(tmp_path, "evaluation", "tfma"))
    assert "**BLESSED: all " in open(tmp_path / "evaluation" / "summary.md").read()


def test_gate_takes_the_sizes_recorded_with_a_model_instead_of_compressing_it_again(
    tmp_path, monkeypatch, penguin_baseline, penguin_data
):
    pruned_model, _ = run_prune(penguin_baseline, tmp_path / "prune", target_sparsity=0.8)
    retrained = run_retrain(pruned_model.uri, penguin_data, tmp_path / "retrained", label_key="species", epochs=1)
    for model in (pruned_model, retrained):
        recorded = json.load(open(os.path.join(model.uri, "model_sizes.json")))
        measured = weight_and_size_stats(load_model(model.uri).model, None, os.path.join(model.uri, "Format-Serving"))
        assert recorded == {key: measured[key] for key in ("saved_model_bytes", "gzip_bytes", "weights_gzip_bytes")}
    compressed = []

    def counted(directory):
        compressed.append(directory)
        return size_stats(directory)

    monkeypatch.setattr(engine_prune, "size_stats", counted)
    gate = _accuracy_gate(lower_bound=0)
    _, result, error = run_gate(tmp_path / "gate", retrained.uri, penguin_baseline, penguin_data, gate)
    assert error is None, error
    assert compressed == [os.path.join(penguin_baseline, "Format-Serving")]  # the Trainer's model records none
    assert result["weights"]["candidate"]["gzip_bytes"] == recorded["gzip_bytes"]

    # A model changed since its sizes were recorded is measured again.
    with open(os.path.join(retrained.uri, "Format-Serving", "assets.extra", "note.txt"), "w") as f:
        f.write("x" * 1000)
    compressed.clear()
    _, result, error = run_gate(tmp_path / "gate-2", retrained.uri, penguin_baseline, penguin_data, gate)
    assert error is None, error
    assert os.path.join(retrained.uri, "Format-Serving") in compressed
    assert result["weights"]["candidate"]["saved_model_bytes"] == recorded["saved_model_bytes"] + 1000


def test_gate_refuses_an_unreachable_threshold(tmp_path, pruned, penguin_baseline, penguin_data):
    config = _accuracy_gate(lower_bound=0.5, min_sparsity=0.99)
    blessing, result, error = run_gate(tmp_path, pruned[0].uri, penguin_baseline, penguin_data, config)
    assert error is None
    assert result["blessed"] is False and result["failed_checks"] == ["sparsity >= min_sparsity"]
    assert blessing.get_int_custom_property("blessed") == 0
    assert os.listdir(blessing.uri) == ["NOT_BLESSED"]
    summary = open(tmp_path / "evaluation" / "summary.md").read()
    assert "**NOT BLESSED: 1 of " in summary
    why = summary.index("## Why it was refused")
    assert "- sparsity is 0.8" in summary[why:] and ", below the lower bound 0.99" in summary[why:]
    assert why < summary.index("## Checks (failed first)")
    html = open(tmp_path / "evaluation" / "report.html").read()
    assert "<li>sparsity is 0.8" in html and "below the lower bound 0.99</li>" in html


def test_gate_refuses_an_empty_eval_split(tmp_path, pruned, penguin_baseline, examples_with_empty_eval):
    blessing, result, error = run_gate(
        tmp_path, pruned[0].uri, penguin_baseline, examples_with_empty_eval, _accuracy_gate(lower_bound=0.0)
    )
    assert blessing.get_int_custom_property("blessed") == 0
    assert os.listdir(blessing.uri) == ["NOT_BLESSED"]
    assert error is None, "an empty split is a refusal with a reason, not a crash"
    assert result["blessed"] is False
    assert "eval examples >= min_eval_examples" in result["failed_checks"]
    assert result["checks"][0]["measured"] == 0


def test_gate_fails_closed_when_evaluation_breaks(tmp_path, penguin_baseline, penguin_data):
    broken = tmp_path / "broken" / "Format-Serving"
    broken.mkdir(parents=True)
    (broken / "saved_model.pb").write_bytes(b"garbage")
    (broken / "keras_metadata.pb").write_bytes(b"garbage")
    blessing, result, error = run_gate(
        tmp_path, str(tmp_path / "broken"), penguin_baseline, penguin_data, _accuracy_gate(lower_bound=0.0)
    )
    assert error is not None and "could not load" in str(error)
    assert blessing.get_int_custom_property("blessed") == 0
    assert os.listdir(blessing.uri) == ["NOT_BLESSED"]
    assert result["blessed"] is False and "could not load" in result["error"]
    html = (tmp_path / "evaluation" / "report.html").read_text()
    assert "NOT BLESSED" in html and "The evaluation failed" in html and "could not load" in html


def test_gate_can_run_without_a_baseline(tmp_path, pruned, penguin_data):
    blessing, result, error = run_gate(tmp_path, pruned[0].uri, None, penguin_data, _accuracy_gate(lower_bound=0.5))
    assert error is None and result["blessed"] is True
    assert set(result["metrics"]) == {"candidate"}


def test_empty_split_file_is_really_empty(examples_with_empty_eval):
    path = os.path.join(examples_with_empty_eval, "Split-eval", "data_tfrecord-00000-of-00001.gz")
    assert sum(1 for _ in tf.data.TFRecordDataset(path, compression_type="GZIP")) == 0


def test_prune_executor_structured_reads_sample_examples(tmp_path, penguin_baseline, penguin_data):
    model = artifact(standard_artifacts.Model, tmp_path / "model")
    report = artifact(PruningReport, tmp_path / "report")
    config = '{"method": "structured", "prune_fraction": 0.25}'
    prune_executor.Executor().Do(
        {
            "input_model": [artifact(standard_artifacts.Model, penguin_baseline)],
            "examples": [examples_artifact(penguin_data)],
        },
        {"model": [model], "pruning_report": [report]},
        {"pruning_config": config},
    )
    payload = json.load(open(os.path.join(report.uri, "report.json")))
    assert payload["structure"]["widths"]["hidden_0"] == {"before": 64, "after": 48}
    assert PruningResult.from_json(payload).structure.widths["hidden_0"] == LayerWidth(before=64, after=48)
    assert report.get_int_custom_property("flops") == payload["after"]["flops"]
    summary = open(os.path.join(report.uri, "summary.md")).read()
    assert "structured (l1)" in summary and "| hidden_0 " in summary and "CPU latency, batch 64" in summary
    assert load_model(model.uri).model.get_layer("hidden_1").kernel.shape == (48, 48)


def test_gate_refuses_on_efficiency_and_reports_the_measurements(tmp_path, pruned, penguin_baseline, penguin_data):
    efficiency = {
        "max_params": 1000,
        "max_latency_ms": 10_000.0,
        "min_size_reduction": 0.5,
        "max_latency_ratio": 0.01,  # a hundred times faster than the parent: no pruning of penguin does that
        "max_size_ratio": 10.0,
    }
    config = _accuracy_gate(lower_bound=0.5, efficiency=efficiency)
    blessing, result, error = run_gate(tmp_path, pruned[0].uri, penguin_baseline, penguin_data, config)
    assert error is None
    assert result["failed_checks"] == [
        "params <= max_params",
        "serving latency (batch 32) vs parent <= max_latency_ratio",
    ]
    assert os.listdir(blessing.uri) == ["NOT_BLESSED"]
    candidate, parent = result["weights"]["candidate"], result["weights"]["baseline"]
    assert candidate["params"] == 4675 and candidate["latency_ms"] > 0 and candidate["flops"] > 0
    for figures in (candidate, parent):  # both batch sizes, the same number of timed calls, quartiles in order
        assert sorted(figures["latency"]) == ["1", "32"]
        for timing in figures["latency"].values():
            assert timing["calls"] == 30 and 0 < timing["p25_ms"] <= timing["median_ms"] <= timing["p75_ms"]
        assert figures["latency_ms"] == figures["latency"]["32"]["median_ms"]
    (ratio,) = [c for c in result["checks"] if c["bound_name"] == "max_latency_ratio"]
    assert ratio["measured"] == pytest.approx(candidate["latency_ms"] / parent["latency_ms"])
    (size,) = [c for c in result["checks"] if c["bound_name"] == "max_size_ratio"]
    assert size["passed"] and size["measured"] == pytest.approx(
        candidate["saved_model_bytes"] / parent["saved_model_bytes"]
    )
    summary = open(tmp_path / "evaluation" / "summary.md").read()
    assert "FAIL      | params <= max_params" in summary and "serving latency, batch 32 (ms: median, IQR)" in summary
    assert "serving latency, batch 1 (ms: median, IQR)" in summary
    html = open(tmp_path / "evaluation" / "report.html").read()
    assert "<li>params is 4675, above the upper bound 1000</li>" in html
    assert '<td class="FAIL">FAIL</td><td>params &lt;= max_params</td>' in html


def test_retrain_with_epochs_0_passes_the_pruned_model_on_and_the_gate_says_it_was_not_fine_tuned(
    tmp_path, pruned, penguin_data, penguin_baseline
):
    model = run_retrain(pruned[0].uri, penguin_data, tmp_path / "retrained", label_key="species", epochs=0)
    before, after = load_model(pruned[0].uri), load_model(model.uri)
    for weight, kept in zip(before.model.weights, after.model.weights, strict=True):
        np.testing.assert_array_equal(weight.numpy(), kept.numpy())  # untouched, not one step
    assert set(after.masks) == set(before.masks) and list(after.signatures) == ["serving_default"]
    record = json.load(open(os.path.join(model.uri, "fine_tuning.json")))
    assert record["fine_tuned"] is False and "retrain.epochs: 0" in record["reason"]
    assert model.get_int_custom_property("fine_tuned") == 0
    assert model.get_string_custom_property("recovery_summary") == record["reason"]
    assert model.get_float_custom_property("sparsity") == pytest.approx(0.8, abs=0.005)

    _, result, error = run_gate(
        tmp_path, model.uri, penguin_baseline, penguin_data, _accuracy_gate(lower_bound=0.0, max_absolute_drop=1.0)
    )
    assert error is None and result["not_fine_tuned"] == record["reason"] and result["fine_tuning"] is None
    summary = open(tmp_path / "evaluation" / "summary.md").read()
    html = open(tmp_path / "evaluation" / "report.html").read()
    assert "## Fine-tuning\n\nNot fine-tuned (retrain.epochs: 0)" in summary
    assert "<h2>Fine-tuning</h2><p>Not fine-tuned (retrain.epochs: 0)" in html


def test_a_fine_tuned_candidate_is_recorded_as_fine_tuned(tmp_path, pruned, penguin_data):
    model = run_retrain(pruned[0].uri, penguin_data, tmp_path / "retrained", label_key="species", epochs=1)
    assert model.get_int_custom_property("fine_tuned") == 1
