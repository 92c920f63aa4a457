"""What the prune step costs next to saving and loading the same model, from 10k to 50M params.

    .venv/bin/python bench/prune_cost.py                       # MLPs of 10k, 1M, 10M, 50M params, ResNet50, MobileNetV2
    .venv/bin/python bench/prune_cost.py --models mlp-1M ResNet50 --latency-repeats 30

Each model is built (random weights; ``tf_keras.applications`` CNNs at 96x96), saved as Keras
saves it, and then, each in a subprocess of its own (peak RSS from ``wait4``):

- ``save + load``: ``save_model`` then ``load_model`` of that model: the floor for any step that
  reads a SavedModel and writes one;
- ``prune_saved_model`` by magnitude (80%) and structured (50% of channels, l1), with the prune
  report's latency timing at ``--latency-repeats`` (0: not timed, as PruneComponent does unless
  asked).

The ratio column is the prune step over ``save + load``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from child_process import run_child  # noqa: E402

MLP_WIDTHS = {"mlp-10k": 56, "mlp-1M": 700, "mlp-10M": 2230, "mlp-50M": 5000}
CNNS = ("ResNet50", "MobileNetV2")
FEATURES = 64
IMAGE_SHAPE = (96, 96, 3)
STEPS = ("save + load", "magnitude", "structured")


def build(name: str):
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    if name in MLP_WIDTHS:
        width = MLP_WIDTHS[name]
        inputs = keras.Input(shape=(FEATURES,), name="x")
        x = inputs
        for index in range(3):
            x = keras.layers.Dense(width, activation="relu", name=f"dense_{index}")(x)
        model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))
    else:
        application = getattr(keras.applications, name)
        model = application(weights=None, input_shape=IMAGE_SHAPE, classes=10)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def sample_examples(model, count: int = 16):
    """Serialized tf.Examples carrying the model's input by name, as PruneComponent reads them."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    name = model.inputs[0].name.split(":")[0]
    size = int(np.prod(model.inputs[0].shape[1:]))
    examples = [
        tf.train.Example(
            features=tf.train.Features(
                feature={
                    name: tf.train.Feature(float_list=tf.train.FloatList(value=rng.normal(size=size))),
                    "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(rng.integers(10))])),
                }
            )
        ).SerializeToString()
        for _ in range(count)
    ]
    return tf.constant(examples)


def serving_signature(model):
    """``serving_default`` on serialized tf.Examples, as a TFX Trainer exports it."""
    import numpy as np
    import tensorflow as tf

    name = model.inputs[0].name.split(":")[0]
    shape = model.inputs[0].shape[1:]
    spec = {name: tf.io.FixedLenFeature([int(np.prod(shape))], tf.float32)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve(serialized):
        features = tf.io.parse_example(serialized, spec)[name]
        return {"outputs": model(tf.reshape(features, [-1, *shape]))}

    return {"serving_default": serve}


def prepare(work_dir: str, name: str) -> str:
    from tfx_model_pruning.engine import save_model

    path = os.path.join(work_dir, name)
    if not os.path.isdir(path):
        model = build(name)
        save_model(model, path, serving_signature(model))
    return path


def run_step(step: str, work_dir: str, name: str, latency_repeats: int) -> dict:
    from tfx_model_pruning.engine import PruningConfig, load_model, prune_saved_model, save_model
    from tfx_model_pruning.engine.config import StructuredPruningConfig

    path = os.path.join(work_dir, name)
    out = tempfile.mkdtemp(dir=work_dir, prefix=f"{name}-{step.replace(' ', '')}-")
    if step == "save + load":
        loaded = load_model(path)  # outside the clock: the prune step loads its input too, but the
        model = loaded.model  # floor is what writing a pruned model and reading it back costs
        start = time.perf_counter()
        save_model(model, out, loaded.signatures)
        load_model(out)
        return {"seconds": time.perf_counter() - start, "params": model.count_params()}
    config = PruningConfig(target_sparsity=0.8) if step == "magnitude" else StructuredPruningConfig(prune_fraction=0.5)
    examples = sample_examples(load_model(path).model)
    start = time.perf_counter()
    result = prune_saved_model(path, out, config, sample_examples=examples, latency_repeats=latency_repeats)
    return {"seconds": time.perf_counter() - start, "params": result.before.params}


def measure(step: str, work_dir: str, name: str, latency_repeats: int) -> dict:
    """``run_step`` in a subprocess of its own; adds that process's peak RSS."""
    command = [sys.executable, __file__, "--one", step, "--work-dir", work_dir, "--models", name]
    child = run_child([*command, "--latency-repeats", str(latency_repeats)])
    return {**json.loads(child.stdout.strip().splitlines()[-1]), "peak_rss_mib": child.peak_rss_mib}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=[*MLP_WIDTHS, *CNNS])
    parser.add_argument("--work-dir", default="/tmp/prune-bench")
    parser.add_argument("--latency-repeats", type=int, default=0)
    parser.add_argument("--one", choices=STEPS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.makedirs(args.work_dir, exist_ok=True)
    if args.one:
        print(json.dumps(run_step(args.one, args.work_dir, args.models[0], args.latency_repeats)))
        return 0
    from tabulate import tabulate

    rows = []
    for name in args.models:
        prepare(args.work_dir, name)
        floor = None
        for step in STEPS:
            result = measure(step, args.work_dir, name, args.latency_repeats)
            floor = result["seconds"] if step == "save + load" else floor
            rows.append(
                [
                    name,
                    f"{result['params']:,}",
                    step,
                    f"{result['seconds']:.1f}",
                    f"{result['seconds'] / floor:.2f}",
                    f"{result['peak_rss_mib']:,.0f}",
                ]
            )
            print(rows[-1], flush=True)
    print(
        tabulate(
            rows,
            headers=["model", "params", "step", "seconds", "vs save + load", "peak RSS MiB"],
            tablefmt="github",
            disable_numparse=True,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
