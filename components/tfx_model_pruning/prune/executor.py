"""PruneComponent executor: loads the input Keras SavedModel, prunes it, writes model and report."""

from __future__ import annotations

import os
from typing import Any

from absl import logging
from tfx import types
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils
from tfx.utils import path_utils

from tfx_model_pruning import artifact_files as files
from tfx_model_pruning import standard_component_specs as specs
from tfx_model_pruning._io import split_files, write_json, write_text
from tfx_model_pruning.component_options import allowed_ops
from tfx_model_pruning.engine import progress, prune_saved_model, summary_markdown
from tfx_model_pruning.engine.config import pruning_config_from_json
from tfx_model_pruning.engine.data import read_serialized
from tfx_model_pruning.engine.prune import SIZE_FIGURES
from tfx_model_pruning.engine.sensitivity import plot_curves
from tfx_model_pruning.graph_records import record_scan, records_refusals
from tfx_model_pruning.user_module import load_from

# Structured pruning proves its rebuilt serving signatures on at least this many real
# examples; data-driven criteria read config.sample_size of them.
SAMPLE_SPLIT = "train"
SAMPLE_COUNT = 64
HOLDOUT_SPLIT = "eval"  # sensitivity curves are measured on held-out examples


class Executor(base_executor.BaseExecutor):
    @records_refusals("PruneComponent")
    def Do(
        self,
        input_dict: dict[str, list[types.Artifact]],
        output_dict: dict[str, list[types.Artifact]],
        exec_properties: dict[str, Any],
    ) -> None:
        load_from(exec_properties)  # before the config: it may name a criterion the module registers
        config = pruning_config_from_json(exec_properties[specs.PRUNING_CONFIG_KEY])
        input_uri = artifact_utils.get_single_uri(input_dict[specs.INPUT_MODEL_KEY])
        output_model = artifact_utils.get_single_instance(output_dict[specs.OUTPUT_MODEL_KEY])
        report_artifact = artifact_utils.get_single_instance(output_dict[specs.PRUNING_REPORT_KEY])
        samples = holdout = None
        if input_dict.get(specs.EXAMPLES_KEY):
            count = max(SAMPLE_COUNT, config.sample_size)
            samples = read_serialized(split_files(input_dict[specs.EXAMPLES_KEY], SAMPLE_SPLIT), count)
            if getattr(config, "scope", None) == "sensitivity" or config.method == "layer_removal":
                holdout = read_serialized(
                    split_files(input_dict[specs.EXAMPLES_KEY], HOLDOUT_SPLIT), config.sample_size
                )

        result = prune_saved_model(
            input_uri,
            path_utils.serving_model_dir(output_model.uri),
            config,
            sample_examples=samples,
            holdout_examples=holdout,
            allow_unsafe_layers=bool(exec_properties.get(specs.ALLOW_UNSAFE_LAYERS_KEY)),
            allow_ops=allowed_ops(exec_properties),
            latency_repeats=int(exec_properties.get(specs.LATENCY_REPEATS_KEY) or 0),
        )
        if result.sensitivity is not None:
            sensitivity = result.sensitivity
            plot_curves(
                sensitivity.curves,
                sensitivity.dense_loss,
                sensitivity.allocation,
                os.path.join(report_artifact.uri, files.SENSITIVITY_PLOT),
            )
        after = result.after
        logging.info("Pruned %s: sparsity of pruned layers %.4f", input_uri, after.masked_sparsity)
        progress.figure(_key_figure(result))

        write_json(report_artifact.uri, files.PRUNING_REPORT_JSON, result.to_json())
        write_json(output_model.uri, files.MODEL_SIZES_JSON, {key: getattr(after, key) for key in SIZE_FIGURES})
        write_text(report_artifact.uri, files.PRUNING_SUMMARY_MARKDOWN, summary_markdown(result))
        record_scan(output_model, path_utils.serving_model_dir(output_model.uri), allowed_ops(exec_properties))
        for artifact in (output_model, report_artifact):
            artifact.set_float_custom_property("sparsity", after.masked_sparsity)
        report_artifact.set_int_custom_property("params", after.params)
        report_artifact.set_int_custom_property("nonzero_params", after.nonzero_params)
        report_artifact.set_int_custom_property("gzip_bytes", after.gzip_bytes)
        if after.flops is not None:  # unmeasured for a model without Keras layers
            report_artifact.set_int_custom_property("flops", after.flops)


def _key_figure(result) -> str:
    """What pruning did, in a few words: sparsity, or the share of channels and params removed."""
    after, before = result.after, result.before
    if result.structure is not None:
        return f"{result.structure.removed_share:.0%} of channels removed, params {before.params:,} -> {after.params:,}"
    if result.method == "layer_removal":
        return f"params {before.params:,} -> {after.params:,}"
    return f"sparsity {after.masked_sparsity:.2f} ({after.nonzero_params:,} of {after.params:,} weights non-zero)"
