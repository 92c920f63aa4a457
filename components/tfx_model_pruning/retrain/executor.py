"""RetrainComponent executor: fine-tunes a pruned model with its pruned weights held at zero."""

from __future__ import annotations

from typing import Any

from absl import logging
from tfx import types
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils
from tfx.utils import path_utils

from tfx_model_pruning import artifact_files as files
from tfx_model_pruning import standard_component_specs as specs
from tfx_model_pruning._io import split_files, write_json
from tfx_model_pruning.component_options import allowed_ops
from tfx_model_pruning.engine import (
    FineTuneConfig,
    examples_dataset,
    fine_tune,
    load_model,
    progress,
    require_finite_weights,
    verify_signatures_preserved,
)
from tfx_model_pruning.engine.finetune import EpochProgress, FineTuneResult, distribution_strategy, require_learned
from tfx_model_pruning.engine.prune import SIZE_FIGURES, weight_and_size_stats
from tfx_model_pruning.engine.recovery import RecoveryRecord
from tfx_model_pruning.engine.transform import transform_preprocessing
from tfx_model_pruning.graph_records import record_scan, records_refusals
from tfx_model_pruning.user_module import load_from

INPUT_FN_NAME = "input_fn"
# Examples per batch of the evaluations during fine-tuning (none of them trains).
EVAL_BATCH_SIZE = 256


class Executor(base_executor.BaseExecutor):
    @records_refusals("RetrainComponent")
    def Do(
        self,
        input_dict: dict[str, list[types.Artifact]],
        output_dict: dict[str, list[types.Artifact]],
        exec_properties: dict[str, Any],
    ) -> None:
        module = load_from(exec_properties)  # before loading the model: it may register its classes
        config = FineTuneConfig.model_validate_json(exec_properties[specs.FINE_TUNE_CONFIG_KEY])
        examples = input_dict[specs.EXAMPLES_KEY]
        train_files = split_files(examples, config.train_split)
        eval_files = split_files(examples, config.eval_split)
        output_model = artifact_utils.get_single_instance(output_dict[specs.OUTPUT_MODEL_KEY])

        allow_unsafe = bool(exec_properties.get(specs.ALLOW_UNSAFE_LAYERS_KEY))
        allow_ops = allowed_ops(exec_properties)
        strategy = distribution_strategy(config.strategy)
        with strategy.scope():  # the weights (and later the optimizer's) made on every replica
            input_uri = artifact_utils.get_single_uri(input_dict[specs.INPUT_MODEL_KEY])
            loaded = load_model(input_uri, allow_unsafe, allow_ops)
        require_finite_weights(loaded.model, f"the model to fine-tune ({loaded.path})")
        if not config.fine_tunes:
            self._pass_on_unchanged(loaded, config, output_model, allow_ops)
            return
        user_input_fn = getattr(module, INPUT_FN_NAME, None)
        make_dataset = user_input_fn or examples_dataset
        options = {}
        if input_dict.get(specs.TRANSFORM_GRAPH_KEY):
            transform_uri = artifact_utils.get_single_uri(input_dict[specs.TRANSFORM_GRAPH_KEY])
            if user_input_fn is not None:
                raise ValueError(f"give either transform_graph or a module with {INPUT_FN_NAME}, not both")
            options["preprocessing"] = transform_preprocessing(transform_uri, allow_ops)
        train = make_dataset(
            file_paths=train_files,
            model=loaded.model,
            label_key=config.label_key,
            batch_size=config.batch_size,
            shuffle_buffer=config.shuffle_buffer,
            seed=config.seed,
            **options,
        )
        evaluation = make_dataset(
            file_paths=eval_files,
            model=loaded.model,
            label_key=config.label_key,
            # Evaluated again and again while fine-tuning: whole batches, parsed once.
            batch_size=max(config.batch_size, EVAL_BATCH_SIZE),
            shuffle_buffer=0,
            seed=config.seed,
            **options,
        ).cache()
        teacher = parent = None
        with strategy.scope():
            if config.distillation is not None:
                if not input_dict.get(specs.TEACHER_MODEL_KEY):
                    raise ValueError("distillation is configured but no teacher_model is connected")
                teacher = load_model(
                    artifact_utils.get_single_uri(input_dict[specs.TEACHER_MODEL_KEY]), allow_unsafe, allow_ops
                )
            if input_dict.get(specs.PARENT_MODEL_KEY):
                parent_uri = artifact_utils.get_single_uri(input_dict[specs.PARENT_MODEL_KEY])
                same = teacher is not None and parent_uri == artifact_utils.get_single_uri(
                    input_dict[specs.TEACHER_MODEL_KEY]
                )
                parent = teacher if same else load_model(parent_uri, allow_unsafe, allow_ops)
        with strategy.scope():
            result = fine_tune(
                loaded.model,
                train,
                evaluation,
                config,
                loaded.masks,
                teacher=teacher.model if teacher is not None else None,
                parent=parent.model if parent is not None else None,
                verbose=0,  # the epochs go to the progress logger instead
                callbacks=[] if config.until_recovered else [EpochProgress(config.epochs)],
                # A fresh Adam on the configured schedule, not the one restored from the Trainer's save.
                optimizer="fresh",
            )
        # A diverged fine-tune is the usual way NaN reaches a model; nothing after this may save it.
        require_finite_weights(
            loaded.model, f"the fine-tuned model (fine-tuning diverged: final loss {_final_loss(result.history)})"
        )
        require_learned(result)  # nor a model that ended where a uniform guess starts

        model_dir = path_utils.serving_model_dir(output_model.uri)
        with strategy.scope():  # saving recompiles the model: its metrics are made where its weights are
            loaded.save(loaded.model, model_dir, result.masks)
        record = {
            "config": config.model_dump(),
            "loss": result.loss,
            "learning_rate": result.learning_rate,
            "history": result.history,
            "recovery": result.recovery.to_json() if result.recovery is not None else None,
        }
        stats = _record_saved(loaded, result.masks, output_model, allow_ops, record, fine_tuned=True)
        if result.recovery is not None:
            record_recovery(output_model, result.recovery)
        logging.info("Fine-tuned %s; sparsity of pruned layers %.4f", loaded.path, stats["masked_sparsity"])
        progress.figure(_key_figure(result, stats["masked_sparsity"]))

    def _pass_on_unchanged(self, loaded, config: FineTuneConfig, output_model: types.Artifact, allow_ops) -> None:
        """``epochs: 0``: the pruned model, saved as it came, recorded as not fine-tuned."""
        loaded.save(loaded.model, path_utils.serving_model_dir(output_model.uri), loaded.masks)
        record = {"config": config.model_dump(), "reason": files.NOT_FINE_TUNED}
        stats = _record_saved(loaded, loaded.masks, output_model, allow_ops, record, fine_tuned=False)
        output_model.set_string_custom_property("recovery_summary", files.NOT_FINE_TUNED)
        logging.info("Not fine-tuned (retrain.epochs 0): %s passed on as pruned", loaded.path)
        progress.figure(f"{files.NOT_FINE_TUNED}; sparsity {stats['masked_sparsity']:.2f}")


