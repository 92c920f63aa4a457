"""tf.data input for fine-tuning: tf.Examples fed to a Keras model's inputs by name."""

from __future__ import annotations

from typing import Optional, Sequence

import tensorflow as tf
import tf_keras as keras


class ExamplesMismatchError(ValueError):
    """The examples do not carry what the model or the configuration needs."""


def _compression(path: str) -> str:
    return "GZIP" if path.endswith(".gz") else ""


def first_example(file_paths: Sequence[str]) -> tf.train.Example:
    for path in file_paths:
        for record in tf.data.TFRecordDataset(path, compression_type=_compression(path)).take(1):
            return tf.train.Example.FromString(record.numpy())
    raise ExamplesMismatchError(f"no examples in {list(file_paths)}")


_KIND_TO_DTYPE = {"float_list": tf.float32, "int64_list": tf.int64, "bytes_list": tf.string}


def input_feature_spec(model: keras.Model, sample: tf.train.Example) -> dict[str, tf.io.FixedLenFeature]:
    """A parsing spec with one entry per model input, named after the input.

    Raises:
      ExamplesMismatchError: a model input is absent from the examples.
    """
    available = dict(sample.features.feature)
    spec = {}
    for tensor in model.inputs:
        name = tensor._keras_history.layer.name
        if name not in available:
            raise ExamplesMismatchError(
                f"model input {name!r} is not a feature of the examples (they have {sorted(available)}); "
                "name the model inputs after the features or pass a module_file with an input_fn"
            )
        kind = available[name].WhichOneof("kind")
        shape = [dim if dim is not None else 1 for dim in tensor.shape[1:]]
        spec[name] = tf.io.FixedLenFeature(shape, _KIND_TO_DTYPE[kind])
    return spec


def feature_spec_for_model(
    model: keras.Model, label_key: str, sample: tf.train.Example
) -> dict[str, tf.io.FixedLenFeature]:
    """``input_feature_spec`` plus the label.

    Raises:
      ExamplesMismatchError: the label or a model input is absent from the examples.
    """
    available = dict(sample.features.feature)
    if label_key not in available:
        raise ExamplesMismatchError(
            f"label_key {label_key!r} is not a feature of the examples; they have: {sorted(available)}"
        )
    spec = input_feature_spec(model, sample)
    spec[label_key] = tf.io.FixedLenFeature([], _KIND_TO_DTYPE[available[label_key].WhichOneof("kind")])
    return spec


def model_features(model: keras.Model, parsed: dict[str, tf.Tensor]):
    """Casts parsed features to the model's input dtypes, in the structure the model is called with."""
    dtypes = {t._keras_history.layer.name: t.dtype for t in model.inputs}
    features = {name: tf.cast(parsed[name], dtype) for name, dtype in dtypes.items()}
    if len(features) == 1 and not isinstance(model.input, dict):
        return next(iter(features.values()))
    return features


def parse_sample(model: keras.Model, serialized: tf.Tensor, label_key: Optional[str] = None):
    """``(features, labels)`` for the model from a batch of serialized tf.Examples (labels may be None)."""
    sample = tf.train.Example.FromString(serialized[0].numpy())
    spec = feature_spec_for_model(model, label_key, sample) if label_key else input_feature_spec(model, sample)
    parsed = tf.io.parse_example(serialized, spec)
    return model_features(model, parsed), (parsed[label_key] if label_key else None)


def read_serialized(file_paths: Sequence[str], count: int) -> tf.Tensor:
    """The first ``count`` serialized records of the files, as one string tensor."""
    records = []
    for path in file_paths:
        for record in tf.data.TFRecordDataset(path, compression_type=_compression(path)).take(count - len(records)):
            records.append(record.numpy())
        if len(records) >= count:
            break
    if not records:
        raise ExamplesMismatchError(f"no examples in {list(file_paths)}")
    return tf.constant(records)


def examples_dataset(
    file_paths: Sequence[str],
    model: keras.Model,
    label_key: str,
    batch_size: int,
    shuffle_buffer: int = 0,
    seed: int = 0,
) -> tf.data.Dataset:
    """Batches of ``(features, label)`` parsed from TFRecord files of tf.Examples."""
    if not file_paths:
        raise ExamplesMismatchError("no example files given")
    if len(model.outputs) != 1:
        names = [tensor._keras_history.layer.name for tensor in model.outputs]
        raise ExamplesMismatchError(
            f"the model has {len(names)} outputs {names} but label_key {label_key!r} gives one label; "
            "fine-tune a multi-output model with a module_file whose input_fn yields a label per output"
        )
    spec = feature_spec_for_model(model, label_key, first_example(file_paths))
    compression = _compression(file_paths[0])
    dataset = tf.data.TFRecordDataset(list(file_paths), compression_type=compression)
    if shuffle_buffer:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)

    def parse(serialized):
        parsed = tf.io.parse_example(serialized, spec)
        return model_features(model, parsed), parsed[label_key]

    return dataset.batch(batch_size).map(parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
