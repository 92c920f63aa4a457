"""Prune a SavedModel on disk into a new SavedModel with the same serving signatures."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfx_model_pruning.engine.config import (
    LayerRemovalConfig,
    OneShotPruningConfig,
    PruningConfig,
    PruningConfigs,
    StructuredPruningConfig,
)
from tfx_model_pruning.engine.data import parse_sample
from tfx_model_pruning.engine.efficiency import LATENCY_BATCH_SIZES, alternating_latency, efficiency_stats
from tfx_model_pruning.engine.graph import in_layer_graph, leaf_layers
from tfx_model_pruning.engine.importance import Criterion, Taylor, get_criterion
from tfx_model_pruning.engine.keras_names import loss_class
from tfx_model_pruning.engine.layer_removal import remove_layers
from tfx_model_pruning.engine.magnitude import find_prunable_weights, prune_model
from tfx_model_pruning.engine.oneshot import prune_one_shot
from tfx_model_pruning.engine.outputs import resolve_from_logits, takes_from_logits
from tfx_model_pruning.engine.report import directory_size, gzip_size, layer_rows, weight_stats
from tfx_model_pruning.engine.restored import needs_keras_graph, require_keras
from tfx_model_pruning.engine.results import ModelStats, PruningResult
from tfx_model_pruning.engine.saved_model import (
    LoadedModel,
    copy_compile_settings,
    load_model,
    require_finite_weights,
    verify_signatures_preserved,
)
from tfx_model_pruning.engine.sensitivity import allocate, sensitivity_curves, sensitivity_report
from tfx_model_pruning.engine.signatures import rebuild_example_signatures
from tfx_model_pruning.engine.structured import StructuredPruningError, prune_structured


class MissingExamplesError(ValueError):
    """A pruning method needs sample examples and none were given."""


def size_stats(model_dir: str) -> dict[str, int]:
    return {"saved_model_bytes": directory_size(model_dir), "gzip_bytes": gzip_size(model_dir)}


# The figures that compress a model: whoever saved it can record them (``recorded`` below).
SIZE_FIGURES = ("saved_model_bytes", "gzip_bytes", "weights_gzip_bytes")


def weight_and_size_stats(
    model: Any,
    masks: Optional[dict[str, np.ndarray]],
    model_dir: str,
    recorded: Optional[Mapping[str, Any]] = None,
) -> dict[str, Any]:
    """``weight_stats`` of the model and ``size_stats`` of its SavedModel, side by side.

    Each compresses all the weights once (the SavedModel's and the arrays'), which at 50M
    params took most of a prune step; zlib releases the GIL, so the two run on two cores.
    ``recorded`` sizes (``SIZE_FIGURES``, from whoever saved ``model_dir``) are taken instead of
    compressing again when the directory still holds the bytes they were measured on.
    """
    if recorded is not None and set(SIZE_FIGURES) <= set(recorded):
        if recorded["saved_model_bytes"] == directory_size(model_dir):
            return {**weight_stats(model, masks, compress=False), **{key: recorded[key] for key in SIZE_FIGURES}}
    with ThreadPoolExecutor(max_workers=2) as pool:
        sizes = pool.submit(size_stats, model_dir)
        weights = weight_stats(model, masks)
        return {**weights, **sizes.result()}


def _measured(
    model: Any, masks: Optional[dict[str, np.ndarray]], model_dir: str, latency_repeats: int, with_latency: bool = True
) -> ModelStats:
    stats = weight_and_size_stats(model, masks, model_dir)  # before any timing, which it would disturb
    return ModelStats(**stats, **efficiency_stats(model, repeats=latency_repeats, with_latency=with_latency))


def _time_in_alternation(models: tuple[Any, Any], stats: tuple[ModelStats, ModelStats], repeats: int) -> None:
    """Times the model before and after pruning in alternation, so drift on a shared machine
    cannot masquerade as a speed-up or a slow-down, and records median and interquartile range."""
    for batch_size in LATENCY_BATCH_SIZES:
        for latency, measured in zip(alternating_latency(list(models), batch_size, repeats), stats, strict=True):
            setattr(measured, f"latency_ms_batch_{batch_size}", latency.median_ms)
            setattr(measured, f"latency_iqr_ms_batch_{batch_size}", [latency.p25_ms, latency.p75_ms])
            measured.latency_timing = "in alternation"


def model_stats(
    model: Any,
    masks: Optional[dict[str, np.ndarray]],
    input_path: str,
    latency_repeats: int,
    with_latency: bool = True,
) -> ModelStats:
    """Weights and efficiency of the input ``model``, and the sizes of its SavedModel as handed in.

    The sizes are not of a fresh save: saving a large model again only to weigh it cost more
    than pruning it. The input may carry optimizer state the pruned model is saved without,
    so ``weights_gzip_bytes`` (the weights alone) is the like-for-like size comparison.
    """
    stats = _measured(model, masks, input_path, latency_repeats, with_latency)
    stats.input_saved_model_bytes = stats.saved_model_bytes
    return stats


def prune_saved_model(
    input_path: str,
    output_dir: str,
    config: PruningConfigs,
    sample_examples: Optional[tf.Tensor] = None,
    latency_repeats: int = 30,
    holdout_examples: Optional[tf.Tensor] = None,
    allow_unsafe_layers: bool = False,
    allow_ops: Sequence[str] = (),
) -> PruningResult:
    """Prunes the Keras SavedModel at ``input_path`` into ``output_dir``; returns what it did.

    ``latency_repeats`` times the model before and after for the report (0: not timed). The model
    is scanned before it is loaded (``load_model``): ``allow_ops`` names the refused op types to let
    through. The pruned model's scan is ``result.graph_scan``.

    ``sample_examples`` (a batch of serialized tf.Examples) is required by structured pruning,
    which has to rebuild the serving signatures and proves them on those examples, and by the
    data-driven criteria, which read up to ``config.sample_size`` of them.

    Example::

        report = prune_saved_model("trainer/model/7", "pruned", PruningConfig(target_sparsity=0.8))
        report.after.masked_sparsity  # 0.8
    """
    goal, method_reason = (config if config.method == "goal" else None), ""
    if goal is not None:
        config, method_reason = goal.chosen()
    loaded = load_model(input_path, allow_unsafe_layers, allow_ops)
    require_finite_weights(loaded.model, f"the model to prune ({loaded.path})")
    _require_layer_graph_if_needed(loaded, config)
    examples = _Examples(sample_examples, holdout_examples)
    try:
        result = PRUNING_METHODS[config.method](loaded, output_dir, config, examples, latency_repeats)
    except StructuredPruningError as err:
        if goal is None:
            raise
        raise PruningGoalError(
            f"goal latency needs structured pruning, which cannot prune this model: {err}. Zeros would make it "
            "no faster; for a smaller download choose goal: size"
        ) from err
    result.method_reason = method_reason
    return result


class PruningGoalError(ValueError):
    """The goal a pruning config names cannot be reached for this model; the message says why."""


@dataclass(frozen=True)
class _Examples:
    """Serialized tf.Examples handed in: a train sample and a held-out (eval) sample."""

    sample: Optional[tf.Tensor]
    holdout: Optional[tf.Tensor]


def _criterion_sample(loaded: LoadedModel, config, examples: _Examples):
    """``(features, labels)`` for a criterion that reads examples; None for one that does not."""
    if not get_criterion(config.criterion).needs_sample:
        return None
    if examples.sample is None or int(tf.size(examples.sample)) == 0:
        raise MissingExamplesError(f"criterion {config.criterion!r} reads examples: connect `examples`")
    return parse_sample(loaded.model, examples.sample[: config.sample_size], config.label_key)


def _criterion(model: Any, config: PruningConfig, sample) -> Optional[Criterion]:
    """The taylor criterion with the configured loss (``from_logits`` read from the model); None
    for the configured criterion as registered."""
    if config.criterion != "taylor" or config.loss is None:
        return None
    named = loss_class(config.loss)
    if not takes_from_logits(named):
        return Taylor(named())
    from_logits, _ = resolve_from_logits(model, named, None, lambda: sample[0])
    return Taylor(named(from_logits=from_logits))


def _prune_magnitude(
    loaded: LoadedModel, output_dir: str, config: PruningConfig, examples: _Examples, latency_repeats: int
) -> PruningResult:
    sample = _criterion_sample(loaded, config, examples)
    weights = find_prunable_weights(loaded.model, config)  # fails on a bad config before any work
    nonzeros_before = {w.key: int(np.count_nonzero(w.variable.numpy())) for w in weights}
    before = model_stats(loaded.model, loaded.masks or None, loaded.path, latency_repeats, latency_repeats > 0)

    sensitivity = None
    layer_sparsity = None
    if config.scope == "sensitivity":
        holdout = _holdout_sample(loaded.model, examples.holdout, config)
        dense_loss, curves = sensitivity_curves(loaded.model, weights, config.sensitivity_levels, holdout)
        layer_sparsity = allocate(curves, dense_loss, config.target_sparsity)
        sensitivity = sensitivity_report(dense_loss, curves, layer_sparsity)
    weights, masks = prune_model(
        loaded.model, config, loaded.masks, sample, layer_sparsity, criterion=_criterion(loaded.model, config, sample)
    )
    return _saved_with_masks(
        loaded, output_dir, config, (weights, masks, nonzeros_before), before, latency_repeats, sensitivity=sensitivity
    )


def _saved_with_masks(
    loaded: LoadedModel, output_dir: str, config, pruned: tuple, before: ModelStats, latency_repeats: int, **found
) -> PruningResult:
    """Saves a model pruned in place with its masks; the result, with what the method ``found``."""
    weights, masks, nonzeros_before = pruned
    loaded.save(loaded.model, output_dir, masks)
    verify_signatures_preserved(loaded.path, output_dir)
    return PruningResult(
        **_common_fields(config, loaded, output_dir),
        before=before,
        after=_measured(loaded.model, masks, output_dir, latency_repeats, with_latency=latency_repeats > 0),
        weights=layer_rows(weights, nonzeros_before),
        **found,
    )


def _prune_one_shot(
    loaded: LoadedModel, output_dir: str, config: OneShotPruningConfig, examples: _Examples, latency_repeats: int
) -> PruningResult:
    weights = find_prunable_weights(loaded.model, config)  # fails on a bad config before any work
    if examples.sample is None or int(tf.size(examples.sample)) == 0:
        raise MissingExamplesError(
            f"{config.method} reads each layer's inputs on calibration examples: connect `examples`"
        )
    calibration, _ = parse_sample(loaded.model, examples.sample[: config.calibration_examples])
    nonzeros_before = {w.key: int(np.count_nonzero(w.variable.numpy())) for w in weights}
    before = model_stats(loaded.model, loaded.masks or None, loaded.path, latency_repeats, latency_repeats > 0)
    masks, one_shot = prune_one_shot(
        loaded.model, weights, dict(leaf_layers(loaded.model)), calibration, config, loaded.masks
    )
    for weight in weights:  # an earlier pruning's masks on now-protected layers still hold
        if weight.key not in masks and loaded.masks and weight.key in loaded.masks:
            masks[weight.key] = loaded.masks[weight.key]
    return _saved_with_masks(
        loaded, output_dir, config, (weights, masks, nonzeros_before), before, latency_repeats, one_shot=one_shot
    )


class UnclonableLayerError(ValueError):
    """A method that rebuilds the model met a layer it cannot rebuild."""


def _require_layer_graph_if_needed(loaded: LoadedModel, config) -> None:
    what = needs_keras_graph(config)
    if what is not None:
        require_keras(loaded.model, what)
    if isinstance(config, StructuredPruningConfig):
        # Sensitivity curves clone the whole model, layers attached outside the graph included.
        _require_rebuildable(loaded.model, "structured pruning", whole_model=config.scope == "sensitivity")
    elif isinstance(config, LayerRemovalConfig):
        _require_rebuildable(loaded.model, "layer removal", whole_model=True)


def _require_rebuildable(model: keras.Model, what: str, whole_model: bool) -> None:
    """Fails before any work on layers that were revived without a config and must be cloned.

    tf.Transform's ``TransformFeaturesLayer`` is the usual one: attached to the model for its
    signatures, outside the layer graph. Structured pruning keeps it as it is (and rebuilds the
    signatures around it); what clones the whole model (layer removal, sensitivity curves) cannot.
    """
    for layer in model.layers:
        if not whole_model and not in_layer_graph(layer):
            continue
        try:
            layer.get_config()
        except NotImplementedError:
            raise UnclonableLayerError(
                f"{what} clones the model, and layer {layer.name!r} ({type(layer).__name__}) was saved without "
                "a config, so it cannot be cloned; a tf.Transform layer attached for the serving signatures is "
                "the usual case. Use method='magnitude', or structured pruning with scope='per_layer' or 'global'."
            ) from None


def _holdout_sample(model: keras.Model, holdout_examples: Optional[tf.Tensor], config):
    if holdout_examples is None or int(tf.size(holdout_examples)) == 0:
        raise MissingExamplesError("scope='sensitivity' measures held-out loss: connect `examples` (eval split)")
    return parse_sample(model, holdout_examples[: config.sample_size], config.label_key)


def _labelled_dataset(model: keras.Model, serialized: Optional[tf.Tensor], label_key: str, batch_size: int, what: str):
    if serialized is None or int(tf.size(serialized)) == 0:
        raise MissingExamplesError(f"layer removal needs {what}: connect `examples`")
    features, labels = parse_sample(model, serialized, label_key)
    return tf.data.Dataset.from_tensor_slices((features, labels)).batch(batch_size)


def _remove_layers(
    loaded: LoadedModel, output_dir: str, config: LayerRemovalConfig, examples: _Examples, latency_repeats: int
) -> PruningResult:
    train = _labelled_dataset(loaded.model, examples.sample, config.label_key, config.batch_size, "train examples")
    holdout = _labelled_dataset(loaded.model, examples.holdout, config.label_key, config.batch_size, "eval examples")
    before = model_stats(loaded.model, None, loaded.path, latency_repeats, with_latency=False)
    smaller, removal = remove_layers(loaded.model, config, train, holdout)
    after = _save_rebuilt(loaded, smaller, output_dir, examples.sample)
    if latency_repeats:
        _time_in_alternation((loaded.model, smaller), (before, after), latency_repeats)
    return PruningResult(
        **_common_fields(config, loaded, output_dir), before=before, after=after, layer_removal=removal
    )


def _save_rebuilt(loaded: LoadedModel, smaller: keras.Model, output_dir: str, sample_examples: tf.Tensor) -> ModelStats:
    """Saves a rebuilt model with signatures proven on real examples; returns its measurements
    (latency aside: the caller times it in alternation with the original)."""
    signatures = (
        rebuild_example_signatures(loaded.model, loaded.signatures, smaller, sample_examples, loaded.serving)
        if loaded.signatures
        else {}  # a .keras file alone: the saved model gets Keras 3's own export
    )
    copy_compile_settings(loaded.model, smaller)
    loaded.save(smaller, output_dir, signatures=signatures)
    verify_signatures_preserved(loaded.path, output_dir)
    return _measured(smaller, None, output_dir, latency_repeats=0, with_latency=False)


def _common_fields(config, loaded: LoadedModel, output_dir: str) -> dict[str, Any]:
    return {
        "config": config.model_dump(),
        "input_model": loaded.path,
        "output_model": output_dir,
        "signatures": sorted(loaded.signatures),
    }


def _prune_structured(
    loaded: LoadedModel, output_dir: str, config: StructuredPruningConfig, examples: _Examples, latency_repeats: int
) -> PruningResult:
    sample = _criterion_sample(loaded, config, examples)
    holdout = _holdout_sample(loaded.model, examples.holdout, config) if config.scope == "sensitivity" else None
    if examples.sample is None or int(tf.size(examples.sample)) == 0:
        raise MissingExamplesError(
            "structured pruning rebuilds the serving signatures and checks them on real examples: "
            "connect `examples` to PruneComponent"
        )
    if loaded.masks:
        # A rebuilt model has new weights; the earlier masks' zeros stay in the kept slices, unheld.
        logging.getLogger(__name__).warning(
            "structured pruning drops the input's %d magnitude-pruning masks: the zeros they held stay in the "
            "kept weights but fine-tuning no longer holds them at zero (the report lists them as dropped_masks)",
            len(loaded.masks),
        )
    smaller, structure = prune_structured(loaded.model, config, sample, holdout)
    before = model_stats(loaded.model, None, loaded.path, latency_repeats, with_latency=False)
    after = _save_rebuilt(loaded, smaller, output_dir, examples.sample)
    if latency_repeats:
        _time_in_alternation((loaded.model, smaller), (before, after), latency_repeats)
    return PruningResult(
        **_common_fields(config, loaded, output_dir),
        before=before,
        after=after,
        structure=structure,
        dropped_masks=sorted(loaded.masks),
        sensitivity=structure.sensitivity,
    )


PruningMethod = Callable[[LoadedModel, str, Any, _Examples, int], PruningResult]
# config.method -> the function that prunes a loaded model by that method.
PRUNING_METHODS: dict[str, PruningMethod] = {
    "magnitude": _prune_magnitude,
    "structured": _prune_structured,
    "layer_removal": _remove_layers,
    "wanda": _prune_one_shot,
    "sparsegpt": _prune_one_shot,
}
