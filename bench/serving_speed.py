"""Is the pushed model faster where it is served? A stock MobileNetV2 through the whole pipeline.

    .venv/bin/python bench/serving_speed.py --work /tmp/serving-speed --runs 3
    stacks/debian13.sh .venv-1.21/bin/python bench/serving_speed.py --work /tmp/serving-speed-121

``tf_keras.applications.MobileNetV2`` (weights=None: nothing is downloaded) trained on
scikit-learn's digits, each 8x8 image upscaled to 32x32 (nearest) over three channels, saved as a
TFX Trainer saves it: a SavedModel whose ``serving_default`` parses serialized tf.Examples. Each
run is ``prune-pipeline run-local``: structured pruning at 0.5, fine-tuning until recovered, and
the gate with ``max_latency_ratio`` (default 0.7) at batch 32 against the parent (accuracy within 0.05, and an
int8 TFLite model checked on its own). Then, in a fresh process,
the pushed SavedModel and the parent are timed again, independently of the gate: 32 serialized
eval examples through ``serving_default``, the two models in alternation. The table gives the
gate's and the independent medians side by side, and how far apart they are.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import textwrap

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_FEATURE, LABEL = "image", "label"
TRAIN_EXAMPLES = 1200  # the rest of the 1,797 digits are the eval split


def _examples(images, labels) -> list[bytes]:
    import tensorflow as tf

    return [
        tf.train.Example(
            features=tf.train.Features(
                feature={
                    IMAGE_FEATURE: tf.train.Feature(float_list=tf.train.FloatList(value=image.reshape(-1))),
                    LABEL: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
                }
            )
        ).SerializeToString()
        for image, label in zip(images, labels, strict=True)
    ]


def digits_32(seed: int = 0):
    import numpy as np
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    images = (x / 16.0).astype("float32").reshape(-1, 8, 8, 1)
    images = np.repeat(np.repeat(np.repeat(images, 4, axis=1), 4, axis=2), 3, axis=3)  # 32x32x3
    order = np.random.default_rng(seed).permutation(len(y))
    images, y = images[order], y[order]
    return (images[:TRAIN_EXAMPLES], y[:TRAIN_EXAMPLES]), (images[TRAIN_EXAMPLES:], y[TRAIN_EXAMPLES:])


def write_data(root: str) -> None:
    """The digits as TFX's ExampleGen writes them: gzipped TFRecords under Split-train/ and Split-eval/."""
    import tensorflow as tf

    train, val = digits_32()
    for split, (images, labels) in (("train", train), ("eval", val)):
        os.makedirs(os.path.join(root, f"Split-{split}"), exist_ok=True)
        path = os.path.join(root, f"Split-{split}", "data_tfrecord-00000-of-00001.gz")
        with tf.io.TFRecordWriter(path, options="GZIP") as writer:
            for record in _examples(images, labels):
                writer.write(record)


def train_parent(path: str, epochs: int) -> None:
    """MobileNetV2 trained on the digits, saved with a Trainer's serving signature."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf
    import tf_keras as keras

    from tfx_model_pruning.engine.recovery import batch_norm_layers, recalibrate_batch_norm

    train, _ = digits_32()
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3), name=IMAGE_FEATURE)
    model = keras.applications.MobileNetV2(weights=None, input_tensor=inputs, classes=10)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(*train, epochs=epochs, batch_size=32, verbose=0)
    # Moving statistics at momentum 0.999 still describe the first steps after a short training.
    recalibrate_batch_norm(model, batch_norm_layers(model), tf.data.Dataset.from_tensor_slices(train).batch(32))
    spec = {IMAGE_FEATURE: tf.io.FixedLenFeature([32, 32, 3], tf.float32)}
    save_as_trainer(model, path, spec)


def save_as_trainer(model, path: str, feature_spec: dict) -> None:
    """Saves ``model`` as a TFX Trainer module does: ``serving_default`` parses serialized tf.Examples."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve(serialized):
        return {"outputs": model(tf.io.parse_example(serialized, feature_spec), training=False)}

    model.save(path, signatures={"serving_default": serve})


