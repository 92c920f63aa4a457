"""One-shot pruning with no fine-tuning: wanda and sparsegpt against magnitude, on stock CNNs.

    .venv/bin/python bench/oneshot_pruning.py --work runs/oneshot --seeds 2
    .venv/bin/python bench/oneshot_pruning.py --models mobilenetv2 --seeds 1 --train-epochs 3   # a quick look

``tf_keras.applications.MobileNetV2`` and ``ResNet50`` (weights=None: nothing is downloaded),
trained from scratch on scikit-learn's digits upscaled to 32x32x3 (1,200 train, 597 eval), saved
as a TFX Trainer saves them (a SavedModel whose ``serving_default`` parses tf.Examples). Each
parent is then pruned by ``prune_saved_model`` at 50% unstructured and at 2:4, by every method,
each in a fresh process (its wall time and peak RSS are the method's own), and the pruned model's
eval accuracy is measured as pruned: no fine-tuning, no BatchNorm recalibration.

Calibration: the 1,200 train images and the same images shifted by one pixel of the original 8x8
(2,400 examples). ResNet50's last stage sees a 1x1 feature map at 32x32, so each example gives its
1x1 convolutions one row of 2,048 inputs: sparsegpt refuses fewer rows than inputs (its Hessian
would be singular), and 1,200 examples are too few. Every method reads the same examples.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from child_process import run_child  # noqa: E402
from serving_speed import IMAGE_FEATURE, _examples, digits_32, save_as_trainer  # noqa: E402

MODELS = {"mobilenetv2": "MobileNetV2", "resnet50": "ResNet50"}
METHODS = {
    "50%": [
        ("magnitude (global)", {"method": "magnitude", "target_sparsity": 0.5}),
        ("magnitude (per layer)", {"method": "magnitude", "target_sparsity": 0.5, "scope": "per_layer"}),
        ("magnitude (erk)", {"method": "magnitude", "target_sparsity": 0.5, "allocation": "erk"}),
        ("wanda", {"method": "wanda", "target_sparsity": 0.5}),
        ("sparsegpt, layer outputs", {"method": "sparsegpt", "target_sparsity": 0.5, "reconstruct": "layer_outputs"}),
        ("wanda (erk)", {"method": "wanda", "target_sparsity": 0.5, "allocation": "erk"}),
        (
            "sparsegpt (erk), layer outputs",
            {"method": "sparsegpt", "target_sparsity": 0.5, "allocation": "erk", "reconstruct": "layer_outputs"},
        ),
        ("sparsegpt, dense outputs", {"method": "sparsegpt", "target_sparsity": 0.5}),
        (
            "sparsegpt (erk), dense outputs",
            {"method": "sparsegpt", "target_sparsity": 0.5, "allocation": "erk"},
        ),
    ],
    "2:4": [
        ("magnitude", {"method": "magnitude", "n_m": "2:4"}),
        ("wanda", {"method": "wanda", "n_m": "2:4"}),
        ("sparsegpt, layer outputs", {"method": "sparsegpt", "n_m": "2:4", "reconstruct": "layer_outputs"}),
        ("sparsegpt, dense outputs", {"method": "sparsegpt", "n_m": "2:4"}),
    ],
    # 2:4 where sparse tensor cores pay off, the wide kernels; the narrow ones (min_weights) stay dense.
    "2:4, kernels of 64k+ weights": [
        ("magnitude", {"method": "magnitude", "n_m": "2:4", "min_weights": 65536}),
        ("wanda", {"method": "wanda", "n_m": "2:4", "min_weights": 65536}),
        (
            "sparsegpt, layer outputs",
            {"method": "sparsegpt", "n_m": "2:4", "min_weights": 65536, "reconstruct": "layer_outputs"},
        ),
        ("sparsegpt, dense outputs", {"method": "sparsegpt", "n_m": "2:4", "min_weights": 65536}),
    ],
}


def calibration_images(train_images):
    import numpy as np

    shifted = np.roll(train_images, 4, axis=2)  # one pixel of the 8x8 original
    return np.concatenate([train_images, shifted])


def train(model_name: str, seed: int, epochs: int, path: str) -> None:
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf
    import tf_keras as keras

    from tfx_model_pruning.engine.recovery import batch_norm_layers, recalibrate_batch_norm

    train_split, _ = digits_32(seed)
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((32, 32, 3), name=IMAGE_FEATURE)
    model = getattr(keras.applications, MODELS[model_name])(weights=None, input_tensor=inputs, classes=10)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(*train_split, epochs=epochs, batch_size=32, verbose=0)
    # Moving statistics at momentum 0.99/0.999 still describe the first steps after a short training.
    recalibrate_batch_norm(model, batch_norm_layers(model), tf.data.Dataset.from_tensor_slices(train_split).batch(32))
    spec = {IMAGE_FEATURE: tf.io.FixedLenFeature([32, 32, 3], tf.float32)}
    save_as_trainer(model, path, spec)


def prune(parent: str, output: str, config: dict, seed: int, limit: int = 0) -> None:
    """Prunes in this process and prints the figures as JSON (the caller measures peak RSS)."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import time

    import numpy as np
    import tensorflow as tf
    import tf_keras as keras

    from tfx_model_pruning.engine.config import AnyPruningConfig, TypeAdapter
    from tfx_model_pruning.engine.prune import prune_saved_model

    (train_images, train_labels), (eval_images, eval_labels) = digits_32(seed)
    calibration = calibration_images(train_images) if "resnet50" in parent else train_images
    calibration = calibration[:limit] if limit else calibration
    serialized = tf.constant(_examples(calibration, np.concatenate([train_labels, train_labels])[: len(calibration)]))
    started = time.perf_counter()
    if config["method"] == "magnitude" and config.get("allocation") == "erk":
        sparsity, statistics_mib = _magnitude_at_erk(parent, output, config["target_sparsity"]), 0.0
    else:
        parsed = TypeAdapter(AnyPruningConfig).validate_python(
            {**config, **({"calibration_examples": len(calibration)} if config["method"] != "magnitude" else {})}
        )
        result = prune_saved_model(parent, output, parsed, sample_examples=serialized, latency_repeats=0)
        sparsity = result.after.masked_sparsity
        statistics_mib = result.one_shot.peak_statistics_bytes / 2**20 if result.one_shot else 0.0
    seconds = time.perf_counter() - started

    def accuracy(path: str) -> float:
        model = keras.models.load_model(path, compile=False)
        predicted = np.argmax(model.predict(eval_images, batch_size=128, verbose=0), axis=-1)
        return float(np.mean(predicted == eval_labels))

    print(
        json.dumps(
            {
                "accuracy": accuracy(output),
                "parent_accuracy": accuracy(parent),
                "sparsity": sparsity,
                "seconds": seconds,
                "statistics_mib": statistics_mib,
            }
        )
    )


