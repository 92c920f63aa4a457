"""Structured pruning: remove whole Dense units and convolution filters and rebuild a smaller model.

Channels are tracked through the layer graph the way Torch-Pruning's DepGraph does it for
PyTorch. Every output channel of a *producer* (Dense, Conv1D/2D/3D, SeparableConv) is a node;
channel-wise layers (BatchNormalization, activations, Dropout, pooling, padding,
DepthwiseConv2D, ...) pass nodes through; ``Flatten`` repeats them once per spatial position;
``Concatenate`` lays its inputs' nodes side by side; ``Add``/``Subtract``/``Multiply``/
``Average``/``Maximum``/``Minimum`` join the nodes at equal positions into one (union-find), so
coupled channels are removed together or not at all. A layer the analysis does not understand
(``Lambda``, ``TFOpLambda``, ``Reshape``, custom or nested models, ...) is a *barrier*: every
channel flowing into it is frozen and its outputs are new frozen channels. Channels reaching a
model output, and the outputs of protected layers, are frozen too. A removable unit is a set of
joined nodes; removing it deletes the producer columns, the channel-wise parameters and the
consumer rows of every member, so the rebuilt model computes exactly what the original computes
with those channels disconnected.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import tf_keras as keras

from components.engine.config import StructuredPruningConfig
from components.engine.importance import channel_scores

L = keras.layers

_PRODUCERS = (L.Dense, L.Conv1D, L.Conv2D, L.Conv3D, L.SeparableConv1D, L.SeparableConv2D)
_PASS_THROUGH = (
    L.InputLayer, L.ReLU, L.LeakyReLU, L.ELU, L.ThresholdedReLU,
    L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.SpatialDropout3D,
    L.GaussianNoise, L.GaussianDropout, L.AlphaDropout, L.ActivityRegularization,
    L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D, L.AveragePooling1D, L.AveragePooling2D, L.AveragePooling3D,
    L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D,
    L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalAveragePooling3D,
    L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D, L.Cropping1D, L.Cropping2D, L.Cropping3D,
    L.UpSampling1D, L.UpSampling2D, L.UpSampling3D,
)  # fmt: skip
_ELEMENTWISE_MERGE = (L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum)
# Activations that normalise across channels: dropping a channel would change the others.
_CROSS_CHANNEL_ACTIVATIONS = {"softmax", "log_softmax"}


class StructuredPruningError(ValueError):
    """The configuration cannot be applied to this model."""


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def add(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, node: int) -> int:
        while self.parent[node] != node:
            self.parent[node] = self.parent[self.parent[node]]
            node = self.parent[node]
        return node

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass
class ChannelGraph:
    """Channel nodes of every tensor, who produces them, and which are frozen (and why)."""

    tensor_channels: dict[str, list[int]] = field(default_factory=dict)
    node_producer: dict[int, tuple[str, int]] = field(default_factory=dict)  # node -> (layer, output index)
    frozen: dict[int, str] = field(default_factory=dict)
    barriers: dict[str, str] = field(default_factory=dict)
    layer_inputs: dict[str, list[str]] = field(default_factory=dict)
    layer_outputs: dict[str, list[str]] = field(default_factory=dict)
    layer_kinds: dict[str, str] = field(default_factory=dict)
    tensors: dict[str, Any] = field(default_factory=dict)
    consumers: dict[str, list[str]] = field(default_factory=dict)
    sets: _UnionFind = field(default_factory=_UnionFind)

    def new_channels(self, count: int, producer: Optional[str] = None) -> list[int]:
        nodes = [self.sets.add() for _ in range(count)]
        if producer is not None:
            for index, node in enumerate(nodes):
                self.node_producer[node] = (producer, index)
        return nodes

    def freeze(self, nodes, reason: str) -> None:
        for node in nodes:
            self.frozen.setdefault(node, reason)

    def unit_of(self, node: int) -> int:
        return self.sets.find(node)


def _last_dim(tensor) -> Optional[int]:
    dim = tensor.shape[-1]
    return int(dim) if dim is not None else None


def _layer_kind(layer) -> str:
    if isinstance(layer, keras.Model):
        return "barrier:nested model"
    if isinstance(layer, _PRODUCERS):
        if getattr(layer, "groups", 1) != 1:
            return "barrier:grouped convolution"
        if isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)) and layer.data_format != "channels_last":
            return "barrier:channels_first"
        if isinstance(layer, (L.Conv1D, L.Conv2D, L.Conv3D)) and layer.data_format != "channels_last":
            return "barrier:channels_first"
        return "producer"
    if isinstance(layer, L.BatchNormalization):
        rank = len(layer.input_shape)
        axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
        if [axis % rank for axis in axes] == [rank - 1]:
            return "channelwise"
        return "barrier:BatchNormalization over a non-channel axis"
    if isinstance(layer, L.DepthwiseConv2D):
        return "channelwise" if layer.depth_multiplier == 1 else "barrier:depth_multiplier > 1"
    if isinstance(layer, L.Activation):
        name = keras.activations.serialize(layer.activation)
        name = name if isinstance(name, str) else str(name)
        return "barrier:cross-channel activation" if name in _CROSS_CHANNEL_ACTIVATIONS else "passthrough"
    if isinstance(layer, L.Softmax):
        return "barrier:softmax mixes channels"
    if isinstance(layer, _PASS_THROUGH):
        return "passthrough"
    if isinstance(layer, L.Flatten):
        return "flatten"
    if isinstance(layer, L.Concatenate):
        return "concatenate"
    if isinstance(layer, _ELEMENTWISE_MERGE):
        return "merge"
    return f"barrier:{type(layer).__name__} is not understood by the channel analysis"


def analyse(model: keras.Model, protected: tuple[str, ...] = ()) -> ChannelGraph:
    """Builds the channel graph of a functional or Sequential tf-keras model."""
    if not getattr(model, "_is_graph_network", False):
        raise StructuredPruningError(
            f"{model.name} is a subclassed model; structured pruning needs a functional or Sequential graph"
        )
    graph = ChannelGraph()
    patterns = [re.compile(p) for p in protected]
    calls: dict[str, int] = {}
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            calls[node.layer.name] = calls.get(node.layer.name, 0) + 1

    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            layer = node.layer
            inputs = [graph.tensor_channels.get(tensor_id) for tensor_id in node.flat_input_ids]
            outputs = list(node.flat_output_ids)
            graph.layer_inputs[layer.name] = list(node.flat_input_ids)
            graph.layer_outputs[layer.name] = outputs
            output_tensors = node.outputs if isinstance(node.outputs, (list, tuple)) else [node.outputs]
            for tensor_id, tensor in zip(outputs, output_tensors, strict=True):
                graph.tensors[tensor_id] = tensor
            for tensor_id in node.flat_input_ids:
                graph.consumers.setdefault(tensor_id, []).append(layer.name)
            kind = _layer_kind(layer)
            if calls[layer.name] > 1:
                kind = "barrier:layer called more than once (shared weights)"
            graph.layer_kinds[layer.name] = kind
            if isinstance(layer, L.InputLayer) or not node.flat_input_ids:
                for tensor_id, tensor in zip(outputs, output_tensors, strict=True):
                    graph.tensor_channels[tensor_id] = graph.new_channels(_last_dim(tensor) or 0)
                    graph.freeze(graph.tensor_channels[tensor_id], "model input")
                continue
            if any(channels is None for channels in inputs):
                kind = "barrier:input of unknown width"

            if kind == "producer":
                channels = graph.new_channels(_last_dim(output_tensors[0]), producer=layer.name)
                graph.tensor_channels[outputs[0]] = channels
                activation = keras.activations.serialize(getattr(layer, "activation", None) or keras.activations.linear)
                if activation in _CROSS_CHANNEL_ACTIVATIONS:
                    graph.freeze(channels, f"{layer.name} has a {activation} activation")
                if any(p.fullmatch(layer.name) for p in patterns):
                    graph.freeze(channels, f"{layer.name} is protected")
            elif kind in ("channelwise", "passthrough"):
                graph.tensor_channels[outputs[0]] = list(inputs[0])
            elif kind == "flatten":
                spatial = output_tensors[0].shape[-1] // max(len(inputs[0]), 1) if inputs[0] else 0
                if not inputs[0] or output_tensors[0].shape[-1] is None:
                    graph.barriers[layer.name] = "Flatten of unknown shape"
                    graph.freeze(inputs[0] or [], f"barrier {layer.name}")
                    graph.tensor_channels[outputs[0]] = graph.new_channels(_last_dim(output_tensors[0]) or 0)
                    graph.freeze(graph.tensor_channels[outputs[0]], f"barrier {layer.name}")
                else:
                    graph.tensor_channels[outputs[0]] = list(inputs[0]) * spatial
            elif kind == "concatenate":
                rank = len(output_tensors[0].shape)
                if layer.axis in (-1, rank - 1):
                    graph.tensor_channels[outputs[0]] = [c for channels in inputs for c in channels]
                else:  # concatenating along another axis keeps channel positions aligned, as a merge does
                    kind = "merge"
            if kind == "merge":
                widths = {len(channels) for channels in inputs}
                if len(widths) != 1:
                    kind = "barrier:merge of inputs with different widths (broadcast)"
                else:
                    for channels in inputs[1:]:
                        for a, b in zip(inputs[0], channels, strict=True):
                            graph.sets.union(a, b)
                    graph.tensor_channels[outputs[0]] = list(inputs[0])
            if kind.startswith("barrier:"):
                reason = kind.split(":", 1)[1]
                graph.barriers[layer.name] = reason
                for channels in inputs:
                    graph.freeze(channels or [], f"feeds barrier {layer.name} ({reason})")
                for tensor_id, tensor in zip(outputs, output_tensors, strict=True):
                    graph.tensor_channels[tensor_id] = graph.new_channels(_last_dim(tensor) or 0)
                    graph.freeze(graph.tensor_channels[tensor_id], f"output of barrier {layer.name}")

    for tensor in model.outputs:
        for output_id in (str(id(tensor)),):
            graph.freeze(graph.tensor_channels.get(output_id, []), "reaches a model output")
    return graph


@dataclass
class Unit:
    """A set of coupled channel nodes that can only be removed together."""

    root: int
    nodes: list[int]
    producers: list[tuple[str, int]]
    importance: float = 0.0
    family: int = -1


def removable_units(graph: ChannelGraph, channel_scores: dict[str, np.ndarray]) -> list[Unit]:
    """The removable units, each scored by the sum of its producers' channel scores."""
    members: dict[int, list[int]] = {}
    for node in range(len(graph.sets.parent)):
        members.setdefault(graph.unit_of(node), []).append(node)
    frozen_roots = {graph.unit_of(node) for node in graph.frozen}
    units = []
    for root, nodes in members.items():
        producers = [graph.node_producer[n] for n in nodes if n in graph.node_producer]
        if root in frozen_roots or not producers:
            continue
        importance = float(sum(channel_scores[layer_name][index] for layer_name, index in producers))
        units.append(Unit(root, nodes, producers, importance))
    # Families: producers whose channels are joined prune together, with one allocation.
    family_sets = _UnionFind()
    layer_family: dict[str, int] = {}
    for unit in units:
        ids = []
        for layer_name, _ in unit.producers:
            if layer_name not in layer_family:
                layer_family[layer_name] = family_sets.add()
            ids.append(layer_family[layer_name])
        for other in ids[1:]:
            family_sets.union(ids[0], other)
    for unit in units:
        unit.family = family_sets.find(layer_family[unit.producers[0][0]])
    return units


