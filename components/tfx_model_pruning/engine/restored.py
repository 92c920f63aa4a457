"""Models saved with ``tf.saved_model.save``: no Keras layer graph, but everything pruning needs.

TFX's own examples and templates save the Trainer's model with
``tf.saved_model.save(model, dir, signatures=...)``, which writes no Keras metadata, so tf-keras
cannot rebuild its layers. Reloaded with ``tf.saved_model.load`` the model still has its
variables (named ``layer/kernel``), its call functions traced with ``training=True`` and
``False`` (with gradients through them), its signatures and its assets; saved again, it keeps
all of them. That is enough for magnitude pruning (a mask per kernel variable) and for
fine-tuning (a training loop over the call function). Whatever needs the layer graph
(structured pruning, layer removal, sensitivity allocation, the taylor criterion) does not
apply and is refused by name, with the one-line change to the Trainer module that enables it.
"""

from __future__ import annotations

import ast
import collections
import os
from typing import Any, Iterator, Mapping, Optional

import keras as keras3
import tensorflow as tf
import tf_keras as keras
from tensorflow.python.framework import convert_to_constants

# Weight attributes that are matrices of connections; biases, BatchNorm statistics and
# scales are left alone because zeroing them removes no connection.
PRUNABLE_WEIGHT_ATTRIBUTES = ("kernel", "depthwise_kernel", "pointwise_kernel", "recurrent_kernel", "embeddings")

KERAS_SAVE_CHANGE = (
    "in the Trainer module, with tf-keras save with `model.save(fn_args.serving_model_dir, save_format='tf', "
    "signatures=signatures)` instead of `tf.saved_model.save`; with Keras 3 add "
    "`model.save(os.path.join(fn_args.serving_model_dir, 'model.keras'))` beside the export; the signatures stay "
    "the same"
)


class NeedsKerasModelError(ValueError):
    """The requested work needs the Keras layer graph, which a ``tf.saved_model.save`` model lacks."""


def is_restored(model: Any) -> bool:
    """True for a model reloaded without its Keras classes (saved with ``tf.saved_model.save``)."""
    return not isinstance(model, (keras.Model, keras3.Model))


# The taylor criterion differentiates the model's compiled loss, which only a Keras model carries.
TAYLOR_WITHOUT_LOSS = "the taylor criterion without a `loss`"


def needs_keras_graph_message(what: str, holder: str = "this model") -> str:
    """The one sentence that says ``what`` needs the Keras layer graph and which form to add."""
    if what == TAYLOR_WITHOUT_LOSS:
        return (
            f"the taylor criterion differentiates a loss, and {holder} carries none (a SavedModel from "
            "tf.saved_model.save or model.export keeps no compiled loss): set `loss` in the pruning config, "
            "e.g. loss: SparseCategoricalCrossentropy (from_logits is read from the model)"
        )
    return (
        f"{what} needs the Keras layer graph, which {holder} lacks (a SavedModel from tf.saved_model.save or "
        f"model.export, no .keras file beside it): {KERAS_SAVE_CHANGE}. "
        "Magnitude pruning and fine-tuning work as it is."
    )


def require_keras(model: Any, what: str) -> None:
    """Raises NeedsKerasModelError naming ``what`` and the module change, for a restored model."""
    if is_restored(model):
        raise NeedsKerasModelError(needs_keras_graph_message(what))


def needs_keras_graph(prune_config: Any) -> Optional[str]:
    """What in a pruning configuration (a config object or PruneComponent's keyword arguments)
    needs the Keras layer graph, named as NeedsKerasModelError names it; None when nothing does."""
    if isinstance(prune_config, Mapping):
        setting = prune_config.get
    else:

        def setting(name):
            return getattr(prune_config, name, None)

    method = setting("method") or "magnitude"
    if method == "structured":
        return "structured pruning"
    if method == "layer_removal":
        return "layer removal"
    if method in ("wanda", "sparsegpt"):
        return f"one-shot pruning ({method}: it reads each layer's inputs)"
    if setting("scope") == "sensitivity":
        return "scope='sensitivity'"
    if setting("criterion") == "taylor" and not setting("loss"):
        return TAYLOR_WITHOUT_LOSS
    return None


