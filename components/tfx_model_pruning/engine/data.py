"""tf.data input for fine-tuning: tf.Examples fed to a model's inputs by name.

Examples that already carry the model's inputs (raw features, or Transform's
``transformed_examples``) are parsed as they are; raw examples for a model trained on a
transform's output go through that transform first (``Preprocessing``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import tensorflow as tf

from tfx_model_pruning.engine.graph import producing_layer
from tfx_model_pruning.engine.restored import input_structure, is_restored, output_structure


class ExamplesMismatchError(ValueError):
    """The examples do not carry what the model or the configuration needs."""


@dataclass(frozen=True)
class Preprocessing:
    """What turns raw features into the features a model was trained on (e.g. a tf.Transform graph)."""

    raw_feature_spec: Mapping[str, Any]
    transform: Callable[[dict[str, tf.Tensor]], Mapping[str, tf.Tensor]]
    output_names: frozenset[str]


def tfrecord_compression(path: str) -> str:
    """tf.data's compression_type for a TFRecord file: ExampleGen writes gzipped ``.gz`` files."""
    return "GZIP" if path.endswith(".gz") else ""


def first_example(file_paths: Sequence[str]) -> tf.train.Example:
    for path in file_paths:
        for record in tf.data.TFRecordDataset(path, compression_type=tfrecord_compression(path)).take(1):
            return tf.train.Example.FromString(record.numpy())
    raise ExamplesMismatchError(f"no examples in {list(file_paths)}")


# The dtype tf.io.parse_example gives each kind of tf.train.Feature.
FEATURE_KIND_DTYPES = {"float_list": tf.float32, "int64_list": tf.int64, "bytes_list": tf.string}


def model_input_specs(model: Any) -> dict[str, tf.TensorSpec]:
    """Each model input by name (the Keras ``Input`` name), Keras or restored model."""
    if not is_restored(model):
        return {
            producing_layer(tensor).name: tf.TensorSpec(tensor.shape, tensor.dtype, producing_layer(tensor).name)
            for tensor in model.inputs
        }
    structure = input_structure(model)
    if isinstance(structure, Mapping):
        return {str(key): spec for key, spec in structure.items()}
    return {spec.name: spec for spec in tf.nest.flatten(structure)}


def model_output_names(model: Any) -> list[str]:
    if not is_restored(model):
        return [producing_layer(tensor).name for tensor in model.outputs]
    structure = output_structure(model)
    if isinstance(structure, Mapping):
        return [str(key) for key in structure]
    return [getattr(spec, "name", None) or f"output_{i}" for i, spec in enumerate(tf.nest.flatten(structure))]


def input_feature_spec(model: Any, sample: tf.train.Example) -> dict[str, tf.io.FixedLenFeature]:
    """A parsing spec with one entry per model input, named after the input.

    Raises:
      ExamplesMismatchError: a model input is absent from the examples.
    """
    available = dict(sample.features.feature)
    spec = {}
    for name, tensor_spec in model_input_specs(model).items():
        if name not in available:
            raise ExamplesMismatchError(
                f"model input {name!r} is not a feature of the examples (they have {sorted(available)}); "
                "name the model inputs after the features, connect the transform_graph whose outputs they are, "
                "or pass a module_file with an input_fn"
            )
        kind = available[name].WhichOneof("kind")
        shape = [dim if dim is not None else 1 for dim in tensor_spec.shape[1:]]
        spec[name] = tf.io.FixedLenFeature(shape, FEATURE_KIND_DTYPES[kind])
    return spec


def feature_spec_for_model(model: Any, label_key: str, sample: tf.train.Example) -> dict[str, tf.io.FixedLenFeature]:
    """``input_feature_spec`` plus the label.

    Raises:
      ExamplesMismatchError: the label or a model input is absent from the examples.
    """
    spec = input_feature_spec(model, sample)
    spec[label_key] = feature_spec_for_label(label_key, sample)
    return spec


def feature_spec_for_label(label_key: str, sample: tf.train.Example) -> tf.io.FixedLenFeature:
    """The parsing spec of one label per example, of the type the examples store it as.

    Raises:
      ExamplesMismatchError: the label is absent from the examples.
    """
    available = dict(sample.features.feature)
    if label_key not in available:
        raise ExamplesMismatchError(
            f"label_key {label_key!r} is not a feature of the examples; they have: {sorted(available)}"
        )
    return tf.io.FixedLenFeature([], FEATURE_KIND_DTYPES[available[label_key].WhichOneof("kind")])


def model_features(model: Any, features: Mapping[str, tf.Tensor]):
    """The model's inputs from a dict of features, cast and shaped as the model takes them."""
    specs = model_input_specs(model)
    inputs = {name: _as_input(features[name], spec) for name, spec in specs.items()}
    if is_restored(model):
        structure = input_structure(model)
        if isinstance(structure, Mapping):
            return {key: inputs[str(key)] for key in structure}
        packed = tf.nest.pack_sequence_as(structure, [inputs[spec.name] for spec in tf.nest.flatten(structure)])
        return tuple(packed) if isinstance(packed, list) else packed  # tf.data would stack a list
    if len(inputs) == 1 and not isinstance(model.input, dict):
        return next(iter(inputs.values()))
    return inputs


