"""The local pipeline against the same engine calls in a plain script, on the penguin preset.

    .venv/bin/python bench/pipeline_overhead.py --work-dir /tmp/pipeline-overhead

Both start from one trained penguin baseline (trained once, outside the clock) and do what the
preset says: magnitude pruning to 80%, 20 epochs of masked fine-tuning, then accuracy overall and
per species for the candidate and the parent, and a save of the candidate.

- ``run-local``: ``prune-pipeline run-local --baseline-model <dir>`` (ImportExampleGen, Importer,
  PruneComponent, RetrainComponent, EvaluatorGate, Pusher on LocalDagRunner), as a user runs it;
- ``bare engine calls``: ``prune_saved_model``, ``fine_tune`` and ``save_model``, and Keras
  metrics over the eval split, in one Python process with nothing else.

Each is a fresh process timed from its start (imports included) with its peak RSS; the two run in
alternation ``--repeats`` times and the medians are shown, with where one run-local's time went:
each component's execution (ML Metadata's times) and the rest.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from child_process import run_child  # noqa: E402

HERE = os.path.abspath(__file__)


def bare_engine_calls(baseline: str, out: str) -> None:
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras

    from tfx_model_pruning.engine import (
        FineTuneConfig,
        PruningConfig,
        examples_dataset,
        fine_tune,
        load_model,
        prune_saved_model,
        save_model,
    )
    from tfx_model_pruning_pipelines import penguin_trainer

    root = penguin_trainer.penguin_data_root()
    train, evaluation = (sorted(glob.glob(os.path.join(root, f"Split-{s}", "*"))) for s in ("train", "eval"))
    pruned = os.path.join(out, "pruned")
    prune_saved_model(baseline, pruned, PruningConfig(target_sparsity=0.8), latency_repeats=0)
    loaded = load_model(pruned)
    config = FineTuneConfig(epochs=20, learning_rate=1e-3, label_key="species")
    datasets = [examples_dataset(files, loaded.model, "species", config.batch_size) for files in (train, evaluation)]
    fine_tune(loaded.model, datasets[0], datasets[1], config, loaded.masks, verbose=0)
    save_model(loaded.model, os.path.join(out, "candidate"), loaded.signatures, loaded.masks)
    for model in (loaded.model, load_model(baseline).model):
        overall, by_species = keras.metrics.SparseCategoricalAccuracy(), {}
        for features, labels in datasets[1]:
            predictions = model(features)
            overall.update_state(labels, predictions)
            for value in np.unique(labels.numpy()):
                rows = tf.equal(labels, value)
                metric = by_species.setdefault(int(value), keras.metrics.SparseCategoricalAccuracy())
                metric.update_state(tf.boolean_mask(labels, rows), tf.boolean_mask(predictions, rows))
        print({"overall": float(overall.result()), **{k: float(m.result()) for k, m in by_species.items()}})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", default="/tmp/pipeline-overhead")
    parser.add_argument("--repeats", type=int, default=3, help="pairs of runs; the medians are shown")
    parser.add_argument("--bare", metavar="BASELINE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bare:
        bare_engine_calls(args.bare, args.work_dir)
        return 0
    from tabulate import tabulate

    from tfx_model_pruning_pipelines import penguin_trainer

    baseline = os.path.join(args.work_dir, "baseline")
    if not os.path.isdir(baseline):
        root = penguin_trainer.penguin_data_root()
        train, evaluation = (glob.glob(os.path.join(root, f"Split-{s}", "*")) for s in ("train", "eval"))
        penguin_trainer.train_and_export(train, evaluation, baseline, train_steps=500, eval_steps=5)
    cli = os.path.join(os.path.dirname(sys.executable), "prune-pipeline")
    pipelines, bares, steps = [], [], None
    for repeat in range(args.repeats):  # in alternation, so drift on a shared machine hits both alike
        runs = os.path.join(args.work_dir, "runs")
        shutil.rmtree(runs, ignore_errors=True)
        # Exit code 3: the gate refused the model, the work was done all the same.
        command = [cli, "run-local", "-q", "--baseline-model", baseline, "--output-dir", runs]
        pipelines.append(run_child(command, (0, 3)))
        bare_dir = os.path.join(args.work_dir, "bare")
        bares.append(run_child([sys.executable, HERE, "--bare", baseline, "--work-dir", bare_dir]))
        if repeat == 0:
            steps, first_run = executions(os.path.join(runs, "metadata.sqlite")), pipelines[0]
    pipeline, bare = (sorted(runs, key=lambda run: run.seconds)[len(runs) // 2] for runs in (pipelines, bares))
    ratios = sorted(p.seconds / b.seconds for p, b in zip(pipelines, bares, strict=True))
    rows = [
        [name, f"{run.seconds:.1f}", f"{run.seconds / bare.seconds:.2f}", f"{run.peak_rss_mib:,.0f}"]
        for name, run in (("run-local", pipeline), ("bare engine calls", bare))
    ]
    print(tabulate(rows, headers=["", "seconds", "vs bare", "peak RSS MiB"], tablefmt="github", disable_numparse=True))
    print(f"\nper repeat, run-local / bare: {', '.join(f'{ratio:.2f}' for ratio in ratios)}")
    inside = sum(seconds for _, seconds in steps)
    step_rows = [[name, f"{seconds:.1f}"] for name, seconds in steps]
    step_rows.append(["outside them: imports, building, compiling, ML Metadata", f"{first_run.seconds - inside:.1f}"])
    step_rows.append(["the whole run", f"{first_run.seconds:.1f}"])
    headers = ["run-local, the first run", "seconds"]
    print(tabulate(step_rows, headers=headers, tablefmt="github", disable_numparse=True))
    return 0


def executions(metadata_path: str) -> list[tuple[str, float]]:
    """Each component's execution in ML Metadata and its seconds, in the order they ran."""
    from ml_metadata import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    connection = metadata_store_pb2.ConnectionConfig()
    connection.sqlite.filename_uri = metadata_path
    store = metadata_store.MetadataStore(connection)
    types = {kind.id: kind.name.rsplit(".", 1)[-1] for kind in store.get_execution_types()}
    ran = sorted(store.get_executions(), key=lambda execution: execution.create_time_since_epoch)
    return [(types[e.type_id], (e.last_update_time_since_epoch - e.create_time_since_epoch) / 1000) for e in ran]


if __name__ == "__main__":
    sys.exit(main())
