"""EvaluatorGate executor: TFMA on candidate and baseline, then the checks, then the blessing.

Fails closed: the blessing is written last, and only BLESSED when every check passed. Any
exception leaves a NOT_BLESSED blessing and fails the execution with a one-line reason: in the
log, and, under TFX's portable launcher (LocalDagRunner), in the execution's
``__execution_result__`` property in ML Metadata, since the launcher deletes a failed
execution's output files.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import time
from typing import Any, Mapping, Optional, Sequence

import apache_beam as beam
import tensorflow as tf
import tensorflow_model_analysis as tfma
from absl import logging
from google.protobuf.wrappers_pb2 import BoolValue
from tensorflow_model_analysis.proto import config_pb2  # TFMA 0.52 no longer re-exports its protos
from tensorflow_model_analysis.slicer import slicer_lib
from tfx import types
from tfx.components.evaluator import constants
from tfx.components.util import tfxio_utils
from tfx.dsl.components.base import base_beam_executor
from tfx.proto.orchestration import execution_result_pb2
from tfx.types import artifact_utils

from tfx_model_pruning import artifact_files as files
from tfx_model_pruning import standard_component_specs as specs
from tfx_model_pruning._io import (
    read_json_if_present,
    split_files,
    split_patterns,
    write_bytes,
    write_json,
    write_text,
)
from tfx_model_pruning.component_options import allowed_ops
from tfx_model_pruning.engine import progress
from tfx_model_pruning.engine.data import ExamplesMismatchError, first_example, read_serialized
from tfx_model_pruning.engine.efficiency import count_flops
from tfx_model_pruning.engine.graph_scan import introduced_ops
from tfx_model_pruning.engine.prune import weight_and_size_stats
from tfx_model_pruning.engine.recovery import RecoveryRecord
from tfx_model_pruning.engine.report import layer_table
from tfx_model_pruning.engine.saved_model import load_model, non_finite_weights, with_serving_export
from tfx_model_pruning.engine.serving_latency import time_signatures
from tfx_model_pruning.evaluator_gate import batched_evaluation, int8, skill
from tfx_model_pruning.evaluator_gate.checks import PARENT_LABEL, SERVING_LABEL, run_checks, unchecked_slices
from tfx_model_pruning.evaluator_gate.config import GateConfig
from tfx_model_pruning.evaluator_gate.metrics import (
    NON_FINITE_PREDICTIONS,
    metric_config,
    metric_output_name,
    non_finite_predictions_config,
)
from tfx_model_pruning.evaluator_gate.report import (
    release_report_html,
    release_report_png,
    summary_markdown,
    verdict_line,
)
from tfx_model_pruning.evaluator_gate.result import (
    GRAPH,
    CheckResult,
    GateDecision,
    GateFailure,
    Int8Result,
    LayerRow,
    ModelFigures,
    RunHeader,
)
from tfx_model_pruning.serving_versions import (
    INT8_TFLITE_PROPERTY,
    JUDGED_SERVING_VERSION_PROPERTY,
    SERVING_MODEL_DIR_PROPERTY,
    latest_version_dir,
)
from tfx_model_pruning.user_module import load_user_module

CANDIDATE, BASELINE, SERVING = "candidate", "baseline", "serving"
OVERALL = "Overall"
FAILED_CHECKS_PROPERTY = "failed_checks"


class Executor(base_beam_executor.BaseBeamExecutor):
    _user_module: tuple[Optional[str], Optional[str]] = (None, None)
    _allow_ops: Sequence[str] = ()  # op types the graph scan lets through (allow_ops)

    def Do(
        self,
        input_dict: dict[str, list[types.Artifact]],
        output_dict: dict[str, list[types.Artifact]],
        exec_properties: dict[str, Any],
    ) -> Optional[execution_result_pb2.ExecutorOutput]:
        blessing = artifact_utils.get_single_instance(output_dict[specs.BLESSING_KEY])
        evaluation = artifact_utils.get_single_instance(output_dict[specs.EVALUATION_KEY])
        candidate = artifact_utils.get_single_instance(input_dict[specs.MODEL_KEY])
        baseline = (input_dict.get(specs.BASELINE_MODEL_KEY) or [None])[0]
        blessing.set_string_custom_property(constants.ARTIFACT_PROPERTY_CURRENT_MODEL_URI_KEY, candidate.uri)
        if baseline is not None:
            blessing.set_string_custom_property(constants.ARTIFACT_PROPERTY_BASELINE_MODEL_URI_KEY, baseline.uri)
        try:
            self._user_module = (exec_properties.get(specs.MODULE_FILE_KEY), exec_properties.get(specs.MODULE_PATH_KEY))
            load_user_module(*self._user_module)  # before the config: it may name what the module registers
            config = GateConfig.model_validate_json(exec_properties[specs.GATE_CONFIG_KEY])
            allow_unsafe = bool(exec_properties.get(specs.ALLOW_UNSAFE_LAYERS_KEY))
            self._allow_ops = allowed_ops(exec_properties)
            decision = self._evaluate(
                config, candidate, baseline, input_dict[specs.EXAMPLES_KEY], evaluation.uri, allow_unsafe
            )
            decision.run = self._run_header(config)
            decision.fine_tuning, decision.not_fine_tuned = _fine_tuning_of(candidate.uri)
            write_json(evaluation.uri, files.GATE_RESULT_JSON, decision.to_json())
            write_text(evaluation.uri, files.GATE_SUMMARY_MARKDOWN, summary_markdown(decision))
            png = release_report_png(decision)
            write_bytes(evaluation.uri, files.GATE_REPORT_PNG, png)
            write_text(evaluation.uri, files.GATE_REPORT_HTML, release_report_html(decision, png))
        except Exception as err:
            reason = f"EvaluatorGate failed, NOT_BLESSED: {type(err).__name__}: {_one_line(err)}"
            logging.error(reason)
            # Kept where the executor's outputs survive (a direct call, an orchestrator that keeps them).
            failure = GateFailure(error=repr(err))
            write_json(evaluation.uri, files.GATE_RESULT_JSON, failure.to_json())
            write_text(evaluation.uri, files.GATE_REPORT_HTML, release_report_html(failure))
            _write_blessing(blessing, blessed=False)
            if self._context is not None and self._context.executor_output_uri:
                # The portable launcher records this message in ML Metadata, then fails the run.
                return execution_result_pb2.ExecutorOutput(
                    execution_result=execution_result_pb2.ExecutionResult(code=1, result_message=reason)
                )
            raise
        if config.serving_model_dir is not None:
            blessing.set_string_custom_property(SERVING_MODEL_DIR_PROPERTY, config.serving_model_dir)
            blessing.set_string_custom_property(JUDGED_SERVING_VERSION_PROPERTY, decision.judged_serving_version)
        blessing.set_string_custom_property(FAILED_CHECKS_PROPERTY, "; ".join(decision.failed_checks))
        if decision.blessed and decision.int8 is not None and decision.int8.passed:
            blessing.set_string_custom_property(INT8_TFLITE_PROPERTY, decision.int8.path)
        _write_blessing(blessing, blessed=decision.blessed)
        progress.figure(verdict_line(decision))
        if decision.blessed:
            logging.info("EvaluatorGate: BLESSED (%d checks passed)", len(decision.checks))
        else:
            logging.warning("EvaluatorGate: NOT_BLESSED; failed checks: %s", _failed_check_lines(decision))
        return None

    def _run_header(self, config: GateConfig) -> RunHeader:
        """Which pipeline and run made the verdict, and when: the first lines of the report."""
        context = self._context
        pipeline = context.pipeline_info.id if context is not None and context.pipeline_info is not None else ""
        return RunHeader(
            pipeline=pipeline,
            run=(context.pipeline_run_id or "") if context is not None else "",
            time=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            push_destination=config.serving_model_dir or "",
        )

    def _evaluate(
        self,
        config: GateConfig,
        candidate: types.Artifact,
        baseline: Optional[types.Artifact],
        examples: list[types.Artifact],
        evaluation_uri: str,
        allow_unsafe_layers: bool = False,
    ) -> GateDecision:
        allow_ops = self._allow_ops
        models = {CANDIDATE: load_model(candidate.uri, allow_unsafe_layers, allow_ops)}
        if baseline is not None:
            models[BASELINE] = load_model(baseline.uri, allow_unsafe_layers, allow_ops)
        serving_dir = latest_version_dir(config.serving_model_dir) if config.serving_model_dir else None
        if serving_dir is not None:
            models[SERVING] = load_model(serving_dir, allow_unsafe_layers, allow_ops)
        graph_scans = {name: loaded.scan.summary() for name, loaded in models.items()}
        # A Keras 3 .keras file alone has no signatures to evaluate: its own export, made here, has.
        models = {
            name: with_serving_export(loaded, os.path.join(evaluation_uri, "exported", name))
            for name, loaded in models.items()
        }
        eval_patterns = split_patterns(examples, config.eval_split)
        sample = _first_example(examples, config.eval_split)
        eval_features = sorted(sample.features.feature) if sample is not None else []
        if eval_features:  # an empty split is refused by the example-count check
            eval_features = check_model_inputs(
                config, {name: loaded.signatures for name, loaded in models.items()}, eval_features
            )
        metric_names = {t.metric: metric_output_name(t.metric) for t in config.all_thresholds}
        eval_config = _eval_config(config, list(models))
        tfma_dir = os.path.join(evaluation_uri, files.TFMA_SUBDIR)
        flops = {name: count_flops(loaded.model) for name, loaded in models.items()}
        plan, why_not = self._one_pass_plan(config, models, sample, flops)
        # The no-skill tallies need only the candidate's answers, whichever evaluator computes the metrics.
        skill_plan, skill_unmeasured = self._one_pass_plan(
            config.model_copy(update={"evaluator": "auto"}),
            {CANDIDATE: models[CANDIDATE]},
            sample,
            flops,
            answers_only=True,
        )
        if config.evaluator == "tfma":
            plan, why_not = None, "asked for by the configuration (evaluator: tfma)"
        if plan is not None:
            workers = batched_evaluation.declared_workers(self._beam_pipeline_args)
            shards = batched_evaluation.shards_per_file(workers, len(split_files(examples, config.eval_split)))
            plan = dataclasses.replace(plan, shards_per_file=shards)
        evaluated_by = (
            "one pass over whole batches (Keras metrics as TFMA computes them)"
            + (f", each file in {plan.shards_per_file} shards" if plan.shards_per_file > 1 else "")
            if plan is not None
            else f"TFMA's per-example evaluator: {why_not}"
        )
        logging.info("EvaluatorGate: evaluated by %s", evaluated_by)
        skill_dir = os.path.join(evaluation_uri, files.TFMA_SUBDIR, "skill")
        tally = config.require_skill and skill_plan is not None
        with self._make_beam_pipeline() as pipeline:
            if plan is not None:  # the tallies come from the same batches
                # Held until the pipeline has run: an in-process worker evaluates these models, not fresh loads.
                shared_models = batched_evaluation.evaluate_and_write(  # noqa: F841
                    pipeline,
                    eval_patterns,
                    plan,
                    eval_config,
                    tfma_dir,
                    CANDIDATE if tally else None,
                    skill_dir,
                    loaded_signatures={name: loaded.signatures for name, loaded in models.items()},
                )
            else:
                self._tfma_evaluation(pipeline, models, examples, eval_patterns, eval_config, tfma_dir)
                if tally:
                    batched_evaluation.add_skill_tallies(pipeline, eval_patterns, skill_plan, skill_dir)
        tallies = skill.read_tallies(skill_dir) if skill_plan is not None else None
        by_slice = _metrics_by_slice(tfma_dir, list(models))
        metrics = by_slice.pop(OVERALL, {name: {} for name in models})
        # Sizes the Prune or Retrain executor measured when it saved the model: not compressed again.
        artifacts = {CANDIDATE: candidate, BASELINE: baseline}
        recorded = {
            name: read_json_if_present(artifact.uri, files.MODEL_SIZES_JSON)
            for name, artifact in artifacts.items()
            if artifact is not None
        }
        stats = {
            name: weight_and_size_stats(loaded.model, loaded.masks or None, loaded.path, recorded.get(name))
            for name, loaded in models.items()
        }
        layers = {name: layer_table(loaded.model) for name, loaded in models.items()}
        non_finite = {"weights": sum(non_finite_weights(models[CANDIDATE].model).values())}
        predictions = metrics.get(CANDIDATE, {}).get(NON_FINITE_PREDICTIONS)
        if predictions is not None:
            non_finite["predictions"] = int(predictions)
        for name, latency in _serving_latency(config, models, examples).items():
            stats[name].update(latency)
            stats[name]["flops"] = flops[name]
        checks = run_checks(
            config,
            metric_names,
            candidate=metrics.get(CANDIDATE, {}),
            baseline=metrics.get(BASELINE) if baseline is not None else None,
            example_count=metrics.get(CANDIDATE, {}).get("example_count", 0.0),
            sparsity=stats[CANDIDATE]["masked_sparsity"],
            efficiency=stats,
            serving=metrics.get(SERVING),
            slices=by_slice,
            non_finite=non_finite,
            eval_features=eval_features,
            skill=tallies,
            skill_unmeasured=f"the candidate's answers cannot be read in one pass: {skill_unmeasured}",
        )
        checks.extend(_graph_checks(models, allow_ops))
        int8_result = None
        if config.int8_tflite is not None:
            float_latency = stats[CANDIDATE].get("latency")
            int8_result = _int8_result(
                config, models[CANDIDATE], examples, float_latency, evaluation_uri, allow_unsafe_layers, allow_ops
            )
        return GateDecision(
            int8=int8_result,
            checks=checks,
            config=config,
            models={name: loaded.path for name, loaded in models.items()},
            metrics=metrics,
            slices=by_slice,
            unchecked_slices=unchecked_slices(config, by_slice),
            weights={name: ModelFigures.from_json(figures) for name, figures in stats.items()},
            layers={name: [LayerRow.from_json(row) for row in rows] for name, rows in layers.items()},
            judged_serving_version=os.path.realpath(serving_dir) if serving_dir is not None else "",
            evaluated_by=evaluated_by,
            graph_scans=graph_scans,
        )

    def _one_pass_plan(
        self,
        config: GateConfig,
        models: dict,
        sample: Optional[tf.train.Example],
        flops: dict[str, Optional[int]],
        answers_only: bool = False,
    ) -> tuple[Optional[batched_evaluation.EvaluationPlan], str]:
        """The one-pass evaluation of these models and metrics, or None and why TFMA must do it.

        With ``answers_only``, the plan reads the models' answers and labels, computing no metric.
        """
        if config.evaluator == "tfma":
            return None, "asked for by the configuration (evaluator: tfma)"
        if sample is None:
            return None, "the eval split is empty"
        raw_features = {
            name: (feature.WhichOneof("kind"), len(getattr(feature, feature.WhichOneof("kind")).value))
            for name, feature in sample.features.feature.items()
            if feature.WhichOneof("kind") is not None
        }
        plan = batched_evaluation.EvaluationPlan(
            models={name: loaded.path for name, loaded in models.items()},
            signature_name=config.signature_name,
            preprocessing_function_names=list(config.preprocessing_function_names),
            label_key=config.label_key,
            slice_feature=config.slice_feature,
            metric_classes=[] if answers_only else list(dict.fromkeys(t.metric for t in config.all_thresholds)),
            raw_features=raw_features,
            user_module=self._user_module,
            allow_ops=self._allow_ops,
            batch_size=config.eval_batch_size
            or batched_evaluation.batch_size_for(
                sample.ByteSize(), None if None in flops.values() else max(flops.values())
            ),
        )
        reason = batched_evaluation.unsupported_reason(
            plan, {name: loaded.signatures for name, loaded in models.items()}
        )
        if reason is not None:
            return None, reason
        return plan, ""

    def _tfma_evaluation(self, pipeline, models: dict, examples, eval_patterns, eval_config, tfma_dir: str) -> None:
        shared_models = [
            tfma.default_eval_shared_model(eval_saved_model_path=loaded.path, model_name=name, eval_config=eval_config)
            for name, loaded in models.items()
        ]
        # TFMA's batched path wants Arrow record batches with the raw examples alongside,
        # which is how the stock Evaluator reads them too.
        make_tfxio = tfxio_utils.get_tfxio_factory_from_artifact(
            examples=examples,
            telemetry_descriptors=["EvaluatorGate"],
            raw_record_column_name=tfma.constants.ARROW_INPUT_COLUMN,
        )
        reads = [
            pipeline | f"ReadEvalExamples[{index}]" >> make_tfxio(pattern).BeamSource()
            for index, pattern in enumerate(eval_patterns)
        ]
        _ = (
            reads
            | "FlattenEvalExamples" >> beam.Flatten()
            | "EvaluateWithTFMA"
            >> tfma.ExtractEvaluateAndWriteResults(
                eval_shared_model=shared_models if len(shared_models) > 1 else shared_models[0],
                eval_config=eval_config,
                output_path=tfma_dir,
            )
        )


def _graph_checks(models: Mapping[str, Any], allow_ops: Sequence[str]) -> list[CheckResult]:
    """The candidate's graphs hold no op type the model it replaces lacks (the parent, else the
    serving model), unless allowed: pruning and fine-tuning change weights and shapes, never what
    the graph does. None without a SavedModel graph to compare with (a ``.keras`` file alone has
    none: its graph is Keras's code, made from the config that was scanned); each model was scanned
    as it loaded."""
    with_graphs = [name for name in (BASELINE, SERVING) if name in models and models[name].scan.meta_graphs]
    reference = with_graphs[0] if with_graphs else None
    if reference is None or not models[CANDIDATE].scan.meta_graphs:
        return []
    new = introduced_ops(models[CANDIDATE].scan, models[reference].scan, allow_ops)
    label = {BASELINE: PARENT_LABEL, SERVING: SERVING_LABEL}[reference]
    detail = (
        f"the candidate holds op types the {label} does not: {', '.join(new)} (security.allow_ops lets "
        "named ones through)"
        if new
        else f"every op type in the candidate's graphs is in the {label}'s ({len(models[CANDIDATE].scan.ops)} op types)"
    )
    return [
        CheckResult(
            name="graph adds no op",
            passed=not new,
            measured=float(len(new)),
            bound=0.0,
            detail=detail,
            metric="op types not in the reference model",
            reference=label,
            comparator="<=",
            kind=GRAPH,
        )
    ]


def _eval_config(config: GateConfig, model_names: list[str]) -> config_pb2.EvalConfig:
    # One baseline at most for TFMA's diffs: the parent model if there is one, else the serving one.
    tfma_baseline = BASELINE if BASELINE in model_names else SERVING
    model_specs = [
        config_pb2.ModelSpec(
            name=name,
            label_key=config.label_key,
            signature_name=config.signature_name,
            preprocessing_function_names=config.preprocessing_function_names,
            is_baseline=name == tfma_baseline,
        )
        for name in model_names
    ]
    metric_classes = dict.fromkeys(threshold.metric for threshold in config.all_thresholds)
    metrics = [
        config_pb2.MetricConfig(class_name="ExampleCount"),
        non_finite_predictions_config(),
        *(metric_config(name) for name in metric_classes),
    ]
    slicing_specs = [config_pb2.SlicingSpec()]
    if config.slice_feature is not None:
        slicing_specs.append(config_pb2.SlicingSpec(feature_keys=[config.slice_feature]))
    return config_pb2.EvalConfig(
        model_specs=model_specs,
        slicing_specs=slicing_specs,
        metrics_specs=[config_pb2.MetricsSpec(metrics=metrics)],
        # Only what the thresholds name: compiled metrics differ between models and would
        # make the comparison uneven.
        options=config_pb2.Options(include_default_metrics=BoolValue(value=False)),
    )


class GateInputError(ValueError):
    """The models or examples lack what the gate's configuration names."""


def check_model_inputs(config: GateConfig, signatures_by_model: dict[str, dict], eval_features: list[str]) -> list[str]:
    """Fails before Beam starts when a signature or the label is missing; returns the feature names.

    The label (and the slice feature, which the checks look for) may be raw features of the
    eval examples or outputs of the preprocessing signatures (``preprocessing_function_names``).
    """

    def _input_signature(function) -> dict[str, str]:
        """A signature's inputs, name -> dtype (shapes left out: a batch or trailing 1 may differ by saver)."""
        _, inputs = getattr(function, "structured_input_signature", None) or ((), {})
        return {name: spec.dtype.name for name, spec in sorted((inputs or {}).items())}

    needed = (config.signature_name, *config.preprocessing_function_names)
    for model_name, signatures in signatures_by_model.items():
        if model_name == SERVING:
            continue  # below: measured against the candidate, since it may be another pipeline's model
        for signature in needed:
            if signature not in signatures:
                raise GateInputError(
                    f"the {model_name} model has no signature {signature!r}; it has {sorted(signatures)}"
                )
    if SERVING in signatures_by_model and CANDIDATE in signatures_by_model:
        serving, candidate = signatures_by_model[SERVING], signatures_by_model[CANDIDATE]
        missing = [name for name in needed if name not in serving]
        differing = [
            name
            for name in needed
            if name in serving and _input_signature(serving[name]) != _input_signature(candidate[name])
        ]
        if missing or differing:
            serving_dir = latest_version_dir(config.serving_model_dir) if config.serving_model_dir else None
            what = (
                f"has no signature {missing[0]!r} (it has {sorted(serving)})"
                if missing
                else f"takes other inputs in its {differing[0]!r} signature ({_input_signature(serving[differing[0]])}"
                f" where the candidate takes {_input_signature(candidate[differing[0]])})"
            )
            raise GateInputError(
                f"the serving model {serving_dir or config.serving_model_dir} {what}, unlike the candidate: it "
                "appears to belong to another model or pipeline sharing this push destination. Give this pipeline "
                "a push destination of its own (push.destination in the pipeline file, run-local --output-dir, or "
                "kubeflow.serving_dir), or remove that version if it is stale"
            )
    preprocessed = {
        output
        for signatures in signatures_by_model.values()
        for name in config.preprocessing_function_names
        for output in (signatures[name].structured_outputs or {})
    }
    key = config.label_key
    if key not in eval_features and key not in preprocessed:
        suggestion = _signature_outputting(key, signatures_by_model)
        raise GateInputError(
            f"label_key {key!r} is not a feature of the eval examples ({', '.join(eval_features)})"
            + (
                f" nor an output of {config.preprocessing_function_names}"
                if config.preprocessing_function_names
                else ""
            )
            + (
                f"; the model's {suggestion!r} signature outputs it: set preprocessing_function_names=['{suggestion}']"
                if suggestion
                else ""
            )
        )
    return sorted(set(eval_features) | preprocessed)


def _signature_outputting(key: str, signatures_by_model: dict[str, dict]) -> Optional[str]:
    for signatures in signatures_by_model.values():
        for name, function in signatures.items():
            outputs = function.structured_outputs
            if isinstance(outputs, dict) and key in outputs:
                return name
    return None


def _metrics_by_slice(tfma_dir: str, model_names: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """slice label -> model -> metric -> value, TFMA's diff entries left out."""
    by_slice: dict[str, dict[str, dict[str, float]]] = {}
    for metrics_for_slice in tfma.load_metrics(tfma_dir):
        key = slicer_lib.deserialize_slice_key(metrics_for_slice.slice_key)
        models = by_slice.setdefault(skill.slice_label(key), {name: {} for name in model_names})
        for entry in metrics_for_slice.metric_keys_and_values:
            if entry.key.is_diff or not entry.value.HasField("double_value"):
                continue
            model_name = entry.key.model_name or model_names[0]
            models.setdefault(model_name, {})[entry.key.name] = entry.value.double_value.value
    return by_slice


def _write_blessing(blessing: types.Artifact, blessed: bool) -> None:
    marker = constants.BLESSED_FILE_NAME if blessed else constants.NOT_BLESSED_FILE_NAME
    stale = constants.NOT_BLESSED_FILE_NAME if blessed else constants.BLESSED_FILE_NAME
    stale_path = os.path.join(blessing.uri, stale)
    if os.path.exists(stale_path):
        os.remove(stale_path)
    write_text(blessing.uri, marker, "")
    blessing.set_int_custom_property(
        constants.ARTIFACT_PROPERTY_BLESSED_KEY,
        constants.BLESSED_VALUE if blessed else constants.NOT_BLESSED_VALUE,
    )


def _serving_latency(config: GateConfig, models: Mapping[str, Any], examples: list[types.Artifact]) -> dict:
    """Each model's serving latency figures (``ModelFigures.latency``, ``latency_ms``), timed together.

    A model whose signature cannot be timed on the eval examples gets ``latency_ms_unmeasured``
    instead: the report says why, and a latency bound refuses.
    """
    batch_sizes = sorted({1, config.latency_batch_size})
    started = time.perf_counter()
    try:
        serialized = list(read_serialized(split_files(examples, config.eval_split), max(batch_sizes)).numpy())
        timings = time_signatures(
            {name: loaded.signatures[config.signature_name] for name, loaded in models.items()},
            serialized,
            batch_sizes,
            config.latency_repeats,
        )
    except Exception as err:  # an empty split, a signature the examples cannot feed: refused by the checks
        logging.warning("EvaluatorGate: serving latency not measured: %s", err)
        return {name: {"latency_ms_unmeasured": f"serving latency not measured: {_one_line(err)}"} for name in models}
    for batch in batch_sizes:
        medians = ", ".join(f"{name} {timings[name][batch].median_ms:.3g} ms" for name in models)
        logging.info("EvaluatorGate: serving latency at batch %d: %s", batch, medians)
    logging.info("EvaluatorGate: serving latency timed in %.2f s", time.perf_counter() - started)
    return {
        name: {
            "latency": {str(batch): latency.to_json() for batch, latency in by_batch.items()},
            "latency_ms": by_batch[config.latency_batch_size].median_ms,
        }
        for name, by_batch in timings.items()
    }


def _int8_result(
    config: GateConfig,
    candidate: Any,
    examples: list[types.Artifact],
    float_latency: Any,
    evaluation_uri: str,
    allow_unsafe_layers: bool,
    allow_ops: Sequence[str],
) -> Int8Result:
    """The int8 TFLite model's own result; whatever goes wrong is its result, never the gate's failure."""
    try:
        serialized = read_serialized(split_files(examples, config.eval_split), config.int8_tflite.max_eval_examples)
        output_dir = os.path.join(evaluation_uri, "int8")
        result = int8.check_int8(
            config, candidate, serialized, float_latency, output_dir, allow_unsafe_layers, allow_ops
        )
    except Exception as err:
        error = f"int8 TFLite model not made: {type(err).__name__}: {_one_line(err)}"
        result = Int8Result(path="", error=error, checks=[CheckResult("int8 TFLite model", False, None, None, error)])
    verdict = "passed its checks" if result.passed else f"left out of the push: {result.error or 'a check failed'}"
    logging.info("EvaluatorGate: int8 TFLite model %s", verdict)
    return result


def _first_example(examples: list[types.Artifact], split: str) -> Optional[tf.train.Example]:
    try:
        return first_example(split_files(examples, split))
    except ExamplesMismatchError:  # an empty split: the example-count check refuses it
        return None


def _fine_tuning_of(model_uri: str) -> tuple[Optional[RecoveryRecord], str]:
    """The candidate's recovery record, where RetrainComponent made one (fine_tuning.json beside it),
    and why it was not fine-tuned at all, where it was not (retrain.epochs: 0)."""
    record = read_json_if_present(model_uri, files.FINE_TUNING_JSON) or {}
    recovery = RecoveryRecord.from_json(record["recovery"]) if record.get("recovery") else None
    return recovery, ("" if record.get(files.FINE_TUNED, True) else record.get("reason") or files.NOT_FINE_TUNED)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 500 else text[:497] + "..."


def _failed_check_lines(decision: GateDecision) -> str:
    return "; ".join(
        f"{check.name} (measured {check.measured}, bound {check.bound})"
        for check in decision.checks
        if not check.passed
    )
