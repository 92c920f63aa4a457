"""The full chain: examples -> baseline model -> prune -> fine-tune -> gate -> Pusher.

The Pusher is the stock TFX component with an executor that publishes versions atomically
(``tfx_model_pruning.atomic_pusher``); its inputs, outputs and blessing check are unchanged.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Mapping, Optional, Sequence, Union

from tfx import v1 as tfx
from tfx.dsl.compiler import constants as compiler_constants
from tfx.orchestration.portable import runtime_parameter_utils, tfx_runner
from tfx.proto import example_gen_pb2
from tfx.proto.orchestration import pipeline_pb2

from tfx_model_pruning import EvaluatorGate, PruneComponent, RetrainComponent
from tfx_model_pruning import standard_component_specs as specs
from tfx_model_pruning.atomic_pusher.component import AtomicPusher
from tfx_model_pruning.engine.restored import (
    NeedsKerasModelError,
    needs_keras_graph,
    needs_keras_graph_message,
    require_keras_saving_module,
)
from tfx_model_pruning.engine.saved_model import holds_keras_graph, resolve_saved_model_dir
from tfx_model_pruning.evaluator_gate.config import GateConfig
from tfx_model_pruning.pipelines.pipeline_config import PipelineConfig
from tfx_model_pruning.serving_versions import check_push_destination

PENGUIN_TRAINER_MODULE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "penguin_trainer.py")
# How TFX lays out its bundled penguin data: one folder of gzipped TFRecords per split.
DEFAULT_SPLIT_PATTERNS = {"train": "Split-train/*", "eval": "Split-eval/*"}
# None: Beam's own defaults, the in-memory DirectRunner with one worker. Any Beam argument at all
# makes TFX build an sdist of itself for remote workers in every Beam component (84 MiB, about
# 2 s each), which a local run or a Kubeflow container, with tfx installed, has no use for.
DEFAULT_BEAM_ARGS: tuple[str, ...] = ()


def create_pipeline(
    *,
    pipeline_name: str,
    pipeline_root: str,
    data_root: Union[str, tfx.dsl.experimental.RuntimeParameter],
    serving_model_dir: str,
    label_key: str,
    prune_args: Mapping[str, Any],
    retrain_args: Mapping[str, Any],
    gate_args: Mapping[str, Any],
    trainer_module_file: Optional[str] = None,
    trainer_run_fn: Optional[str] = None,
    transform_module_file: Optional[str] = None,
    train_steps: int = 500,
    baseline_model_uri: Optional[str] = None,
    split_patterns: Optional[Mapping[str, str]] = DEFAULT_SPLIT_PATTERNS,
    data_format: str = "tfrecord",
    metadata_path: Optional[str] = None,
    beam_pipeline_args: Sequence[str] = DEFAULT_BEAM_ARGS,
    enable_cache: bool = False,
    push_root: Optional[str] = None,
    compare_with: Sequence[str] = ("parent",),
) -> tfx.dsl.Pipeline:
    """Builds the pruning pipeline; every component validates its arguments here.

    The baseline comes from a stock ``Trainer`` running ``trainer_module_file`` (or the
    importable ``trainer_run_fn``, e.g. ``"tfx_model_pruning.pipelines.penguin_trainer.run_fn"``, which a
    container image with this package installed can run without shipping a module file) or,
    when ``baseline_model_uri`` is given, from an ``Importer`` of that existing SavedModel.
    ``data_root`` may be a ``RuntimeParameter`` so scheduled runs can point at new data.
    With ``transform_module_file`` (a module with ``preprocessing_fn``, e.g. TFX's own
    ``penguin_utils_keras.py``), StatisticsGen, SchemaGen and Transform run first, as in TFX's
    examples: the Trainer and RetrainComponent read ``transformed_examples`` and the
    ``transform_graph``, the gate reads the raw examples. ``retrain_args`` and ``gate_args`` may
    then set their own ``label_key`` (the transformed label, e.g. ``species_xf``; the gate
    reads it through ``preprocessing_function_names=["transform_features"]``).
    With ``push_root``, ``serving_model_dir`` must lie inside it (no ``..`` escapes).
    A pruning method that needs the Keras layer graph (structured, layer removal, sensitivity,
    taylor) with a ``trainer_module_file`` that saves only with ``tf.saved_model.save`` raises
    ``NeedsKerasModelError`` here, naming the line and the one-line change, before anything runs.
    ``compare_with`` picks the gate's baselines: ``"parent"`` (the unpruned model) and/or
    ``"serving"`` (the newest version under ``serving_model_dir``, found at run time, no Resolver).

    Example::

        pipeline = create_pipeline(
            pipeline_name="penguin-pruning", pipeline_root="runs/root", data_root=penguin_trainer.penguin_data_root(),
            serving_model_dir="runs/serving", label_key="species",
            trainer_module_file=PENGUIN_TRAINER_MODULE,
            prune_args={"target_sparsity": 0.8},
            retrain_args={"epochs": 20},
            gate_args={"thresholds": [{"metric": "SparseCategoricalAccuracy", "max_absolute_drop": 0.01}]},
            metadata_path="runs/metadata.sqlite",
        )
        tfx.orchestration.LocalDagRunner().run(pipeline)
    """
    check_push_destination(serving_model_dir, push_root)
    unknown = sorted(set(compare_with) - {"parent", "serving"})
    if unknown or not compare_with:
        raise ValueError(f"compare_with takes 'parent' and/or 'serving', got {list(compare_with)}")
    sources = [trainer_module_file, trainer_run_fn, baseline_model_uri]
    if sum(source is not None for source in sources) != 1:
        raise ValueError(
            "give exactly one of trainer_module_file or trainer_run_fn (train a baseline) "
            "or baseline_model_uri (import one)"
        )
    if isinstance(data_root, str) and not os.path.isdir(data_root) and "://" not in data_root:
        raise FileNotFoundError(f"data_root {data_root!r} does not exist")
    for name, path in (("trainer_module_file", trainer_module_file), ("transform_module_file", transform_module_file)):
        if path is not None and not os.path.isfile(path):
            raise FileNotFoundError(f"{name} {path!r} does not exist")
    what = needs_keras_graph(prune_args)
    if trainer_module_file is not None and what is not None:
        # The Trainer (and Transform) would run for minutes before PruneComponent found this out.
        require_keras_saving_module(trainer_module_file, what)
    if transform_module_file is not None and baseline_model_uri is not None:
        raise ValueError("transform_module_file feeds a Trainer; an imported baseline_model_uri has no use for it")
    if baseline_model_uri is not None:
        model_dir = resolve_saved_model_dir(baseline_model_uri)  # a missing or non-SavedModel path fails now
        if what is not None and not holds_keras_graph(model_dir):
            raise NeedsKerasModelError(needs_keras_graph_message(what, f"the baseline model in {model_dir!r}"))

    example_gen = _example_gen(data_root, data_format, split_patterns)
    examples = example_gen.outputs["examples"]
    upstream: list = [example_gen]
    training_examples, transform_graph = examples, None
    if transform_module_file is not None:
        statistics_gen = tfx.components.StatisticsGen(examples=examples)
        schema_gen = tfx.components.SchemaGen(statistics=statistics_gen.outputs["statistics"], infer_feature_shape=True)
        transform = tfx.components.Transform(
            examples=examples, schema=schema_gen.outputs["schema"], module_file=transform_module_file
        )
        upstream += [statistics_gen, schema_gen, transform]
        training_examples = transform.outputs["transformed_examples"]
        transform_graph = transform.outputs["transform_graph"]

    if baseline_model_uri is None:
        baseline_source = tfx.components.Trainer(
            module_file=trainer_module_file,
            run_fn=trainer_run_fn,
            examples=training_examples,
            transform_graph=transform_graph,
            train_args=tfx.proto.TrainArgs(num_steps=train_steps),
            eval_args=tfx.proto.EvalArgs(num_steps=10),
        )
        baseline = baseline_source.outputs["model"]
    else:
        baseline_source = tfx.dsl.Importer(
            source_uri=baseline_model_uri, artifact_type=tfx.types.standard_artifacts.Model
        ).with_id("baseline_importer")
        baseline = baseline_source.outputs["result"]

    prune = PruneComponent(model=baseline, examples=examples, **prune_args)
    retrain_options = {"label_key": label_key, **retrain_args}
    if retrain_options.get("distillation") is not None:
        retrain_options.setdefault("teacher_model", baseline)  # the unpruned model teaches
    if transform_graph is not None:
        retrain_options.setdefault("transform_graph", transform_graph)
    retrain = RetrainComponent(model=prune.outputs["model"], examples=training_examples, **retrain_options)
    gate_options = {"label_key": label_key, **gate_args}
    if "serving" in compare_with:
        gate_options["serving_model_dir"] = serving_model_dir
    gate = EvaluatorGate(
        model=retrain.outputs["model"],
        baseline_model=baseline if "parent" in compare_with else None,
        examples=examples,
        **gate_options,
    )
    pusher = AtomicPusher(
        model=retrain.outputs["model"],
        model_blessing=gate.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=serving_model_dir)
        ),
        push_root=push_root,
    ).with_id("Pusher")
    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=[*upstream, baseline_source, prune, retrain, gate, pusher],
        enable_cache=enable_cache,
        metadata_connection_config=(
            tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path) if metadata_path else None
        ),
        beam_pipeline_args=list(beam_pipeline_args),
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
        return tfx.components.CsvExampleGen(input_base=data_root, input_config=input_config)
    return tfx.components.ImportExampleGen(input_base=data_root, input_config=input_config)


def create_pipeline_from_config(
    config: PipelineConfig,
    *,
    pipeline_root: str,
    serving_model_dir: str,
    data_root: Union[str, tfx.dsl.experimental.RuntimeParameter, None] = None,
    metadata_path: Optional[str] = None,
    push_root: Optional[str] = None,
    beam_pipeline_args: Optional[Sequence[str]] = None,
) -> tfx.dsl.Pipeline:
    """``create_pipeline`` from a validated pipeline description (``pipeline_config``); the
    locations that differ between a local run and Kubeflow are given here.

    Example::

        config = load_pipeline_config("pipeline.yaml")
        pipeline = create_pipeline_from_config(
            config, pipeline_root="runs/root", serving_model_dir="runs/serving", metadata_path="runs/metadata.sqlite"
        )
    """
    from tfx_model_pruning.pipelines.penguin_trainer import penguin_data_root

    # Only what the file (or a flag) set: the components' own defaults stay theirs.
    gate = config.gate.model_dump(exclude={"compare_with", "serving_model_dir"}, exclude_unset=True)
    gate["label_key"] = config.gate.label_key
    retrain = config.retrain.model_dump(exclude_unset=True)
    return create_pipeline(
        pipeline_name=config.name,
        pipeline_root=pipeline_root,
        data_root=data_root if data_root is not None else (config.data.root or penguin_data_root()),
        serving_model_dir=serving_model_dir,
        label_key=config.data.label_key,
        prune_args=config.prune.model_dump(exclude_unset=True),
        retrain_args=retrain,
        gate_args=gate,
        trainer_module_file=config.model.trainer_module,
        trainer_run_fn=config.model.trainer_run_fn,
        transform_module_file=config.model.transform_module,
        train_steps=config.model.train_steps,
        baseline_model_uri=config.model.baseline_model,
        split_patterns=config.data.splits,
        data_format=config.data.format,
        metadata_path=metadata_path,
        beam_pipeline_args=(
            beam_pipeline_args
            if beam_pipeline_args is not None
            else (config.beam_args if config.beam_args is not None else DEFAULT_BEAM_ARGS)
        ),
        enable_cache=config.enable_cache,
        push_root=push_root if push_root is not None else config.push.root,
        compare_with=tuple(config.gate.compare_with),
    )


def judges_against_serving(gate_config_json: str) -> bool:
    """True when a gate compares with the model serving now, which a cached verdict cannot see change."""
    return GateConfig.model_validate_json(gate_config_json).serving_model_dir is not None


def local_pipeline_ir(pipeline: tfx.dsl.Pipeline, run_id: str) -> pipeline_pb2.Pipeline:
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


def run_locally(pipeline: tfx.dsl.Pipeline, run_id: str) -> None:
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
        tfx.orchestration.LocalDagRunner().run_with_ir(local_pipeline_ir(pipeline, run_id))
    finally:
        tempfile.tempdir = saved[0]
        if saved[1] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved[1]
        shutil.rmtree(scratch, ignore_errors=True)