def select_units_to_remove(
    units: list[Unit],
    graph: ChannelGraph,
    model: keras.Model,
    config: StructuredPruningConfig,
    family_fractions: Optional[dict[int, float]] = None,
) -> list[Unit]:
    """The least important units, per family (``per_layer`` or ``family_fractions``) or overall."""
    widths = {}
    for unit in units:
        for layer_name, _ in unit.producers:
            widths[layer_name] = _last_dim(model.get_layer(layer_name).output)
    by_family: dict[int, list[Unit]] = {}
    for unit in units:
        by_family.setdefault(unit.family, []).append(unit)
    for family_units in by_family.values():  # scales differ between layers; rank within a family
        mean = np.mean([u.importance for u in family_units]) or 1.0
        for unit in family_units:
            unit.importance /= mean

    if family_fractions is not None:
        quotas = {
            family: int(math.floor(family_fractions.get(family, 0.0) * len(us) + 1e-9))
            for family, us in by_family.items()
        }
        candidates = sorted(units, key=lambda u: u.importance)
    elif config.scope == "per_layer":
        quotas = {family: int(math.floor(config.prune_fraction * len(us) + 1e-9)) for family, us in by_family.items()}
        candidates = sorted(units, key=lambda u: u.importance)
    else:
        quotas = None
        candidates = sorted(units, key=lambda u: u.importance)
        budget = int(math.floor(config.prune_fraction * len(units) + 1e-9))

    if quotas is not None and config.scope == "per_layer" and family_fractions is None:
        _check_requested_widths(by_family, quotas, widths, config.min_units)
    removed_per_layer: dict[str, int] = {name: 0 for name in widths}
    chosen: list[Unit] = []
    taken: dict[int, int] = {family: 0 for family in by_family}
    for unit in candidates:
        if quotas is not None and taken[unit.family] >= quotas[unit.family]:
            continue
        if quotas is None and len(chosen) >= budget:
            break
        layers = [name for name, _ in unit.producers]
        if any(widths[name] - removed_per_layer[name] - layers.count(name) < config.min_units for name in set(layers)):
            continue
        for name in layers:
            removed_per_layer[name] += 1
        taken[unit.family] += 1
        chosen.append(unit)
    return chosen


