"""EvaluatorGate executor: TFMA on candidate and baseline, then the checks, then the blessing.

Fails closed: the blessing is written last, and only BLESSED when every check passed. Any
exception leaves a NOT_BLESSED blessing and the error in the evaluation, then fails the run.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import apache_beam as beam
import tensorflow_model_analysis as tfma
from absl import logging
from google.protobuf.wrappers_pb2 import BoolValue
from tfx import types
from tfx.components.evaluator import constants
from tfx.components.util import tfxio_utils
from tfx.dsl.components.base import base_beam_executor
from tfx.types import artifact_utils

from components._io import split_patterns, write_json, write_text
from components.engine.efficiency import count_flops, cpu_latency_ms
from components.engine.prune import size_stats
from components.engine.report import weight_stats
from components.engine.saved_model import load_keras_model
from components.evaluator_gate.checks import is_blessed, run_checks
from components.evaluator_gate.config import GateConfig
from components.evaluator_gate.metrics import metric_output_name
from components.evaluator_gate.report import summary_markdown

MODEL_KEY = "model"
BASELINE_MODEL_KEY = "baseline_model"
EXAMPLES_KEY = "examples"
BLESSING_KEY = "blessing"
EVALUATION_KEY = "evaluation"
GATE_CONFIG_KEY = "gate_config"
GATE_RESULT_JSON = "gate_result.json"
GATE_SUMMARY_MARKDOWN = "summary.md"
TFMA_SUBDIR = "tfma"
CANDIDATE, BASELINE = "candidate", "baseline"
ALLOW_UNSAFE_LAYERS_KEY = "allow_unsafe_layers"


class Executor(base_beam_executor.BaseBeamExecutor):
    def Do(
        self,
        input_dict: dict[str, list[types.Artifact]],
        output_dict: dict[str, list[types.Artifact]],
        exec_properties: dict[str, Any],
    ) -> None:
        blessing = artifact_utils.get_single_instance(output_dict[BLESSING_KEY])
        evaluation = artifact_utils.get_single_instance(output_dict[EVALUATION_KEY])
        candidate = artifact_utils.get_single_instance(input_dict[MODEL_KEY])
        baseline = (input_dict.get(BASELINE_MODEL_KEY) or [None])[0]
        blessing.set_string_custom_property(constants.ARTIFACT_PROPERTY_CURRENT_MODEL_URI_KEY, candidate.uri)
        if baseline is not None:
            blessing.set_string_custom_property(constants.ARTIFACT_PROPERTY_BASELINE_MODEL_URI_KEY, baseline.uri)
        try:
            config = GateConfig.model_validate_json(exec_properties[GATE_CONFIG_KEY])
            allow_unsafe = bool(exec_properties.get(ALLOW_UNSAFE_LAYERS_KEY))
            result = self._evaluate(config, candidate, baseline, input_dict[EXAMPLES_KEY], evaluation.uri, allow_unsafe)
        except Exception as err:
            write_json(evaluation.uri, GATE_RESULT_JSON, {"blessed": False, "error": repr(err)})
            _write_blessing(blessing, blessed=False)
            raise
        write_json(evaluation.uri, GATE_RESULT_JSON, result)
        write_text(evaluation.uri, GATE_SUMMARY_MARKDOWN, summary_markdown(result))
        _write_blessing(blessing, blessed=result["blessed"])
        logging.info("EvaluatorGate: %s", "BLESSED" if result["blessed"] else "NOT_BLESSED")

    def _evaluate(
        self,
        config: GateConfig,
        candidate: types.Artifact,
        baseline: Optional[types.Artifact],
        examples: list[types.Artifact],
        evaluation_uri: str,
        allow_unsafe_layers: bool = False,
    ) -> dict[str, Any]:
        models = {CANDIDATE: load_keras_model(candidate.uri, allow_unsafe_layers)}
        if baseline is not None:
            models[BASELINE] = load_keras_model(baseline.uri, allow_unsafe_layers)
        eval_patterns = split_patterns(examples, config.eval_split)
        metric_names = {t.metric: metric_output_name(t.metric) for t in config.thresholds}
        eval_config = _eval_config(config, with_baseline=baseline is not None)
        tfma_dir = os.path.join(evaluation_uri, TFMA_SUBDIR)
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
        with self._make_beam_pipeline() as pipeline:
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
        metrics = _overall_metrics(tfma_dir, list(models))
        stats = {
            name: {**weight_stats(loaded.model, loaded.masks or None), **size_stats(loaded.path)}
            for name, loaded in models.items()
        }
        for name, loaded in models.items():
            stats[name]["flops"] = count_flops(loaded.model)
            if config.max_latency_ms is not None:
                stats[name]["latency_ms"] = cpu_latency_ms(loaded.model, config.latency_batch_size)
        checks = run_checks(
            config,
            metric_names,
            candidate=metrics.get(CANDIDATE, {}),
            baseline=metrics.get(BASELINE) if baseline is not None else None,
            example_count=metrics.get(CANDIDATE, {}).get("example_count", 0.0),
            sparsity=stats[CANDIDATE]["masked_sparsity"],
            efficiency=stats,
        )
        return {
            "blessed": is_blessed(checks),
            "config": config.model_dump(),
            "models": {name: loaded.path for name, loaded in models.items()},
            "metrics": metrics,
            "weights": stats,
            "checks": [check.as_dict() for check in checks],
            "failed_checks": [check.name for check in checks if not check.passed],
        }


def _eval_config(config: GateConfig, with_baseline: bool) -> tfma.EvalConfig:
    model_specs = [tfma.ModelSpec(name=CANDIDATE, label_key=config.label_key, signature_name=config.signature_name)]
    if with_baseline:
        model_specs.append(
            tfma.ModelSpec(
                name=BASELINE, label_key=config.label_key, signature_name=config.signature_name, is_baseline=True
            )
        )
    metrics = [tfma.MetricConfig(class_name="ExampleCount")]
    metrics += [tfma.MetricConfig(class_name=threshold.metric) for threshold in config.thresholds]
    return tfma.EvalConfig(
        model_specs=model_specs,
        slicing_specs=[tfma.SlicingSpec()],
        metrics_specs=[tfma.MetricsSpec(metrics=metrics)],
        # Only what the thresholds name: compiled metrics differ between models and would
        # make the comparison uneven.
        options=tfma.Options(include_default_metrics=BoolValue(value=False)),
    )


def _overall_metrics(tfma_dir: str, model_names: list[str]) -> dict[str, dict[str, float]]:
    """Metric values of the overall slice, per model (TFMA's diff entries left out)."""
    metrics: dict[str, dict[str, float]] = {name: {} for name in model_names}
    for metrics_for_slice in tfma.load_metrics(tfma_dir):
        if metrics_for_slice.slice_key.single_slice_keys:
            continue
        for entry in metrics_for_slice.metric_keys_and_values:
            if entry.key.is_diff:
                continue
            if entry.value.HasField("double_value"):
                model_name = entry.key.model_name or model_names[0]
                metrics.setdefault(model_name, {})[entry.key.name] = entry.value.double_value.value
    return metrics


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
