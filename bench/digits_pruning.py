"""Benchmark: this project's pruning vs tfmot on the scikit-learn digits images.

    .venv/bin/python bench/digits_pruning.py --seeds 3

Two models: (a) Conv32-Conv64-Pool-Dense128-Dense10, (b) a ResNet-style CNN with BatchNorm and
residual Adds. Every pruned variant gets the same fine-tuning budget (6 epochs) after the same
dense baseline; learning rates 1e-3 and 1e-4 are both tried and the better one is kept, for
every method. Prints one table per model: mean ± standard deviation over the seeds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
import tf_keras as keras  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from tabulate import tabulate  # noqa: E402

from tfx_model_pruning.engine.config import (  # noqa: E402
    GradualPruningSchedule,
    PruningConfig,
    StructuredPruningConfig,
)
from tfx_model_pruning.engine.efficiency import count_flops, cpu_latency_ms, latency_ratio  # noqa: E402
from tfx_model_pruning.engine.finetune import KeepPrunedWeightsZero, mask_variables  # noqa: E402
from tfx_model_pruning.engine.gradual import GradualPruner, masked_train_loop  # noqa: E402
from tfx_model_pruning.engine.magnitude import find_prunable_weights, prune_model  # noqa: E402
from tfx_model_pruning.engine.report import weight_stats, weights_gzip_size  # noqa: E402
from tfx_model_pruning.engine.structured import prune_structured  # noqa: E402

L = keras.layers
BASELINE_EPOCHS = 20
FINE_TUNE_EPOCHS = 6
BATCH_SIZE = 32
LEARNING_RATES = (1e-3, 1e-4)


def digits(seed: int):
    data = load_digits()
    images = (data.images / 16.0).astype("float32")[..., None]
    return train_test_split(images, data.target, test_size=0.25, random_state=seed, stratify=data.target)


def small_cnn() -> keras.Model:
    inputs = keras.Input((8, 8, 1))
    x = L.Conv2D(32, 3, padding="same", activation="relu", name="conv32")(inputs)
    x = L.Conv2D(64, 3, padding="same", activation="relu", name="conv64")(x)
    x = L.MaxPooling2D()(x)
    x = L.Flatten()(x)
    x = L.Dense(128, activation="relu", name="dense128")(x)
    return keras.Model(inputs, L.Dense(10, name="logits")(x), name="small_cnn")


def resnet_cnn() -> keras.Model:
    inputs = keras.Input((8, 8, 1))
    x = L.Conv2D(32, 3, padding="same", name="stem")(inputs)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    for block in range(2):
        y = L.Conv2D(32, 3, padding="same", name=f"block{block}_a")(x)
        y = L.BatchNormalization()(y)
        y = L.ReLU()(y)
        y = L.Conv2D(32, 3, padding="same", name=f"block{block}_b")(y)
        y = L.BatchNormalization()(y)
        x = L.ReLU()(L.Add()([x, y]))
    x = L.MaxPooling2D()(x)
    x = L.Conv2D(64, 3, padding="same", activation="relu", name="head_conv")(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(10, name="logits")(x), name="resnet_cnn")


def compile_model(model: keras.Model, learning_rate: float) -> keras.Model:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["sparse_categorical_accuracy"],
    )
    return model


def accuracy(model: keras.Model, x, y) -> float:
    logits = model.predict(x, batch_size=256, verbose=0)
    return float((logits.argmax(axis=-1) == y).mean())


def clone_of(model: keras.Model) -> keras.Model:
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def best_over_learning_rates(run: Callable[[float], tuple[keras.Model, float]]):
    results = [run(lr) for lr in LEARNING_RATES]
    return max(results, key=lambda result: result[1])


def ours_unstructured(dense: keras.Model, sparsity: float, data, seed: int):
    x_train, x_test, y_train, y_test = data

    def run(learning_rate):
        model = clone_of(dense)
        # Same weights as tfmot prunes (every kernel, output layer included), for an even comparison.
        _, masks = prune_model(model, PruningConfig(target_sparsity=sparsity, protect_output_layer=False))
        compile_model(model, learning_rate)
        keras.utils.set_random_seed(seed)
        model.fit(
            x_train, y_train, batch_size=BATCH_SIZE, epochs=FINE_TUNE_EPOCHS, verbose=0,
            callbacks=[KeepPrunedWeightsZero(mask_variables(model, masks))],
        )  # fmt: skip
        return model, accuracy(model, x_test, y_test)

    return best_over_learning_rates(run)


def tfmot_unstructured(dense: keras.Model, sparsity: float, data, seed: int):
    x_train, x_test, y_train, y_test = data
    steps_per_epoch = int(np.ceil(len(x_train) / BATCH_SIZE))
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0,
        final_sparsity=sparsity,
        begin_step=0,
        end_step=4 * steps_per_epoch,  # reach the target with 2 epochs left to recover
        frequency=steps_per_epoch // 4,  # the default 100 would prune almost nothing on this data
    )

    def run(learning_rate):
        wrapped = tfmot.sparsity.keras.prune_low_magnitude(clone_of(dense), pruning_schedule=schedule)
        compile_model(wrapped, learning_rate)
        keras.utils.set_random_seed(seed)
        wrapped.fit(
            x_train, y_train, batch_size=BATCH_SIZE, epochs=FINE_TUNE_EPOCHS, verbose=0,
            callbacks=[tfmot.sparsity.keras.UpdatePruningStep()],
        )  # fmt: skip
        model = tfmot.sparsity.keras.strip_pruning(wrapped)
        return model, accuracy(model, x_test, y_test)

    return best_over_learning_rates(run)


def ours_gradual(dense: keras.Model, sparsity: float, data, seed: int):
    """The same schedule as the tfmot run, in this project's compiled training step."""
    x_train, x_test, y_train, y_test = data
    steps_per_epoch = int(np.ceil(len(x_train) / BATCH_SIZE))
    schedule = GradualPruningSchedule(
        final_sparsity=sparsity,
        end_step=4 * steps_per_epoch,
        frequency=steps_per_epoch // 4,
        protect_output_layer=False,
    )

    def run(learning_rate):
        model = clone_of(dense)
        compile_model(model, learning_rate)
        keras.utils.set_random_seed(seed)
        train = (
            tf.data.Dataset.from_tensor_slices((x_train, y_train)).shuffle(len(x_train), seed=seed).batch(BATCH_SIZE)
        )
        pruner = GradualPruner(find_prunable_weights(model, schedule.as_pruning_config()), schedule)
        masked_train_loop(
            model, train.repeat(), FINE_TUNE_EPOCHS * steps_per_epoch, model.loss, model.optimizer, pruner=pruner
        )
        return model, accuracy(model, x_test, y_test)

    return best_over_learning_rates(run)


