"""PruneComponent: magnitude-prunes a trained Keras model, keeping its serving signatures."""

from __future__ import annotations

from typing import Optional, Sequence

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from components.artifacts import PruningReport
from components.engine.config import PruningConfig
from components.prune import executor


class PruneComponentSpec(ComponentSpec):
    PARAMETERS = {executor.PRUNING_CONFIG_KEY: ExecutionParameter(type=str)}
    # TFX forbids one key in both INPUTS and OUTPUTS; the constructor still calls it `model`.
    INPUTS = {
        executor.INPUT_MODEL_KEY: ChannelParameter(type=standard_artifacts.Model),
        executor.EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples, optional=True),
    }
    OUTPUTS = {
        executor.OUTPUT_MODEL_KEY: ChannelParameter(type=standard_artifacts.Model),
        executor.PRUNING_REPORT_KEY: ChannelParameter(type=PruningReport),
    }


class PruneComponent(base_component.BaseComponent):
    """Prunes the smallest-magnitude kernel weights of a trained tf-keras model to exact zeros.

    Kernels keep their shapes; Dense, convolution, recurrent and embedding kernels are pruned,
    biases and normalisation weights are not. Masks are stored in the output SavedModel
    (``assets.extra/pruning_masks.npz``) so ``RetrainComponent`` keeps the zeros at zero. The
    output model has the input's serving signatures, so the stock Pusher, TFMA and TF Serving
    take it unchanged.

    Usage::

        prune = PruneComponent(
            model=trainer.outputs["model"],
            examples=example_gen.outputs["examples"],
            target_sparsity=0.8,              # 80% of the targeted weights become zeros
            scope="global",                   # one magnitude cut across layers ("per_layer": each layer)
            protected_layers=["embedding.*"], # names or regexes never pruned
        )
        prune.outputs["model"]           # the pruned Model
        prune.outputs["pruning_report"]  # report.json + summary.md

    Args:
      model: Channel of a ``Model`` holding a tf-keras SavedModel (e.g. a Trainer's output).
      examples: Optional ``Examples`` channel, for data-driven criteria; magnitude pruning
        does not read it.
      target_sparsity: Fraction in (0, 1) of targeted kernel weights set to zero.
      magnitude_threshold: Alternative to ``target_sparsity``: zero every targeted weight with
        ``|w| < magnitude_threshold``.
      scope: ``"global"`` or ``"per_layer"`` allocation of ``target_sparsity``.
      protected_layers: Layer names or regular expressions (full match) left dense. A pattern
        that matches no layer is an error.
      protect_output_layer: Leave the last weighted layer before each output dense (default).

    Raises:
      pydantic.ValidationError: at construction, for a sparsity outside (0, 1), both or
        neither of ``target_sparsity`` and ``magnitude_threshold``, or an invalid regex.
    """

    SPEC_CLASS = PruneComponentSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(
        self,
        model: types.BaseChannel,
        examples: Optional[types.BaseChannel] = None,
        *,
        target_sparsity: Optional[float] = None,
        magnitude_threshold: Optional[float] = None,
        scope: str = "global",
        protected_layers: Sequence[str] = (),
        protect_output_layer: bool = True,
    ):
        config = PruningConfig(
            target_sparsity=target_sparsity,
            magnitude_threshold=magnitude_threshold,
            scope=scope,
            protected_layers=list(protected_layers),
            protect_output_layer=protect_output_layer,
        )
        spec = PruneComponentSpec(
            input_model=model,
            examples=examples,
            pruning_config=config.model_dump_json(),
            model=types.Channel(type=standard_artifacts.Model),
            pruning_report=types.Channel(type=PruningReport),
        )
        super().__init__(spec=spec)
