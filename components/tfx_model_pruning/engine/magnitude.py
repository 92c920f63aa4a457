"""Unstructured magnitude pruning of Keras kernels: weights keep their shape, the smallest
become exact zeros, and a boolean mask per weight records which ones must stay zero."""

from __future__ import annotations

import re
from typing import Any, Iterable, Optional, Union

import numpy as np

from tfx_model_pruning.engine.config import PruningConfig
from tfx_model_pruning.engine.graph import leaf_layers, output_weight_layers
from tfx_model_pruning.engine.importance import Criterion, MissingSampleError, get_criterion, weight_scores
from tfx_model_pruning.engine.masks import PrunableWeight, apply_masks, iter_prunable_weights, keep_largest, n_of_m_mask
from tfx_model_pruning.engine.restored import (
    PRUNABLE_WEIGHT_ATTRIBUTES,
    is_restored,
    output_kernel_variables,
    require_tensorflow_backend,
)


class PruningConfigError(ValueError):
    """The pruning configuration does not fit the model it is applied to."""


def find_prunable_weights(model: Any, config: PruningConfig) -> list[PrunableWeight]:
    """Lists every prunable weight, marking the protected ones and why.

    Raises:
      PruningConfigError: a protected-layer pattern matches no layer, or nothing is left to prune.
    """
    patterns = [(pattern, re.compile(pattern)) for pattern in config.protected_layers]
    weights = list(iter_prunable_weights(model))
    if is_restored(model):
        layer_names = [weight.layer_name for weight in weights]
        output_kernels = output_kernel_variables(model) if config.protect_output_layer else set()
        in_output_layer = {weight.key for weight in weights if id(weight.variable) in output_kernels}
    else:
        layer_names = [path for path, _ in leaf_layers(model)]
        output_layers = output_weight_layers(model) if config.protect_output_layer else set()
        # A wrapper on the output protects what it wraps: "time_distributed/dense" under "time_distributed".
        in_output_layer = {weight.key for weight in weights if set(weight.layer_name.split("/")) & output_layers}
    for weight in weights:
        short_name = weight.layer_name.rsplit("/", 1)[-1]
        if weight.key in in_output_layer:
            weight.protected_by = "output layer"
        if weight.variable.shape.num_elements() < config.min_weights:
            weight.protected_by = f"fewer than min_weights={config.min_weights} weights"
        for pattern, regex in patterns:
            if regex.fullmatch(weight.layer_name) or regex.fullmatch(short_name):
                weight.protected_by = f"protected_layers pattern {pattern!r}"
                break

    unmatched = [
        pattern
        for pattern, regex in patterns
        if not any(regex.fullmatch(name) or regex.fullmatch(name.rsplit("/", 1)[-1]) for name in layer_names)
    ]
    if unmatched:
        raise PruningConfigError(
            f"protected layer pattern(s) {unmatched} match no layer of the model; layers are: {layer_names}"
        )
    if not weights:
        raise PruningConfigError(
            f"the model has no prunable weights ({', '.join(PRUNABLE_WEIGHT_ATTRIBUTES)}); layers are: {layer_names}"
        )
    if all(weight.protected for weight in weights):
        raise PruningConfigError(
            "every prunable layer is protected, nothing would be pruned: "
            + ", ".join(f"{w.layer_name} ({w.protected_by})" for w in weights)
        )
    return weights


def compute_masks(
    weights: Iterable[PrunableWeight],
    config: PruningConfig,
    existing_masks: Optional[dict[str, np.ndarray]] = None,
    scores: Optional[dict[str, np.ndarray]] = None,
    layer_sparsity: Optional[dict[str, float]] = None,
) -> dict[str, np.ndarray]:
    """Returns a keep-mask (True = keep) for every unprotected weight.

    The smallest ``scores`` go (default: ``|w|``; a criterion passes its own, e.g. ``|w x grad|``).

    Target sparsity is met exactly: the ``ceil(sparsity * n)`` smallest magnitudes are cut,
    ties broken by position, so the count never drifts with repeated values. Weights that an
    earlier pruning already masked stay masked.
    """
    targeted = [w for w in weights if not w.protected]
    existing_masks = existing_masks or {}
    magnitudes = {}
    for weight in targeted:
        values = scores[weight.key] if scores is not None else np.abs(weight.variable.numpy())
        previous = existing_masks.get(weight.key)
        if previous is not None and previous.shape == values.shape:
            values = np.where(previous, values, 0.0)  # already-pruned weights rank first
        magnitudes[weight.key] = values

    if config.magnitude_threshold is not None:
        return {key: values >= config.magnitude_threshold for key, values in magnitudes.items()}
    if config.n_m is not None:
        n, m = config.n_m_pair
        return {key: n_of_m_mask(values, n, m) for key, values in magnitudes.items()}
    if config.scope == "per_layer":
        return {key: keep_largest(values, config.target_sparsity) for key, values in magnitudes.items()}
    if config.scope == "sensitivity":
        if layer_sparsity is None:
            raise PruningConfigError("scope='sensitivity' needs the allocated per-layer sparsities")
        return {key: keep_largest(values, layer_sparsity[key]) for key, values in magnitudes.items()}

    flat = np.concatenate([values.ravel() for values in magnitudes.values()])
    flat_keep = keep_largest(flat, config.target_sparsity)
    masks, offset = {}, 0
    for key, values in magnitudes.items():
        masks[key] = flat_keep[offset : offset + values.size].reshape(values.shape)
        offset += values.size
    return masks


def prune_model(
    model: Any,
    config: PruningConfig,
    existing_masks: Optional[dict[str, np.ndarray]] = None,
    sample=None,
    layer_sparsity: Optional[dict[str, float]] = None,
    criterion: Optional[Union[str, Criterion]] = None,
) -> tuple[list[PrunableWeight], dict[str, np.ndarray]]:
    """Prunes ``model`` in place; returns its prunable weights and the new masks.

    ``criterion`` (default: ``config.criterion``) scores each weight; ``sample``
    (``(features, labels)``) is needed by data criteria such as taylor.
    """
    require_tensorflow_backend(model)
    weights = find_prunable_weights(model, config)
    criterion = get_criterion(criterion or config.criterion)
    if criterion.needs_sample and sample is None:
        raise MissingSampleError(f"the {config.criterion} criterion needs a sample of labelled examples")
    scores = weight_scores(model, [w for w in weights if not w.protected], criterion, sample)
    masks = compute_masks(weights, config, existing_masks, scores, layer_sparsity)
    for weight in weights:  # an earlier pruning's masks on now-protected layers still hold
        if weight.key not in masks and existing_masks and weight.key in existing_masks:
            masks[weight.key] = existing_masks[weight.key]
    apply_masks(weights, masks)
    return weights, masks
