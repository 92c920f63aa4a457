"""PruneComponent: prunes a trained Keras model (magnitude, structured, layer removal), keeping its signatures."""

from __future__ import annotations

import inspect
import typing
from typing import Any, Mapping, Optional, Sequence, Union

from pydantic import TypeAdapter
from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from tfx_model_pruning import standard_component_specs as specs
from tfx_model_pruning.artifacts import PruningReport
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
from tfx_model_pruning.engine.config import (
    AnyPruningConfig,
    PruningConfigs,
    reads_examples,
)
from tfx_model_pruning.prune import executor
from tfx_model_pruning.user_module import attach, load_user_module


class PruneComponentSpec(ComponentSpec):
    PARAMETERS = {
        specs.PRUNING_CONFIG_KEY: ExecutionParameter(type=str),
        specs.ALLOW_UNSAFE_LAYERS_KEY: ExecutionParameter(type=int, optional=True),
        specs.ALLOW_OPS_KEY: ExecutionParameter(type=str, optional=True),
        specs.LATENCY_REPEATS_KEY: ExecutionParameter(type=int, optional=True),
        specs.MODULE_FILE_KEY: ExecutionParameter(type=str, optional=True),
        specs.MODULE_PATH_KEY: ExecutionParameter(type=str, optional=True),
    }
    # TFX forbids one key in both INPUTS and OUTPUTS; the constructor still calls it `model`.
    INPUTS = {
        specs.INPUT_MODEL_KEY: ChannelParameter(type=standard_artifacts.Model),
        specs.EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples, optional=True),
    }
    OUTPUTS = {
        specs.OUTPUT_MODEL_KEY: ChannelParameter(type=standard_artifacts.Model),
        specs.PRUNING_REPORT_KEY: ChannelParameter(type=PruningReport),
    }