def _record_saved(loaded, masks, output_model: types.Artifact, allow_ops, record: dict, fine_tuned: bool) -> dict:
    """What every saved output carries: its signatures checked, fine_tuning.json and the sizes
    beside it, and its sparsity, whether it was fine-tuned and its graph scan in MLMD."""
    model_dir = path_utils.serving_model_dir(output_model.uri)
    verify_signatures_preserved(loaded.path, model_dir)
    stats = weight_and_size_stats(loaded.model, masks or None, model_dir)
    write_json(output_model.uri, files.FINE_TUNING_JSON, {**record, files.FINE_TUNED: fine_tuned, "weights": stats})
    write_json(output_model.uri, files.MODEL_SIZES_JSON, {key: stats[key] for key in SIZE_FIGURES})
    output_model.set_float_custom_property("sparsity", stats["masked_sparsity"])
    output_model.set_int_custom_property(files.FINE_TUNED, int(fine_tuned))
    record_scan(output_model, model_dir, allow_ops)
    return stats


def record_recovery(artifact: types.Artifact, recovery: RecoveryRecord) -> None:
    """What fine-tuning recovered and why it stopped, as the model artifact's MLMD custom properties."""
    artifact.set_string_custom_property("recovery_summary", recovery.summary())
    artifact.set_string_custom_property("recovery_stop_reason", recovery.stop_reason)
    artifact.set_int_custom_property("recovery_steps", recovery.steps)
    artifact.set_int_custom_property("recovery_best_step", recovery.best_step)
    artifact.set_int_custom_property("recovery_evaluations", len(recovery.evaluations))
    if recovery.metric is not None:
        artifact.set_string_custom_property("recovery_metric", recovery.metric)
        artifact.set_float_custom_property("recovery_best", recovery.best.metric)
        artifact.set_float_custom_property("recovery_last", recovery.last.metric)
    if recovery.parent is not None:
        artifact.set_float_custom_property("recovery_parent", recovery.parent)
        artifact.set_float_custom_property("recovery_target", recovery.target)


def _key_figure(result: FineTuneResult, sparsity: float) -> str:
    """What fine-tuning recovered and why it stopped (or the last epoch's eval figures), and the sparsity kept."""
    kept = f"; sparsity {sparsity:.2f}" if sparsity else ""
    if result.recovery is not None:
        return result.recovery.summary() + kept
    history = result.history
    evaluated = {name.removeprefix("val_"): values[-1] for name, values in history.items() if name.startswith("val_")}
    shown = evaluated or {"train loss": history["loss"][-1]} if history.get("loss") else evaluated
    figures = ", ".join(f"{name} {value:.4g}" for name, value in sorted(shown.items(), key=lambda kv: kv[0] == "loss"))
    return f"{'eval ' if evaluated else ''}{figures}" + kept


def _final_loss(history: dict[str, list[float]]) -> str:
    losses = history.get("loss") or []
    return f"{losses[-1]:.6g}" if losses else "not recorded"