def _magnitude_at_erk(parent: str, output: str, sparsity: float) -> float:
    """Magnitude pruning at the one-shot methods' ERK allocation (the magnitude method has no
    allocation option): the same per-layer sparsities, each layer's smallest |w| cut."""
    import numpy as np
    import tf_keras as keras

    from tfx_model_pruning.engine.config import OneShotPruningConfig
    from tfx_model_pruning.engine.magnitude import find_prunable_weights
    from tfx_model_pruning.engine.masks import keep_largest
    from tfx_model_pruning.engine.oneshot import erk_sparsities

    model = keras.models.load_model(parent, compile=False)
    config = OneShotPruningConfig(method="wanda", target_sparsity=sparsity)  # the same protected layers
    weights = [w for w in find_prunable_weights(model, config) if not w.protected]
    allocated = erk_sparsities({w.key: tuple(w.variable.shape) for w in weights}, sparsity)
    for weight in weights:
        values = weight.variable.numpy()
        weight.variable.assign(values * keep_largest(np.abs(values), allocated[weight.key]))
    model.save(output)
    zeros = sum(int(np.sum(w.variable.numpy() == 0)) for w in weights)
    return zeros / sum(w.variable.shape.num_elements() for w in weights)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="runs/oneshot")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    parser.add_argument("--seeds", type=int, default=2, help="parents trained from this many seeds")
    parser.add_argument("--first-seed", type=int, default=0, help="the first of those seeds (to add seeds later)")
    parser.add_argument("--train-epochs", type=int, default=10)
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="PATTERN/METHOD",
        help="run only these rows, e.g. '50%%/sparsegpt (erk)' '2:4/magnitude'",
    )
    parser.add_argument(
        "--calibration-examples",
        type=int,
        default=0,
        help="the first N calibration examples only (default all; sparsegpt needs at least a layer's inputs)",
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        if kind == "train":
            train(rest[0], int(rest[1]), int(rest[2]), rest[3])
        else:
            prune(rest[0], rest[1], json.loads(rest[2]), int(rest[3]), int(rest[4]))
        return 0

    rows = []
    for model_name in args.models:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            parent = os.path.join(args.work, f"{model_name}-{seed}", "parent")
            if not os.path.isdir(parent):
                trained = run_child(
                    [
                        sys.executable,
                        __file__,
                        "--child",
                        "train",
                        model_name,
                        str(seed),
                        str(args.train_epochs),
                        parent,
                    ]
                )
                print(f"trained {model_name} seed {seed} in {trained.seconds:.0f} s", flush=True)
            for pattern, methods in METHODS.items():
                for label, config in methods:
                    if args.only and f"{pattern}/{label}" not in args.only:
                        continue
                    output = os.path.join(args.work, f"{model_name}-{seed}", f"{pattern}-{label}".replace(" ", "_"))
                    run = run_child(
                        [
                            sys.executable,
                            __file__,
                            "--child",
                            "prune",
                            parent,
                            output,
                            json.dumps(config),
                            str(seed),
                            str(args.calibration_examples),
                        ]
                    )
                    figures = json.loads(run.stdout.strip().splitlines()[-1])
                    row = {
                        "model": model_name,
                        "seed": seed,
                        "pattern": pattern,
                        "method": label,
                        **figures,
                        "peak_rss_mib": run.peak_rss_mib,
                    }
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    results = os.path.join(args.work, f"results-{'-'.join(args.models)}.json")
    if os.path.exists(results):  # rows of an earlier --only run stay, unless measured again
        with open(results) as earlier:
            measured = {(r["seed"], r["pattern"], r["method"]) for r in rows}
            rows = [r for r in json.load(earlier) if (r["seed"], r["pattern"], r["method"]) not in measured] + rows
    with open(results, "w") as out:
        json.dump(rows, out, indent=1)
    print(table(rows))
    return 0


def table(rows: list[dict]) -> str:
    """One line per model, pattern and method: accuracies over the seeds, time and memory medians."""
    lines = [
        "| model | pattern | method | parent accuracy | pruned accuracy | drop | sparsity | prune s | peak RSS MiB "
        "| layer statistics MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = [(pattern, label) for pattern, methods in METHODS.items() for label, _ in methods]
    keys = sorted({(r["model"], r["pattern"], r["method"]) for r in rows}, key=lambda k: (k[0], order.index(k[1:])))
    for model, pattern, method in keys:
        mine = [r for r in rows if (r["model"], r["pattern"], r["method"]) == (model, pattern, method)]
        parents = " / ".join(f"{r['parent_accuracy']:.3f}" for r in mine)
        pruned = " / ".join(f"{r['accuracy']:.3f}" for r in mine)
        drops = " / ".join(f"{r['parent_accuracy'] - r['accuracy']:+.3f}" for r in mine)
        lines.append(
            f"| {model} | {pattern} | {method} | {parents} | {pruned} | {drops} | "
            f"{statistics.median(r['sparsity'] for r in mine):.3f} | "
            f"{statistics.median(r['seconds'] for r in mine):.1f} | "
            f"{statistics.median(r['peak_rss_mib'] for r in mine):.0f} | "
            f"{statistics.median(r['statistics_mib'] for r in mine):.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
