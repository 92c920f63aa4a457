"""The channel graph structured pruning works on: which output channels of which layers are one
removable unit, and which are frozen, and why.

``analyse_channels(model, handler_for)`` walks the model's calls (``graph.layer_calls``) and
asks each layer's handler (``layer_handlers``) how channels pass through it; a handler raises
``ChannelBarrier`` where it cannot follow them, which freezes the channels on both sides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from tfx_model_pruning.engine.graph import (
    Layer,
    Model,
    call_counts,
    is_input_layer,
    is_layer_graph,
    layer_calls,
    tensor_id,
)


class ChannelBarrier(Exception):
    """Raised by a layer handler for a call it cannot track channels through; says why."""


class UnionFind:
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
    """Channel nodes of every tensor, who produces them, and which are frozen (and why).

    Every output channel of a producer is a node; nodes joined (``join``) are one removable
    unit; a frozen node freezes its whole unit.
    """

    tensor_channels: dict[str, list[int]] = field(default_factory=dict)
    node_producer: dict[int, tuple[str, int]] = field(default_factory=dict)  # node -> (layer, output index)
    frozen: dict[int, str] = field(default_factory=dict)
    barriers: dict[str, str] = field(default_factory=dict)
    approximate: dict[str, str] = field(default_factory=dict)  # layers a removal changes beyond disconnection
    layer_inputs: dict[str, list[str]] = field(default_factory=dict)
    layer_outputs: dict[str, list[str]] = field(default_factory=dict)
    producers: list[str] = field(default_factory=list)
    channelwise: set[str] = field(default_factory=set)  # output channel i depends on input channel i only
    tensors: dict[str, Any] = field(default_factory=dict)
    consumers: dict[str, list[str]] = field(default_factory=dict)
    sets: UnionFind = field(default_factory=UnionFind)
    # How many units each producer key makes: a producer's output width, or a layer's count of
    # hidden units (``"<layer>:heads"``: attention heads no tensor carries one by one).
    unit_counts: dict[str, int] = field(default_factory=dict)
    hidden_nodes: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # layer -> kind -> nodes
    layer_arguments: dict[str, list[str]] = field(default_factory=dict)  # per input id: query, value, ...

    def new_channels(self, count: int, producer: Optional[str] = None) -> list[int]:
        nodes = [self.sets.add() for _ in range(count)]
        if producer is not None:
            for index, node in enumerate(nodes):
                self.node_producer[node] = (producer, index)
            self.unit_counts[producer] = count
        return nodes

    def new_hidden_units(self, layer_name: str, kind: str, count: int) -> list[int]:
        """Units inside a layer (its attention heads), removable like channels, keyed ``layer:kind``."""
        nodes = self.new_channels(count, producer=hidden_key(layer_name, kind))
        self.hidden_nodes.setdefault(layer_name, {})[kind] = nodes
        return nodes

    def hidden_units(self, layer_name: str) -> dict[str, list[int]]:
        """The layer's hidden units by kind (``{"heads": nodes}``)."""
        return self.hidden_nodes.get(layer_name, {})

    def join(self, a: int, b: int) -> None:
        self.sets.union(a, b)

    def freeze(self, nodes, reason: str) -> None:
        for node in nodes:
            self.frozen.setdefault(node, reason)

    def unit_of(self, node: int) -> int:
        return self.sets.find(node)

    def input_channels(self, layer_name: str) -> list[int]:
        """Channel nodes of a layer's first input."""
        inputs = self.layer_inputs.get(layer_name)
        return self.tensor_channels.get(inputs[0], []) if inputs else []

    def output_channels(self, layer_name: str) -> list[int]:
        return self.tensor_channels[self.layer_outputs[layer_name][0]]

    def chain_end(self, tensor: str) -> str:
        """Follows a tensor through single-consumer channel-wise layers (BN, activations, pooling)."""
        while True:
            consumers = self.consumers.get(tensor, [])
            if len(consumers) != 1 or consumers[0] not in self.channelwise:
                return tensor
            if len(self.layer_inputs[consumers[0]]) != 1:
                return tensor
            tensor = self.layer_outputs[consumers[0]][0]


def hidden_key(layer_name: str, kind: str) -> str:
    return f"{layer_name}:{kind}"


def _width(tensor) -> Optional[int]:
    dim = tensor.shape[-1]
    return int(dim) if dim is not None else None


HandlerLookup = Callable[[Layer], Any]


def analyse_channels(model: Model, handler_for: HandlerLookup, protected: tuple[str, ...] = ()) -> ChannelGraph:
    """Builds the channel graph of a functional or Sequential model of either Keras generation.

    ``handler_for(layer)`` returns the layer's handler (``layer_handlers.handler_for``): an
    object with ``produces_channels``, ``channelwise`` and
    ``output_channels(layer, call, inputs, graph) -> list of channel lists`` that raises
    ``ChannelBarrier`` where it cannot follow the channels.
    """
    if not is_layer_graph(model):
        raise ChannelBarrier(
            f"{model.name} is a subclassed model; structured pruning needs a functional or Sequential graph"
        )
    graph = ChannelGraph()
    patterns = [re.compile(p) for p in protected]
    calls = layer_calls(model)
    counts = call_counts(calls)
    for call in calls:
        layer = call.layer
        graph.layer_inputs[layer.name] = list(call.input_ids)
        graph.layer_outputs[layer.name] = list(call.output_ids)
        graph.layer_arguments[layer.name] = call.input_arguments()
        graph.tensors.update(zip(call.output_ids, call.output_tensors, strict=True))
        for tensor in call.input_ids:
            graph.consumers.setdefault(tensor, []).append(layer.name)
        if is_input_layer(layer) or not call.input_ids:
            for output, tensor in zip(call.output_ids, call.output_tensors, strict=True):
                graph.tensor_channels[output] = graph.new_channels(_width(tensor) or 0)
                graph.freeze(graph.tensor_channels[output], "model input")
            continue
        inputs = [graph.tensor_channels.get(tensor) for tensor in call.input_ids]
        handler = handler_for(layer)
        try:
            if counts[layer.name] > 1:
                raise ChannelBarrier("layer called more than once (shared weights)")
            if any(channels is None for channels in inputs):
                raise ChannelBarrier("input of unknown width")
            outputs = handler.output_channels(layer, call, inputs, graph)
        except ChannelBarrier as barrier:
            reason = str(barrier)
            graph.barriers[layer.name] = reason
            for channels in inputs:
                graph.freeze(channels or [], f"feeds barrier {layer.name} ({reason})")
            for output, tensor in zip(call.output_ids, call.output_tensors, strict=True):
                graph.tensor_channels[output] = graph.new_channels(_width(tensor) or 0)
                graph.freeze(graph.tensor_channels[output], f"output of barrier {layer.name}")
            continue
        graph.tensor_channels.update(zip(call.output_ids, outputs, strict=True))
        if handler.produces_channels:
            graph.producers.append(layer.name)
            if any(p.fullmatch(layer.name) for p in patterns):
                graph.freeze(outputs[0], f"{layer.name} is protected")
        if handler.channelwise:
            graph.channelwise.add(layer.name)

    for tensor in model.outputs:
        graph.freeze(graph.tensor_channels.get(tensor_id(tensor), []), "reaches a model output")
    return graph
