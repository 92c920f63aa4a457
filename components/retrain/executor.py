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
from tfx_model_pruning.engine import (
    FineTuneConfig,
    examples_dataset,
    fine_tune,
    load_model,
    progress,
    require_finite_weights,
    verify_signatures_preserved,
)
from tfx_model_pruning.engine.finetune import EpochProgress, distribution_strategy, fresh_adam, require_learned
from tfx_model_pruning.engine.prune import SIZE_FIGURES, weight_and_size_stats
from tfx_model_pruning.engine.transform import transform_preprocessing
from tfx_model_pruning.user_module import load_from

INPUT_FN_NAME = "input_fn"


class Executor(base_executor.BaseExecutor):
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
        strategy = distribution_strategy(config.strategy)
        with strategy.scope():  # the weights (and later the optimizer's) made on every replica
            loaded = load_model(artifact_utils.get_single_uri(input_dict[specs.INPUT_MODEL_KEY]), allow_unsafe)
        require_finite_weights(loaded.model, f"the model to fine-tune ({loaded.path})")
        user_input_fn = getattr(module, INPUT_FN_NAME, None)
        make_dataset = user_input_fn or examples_dataset
        options = {}
        if input_dict.get(specs.TRANSFORM_GRAPH_KEY):
            transform_uri = artifact_utils.get_single_uri(input_dict[specs.TRANSFORM_GRAPH_KEY])
            if user_input_fn is not None:
                raise ValueError(f"give either transform_graph or a module with {INPUT_FN_NAME}, not both")
            options["preprocessing"] = transform_preprocessing(transform_uri)
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
            batch_size=config.batch_size,
            shuffle_buffer=0,
            seed=config.seed,
            **options,
        )
        teacher = None
        if config.distillation is not None:
            if not input_dict.get(specs.TEACHER_MODEL_KEY):
                raise ValueError("distillation is configured but no teacher_model is connected")
            teacher_uri = artifact_utils.get_single_uri(input_dict[specs.TEACHER_MODEL_KEY])
            with strategy.scope():
                teacher = load_model(teacher_uri, allow_unsafe).model
        with strategy.scope():
            result = fine_tune(
                loaded.model,
                train,
                evaluation,
                config,
                loaded.masks,
                teacher=teacher,
                verbose=0,  # the epochs go to the progress logger instead
                callbacks=[EpochProgress(config.epochs)],
                # A fresh Adam at the configured rate, not the one restored from the Trainer's save.
                optimizer=fresh_adam(loaded.model, config.learning_rate),
            )
        # A diverged fine-tune is the usual way NaN reaches a model; nothing after this may save it.
        require_finite_weights(
            loaded.model, f"the fine-tuned model (fine-tuning diverged: final loss {_final_loss(result.history)})"
        )
        require_learned(result)  # nor a model that ended where a uniform guess starts

        model_dir = path_utils.serving_model_dir(output_model.uri)
        with strategy.scope():  # saving recompiles the model: its metrics are made where its weights are
            loaded.save(loaded.model, model_dir, result.masks)
        verify_signatures_preserved(loaded.path, model_dir)
        stats = weight_and_size_stats(loaded.model, result.masks or None, model_dir)
        record = {"config": config.model_dump(), "loss": result.loss, "history": result.history, "weights": stats}
        write_json(output_model.uri, files.FINE_TUNING_JSON, record)
        write_json(output_model.uri, files.MODEL_SIZES_JSON, {key: stats[key] for key in SIZE_FIGURES})
        output_model.set_float_custom_property("sparsity", stats["masked_sparsity"])
        logging.info("Fine-tuned %s; sparsity of pruned layers %.4f", loaded.path, stats["masked_sparsity"])
        progress.figure(_key_figure(result.history, stats["masked_sparsity"]))


def _key_figure(history: dict[str, list[float]], sparsity: float) -> str:
    """The last epoch's validation figures (or its train loss) and the sparsity kept."""
    evaluated = {name.removeprefix("val_"): values[-1] for name, values in history.items() if name.startswith("val_")}
    shown = evaluated or {"train loss": history["loss"][-1]} if history.get("loss") else evaluated
    figures = ", ".join(f"{name} {value:.4g}" for name, value in sorted(shown.items(), key=lambda kv: kv[0] == "loss"))
    return f"{'eval ' if evaluated else ''}{figures}" + (f"; sparsity {sparsity:.2f}" if sparsity else "")


def _final_loss(history: dict[str, list[float]]) -> str:
    losses = history.get("loss") or []
    return f"{losses[-1]:.6g}" if losses else "not recorded"