def _dotted(node: ast.AST) -> str:
    """``tf.saved_model.save`` for the function an ``ast.Call`` calls ("" for other forms)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def saved_model_save_lines(module_file: str) -> list[int]:
    """Lines of a Trainer module where it saves only with ``tf.saved_model.save``.

    A static read of the module (it is not imported): the lines of its ``*.saved_model.save(...)``
    calls, or none when it also calls any other ``.save(...)`` or ``save_model(...)`` (a Keras
    ``model.save`` or ``keras.models.save_model``, which writes the Keras metadata), when it calls
    no ``tf.saved_model.save`` at all, or when it cannot be read or parsed (nothing is guessed).
    """
    try:
        with open(module_file, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=module_file)
    except (OSError, SyntaxError, ValueError):
        return []
    saved_model_saves, other_saves = [], 0
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name == "saved_model.save" or name.endswith(".saved_model.save"):
            saved_model_saves.append(node.lineno)
        elif name.split(".")[-1] in ("save", "save_model"):
            other_saves += 1
    return [] if other_saves else sorted(saved_model_saves)


def require_keras_saving_module(module_file: str, what: str) -> None:
    """Raises, before anything runs, the NeedsKerasModelError PruneComponent would raise once the
    Trainer ran ``module_file``, for a module that saves only with ``tf.saved_model.save``."""
    lines = saved_model_save_lines(module_file)
    if lines:
        with open(module_file, encoding="utf-8") as f:
            source = f.read().splitlines()
        where = "; ".join(f"{module_file}:{line}: `{source[line - 1].strip()}`" for line in lines)
        if what == TAYLOR_WITHOUT_LOSS:
            raise NeedsKerasModelError(
                needs_keras_graph_message(
                    what, f"the model the Trainer module saves with tf.saved_model.save at {where}"
                )
            )
        raise NeedsKerasModelError(
            f"{what} needs the Keras layer graph, and the Trainer module saves the model only with "
            f"tf.saved_model.save (no Keras metadata), at {where}; {KERAS_SAVE_CHANGE}. Magnitude pruning "
            "and fine-tuning work as it is."
        )


class KerasBackendError(TypeError):
    """A Keras 3 model runs on a backend other than TensorFlow, which the engine's surgery needs."""


def require_tensorflow_backend(model: Any = None) -> None:
    """Raises KerasBackendError for a Keras 3 model (or, without one, a Keras 3 configured) on a
    backend other than TensorFlow: masks, surgery and SavedModels are written against tf.Variables
    and TensorFlow graphs."""
    if model is not None and not isinstance(model, keras3.Model):
        return
    backend = keras3.backend.backend()
    if backend != "tensorflow":
        raise KerasBackendError(
            f"this Keras 3 model runs on the {backend} backend "
            f"(KERAS_BACKEND={os.environ.get('KERAS_BACKEND', '')!r}); "
            "the engine prunes, fine-tunes and saves TensorFlow models: set KERAS_BACKEND=tensorflow before Keras "
            "is imported, then rebuild or reload the model"
        )


def variable_of(value: Any) -> Optional[tf.Variable]:
    """The ``tf.Variable`` behind a weight: itself (tf-keras, restored), or the one a Keras 3 variable wraps."""
    if isinstance(value, tf.Variable):
        return value
    if isinstance(value, keras3.Variable):
        inner = getattr(value, "value", None)
        return inner if isinstance(inner, tf.Variable) else None
    return None


