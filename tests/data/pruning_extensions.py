"""A user's module of extensions, as a team would write one: a Keras layer of its own with the
handler that lets structured pruning through it, and a criterion of its own. The components
load it through ``module_file``; nothing in the project names it."""

import numpy as np
import tf_keras as keras

from tfx_model_pruning.engine.importance import ChannelSource, Criterion, register_criterion
from tfx_model_pruning.engine.layer_handlers import Producer, register_layer_handler


@keras.saving.register_keras_serializable(package="pruning_extensions")
class ScaledDense(keras.layers.Layer):
    """Dense with a learned per-unit output scale: kernel (in, units), bias (units,), scale (units,)."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", shape=(input_shape[-1], self.units), initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros")
        self.scale = self.add_weight(name="scale", shape=(self.units,), initializer="ones")

    def call(self, inputs):
        return (inputs @ self.kernel + self.bias) * self.scale

    def get_config(self):
        return {**super().get_config(), "units": self.units}


class KeepFirst(Criterion):
    """Keeps the lowest-numbered channels: a rule no built-in criterion follows, so its use shows.
    Scores are positive, as importance is (higher = keep)."""

    def __call__(self, model, targets, sample=None):
        scores = []
        for target in targets:
            if isinstance(target, ChannelSource):
                channels = target.per_channel(target.kernel.numpy()).shape[1]
                scores.append(np.arange(channels, 0, -1, dtype=np.float64))
            else:
                size = int(np.prod(target.variable.shape))
                scores.append(np.arange(size, 0, -1, dtype=np.float64).reshape(target.variable.shape))
        return scores


register_layer_handler(ScaledDense, Producer("units", {"kernel": (0, 1), "bias": (None, 0), "scale": (None, 0)}))
register_criterion("keep_first", KeepFirst())
