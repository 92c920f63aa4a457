"""Module file for the stock TFX Trainer: the baseline penguin classifier to be pruned.

The serving signature parses serialized tf.Examples, as a Trainer export usually does, so
the pruned model downstream must keep it for the Pusher and TFMA.
"""

from __future__ import annotations

import os
from typing import Sequence

import tensorflow as tf
import tf_keras as keras
import tfx as tfx_package  # the bare package, for its data path; not the TFX API

FEATURE_KEYS = ("culmen_length_mm", "culmen_depth_mm", "flipper_length_mm", "body_mass_g")


def penguin_data_root() -> str:
    """The penguin TFRecords that ship inside the tfx package (one folder of gzipped TFRecords per split)."""
    return os.path.join(os.path.dirname(tfx_package.__file__), "components", "testdata", "penguin", "data")


LABEL_KEY = "species"
NUM_CLASSES = 3
HIDDEN_UNITS = (64, 64)
TRAIN_BATCH_SIZE = 20
EVAL_BATCH_SIZE = 10


def _parse_spec(with_label: bool) -> dict[str, tf.io.FixedLenFeature]:
    spec = {key: tf.io.FixedLenFeature([1], tf.float32) for key in FEATURE_KEYS}
    if with_label:
        spec[LABEL_KEY] = tf.io.FixedLenFeature([], tf.int64)
    return spec


def input_fn(file_pattern: Sequence[str], batch_size: int, shuffle: bool = True) -> tf.data.Dataset:
    files = (
        tf.io.gfile.glob(file_pattern)
        if isinstance(file_pattern, str)
        else [path for pattern in file_pattern for path in tf.io.gfile.glob(pattern)]
    )
    dataset = tf.data.TFRecordDataset(sorted(files), compression_type="GZIP")
    if shuffle:
        dataset = dataset.shuffle(1024, seed=0)
    spec = _parse_spec(with_label=True)

    def parse(serialized):
        features = tf.io.parse_example(serialized, spec)
        return features, features.pop(LABEL_KEY)

    return dataset.batch(batch_size).map(parse).repeat()


def build_model(hidden_units: Sequence[int] = HIDDEN_UNITS) -> keras.Model:
    inputs = {key: keras.layers.Input(shape=(1,), name=key) for key in FEATURE_KEYS}
    x = keras.layers.concatenate([inputs[key] for key in FEATURE_KEYS])
    for index, units in enumerate(hidden_units):
        x = keras.layers.Dense(units, activation="relu", name=f"hidden_{index}")(x)
    outputs = keras.layers.Dense(NUM_CLASSES, name="logits")(x)
    model = keras.Model(inputs=inputs, outputs=outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy()],
    )
    return model


def serving_signatures(model: keras.Model) -> dict:
    spec = _parse_spec(with_label=False)

    @tf.function(input_signature=[tf.TensorSpec(shape=[None], dtype=tf.string, name="examples")])
    def serve_tf_examples_fn(serialized_tf_examples):
        return {"outputs": model(tf.io.parse_example(serialized_tf_examples, spec))}

    return {"serving_default": serve_tf_examples_fn}


def fit(model, train_files: Sequence[str], eval_files: Sequence[str], train_steps: int, eval_steps: int) -> None:
    """Trains a compiled penguin classifier of either Keras generation on the penguin TFRecords."""
    model.fit(
        input_fn(train_files, TRAIN_BATCH_SIZE),
        steps_per_epoch=train_steps,
        validation_data=input_fn(eval_files, EVAL_BATCH_SIZE, shuffle=False),
        validation_steps=eval_steps,
        verbose=0,  # the pipeline's log and the Trainer's step line say how it went
    )


def train_and_export(
    train_files: Sequence[str],
    eval_files: Sequence[str],
    serving_model_dir: str,
    train_steps: int,
    eval_steps: int,
) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = build_model()
    fit(model, train_files, eval_files, train_steps, eval_steps)
    model.save(serving_model_dir, save_format="tf", signatures=serving_signatures(model))
    return model


def run_fn(fn_args) -> None:
    """Entry point the TFX Trainer calls (GenericExecutor)."""
    train_and_export(
        fn_args.train_files,
        fn_args.eval_files,
        fn_args.serving_model_dir,
        train_steps=fn_args.train_steps,
        eval_steps=fn_args.eval_steps or 10,
    )
