"""Module file for the stock TFX Trainer, written with Keras 3 (``import keras``, TensorFlow's
default Keras since 2.16): the penguin classifier of ``penguin_trainer``, saved the ways a Keras 3
user saves it.

``run_fn`` writes what a Keras 3 Trainer module usually writes into the serving directory: the
native ``model.keras`` file and, beside it, ``model.export``'s SavedModel for serving. ``save``
writes any one form alone (``SAVE_FORMS``), as the engine's tests need them.
"""

from __future__ import annotations

import os
from typing import Sequence

import keras
import tensorflow as tf

from tfx_model_pruning_pipelines.penguin_trainer import FEATURE_KEYS, HIDDEN_UNITS, NUM_CLASSES, fit

KERAS_FILE = "model.keras"
# keras: model.keras alone; export: model.export() alone; saved_model: tf.saved_model.save with a
# signature parsing serialized tf.Examples (as TFX's example modules write); keras+export: both.
SAVE_FORMS = ("keras", "export", "saved_model", "keras+export")


def build_model(hidden_units: Sequence[int] = HIDDEN_UNITS) -> keras.Model:
    inputs = {key: keras.Input(shape=(1,), name=key) for key in FEATURE_KEYS}
    x = keras.layers.Concatenate()([inputs[key] for key in FEATURE_KEYS])
    for index, units in enumerate(hidden_units):
        x = keras.layers.Dense(units, activation="relu", name=f"hidden_{index}")(x)
    model = keras.Model(inputs=inputs, outputs=keras.layers.Dense(NUM_CLASSES, name="logits")(x))
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy()],
    )
    return model


def example_signature(model: keras.Model):
    """Serialized tf.Examples in, logits out: what TFX's example modules serve."""
    spec = {key: tf.io.FixedLenFeature([1], tf.float32) for key in FEATURE_KEYS}

    @tf.function(input_signature=[tf.TensorSpec(shape=[None], dtype=tf.string, name="examples")])
    def serve_tf_examples_fn(serialized_tf_examples):
        return {"outputs": model(tf.io.parse_example(serialized_tf_examples, spec))}

    return serve_tf_examples_fn


def save(model: keras.Model, serving_model_dir: str, form: str = "keras+export") -> None:
    """Saves ``model`` into ``serving_model_dir`` in one of ``SAVE_FORMS``."""
    if form not in SAVE_FORMS:
        raise ValueError(f"form {form!r} is not one of {SAVE_FORMS}")
    tf.io.gfile.makedirs(serving_model_dir)
    if form in ("export", "keras+export"):
        model.export(serving_model_dir, verbose=False)
    if form == "saved_model":
        tf.saved_model.save(model, serving_model_dir, signatures={"serving_default": example_signature(model)})
    if form in ("keras", "keras+export"):
        model.save(os.path.join(serving_model_dir, KERAS_FILE))


def train(train_files: Sequence[str], eval_files: Sequence[str], train_steps: int, eval_steps: int) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = build_model()
    fit(model, train_files, eval_files, train_steps, eval_steps)
    return model


def run_fn(fn_args) -> None:
    """Entry point the TFX Trainer calls (GenericExecutor): ``model.keras`` beside the export."""
    model = train(fn_args.train_files, fn_args.eval_files, fn_args.train_steps, fn_args.eval_steps or 10)
    save(model, fn_args.serving_model_dir, "keras+export")
