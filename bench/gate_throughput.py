"""EvaluatorGate throughput against a bare batched predict and the stock TFX Evaluator.

    .venv/bin/python bench/gate_throughput.py --examples 100000 1000000 10000000 --work-dir /tmp/gate-bench

Penguin-schema examples (the records TFX ships, repeated) in one gzipped file, as ExampleGen
writes them; a parent trained by this project's penguin Trainer and an 80%-sparse candidate
pruned from it. Each figure is the fastest of ``--repeats`` subprocesses, the median beside it
(each its own peak RSS; the ratios are of the fastest runs):

- bare predict: ``tf.data`` reads the file in batches of the gate's size and each batch goes
  through both models' serving signature, nothing else (the floor of any evaluation);
- the gate (``EvaluatorGate``'s executor, whole ``Do``: loading, evaluation, checks, report),
  one-pass evaluation (the default) and ``evaluator: tfma``; "gate-2-shards" cuts the one file in two
  shards, as for two machines, on two worker threads of this machine (the cost of each shard
  reading the whole file);
- the stock ``Evaluator`` executor on the same models, metric and slices, as TFX users run it.

All on Beam's in-memory DirectRunner (but gate-2-shards), candidate and parent, accuracy overall
and per species.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from child_process import run_child  # noqa: E402

MODES = ("predict", "gate", "gate-2-shards", "gate-tfma", "stock-evaluator")
# Two worker threads, the one eval file cut into two shards as for two machines (the gate does not
# cut a file for the DirectRunner's workers, which share this machine's cores).
TWO_WORKERS = ["--direct_num_workers=2", "--direct_running_mode=multi_threading"]


def prepare(work_dir: str, counts: list[int]) -> None:
    import tensorflow as tf

    from tfx_model_pruning.engine import PruningConfig, prune_saved_model
    from tfx_model_pruning_pipelines import penguin_trainer

    root = penguin_trainer.penguin_data_root()
    parent = os.path.join(work_dir, "parent", "Format-Serving")
    if not os.path.isdir(parent):
        train, evaluation = (glob.glob(os.path.join(root, f"Split-{s}", "*")) for s in ("train", "eval"))
        penguin_trainer.train_and_export(train, evaluation, parent, train_steps=300, eval_steps=5)
    candidate = os.path.join(work_dir, "candidate", "Format-Serving")
    if not os.path.isdir(candidate):
        prune_saved_model(parent, candidate, PruningConfig(target_sparsity=0.8), latency_repeats=1)
    records = [
        record.numpy()
        for path in sorted(glob.glob(os.path.join(root, "Split-*", "*")))
        for record in tf.data.TFRecordDataset(path, compression_type="GZIP")
    ]
    for count in counts:
        split = os.path.join(work_dir, f"examples-{count}", "Split-eval")
        if os.path.isdir(split):
            continue
        os.makedirs(split)
        with tf.io.TFRecordWriter(os.path.join(split, "data_tfrecord-00000-of-00001.gz"), "GZIP") as writer:
            for index in range(count):
                writer.write(records[index % len(records)])


def _gate_config(evaluator: str):
    from tfx_model_pruning.evaluator_gate.config import GateConfig, MetricThreshold

    accuracy = MetricThreshold(metric="SparseCategoricalAccuracy", lower_bound=0.5)
    return GateConfig(
        label_key="species",
        thresholds=[accuracy],
        slice_feature="species",
        slice_thresholds=[accuracy],
        evaluator=evaluator,
    )


def _artifacts(work_dir: str, count: int, out: str):
    from tfx.types import artifact_utils, standard_artifacts

    def make(kind, uri):
        artifact = kind()
        artifact.uri = uri
        return artifact

    examples = make(standard_artifacts.Examples, os.path.join(work_dir, f"examples-{count}"))
    examples.split_names = artifact_utils.encode_split_names(["eval"])
    inputs = {
        "model": [make(standard_artifacts.Model, os.path.join(work_dir, "candidate"))],
        "baseline_model": [make(standard_artifacts.Model, os.path.join(work_dir, "parent"))],
        "examples": [examples],
    }
    outputs = {
        "blessing": [make(standard_artifacts.ModelBlessing, os.path.join(out, "blessing"))],
        "evaluation": [make(standard_artifacts.ModelEvaluation, os.path.join(out, "evaluation"))],
    }
    return inputs, outputs


def _context(out: str, beam_pipeline_args=()):
    from tfx.dsl.components.base import base_beam_executor

    return base_beam_executor.BaseBeamExecutor.Context(
        beam_pipeline_args=list(beam_pipeline_args), tmp_dir=os.path.join(out, "tmp")
    )


def run_mode(mode: str, work_dir: str, count: int) -> dict:
    """One measurement, in this process: seconds and what was computed."""
    out = os.path.join(work_dir, "out", f"{mode}-{count}")
    if mode == "predict":
        import tensorflow as tf

        from tfx_model_pruning.engine import load_model
        from tfx_model_pruning.engine.efficiency import count_flops
        from tfx_model_pruning.evaluator_gate.batched_evaluation import batch_size_for

        path = glob.glob(os.path.join(work_dir, f"examples-{count}", "Split-eval", "*"))[0]
        first = next(iter(tf.data.TFRecordDataset(path, compression_type="GZIP")))
        paths = glob.glob(os.path.join(work_dir, "*", "Format-Serving"))
        flops = max(count_flops(load_model(path).model) for path in paths)
        batch_size = batch_size_for(len(first.numpy()), flops)
        models = [tf.saved_model.load(path).signatures["serving_default"] for path in paths]
        start, seen = time.perf_counter(), 0
        for batch in tf.data.TFRecordDataset(path, compression_type="GZIP").batch(batch_size).prefetch(1):
            for signature in models:
                signature(examples=batch)
            seen += int(batch.shape[0])
        return {"seconds": time.perf_counter() - start, "examples": seen, "batch_size": batch_size}
    inputs, outputs = _artifacts(work_dir, count, out)
    # Imports before the clock, as for predict: a local run pays them once for all components.
    import tensorflow_model_analysis as tfma
    from google.protobuf import json_format
    from tensorflow_model_analysis.proto import config_pb2  # TFMA 0.52 no longer re-exports its protos
    from tfx.components.evaluator import executor as stock

    from tfx_model_pruning.evaluator_gate import batched_evaluation, executor

    start = time.perf_counter()
    if mode.startswith("gate"):
        config = _gate_config("tfma" if mode == "gate-tfma" else "auto")
        context = _context(out, TWO_WORKERS if mode == "gate-2-shards" else ())
        if mode == "gate-2-shards":
            batched_evaluation.declared_workers = lambda beam_pipeline_args: 2
        executor.Executor(context).Do(inputs, outputs, {"gate_config": config.model_dump_json()})
        seconds = time.perf_counter() - start
        with open(os.path.join(out, "evaluation", "gate_result.json")) as f:
            result = json.load(f)
        metrics = result["metrics"]["candidate"]
        return {
            "seconds": seconds,
            "examples": metrics["example_count"],
            "accuracy": metrics["sparse_categorical_accuracy"],
            "evaluated_by": result["evaluated_by"],
        }
    eval_config = config_pb2.EvalConfig(
        model_specs=[
            config_pb2.ModelSpec(name="candidate", label_key="species"),
            config_pb2.ModelSpec(name="baseline", label_key="species", is_baseline=True),
        ],
        slicing_specs=[config_pb2.SlicingSpec(), config_pb2.SlicingSpec(feature_keys=["species"])],
        metrics_specs=[
            config_pb2.MetricsSpec(
                metrics=[
                    config_pb2.MetricConfig(class_name="ExampleCount"),
                    config_pb2.MetricConfig(class_name="SparseCategoricalAccuracy"),
                ]
            )
        ],
    )
    properties = {
        "eval_config": json_format.MessageToJson(eval_config),
        "example_splits": json.dumps(["eval"]),
        "fairness_indicator_thresholds": "null",
    }
    stock.Executor(_context(out)).Do(inputs, outputs, properties)
    seconds = time.perf_counter() - start
    overall = next(m for m in tfma.load_metrics(os.path.join(out, "evaluation")) if not m.slice_key.single_slice_keys)
    values = {
        (entry.key.model_name, entry.key.name): entry.value.double_value.value
        for entry in overall.metric_keys_and_values
        if not entry.key.is_diff
    }
    return {
        "seconds": seconds,
        "examples": values[("candidate", "example_count")],
        "accuracy": values[("candidate", "sparse_categorical_accuracy")],
    }


def measure(mode: str, work_dir: str, count: int, repeats: int) -> dict:
    """``run_mode`` in a subprocess of its own, ``repeats`` times: the fastest run's figures (on a
    shared machine the least disturbed one; predict's own runs here differ up to 1.7x), the
    median seconds, and the largest peak RSS."""
    command = [sys.executable, __file__, "--one", mode, "--work-dir", work_dir, "--examples", str(count)]
    runs = []
    for _ in range(repeats):
        child = run_child(command)
        runs.append({**json.loads(child.stdout.strip().splitlines()[-1]), "peak_rss_mib": child.peak_rss_mib})
    runs.sort(key=lambda run: run["seconds"])
    return {
        **runs[0],
        "median_seconds": runs[len(runs) // 2]["seconds"],
        "peak_rss_mib": max(run["peak_rss_mib"] for run in runs),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--work-dir", default="/tmp/gate-bench")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--repeats", type=int, default=3, help="runs of each measurement; the median is shown")
    parser.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_mode(args.one, args.work_dir, args.examples[0])))
        return 0
    from tabulate import tabulate

    prepare(args.work_dir, args.examples)
    rows = []
    for count in args.examples:
        predict = None
        for mode in args.modes:
            result = measure(mode, args.work_dir, count, args.repeats)
            predict = result if mode == "predict" else predict
            rate = result["examples"] / result["seconds"]
            rows.append(
                [
                    f"{count:,}",
                    mode,
                    f"{result['seconds']:.1f} ({result['median_seconds']:.1f})",
                    f"{rate:,.0f}",
                    f"{rate / (predict['examples'] / predict['seconds']):.2f}" if predict else "",
                    f"{result['peak_rss_mib']:,.0f}",
                    f"{result['accuracy']:.6f}" if "accuracy" in result else "",
                ]
            )
            print(rows[-1], flush=True)
    print(
        tabulate(
            rows,
            headers=[
                "examples",
                "what",
                "seconds, fastest (median)",
                "examples/s",
                "vs predict",
                "peak RSS MiB",
                "candidate accuracy",
            ],  # fmt: skip
            tablefmt="github",
            disable_numparse=True,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
