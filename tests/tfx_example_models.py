"""The models TFX's own penguin and Chicago taxi examples build
(``tfx/examples/penguin/penguin_utils_keras.py``, ``tfx/examples/chicago_taxi_pipeline/taxi_utils_native_keras.py``)."""

import csv
import os
from typing import Any

import keras_tuner
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras
from tfx.examples.chicago_taxi_pipeline import taxi_utils_native_keras
from tfx.examples.penguin import penguin_utils_base, penguin_utils_keras


def penguin_example_model() -> keras.Model:
    """``_make_keras_model`` with the example's default hyperparameters: four ``*_xf`` inputs."""
    keras.backend.clear_session()  # layers named dense, dense_1, dense_2 whatever ran before
    hyperparameters = keras_tuner.HyperParameters()
    hyperparameters.Fixed("learning_rate", 1e-2)
    hyperparameters.Fixed("num_layers", 2)
    return penguin_utils_keras._make_keras_model(hyperparameters)


def save_penguin_example(path, transform_graph_dir: str, with_keras: bool) -> str:
    """What the example's ``run_fn`` saves, without the training: its two signatures, and the
    tf.Transform layer they call attached to the model. ``with_keras`` saves with ``model.save``
    (the one-line change) instead of ``tf.saved_model.save``."""
    model = penguin_example_model()
    signatures = penguin_utils_base.make_serving_signatures(model, tft.TFTransformOutput(transform_graph_dir))
    if with_keras:
        model.save(str(path), save_format="tf", signatures=signatures)
    else:
        tf.saved_model.save(model, str(path), signatures=signatures)
    return str(path)


# TFX's Chicago taxi example (``tfx/examples/chicago_taxi_pipeline/taxi_utils_native_keras.py``):
# 10 of its 17 raw features have missing values, so they reach the tf.Transform layer as
# SparseTensors (VarLenFeature), and its label ``tips_xf`` is computed by the transform.
TAXI_MODULE = taxi_utils_native_keras.__file__.removesuffix("c")  # the .py, never a .pyc
TAXI_CSV = os.path.join(os.path.dirname(TAXI_MODULE), "data", "simple", "data.csv")
# The hidden layers its run_fn builds: 100 units, decaying by 0.7 over four layers.
TAXI_HIDDEN_UNITS = [max(2, int(100 * 0.7**i)) for i in range(4)]


def taxi_rows(count: int) -> tuple[list[str], list[list[str]]]:
    """The CSV header and its first ``count`` rows plus its last, the only one of the 15,002 that
    has a ``pickup_census_tract`` (without it the column is empty, and has no type to infer)."""
    with open(TAXI_CSV, newline="") as f:
        header, *rows = list(csv.reader(f))
    return header, rows[:count] + rows[-1:]


def write_taxi_csv(path, count: int) -> int:
    header, rows = taxi_rows(count)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return len(rows)


_PARSERS = {tf.int64: int, tf.float32: float, tf.string: str.encode}


def _column_type(values: list[str]) -> tf.DType:
    present = [value for value in values if value != ""]
    for dtype in (tf.int64, tf.float32):
        try:
            [_PARSERS[dtype](value) for value in present]
        except ValueError:
            continue
        return dtype
    return tf.string


def taxi_raw_spec(header: list[str], rows: list[list[str]]) -> dict[str, Any]:
    """The raw feature spec CsvExampleGen + SchemaGen(infer_feature_shape=True) give the CSV: a
    column's type as CsvExampleGen infers it, ``VarLenFeature`` where a value is missing."""
    spec = {}
    for i, name in enumerate(header):
        values = [row[i] for row in rows]
        dtype = _column_type(values)
        spec[name] = tf.io.VarLenFeature(dtype) if "" in values else tf.io.FixedLenFeature([1], dtype)
    return spec


def taxi_instances(header: list[str], rows: list[list[str]], spec: dict[str, Any]) -> list[dict[str, list]]:
    """The rows as tf.Transform's Beam analysis takes them, typed by ``spec`` (a missing value is an empty list)."""
    parsers = [_PARSERS[spec[name].dtype] for name in header]
    return [
        {name: [parse(value)] if value != "" else [] for name, parse, value in zip(header, parsers, row, strict=True)}
        for row in rows
    ]


def taxi_examples(header: list[str], rows: list[list[str]], spec: dict[str, Any]) -> tf.Tensor:
    """The rows as serialized tf.Examples, as CsvExampleGen writes them (a missing value: no feature)."""
    serialized = []
    for instance in taxi_instances(header, rows, spec):
        example = tf.train.Example()
        for name, values in instance.items():
            if not values:
                continue
            feature = example.features.feature[name]
            if isinstance(values[0], bytes):
                feature.bytes_list.value.extend(values)
            elif isinstance(values[0], int):
                feature.int64_list.value.extend(values)
            else:
                feature.float_list.value.extend(values)
        serialized.append(example.SerializeToString())
    return tf.constant(serialized)


def train_taxi_example(
    path, transform_graph_dir: str, examples: tf.Tensor, epochs: int, share_transform_layer: bool = False
) -> str:
    """What the taxi example's ``run_fn`` saves with the one-line change (``model.save``):
    ``_build_keras_model`` with its hidden units, trained on the transform of ``examples``
    (label ``tips_xf``), its two signatures, and the tf.Transform layer they call attached.

    As in ``run_fn``, the saved layer is first called by the serving signature (raw features
    without the label, sparse ones of dense shape ``[batch, None]``); ``share_transform_layer``
    trains through that same layer first, so that its call is saved as called on the training
    batch instead (the label included, sparse features of dense shape ``[batch, 1]``).
    """
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    output = tft.TFTransformOutput(transform_graph_dir)
    training = output if share_transform_layer else tft.TFTransformOutput(transform_graph_dir)
    transformed = training.transform_features_layer()(tf.io.parse_example(examples, training.raw_feature_spec()))
    model = taxi_utils_native_keras._build_keras_model(hidden_units=TAXI_HIDDEN_UNITS)
    inputs = {name: transformed[name] for name in model.input_names}
    model.fit(inputs, transformed["tips_xf"], batch_size=40, epochs=epochs, verbose=0)
    signatures = {
        "serving_default": taxi_utils_native_keras._get_tf_examples_serving_signature(model, output),
        "transform_features": taxi_utils_native_keras._get_transform_features_signature(model, output),
    }
    model.save(str(path), save_format="tf", signatures=signatures)
    return str(path)


TAXI_SAVED_MODEL_SAVE = "tf.saved_model.save(model, fn_args.serving_model_dir, signatures=signatures)"


def taxi_module_saving_with_keras(directory) -> str:
    """A copy of the taxi module with the one-line change: ``model.save`` instead of ``tf.saved_model.save``."""
    with open(TAXI_MODULE) as f:
        source = f.read()
    assert source.count(TAXI_SAVED_MODEL_SAVE) == 1
    path = os.path.join(str(directory), "taxi_utils_keras_saved.py")
    with open(path, "w") as f:
        f.write(
            source.replace(
                TAXI_SAVED_MODEL_SAVE,
                "model.save(fn_args.serving_model_dir, save_format='tf', signatures=signatures)",
            )
        )
    return path
