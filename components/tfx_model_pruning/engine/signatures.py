"""Serving signatures for a model whose variables changed shape (structured pruning).

The original signatures capture the original variables, so a smaller model needs new ones.
They are rebuilt for the common Trainer forms, serialized tf.Examples parsed into the model's
inputs by name, or parsed into raw features that a tf.Transform layer attached to the model
turns into its inputs (TFX's examples: dense ``FixedLenFeature``, sparse ``VarLenFeature`` for a
feature with missing values, ragged ``RaggedFeature``, as the layer's saved call takes them), and
accepted only if, rebuilt around the *original* model, they reproduce the original signatures'
outputs on real examples. Anything else the original did fails loudly instead of being dropped.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np
import tensorflow as tf

from tfx_model_pruning.engine.data import ExamplesMismatchError, input_feature_spec, model_features, model_input_specs
from tfx_model_pruning.engine.graph import attached_layers, in_layer_graph
from tfx_model_pruning.engine.restored import model_variables, variable_of


class SignatureRebuildError(ValueError):
    """The original serving signature cannot be reproduced for the rebuilt model."""


def _example_signature(model: Any, spec, input_name: str, output_names: list[str], preprocess=None):
    # Without autograph: the function and Keras layers are graph code already, and converting
    # them took most of the one trace of a large model (ResNet50: 15.6 s of it).
    @tf.function(input_signature=[tf.TensorSpec(shape=[None], dtype=tf.string, name=input_name)], autograph=False)
    def serve(serialized):
        features = tf.io.parse_example(serialized, spec)
        if preprocess is not None:
            features = preprocess(features)
        outputs = model(model_features(model, features), training=False)
        if len(output_names) == 1:
            return {output_names[0]: outputs}
        return dict(zip(output_names, outputs, strict=True))

    return serve


def _signature_form(name: str, function) -> tuple[str, list[str]]:
    args, kwargs = function.structured_input_signature
    specs = list(kwargs.items())
    if args or len(specs) != 1 or specs[0][1].dtype != tf.string or specs[0][1].shape.rank != 1:
        raise SignatureRebuildError(
            f"signature {name!r} takes {kwargs or args}; only signatures taking one batch of serialized "
            "tf.Examples can be rebuilt for a structurally pruned model"
        )
    outputs = function.structured_outputs
    if not isinstance(outputs, Mapping):
        raise SignatureRebuildError(f"signature {name!r} returns {type(outputs).__name__}, not a dict of outputs")
    return specs[0][0], sorted(outputs)


_PARSEABLE = (tf.float32, tf.int64, tf.string)


def serialized_input_name(signature) -> Optional[str]:
    """The name of a signature's one input when it takes a batch of serialized tf.Examples."""
    inputs = signature.structured_input_signature[1]
    if len(inputs) == 1:
        ((name, spec),) = inputs.items()
        if spec.dtype == tf.string and spec.shape.rank == 1:
            return name
    return None


def _raw_feature(spec) -> Any:
    """The parsing spec that yields what ``spec`` describes from serialized tf.Examples, or None.

    A dense ``TensorSpec`` is a ``FixedLenFeature``; a ``SparseTensorSpec`` of rank 2 a
    ``VarLenFeature`` (what tf.Transform's raw feature spec gives a feature with missing values,
    as ``tf.io.parse_example`` returns it); a ``RaggedTensorSpec`` of rank 2 a ``RaggedFeature``.
    """
    if spec.dtype not in _PARSEABLE:
        return None
    if isinstance(spec, tf.TensorSpec):
        return tf.io.FixedLenFeature(spec.shape[1:], spec.dtype)
    if isinstance(spec, tf.SparseTensorSpec) and spec.shape.rank == 2:
        return tf.io.VarLenFeature(spec.dtype)
    if isinstance(spec, tf.RaggedTensorSpec) and spec.shape.rank == 2 and spec.ragged_rank == 1:
        return tf.io.RaggedFeature(spec.dtype, row_splits_dtype=spec.row_splits_dtype)
    return None


def _describe(spec: Mapping[str, Any]) -> str:
    sparse = sorted(name for name, feature in spec.items() if isinstance(feature, tf.io.VarLenFeature))
    ragged = sorted(name for name, feature in spec.items() if isinstance(feature, tf.io.RaggedFeature))
    kinds = [
        f"{len(names)} {kind}: {', '.join(names)}" for kind, names in (("sparse", sparse), ("ragged", ragged)) if names
    ]
    return f"{len(spec)} raw features" + (f" ({'; '.join(kinds)})" if kinds else "")


def _shaped_as_traced(features: Mapping[str, Any], specs: Mapping[str, Any]) -> dict[str, Any]:
    """Parsed sparse features with the dense shape the layer's call was traced with.

    ``VarLenFeature`` parses to ``[batch, longest]``; a layer first called with features of at
    most one value saves a call that takes ``[batch, 1]``. ``tf.sparse.reset_shape`` gives them
    that shape, and fails on an example with more values than it holds.
    """
    shaped = dict(features)
    for name, spec in specs.items():
        if isinstance(spec, tf.SparseTensorSpec) and spec.shape[1:].is_fully_defined():
            tensor = features[name]
            shaped[name] = tf.sparse.reset_shape(
                tensor, tf.concat([tensor.dense_shape[:1], tf.constant(spec.shape[1:].as_list(), tf.int64)], axis=0)
            )
    return shaped


