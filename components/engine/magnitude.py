"""Unstructured magnitude pruning of Keras kernels: weights keep their shape, the smallest
become exact zeros, and a boolean mask per weight records which ones must stay zero."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional

import numpy as np
import tensorflow as tf
import tf_keras as keras

from components.engine.config import PruningConfig
from components.engine.importance import MissingSampleError, taylor_weight_scores
from components.engine.masks import keep_largest, n_of_m_mask
from components.engine.restored import (
    PRUNABLE_WEIGHT_ATTRIBUTES,
    is_restored,
    kernel_variables,
    output_kernel_variables,
)


class PruningConfigError(ValueError):
    """The pruning configuration does not fit the model it is applied to."""


@dataclass
class PrunableWeight:
    """One prunable variable; ``key`` is stable across save/load (``layer/path::attribute``)."""

    key: str
    layer_name: str
    attribute: str
    variable: tf.Variable
    protected_by: Optional[str] = None

    @property
    def protected(self) -> bool:
        return self.protected_by is not None


def _leaf_layers(model: keras.Model, prefix: str = "") -> Iterator[tuple[str, keras.layers.Layer]]:
    for layer in model.layers:
        path = f"{prefix}{layer.name}"
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer, prefix=f"{path}/")
        elif _wrapped_layers(layer):
            for inner in _wrapped_layers(layer):
                yield f"{path}/{inner.name}", inner
        else:
            yield path, layer


def _wrapped_layers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """The layers a wrapper runs: ``Bidirectional``'s two directions, ``TimeDistributed``'s layer."""
    directions = [getattr(layer, name, None) for name in ("forward_layer", "backward_layer")]
    if all(isinstance(direction, keras.layers.Layer) for direction in directions):
        return directions  # Bidirectional also keeps the unbuilt template it was given as .layer
    inner = getattr(layer, "layer", None)
    return [inner] if isinstance(inner, keras.layers.Layer) and inner is not layer else []


def _weights_of(layer: keras.layers.Layer) -> Iterator[tuple[str, tf.Variable]]:
    owners = [layer]
    if getattr(layer, "cell", None) is not None:  # RNN layers keep their kernels on the cell
        owners.append(layer.cell)
    for owner in owners:
        for attribute in PRUNABLE_WEIGHT_ATTRIBUTES:
            variable = getattr(owner, attribute, None)
            if isinstance(variable, tf.Variable) and variable.shape.rank and variable.shape.rank >= 2:
                yield attribute, variable


def output_weight_layers(model: keras.Model) -> set[str]:
    """Names of the last layers with prunable weights on each path to a model output."""
    found: set[str] = set()
    seen: set[int] = set()
    frontier = [tensor._keras_history.layer for tensor in model.outputs]
    while frontier:
        layer = frontier.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if isinstance(layer, keras.Model):
            found |= output_weight_layers(layer)
            continue
        if any(True for _ in _weights_of(layer)) or any(
            any(True for _ in _weights_of(w)) for w in _wrapped_layers(layer)
        ):
            found.add(layer.name)
            continue
        for node in layer.inbound_nodes:
            frontier.extend(inbound for inbound in _as_list(node.inbound_layers))
    return found


def _as_list(layers) -> list:
    return list(layers) if isinstance(layers, (list, tuple)) else [layers]


def iter_prunable_weights(model: Any) -> Iterator[PrunableWeight]:
    """Every prunable weight of ``model`` (nested models and wrapped layers included), unprotected.

    A model restored without its Keras classes names its kernels by variable name instead.
    """
    if is_restored(model):
        for layer_name, attribute, variable in kernel_variables(model):
            yield PrunableWeight(f"{layer_name}::{attribute}", layer_name, attribute, variable)
        return
    for path, layer in _leaf_layers(model):
        for attribute, variable in _weights_of(layer):
            yield PrunableWeight(f"{path}::{attribute}", path, attribute, variable)


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
        layer_names = [path for path, _ in _leaf_layers(model)]
        output_layers = output_weight_layers(model) if config.protect_output_layer else set()
        # A wrapper on the output protects what it wraps: "time_distributed/dense" under "time_distributed".
        in_output_layer = {weight.key for weight in weights if set(weight.layer_name.split("/")) & output_layers}
    for weight in weights:
        short_name = weight.layer_name.rsplit("/", 1)[-1]
        if weight.key in in_output_layer:
            weight.protected_by = "output layer"
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

    The smallest ``scores`` go (default: ``|w|``; the taylor criterion passes ``|w x grad|``).

    Target sparsity is met exactly: the ``round(sparsity * n)`` smallest magnitudes are cut,
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


def apply_masks(weights: Iterable[PrunableWeight], masks: dict[str, np.ndarray]) -> None:
    """Zeroes every masked-out entry in place."""
    for weight in weights:
        mask = masks.get(weight.key)
        if mask is not None:
            weight.variable.assign(weight.variable.numpy() * mask.astype(weight.variable.dtype.as_numpy_dtype))


def prune_model(
    model: Any,
    config: PruningConfig,
    existing_masks: Optional[dict[str, np.ndarray]] = None,
    sample=None,
    layer_sparsity: Optional[dict[str, float]] = None,
) -> tuple[list[PrunableWeight], dict[str, np.ndarray]]:
    """Prunes ``model`` in place; returns its prunable weights and the new masks.

    ``sample`` (``(features, labels)``) is needed by the taylor criterion.
    """
    weights = find_prunable_weights(model, config)
    scores = None
    if config.criterion == "taylor":
        if sample is None:
            raise MissingSampleError("the taylor criterion needs a sample of labelled examples")
        targeted = [w for w in weights if not w.protected]
        per_weight = taylor_weight_scores(model, [w.variable for w in targeted], sample)
        scores = {w.key: s for w, s in zip(targeted, per_weight, strict=True)}
    masks = compute_masks(weights, config, existing_masks, scores, layer_sparsity)
    for weight in weights:  # an earlier pruning's masks on now-protected layers still hold
        if weight.key not in masks and existing_masks and weight.key in existing_masks:
            masks[weight.key] = existing_masks[weight.key]
    apply_masks(weights, masks)
    return weights, masks
