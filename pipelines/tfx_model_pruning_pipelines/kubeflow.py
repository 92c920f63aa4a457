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
from typing import Mapping

import yaml
from kfp.pipeline_spec import pipeline_spec_pb2
from tfx.orchestration import data_types
from tfx.orchestration import pipeline as tfx_pipeline
from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

from tfx_model_pruning_pipelines import pruning_pipeline
from tfx_model_pruning_pipelines.kubeflow_steps import StepSettings, apply_step_settings
from tfx_model_pruning_pipelines.pipeline_config import PipelineConfig

PACKAGE = "tfx-model-pruning"
IMAGE_REPOSITORY = "tfx-model-pruning"
DATA_ROOT_PARAMETER = "data_root"
GATE_CONFIG_PARAMETER = "gate_config"
_RESOURCES = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec
# The resource fields this KFP SDK's pipeline spec has (newer ones add quantities as strings).
RESOURCE_SPEC_FIELDS = frozenset(
    field.name for message in (_RESOURCES, _RESOURCES.AcceleratorConfig) for field in message.DESCRIPTOR.fields
)


def default_image() -> str:
    """The image the project's Dockerfile builds, tagged with the installed package version."""
    return f"{IMAGE_REPOSITORY}:{metadata.version(PACKAGE)}"


def kubeflow_pipeline(config: PipelineConfig) -> tfx_pipeline.Pipeline:
    """The pipeline of a validated description as it runs on Kubeflow: ``create_pipeline`` with the
    ``kubeflow`` section's locations, ``data_root`` a runtime parameter (default ``kubeflow.data_root``),
    so a scheduled run can point at new data without recompiling; split patterns with ``{SPAN}``
    read the newest span under it at run time.

    The model source must be reachable from the pods: ``model.trainer_run_fn`` importable in the
    image, a ``model.trainer_module`` or ``model.baseline_model`` path the pods can read. A
    ``module_file`` is packaged into a wheel under the pipeline root, which the pods install.
    """
    kubeflow = config.kubeflow
    data_root = data_types.RuntimeParameter(name=DATA_ROOT_PARAMETER, ptype=str, default=kubeflow.data_root)
    return pruning_pipeline.create_pipeline(
        config,
        pipeline_root=kubeflow.pipeline_root,
        serving_model_dir=kubeflow.serving_dir,
        data_root=data_root,
        push_root=kubeflow.push_root,
    )


def compile_pipeline(
    pipeline: tfx_pipeline.Pipeline,
    output_dir: str,
    image: str,
    parameter_defaults: Mapping[str, str] = (),
    steps: Mapping[str, StepSettings] = (),
) -> tuple[str, str]:
    """Writes the PipelineJob JSON and the bare pipeline-spec YAML; returns both paths.

    ``parameter_defaults`` become the job's runtime values and the spec's ``defaultValue``s, so
    a run (or a recurring run) that names no value still has one. ``steps`` (``kubeflow.steps``)
    set each step's pod: the pipeline spec carries resources, env, retries and caching; node
    selectors, tolerations and secrets go into the platform spec, the YAML's second document.
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
    platform_spec = apply_step_settings(spec, dict(steps), RESOURCE_SPEC_FIELDS)
    job_path = os.path.join(output_dir, f"{name}_job.json")
    with open(job_path, "w", encoding="utf-8") as f:
        json.dump(job, f, indent=2, sort_keys=True)
    spec_path = os.path.join(output_dir, f"{name}.yaml")
    with open(spec_path, "w", encoding="utf-8") as f:
        # Sorted, as KFP's own compiler writes it: the same pipeline compiles to the same bytes.
        # The platform spec follows as a second document, as kfp-kubernetes writes it.
        documents = [json.loads(json.dumps(spec))] + ([platform_spec] if platform_spec else [])
        yaml.safe_dump_all(documents, f, sort_keys=True)
    return job_path, spec_path
