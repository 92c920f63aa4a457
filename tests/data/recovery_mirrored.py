"""Fine-tuning until recovered under MirroredStrategy on two logical CPUs, against one device.

Run as a script (the logical devices must be made before TensorFlow starts); prints one JSON line.
"""

import json
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import tf_keras as keras  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from tfx_model_pruning.engine import FineTuneConfig, PruningConfig, fine_tune, prune_model  # noqa: E402
from tfx_model_pruning.engine.finetune import distribution_strategy  # noqa: E402


def mlp() -> keras.Model:
    inputs = keras.Input((64,))
    hidden = keras.layers.Dense(64, activation="relu", name="hidden")(inputs)
    hidden = keras.layers.BatchNormalization(name="bn")(hidden)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(hidden))
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


x, y = load_digits(return_X_y=True)
x = (x / 16.0).astype("float32")
keras.utils.set_random_seed(0)
parent = mlp()
parent.fit(x[:1200], y[:1200], epochs=10, verbose=0)
report = {}
for name in ("one_device", "mirrored"):
    strategy = distribution_strategy(name)
    with strategy.scope():
        model = mlp()
        model.set_weights(parent.get_weights())
        _, masks = prune_model(model, PruningConfig(target_sparsity=0.9))
        recovery = {"metric": "SparseCategoricalAccuracy", "tolerance": 0.01, "max_steps": 400}
        config = FineTuneConfig(strategy=name, recovery=recovery)
        train, val = (x[:1200], y[:1200]), (x[1200:], y[1200:])
        record = fine_tune(model, train, val, config, masks, parent=parent, verbose=0, optimizer="fresh").recovery
    kernel = model.get_layer("hidden").kernel
    copies = kernel.values if hasattr(kernel, "values") else [kernel]
    report[name] = {
        "replicas": strategy.num_replicas_in_sync,
        "stop_reason": record.stop_reason,
        "parent": record.parent,
        "best": record.best.metric,
        "target": record.target,
        "zeros_held_on_every_replica": all(
            bool(np.all(np.asarray(copy)[~masks["hidden::kernel"]] == 0)) for copy in copies
        ),
        "copies": len(copies),
    }
print(json.dumps(report))
