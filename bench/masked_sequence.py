"""A masked sequence classifier through the whole pipeline: does structured pruning remove heads?

    .venv/bin/python bench/masked_sequence.py --work /tmp/masked-sequence --runs 3

scikit-learn's digits as token sequences: each 8x8 image is 8 tokens, one per image row, the
row's pixels binarised at 8 (of 0..16) and read as an 8-bit number, token ``1 + bits`` in a
vocabulary of 257 (0 is padding). Each sequence keeps its first L rows, L uniform in
``--min-rows``..8 (seeded), and is padded with 0 to length 8. The parent (tf-keras):
``Embedding(257, d, mask_zero=True)`` plus a learned position embedding, two encoder blocks
(``MultiHeadAttention`` called as ``mha(x, x)``, so under the implicit padding mask; residual,
LayerNorm, a ReLU feed-forward layer of 2d units and a Dense back, residual, LayerNorm), a
mask-respecting average pool and 10 logits; Adam, cosine-decayed from 1e-3 to 0 over
``--train-epochs``; saved as a TFX Trainer saves it: a SavedModel whose ``serving_default``
parses serialized tf.Examples. docs/benchmarks.md has the measured tables and what they show.

Each run, from scratch with its own seed (data cut, parent, fine-tuning), is
``prune-pipeline run-local``: structured pruning at 0.5, fine-tuning until recovered (the
default), and the gate: SparseCategoricalAccuracy at most 0.03 below the parent's. Recorded: the
verdict, both accuracies, heads per attention layer and feed-forward widths before -> after (the
PruneComponent's ``report.json`` and the pruned SavedModel's layer configs, which must agree),
params and FLOPs (the report), and CPU latency of ``serving_default`` on serialized eval
examples, parent and pruned model timed in alternation: the gate's medians at batch 1 and 32 (the
pipeline runs the PruneComponent with ``latency_repeats`` 0, so its report has no latency), and,
in a fresh process after the run, medians of ``--repeats`` calls on 32 examples.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import textwrap
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))

from serving_speed import save_as_trainer  # noqa: E402

TOKENS, LABEL = "tokens", "label"
LENGTH, VOCABULARY, PAD = 8, 257, 0  # 8 rows; 1 + 2**8 row patterns; token 0 pads
THRESHOLD = 8  # a pixel (0..16) at or above it is ink
TRAIN_EXAMPLES = 1200  # the rest of the 1,797 digits are the eval split
BLOCKS = 2


def digit_sequences(seed: int = 0, min_rows: int = 6):
    """(train, eval) pairs of (tokens (n, 8) int64, labels): rows as tokens, cut and padded."""
    import numpy as np
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    ink = (x.reshape(-1, LENGTH, 8) >= THRESHOLD).astype("int64")
    tokens = 1 + (ink * 2 ** np.arange(8)).sum(axis=-1)  # one token per row, 1..256
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_rows, LENGTH + 1, size=len(y))
    tokens = np.where(np.arange(LENGTH)[None, :] < lengths[:, None], tokens, PAD)
    order = rng.permutation(len(y))
    tokens, y = tokens[order], y[order]
    return (tokens[:TRAIN_EXAMPLES], y[:TRAIN_EXAMPLES]), (tokens[TRAIN_EXAMPLES:], y[TRAIN_EXAMPLES:])


def _examples(tokens, labels) -> list[bytes]:
    import tensorflow as tf

    return [
        tf.train.Example(
            features=tf.train.Features(
                feature={
                    TOKENS: tf.train.Feature(int64_list=tf.train.Int64List(value=row)),
                    LABEL: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
                }
            )
        ).SerializeToString()
        for row, label in zip(tokens, labels, strict=True)
    ]


def write_data(root: str, seed: int = 0, min_rows: int = 6) -> None:
    """The sequences as TFX's ExampleGen writes them: gzipped TFRecords under Split-train/ and Split-eval/."""
    import tensorflow as tf

    train, val = digit_sequences(seed, min_rows)
    for split, (tokens, labels) in (("train", train), ("eval", val)):
        os.makedirs(os.path.join(root, f"Split-{split}"), exist_ok=True)
        path = os.path.join(root, f"Split-{split}", "data_tfrecord-00000-of-00001.gz")
        with tf.io.TFRecordWriter(path, options="GZIP") as writer:
            for record in _examples(tokens, labels):
                writer.write(record)


