"""What each method does to size and serving latency: stock MobileNetV2 and ResNet50, float and int8.

    .venv/bin/python bench/serving_methods.py --rounds 3
    stacks/debian13.sh .venv-1.21/bin/python bench/serving_methods.py --rounds 3

Each ``tf_keras.applications`` model (weights=None: nothing is downloaded; 32x32x3 inputs, the
digits' scale in ``bench/serving_speed.py``) is saved with a Trainer's ``serving_default`` and
pruned by ``prune_saved_model``: magnitude at 80% sparsity, magnitude 2:4 (two of every four
weights zero), structured at 50% of the channels
(what ``goal: latency`` chooses). Latency and size do not depend on what the weights learned, so
the models are not trained. Per model and method:

- SavedModel bytes on disk and gzip-compressed (the pushed directory), over the parent's;
- serving latency of ``serving_default`` on 32 (and 1) serialized examples, every model of the
  table timed in alternation (``engine.serving_latency``), over the parent's; ``--rounds``
  rounds, each in a fresh process, give the median ratio and its range;
- the int8 TFLite model (``engine.tflite_int8``, calibrated on 64 examples) in the TFLite
  interpreter: bytes and latency over the float parent's SavedModel. For the magnitude models
  also with ``keep_sparsity`` (TFLite's sparse weight format).
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MODELS = ("MobileNetV2", "ResNet50")
METHODS = ("parent", "magnitude 0.8", "magnitude 2:4", "structured 0.5")
INPUT = "image"


def _examples(count: int, size: int) -> list[bytes]:
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    return [
        tf.train.Example(
            features=tf.train.Features(
                feature={
                    INPUT: tf.train.Feature(float_list=tf.train.FloatList(value=rng.random(size * size * 3))),
                    "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(rng.integers(10))])),
                }
            )
        ).SerializeToString()
        for _ in range(count)
    ]


def prepare(work: str, name: str, size: int) -> dict[str, str]:
    """The parent SavedModel and its pruned versions, made once per work directory."""
    import tensorflow as tf
    import tf_keras as keras

    from tfx_model_pruning.engine import PruningConfig, StructuredPruningConfig, prune_saved_model, save_model

    paths = {method: os.path.join(work, name, method.replace(" ", "-").replace(":", "of")) for method in METHODS}
    if all(os.path.isdir(path) for path in paths.values()):
        return paths
    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, 3), name=INPUT)
    model = getattr(keras.applications, name)(weights=None, input_tensor=inputs, classes=10)
    spec = {INPUT: tf.io.FixedLenFeature([size, size, 3], tf.float32)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve(serialized):
        return {"outputs": model(tf.io.parse_example(serialized, spec), training=False)}

    save_model(model, paths["parent"], {"serving_default": serve})
    sample = tf.constant(_examples(16, size))
    prune_saved_model(paths["parent"], paths["magnitude 0.8"], PruningConfig(target_sparsity=0.8), sample, 0)
    prune_saved_model(paths["parent"], paths["magnitude 2:4"], PruningConfig(n_m="2:4"), sample, 0)
    structured = StructuredPruningConfig(prune_fraction=0.5)
    prune_saved_model(paths["parent"], paths["structured 0.5"], structured, sample, 0)
    return paths


def _directory_bytes(path: str) -> tuple[int, int]:
    """Bytes on disk, and of the directory as one gzip-compressed tar (what a push copies)."""
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, names in os.walk(path) for f in names)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(path, arcname=".")
    return total, len(buffer.getvalue())


def measure(paths: dict[str, str], size: int, repeats: int) -> dict:
    """One round: every model's serving latency in alternation, and each int8 TFLite model's."""
    import numpy as np
    import tensorflow as tf

    from tfx_model_pruning.engine import load_model
    from tfx_model_pruning.engine.serving_latency import time_signatures
    from tfx_model_pruning.engine.tflite_int8 import convert_int8, interpreter_latency

    serialized = _examples(64, size)
    loaded = {method: tf.saved_model.load(path) for method, path in paths.items()}
    timings = time_signatures(
        {method: model.signatures["serving_default"] for method, model in loaded.items()}, serialized, (1, 32), repeats
    )
    images = np.random.default_rng(1).random((64, size, size, 3), dtype=np.float32)
    row = {}
    for method, path in paths.items():
        disk, gzipped = _directory_bytes(path)
        row[method] = {"bytes": disk, "gzip": gzipped, **{f"ms_{b}": timings[method][b].median_ms for b in (1, 32)}}
        keras_model = load_model(path).model
        variants = {"int8": False, "int8 sparse": True} if method.startswith("magnitude") else {"int8": False}
        for variant, sparse in variants.items():
            tflite = convert_int8(keras_model, [{INPUT: images}], keep_sparsity=sparse)
            latency = interpreter_latency(tflite, {INPUT: images}, (1, 32), repeats)
            row[method][variant] = {
                "bytes": len(tflite),
                "gzip": len(gzip.compress(tflite)),
                **{f"ms_{b}": latency[b].median_ms for b in (1, 32)},
            }
    return row


def _ratio_cell(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/serving-methods")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds, each in a fresh process")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per model and batch size per round")
    parser.add_argument("--one-round", help=argparse.SUPPRESS)  # internal: a model whose round to measure
    args = parser.parse_args(argv)
    if args.one_round:
        paths = prepare(args.work, args.one_round, args.image_size)
        print("ROUND " + json.dumps(measure(paths, args.image_size, args.repeats)), flush=True)
        return 0
    from tabulate import tabulate

    table = []
    for name in args.models:
        rounds = []
        for _ in range(args.rounds):
            command = [sys.executable, __file__, "--one-round", name, "--work", args.work]
            command += ["--image-size", str(args.image_size), "--repeats", str(args.repeats)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            rounds.append(json.loads(output.split("ROUND ", 1)[1]))
        parent = rounds[0]["parent"]
        for method in METHODS:
            for variant in ("float", "int8", "int8 sparse"):
                if variant != "float" and variant not in rounds[0][method]:
                    continue
                figures = [r[method] if variant == "float" else r[method][variant] for r in rounds]
                reference = [r["parent"] for r in rounds]
                table.append(
                    [
                        name,
                        method if variant == "float" else f"{method}, {variant} TFLite",
                        f"{figures[0]['bytes'] / 1e6:.2f} ({figures[0]['bytes'] / parent['bytes']:.2f})",
                        f"{figures[0]['gzip'] / 1e6:.2f} ({figures[0]['gzip'] / parent['gzip']:.2f})",
                        f"{statistics.median(f['ms_1'] for f in figures):.2f}",
                        _ratio_cell([f["ms_1"] / p["ms_1"] for f, p in zip(figures, reference, strict=True)]),
                        f"{statistics.median(f['ms_32'] for f in figures):.2f}",
                        _ratio_cell([f["ms_32"] / p["ms_32"] for f, p in zip(figures, reference, strict=True)]),
                    ]
                )
        print(f"{name}: {args.rounds} rounds measured", flush=True)
    headers = ["model", "method", "MB on disk (x parent)", "MB gzip (x parent)", "ms b1", "x parent b1 (range)",
               "ms b32", "x parent b32 (range)"]  # fmt: skip
    print(tabulate(table, headers=headers, tablefmt="github", disable_numparse=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