PIPELINE = """\
name: serving-speed
data:
  root: {data}
  label_key: label
model:
  baseline_model: {parent}
prune:
  method: structured
  prune_fraction: 0.5
retrain: {{loss: SparseCategoricalCrossentropy}}
gate:
  thresholds:
    - {{metric: SparseCategoricalAccuracy, lower_bound: 0.8, max_absolute_drop: 0.05}}
  compare_with: [parent]
  max_latency_ratio: {max_latency_ratio}
  latency_batch_size: 32
  int8_tflite: {{}}
"""


def run_pipeline(work: str, output_dir: str, max_latency_ratio: float) -> int:
    config = os.path.join(work, "pipeline.yaml")
    data, parent = os.path.join(work, "data"), os.path.join(work, "parent")
    with open(config, "w") as f:
        f.write(PIPELINE.format(data=data, parent=parent, max_latency_ratio=max_latency_ratio))
    command = [sys.executable, "-m", "tfx_model_pruning_pipelines.cli", "run-local", "--config", config]
    return subprocess.run([*command, "--output-dir", output_dir], check=False).returncode


INDEPENDENT_TIMING = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np, tensorflow as tf
    pushed, parent, eval_file, batch, repeats = sys.argv[1:6]
    batch, repeats = int(batch), int(repeats)
    records = [r.numpy() for r in tf.data.TFRecordDataset(eval_file, compression_type="GZIP").take(batch)]
    examples = tf.constant(records)
    serve = {name: tf.saved_model.load(path).signatures["serving_default"] for name, path in
             (("pushed", pushed), ("parent", parent))}
    for fn in serve.values():
        for _ in range(5):
            fn(examples=examples)
    times = {name: [] for name in serve}
    for _ in range(repeats):
        for name, fn in serve.items():
            start = time.perf_counter()
            tf.nest.map_structure(lambda t: t.numpy(), fn(examples=examples))
            times[name].append((time.perf_counter() - start) * 1000)
    print(json.dumps({name: float(np.median(values)) for name, values in times.items()}))
    """
)


def independent_timing(pushed: str, parent: str, eval_file: str, batch: int, repeats: int) -> dict:
    command = [sys.executable, "-c", INDEPENDENT_TIMING, pushed, parent, eval_file, str(batch), str(repeats)]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def one_run(work: str, index: int, repeats: int, max_latency_ratio: float) -> dict:
    output_dir = os.path.join(work, f"run-{index}")
    code = run_pipeline(work, output_dir, max_latency_ratio)
    (result_path,) = glob.glob(os.path.join(output_dir, "**", "gate_result.json"), recursive=True)
    with open(result_path) as f:
        result = json.load(f)
    pushed = sorted(glob.glob(os.path.join(output_dir, "serving", "[0-9]*")))
    row = {"exit": code, "blessed": result.get("blessed"), "pushed": bool(pushed)}
    row["int8_pushed"] = bool(pushed) and os.path.isfile(os.path.join(pushed[-1], "model_int8.tflite"))
    int8 = result.get("int8") or {}
    if int8.get("path"):
        row.update(
            int8_accuracy=int8["metrics"]["SparseCategoricalAccuracy"],
            int8_ms=int8["latency"]["32"]["median_ms"],
            int8_bytes=int8["size_bytes"],
            candidate_bytes=result["weights"]["candidate"]["saved_model_bytes"],
        )
    weights = result["weights"]
    row.update(
        parent_params=weights["baseline"]["params"],
        candidate_params=weights["candidate"]["params"],
        gate_parent_ms=weights["baseline"]["latency"]["32"]["median_ms"],
        gate_candidate_ms=weights["candidate"]["latency"]["32"]["median_ms"],
        gate_parent_ms_1=weights["baseline"]["latency"]["1"]["median_ms"],
        gate_candidate_ms_1=weights["candidate"]["latency"]["1"]["median_ms"],
        parent_accuracy=result["metrics"]["baseline"]["sparse_categorical_accuracy"],
        candidate_accuracy=result["metrics"]["candidate"]["sparse_categorical_accuracy"],
    )
    if pushed:
        eval_file = glob.glob(os.path.join(work, "data", "Split-eval", "*"))[0]
        timing = independent_timing(pushed[-1], os.path.join(work, "parent"), eval_file, 32, repeats)
        row.update(independent_parent_ms=timing["parent"], independent_pushed_ms=timing["pushed"])
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/serving-speed", help="data, parent and runs (kept between calls)")
    parser.add_argument("--runs", type=int, default=3, help="pipeline runs, each from scratch")
    parser.add_argument("--train-epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per model in the independent timing")
    parser.add_argument("--max-latency-ratio", type=float, default=0.7, help="the gate's bound vs the parent")
    parser.add_argument("--rows-from", help="print the tables from a log of an earlier run's JSON rows")
    args = parser.parse_args(argv)

    os.makedirs(args.work, exist_ok=True)
    if not os.path.isdir(os.path.join(args.work, "data")):
        write_data(os.path.join(args.work, "data"))
    if not os.path.isdir(os.path.join(args.work, "parent")):
        subprocess.run(
            [sys.executable, "-c", f"import sys; sys.path.insert(0, {REPO + '/bench'!r}); "
             f"import serving_speed; serving_speed.train_parent({os.path.join(args.work, 'parent')!r}, "
             f"{args.train_epochs})"],
            check=True,
        )  # fmt: skip
    if args.rows_from:  # the table again, from the JSON rows a run printed
        with open(args.rows_from) as f:
            rows = [json.loads(line) for line in f if line.startswith('{"exit"')]
    else:
        rows = []
        for index in range(args.runs):
            rows.append(one_run(args.work, index, args.repeats, args.max_latency_ratio))
            print(json.dumps(rows[-1]), flush=True)
    print(tables(rows))
    return 0 if all(row["blessed"] and row["pushed"] for row in rows) else 1


def tables(rows: list[dict]) -> str:
    """The float table (gate against an independent timing) and the int8 table, then the spread."""
    from tabulate import tabulate

    speed, int8 = [], []
    for index, row in enumerate(rows):
        gate_ratio = row["gate_candidate_ms"] / row["gate_parent_ms"]
        independent = row.get("independent_pushed_ms")
        speed.append(
            [
                index,
                "BLESSED, pushed" if row["blessed"] and row["pushed"] else f"exit {row['exit']}, not pushed",
                f"{row['parent_accuracy']:.4f} -> {row['candidate_accuracy']:.4f}",
                f"{row['parent_params']:,} -> {row['candidate_params']:,}",
                f"{row['gate_parent_ms_1']:.2f} -> {row['gate_candidate_ms_1']:.2f}",
                f"{row['gate_parent_ms']:.2f} -> {row['gate_candidate_ms']:.2f} ({gate_ratio:.2f}x)",
                "-"
                if independent is None
                else f"{row['independent_parent_ms']:.2f} -> {independent:.2f} "
                f"({independent / row['independent_parent_ms']:.2f}x)",
                "-" if independent is None else f"{abs(independent / row['gate_candidate_ms'] - 1):.0%}",
            ]
        )
        if "int8_ms" in row:
            size_ratio, speed_ratio = (
                row["int8_bytes"] / row["candidate_bytes"],
                row["int8_ms"] / row["gate_candidate_ms"],
            )
            int8.append(
                [
                    index,
                    "pushed beside it" if row["int8_pushed"] else "not pushed",
                    f"{row['candidate_accuracy']:.4f} -> {row['int8_accuracy']:.4f}",
                    f"{row['candidate_bytes']:,} -> {row['int8_bytes']:,} ({size_ratio:.2f}x)",
                    f"{row['gate_candidate_ms']:.2f} -> {row['int8_ms']:.2f} ({speed_ratio:.2f}x)",
                ]
            )
    headers = ["run", "verdict", "accuracy", "params", "gate ms, batch 1", "gate ms, batch 32",
               "independent ms, batch 32", "pushed: independent vs gate"]  # fmt: skip
    text = [tabulate(speed, headers=headers, tablefmt="github", disable_numparse=True), ""]
    if int8:
        headers = ["run", "int8 TFLite", "accuracy, float -> int8", "bytes, SavedModel -> .tflite",
                   "ms batch 32, SavedModel -> interpreter"]  # fmt: skip
        text += [tabulate(int8, headers=headers, tablefmt="github", disable_numparse=True), ""]
    ratios = [row["gate_candidate_ms"] / row["gate_parent_ms"] for row in rows]
    text.append(
        f"gate latency ratio at batch 32: median {statistics.median(ratios):.2f}, "
        f"range {min(ratios):.2f}-{max(ratios):.2f}"
    )
    return "\n".join(text)


if __name__ == "__main__":
    sys.exit(main())