def _check_requested_widths(by_family, quotas, widths, min_units: int) -> None:
    """A per-layer fraction that would leave a layer narrower than ``min_units`` is an error."""
    for family, family_units in by_family.items():
        layers = {name for unit in family_units for name, _ in unit.producers}
        for name in sorted(layers):
            requested = widths[name] - quotas[family]
            if requested < min_units:
                raise StructuredPruningError(
                    f"the requested width of {name} ({requested} of {widths[name]}) is below min_units={min_units}; "
                    "lower prune_fraction or min_units"
                )


def _kept_positions(channels: list[int], removed: set[int], graph: ChannelGraph) -> np.ndarray:
    return np.array([i for i, node in enumerate(channels) if graph.unit_of(node) not in removed], dtype=np.int64)


def rebuild(model: keras.Model, graph: ChannelGraph, removed_roots: set[int]) -> keras.Model:
    """A new model without the removed channels, weights sliced from ``model``."""
    new_widths: dict[str, int] = {}
    for layer in model.layers:
        if _layer_kind(layer) == "producer" and layer.name in graph.layer_outputs:
            channels = graph.tensor_channels[graph.layer_outputs[layer.name][0]]
            new_widths[layer.name] = len(_kept_positions(channels, removed_roots, graph))

    def clone(layer):
        if not layer.inbound_nodes:
            # Outside the layer graph (a tf.Transform layer attached for the signatures): shared as is.
            return layer
        config = layer.get_config()
        if layer.name in new_widths:
            config["units" if isinstance(layer, L.Dense) else "filters"] = new_widths[layer.name]
        return type(layer).from_config(config)

    smaller = keras.models.clone_model(model, clone_function=clone)
    for attribute, layer in attached_layers(model).items():
        setattr(smaller, attribute, layer)
    for layer in model.layers:
        if not layer.weights or not layer.inbound_nodes:
            continue
        target = smaller.get_layer(layer.name)
        if layer.name in graph.barriers or layer.name not in graph.layer_inputs:
            target.set_weights(layer.get_weights())
            continue
        inputs = graph.tensor_channels.get(graph.layer_inputs[layer.name][0], [])
        keep_in = _kept_positions(inputs, removed_roots, graph)
        target.set_weights(_sliced_weights(layer, keep_in, removed_roots, graph))
    return smaller


