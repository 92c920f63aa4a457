"""PruneComponent: magnitude-prunes a trained Keras model, keeping its serving signatures."""

from __future__ import annotations

from typing import Optional, Sequence

from pydantic import TypeAdapter
from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from tfx_model_pruning import standard_component_specs as specs
from tfx_model_pruning.artifacts import PruningReport
from tfx_model_pruning.engine.config import AnyPruningConfig
from tfx_model_pruning.prune import executor


class PruneComponentSpec(ComponentSpec):
    PARAMETERS = {
        specs.PRUNING_CONFIG_KEY: ExecutionParameter(type=str),
        specs.ALLOW_UNSAFE_LAYERS_KEY: ExecutionParameter(type=int, optional=True),
        specs.LATENCY_REPEATS_KEY: ExecutionParameter(type=int, optional=True),
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

    Usage::

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
        tf-keras ``model.save`` or by ``tf.saved_model.save`` as TFX's examples do. The latter
        has no Keras layer graph: magnitude pruning works on it (kernels by variable name, the
        output layer found in the serving graph); the other methods, the taylor criterion and
        ``scope="sensitivity"`` refuse it before any work, naming the one-line module change.
      examples: ``Examples`` channel; structured pruning checks the rebuilt signatures on the
        first examples of its ``train`` split. Magnitude pruning does not read it.
      method: ``"magnitude"`` or ``"structured"``.
      target_sparsity: (magnitude) fraction in (0, 1) of targeted kernel weights set to zero.
      magnitude_threshold: (magnitude) instead of ``target_sparsity``: zero every targeted
        weight with ``|w| < magnitude_threshold``.
      n_m: (magnitude) instead of either: an N:M pattern such as ``"2:4"``, keeping the N
        largest of every M consecutive weights along each kernel's input axis.
      scope: ``"global"`` (default for magnitude) or ``"per_layer"`` (default for structured);
        magnitude also takes ``"sensitivity"``: every layer is pruned alone at each of
        ``sensitivity_levels`` and its loss measured on the eval split, and per-layer sparsities
        that reach ``target_sparsity`` with the least predicted loss are allocated from those
        curves (needs ``examples`` and ``label_key``; the report gets ``sensitivity.png``).
      sensitivity_levels: Sparsities tried per layer (default 0.3, 0.5, 0.7, 0.8, 0.9, 0.95).
      tolerance, fine_tune_steps, max_removals: (``method="layer_removal"``) greedy removal of
        whole layers whose output has their input's shape and of residual blocks (collapsed to
        their skip path): the least harmful candidate on the eval split is removed, the model
        fine-tuned for ``fine_tune_steps`` batches of the train split, and the removal kept only
        while the validation metric drops by at most ``tolerance``; otherwise it is rolled back
        and the search stops. Needs ``examples`` and ``label_key``; every step is reported.
      learning_rate, batch_size: (``method="layer_removal"``) of that fine-tuning (1e-3, 32).
      latency_repeats: Time the model before and after (in alternation, batch 1 and 64) this
        many times for the report; 0 (default) leaves latency out: timing a large model takes
        longer than pruning it, and EvaluatorGate times the candidate when ``max_latency_ms``
        makes latency part of the release.
      allow_unsafe_layers: Load models that contain ``Lambda`` or custom layers, whose loading
        runs code shipped with the model. Off by default: such models are refused.
      protected_layers: Layer names or regular expressions (full match) left untouched. A
        pattern that matches no layer is an error.
      protect_output_layer: (magnitude) leave the last weighted layer before each output dense
        (default). Structured pruning never changes a model output's width.
      prune_fraction: (structured) fraction in (0, 1) of removable units/filters to remove.
      flops_budget: (structured, ``scope="sensitivity"``) keep at most this fraction of the dense
        model's FLOPs: every coupled group is pruned alone at each of ``sensitivity_levels``
        (default 0.25, 0.5, 0.75) and its eval-split loss measured, then the cheapest steps in
        loss per FLOP are taken until the rebuilt model fits the budget. A budget that even the
        highest levels cannot meet is an error before any curve is measured.
      criterion: structured: ``"l1"`` / ``"l2"`` (weight norms), ``"apoz"``, ``"mean_activation"``
        or ``"taylor"`` (measured on train examples); magnitude: ``"magnitude"`` (default) or
        ``"taylor"`` (|w x gradient| per weight).
      sample_size: Train examples the data-driven criteria read (default 256).
      label_key: Label feature, required by the taylor criterion.
      loss: (magnitude, taylor) Keras loss class the taylor criterion differentiates, for a model
        that carries no compiled loss (``tf.saved_model.save``, Keras 3's ``model.export``).
      min_units: (structured) fewest units/filters any layer keeps.
      width_multiple: (structured) round each pruned group's kept width up to a multiple of this
        (default 8; 1 keeps the exact widths). Groups keeping fewer than this are not rounded.
      min_removed_share: (structured) fail, before anything is saved, when less than this share
        of all Dense/convolution channels was removed (barriers kept the rest), e.g. 0.4 with
        ``prune_fraction=0.5``; by default the summary only warns.

    Raises:
      pydantic.ValidationError: at construction, for a sparsity or fraction outside (0, 1),
        both or neither of ``target_sparsity`` and ``magnitude_threshold``, an option of the
        other method, or an invalid regex.
      ValueError: structured pruning without ``examples``.

    At run time the input model is refused, before any work, when it is unreadable, holds code
    (``allow_unsafe_layers``) or has NaN or infinite weights (``NonFiniteWeightsError``).
    """

    SPEC_CLASS = PruneComponentSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(
        self,
        model: types.BaseChannel,
        examples: Optional[types.BaseChannel] = None,
        *,
        method: str = "magnitude",
        target_sparsity: Optional[float] = None,
        magnitude_threshold: Optional[float] = None,
        n_m: Optional[str] = None,
        scope: Optional[str] = None,
        protected_layers: Sequence[str] = (),
        protect_output_layer: Optional[bool] = None,
        prune_fraction: Optional[float] = None,
        criterion: Optional[str] = None,
        min_units: Optional[int] = None,
        width_multiple: Optional[int] = None,
        min_removed_share: Optional[float] = None,
        sample_size: Optional[int] = None,
        label_key: Optional[str] = None,
        loss: Optional[str] = None,
        sensitivity_levels: Optional[Sequence[float]] = None,
        flops_budget: Optional[float] = None,
        tolerance: Optional[float] = None,
        fine_tune_steps: Optional[int] = None,
        max_removals: Optional[int] = None,
        learning_rate: Optional[float] = None,
        batch_size: Optional[int] = None,
        latency_repeats: int = 0,
        allow_unsafe_layers: bool = False,
    ):
        options = {
            "method": method,
            "target_sparsity": target_sparsity,
            "magnitude_threshold": magnitude_threshold,
            "n_m": n_m,
            "scope": scope,
            "protected_layers": list(protected_layers),
            "protect_output_layer": protect_output_layer,
            "prune_fraction": prune_fraction,
            "criterion": criterion,
            "min_units": min_units,
            "width_multiple": width_multiple,
            "min_removed_share": min_removed_share,
            "sample_size": sample_size,
            "label_key": label_key,
            "loss": loss,
            "sensitivity_levels": list(sensitivity_levels) if sensitivity_levels is not None else None,
            "flops_budget": flops_budget,
            "tolerance": tolerance,
            "fine_tune_steps": fine_tune_steps,
            "max_removals": max_removals,
            "learning_rate": learning_rate,
            "batch_size": batch_size,
        }
        if latency_repeats < 0:
            raise ValueError(f"latency_repeats must be 0 (not timed) or more, got {latency_repeats}")
        config = TypeAdapter(AnyPruningConfig).validate_python(
            {key: value for key, value in options.items() if value is not None}
        )
        if config.method in ("structured", "layer_removal") and examples is None:
            raise ValueError(f"{config.method} needs `examples` to prove the rebuilt serving signatures")
        needs_examples = config.criterion in ("apoz", "mean_activation", "taylor")
        if getattr(config, "scope", None) == "sensitivity" and examples is None:
            raise ValueError("scope='sensitivity' measures the loss on the eval split: connect `examples`")
        if needs_examples and examples is None:
            raise ValueError(f"criterion {config.criterion!r} reads train examples: connect `examples`")
        spec = PruneComponentSpec(
            input_model=model,
            examples=examples,
            pruning_config=config.model_dump_json(),
            allow_unsafe_layers=int(allow_unsafe_layers),
            latency_repeats=latency_repeats,
            model=types.Channel(type=standard_artifacts.Model),
            pruning_report=types.Channel(type=PruningReport),
        )
        super().__init__(spec=spec)