def ours_structured(dense: keras.Model, fraction: float, data, seed: int):
    x_train, x_test, y_train, y_test = data

    def run(learning_rate):
        smaller, _ = prune_structured(clone_of(dense), StructuredPruningConfig(prune_fraction=fraction))
        compile_model(smaller, learning_rate)
        keras.utils.set_random_seed(seed)
        smaller.fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=FINE_TUNE_EPOCHS, verbose=0)
        return smaller, accuracy(smaller, x_test, y_test)

    return best_over_learning_rates(run)


def measure(model: keras.Model, dense: keras.Model, dense_stats: dict, repeats: int) -> dict:
    stats = weight_stats(model)
    return {
        "sparsity": stats["kernel_sparsity"],
        "params": model.count_params(),
        "flops": count_flops(model),
        "size_ratio": weights_gzip_size(model) / dense_stats["gzip"],
        "latency_ratio_64": latency_ratio(model, dense, 64, repeats=repeats),
        "latency_ratio_1": latency_ratio(model, dense, 1, repeats=repeats),
    }


def benchmark(build: Callable[[], keras.Model], seeds: list[int], repeats: int) -> list[list[str]]:
    methods = {
        "ours: magnitude 90% (one-shot + masked fine-tune)": lambda d, data, s: ours_unstructured(d, 0.90, data, s),
        "ours: magnitude 95% (one-shot + masked fine-tune)": lambda d, data, s: ours_unstructured(d, 0.95, data, s),
        "ours: gradual magnitude 90% (same schedule as tfmot)": lambda d, data, s: ours_gradual(d, 0.90, data, s),
        "ours: gradual magnitude 95% (same schedule as tfmot)": lambda d, data, s: ours_gradual(d, 0.95, data, s),
        "tfmot: prune_low_magnitude 90% (PolynomialDecay)": lambda d, data, s: tfmot_unstructured(d, 0.90, data, s),
        "tfmot: prune_low_magnitude 95% (PolynomialDecay)": lambda d, data, s: tfmot_unstructured(d, 0.95, data, s),
        "ours: structured, half width (L1)": lambda d, data, s: ours_structured(d, 0.5, data, s),
    }
    rows: dict[str, list[dict]] = {"dense baseline": []}
    rows.update({name: [] for name in methods})
    for seed in seeds:
        data = digits(seed)
        keras.utils.set_random_seed(seed)
        dense = compile_model(build(), 1e-3)
        dense.fit(data[0], data[2], batch_size=BATCH_SIZE, epochs=BASELINE_EPOCHS, verbose=0)
        dense_accuracy = accuracy(dense, data[1], data[3])
        dense_stats = {
            "gzip": weights_gzip_size(dense),
            "latency_64": cpu_latency_ms(dense, 64, repeats=repeats),
            "latency_1": cpu_latency_ms(dense, 1, repeats=repeats),
        }
        rows["dense baseline"].append(
            {**measure(dense, dense, dense_stats, repeats), "drop": 0.0, "acc": dense_accuracy, **dense_stats}
        )
        for name, method in methods.items():
            started = time.time()
            model, acc = method(dense, data, seed)
            rows[name].append(
                {**measure(model, dense, dense_stats, repeats), "drop": 100 * (dense_accuracy - acc), "acc": acc}
            )
            print(f"  seed {seed} {name}: accuracy {acc:.4f} ({time.time() - started:.0f} s)", file=sys.stderr)
    dense = rows["dense baseline"]
    footnote = (
        "latency ratios: medians timed in alternation with the dense model; dense CPU latency: "
        f"batch 64 {_mean_std([r['latency_64'] for r in dense], '.3f')} ms, "
        f"batch 1 {_mean_std([r['latency_1'] for r in dense], '.3f')} ms (median of {repeats} runs)"
    )
    return [_row(name, results) for name, results in rows.items()], footnote


