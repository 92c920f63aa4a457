"""Layer handlers: how channels flow through each layer class, and which weights a channel owns.

Structured pruning asks the handler of every layer call two things: which channel nodes its
outputs carry (new ones for a *producer* such as Dense or Conv2D, its input's for a
channel-wise layer, joined ones for an ``Add``), and, once channels are removed, which slices
of the layer's weights remain. A layer without a handler is a barrier: the channels around it
are frozen, which is always safe. The FLOPs count asks the same handler for the layer's
multiply-accumulates (``macs``); a layer without one counts none.

Built-in layers are registered (``registry``) through ``register_layer_handler``, the same call a
user makes for a custom layer::

    from tfx_model_pruning.engine.layer_handlers import Producer, register_layer_handler

    register_layer_handler(ScaledDense, Producer("units", {"kernel": (0, 1), "bias": (None, 0),
                                                           "scale": (None, 0)}))

A handler applies to its class and to subclasses that do not override ``call``; a subclass
with its own ``call`` computes something else, so it needs its own registration.

The handlers by concept: the kinds every handler is one of (``base``); layers with weights per
channel (``weighted_layers``); recurrent layers and attention (``sequence_layers``); layers that
join or reshape tensors (``merges_and_reshapes``); the built-in registrations (``builtin_layers``).
"""

# Importing ``builtin_layers`` registers the built-in layers' handlers.
from tfx_model_pruning.engine.layer_handlers import builtin_layers  # noqa: F401
from tfx_model_pruning.engine.layer_handlers.base import (
    Barrier,
    CallShapes,
    ChannelWise,
    KeepsChannels,
    Kept,
    LayerHandler,
    PassThrough,
    Producer,
    WeightAxes,
    handler_for,
    register_layer_handler,
    registered_handlers,
    unregister_layer_handler,
)

__all__ = [
    "Barrier",
    "CallShapes",
    "ChannelWise",
    "KeepsChannels",
    "Kept",
    "LayerHandler",
    "PassThrough",
    "Producer",
    "WeightAxes",
    "handler_for",
    "register_layer_handler",
    "registered_handlers",
    "unregister_layer_handler",
]
