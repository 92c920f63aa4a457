"""The full chain: examples -> baseline model -> prune -> fine-tune -> gate -> Pusher.

The Pusher is the stock TFX component with an executor that publishes versions atomically
(``tfx_model_pruning.atomic_pusher``); its inputs, outputs and blessing check are unchanged.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Mapping, Optional, Union

# TFX's modules themselves, not ``tfx.v1``: the same classes, without the 2.7 s ``tfx.v1`` spends
# importing its Google Cloud extensions (Vertex AI's client) in every process that builds a pipeline.
from tfx import components as tfx_components
from tfx.dsl.compiler import constants as compiler_constants
from tfx.dsl.components.common.importer import Importer
from tfx.orchestration import data_types, metadata
from tfx.orchestration import pipeline as tfx_pipeline
from tfx.orchestration.local.local_dag_runner import LocalDagRunner
from tfx.orchestration.portable import runtime_parameter_utils, tfx_runner
from tfx.proto import example_gen_pb2, pusher_pb2, trainer_pb2
from tfx.proto.orchestration import pipeline_pb2
from tfx.types import standard_artifacts

from tfx_model_pruning import EvaluatorGate, PruneComponent, RetrainComponent
from tfx_model_pruning import standard_component_specs as specs
from tfx_model_pruning.atomic_pusher.component import AtomicPusher
from tfx_model_pruning.engine.graph_scan import scan_model_dir
from tfx_model_pruning.engine.restored import (
    NeedsKerasModelError,
    needs_keras_graph,
    needs_keras_graph_message,
    require_keras_saving_module,
)
from tfx_model_pruning.engine.saved_model import holds_keras_graph, resolve_saved_model_dir
from tfx_model_pruning.evaluator_gate.config import GateConfig
from tfx_model_pruning.serving_versions import check_push_destination
from tfx_model_pruning_pipelines.penguin_trainer import penguin_data_root
from tfx_model_pruning_pipelines.pipeline_config import PipelineConfig

PENGUIN_TRAINER_MODULE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "penguin_trainer.py")
# How TFX lays out its bundled penguin data: one folder of gzipped TFRecords per split.
DEFAULT_SPLIT_PATTERNS = {"train": "Split-train/*", "eval": "Split-eval/*"}
# None: Beam's own defaults, the in-memory DirectRunner with one worker. Any Beam argument at all
# makes TFX build an sdist of itself for remote workers in every Beam component (84 MiB, about
# 2 s each), which a local run or a Kubeflow container, with tfx installed, has no use for.
DEFAULT_BEAM_ARGS: tuple[str, ...] = ()


def create_pipeline(
    config: PipelineConfig,
    *,
    pipeline_root: str,
    serving_model_dir: str,
    data_root: Union[str, data_types.RuntimeParameter, None] = None,
    metadata_path: Optional[str] = None,
    push_root: Optional[str] = None,
) -> tfx_pipeline.Pipeline:
    """The pruning pipeline of a validated description: the one builder under the pipeline file,
    the CLI, the Python API and Kubeflow compilation. Every option and its default lives in
    ``config`` (``PipelineConfig``); only the locations, which differ between a local run and
    Kubeflow, are given here (``data_root`` default ``config.data.root``, else the penguin data;
    ``push_root`` default ``config.push.root``).

    The baseline comes from a stock ``Trainer`` (``model.trainer_module`` or the importable
    ``model.trainer_run_fn``) or an ``Importer`` of ``model.baseline_model``. With
    ``model.transform_module``, StatisticsGen, SchemaGen and Transform run first, as in TFX's
    examples: the Trainer and RetrainComponent read ``transformed_examples`` and the
    ``transform_graph``, the gate the raw examples. ``module_file``/``module_path`` reach
    PruneComponent, RetrainComponent and EvaluatorGate. ``gate.compare_with`` picks the gate's
    baselines: ``parent`` (the unpruned model) and/or ``serving`` (the newest version under
    ``serving_model_dir``, found at run time). What the description cannot know is checked
    here, before anything runs: the data folder and module files exist, the push destination
    lies inside ``push_root``, and a method that needs the Keras layer graph has a model that
    keeps one (``NeedsKerasModelError`` naming the line to change).

    Example::

        config = load_pipeline_config("pipeline.yaml")  # or PipelineConfig(data=..., model=..., ...)
        pipeline = create_pipeline(
            config, pipeline_root="runs/root", serving_model_dir="runs/serving", metadata_path="runs/metadata.sqlite"
        )
        LocalDagRunner().run(pipeline)
    """
    push_root = push_root if push_root is not None else config.push.root
    check_push_destination(serving_model_dir, push_root)
    data_root = data_root if data_root is not None else (config.data.root or penguin_data_root())
    if isinstance(data_root, str) and not os.path.isdir(data_root) and "://" not in data_root:
        raise FileNotFoundError(f"data_root {data_root!r} does not exist")
    source = config.model
    for name, path in (
        ("model.trainer_module", source.trainer_module),
        ("model.transform_module", source.transform_module),
        ("module_file", config.module_file),
    ):
        if path is not None and "://" not in path and not os.path.isfile(path):
            raise FileNotFoundError(f"{name} {path!r} does not exist")
    what = needs_keras_graph(config.prune)
    if source.trainer_module is not None and what is not None:
        # The Trainer (and Transform) would run for minutes before PruneComponent found this out.
        require_keras_saving_module(source.trainer_module, what)
    if source.baseline_model is not None:
        model_dir = resolve_saved_model_dir(source.baseline_model)  # a missing or non-SavedModel path fails now
        # Refused now, before any component runs, rather than by the first to load it.
        scan_model_dir(model_dir, config.security.allow_ops).require_safe()
        if what is not None and not holds_keras_graph(model_dir):
            raise NeedsKerasModelError(needs_keras_graph_message(what, f"the baseline model in {model_dir!r}"))

    example_gen = _example_gen(data_root, config.data.format, config.data.splits)
    examples = example_gen.outputs["examples"]
    upstream: list = [example_gen]
    training_examples, transform_graph = examples, None
    if source.transform_module is not None:
        statistics_gen = tfx_components.StatisticsGen(examples=examples)
        schema_gen = tfx_components.SchemaGen(statistics=statistics_gen.outputs["statistics"], infer_feature_shape=True)
        transform = tfx_components.Transform(
            examples=examples, schema=schema_gen.outputs["schema"], module_file=source.transform_module
        )
        upstream += [statistics_gen, schema_gen, transform]
        training_examples = transform.outputs["transformed_examples"]
        transform_graph = transform.outputs["transform_graph"]

    if source.baseline_model is None:
        baseline_source = tfx_components.Trainer(
            module_file=source.trainer_module,
            run_fn=source.trainer_run_fn,
            examples=training_examples,
            transform_graph=transform_graph,
            train_args=trainer_pb2.TrainArgs(num_steps=source.train_steps),
            eval_args=trainer_pb2.EvalArgs(num_steps=10),
        )
        baseline = baseline_source.outputs["model"]
    else:
        baseline_source = Importer(source_uri=source.baseline_model, artifact_type=standard_artifacts.Model).with_id(
            "baseline_importer"
        )
        baseline = baseline_source.outputs["result"]

    extensions = {
        "module_file": config.module_file,
        "module_path": config.module_path,
        "allow_ops": config.security.allow_ops,
        "allow_unsafe_layers": config.security.allow_unsafe_layers,
    }
    prune = PruneComponent(model=baseline, examples=examples, config=config.prune, **extensions)
    retrain = RetrainComponent(
        model=prune.outputs["model"],
        examples=training_examples,
        config=config.retrain,
        teacher_model=baseline if config.retrain.distillation is not None else None,  # the unpruned model teaches
        parent_model=baseline if config.retrain.until_recovered else None,  # whose metric it recovers
        transform_graph=transform_graph,
        **extensions,
    )
    gate_options = config.gate.model_dump(exclude={"compare_with", "serving_model_dir"}, exclude_unset=True)
    gate_options["label_key"] = config.gate.label_key
    compare_with = config.gate.compare_with
    gate = EvaluatorGate(
        model=retrain.outputs["model"],
        baseline_model=baseline if "parent" in compare_with else None,
        examples=examples,
        config=gate_options,
        serving_model_dir=serving_model_dir if "serving" in compare_with else None,
        **extensions,
    )
    pusher = AtomicPusher(
        model=retrain.outputs["model"],
        model_blessing=gate.outputs["blessing"],
        push_destination=pusher_pb2.PushDestination(
            filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=serving_model_dir)
        ),
        push_root=push_root,
    ).with_id("Pusher")
    return tfx_pipeline.Pipeline(
        pipeline_name=config.name,
        pipeline_root=pipeline_root,
        components=[*upstream, baseline_source, prune, retrain, gate, pusher],
        enable_cache=config.enable_cache,
        metadata_connection_config=(
            metadata.sqlite_metadata_connection_config(metadata_path) if metadata_path else None
        ),
        beam_pipeline_args=list(config.beam_args if config.beam_args is not None else DEFAULT_BEAM_ARGS),
    )


def create_pipeline_from_args(
    *,
    pipeline_name: str,
    pipeline_root: str,
    data_root: Union[str, data_types.RuntimeParameter],
    serving_model_dir: str,
    label_key: str,
    prune_args: Optional[Mapping[str, Any]] = None,
    retrain_args: Optional[Mapping[str, Any]] = None,
    gate_args: Optional[Mapping[str, Any]] = None,
    trainer_module_file: Optional[str] = None,
    trainer_run_fn: Optional[str] = None,
    transform_module_file: Optional[str] = None,
    baseline_model_uri: Optional[str] = None,
    metadata_path: Optional[str] = None,
    push_root: Optional[str] = None,
    **settings: Any,
) -> tfx_pipeline.Pipeline:
    """``create_pipeline`` with the description given as keywords: the sections (``prune_args``,
    ``retrain_args``, ``gate_args``) and the model source by their old names, any other top-level
    key of ``PipelineConfig`` (``data``, ``train_steps`` into ``model``, ``enable_cache``,
    ``module_file``...) as it is spelt there. Validated by ``PipelineConfig``, defaults included.

    Example::

        pipeline = create_pipeline_from_args(
            pipeline_name="penguin-pruning", pipeline_root="runs/root", data_root=penguin_data_root(),
            serving_model_dir="runs/serving", label_key="species",
            trainer_run_fn="tfx_model_pruning_pipelines.penguin_trainer.run_fn",
            prune_args={"target_sparsity": 0.8},
            gate_args={"thresholds": [{"metric": "SparseCategoricalAccuracy", "max_absolute_drop": 0.01}]},
        )
    """
    model = {
        "trainer_module": trainer_module_file,
        "trainer_run_fn": trainer_run_fn,
        "transform_module": transform_module_file,
        "baseline_model": baseline_model_uri,
        "train_steps": settings.pop("train_steps", None),
    }
    data = {"label_key": label_key, **settings.pop("data", {})}
    if isinstance(data_root, str):
        data["root"] = data_root
    description = {
        "name": pipeline_name,
        "data": data,
        "model": {key: value for key, value in model.items() if value is not None},
        "prune": dict(prune_args or {}),
        "retrain": dict(retrain_args or {}),
        "gate": dict(gate_args or {}),
        **settings,
    }
    return create_pipeline(
        PipelineConfig.model_validate(description),
        pipeline_root=pipeline_root,
        serving_model_dir=serving_model_dir,
        data_root=data_root,
        metadata_path=metadata_path,
        push_root=push_root,
    )


def _example_gen(data_root, data_format: str, split_patterns: Optional[Mapping[str, str]]):
    """ImportExampleGen for gzipped tf.Examples, CsvExampleGen for CSV; without split patterns a
    CSV folder is hashed 2:1 into train and eval (CsvExampleGen's default)."""
    if data_format not in ("tfrecord", "csv"):
        raise ValueError(f"data_format is 'tfrecord' or 'csv', got {data_format!r}")
    if split_patterns is None and data_format == "tfrecord":
        split_patterns = DEFAULT_SPLIT_PATTERNS
    input_config = (
        example_gen_pb2.Input(
            splits=[example_gen_pb2.Input.Split(name=name, pattern=pattern) for name, pattern in split_patterns.items()]
        )
        if split_patterns is not None
        else None
    )
    if data_format == "csv":
        return tfx_components.CsvExampleGen(input_base=data_root, input_config=input_config)
    return tfx_components.ImportExampleGen(input_base=data_root, input_config=input_config)


def judges_against_serving(gate_config_json: str) -> bool:
    """True when a gate compares with the model serving now, which a cached verdict cannot see change."""
    return GateConfig.model_validate_json(gate_config_json).serving_model_dir is not None


def local_pipeline_ir(pipeline: tfx_pipeline.Pipeline, run_id: str) -> pipeline_pb2.Pipeline:
    """The pipeline compiled for LocalDagRunner with ``run_id`` as its run's name.

    A gate that compares with the serving model is never cached: its verdict depends on which
    version is serving, which no cache key of TFX's includes.
    """
    # What LocalDagRunner.run does (packaging a Trainer module file included), keeping the IR
    # in hand so the run id and per-node caching can be set.
    ir = tfx_runner._make_pipeline_proto(pipeline)
    runtime_parameter_utils.substitute_runtime_parameter(
        ir, {compiler_constants.PIPELINE_RUN_ID_PARAMETER_NAME: run_id}
    )
    for node in ir.nodes:
        parameters = node.pipeline_node.parameters.parameters
        if specs.GATE_CONFIG_KEY in parameters and judges_against_serving(
            parameters[specs.GATE_CONFIG_KEY].field_value.string_value
        ):
            node.pipeline_node.execution_options.caching_options.enable_cache = False
    return ir


def run_locally(pipeline: tfx_pipeline.Pipeline, run_id: str) -> None:
    """Runs ``pipeline`` on LocalDagRunner as run ``run_id`` (see ``local_pipeline_ir``).

    The run gets a temporary folder of its own, deleted when it ends: TFX builds an sdist of the
    installed tfx package for every Beam component (84 MiB each) and wheels of module files in the
    temporary directory, and nothing removes them, so a day of runs filled it with gigabytes.
    """
    scratch = tempfile.mkdtemp(prefix=f"{pipeline.pipeline_info.pipeline_name}-run-")
    saved = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir = scratch
    os.environ["TMPDIR"] = scratch  # the wheel builds and pip installs TFX runs as subprocesses
    try:
        LocalDagRunner().run_with_ir(local_pipeline_ir(pipeline, run_id))
    finally:
        tempfile.tempdir = saved[0]
        if saved[1] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved[1]
        shutil.rmtree(scratch, ignore_errors=True)
