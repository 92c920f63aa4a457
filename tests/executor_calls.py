"""Calling the component executors the way a TFX launcher calls them, for the tests."""

import json

from tfx.dsl.components.base import base_beam_executor
from tfx.types import artifact_utils, standard_artifacts

from tfx_model_pruning.artifacts import PruningReport
from tfx_model_pruning.engine import FineTuneConfig, PruningConfig
from tfx_model_pruning.evaluator_gate import executor as gate_executor
from tfx_model_pruning.evaluator_gate.config import GateConfig
from tfx_model_pruning.prune import executor as prune_executor
from tfx_model_pruning.retrain import executor as retrain_executor
from tfx_model_pruning_pipelines.pruning_pipeline import DEFAULT_BEAM_ARGS


def artifact(artifact_type, uri):
    artifact = artifact_type()
    artifact.uri = str(uri)
    return artifact


def examples_artifact(uri, splits=("train", "eval")):
    examples = artifact(standard_artifacts.Examples, uri)
    examples.split_names = artifact_utils.encode_split_names(list(splits))
    return examples


def run_prune(baseline_uri, out_dir, **config):
    model = artifact(standard_artifacts.Model, out_dir / "model")
    report = artifact(PruningReport, out_dir / "report")
    prune_executor.Executor().Do(
        {"input_model": [artifact(standard_artifacts.Model, baseline_uri)]},
        {"model": [model], "pruning_report": [report]},
        {"pruning_config": PruningConfig(**config).model_dump_json()},
    )
    return model, report


def run_retrain(
    model_uri,
    examples_uri,
    out_dir,
    module_file=None,
    transform_graph=None,
    teacher_uri=None,
    parent_uri=None,
    **config,
):
    model = artifact(standard_artifacts.Model, out_dir)
    inputs = {
        "input_model": [artifact(standard_artifacts.Model, model_uri)],
        "examples": [examples_artifact(examples_uri)],
    }
    if transform_graph is not None:
        inputs["transform_graph"] = [artifact(standard_artifacts.TransformGraph, transform_graph)]
    if teacher_uri is not None:
        inputs["teacher_model"] = [artifact(standard_artifacts.Model, teacher_uri)]
    if parent_uri is not None:
        inputs["parent_model"] = [artifact(standard_artifacts.Model, parent_uri)]
    retrain_executor.Executor().Do(
        inputs,
        {"model": [model]},
        {"fine_tune_config": FineTuneConfig(**config).model_dump_json(), "module_file": module_file},
    )
    return model


def run_gate(
    tmp_path, candidate_uri, baseline_uri, examples_uri, config: GateConfig, beam_pipeline_args=(), allow_ops=()
):
    blessing = artifact(standard_artifacts.ModelBlessing, tmp_path / "blessing")
    evaluation = artifact(standard_artifacts.ModelEvaluation, tmp_path / "evaluation")
    inputs = {
        "model": [artifact(standard_artifacts.Model, candidate_uri)],
        "examples": [examples_artifact(examples_uri)],
    }
    if baseline_uri:
        inputs["baseline_model"] = [artifact(standard_artifacts.Model, baseline_uri)]
    context = base_beam_executor.BaseBeamExecutor.Context(
        beam_pipeline_args=[*DEFAULT_BEAM_ARGS, *beam_pipeline_args], tmp_dir=str(tmp_path / "tmp")
    )
    error = None
    try:
        gate_executor.Executor(context).Do(
            inputs,
            {"blessing": [blessing], "evaluation": [evaluation]},
            {"gate_config": config.model_dump_json(), "allow_ops": ",".join(allow_ops)},
        )
    except Exception as err:  # the caller asserts on it
        error = err
    with open(tmp_path / "evaluation" / "gate_result.json") as f:
        result = json.load(f)
    return blessing, result, error