def _as_input(tensor: tf.Tensor, spec: tf.TensorSpec) -> tf.Tensor:
    tensor = tf.cast(tensor, spec.dtype)
    # A transform may emit (batch,) where the model takes (batch, 1), or the reverse.
    wanted = spec.shape[1:]
    if wanted.is_fully_defined() and tensor.shape.rank is not None and tensor.shape[1:] != wanted:
        tensor = tf.reshape(tensor, [-1, *wanted.as_list()])
    return tensor


def parse_sample(model: Any, serialized: tf.Tensor, label_key: Optional[str] = None):
    """``(features, labels)`` for the model from a batch of serialized tf.Examples (labels may be None)."""
    sample = tf.train.Example.FromString(serialized[0].numpy())
    examples_input = serialized_examples_input(model, set(sample.features.feature))
    if examples_input is not None:  # a model served from serialized tf.Examples takes them as they are
        labels = None
        if label_key:
            labels = tf.io.parse_example(serialized, {label_key: feature_spec_for_label(label_key, sample)})[label_key]
        return {examples_input: serialized}, labels
    spec = feature_spec_for_model(model, label_key, sample) if label_key else input_feature_spec(model, sample)
    parsed = tf.io.parse_example(serialized, spec)
    return model_features(model, parsed), (parsed[label_key] if label_key else None)


def read_serialized(file_paths: Sequence[str], count: int) -> tf.Tensor:
    """The first ``count`` serialized records of the files, as one string tensor."""
    records = []
    for path in file_paths:
        dataset = tf.data.TFRecordDataset(path, compression_type=tfrecord_compression(path))
        records.extend(record.numpy() for record in dataset.take(count - len(records)))
        if len(records) >= count:
            break
    if not records:
        raise ExamplesMismatchError(f"no examples in {list(file_paths)}")
    return tf.constant(records)


def examples_dataset(
    file_paths: Sequence[str],
    model: Any,
    label_key: str,
    batch_size: int,
    shuffle_buffer: int = 0,
    seed: int = 0,
    preprocessing: Optional[Preprocessing] = None,
) -> tf.data.Dataset:
    """Batches of ``(features, label)`` parsed from TFRecord files of tf.Examples.

    With ``preprocessing``, examples that lack the model's inputs are taken as raw and
    transformed; the label is read from the transformed features or, failing that, the raw ones.

    Raises:
      ExamplesMismatchError: no files, several model outputs, or a label or input found nowhere.
    """
    if not file_paths:
        raise ExamplesMismatchError("no example files given")
    outputs = model_output_names(model)
    if len(outputs) != 1:
        raise ExamplesMismatchError(
            f"the model has {len(outputs)} outputs {outputs} but label_key {label_key!r} gives one label; "
            "fine-tune a multi-output model with a module_file whose input_fn yields a label per output"
        )
    sample = first_example(file_paths)
    available = set(sample.features.feature)
    inputs = set(model_input_specs(model))
    if preprocessing is not None:
        not_transformed = sorted(inputs - preprocessing.output_names)
        if not_transformed:
            raise ExamplesMismatchError(
                f"the transform graph does not output the model input(s) {not_transformed} (it outputs "
                f"{sorted(preprocessing.output_names)}): the model was not trained on this Transform's output"
            )
    parse_raw = preprocessing is not None and not inputs <= available
    examples_input = serialized_examples_input(model, available)
    if examples_input is not None:
        label_spec = {label_key: feature_spec_for_label(label_key, sample)}

        def parse(serialized):
            return {examples_input: serialized}, tf.io.parse_example(serialized, label_spec)[label_key]

    elif parse_raw:
        parse = _raw_parser(model, label_key, preprocessing, available)
    else:
        spec = feature_spec_for_model(model, label_key, sample)

        def parse(serialized):
            parsed = tf.io.parse_example(serialized, spec)
            return model_features(model, parsed), parsed[label_key]

    compression = tfrecord_compression(file_paths[0])
    dataset = tf.data.TFRecordDataset(list(file_paths), compression_type=compression)
    if shuffle_buffer:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).map(parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def serialized_examples_input(model: Any, available: set[str]) -> Optional[str]:
    """The input name of a model that takes serialized tf.Examples (a ``tf.saved_model.save`` of a
    Keras 3 model, trained through its serving signature), for examples that have no such feature;
    None for any other model."""
    if not is_restored(model):
        return None
    specs = model_input_specs(model)
    if len(specs) != 1:
        return None
    ((name, spec),) = specs.items()
    if name in available or spec.dtype != tf.string or spec.shape.rank != 1:
        return None
    return name


def _raw_parser(model: Any, label_key: str, preprocessing: Preprocessing, available: set[str]):
    if label_key not in preprocessing.output_names and label_key not in available:
        raise ExamplesMismatchError(
            f"label_key {label_key!r} is neither a transformed feature ({sorted(preprocessing.output_names)}) "
            f"nor a feature of the examples ({sorted(available)})"
        )
    required = {
        name
        for name, feature in preprocessing.raw_feature_spec.items()
        if isinstance(feature, tf.io.FixedLenFeature) and feature.default_value is None
    }
    missing = sorted(required - available)
    if missing:
        raise ExamplesMismatchError(
            f"the examples lack raw feature(s) {missing} that the transform graph reads; they have {sorted(available)}"
        )
    raw_spec = dict(preprocessing.raw_feature_spec)

    def parse(serialized):
        raw = tf.io.parse_example(serialized, raw_spec)
        transformed = preprocessing.transform(raw)
        label = transformed[label_key] if label_key in preprocessing.output_names else raw[label_key]
        return model_features(model, transformed), label

    return parse