def build_parent(keras, width: int, heads: int):
    """The masked encoder in tf-keras; positions 0..7 are computed from the token ids' shape."""
    import tensorflow as tf

    L = keras.layers
    tokens = keras.Input((LENGTH,), dtype="int64", name=TOKENS)
    x = L.Embedding(VOCABULARY, width, mask_zero=True, name="embed")(tokens)
    positions = tf.cumsum(tf.ones_like(tokens), axis=1) - 1  # TFOpLambda layers on the ids, no weights
    x = L.Add(name="embed_and_position")([x, L.Embedding(LENGTH, width, name="position")(positions)])
    for block in range(BLOCKS):
        attended = L.MultiHeadAttention(heads, width // heads, name=f"mha{block}")(x, x)  # the padding mask
        x = L.LayerNormalization(name=f"ln{block}a")(L.Add(name=f"res{block}a")([x, attended]))
        hidden = L.Dense(2 * width, activation="relu", name=f"ffn{block}")(x)
        back = L.Dense(width, name=f"ffn{block}_out")(hidden)
        x = L.LayerNormalization(name=f"ln{block}b")(L.Add(name=f"res{block}b")([x, back]))
    pooled = L.GlobalAveragePooling1D(name="pool")(x)  # over the unpadded positions only
    return keras.Model(tokens, L.Dense(10, name="logits")(pooled))


def train_parent(path: str, data: str, epochs: int, width: int, heads: int, seed: int) -> None:
    """The parent trained on the train split, saved with a Trainer's serving signature."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf
    import tf_keras as keras

    spec = {TOKENS: tf.io.FixedLenFeature([LENGTH], tf.int64), LABEL: tf.io.FixedLenFeature([], tf.int64)}

    def split(name: str):
        files = glob.glob(os.path.join(data, f"Split-{name}", "*"))
        records = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(4096)
        parsed = [tf.io.parse_example(batch, spec) for batch in records]
        return (tf.concat([p[TOKENS] for p in parsed], 0), tf.concat([p[LABEL] for p in parsed], 0))

    train, val = split("train"), split("eval")
    keras.utils.set_random_seed(seed)
    model = build_parent(keras, width, heads)
    steps = epochs * -(-len(train[1]) // 32)
    # Decayed to 0: the last epochs settle instead of swinging by a percent from one to the next.
    optimizer = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(1e-3, steps))
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(*train, epochs=epochs, batch_size=32, verbose=0)
    print(f"parent eval accuracy {model.evaluate(*val, verbose=0)[1]:.4f}", flush=True)
    features = {TOKENS: spec[TOKENS]}
    save_as_trainer(model, path, features)


PIPELINE = """\
name: masked-sequence
data:
  root: {data}
  label_key: label
model:
  baseline_model: {parent}
prune:
  method: structured
  prune_fraction: 0.5
retrain: {{loss: SparseCategoricalCrossentropy, seed: {seed}{budget}}}
gate:
  thresholds:
    - {{metric: SparseCategoricalAccuracy, max_absolute_drop: 0.03}}
  compare_with: [parent]
"""


def run_pipeline(work: str, output_dir: str, seed: int, max_epochs: int | None = None) -> int:
    """``prune-pipeline run-local``; ``max_epochs`` caps fine-tuning (default: its own budget)."""
    config = os.path.join(work, "pipeline.yaml")
    budget = "" if max_epochs is None else f", recovery: {{max_epochs: {max_epochs}}}"
    with open(config, "w") as f:
        data, parent = os.path.join(work, "data"), os.path.join(work, "parent")
        f.write(PIPELINE.format(data=data, parent=parent, seed=seed, budget=budget))
    command = [sys.executable, "-m", "tfx_model_pruning_pipelines.cli", "run-local", "--config", config, "-q"]
    return subprocess.run([*command, "--output-dir", output_dir], check=False).returncode


# In a fresh process: the layer configs of both SavedModels (tf-keras reads them back), then
# serving_default on the same serialized eval examples, the two models in alternation.
INSPECT_AND_TIME = textwrap.dedent(
    """
    import json, os, sys, time
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import numpy as np, tensorflow as tf, tf_keras as keras
    pruned, parent, eval_file, batch, repeats = sys.argv[1:6]
    batch, repeats = int(batch), int(repeats)
    widths = {}
    for name, path in (("parent", parent), ("pruned", pruned)):
        model = keras.models.load_model(path, compile=False)
        widths[name] = {
            "heads": [model.get_layer(f"mha{b}").get_config()["num_heads"] for b in range({blocks})],
            "ffn": [model.get_layer(f"ffn{b}").get_config()["units"] for b in range({blocks})],
            "embed": model.get_layer("embed").get_config()["output_dim"],
            "mask_zero": model.get_layer("embed").get_config()["mask_zero"],
            "pool_masked": getattr(model.get_layer("pool").input, "_keras_mask", None) is not None,
            "params": model.count_params(),
        }
    records = [r.numpy() for r in tf.data.TFRecordDataset(eval_file, compression_type="GZIP").take(batch)]
    examples = tf.constant(records)
    serve = {name: tf.saved_model.load(path).signatures["serving_default"] for name, path in
             (("pruned", pruned), ("parent", parent))}
    for fn in serve.values():
        for _ in range(5):
            fn(examples=examples)
    times = {name: [] for name in serve}
    for _ in range(repeats):
        for name, fn in serve.items():
            start = time.perf_counter()
            tf.nest.map_structure(lambda t: t.numpy(), fn(examples=examples))
            times[name].append((time.perf_counter() - start) * 1000)
    print(json.dumps({"widths": widths, "ms": {name: float(np.median(v)) for name, v in times.items()}}))
    """
).replace("{blocks}", str(BLOCKS))


def inspect_and_time(pruned: str, parent: str, eval_file: str, batch: int, repeats: int) -> dict:
    command = [sys.executable, "-c", INSPECT_AND_TIME, pruned, parent, eval_file, str(batch), str(repeats)]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def _one(pattern: str) -> str:
    found = glob.glob(pattern, recursive=True)
    if len(found) != 1:
        raise RuntimeError(f"expected one file matching {pattern!r}, found {found}")
    return found[0]


def one_run(work: str, index: int, seed: int, args: argparse.Namespace) -> dict:
    """Data, parent and pipeline run for one seed, from scratch; the row of the table."""
    for name in ("data", "parent"):
        shutil.rmtree(os.path.join(work, name), ignore_errors=True)
    started = time.perf_counter()
    write_data(os.path.join(work, "data"), seed, args.min_rows)
    train = (
        f"import sys; sys.path.insert(0, {REPO + '/bench'!r}); import masked_sequence; "
        f"masked_sequence.train_parent({os.path.join(work, 'parent')!r}, {os.path.join(work, 'data')!r}, "
        f"{args.train_epochs}, {args.width}, {args.heads}, {seed})"
    )
    subprocess.run([sys.executable, "-c", train], check=True)
    trained = time.perf_counter()
    output_dir = os.path.join(work, f"run-{index}")
    shutil.rmtree(output_dir, ignore_errors=True)
    code = run_pipeline(work, output_dir, seed, args.max_epochs)
    finished = time.perf_counter()

    with open(_one(os.path.join(output_dir, "**", "gate_result.json"))) as f:
        result = json.load(f)
    with open(_one(os.path.join(output_dir, "**", "PruneComponent", "**", "report.json"))) as f:
        report = json.load(f)
    structure = report["structure"]
    pushed = sorted(glob.glob(os.path.join(output_dir, "serving", "[0-9]*")))
    row = {
        "seed": seed,
        "exit": code,
        "blessed": bool(result.get("blessed")),
        "pushed": bool(pushed),
        "accuracy": [result["metrics"][k]["sparse_categorical_accuracy"] for k in ("baseline", "candidate")],
        "report_widths": {name: [w["before"], w["after"]] for name, w in structure["widths"].items()},
        "barriers": structure.get("barriers") or {},
        "params": [report["before"]["params"], report["after"]["params"]],
        "flops": [report["before"]["flops"], report["after"]["flops"]],
        **{
            f"gate_ms_{batch}": [result["weights"][k]["latency"][batch]["median_ms"] for k in ("baseline", "candidate")]
            for batch in ("1", "32")
        },
        "fine_tuning": _fine_tuning(output_dir),
        "seconds": {"data_and_parent": round(trained - started, 1), "pipeline": round(finished - trained, 1)},
    }
    pruned = pushed[-1] if pushed else report["output_model"]  # not pushed: the PruneComponent's model
    eval_file = _one(os.path.join(work, "data", "Split-eval", "*"))
    measured = inspect_and_time(pruned, os.path.join(work, "parent"), eval_file, 32, args.repeats)
    row.update(saved_widths=measured["widths"], ms_32=[measured["ms"]["parent"], measured["ms"]["pruned"]])
    return row


def _fine_tuning(output_dir: str) -> dict:
    """How fine-tuning stopped, from the RetrainComponent's fine_tuning.json."""
    with open(_one(os.path.join(output_dir, "**", "RetrainComponent", "**", "fine_tuning.json"))) as f:
        recovery = json.load(f).get("recovery") or {}
    return {key: recovery.get(key) for key in ("summary", "stop_reason", "steps")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/masked-sequence", help="data, parent, runs and results.json")
    parser.add_argument("--runs", type=int, default=3, help="runs, each from scratch with its own seed")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first run (run i: seed + i)")
    parser.add_argument("--train-epochs", type=int, default=20, help="the parent's epochs over 1,200 sequences")
    parser.add_argument("--width", type=int, default=64, help="model width d (the FFN has 2d units)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads per block (key_dim d/heads)")
    parser.add_argument("--min-rows", type=int, default=6, help="each sequence keeps its first L rows, L in this..8")
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per model in the independent timing")
    parser.add_argument("--max-epochs", type=int, help="fine-tuning's budget (retrain.recovery.max_epochs; smoke test)")
    args = parser.parse_args(argv)

    os.makedirs(args.work, exist_ok=True)
    rows = []
    for index in range(args.runs):
        rows.append(one_run(args.work, index, args.seed + index, args))
        print(json.dumps(rows[-1]), flush=True)
    text = table(rows)
    with open(os.path.join(args.work, "results.json"), "w") as f:
        json.dump({"args": vars(args), "rows": rows, "table": text}, f, indent=1)
    print(text)
    return 0 if all(row["blessed"] and row["pushed"] for row in rows) else 1


def _cell(pair, spec: str, with_ratio: bool = True) -> str:
    text = f"{pair[0]:{spec}} -> {pair[1]:{spec}}"
    return f"{text} ({pair[1] / pair[0]:.2f}x)" if with_ratio else text


RATIO_COLUMNS = (("params", ","), ("flops", ","), ("gate_ms_1", ".2f"), ("gate_ms_32", ".2f"), ("ms_32", ".2f"))


def table(rows: list[dict]) -> str:
    """Every run, then the medians (of each side, and of the per-run ratios); heads, FFN units and
    d from the pruned SavedModel's layer configs."""
    from tabulate import tabulate

    def layers(row, key):
        return " -> ".join("/".join(str(w) for w in row["saved_widths"][side][key]) for side in ("parent", "pruned"))

    body = []
    for row in rows:
        verdict = "BLESSED, pushed" if row["blessed"] and row["pushed"] else f"NOT blessed (exit {row['exit']})"
        widths = row["saved_widths"]
        body.append(
            [row["seed"], verdict, _cell(row["accuracy"], ".4f", with_ratio=False), layers(row, "heads"),
             layers(row, "ffn"), f"{widths['parent']['embed']} -> {widths['pruned']['embed']}"]
            + [_cell(row[key], spec) for key, spec in RATIO_COLUMNS]
        )  # fmt: skip
    medians = ["median", f"{sum(row['blessed'] and row['pushed'] for row in rows)} of {len(rows)} blessed"]
    accuracy = [statistics.median(row["accuracy"][side] for row in rows) for side in (0, 1)]
    drop = statistics.median(row["accuracy"][0] - row["accuracy"][1] for row in rows)
    medians += [f"{_cell(accuracy, '.4f', with_ratio=False)} (drop {drop:.4f})", "", "", ""]
    for key, spec in RATIO_COLUMNS:
        sides = [statistics.median(row[key][side] for row in rows) for side in (0, 1)]
        ratio = statistics.median(row[key][1] / row[key][0] for row in rows)
        medians.append(f"{_cell(sides, spec, with_ratio=False)} ({ratio:.2f}x)")
    headers = ["seed", "verdict", "accuracy, parent -> pruned", "heads (mha0/mha1)", "FFN units (ffn0/ffn1)",
               "d (residual)", "params", "FLOPs", "gate ms, batch 1", "gate ms, batch 32",
               "independent ms, batch 32"]  # fmt: skip
    return tabulate([*body, medians], headers=headers, tablefmt="github", disable_numparse=True)


if __name__ == "__main__":
    sys.exit(main())
