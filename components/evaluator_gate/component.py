"""EvaluatorGate: blesses a pruned model only if it meets absolute and baseline-relative bounds."""

from __future__ import annotations

from typing import Mapping, Optional, Sequence, Union

from tfx import types
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from tfx_model_pruning import standard_component_specs as specs
from tfx_model_pruning.evaluator_gate import executor
from tfx_model_pruning.evaluator_gate.config import GateConfig, MetricThreshold
from tfx_model_pruning.evaluator_gate.metrics import metric_output_name


class EvaluatorGateSpec(ComponentSpec):
    PARAMETERS = {
        specs.GATE_CONFIG_KEY: ExecutionParameter(type=str),
        specs.ALLOW_UNSAFE_LAYERS_KEY: ExecutionParameter(type=int, optional=True),
    }
    INPUTS = {
        specs.MODEL_KEY: ChannelParameter(type=standard_artifacts.Model),
        specs.BASELINE_MODEL_KEY: ChannelParameter(type=standard_artifacts.Model, optional=True),
        specs.EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
    }
    OUTPUTS = {
        specs.BLESSING_KEY: ChannelParameter(type=standard_artifacts.ModelBlessing),
        specs.EVALUATION_KEY: ChannelParameter(type=standard_artifacts.ModelEvaluation),
    }


