"""A user's own layers, registered with a handler, are pruned structurally like built-in ones."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from equivalence import check_equivalent

from tfx_model_pruning.engine.importance import ChannelSource, Criterion
from tfx_model_pruning.engine.layer_handlers import (
    ChannelWise,
    LayerHandler,
    Producer,
    handler_for,
    register_layer_handler,
    unregister_layer_handler,
)
from tfx_model_pruning.engine.structured import (
    StructuredPruningConfig,
    StructuredPruningError,
    analyse,
    prune_structured,
)

L = keras.layers


class ScaledDense(L.Layer):
    """Dense with a learned per-unit output scale: kernel (in, units), bias (units,), scale (units,)."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight("kernel", (input_shape[-1], self.units))
        self.bias = self.add_weight("bias", (self.units,), initializer="random_normal")
        self.scale = self.add_weight("scale", (self.units,), initializer="random_uniform")

    def call(self, inputs):
        return tf.nn.relu((inputs @ self.kernel + self.bias) * self.scale)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


class ChannelGain(L.Layer):
    """Multiplies each channel by its own learned gain."""

    def build(self, input_shape):
        self.gain = self.add_weight("gain", (input_shape[-1],), initializer="random_uniform")

    def call(self, inputs):
        return inputs * self.gain


@pytest.fixture
def registered():
    register_layer_handler(ScaledDense, Producer("units", {"kernel": (0, 1), "bias": (None, 0), "scale": (None, 0)}))
    register_layer_handler(ChannelGain, ChannelWise({"gain": 0}))
    yield
    unregister_layer_handler(ScaledDense)
    unregister_layer_handler(ChannelGain)


def _model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((10,))
    a = ScaledDense(16, name="scaled_a")(inputs)
    a = ChannelGain(name="gain")(a)
    b = L.Dense(16, name="b")(inputs)
    joined = L.Add(name="add")([a, b])  # couples scaled_a's units with b's
    hidden = ScaledDense(12, name="scaled_c")(joined)
    return keras.Model(inputs, L.Dense(3, name="out")(hidden))


def test_a_registered_custom_layer_is_pruned_and_matches_the_disconnected_original(registered):
    model = _model()
    smaller, graph = check_equivalent(model, fraction=0.5)
    assert not graph.barriers
    assert {"scaled_a", "b", "scaled_c"} <= set(graph.producers)
    widths = {name: smaller.get_layer(name).output.shape[-1] for name in ("scaled_a", "gain", "b", "scaled_c")}
    assert widths == {"scaled_a": 8, "gain": 8, "b": 8, "scaled_c": 6}
    assert smaller.get_layer("gain").gain.shape == (8,)
    assert smaller.get_layer("scaled_a").scale.shape == (8,)


def test_unregistered_custom_layers_are_barriers_and_say_how_to_fix_it():
    model = _model()
    graph = analyse(model)
    assert "register a layer handler" in graph.barriers["scaled_a"]
    assert "scaled_a" not in graph.producers
    assert set(graph.barriers) == {"scaled_a", "gain", "scaled_c"}
    # b is coupled through the Add to a barrier's output, so nothing is left to remove, and it says so.
    with pytest.raises(StructuredPruningError, match="no unit or filter can be removed.*register a layer handler"):
        prune_structured(model, StructuredPruningConfig(prune_fraction=0.5))


def test_a_subclass_that_overrides_call_does_not_inherit_its_parents_handler():
    class ClippedDense(L.Dense):
        def call(self, inputs):
            return tf.clip_by_value(super().call(inputs), -1.0, 1.0)

    class RenamedDense(L.Dense):
        pass

    assert isinstance(handler_for(RenamedDense(3)), Producer)
    assert type(handler_for(ClippedDense(3))) is LayerHandler  # the barrier default


def test_registration_rejects_what_is_not_a_layer_or_handler():
    with pytest.raises(TypeError, match="not a tf-keras or Keras 3 Layer class"):
        register_layer_handler(int, LayerHandler())
    with pytest.raises(TypeError, match="not a LayerHandler"):
        register_layer_handler(ScaledDense, object())


def test_a_user_criterion_object_chooses_what_goes():
    class LastChannelsFirst(Criterion):
        """Scores channel i as i: the first channels are removed."""

        def __call__(self, model, targets, sample=None):
            assert all(isinstance(t, ChannelSource) for t in targets)
            return [np.arange(t.kernel.shape[t.output_axis], dtype=float) for t in targets]

    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    model = keras.Model(inputs, L.Dense(2, name="out")(L.Dense(8, name="hidden")(inputs)))
    smaller, _ = prune_structured(model, StructuredPruningConfig(prune_fraction=0.5), criterion=LastChannelsFirst())
    np.testing.assert_array_equal(smaller.get_layer("hidden").kernel.numpy(), model.get_layer("hidden").kernel[:, 4:])
