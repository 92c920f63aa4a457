"""EvaluatorGate: blesses a pruned model only if it meets absolute and baseline-relative bounds."""

from __future__ import annotations

import inspect
from typing import Any, Mapping, Optional, Sequence, Union

from pydantic import TypeAdapter
from tfx import types
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from tfx_model_pruning import standard_component_specs as specs
from tfx_model_pruning.component_options import (
    ALLOW_OPS,
    ALLOW_UNSAFE_LAYERS,
    MODULE_FILE,
    MODULE_PATH,
    allow_ops_parameter,
    build_config,
    component_signature,
    document,
)
from tfx_model_pruning.evaluator_gate import executor
from tfx_model_pruning.evaluator_gate.config import GateConfig
from tfx_model_pruning.evaluator_gate.metrics import metric_output_name
from tfx_model_pruning.user_module import attach, load_user_module


class EvaluatorGateSpec(ComponentSpec):
    PARAMETERS = {
        specs.GATE_CONFIG_KEY: ExecutionParameter(type=str),
        specs.ALLOW_UNSAFE_LAYERS_KEY: ExecutionParameter(type=int, optional=True),
        specs.ALLOW_OPS_KEY: ExecutionParameter(type=str, optional=True),
        specs.MODULE_FILE_KEY: ExecutionParameter(type=str, optional=True),
        specs.MODULE_PATH_KEY: ExecutionParameter(type=str, optional=True),
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
    efficiency bounds (size on disk, size reduction, parameters, FLOPs, serving latency), absolute or as a
    ratio to each baseline (``max_latency_ratio``, ``max_size_ratio``). The serving signature is
    always timed on eval examples, at batch 1 and ``latency_batch_size``, every model in
    alternation, and reported. ``blessing`` is a
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
            max_latency_ratio=0.7,  # at least 30% faster than each baseline at latency_batch_size
            latency_batch_size=32,
        )
        pusher = tfx.components.Pusher(model=retrain.outputs["model"], model_blessing=gate.outputs["blessing"], ...)

    Args:
      model: The candidate ``Model`` (a SavedModel, tf-keras or ``tf.saved_model.save``, or a Keras 3
        ``.keras`` file, with a ``serving_default`` signature that takes serialized tf.Examples).
      baseline_model: Optional ``Model`` to compare with (e.g. the unpruned Trainer output).
        Drop bounds and ``min_size_reduction`` need it (or ``serving_model_dir``).
      examples: ``Examples`` with an ``eval_split``.
      config: A ``GateConfig`` (or a mapping of one); the keyword options below are its fields,
        and override it. ``thresholds`` entries may be ``MetricThreshold``s or mappings.

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
        config: Union[GateConfig, Mapping[str, Any], None] = None,
        *,
        allow_unsafe_layers: bool = False,
        allow_ops: Sequence[str] = (),
        module_file: Optional[str] = None,
        module_path: Optional[str] = None,
        **options: Any,
    ):
        load_user_module(module_file, module_path)
        gate = build_config(TypeAdapter(GateConfig), MODELS, config, options, "EvaluatorGate")
        problems = []  # every one at once, a line each
        no_baseline = baseline_model is None and gate.serving_model_dir is None
        for threshold in gate.all_thresholds:
            metric_output_name(threshold.metric)
            has_drop_bound = threshold.max_absolute_drop is not None or threshold.max_relative_drop is not None
            if has_drop_bound and no_baseline:
                problems.append(f"{threshold.metric}: a drop bound needs a baseline_model or a serving_model_dir")
        if gate.min_size_reduction is not None and baseline_model is None:
            problems.append("min_size_reduction is measured against a baseline_model; connect one")
        for ratio in ("max_latency_ratio", "max_size_ratio"):
            if getattr(gate, ratio) is not None and no_baseline:
                problems.append(f"{ratio} compares with a baseline: connect a baseline_model or set serving_model_dir")
        if problems:
            raise ValueError("\n".join(problems))
        super().__init__(
            spec=EvaluatorGateSpec(
                model=model,
                baseline_model=baseline_model,
                examples=examples,
                gate_config=gate.model_dump_json(),
                allow_unsafe_layers=int(allow_unsafe_layers),
                allow_ops=allow_ops_parameter(allow_ops, "EvaluatorGate"),
                module_file=module_file,
                module_path=module_path,
                blessing=types.Channel(type=standard_artifacts.ModelBlessing),
                evaluation=types.Channel(type=standard_artifacts.ModelEvaluation),
            )
        )
        attach(self, module_file, module_path)


MODELS = (GateConfig,)
SHARED = {
    "allow_unsafe_layers": ALLOW_UNSAFE_LAYERS,
    "allow_ops": ALLOW_OPS,
    "module_file": MODULE_FILE,
    "module_path": MODULE_PATH,
}
_channel = inspect.Parameter.POSITIONAL_OR_KEYWORD
EvaluatorGate.__init__.__signature__ = component_signature(
    [
        inspect.Parameter("model", _channel, annotation=types.BaseChannel),
        inspect.Parameter("examples", _channel, annotation=types.BaseChannel),
        inspect.Parameter("baseline_model", _channel, default=None, annotation=Optional[types.BaseChannel]),
    ],
    MODELS,
    Union[GateConfig, Mapping[str, Any]],
    SHARED,
)
document(EvaluatorGate, MODELS, SHARED)