class EvaluatorGate(base_beam_component.BaseBeamComponent):
    """Evaluates a model and its baselines with TFMA on Beam and blesses it only if every check passes.

    Checks: absolute bounds on metrics, overall and per slice (accuracies with their 95% Wilson
    interval beside them); the largest allowed drop versus ``baseline_model`` and/or the model
    now serving (absolute and/or relative); at least ``min_eval_examples`` eval examples; finite
    weights and predictions; a minimum sparsity measured from the candidate's weights; and
    efficiency bounds (size on disk, size reduction, parameters, FLOPs, CPU latency). ``blessing`` is a
    standard ``ModelBlessing`` (``BLESSED`` / ``NOT_BLESSED`` file and the ``blessed``
    property), so the stock Pusher obeys it. It fails
    closed: any error leaves ``NOT_BLESSED`` and fails the run, with the reason in the log and, on
    TFX's local runner, in the execution's ML Metadata record (TFX deletes a failed
    execution's output files). ``evaluation`` holds TFMA's
    output (``tfma/``), ``gate_result.json`` (metrics of every model overall and per slice,
    every check with its measured value and bound), ``summary.md``, and ``report.html`` with
    its plots in ``report.png``: what a person opens to see why a model was or was not released.

    Usage::

        gate = EvaluatorGate(
            model=retrain.outputs["model"],
            baseline_model=trainer.outputs["model"],
            examples=example_gen.outputs["examples"],
            label_key="species",
            thresholds=[{"metric": "SparseCategoricalAccuracy", "lower_bound": 0.9, "max_absolute_drop": 0.01}],
            min_sparsity=0.8,
            slice_feature="species",
            slice_thresholds=[{"metric": "SparseCategoricalAccuracy", "lower_bound": 0.85, "max_absolute_drop": 0.05}],
            serving_model_dir="/serving/penguin",
            max_latency_ms=5.0,
        )
        pusher = tfx.components.Pusher(model=retrain.outputs["model"], model_blessing=gate.outputs["blessing"], ...)

    Args:
      model: The candidate ``Model`` (a SavedModel, tf-keras or ``tf.saved_model.save``, with
        a ``serving_default`` signature that takes serialized tf.Examples).
      baseline_model: Optional ``Model`` to compare with (e.g. the unpruned Trainer output).
        Drop bounds need it.
      examples: ``Examples`` with an ``eval_split``.
      label_key: Label feature name.
      thresholds: ``MetricThreshold``s or dicts: ``metric`` (Keras metric class name; TFMA is
        told to name it ``snake_case`` of the class, e.g. ``AUC`` -> ``auc``, whatever else runs),
        ``lower_bound``, ``upper_bound``, ``max_absolute_drop``, ``max_relative_drop``,
        ``higher_is_better``.
      min_sparsity: Least fraction of exact zeros in the candidate's pruned layers.
      max_saved_model_bytes, max_params, max_flops: Upper bounds on the candidate's size on disk,
        parameter count and FLOPs per example.
      min_size_reduction: Least reduction of gzip-compressed weights versus ``baseline_model``.
      max_latency_ms, latency_batch_size: Upper bound on the candidate's median CPU latency,
        measured on the machine the gate runs on.
      eval_split, signature_name: Which split to evaluate and which signature TFMA calls.
      preprocessing_function_names: Signatures that turn raw examples into features, run
        before the label and slices are read, as in TFMA and the stock Evaluator. After a
        tf.Transform pipeline whose Trainer exports ``transform_features`` (TFX's examples do),
        ``label_key="species_xf", preprocessing_function_names=["transform_features"]`` reads
        the label the transform computes. A name a model lacks, or a label or slice feature
        found neither in the raw examples nor in these outputs, fails before evaluation.
      slice_feature, slice_thresholds: Check ``slice_thresholds`` on every value of
        ``slice_feature`` on its own (TFMA slicing; drops are against the same slice of each
        baseline), so a model that holds its overall accuracy but collapses on one slice is
        refused. Slicing by the label checks each class.
      min_eval_examples: Refuse when the eval split has fewer examples (default 100): an
        accuracy measured on a handful of examples means little.
      min_slice_examples: Slices with fewer eval examples are listed in the report, not checked.
      serving_model_dir: The push destination. Its newest version (the model serving now) is
        evaluated too and every drop bound applies against it as well as against
        ``baseline_model``; either baseline can be used alone. No Resolver is involved, so this
        runs on open-source Kubeflow Pipelines.
      require_serving_model: Refuse when ``serving_model_dir`` holds no version yet. Off by
        default, so the first release can pass (the report says there was nothing to compare).
      evaluator: ``"auto"`` (default) evaluates every model and slice in one pass over whole
        batches, with the Keras metrics TFMA uses, written in TFMA's format, where the metrics
        and signatures allow it, else with TFMA's per-example evaluator; ``"tfma"`` always TFMA.
      eval_batch_size: Examples per batch of that pass; by default as many as 16 MiB of
        serialized examples and 1e11 FLOPs of the largest model allow, at most 32768.
      allow_unsafe_layers: Load models that contain ``Lambda`` or custom layers, whose loading
        runs code shipped with the model. Off by default: such models are refused.

    Raises:
      pydantic.ValidationError / UnknownMetricError: at construction, for bounds that cannot
        make sense (an accuracy bound above 1, a negative allowed drop, no bound at all) or an
        unknown metric.
    """

    SPEC_CLASS = EvaluatorGateSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

    def __init__(
        self,
        model: types.BaseChannel,
        examples: types.BaseChannel,
        baseline_model: Optional[types.BaseChannel] = None,
        *,
        label_key: str,
        thresholds: Sequence[Union[MetricThreshold, Mapping]],
        min_sparsity: Optional[float] = None,
        max_saved_model_bytes: Optional[int] = None,
        min_size_reduction: Optional[float] = None,
        max_latency_ms: Optional[float] = None,
        latency_batch_size: int = 1,
        max_params: Optional[int] = None,
        max_flops: Optional[int] = None,
        eval_split: str = "eval",
        signature_name: str = "serving_default",
        preprocessing_function_names: Sequence[str] = (),
        slice_feature: Optional[str] = None,
        slice_thresholds: Sequence[Union[MetricThreshold, Mapping]] = (),
        min_eval_examples: int = 100,
        min_slice_examples: int = 1,
        serving_model_dir: Optional[str] = None,
        require_serving_model: bool = False,
        evaluator: str = "auto",
        eval_batch_size: Optional[int] = None,
        allow_unsafe_layers: bool = False,
    ):
        config = GateConfig(
            label_key=label_key,
            thresholds=[MetricThreshold.model_validate(t) if isinstance(t, Mapping) else t for t in thresholds],
            min_sparsity=min_sparsity,
            max_saved_model_bytes=max_saved_model_bytes,
            min_size_reduction=min_size_reduction,
            max_latency_ms=max_latency_ms,
            latency_batch_size=latency_batch_size,
            max_params=max_params,
            max_flops=max_flops,
            eval_split=eval_split,
            signature_name=signature_name,
            preprocessing_function_names=list(preprocessing_function_names),
            slice_feature=slice_feature,
            slice_thresholds=[
                MetricThreshold.model_validate(t) if isinstance(t, Mapping) else t for t in slice_thresholds
            ],
            min_eval_examples=min_eval_examples,
            min_slice_examples=min_slice_examples,
            serving_model_dir=serving_model_dir,
            require_serving_model=require_serving_model,
            evaluator=evaluator,
            eval_batch_size=eval_batch_size,
        )
        for threshold in config.all_thresholds:
            metric_output_name(threshold.metric)
            has_drop_bound = threshold.max_absolute_drop is not None or threshold.max_relative_drop is not None
            if has_drop_bound and baseline_model is None and serving_model_dir is None:
                raise ValueError(f"{threshold.metric}: a drop bound needs a baseline_model or a serving_model_dir")
        if config.min_size_reduction is not None and baseline_model is None:
            raise ValueError("min_size_reduction is measured against a baseline_model; connect one")
        super().__init__(
            spec=EvaluatorGateSpec(
                model=model,
                baseline_model=baseline_model,
                examples=examples,
                gate_config=config.model_dump_json(),
                allow_unsafe_layers=int(allow_unsafe_layers),
                blessing=types.Channel(type=standard_artifacts.ModelBlessing),
                evaluation=types.Channel(type=standard_artifacts.ModelEvaluation),
            )
        )