def _candidate_forms(model: Any, sample: tf.train.Example) -> list[tuple[str, Any, Any]]:
    """``(description, parse spec, preprocessing)`` for each way a signature may feed the model.

    Either the examples carry the model's inputs, or a layer attached outside the graph (a
    tf.Transform layer) turns the raw features its saved call takes into them; each trace of that
    call is a form, parsing dense, sparse and ragged raw features as the trace takes them. The
    forms that parse fewer features come first, so that a signature is rebuilt to require no more
    than it did (a serving signature that pops the label keeps accepting examples without it).
    """
    forms = []
    try:
        forms.append(("parse the model's inputs", input_feature_spec(model, sample), None))
    except ExamplesMismatchError:
        pass
    preprocessed = []
    for attribute, layer in attached_layers(model).items():
        for function in getattr(layer.call, "concrete_functions", []) or []:
            args, _ = function.structured_input_signature
            raw = args[0] if len(args) == 1 else None
            if not isinstance(raw, Mapping):
                continue
            spec = {name: _raw_feature(tensor_spec) for name, tensor_spec in raw.items()}
            if all(feature is not None for feature in spec.values()):

                def preprocess(features, layer=layer, raw=raw):
                    return layer(_shaped_as_traced(features, raw))

                preprocessed.append((f"parse {_describe(spec)}, then {attribute}", spec, preprocess))
    return forms + sorted(preprocessed, key=lambda form: len(form[1]))


def _reads_model_weights(function, model: Any, serving: Any = None) -> bool:
    """Whether the signature reads the model's weights: the Keras model's own, or those of the
    SavedModel restored beside a Keras 3 ``.keras`` file (``serving``), which its signatures capture."""
    if serving is not None:
        weights = {id(variable.handle) for variable in model_variables(serving)}
    else:
        weights = {
            id(variable.handle)
            for layer in model.layers
            if in_layer_graph(layer)
            for variable in map(variable_of, layer.weights)
            if variable is not None
        }
    return any(id(captured) in weights for captured in function.captured_inputs)


def _raw_input_form(model: Any, function) -> Optional[tuple[list[str], list[str]]]:
    """``(input names, output names)`` of a signature that takes the model's inputs by name and
    returns a dict (Keras 3's ``model.export``: ``serve``/``serving_default``); None otherwise."""
    args, kwargs = function.structured_input_signature
    outputs = function.structured_outputs
    specs = model_input_specs(model)
    if args or not kwargs or set(kwargs) != set(specs) or not isinstance(outputs, Mapping):
        return None
    return sorted(kwargs), sorted(outputs)


def _raw_input_signature(model: Any, function, input_names: list[str], output_names: list[str]):
    specs = function.structured_input_signature[1]

    def serve(*tensors):
        outputs = model(model_features(model, dict(zip(input_names, tensors, strict=True))), training=False)
        flat = tf.nest.flatten(outputs)
        return dict(zip(output_names, flat, strict=True))

    signature = [tf.TensorSpec(specs[name].shape, specs[name].dtype, name=name) for name in input_names]
    return tf.function(serve, input_signature=signature, autograph=False)


def _random_inputs(function, input_names: list[str]) -> dict[str, tf.Tensor]:
    rng = np.random.default_rng(0)
    specs = function.structured_input_signature[1]
    inputs = {}
    for name in input_names:
        shape = [4] + [dim if dim is not None else 1 for dim in specs[name].shape[1:]]
        values = rng.normal(size=shape) if specs[name].dtype.is_floating else rng.integers(0, 2, size=shape)
        inputs[name] = tf.constant(values, dtype=specs[name].dtype)
    return inputs


def _rebuilt_raw_input_signature(name: str, function, original_model: Any, new_model: Any, form):
    """The signature for ``new_model``, accepted if built around the original it reproduces ``function``."""
    input_names, output_names = form
    inputs = _random_inputs(function, input_names)
    expected = function(**inputs)
    twin = _raw_input_signature(original_model, function, input_names, output_names)
    got = twin.python_function(*[inputs[key] for key in input_names])
    if not all(np.allclose(expected[k].numpy(), got[k].numpy(), rtol=1e-4, atol=1e-5) for k in output_names):
        raise SignatureRebuildError(
            f"signature {name!r} takes the model's inputs by name but computes more than the model: it cannot "
            "be carried over to a structurally pruned model"
        )
    return _raw_input_signature(new_model, function, input_names, output_names).get_concrete_function()


def _reproduces(twin, expected, examples: tf.Tensor, output_names: list[str]) -> bool:
    try:
        # Run eagerly: tracing the original model once per form took most of a large model's
        # prune step; only the new model's signature is traced, once.
        got = twin.python_function(examples)
    except Exception:  # this form does not fit the examples; another may
        return False
    return all(np.allclose(expected[k].numpy(), got[k].numpy(), rtol=1e-4, atol=1e-5) for k in output_names)


