"""The graph scan in the pipeline: a model that writes files stops the run with exit 2 before any of
it runs, nothing is pushed, and a candidate holding an op its parent lacks is not blessed."""

import os

import pytest
import tensorflow as tf
import tf_keras as keras
from executor_calls import run_gate
from tfx import v1 as tfx

from tfx_model_pruning import PruneComponent
from tfx_model_pruning.evaluator_gate.config import GateConfig, MetricThreshold
from tfx_model_pruning_pipelines import cli, pruning_pipeline
from tfx_model_pruning_pipelines.results import failed_steps

pytestmark = pytest.mark.integration


def _with_extra_signature(source: str, destination: str, extra) -> str:
    """The penguin model saved with ``model.save``, its signatures kept and one more added."""
    model = keras.models.load_model(os.path.join(source, "Format-Serving"))
    signatures = dict(model.signatures)
    serving = signatures["serving_default"]

    @tf.function(input_signature=list(serving.structured_input_signature[1].values()))
    def extra_signature(examples):
        return {"out": extra(serving(examples)["outputs"])}

    signatures["extra"] = extra_signature
    model.save(destination, save_format="tf", signatures=signatures)
    return destination


def _writing(marker: str):
    def write(outputs):
        tf.io.write_file(marker, tf.strings.as_string(tf.reduce_sum(outputs)))
        return outputs

    return write


def test_run_local_refuses_a_writing_baseline_with_exit_2_before_anything_runs(tmp_path, penguin_baseline, capsys):
    marker = str(tmp_path / "marker")
    model = _with_extra_signature(penguin_baseline, str(tmp_path / "model"), _writing(marker))
    code = cli.main(["run-local", "--output-dir", str(tmp_path / "run"), "--baseline-model", model])
    assert code == cli.EXIT_REFUSED == 2
    err = capsys.readouterr().err
    assert "op WriteFile" in err and "security.allow_ops: [WriteFile]" in err
    assert not os.path.exists(marker) and not os.path.exists(tmp_path / "run" / "serving")


def test_a_refusal_inside_a_run_is_recorded_and_read_as_a_refusal(tmp_path, penguin_baseline):
    marker = str(tmp_path / "marker")
    model_dir = _with_extra_signature(penguin_baseline, str(tmp_path / "model"), _writing(marker))
    model = tfx.dsl.Importer(source_uri=model_dir, artifact_type=tfx.types.standard_artifacts.Model).with_id("model")
    prune = PruneComponent(model=model.outputs["result"], method="magnitude", target_sparsity=0.5)
    metadata = str(tmp_path / "metadata.sqlite")
    pipeline = tfx.dsl.Pipeline(
        pipeline_name="refusing",
        pipeline_root=str(tmp_path / "root"),
        components=[model, prune],
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata),
    )
    with pytest.raises(Exception) as raised:
        pruning_pipeline.run_locally(pipeline, "run-1")
    (step,) = failed_steps(metadata, "run-1")
    assert step.component == "PruneComponent" and "op WriteFile" in step.message
    line = cli.failure_line(metadata, "run-1", raised.value)
    assert cli.refused_model(raised.value, line)
    assert not os.path.exists(marker)


def test_the_gate_does_not_bless_a_candidate_holding_an_op_its_parent_lacks(tmp_path, penguin_baseline, penguin_data):
    candidate = _with_extra_signature(penguin_baseline, str(tmp_path / "candidate"), tf.math.erf)
    config = GateConfig(
        label_key="species",
        thresholds=[MetricThreshold(metric="SparseCategoricalAccuracy", lower_bound=0.5)],
        require_skill=False,
    )
    blessing, result, error = run_gate(tmp_path / "gate", candidate, penguin_baseline, penguin_data, config)
    assert error is None and not result["blessed"]
    (graph,) = [check for check in result["checks"] if check["kind"] == "graph"]
    assert not graph["passed"] and "Erf" in graph["detail"] and graph["reference"] == "parent"
    assert (
        result["graph_scans"]["candidate"]["ops"]["Erf"] >= 1 and "Erf" not in result["graph_scans"]["baseline"]["ops"]
    )
    assert result["failed_checks"] == ["graph adds no op"]

    allowed, result, _ = run_gate(
        tmp_path / "allowed", candidate, penguin_baseline, penguin_data, config, allow_ops=["Erf"]
    )
    assert result["blessed"]
