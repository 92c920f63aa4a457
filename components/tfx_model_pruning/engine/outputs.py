"""What a model outputs: probabilities or logits, and the loss of a model that learned nothing.

A cross-entropy loss must be told which of the two it gets (``from_logits``). Told wrong, it
still trains, towards nonsense: TFX's taxi model ends in a sigmoid, and fine-tuned with
``from_logits=True`` its loss sat at ln 2 while every output sank to zero (a model that answers
"no" to everything). So the convention is read from the model, not assumed: from the final
activation of a Keras model, from the last op of a restored model's graph, and only failing
both from the outputs on a sample of real examples.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Literal, Optional

import numpy as np
import tensorflow as tf

from tfx_model_pruning.engine.graph import first_call_inputs, in_layer_graph, producing_layer
from tfx_model_pruning.engine.restored import call, call_function, inlined_graph_def, is_restored, output_structure

OutputConvention = Literal["probabilities", "logits"]
PROBABILITIES: OutputConvention = "probabilities"
LOGITS: OutputConvention = "logits"

_PROBABILITY_ACTIVATIONS = {"sigmoid", "softmax", "hard_sigmoid"}
_PROBABILITY_OPS = {"Sigmoid", "Softmax"}
# Ops whose output is a linear function of weights and inputs: what a logit layer ends in.
_LINEAR_OPS = {"MatMul", "BatchMatMulV2", "BiasAdd", "Add", "AddV2", "Conv2D", "DepthwiseConv2dNative", "Sum"}
# Layers and ops that reshape or pass values on without changing them.
_PASS_THROUGH_LAYERS = ("Reshape", "Flatten", "Dropout", "Permute", "RepeatVector", "SpatialDropout1D", "Squeeze")
_PASS_THROUGH_OPS = {"Identity", "IdentityN", "Reshape", "Squeeze", "ExpandDims", "StopGradient", "Cast"}


class OutputConventionError(ValueError):
    """The configured ``from_logits`` contradicts what the model outputs, or it cannot be told."""


def output_convention(
    model: Any, sample_features: Optional[Callable[[], Any]] = None
) -> tuple[Optional[OutputConvention], str]:
    """Whether ``model`` outputs probabilities or logits, and how that was found out.

    Returns ``(None, why)`` when neither the model's structure nor the sample tells (an output
    layer ending in ReLU, say). ``sample_features`` returns a batch the model takes; it is only
    called when the structure does not tell.

    Example::

        convention, evidence = output_convention(model)  # ("probabilities", "final activation sigmoid of dense_3")
    """
    if is_restored(model):
        found = _from_graph(model)
    else:
        found = _from_keras_layers(model)
    if found[0] is not None or sample_features is None:
        return found
    return _from_sample(model, sample_features(), found[1])


def _from_keras_layers(model: Any) -> tuple[Optional[OutputConvention], str]:
    if not getattr(model, "outputs", None):
        return None, f"{type(model).__name__} has no layer graph to read its output layer from (subclassed or unbuilt)"
    conventions = set()
    evidence = []
    for output in model.outputs:
        layer = producing_layer(output)
        while type(layer).__name__ in _PASS_THROUGH_LAYERS and in_layer_graph(layer):
            layer = producing_layer(first_call_inputs(layer)[0])
        name = type(layer).__name__
        if name == "Softmax":
            activation = "softmax"
        elif name == "TFOpLambda":
            activation = str(layer.get_config().get("function", "")).rsplit(".", 1)[-1]
        else:
            function = getattr(layer, "activation", None)
            activation = getattr(function, "__name__", None) if function is not None else None
        if activation in _PROBABILITY_ACTIVATIONS:
            conventions.add(PROBABILITIES)
        elif activation == "linear" or (activation is None and name in ("Dense", "Conv1D", "Conv2D", "Conv3D")):
            conventions.add(LOGITS)
        else:
            return None, f"the output layer {layer.name} ({name}, activation {activation}) says neither"
        evidence.append(f"{layer.name} ends in {activation or 'no activation'}")
    if len(conventions) != 1:
        return None, f"the outputs disagree ({'; '.join(evidence)})"
    return conventions.pop(), "final activation: " + "; ".join(evidence)


def _from_graph(model: Any) -> tuple[Optional[OutputConvention], str]:
    try:
        function = call_function(model, training=False)
    except ValueError as err:
        return None, str(err)
    graph_def = inlined_graph_def(function)
    nodes = {node.name: node for node in graph_def.node}
    conventions, ops = set(), []
    for tensor in tf.nest.flatten(function.outputs):
        node = nodes.get(tensor.op.name)
        while node is not None and node.op in _PASS_THROUGH_OPS and node.input:
            node = nodes.get(node.input[0].lstrip("^").split(":")[0])
        op = node.op if node is not None else "?"
        ops.append(op)
        if op in _PROBABILITY_OPS:
            conventions.add(PROBABILITIES)
        elif op in _LINEAR_OPS:
            conventions.add(LOGITS)
        else:
            return None, f"the restored model's output comes from a {op} op"
    if len(conventions) != 1:
        return None, f"the restored model's outputs come from {ops}"
    return conventions.pop(), f"the restored model's output op is {', '.join(sorted(set(ops)))}"


def _from_sample(model: Any, features: Any, structure_said: str) -> tuple[Optional[OutputConvention], str]:
    outputs = [np.asarray(value) for value in tf.nest.flatten(call(model, features, training=False))]
    in_unit_interval = all(value.size and value.min() >= 0.0 and value.max() <= 1.0 for value in outputs)
    sums_to_one = all(
        value.ndim < 2 or value.shape[-1] == 1 or np.allclose(value.sum(axis=-1), 1.0, atol=1e-3) for value in outputs
    )
    if in_unit_interval and sums_to_one:
        return PROBABILITIES, f"{structure_said}; outputs on a sample lie in [0, 1]"
    if not in_unit_interval:
        return LOGITS, f"{structure_said}; outputs on a sample leave [0, 1]"
    return None, f"{structure_said}; outputs on a sample lie in [0, 1] but do not sum to 1"


def takes_from_logits(loss_class: type) -> bool:
    return "from_logits" in inspect.signature(loss_class.__init__).parameters


def resolve_from_logits(
    model: Any, loss_class: type, configured: Optional[bool], sample_features: Optional[Callable[[], Any]] = None
) -> tuple[bool, str]:
    """``from_logits`` for ``loss_class`` on ``model``: the configured value checked, or the detected one.

    Raises:
      OutputConventionError: the configured value contradicts the model's outputs, or nothing
        was configured and the outputs do not tell.
    """
    convention, evidence = output_convention(model, sample_features)
    if configured is None:
        if convention is None:
            raise OutputConventionError(
                f"cannot tell whether the model outputs probabilities or logits ({evidence}); "
                f"set from_logits for {loss_class.__name__}"
            )
        return convention == LOGITS, evidence
    if convention is not None and configured != (convention == LOGITS):
        raise OutputConventionError(
            f"from_logits={configured} says the model outputs {'logits' if configured else 'probabilities'}, "
            f"but it outputs {convention} ({evidence}); a {loss_class.__name__} told the wrong one trains the "
            f"model towards a constant answer. Remove from_logits (it is read from the model) or set it to "
            f"{not configured}"
        )
    return configured, evidence if convention is not None else f"as configured ({evidence})"


_CROSSENTROPY_LOSSES = ("BinaryCrossentropy", "CategoricalCrossentropy", "SparseCategoricalCrossentropy")


def no_information_loss(model: Any, loss: Any) -> Optional[float]:
    """The cross-entropy of a uniform guess, ln k over k classes (ln 2 for one sigmoid), else None.

    A fine-tuned model whose loss ends there learned nothing: it cannot tell the classes apart.
    """
    if isinstance(loss, str):
        name = loss
    elif type(loss).__name__ == "LossFunctionWrapper":  # a compiled loss given by its function's name
        name = loss.fn.__name__
    else:
        name = type(loss).__name__
    normalized = name.replace("_", "").lower()
    if not any(normalized == known.lower() for known in _CROSSENTROPY_LOSSES):
        return None
    shapes = [spec.shape for spec in tf.nest.flatten(_output_specs(model))]
    if len(shapes) != 1 or shapes[0].rank is None or shapes[0].rank < 1:
        return None
    width = shapes[0][-1] if shapes[0].rank > 1 else 1
    if width is None:
        return None
    return math.log(2.0 if width == 1 else float(width))


def _output_specs(model: Any):
    if is_restored(model):
        return output_structure(model)
    return [tf.TensorSpec(output.shape, output.dtype) for output in model.outputs]