def attached_layers(model: keras.Model) -> dict[str, keras.layers.Layer]:
    """Layers set as attributes of ``model`` but outside its layer graph, by attribute name.

    TFX's examples attach tf.Transform's layer this way (``model.tft_layer = ...``) so that the
    serving signatures, which call it, can be saved with the model.
    """
    outside = [layer for layer in model.layers if not layer.inbound_nodes]
    return {
        name: value
        for name, value in vars(model).items()
        if not name.startswith("_") and any(value is layer for layer in outside)
    }


def _sliced_weights(layer, keep_in: np.ndarray, removed: set[int], graph: ChannelGraph) -> list[np.ndarray]:
    weights = layer.get_weights()
    if isinstance(layer, L.BatchNormalization):
        return [w[keep_in] for w in weights]
    if isinstance(layer, L.DepthwiseConv2D):
        kernel = weights[0][..., keep_in, :]
        return [kernel] + [w[keep_in] for w in weights[1:]]
    if _layer_kind(layer) != "producer":
        return weights
    keep_out = _kept_positions(graph.tensor_channels[graph.layer_outputs[layer.name][0]], removed, graph)
    if isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)):
        depthwise, pointwise, *bias = weights
        multiplier = depthwise.shape[-1]
        rows = (keep_in[:, None] * multiplier + np.arange(multiplier)[None, :]).ravel()
        return [depthwise[..., keep_in, :], pointwise[..., rows, :][..., keep_out]] + [b[keep_out] for b in bias]
    kernel, *bias = weights
    return [kernel[..., keep_in, :][..., keep_out]] + [b[keep_out] for b in bias]


