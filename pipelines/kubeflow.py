"""Compiling the pruning pipeline for Kubeflow Pipelines (KFP v2) with TFX's KubeflowV2DagRunner.

Two files come out: the PipelineJob wrapper TFX writes (``<name>_job.json``) and the bare
``pipelineSpec`` as YAML (``<name>.yaml``), which is what open-source KFP's ``upload_pipeline``
and API server accept. The data location is a runtime parameter (``data_root``), so a scheduled
run can point at new data without recompiling. No Resolver node is used: open-source KFP cannot
run them.
"""

from __future__ import annotations

import json
import os
from importlib import metadata
from typing import Any, Mapping, Optional, Sequence

import yaml
from tfx import v1 as tfx
from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

from tfx_model_pruning.pipelines import pruning_pipeline
from tfx_model_pruning.pipelines.pipeline_config import PipelineConfig

PACKAGE = "tfx-model-pruning"
IMAGE_REPOSITORY = "tfx-model-pruning"
DATA_ROOT_PARAMETER = "data_root"
TRAINER_RUN_FN = "tfx_model_pruning.pipelines.penguin_trainer.run_fn"
GATE_CONFIG_PARAMETER = "gate_config"


def default_image() -> str:
    """The image the project's Dockerfile builds, tagged with the installed package version."""
    return f"{IMAGE_REPOSITORY}:{metadata.version(PACKAGE)}"


def kubeflow_pipeline(
    *,
    pipeline_name: str,
    pipeline_root: str,
    default_data_root: str,
    serving_model_dir: str,
    label_key: str,
    prune_args: Mapping[str, Any],
    retrain_args: Mapping[str, Any],
    gate_args: Mapping[str, Any],
    train_steps: int = 500,
    beam_pipeline_args: Sequence[str] = (),
    compare_with: Sequence[str] = ("parent", "serving"),
    split_patterns: Mapping[str, str] = pruning_pipeline.DEFAULT_SPLIT_PATTERNS,
    push_root: Optional[str] = None,
) -> tfx.dsl.Pipeline:
    """The pruning pipeline as it runs on Kubeflow: data root at run time, Trainer by run_fn.

    Scheduled runs see new data two ways: ``data_root`` is a runtime parameter, and split
    patterns with ``{SPAN}`` (``span-{SPAN}/Split-train/*``) make ImportExampleGen read the
    newest span under it at run time.
    """
    data_root = tfx.dsl.experimental.RuntimeParameter(name=DATA_ROOT_PARAMETER, ptype=str, default=default_data_root)
    return pruning_pipeline.create_pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        data_root=data_root,
        serving_model_dir=serving_model_dir,
        label_key=label_key,
        prune_args=prune_args,
        retrain_args=retrain_args,
        gate_args=gate_args,
        trainer_run_fn=TRAINER_RUN_FN,
        train_steps=train_steps,
        beam_pipeline_args=beam_pipeline_args,
        compare_with=compare_with,
        split_patterns=split_patterns,
        push_root=push_root,
    )


def kubeflow_pipeline_from_config(config: PipelineConfig) -> tfx.dsl.Pipeline:
    """The pipeline of a validated description as it runs on Kubeflow: the ``kubeflow`` section
    gives the locations, ``data_root`` becomes a runtime parameter (default ``kubeflow.data_root``).

    The model source must be reachable from the pods: ``model.trainer_run_fn`` importable in the
    image, a ``model.trainer_module`` or ``model.baseline_model`` path the pods can read.
    """
    kubeflow = config.kubeflow
    data_root = tfx.dsl.experimental.RuntimeParameter(name=DATA_ROOT_PARAMETER, ptype=str, default=kubeflow.data_root)
    return pruning_pipeline.create_pipeline_from_config(
        config,
        pipeline_root=kubeflow.pipeline_root,
        serving_model_dir=kubeflow.serving_dir,
        data_root=data_root,
        push_root=kubeflow.push_root,
        beam_pipeline_args=config.beam_args or (),
    )


def compile_pipeline(
    pipeline: tfx.dsl.Pipeline, output_dir: str, image: str, parameter_defaults: Mapping[str, str] = ()
) -> tuple[str, str]:
    """Writes the PipelineJob JSON and the bare pipeline-spec YAML; returns both paths.

    ``parameter_defaults`` become the job's runtime values and the spec's ``defaultValue``s, so
    a run (or a recurring run) that names no value still has one.
    """
    parameter_defaults = dict(parameter_defaults)
    os.makedirs(output_dir, exist_ok=True)
    name = pipeline.pipeline_info.pipeline_name
    runner = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
        # Pipeline spec 2.1 is the schema open-source KFP 2.x and its SDK read.
        config=kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(default_image=image, use_pipeline_spec_2_1=True),
        output_dir=output_dir,
        output_filename=f"{name}_job.json",
    )
    job = runner.run(pipeline, parameter_values=parameter_defaults, write_out=False)
    spec = job["pipelineSpec"]
    for task in spec["root"]["dag"]["tasks"].values():
        gate_config = task.get("inputs", {}).get("parameters", {}).get(GATE_CONFIG_PARAMETER)
        if gate_config and pruning_pipeline.judges_against_serving(gate_config["runtimeValue"]["constant"]):
            # Its verdict depends on the version serving at run time, which KFP's cache key omits.
            task["cachingOptions"] = {"enableCache": False}
    for parameter, value in parameter_defaults.items():
        definition = spec["root"]["inputDefinitions"]["parameters"][parameter]
        definition.update({"defaultValue": value, "isOptional": True})
    job_path = os.path.join(output_dir, f"{name}_job.json")
    with open(job_path, "w", encoding="utf-8") as f:
        json.dump(job, f, indent=2, sort_keys=True)
    spec_path = os.path.join(output_dir, f"{name}.yaml")
    with open(spec_path, "w", encoding="utf-8") as f:
        yaml.safe_dump(json.loads(json.dumps(spec)), f, sort_keys=False)
    return job_path, spec_path
