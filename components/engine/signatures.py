"""Serving signatures for a model whose variables changed shape (structured pruning).

The original signatures capture the original variables, so a smaller model needs new ones.
They are rebuilt for the common Trainer form, serialized tf.Examples parsed into the model's
inputs by name, and accepted only if, rebuilt around the *original* model, they reproduce the
original signatures' outputs on real examples. Anything else the original did (a Transform
graph, extra outputs) fails loudly instead of being dropped.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import tensorflow as tf
import tf_keras as keras

from components.engine.data import input_feature_spec, model_features


class SignatureRebuildError(ValueError):
    """The original serving signature cannot be reproduced for the rebuilt model."""


def _example_signature(model: keras.Model, spec, input_name: str, output_names: list[str]):
    @tf.function(input_signature=[tf.TensorSpec(shape=[None], dtype=tf.string, name=input_name)])
    def serve(serialized):
        outputs = model(model_features(model, tf.io.parse_example(serialized, spec)), training=False)
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


def rebuild_example_signatures(
    original_model: keras.Model,
    original_signatures: Mapping[str, tf.types.experimental.ConcreteFunction],
    new_model: keras.Model,
    sample_examples: tf.Tensor,
) -> dict[str, tf.types.experimental.ConcreteFunction]:
    """Signatures for ``new_model`` with the names, inputs and outputs of the originals.

    Raises:
      SignatureRebuildError: an original signature is of another form, or its rebuilt twin
        around the original model does not reproduce its outputs on ``sample_examples``.
    """
    if not original_signatures:
        raise SignatureRebuildError("the model has no serving signatures to rebuild")
    forms = {name: _signature_form(name, function) for name, function in original_signatures.items()}
    sample = tf.train.Example.FromString(sample_examples[0].numpy())
    spec = input_feature_spec(original_model, sample)
    rebuilt = {}
    for name, function in original_signatures.items():
        input_name, output_names = forms[name]
        if len(output_names) != max(len(original_model.outputs), 1):
            raise SignatureRebuildError(
                f"signature {name!r} returns {output_names}, the model has {len(original_model.outputs)} output(s)"
            )
        twin = _example_signature(original_model, spec, input_name, output_names)
        try:
            expected = function(**{input_name: sample_examples})
            got = twin(sample_examples)
        except Exception as err:
            raise SignatureRebuildError(f"signature {name!r} could not be reproduced: {err}") from err
        for key in output_names:
            if not np.allclose(expected[key].numpy(), got[key].numpy(), rtol=1e-4, atol=1e-5):
                raise SignatureRebuildError(
                    f"signature {name!r} does more than parse tf.Examples into the model's inputs "
                    f"(output {key!r} differs when rebuilt); it cannot be carried over to a structurally pruned model"
                )
        rebuilt[name] = _example_signature(new_model, spec, input_name, output_names).get_concrete_function()
    return rebuilt