def _mean_std(values, fmt):
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def _row(name: str, results: list[dict]) -> list[str]:
    pick = lambda key: [r[key] for r in results]  # noqa: E731
    return [
        name,
        _mean_std(pick("sparsity"), ".3f"),
        _mean_std(pick("acc"), ".4f"),
        _mean_std(pick("drop"), ".2f"),
        _mean_std(pick("size_ratio"), ".3f"),
        f"{int(statistics.mean(pick('params')))}",
        f"{int(statistics.mean(pick('flops')))}",
        _mean_std(pick("latency_ratio_64"), ".2f"),
        _mean_std(pick("latency_ratio_1"), ".2f"),
    ]


HEADERS = [
    "method", "kernel sparsity", "accuracy", "drop vs dense (points)", "gzip size ratio", "params", "FLOPs",
    "CPU latency ratio b=64", "CPU latency ratio b=1",
]  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--latency-repeats", type=int, default=50)
    parser.add_argument("--models", nargs="+", choices=["small_cnn", "resnet_cnn"], default=["small_cnn", "resnet_cnn"])
    args = parser.parse_args(argv)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    builders = {"small_cnn": small_cnn, "resnet_cnn": resnet_cnn}
    for name in args.models:
        print(f"\n## {name} on digits ({args.seeds} seeds, {FINE_TUNE_EPOCHS} fine-tuning epochs)\n")
        rows, footnote = benchmark(builders[name], list(range(args.seeds)), args.latency_repeats)
        print(tabulate(rows, headers=HEADERS, tablefmt="github", disable_numparse=True))
        print(f"\n{footnote}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