def model_variables(model: Any) -> list[tf.Variable]:
    """Every variable of the model (Keras weights, or a restored object's ``variables``)."""
    if not is_restored(model):
        return [variable for variable in map(variable_of, model.weights) if variable is not None]
    listed = getattr(model, "variables", None)
    if listed:
        return list(listed)
    # tf.saved_model.save of a Keras 3 model lists no variables at its root: they hang off its
    # layers. Its optimizer's (slots, step count) are training state, not the model's.
    found: dict[int, tf.Variable] = {}
    frontier, seen = collections.deque([model]), set()
    while frontier:
        trackable = frontier.popleft()  # breadth first: the layers' order
        if id(trackable) in seen:
            continue
        seen.add(id(trackable))
        if isinstance(trackable, tf.Variable):
            found.setdefault(id(trackable), trackable)
            continue
        children = tf.train.TrackableView(trackable).children(trackable)
        frontier.extend(child for name, child in children.items() if name != "optimizer")
    return list(found.values())


def trainable_variables(model: Any) -> list[tf.Variable]:
    return [variable for variable in model_variables(model) if variable.trainable]


def count_params(model: Any) -> int:
    if not is_restored(model):
        return int(model.count_params())
    return int(sum(variable.shape.num_elements() for variable in model_variables(model)))


def kernel_variables(model: Any) -> Iterator[tuple[str, str, tf.Variable]]:
    """``(layer, attribute, variable)`` for each kernel-like variable of a restored model.

    Keras names a variable ``<layer path>/<attribute>:0`` (``dense/kernel:0``,
    ``lstm/lstm_cell/recurrent_kernel:0``), which is all a restored model says about its layers.

    Raises:
      ValueError: two kernels share a name, so a mask could not say which one it belongs to.
    """
    seen: set[str] = set()
    for variable in trainable_variables(model):
        name = variable.name.split(":")[0]
        layer, _, attribute = name.rpartition("/")
        if attribute not in PRUNABLE_WEIGHT_ATTRIBUTES or not variable.shape.rank or variable.shape.rank < 2:
            continue
        if name in seen:
            raise ValueError(f"two kernel variables are both named {name!r}; masks could not tell them apart")
        seen.add(name)
        yield layer or name, attribute, variable


def output_kernel_variables(model: Any) -> set[int]:
    """``id``s of the kernels that are the last ones on some path to a signature's (or the call's) output.

    Read from the functions' graphs with every nested function inlined: walking back from each
    output, a kernel is recorded where an op reads it, and that op's other inputs are not walked.
    """
    by_handle = {id(variable.handle): variable for variable in model_variables(model)}
    kernels = {id(variable) for _, _, variable in kernel_variables(model)}
    found: set[int] = set()
    for function in _output_functions(model):
        graph_def = inlined_graph_def(function)
        captured = {
            internal.op.name: by_handle.get(id(external))
            for internal, external in zip(function.graph.internal_captures, function.captured_inputs, strict=False)
        }
        reads = _GraphReads({node.name: node for node in graph_def.node}, captured, kernels)
        found |= reads.last_kernels_before([tensor.op.name for tensor in function.graph.outputs])
    return found


def inlined_graph_def(function) -> Any:
    """The GraphDef of a concrete function with every nested function call inlined.

    TensorFlow's own helper for this is private (``convert_to_constants``); it is called here only.
    """
    return convert_to_constants._run_inline_graph_optimization(
        function, lower_control_flow=False, aggressive_inlining=True
    )


class _GraphReads:
    """Which kernel variables the ops of an inlined GraphDef read."""

    def __init__(self, nodes: dict, captured: dict, kernels: set[int]):
        self._nodes, self._captured, self._kernels = nodes, captured, kernels

    def _node(self, input_name: str):
        return self._nodes.get(input_name.lstrip("^").split(":")[0])

    def kernel_read_by(self, input_name: str):
        node = self._node(input_name)
        if node is None or node.op != "ReadVariableOp":
            return None
        source = self._node(node.input[0])
        while source is not None and source.op == "Identity":
            source = self._node(source.input[0])
        variable = self._captured.get(source.name) if source is not None else None
        return variable if variable is not None and id(variable) in self._kernels else None

    def last_kernels_before(self, outputs: list[str]) -> set[int]:
        found: set[int] = set()
        frontier, visited = list(outputs), set()
        while frontier:
            name = frontier.pop()
            if name in visited or name not in self._nodes:
                continue
            visited.add(name)
            inputs = [item for item in self._nodes[name].input if not item.startswith("^")]
            read = [variable for variable in map(self.kernel_read_by, inputs) if variable is not None]
            if read:
                found.update(id(variable) for variable in read)
                continue
            frontier.extend(item.split(":")[0] for item in inputs)
        return found


