"""RetrainComponent: fine-tunes a pruned model on the train split, keeping pruned weights at zero."""

from __future__ import annotations

import os
from typing import Mapping, Optional, Union

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from tfx_model_pruning import standard_component_specs as specs
from tfx_model_pruning.engine.config import DistillationConfig, FineTuneConfig, GradualPruningSchedule
from tfx_model_pruning.retrain import executor


class RetrainComponentSpec(ComponentSpec):
    PARAMETERS = {
        specs.FINE_TUNE_CONFIG_KEY: ExecutionParameter(type=str),
        specs.MODULE_FILE_KEY: ExecutionParameter(type=str, optional=True),
        specs.ALLOW_UNSAFE_LAYERS_KEY: ExecutionParameter(type=int, optional=True),
    }
    # TFX forbids one key in both INPUTS and OUTPUTS; the constructor still calls it `model`.
    INPUTS = {
        specs.INPUT_MODEL_KEY: ChannelParameter(type=standard_artifacts.Model),
        specs.EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
        specs.TEACHER_MODEL_KEY: ChannelParameter(type=standard_artifacts.Model, optional=True),
        specs.TRANSFORM_GRAPH_KEY: ChannelParameter(type=standard_artifacts.TransformGraph, optional=True),
    }
    OUTPUTS = {specs.OUTPUT_MODEL_KEY: ChannelParameter(type=standard_artifacts.Model)}


class RetrainComponent(base_component.BaseComponent):
    """Fine-tunes a pruned model; weights pruned upstream stay exactly zero.

    Reads TFRecord ``tf.Example``s of the ``train`` split (any ExampleGen) and validates on
    ``eval``. By default each model input is fed the feature of the same name and the label is
    read from ``label_key``. A model trained on tf.Transform output is wired as the TFX
    ``Trainer`` is: ``examples=transform.outputs["transformed_examples"]`` and
    ``label_key="<label>_xf"`` (what the transform calls the label), and/or
    ``transform_graph=transform.outputs["transform_graph"]``, with which raw examples are
    transformed first (examples already carrying the model's inputs are used as they are).
    A ``module_file`` defining ``input_fn`` replaces all that, as with the TFX Trainer::

        def input_fn(file_paths, model, label_key, batch_size, shuffle_buffer, seed) -> tf.data.Dataset:
            ...  # batches of (features, label)

    The masks stored in the model by ``PruneComponent`` are re-applied after every optimizer
    step. The output keeps the input's serving signatures; ``fine_tuning.json`` next to it
    holds the training history.

    Fails, and saves nothing, when the input or the fine-tuned weights hold NaN or infinity (a
    diverged fine-tune: ``NonFiniteWeightsError`` with the final loss), when the data stop
    training (``FineTuneDataError``: a label out of range, in one line), or when a model with
    several outputs has no ``module_file`` to give it a label per output.

    Models saved with ``tf.saved_model.save`` (as TFX's examples do) are fine-tuned through
    their restored call function; they carry no loss, so ``loss`` must be given, and they
    cannot be pruned gradually or distilled (both need the Keras layers).

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
            label_key="species",
            epochs=20,
            learning_rate=1e-3,
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
      label_key: Name of the label feature.
      epochs, steps_per_epoch, batch_size, learning_rate: Training budget (Adam optimizer);
        ``steps_per_epoch`` defaults to one pass over the train split.
      loss: Keras loss class name (e.g. ``"SparseCategoricalCrossentropy"``); default: the loss
        the model was compiled with. ``from_logits`` goes with it; by default it is read from the
        model (its final activation), and a value that contradicts the model fails before training.
      module_file: Optional path to a Python file defining ``input_fn``.
      gradual_pruning: Optional ``GradualPruningSchedule`` (or dict): prune further while
        fine-tuning, polynomial decay from ``initial_sparsity`` to ``final_sparsity`` between
        ``begin_step`` and ``end_step`` (batches), masks updated every ``frequency`` steps inside
        the compiled training step. A schedule that cannot finish within
        ``epochs * steps_per_epoch`` is an error (at construction when ``steps_per_epoch`` is set).
      distillation: Optional ``DistillationConfig`` (or dict: ``temperature``, ``alpha`` = weight
        of the hard-label loss) to distil from ``teacher_model`` (the unpruned model; logits).
      teacher_model: ``Model`` channel of the teacher, required with ``distillation``.
      allow_unsafe_layers: Load models that contain ``Lambda`` or custom layers, whose loading
        runs code shipped with the model. Off by default: such models are refused.
      train_split, eval_split: Split names in ``examples``.
      seed, shuffle_buffer: Shuffling of the train split (seed 0, a buffer of 1024 examples).
    """

    SPEC_CLASS = RetrainComponentSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(
        self,
        model: types.BaseChannel,
        examples: types.BaseChannel,
        *,
        label_key: str,
        epochs: int = 10,
        steps_per_epoch: Optional[int] = None,
        batch_size: int = 32,
        learning_rate: float = 1e-3,
        loss: Optional[str] = None,
        from_logits: Optional[bool] = None,
        module_file: Optional[str] = None,
        train_split: str = "train",
        eval_split: str = "eval",
        seed: int = 0,
        shuffle_buffer: int = 1024,
        gradual_pruning: Optional[Union[GradualPruningSchedule, Mapping]] = None,
        distillation: Optional[Union[DistillationConfig, Mapping]] = None,
        teacher_model: Optional[types.BaseChannel] = None,
        transform_graph: Optional[types.BaseChannel] = None,
        allow_unsafe_layers: bool = False,
    ):
        config = FineTuneConfig(
            label_key=label_key,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            batch_size=batch_size,
            learning_rate=learning_rate,
            loss=loss,
            from_logits=from_logits,
            train_split=train_split,
            eval_split=eval_split,
            seed=seed,
            shuffle_buffer=shuffle_buffer,
            gradual_pruning=gradual_pruning,
            distillation=distillation,
        )
        if config.distillation is not None and teacher_model is None:
            raise ValueError("distillation needs a teacher_model (usually the unpruned baseline)")
        if module_file is not None and transform_graph is not None:
            raise ValueError("give either transform_graph or a module_file with input_fn, not both")
        if module_file is not None and "://" not in module_file and not os.path.isfile(module_file):
            raise FileNotFoundError(f"module_file {module_file!r} does not exist")
        super().__init__(
            spec=RetrainComponentSpec(
                input_model=model,
                examples=examples,
                teacher_model=teacher_model,
                transform_graph=transform_graph,
                fine_tune_config=config.model_dump_json(),
                module_file=module_file,
                allow_unsafe_layers=int(allow_unsafe_layers),
                model=types.Channel(type=standard_artifacts.Model),
            )
        )
