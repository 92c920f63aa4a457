"""Structured pruning: remove whole Dense units, convolution filters, recurrent units and
attention heads, and rebuild a smaller model.

Channels are tracked through the layer graph the way Torch-Pruning's DepGraph does it for
PyTorch (``channels.analyse_channels``), each layer by its handler (``layer_handlers``). Every
output channel of a *producer* (Dense, convolutions, LSTM/GRU, Embedding, MultiHeadAttention, a
registered custom layer) is a node, and so is every attention head (a *hidden* unit no tensor
carries alone); channel-wise layers (BatchNormalization, activations, pooling, DepthwiseConv2D,
elementwise TensorFlow ops, ...) pass nodes through; ``Flatten`` repeats them once per spatial
position; ``Concatenate`` lays its inputs' nodes side by side; ``Add``/``Multiply``/``x + y``
join the nodes at equal positions into one (union-find), so coupled channels are removed
together or not at all. Nested functional/Sequential models are flattened into one graph first.
A layer without a handler (``Lambda``, a subclassed model, a custom layer, ...) is a *barrier*:
every channel flowing into it is frozen and its outputs are new frozen channels. Channels
reaching a model output, and the outputs of protected layers, are frozen too. A removable unit
is a set of joined nodes; removing it deletes the producer columns, the channel-wise parameters
and the consumer rows of every member, so the rebuilt model computes exactly what the original
computes with those channels disconnected, except through layers that normalise across
channels (LayerNormalization), which the result lists as not exact.

    plan = plan_removal(model, StructuredPruningConfig(prune_fraction=0.5))
    smaller, change = apply_removal(plan, config)   # what prune_structured does
    reference = plan.disconnected()                 # what ``smaller`` must compute
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np

from tfx_model_pruning.engine.channels import ChannelBarrier, ChannelGraph, UnionFind, analyse_channels, hidden_key
from tfx_model_pruning.engine.config import StructuredPruningConfig
from tfx_model_pruning.engine.efficiency import count_flops
from tfx_model_pruning.engine.graph import (
    Model,
    attached_layers,
    call_counts,
    has_keras_mask,
    in_layer_graph,
    is_layer,
    keras_of,
    layer_calls,
)
from tfx_model_pruning.engine.graph_edit import flatten_nested, independent_clone
from tfx_model_pruning.engine.importance import Criterion, channel_scores
from tfx_model_pruning.engine.layer_handlers import Kept, handler_for
from tfx_model_pruning.engine.restored import require_tensorflow_backend
from tfx_model_pruning.engine.results import Curve, LayerWidth, SensitivityResult, StructureChange
from tfx_model_pruning.engine.sensitivity import BudgetError, sample_loss


class StructuredPruningError(ValueError):
    """The configuration cannot be applied to this model."""


def _last_dim(tensor) -> Optional[int]:
    dim = tensor.shape[-1]
    return int(dim) if dim is not None else None


def analyse(model: Model, protected: tuple[str, ...] = ()) -> ChannelGraph:
    """The channel graph of a functional or Sequential model (tf-keras or Keras 3), through the registered handlers."""
    try:
        return analyse_channels(model, handler_for, protected)
    except ChannelBarrier as refused:
        raise StructuredPruningError(str(refused)) from None


@dataclass
class Unit:
    """A set of coupled channel nodes that can only be removed together."""

    root: int
    nodes: list[int]
    producers: list[tuple[str, int]]
    importance: float = 0.0
    family: int = -1


def removable_units(graph: ChannelGraph, channel_scores: dict[str, np.ndarray]) -> list[Unit]:
    """The removable units, each scored by the mean of its channels' scores, each relative to its layer's mean."""
    members: dict[int, list[int]] = {}
    for node in range(len(graph.sets.parent)):
        members.setdefault(graph.unit_of(node), []).append(node)
    frozen_roots = {graph.unit_of(node) for node in graph.frozen}
    # Each producer's scores relative to its own mean: layers differ in scale (fan-in), and a unit
    # spanning several layers is judged by how its channel ranks within each of them.
    relative = {name: values / (float(np.mean(np.abs(values))) or 1.0) for name, values in channel_scores.items()}
    units = []
    for root, nodes in members.items():
        producers = [graph.node_producer[n] for n in nodes if n in graph.node_producer]
        if root in frozen_roots or not producers:
            continue
        # The mean, not the sum, over the unit's channels: a unit a long residual chain couples
        # across forty layers must not look forty times as important as one in a single layer
        # (InceptionResNetV2 kept its whole trunk that way and lost 35% of its channels, not 50%).
        importance = float(np.mean([relative[layer_name][index] for layer_name, index in producers]))
        units.append(Unit(root, nodes, producers, importance))
    # Families: producers whose channels are joined prune together, with one allocation.
    family_sets = UnionFind()
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
    model: Model,
    config: StructuredPruningConfig,
    family_fractions: Optional[dict[int, float]] = None,
) -> list[Unit]:
    """The least important units, per family (``per_layer`` or ``family_fractions``) or overall."""
    widths = {key: graph.unit_counts[key] for unit in units for key, _ in unit.producers}
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
        _check_requested_widths(by_family, config.prune_fraction, widths, config.min_units)
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
    return _round_kept_widths(chosen, by_family, widths, config.width_multiple)


def _round_kept_widths(
    chosen: list[Unit], by_family: dict[int, list[Unit]], widths: dict[str, int], multiple: int
) -> list[Unit]:
    """Gives back the most important chosen units of each family until its kept width is a
    multiple of ``multiple`` (torch-pruning's ``round_to``: widths round up, never down).

    Only families whose units are one channel in each of their layers are rounded (a grouped
    convolution's unit is a whole group), and only where at least ``multiple`` units stay.
    """
    if multiple <= 1:
        return chosen
    chosen_by_family: dict[int, list[Unit]] = {}
    for unit in chosen:
        chosen_by_family.setdefault(unit.family, []).append(unit)
    given_back: set[int] = set()
    for family, removed in chosen_by_family.items():
        family_units = by_family[family]
        if any(widths[name] != len(family_units) for unit in family_units for name, _ in unit.producers):
            continue
        kept = len(family_units) - len(removed)
        if kept < multiple or kept % multiple == 0:
            continue
        rounded = min(len(family_units), -(-kept // multiple) * multiple)
        by_importance = sorted(removed, key=lambda u: u.importance, reverse=True)
        given_back |= {id(unit) for unit in by_importance[: rounded - kept]}
    return [unit for unit in chosen if id(unit) not in given_back]


def _check_requested_widths(by_family, fraction: float, widths, min_units: int) -> None:
    """A per-layer fraction that would leave a layer narrower than ``min_units`` is an error.

    A family's quota is a fraction of its units; a layer is charged that fraction of the units
    it has channels in, not the family's whole quota (two convolutions concatenated and added to
    a third are one family, but each loses only its share).
    """
    for family_units in by_family.values():
        touching: dict[str, int] = {}
        for unit in family_units:
            for name in {name for name, _ in unit.producers}:
                touching[name] = touching.get(name, 0) + 1
        for name in sorted(touching):
            requested = widths[name] - int(math.floor(fraction * touching[name] + 1e-9))
            if requested < min_units:
                raise StructuredPruningError(
                    f"the requested width of {name} ({requested} of {widths[name]}) is below min_units={min_units}; "
                    "lower prune_fraction or min_units"
                )


def _positions(graph: ChannelGraph, layer_name: str, removed_roots: set[int], *, kept: bool) -> Kept:
    """Where the layer's channels and hidden units are kept (or, ``kept=False``, dropped)."""

    def select(channels: list[int]) -> np.ndarray:
        return np.array(
            [i for i, node in enumerate(channels) if (graph.unit_of(node) in removed_roots) != kept], dtype=np.int64
        )

    outputs = graph.layer_outputs.get(layer_name, [])
    return Kept(
        inputs=[select(graph.tensor_channels.get(tensor, [])) for tensor in graph.layer_inputs.get(layer_name, [])],
        output=select(graph.tensor_channels.get(outputs[0], [])) if len(outputs) == 1 else None,
        hidden={kind: select(nodes) for kind, nodes in graph.hidden_units(layer_name).items()},
        arguments=graph.layer_arguments.get(layer_name, []),
    )


def _narrowed(graph: ChannelGraph, layer_name: str, kept: Kept) -> bool:
    outputs = graph.layer_outputs.get(layer_name, [])
    output_width = len(graph.tensor_channels.get(outputs[0], [])) if len(outputs) == 1 else None
    hidden = graph.hidden_units(layer_name)
    return (kept.output is not None and len(kept.output) != output_width) or any(
        len(kept.hidden[kind]) != len(nodes) for kind, nodes in hidden.items()
    )


def rebuild(model: Model, graph: ChannelGraph, removed_roots: set[int]) -> Model:
    """A new model without the removed channels, weights sliced from ``model`` by each layer's handler."""
    kept = {
        name: _positions(graph, name, removed_roots, kept=True)
        for name in graph.layer_outputs
        if name not in graph.barriers
    }

    def clone(layer):
        if not is_layer(layer):
            return layer  # a Keras 3 keras.ops operation: no state to copy
        if not in_layer_graph(layer):
            # Outside the layer graph (a tf.Transform layer attached for the signatures): shared as is.
            return layer
        if layer.name in kept and _narrowed(graph, layer.name, kept[layer.name]):
            # The layer passes on fewer channels (or keeps fewer heads); its config says so.
            return type(layer).from_config(handler_for(layer).rebuilt_config(layer, kept[layer.name]))
        return type(layer).from_config(layer.get_config())

    smaller = keras_of(model).models.clone_model(model, clone_function=clone)
    for attribute, layer in attached_layers(model).items():
        setattr(smaller, attribute, layer)
    for layer in model.layers:
        if not layer.weights or not in_layer_graph(layer):
            continue
        target = smaller.get_layer(layer.name)
        if layer.name not in kept or layer.name not in graph.layer_inputs:
            target.set_weights(layer.get_weights())
            continue
        target.set_weights(handler_for(layer).rebuilt_weights(layer, kept[layer.name]))
    _check_keras_masks_kept(model, smaller)
    return smaller


def _keras_masks(model: Model) -> dict[str, tuple[bool, ...]]:
    """Per layer called once: which of its outputs carry a Keras mask."""
    calls = layer_calls(model)
    counts = call_counts(calls)
    return {
        call.layer.name: tuple(has_keras_mask(tensor) for tensor in call.output_tensors)
        for call in calls
        if counts[call.layer.name] == 1
    }


def _check_keras_masks_kept(model: Model, smaller: Model) -> None:
    """The implicit masks (padding from ``Embedding(mask_zero=True)``) are not in the channel graph:
    the rebuilt layers recompute them at call time. Every layer output the original masks must be
    masked in the rebuilt model too (a layer whose ``supports_masking`` its config does not carry
    would drop it, and attention and pooling would then read the padding)."""
    before, after = _keras_masks(model), _keras_masks(smaller)
    differ = sorted(name for name, masked in before.items() if name in after and after[name] != masked)
    if differ:
        raise StructuredPruningError(
            f"the rebuilt model's Keras masks (padding) differ from the original's at the outputs of {differ} "
            "(a layer's supports_masking is not in its config): it would compute something else"
        )


def disconnect_in_place(model: Model, graph: ChannelGraph, removed_roots: set[int]) -> None:
    """Zeroes every consumer row that reads a removed channel: the dense-model equivalent of removal."""
    for name in graph.producers:
        dropped = _positions(graph, name, removed_roots, kept=False)
        if not any(index.size for index in [*dropped.inputs, dropped.output, *dropped.hidden.values()]):
            continue
        layer = model.get_layer(name)
        layer.set_weights(handler_for(layer).disconnected(layer, dropped))


def disconnected_copy(model: Model, graph: ChannelGraph, removed_roots: set[int]) -> Model:
    """An independent copy of ``model`` with the removed channels disconnected, not removed."""
    copy = independent_clone(model)
    disconnect_in_place(copy, graph, removed_roots)
    return copy


def structured_allocation(
    model: Model, graph: ChannelGraph, units: list[Unit], config: StructuredPruningConfig, holdout
) -> tuple[dict[int, float], SensitivityResult]:
    """Per-family fractions of units to remove that bring FLOPs under ``config.flops_budget``.

    Each family (producers whose channels are coupled) is pruned alone at each level with its
    channels disconnected, its held-out loss measured and its FLOPs saving counted on the
    rebuilt model; then the cheapest steps in loss per FLOP saved are taken until the budget holds.

    Raises:
      BudgetError: even every family at the highest level keeps more FLOPs than the budget
        (checked before any curve is measured).
    """
    families = sorted({unit.family for unit in units})
    names = {f: "+".join(sorted({n for u in units if u.family == f for n, _ in u.producers})) for f in families}
    dense_flops = count_flops(model)
    target = config.flops_budget * dense_flops

    def removed_roots(fractions):
        return {u.root for u in select_units_to_remove(units, graph, model, config, fractions)}

    floor = count_flops(rebuild(model, graph, removed_roots({f: max(config.sensitivity_levels) for f in families})))
    if floor > target:
        raise BudgetError(
            f"flops_budget {config.flops_budget} cannot be met: with every group at the highest level "
            f"({max(config.sensitivity_levels)}) the model keeps {floor / dense_flops:.3f} of its FLOPs"
        )
    dense_loss = sample_loss(model, holdout)
    curves, savings = [], {}
    for family in families:
        losses = []
        for level in config.sensitivity_levels:
            roots = removed_roots({family: level})
            trial = disconnected_copy(model, graph, roots)
            trial.compile(loss=model.loss)
            losses.append(sample_loss(trial, holdout))
            savings[(family, level)] = dense_flops - count_flops(rebuild(model, graph, roots))
        curves.append(Curve(names[family], 0, list(config.sensitivity_levels), losses))

    position = {family: -1 for family in families}

    def current_fractions():
        return {f: (config.sensitivity_levels[position[f]] if position[f] >= 0 else 0.0) for f in families}

    # Savings of coupled groups overlap (a layer narrowed at both ends), so the budget is checked
    # on the actually rebuilt model after every step rather than on the sum of estimates.
    while count_flops(rebuild(model, graph, removed_roots(current_fractions()))) > target:
        best, best_cost = None, np.inf
        for family, curve in zip(families, curves, strict=True):
            index = position[family]
            if index + 1 >= len(curve.levels):
                continue
            gained = savings[(family, curve.levels[index + 1])] - (
                savings[(family, curve.levels[index])] if index >= 0 else 0.0
            )
            loss_before = curve.losses[index] if index >= 0 else dense_loss
            cost = max(curve.losses[index + 1] - loss_before, 0.0) / max(gained, 1e-12)
            if cost < best_cost:
                best, best_cost = family, cost
        if best is None:
            break  # every group at its highest level; the floor check above says this meets the target
        position[best] += 1
    fractions = current_fractions()
    allocation = {names[f]: fractions[f] for f in families}
    return fractions, SensitivityResult(dense_loss, curves, allocation, flops_budget=config.flops_budget)


@dataclass
class RemovalPlan:
    """What structured pruning will remove from ``model``, before anything is rebuilt.

    ``model`` is the model the plan was made on: the caller's, or its flattened copy when the
    caller's nests functional/Sequential models (``graph_edit.flatten_nested``).
    """

    model: Model
    graph: ChannelGraph
    units: list[Unit]
    chosen: list[Unit]
    sensitivity: Optional[SensitivityResult] = None

    @property
    def removed_roots(self) -> set[int]:
        return {unit.root for unit in self.chosen}

    def disconnected(self) -> Model:
        """The planned model with the chosen channels disconnected, not removed: what the
        rebuilt model must compute (the equivalence tests' and the benchmark's reference)."""
        return disconnected_copy(self.model, self.graph, self.removed_roots)


def plan_removal(
    model: Model,
    config: StructuredPruningConfig,
    sample: Optional[tuple[Any, Any]] = None,
    holdout: Optional[tuple[Any, Any]] = None,
    criterion: Optional[Union[str, Criterion]] = None,
) -> RemovalPlan:
    """Analyses the channels, scores them and chooses the units to remove (see ``prune_structured``)."""
    require_tensorflow_backend(model)
    model = flatten_nested(model)
    names = [layer.name for layer in model.layers]
    unmatched = [p for p in config.protected_layers if not any(re.fullmatch(p, n) for n in names)]
    if unmatched:
        raise StructuredPruningError(f"protected layer pattern(s) {unmatched} match no layer; layers are: {names}")
    graph = analyse(model, tuple(config.protected_layers))
    units = removable_units(graph, channel_scores(model, graph, criterion or config.criterion, sample))
    if not units:
        raise StructuredPruningError(
            "no unit or filter can be removed: every channel is protected, frozen by a barrier or reaches an output"
            + (f"; barriers: {graph.barriers}" if graph.barriers else "")
        )
    family_fractions, sensitivity = None, None
    if config.scope == "sensitivity":
        if holdout is None:
            raise StructuredPruningError("scope='sensitivity' needs held-out labelled examples")
        family_fractions, sensitivity = structured_allocation(model, graph, units, config, holdout)
    chosen = select_units_to_remove(units, graph, model, config, family_fractions)
    return RemovalPlan(model, graph, units, chosen, sensitivity)


def apply_removal(plan: RemovalPlan, config: StructuredPruningConfig) -> tuple[Model, StructureChange]:
    """Rebuilds the planned model without the chosen units; returns it and what changed."""
    model, graph = plan.model, plan.graph
    smaller = rebuild(model, graph, plan.removed_roots)
    widths = {
        name: LayerWidth(_last_dim(model.get_layer(name).output), _last_dim(smaller.get_layer(name).output))
        for name in graph.producers
    }
    channels_removed = sum(width.before - width.after for width in widths.values())
    for layer_name, by_kind in graph.hidden_nodes.items():
        for kind, nodes in by_kind.items():
            kept = sum(graph.unit_of(node) not in plan.removed_roots for node in nodes)
            widths[hidden_key(layer_name, kind)] = LayerWidth(len(nodes), kept)
    every_producer = [layer for layer in model.layers if handler_for(layer).produces_channels and in_layer_graph(layer)]
    narrowed = {
        name
        for name in graph.approximate
        if _last_dim(smaller.get_layer(name).output) != _last_dim(model.get_layer(name).output)
    }
    change = StructureChange(
        approximate={name: graph.approximate[name] for name in sorted(narrowed)},
        channels_before=sum(_last_dim(layer.output) or 0 for layer in every_producer),
        channels_removed=channels_removed,
        removable_units=len(plan.units),
        removed_units=len(plan.chosen),
        widths=widths,
        barriers=dict(graph.barriers),
        params_before=int(model.count_params()),
        params_after=int(smaller.count_params()),
        sensitivity=plan.sensitivity,
    )
    if config.min_removed_share is not None and change.removed_share < config.min_removed_share:
        raise StructuredPruningError(
            f"only {change.channels_removed} of {change.channels_before} Dense/convolution channels "
            f"({change.removed_share:.1%}) could be removed, below min_removed_share={config.min_removed_share}; "
            f"barriers kept the rest: {graph.barriers}"
        )
    return smaller, change


def prune_structured(
    model: Model,
    config: StructuredPruningConfig,
    sample: Optional[tuple[Any, Any]] = None,
    holdout: Optional[tuple[Any, Any]] = None,
    criterion: Optional[Union[str, Criterion]] = None,
) -> tuple[Model, StructureChange]:
    """Removes the least important units/filters; returns the smaller model and what changed.

    ``sample`` is ``(features, labels)`` for the data-driven criteria (activations, Taylor);
    ``holdout`` the labelled examples the sensitivity curves are measured on; ``criterion``
    (default ``config.criterion``) a registered name or a ``Criterion`` object. Nested
    functional/Sequential models are flattened into one graph first, so the smaller model has
    their layers at its top level.

    Example::

        smaller, change = prune_structured(model, StructuredPruningConfig(prune_fraction=0.5))
        print(f"{change.removed_share:.0%} of the channels removed")
    """
    return apply_removal(plan_removal(model, config, sample, holdout, criterion), config)