def _output_functions(model: Any) -> list:
    signatures = list(getattr(model, "signatures", {}).values())
    return signatures or [call_function(model, training=False)]


# Keras 3's ``model.export`` names its inference endpoint ``serve``: the model's call with
# training=False, taking the model's inputs as the model does, returning its outputs.
SERVING_ENDPOINT = "serve"


def call_function(model: Any, training: bool):
    """The restored call function traced with ``training``; for a model saved without one (a Keras 3
    ``model.export``), its inference endpoint, whatever ``training`` is: such a model is fine-tuned
    through the function it serves with (dropout off, normalisation statistics as saved).

    Raises:
      NeedsKerasModelError: the model has neither a call function nor an inference endpoint.
    """
    restored_call = model.__call__ if callable(model) else None
    for function in getattr(restored_call, "concrete_functions", []) or []:
        args, _ = function.structured_input_signature
        if len(args) >= 2 and args[1] is training:
            return function
    endpoint = serving_endpoint(model)
    if endpoint is not None:
        return endpoint
    signature = serving_signature(model)
    if signature is not None:
        return signature
    raise NeedsKerasModelError(
        f"the model has no call function traced with training={training} and no {SERVING_ENDPOINT!r} endpoint: "
        "it was saved from something other than a Keras model (or with tf.saved_model.save of a Keras 3 model, "
        "which keeps only its signatures), so it cannot be fine-tuned or measured here; save it with Keras 3's "
        "model.export(dir) or beside a model.keras file"
    )


def serving_signature(model: Any):
    """The serving signature a model saved by ``tf.saved_model.save`` of a Keras 3 model (no call
    function, no endpoint) is trained and measured through: ``serving_default``, or its only one."""
    signatures = dict(getattr(model, "signatures", {}) or {})
    if "serving_default" in signatures:
        return signatures["serving_default"]
    return next(iter(signatures.values())) if len(signatures) == 1 else None


def is_signature(function: Any) -> bool:
    """Signatures take keyword arguments only; call functions and endpoints take positional ones."""
    args, kwargs = function.structured_input_signature
    return not args and bool(kwargs)


def serving_endpoint(model: Any):
    """The one concrete function of a Keras 3 export's ``serve`` endpoint; None when there is none."""
    endpoint = getattr(model, SERVING_ENDPOINT, None)
    functions = list(getattr(endpoint, "concrete_functions", []) or [])
    return functions[0] if len(functions) == 1 else None


def input_structure(model: Any):
    """The structure (TensorSpec, list or dict of them) the restored call function takes (a dict by
    keyword for a signature)."""
    function = call_function(model, training=False)
    args, kwargs = function.structured_input_signature
    return kwargs if is_signature(function) else args[0]


def output_structure(model: Any):
    return call_function(model, training=False).structured_outputs


def call(model: Any, inputs: Any, training: bool):
    """Runs ``model`` on ``inputs``, Keras or restored.

    tf.data turns a list of tensors into one stacked tensor, so datasets carry a restored
    model's list of inputs as a tuple; the restored call function only matches a list.
    """
    if is_restored(model) and isinstance(inputs, tuple) and isinstance(input_structure(model), list):
        inputs = list(inputs)
    if is_restored(model) and not callable(model):
        function = call_function(model, training)
        if not is_signature(function):
            return getattr(model, SERVING_ENDPOINT)(inputs)
        outputs = tf.nest.flatten(function(**inputs))
        return outputs[0] if len(outputs) == 1 else outputs
    return model(inputs, training=training)
