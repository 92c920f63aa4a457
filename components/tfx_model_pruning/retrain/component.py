"""RetrainComponent: fine-tunes a pruned model on the train split, keeping pruned weights at zero."""

from __future__ import annotations

import inspect
from typing import Any, Mapping, Optional, Sequence, Union

from pydantic import TypeAdapter
from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from tfx_model_pruning import standard_component_specs as specs
from tfx_model_pruning.component_options import (
    ALLOW_OPS,
    ALLOW_UNSAFE_LAYERS,
    MODULE_FILE,
    MODULE_PATH,
    SharedArgument,
    allow_ops_parameter,
    build_config,
    component_signature,
    document,
)
from tfx_model_pruning.engine.config import FineTuneConfig
from tfx_model_pruning.retrain import executor
from tfx_model_pruning.retrain.executor import INPUT_FN_NAME
from tfx_model_pruning.user_module import attach, load_user_module


class RetrainComponentSpec(ComponentSpec):
    PARAMETERS = {
        specs.FINE_TUNE_CONFIG_KEY: ExecutionParameter(type=str),
        specs.MODULE_FILE_KEY: ExecutionParameter(type=str, optional=True),
        specs.MODULE_PATH_KEY: ExecutionParameter(type=str, optional=True),
        specs.ALLOW_UNSAFE_LAYERS_KEY: ExecutionParameter(type=int, optional=True),
        specs.ALLOW_OPS_KEY: ExecutionParameter(type=str, optional=True),
    }
    # TFX forbids one key in both INPUTS and OUTPUTS; the constructor still calls it `model`.
    INPUTS = {
        specs.INPUT_MODEL_KEY: ChannelParameter(type=standard_artifacts.Model),
        specs.EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
        specs.TEACHER_MODEL_KEY: ChannelParameter(type=standard_artifacts.Model, optional=True),
        specs.PARENT_MODEL_KEY: ChannelParameter(type=standard_artifacts.Model, optional=True),
        specs.TRANSFORM_GRAPH_KEY: ChannelParameter(type=standard_artifacts.TransformGraph, optional=True),
    }
    OUTPUTS = {specs.OUTPUT_MODEL_KEY: ChannelParameter(type=standard_artifacts.Model)}