def disconnect_in_place(model: keras.Model, graph: ChannelGraph, removed_roots: set[int]) -> None:
    """Zeroes every consumer row that reads a removed channel: the dense-model equivalent of removal."""
    for layer in model.layers:
        if _layer_kind(layer) != "producer" or layer.name in graph.barriers or layer.name not in graph.layer_inputs:
            continue
        inputs = graph.tensor_channels.get(graph.layer_inputs[layer.name][0], [])
        dropped = np.array([i for i, n in enumerate(inputs) if graph.unit_of(n) in removed_roots], dtype=np.int64)
        if dropped.size == 0:
            continue
        weights = layer.get_weights()
        weights[0][..., dropped, :] = 0  # kernel (or a separable layer's depthwise kernel): axis -2 is input
        layer.set_weights(weights)


def prune_structured(
    model: keras.Model,
    config: StructuredPruningConfig,
    sample: Optional[tuple[Any, Any]] = None,
    holdout: Optional[tuple[Any, Any]] = None,
) -> tuple[keras.Model, dict[str, Any]]:
    """Removes the least important units/filters; returns the smaller model and a report.

    ``sample`` is ``(features, labels)`` for the data-driven criteria (activations, Taylor);
    ``holdout`` the labelled examples the sensitivity curves are measured on.
    """
    names = [layer.name for layer in model.layers]
    unmatched = [p for p in config.protected_layers if not any(re.fullmatch(p, n) for n in names)]
    if unmatched:
        raise StructuredPruningError(f"protected layer pattern(s) {unmatched} match no layer; layers are: {names}")
    graph = analyse(model, tuple(config.protected_layers))
    units = removable_units(graph, channel_scores(model, graph, config.criterion, sample))
    if not units:
        raise StructuredPruningError(
            "no unit or filter can be removed: every channel is protected, frozen by a barrier or reaches an output"
            + (f"; barriers: {graph.barriers}" if graph.barriers else "")
        )
    family_fractions, sensitivity = None, None
    if config.scope == "sensitivity":
        from components.engine.sensitivity import structured_allocation

        if holdout is None:
            raise StructuredPruningError("scope='sensitivity' needs held-out labelled examples")
        family_fractions, sensitivity = structured_allocation(model, graph, units, config, holdout)
    chosen = select_units_to_remove(units, graph, model, config, family_fractions)
    removed = {unit.root for unit in chosen}
    smaller = rebuild(model, graph, removed)
    widths = {}
    for layer in model.layers:
        if _layer_kind(layer) == "producer":
            after = _last_dim(smaller.get_layer(layer.name).output)
            widths[layer.name] = {"before": _last_dim(layer.output), "after": after}
    report = {
        "removable_units": len(units),
        "removed_units": len(chosen),
        "widths": widths,
        "barriers": dict(graph.barriers),
        "params_before": int(model.count_params()),
        "params_after": int(smaller.count_params()),
        "sensitivity": sensitivity,
    }
    return smaller, report
