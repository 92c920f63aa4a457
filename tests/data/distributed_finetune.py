"""Fine-tunes one pruned model on one device and under a tf.distribute strategy, plainly and with
gradual pruning and distillation, and prints how the distributed runs compare.

Run as a script (the strategy's devices must be set before TensorFlow starts):
``python distributed_finetune.py mirrored`` splits the CPU into two logical devices first;
``python distributed_finetune.py multi_worker`` reads TF_CONFIG, as each worker's process does.
"""

import json
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

STRATEGY = sys.argv[1]
if STRATEGY == "mirrored":
    (cpu,) = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import tf_keras as keras  # noqa: E402

from tfx_model_pruning.engine import FineTuneConfig, PruningConfig, fine_tune, prune_model  # noqa: E402
from tfx_model_pruning.engine.finetune import distribution_strategy  # noqa: E402

# First: a multi-worker strategy must exist before the program runs any collective.
DISTRIBUTED = distribution_strategy(STRATEGY)

rng = np.random.default_rng(0)
x = rng.normal(size=(512, 8)).astype("float32")
y = np.argmax(x @ rng.normal(size=(8, 3)), axis=1).astype("int64")


def train(strategy_name, gradual_distilled):
    strategy = DISTRIBUTED if strategy_name == STRATEGY else distribution_strategy(strategy_name)
    with strategy.scope():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((8,))
        hidden = keras.layers.Dense(32, activation="relu", name="hidden")(inputs)
        model = keras.Model(inputs, keras.layers.Dense(3, name="out")(hidden))
        teacher = keras.models.clone_model(model) if gradual_distilled else None
        if teacher is not None:
            teacher.set_weights([w * 1.5 for w in model.get_weights()])  # a teacher unlike the student
        _, masks = prune_model(model, PruningConfig(target_sparsity=0.6))
        more = {}
        if gradual_distilled:  # 24 steps: prune from 0.6 to 0.8 on steps 0-16, every 4 steps
            more = {
                "gradual_pruning": {
                    "initial_sparsity": 0.6, "final_sparsity": 0.8, "begin_step": 0, "end_step": 16, "frequency": 4,
                },
                "distillation": {"temperature": 2.0, "alpha": 0.5},
            }  # fmt: skip
        config = FineTuneConfig(
            epochs=3, batch_size=64, learning_rate=0.02, loss="SparseCategoricalCrossentropy",
            from_logits=True, strategy=strategy_name, **more,
        )  # fmt: skip
        optimizer = keras.optimizers.SGD(0.1, 0.9)
        result = fine_tune(model, (x, y), None, config, masks, teacher=teacher, verbose=0, optimizer=optimizer)
    kernel = model.get_layer("hidden").kernel
    replicas = [v.numpy() for v in getattr(kernel, "values", (kernel,))]
    return strategy.num_replicas_in_sync, replicas, result.masks["hidden::kernel"], result.history["loss"]


def compare(gradual_distilled):
    _, (one_kernel,), mask, one_loss = train("one_device", gradual_distilled)
    replicas, kernels, distributed_mask, loss = train(STRATEGY, gradual_distilled)
    return {
        "replicas": replicas,
        "kernels_on_replicas": len(kernels),
        "sparsity": float(1.0 - distributed_mask.mean()),
        "zeros_held_on_every_replica": all(bool(np.all(k[~distributed_mask] == 0)) for k in kernels),
        "same_mask": bool(np.array_equal(mask, distributed_mask)),
        "max_kernel_difference": float(max(np.abs(k - one_kernel).max() for k in kernels)),
        "loss_one_device": one_loss,
        "loss_distributed": loss,
    }


print(json.dumps({"plain": compare(False), "gradual_distilled": compare(True)}))