class RetrainComponent(base_component.BaseComponent):
    """Fine-tunes a pruned model until it has recovered; weights pruned upstream stay exactly zero.

    Without ``epochs``, the ``parent_model`` (the unpruned model) is evaluated once on the eval
    split with ``recovery.metric`` (give the gate's: ``create_pipeline`` does), and fine-tuning
    stops at the first evaluation within ``recovery.tolerance`` of it, when neither the metric
    nor the eval loss improved for ``recovery.patience`` evaluations, or when its budget
    (``recovery.max_steps`` / ``max_epochs`` / ``max_seconds``) is spent; the best evaluation's
    weights are kept. ``fine_tuning.json`` records every evaluation and why it stopped, and the
    output artifact carries the same as ``recovery_*`` custom properties. ``epochs`` runs a
    fixed count instead.

    Reads TFRecord ``tf.Example``s of the ``train`` split (any ExampleGen) and validates on
    ``eval``. By default each model input is fed the feature of the same name and the label is
    read from ``label_key``. A model trained on tf.Transform output is wired as the TFX
    ``Trainer`` is: ``examples=transform.outputs["transformed_examples"]`` and
    ``label_key="<label>_xf"`` (what the transform calls the label), and/or
    ``transform_graph=transform.outputs["transform_graph"]``, with which raw examples are
    transformed first (examples already carrying the model's inputs are used as they are).
    A module (``module_file`` / ``module_path``) defining ``input_fn`` replaces all that, as with the TFX Trainer::

        def input_fn(file_paths, model, label_key, batch_size, shuffle_buffer, seed) -> tf.data.Dataset:
            ...  # batches of (features, label)

    The masks stored in the model by ``PruneComponent`` are re-applied after every optimizer
    step. The output keeps the input's serving signatures; ``fine_tuning.json`` next to it
    holds the training history.

    Fails, and saves nothing, when the input or the fine-tuned weights hold NaN or infinity (a
    diverged fine-tune: ``NonFiniteWeightsError`` with the final loss), when the data stop
    training (``FineTuneDataError``: a label out of range, in one line), or when a model with
    several outputs has no ``module_file`` to give it a label per output.

    Models saved with ``tf.saved_model.save`` (as TFX's examples do) or Keras 3's ``model.export``
    are fine-tuned through their restored call function, ``serve`` endpoint or serving signature;
    they carry no loss, so ``loss`` must be given. Gradual pruning and distillation run in the
    same loop (the teacher may be restored too).

    Usage::

        after_transform = RetrainComponent(
            model=prune.outputs["model"],
            examples=transform.outputs["transformed_examples"],
            transform_graph=transform.outputs["transform_graph"],
            label_key="species_xf",
            loss="SparseCategoricalCrossentropy",  # a tf.saved_model.save model keeps none
            epochs=5,
        )
        retrain = RetrainComponent(
            model=prune.outputs["model"],
            examples=example_gen.outputs["examples"],
            parent_model=trainer.outputs["model"],
            label_key="species",
            recovery={"metric": "SparseCategoricalAccuracy", "tolerance": 0.005},  # until recovered
        )
        fixed = RetrainComponent(
            model=prune.outputs["model"], examples=example_gen.outputs["examples"], label_key="species",
            epochs=20, learning_rate=1e-3,
        )
        gradual = RetrainComponent(
            model=trainer.outputs["model"], examples=example_gen.outputs["examples"], label_key="species",
            epochs=10, steps_per_epoch=50,
            gradual_pruning={"final_sparsity": 0.9, "end_step": 400, "frequency": 20},
            distillation={"temperature": 4.0, "alpha": 0.5}, teacher_model=trainer.outputs["model"],
        )

    Args:
      model: ``Model`` channel with the (pruned) SavedModel.
      examples: ``Examples`` channel with ``train_split`` and ``eval_split``.
      transform_graph: Optional ``TransformGraph`` channel of the Transform the model was
        trained after; its outputs must include every model input.
      teacher_model: ``Model`` channel of the teacher, required with ``distillation`` (usually
        the unpruned model).
      parent_model: ``Model`` channel of the unpruned model whose ``recovery.metric`` fine-tuning
        recovers (default: the teacher; without either, it stops on a plateau or its budget).
      config: A ``FineTuneConfig`` (or a mapping of one); the keyword options below are its
        fields, and override it. ``label_key`` is required here.
    """

    SPEC_CLASS = RetrainComponentSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(
        self,
        model: types.BaseChannel,
        examples: types.BaseChannel,
        config: Union[FineTuneConfig, Mapping[str, Any], None] = None,
        *,
        teacher_model: Optional[types.BaseChannel] = None,
        parent_model: Optional[types.BaseChannel] = None,
        transform_graph: Optional[types.BaseChannel] = None,
        allow_unsafe_layers: bool = False,
        allow_ops: Sequence[str] = (),
        module_file: Optional[str] = None,
        module_path: Optional[str] = None,
        **options: Any,
    ):
        module = load_user_module(module_file, module_path)
        fine_tune = build_config(TypeAdapter(FineTuneConfig), MODELS, config, options, "RetrainComponent")
        if fine_tune.label_key is None:
            raise ValueError("RetrainComponent reads the label from the examples: give label_key")
        if fine_tune.distillation is not None and teacher_model is None:
            raise ValueError("distillation needs a teacher_model (usually the unpruned baseline)")
        if transform_graph is not None and hasattr(module, INPUT_FN_NAME):
            raise ValueError(f"give either transform_graph or a module with {INPUT_FN_NAME}, not both")
        super().__init__(
            spec=RetrainComponentSpec(
                input_model=model,
                examples=examples,
                teacher_model=teacher_model,
                parent_model=parent_model,
                transform_graph=transform_graph,
                fine_tune_config=fine_tune.model_dump_json(),
                module_file=module_file,
                module_path=module_path,
                allow_unsafe_layers=int(allow_unsafe_layers),
                allow_ops=allow_ops_parameter(allow_ops, "RetrainComponent"),
                model=types.Channel(type=standard_artifacts.Model),
            )
        )
        attach(self, module_file, module_path)


MODELS = (FineTuneConfig,)
SHARED = {
    "allow_unsafe_layers": ALLOW_UNSAFE_LAYERS,
    "allow_ops": ALLOW_OPS,
    "module_file": MODULE_FILE._replace(
        doc=MODULE_FILE.doc + f" An ``{INPUT_FN_NAME}`` it defines replaces the default input (above)."
    ),
    "module_path": MODULE_PATH,
}
_channel = inspect.Parameter.POSITIONAL_OR_KEYWORD
RetrainComponent.__init__.__signature__ = component_signature(
    [
        inspect.Parameter("model", _channel, annotation=types.BaseChannel),
        inspect.Parameter("examples", _channel, annotation=types.BaseChannel),
    ],
    MODELS,
    Union[FineTuneConfig, Mapping[str, Any]],
    {
        "teacher_model": SharedArgument(Optional[types.BaseChannel], None, ""),
        "parent_model": SharedArgument(Optional[types.BaseChannel], None, ""),
        "transform_graph": SharedArgument(Optional[types.BaseChannel], None, ""),
        **SHARED,
    },
)
document(RetrainComponent, MODELS, SHARED)