class PruneComponent(base_component.BaseComponent):
    """Prunes a trained Keras model: zeroes weights, or physically removes units and filters.

    ``method="magnitude"`` (default) sets the smallest-magnitude kernel weights to exact zeros;
    kernels keep their shapes (Dense, convolution, recurrent and embedding kernels; biases and
    normalisation weights are left alone). Masks are stored in the output SavedModel
    (``assets.extra/pruning_masks.npz``) so ``RetrainComponent`` keeps the zeros at zero, and
    the output keeps the input's serving signatures, so the stock Pusher, TFMA and TF Serving
    take it unchanged.

    ``method="structured"`` removes whole Dense units and convolution filters and rebuilds a
    smaller model, following channels through BatchNorm, activations, pooling, ``Flatten``,
    residual ``Add``s (coupled channels go together) and ``Concatenate``; layers it does not
    understand are barriers whose channels keep their width (listed in the report). The
    serving signatures are rebuilt for the smaller model and proven on ``examples`` (required).

    ``method="wanda"`` or ``"sparsegpt"`` prunes in one shot from calibration examples (the
    ``train`` split), layer by layer on the inputs each layer receives, for models too costly to
    fine-tune (pair with ``retrain: {epochs: 0}``); sparsegpt also updates the kept weights to
    make up for the removed ones (``WandaPruningConfig``, ``SparseGPTPruningConfig``).

    ``method="layer_removal"`` removes whole layers and residual blocks, one at a time, each
    kept only while a short fine-tune holds the validation metric within ``tolerance``.

    ``goal="latency"`` (or ``"size"``) with ``target_ratio`` names what the model should become
    instead of a method: latency is structured pruning, size is magnitude pruning; the report says
    which and why (``GoalPruningConfig``).

    Usage::

        faster = PruneComponent(
            model=trainer.outputs["model"],
            examples=example_gen.outputs["examples"],
            goal="latency",                   # structured: units/filters/heads physically removed
            target_ratio=0.5,
        )

        prune = PruneComponent(
            model=trainer.outputs["model"],
            examples=example_gen.outputs["examples"],
            config=StructuredPruningConfig(prune_fraction=0.5, criterion="l1"),
            module_file="extensions.py",      # your register_criterion / register_layer_handler calls
        )

        prune = PruneComponent(
            model=trainer.outputs["model"],
            examples=example_gen.outputs["examples"],
            target_sparsity=0.8,              # 80% of the targeted weights become zeros
            scope="global",                   # one magnitude cut across layers ("per_layer": each layer)
            protected_layers=["embedding.*"], # names or regexes never pruned
        )
        smaller = PruneComponent(
            model=trainer.outputs["model"],
            examples=example_gen.outputs["examples"],
            method="structured",
            prune_fraction=0.5,               # remove half of the removable units/filters
            criterion="l1",
            min_units=4,
        )
        prune.outputs["model"]           # the pruned Model
        prune.outputs["pruning_report"]  # report.json + summary.md

    Args:
      model: Channel of a ``Model`` holding a SavedModel (e.g. a Trainer's output), saved by
        tf-keras ``model.save``, by ``tf.saved_model.save`` as TFX's examples do, or by Keras 3
        (``model.keras``, ``model.export``). A model without a Keras layer graph is magnitude-pruned
        by variable name; the methods that need the graph refuse it before any work, naming the
        one-line module change.
      examples: ``Examples`` channel; structured pruning proves the rebuilt signatures on the first
        examples of its ``train`` split; data-driven criteria, sensitivity and layer removal read
        it. Magnitude pruning by |w| does not.
      config: A ``PruningConfig``, ``StructuredPruningConfig``, ``WandaPruningConfig``, ``SparseGPTPruningConfig``,
        ``LayerRemovalConfig`` or
        ``GoalPruningConfig`` (or a mapping of one, ``method`` picking the model, ``goal`` implying
        the last); the keyword options below are its fields, and override it.

    Raises:
      pydantic.ValidationError: at construction, for a sparsity or fraction outside (0, 1),
        both or neither of ``target_sparsity`` and ``magnitude_threshold``, an option of the
        other method, an invalid regex or a criterion nobody registered.
      TypeError: an option no pruning config has (the closest one named).
      ValueError: a method or criterion that reads examples without ``examples``.

    At run time the input model is refused, before any work, when it is unreadable, when its graphs
    act on the machine (file I/O, Python callbacks, network: ``UnsafeGraphError``, ``allow_ops``),
    holds code (``allow_unsafe_layers``) or has NaN or infinite weights (``NonFiniteWeightsError``).
    """

    SPEC_CLASS = PruneComponentSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(
        self,
        model: types.BaseChannel,
        examples: Optional[types.BaseChannel] = None,
        config: Union[PruningConfigs, Mapping[str, Any], None] = None,
        *,
        latency_repeats: int = 0,
        allow_unsafe_layers: bool = False,
        allow_ops: Sequence[str] = (),
        module_file: Optional[str] = None,
        module_path: Optional[str] = None,
        **options: Any,
    ):
        load_user_module(module_file, module_path)  # its criteria must be registered to validate
        pruning = build_config(TypeAdapter(AnyPruningConfig), MODELS, config, options, "PruneComponent")
        if latency_repeats < 0:
            raise ValueError(f"latency_repeats must be 0 (not timed) or more, got {latency_repeats}")
        if examples is None:
            needs = reads_examples(pruning)
            if needs:
                raise ValueError(f"{needs}: connect `examples`")
        spec = PruneComponentSpec(
            input_model=model,
            examples=examples,
            pruning_config=pruning.model_dump_json(),
            allow_unsafe_layers=int(allow_unsafe_layers),
            allow_ops=allow_ops_parameter(allow_ops, "PruneComponent"),
            latency_repeats=latency_repeats,
            module_file=module_file,
            module_path=module_path,
            model=types.Channel(type=standard_artifacts.Model),
            pruning_report=types.Channel(type=PruningReport),
        )
        super().__init__(spec=spec)
        attach(self, module_file, module_path)


MODELS = typing.get_args(PruningConfigs)
SHARED = {
    "latency_repeats": SharedArgument(
        int,
        0,
        "Time the model before and after (in alternation, batch 1 and 64) this many times for the "
        "report; 0 leaves latency out: timing a large model takes longer than pruning it, and "
        "EvaluatorGate times the candidate when ``max_latency_ms`` makes latency part of the release.",
    ),
    "allow_unsafe_layers": ALLOW_UNSAFE_LAYERS,
    "allow_ops": ALLOW_OPS,
    "module_file": MODULE_FILE,
    "module_path": MODULE_PATH,
}
PruneComponent.__init__.__signature__ = component_signature(
    [
        inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=types.BaseChannel),
        inspect.Parameter(
            "examples", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=Optional[types.BaseChannel]
        ),
    ],
    MODELS,
    Union[PruningConfigs, Mapping[str, Any]],
    SHARED,
)
document(PruneComponent, MODELS, SHARED)
