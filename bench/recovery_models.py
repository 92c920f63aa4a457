"""Fine-tuning until recovered, with default settings, on a stock architecture we did not write.

    .venv/bin/python bench/recovery_models.py --seeds 3
    .venv/bin/python bench/recovery_models.py --model MobileNetV2 --prune-fraction 0.5 --train-epochs 10

``tf_keras.applications.<model>`` (weights=None: nothing is downloaded) trained on scikit-learn's
digits, each 8x8 image upscaled to 32x32 (nearest) and repeated over three channels; 1,200
train / 597 eval examples. Each seed trains a parent, prunes it structurally (``prune_structured``,
per-layer L1, channels physically removed), and fine-tunes it with ``FineTuneConfig(recovery=
{"metric": "SparseCategoricalAccuracy"})`` and nothing else: the default tolerance (0.005), patience,
budget, schedule and learning rate (0.3 x the parent's); the loss is named, as a pipeline whose
model was saved without one names it. One row per seed: parent and candidate
accuracy, why fine-tuning stopped, its steps and time; then the spread.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from tabulate import tabulate  # noqa: E402

from tfx_model_pruning.engine import FineTuneConfig, fine_tune, prune_structured  # noqa: E402
from tfx_model_pruning.engine.config import StructuredPruningConfig  # noqa: E402
from tfx_model_pruning.engine.efficiency import count_flops  # noqa: E402
from tfx_model_pruning.engine.recovery import batch_norm_layers, recalibrate_batch_norm  # noqa: E402

METRIC = "SparseCategoricalAccuracy"


def digits_32(seed: int):
    x, y = load_digits(return_X_y=True)
    images = (x / 16.0).astype("float32").reshape(-1, 8, 8, 1)
    images = np.repeat(np.repeat(np.repeat(images, 4, axis=1), 4, axis=2), 3, axis=3)  # 32x32x3
    order = np.random.default_rng(seed).permutation(len(y))
    images, y = images[order], y[order]
    return (images[:1200], y[:1200]), (images[1200:], y[1200:])


def parent_model(name: str, seed: int, train, val, epochs: int, batch_size: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = getattr(keras.applications, name)(weights=None, input_shape=(32, 32, 3), classes=10)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(*train, epochs=epochs, batch_size=batch_size, verbose=0)
    # MobileNetV2's BatchNormalization keeps its moving statistics at momentum 0.999: after 10 epochs
    # on 1,200 images they still described the first steps' weights, and the parent scored chance
    # (0.10) in inference mode where it scored 0.84 in training mode. Recomputed from the train
    # split, as fine-tuning recomputes them before each evaluation (recovery.batch_norm_batches).
    batches = tf.data.Dataset.from_tensor_slices(train).batch(32)
    recalibrate_batch_norm(model, batch_norm_layers(model), batches)
    return model


def run(name: str, seed: int, fraction: float, epochs: int, batch_size: int) -> list:
    train, val = digits_32(seed)
    started = time.perf_counter()
    parent = parent_model(name, seed, train, val, epochs, batch_size)
    trained_in = time.perf_counter() - started
    parent_accuracy = parent.evaluate(*val, verbose=0, return_dict=True)["accuracy"]
    smaller, _ = prune_structured(parent, StructuredPruningConfig(prune_fraction=fraction))
    pruned_accuracy = float(np.mean(np.argmax(smaller.predict(val[0], verbose=0, batch_size=256), axis=1) == val[1]))
    config = FineTuneConfig(loss="SparseCategoricalCrossentropy", recovery={"metric": METRIC}, seed=seed)
    started = time.perf_counter()
    tuned = fine_tune(smaller, train, val, config, {}, parent=parent, verbose=0, optimizer="fresh")
    seconds = time.perf_counter() - started
    record = tuned.recovery
    return [
        seed,
        f"{parent.count_params():,} -> {smaller.count_params():,}",
        f"{count_flops(parent):,} -> {count_flops(smaller):,}",
        f"{parent_accuracy:.4f}",
        f"{pruned_accuracy:.4f}",
        f"{record.best.metric:.4f}",
        f"{record.parent - record.best.metric:+.4f}",
        record.stop_reason,
        record.steps,
        f"{seconds:.0f} (train {trained_in:.0f})",
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="MobileNetV2", help="a tf_keras.applications class")
    parser.add_argument("--prune-fraction", type=float, default=0.5)
    parser.add_argument("--train-epochs", type=int, default=10, help="epochs that train each parent")
    parser.add_argument("--train-batch-size", type=int, default=32, help="the parent's batch")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    rows = []
    for seed in range(args.seeds):
        rows.append(run(args.model, seed, args.prune_fraction, args.train_epochs, args.train_batch_size))
        print(rows[-1], flush=True)
    headers = ["seed", "params", "FLOPs", "parent", "pruned", "fine-tuned", "drop", "stopped", "steps", "s"]
    print(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))
    drops = [float(row[6]) for row in rows]
    print(f"drop median {statistics.median(drops):+.4f}, range {min(drops):+.4f} .. {max(drops):+.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
