"""The model TFX's own penguin example builds (``tfx/examples/penguin/penguin_utils_keras.py``)."""

import keras_tuner
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras
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