def without_feature(examples: tf.Tensor, feature: str) -> tf.Tensor:
    """The serialized tf.Examples with ``feature`` removed from each (a request that lacks it)."""
    records = []
    for record in examples.numpy():
        example = tf.train.Example.FromString(record)
        if feature in example.features.feature:
            del example.features.feature[feature]
        records.append(example.SerializeToString())
    return tf.constant(records)


def _with_default(feature: tf.io.FixedLenFeature) -> tf.io.FixedLenFeature:
    dtype = object if feature.dtype == tf.string else feature.dtype.as_numpy_dtype
    default = np.full(feature.shape, b"" if feature.dtype == tf.string else 0, dtype=dtype)
    return tf.io.FixedLenFeature(feature.shape, feature.dtype, default_value=default)


def _optional_as_in_original(
    spec, function, input_name: str, original_model, output_names: list[str], preprocess, sample_examples: tf.Tensor
):
    """``spec`` with a default for each dense feature the original signature does without.

    A layer's saved call may take a feature the signature never parsed (a tf.Transform layer
    first called with the label, then served by a signature that pops it). Each feature the
    form requires is dropped from the sample in turn: where the original still answers, and the
    form with a zero (or empty) default for it reproduces that answer, it gets that default, so
    that the rebuilt signature accepts what the original accepted. Otherwise it stays required.
    """
    relaxed = dict(spec)
    for feature_name, feature in spec.items():
        if not isinstance(feature, tf.io.FixedLenFeature) or feature.default_value is not None:
            continue
        without = without_feature(sample_examples, feature_name)
        try:
            expected = function(**{input_name: without})
        except Exception:  # the original requires it as well (a parse error, whatever its type)
            continue
        trial = {**relaxed, feature_name: _with_default(feature)}
        twin = _example_signature(original_model, trial, input_name, output_names, preprocess)
        if _reproduces(twin, expected, without, output_names):
            relaxed = trial
    return relaxed


def rebuild_example_signatures(
    original_model: Any,
    original_signatures: Mapping[str, tf.types.experimental.ConcreteFunction],
    new_model: Any,
    sample_examples: tf.Tensor,
    serving: Any = None,
) -> dict[str, tf.types.experimental.ConcreteFunction]:
    """Signatures for ``new_model`` with the names, inputs and outputs of the originals.

    A signature that reads none of the model's weights (tf.Transform's ``transform_features``)
    is kept as it is. Any other is rebuilt as "parse serialized tf.Examples, optionally run the
    layer attached for preprocessing, call the model", and accepted only if that form, built
    around the original model, reproduces the original's outputs on ``sample_examples``. A dense
    feature the form parses but the original does without gets a default only if the form also
    reproduces the original on the sample without it (``_optional_as_in_original``). A signature
    taking the model's inputs by name (Keras 3's export) is rebuilt as such, proven on random
    inputs. ``serving`` is the SavedModel restored beside a Keras 3 ``.keras`` file, whose
    variables the original signatures read.

    Raises:
      SignatureRebuildError: an original signature is of another form, or no form reproduces it.
    """
    if not original_signatures:
        raise SignatureRebuildError("the model has no serving signatures to rebuild")
    sample = tf.train.Example.FromString(sample_examples[0].numpy())
    forms = _candidate_forms(original_model, sample)
    rebuilt = {}
    for name, function in original_signatures.items():
        if not _reads_model_weights(function, original_model, serving):
            rebuilt[name] = function
            continue
        raw_form = _raw_input_form(original_model, function)
        if raw_form is not None:
            rebuilt[name] = _rebuilt_raw_input_signature(name, function, original_model, new_model, raw_form)
            continue
        input_name, output_names = _signature_form(name, function)
        if len(output_names) != max(len(original_model.outputs), 1):
            raise SignatureRebuildError(
                f"signature {name!r} returns {output_names}, the model has {len(original_model.outputs)} output(s)"
            )
        try:
            expected = function(**{input_name: sample_examples})
        except Exception as err:
            raise SignatureRebuildError(f"signature {name!r} fails on the sample examples: {err}") from err
        tried = []
        for description, spec, preprocess in forms:
            twin = _example_signature(original_model, spec, input_name, output_names, preprocess)
            if _reproduces(twin, expected, sample_examples, output_names):
                spec = _optional_as_in_original(
                    spec, function, input_name, original_model, output_names, preprocess, sample_examples
                )
                rebuilt[name] = _example_signature(
                    new_model, spec, input_name, output_names, preprocess
                ).get_concrete_function()
                break
            tried.append(description)
        else:
            raise SignatureRebuildError(
                f"signature {name!r} does more than parse tf.Examples into the model's inputs (tried: "
                f"{'; '.join(tried) or 'no form fits the examples'}); it cannot be carried over to a "
                "structurally pruned model"
            )
    return rebuilt
