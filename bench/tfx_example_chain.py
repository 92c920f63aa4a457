"""TFX's own Keras examples, module files unchanged, followed by this project's chain.

    .venv/bin/python bench/tfx_example_chain.py --example penguin --output-dir /tmp/tfx-penguin
    .venv/bin/python bench/tfx_example_chain.py --example taxi --output-dir /tmp/tfx-taxi

ExampleGen -> StatisticsGen -> SchemaGen -> Transform -> Trainer, with the module file as the
installed tfx package ships it (``penguin_utils_keras.py``; ``taxi_utils_native_keras.py``, whose
label ``tips_xf`` the transform computes and whose features go through vocabularies). Both save
with ``tf.saved_model.save`` and export ``serving_default`` and ``transform_features``. Then
PruneComponent (magnitude) -> RetrainComponent (transformed examples + transform graph) ->
EvaluatorGate (raw examples, label through ``transform_features``) -> Pusher, wired as the
docs/tfx.md shows. Prints the parent vs pushed table the gate measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import dataclass
from typing import Optional

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tfx as tfx_package  # noqa: E402
from tabulate import tabulate  # noqa: E402
from tfx import v1 as tfx  # noqa: E402
from tfx.examples.chicago_taxi_pipeline import taxi_utils_native_keras  # noqa: E402
from tfx.examples.penguin import penguin_utils_keras  # noqa: E402
from tfx.proto import example_gen_pb2  # noqa: E402

from tfx_model_pruning import EvaluatorGate, PruneComponent, RetrainComponent  # noqa: E402
from tfx_model_pruning.atomic_pusher.component import AtomicPusher  # noqa: E402
from tfx_model_pruning_pipelines.penguin_trainer import penguin_data_root  # noqa: E402
from tfx_model_pruning_pipelines.pruning_pipeline import DEFAULT_BEAM_ARGS, run_locally  # noqa: E402
from tfx_model_pruning_pipelines.results import open_store, run_result  # noqa: E402


@dataclass(frozen=True)
class Example:
    module_file: str
    label_key: str  # as the transform names it
    loss: str
    from_logits: bool
    metric: str
    lower_bound: float


EXAMPLES = {
    "penguin": Example(
        penguin_utils_keras.__file__.removesuffix("c"),
        "species_xf",
        "SparseCategoricalCrossentropy",
        True,
        "SparseCategoricalAccuracy",
        0.9,
    ),
    "taxi": Example(
        taxi_utils_native_keras.__file__.removesuffix("c"),
        "tips_xf",
        "BinaryCrossentropy",
        False,
        "BinaryAccuracy",
        0.6,
    ),
}


def _example_gen(name: str):
    if name == "penguin":
        splits = [example_gen_pb2.Input.Split(name=s, pattern=f"Split-{s}/*") for s in ("train", "eval")]
        return tfx.components.ImportExampleGen(
            input_base=penguin_data_root(), input_config=example_gen_pb2.Input(splits=splits)
        )
    taxi_data = os.path.join(os.path.dirname(tfx_package.__file__), "examples", "chicago_taxi_pipeline", "data")
    return tfx.components.CsvExampleGen(input_base=os.path.join(taxi_data, "simple"))


# How Retrain recovers the accuracy pruning cost: plain fine-tuning of the one-shot pruned model;
# distillation from the Trainer's model; or pruning to half the target first and the rest
# gradually while distilling.
RECOVERY = ("plain", "distill", "gradual+distill")


def build(
    name: str,
    out: str,
    target_sparsity: float,
    train_steps: int,
    epochs: Optional[int],
    recovery: str = "plain",
    max_drop: float = 0.05,
) -> tfx.dsl.Pipeline:
    example = EXAMPLES[name]
    example_gen = _example_gen(name)
    statistics = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema = tfx.components.SchemaGen(
        statistics=statistics.outputs["statistics"],
        infer_feature_shape=name == "penguin",  # as each example sets it
    )
    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"], schema=schema.outputs["schema"], module_file=example.module_file
    )
    trainer = tfx.components.Trainer(
        module_file=example.module_file,
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema.outputs["schema"],
        train_args=tfx.proto.TrainArgs(num_steps=train_steps),
        eval_args=tfx.proto.EvalArgs(num_steps=5),
    )
    gradual = recovery == "gradual+distill"
    prune = PruneComponent(
        model=trainer.outputs["model"], target_sparsity=target_sparsity / 2 if gradual else target_sparsity
    )
    recovery_args = {}
    if recovery != "plain":
        recovery_args.update(teacher_model=trainer.outputs["model"], distillation={"temperature": 2.0, "alpha": 0.5})
    if gradual:
        steps = (epochs or 20) * 20
        recovery_args["gradual_pruning"] = {
            "initial_sparsity": target_sparsity / 2,
            "final_sparsity": target_sparsity,
            "end_step": steps // 2,
            "frequency": 10,
        }
    if epochs is None:  # the defaults: until recovered to the gate's metric, within half its allowed drop
        fine_tuning = {"recovery": {"metric": example.metric, "tolerance": max_drop / 2}}
        recovery_args["parent_model"] = trainer.outputs["model"]
    else:
        fine_tuning = {"epochs": epochs, "steps_per_epoch": 20, "learning_rate": 0.01}
    retrain = RetrainComponent(
        model=prune.outputs["model"],
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        label_key=example.label_key,
        loss=example.loss,
        from_logits=example.from_logits,
        **fine_tuning,
        **recovery_args,
    )
    gate = EvaluatorGate(
        model=retrain.outputs["model"],
        baseline_model=trainer.outputs["model"],
        examples=example_gen.outputs["examples"],
        label_key=example.label_key,
        preprocessing_function_names=["transform_features"],
        thresholds=[{"metric": example.metric, "lower_bound": example.lower_bound, "max_absolute_drop": max_drop}],
        min_sparsity=target_sparsity,
    )
    pusher = AtomicPusher(
        model=retrain.outputs["model"],
        model_blessing=gate.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=os.path.join(out, "serving"))
        ),
    ).with_id("Pusher")
    return tfx.dsl.Pipeline(
        pipeline_name=f"tfx-{name}-example",
        pipeline_root=os.path.join(out, "root"),
        components=[example_gen, statistics, schema, transform, trainer, prune, retrain, gate, pusher],
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            os.path.join(out, "metadata.sqlite")
        ),
        beam_pipeline_args=list(DEFAULT_BEAM_ARGS),
    )


def _cell(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _fine_tuning(metadata_path: str, run_id: str) -> dict:
    """The RetrainComponent output's recovery record (fine_tuning.json), or {} for a fixed count without one."""
    store = open_store(metadata_path)
    context = store.get_context_by_type_and_name("pipeline_run", run_id)
    for artifact in store.get_artifacts_by_context(context.id):
        path = os.path.join(artifact.uri, "fine_tuning.json")
        if os.path.exists(path):
            return json.load(open(path)).get("recovery") or {}
    return {}


def run_once(args, out: str) -> dict:
    pipeline = build(
        args.example, out, args.target_sparsity, args.train_steps, args.epochs, args.recovery, args.max_drop
    )
    run_id = f"bench-{int(time.time())}"
    start = time.perf_counter()
    run_locally(pipeline, run_id)
    seconds = time.perf_counter() - start
    metadata_path = os.path.join(out, "metadata.sqlite")
    result = run_result(metadata_path, run_id)
    metrics = result.gate_result["metrics"]
    metric = next(key for key in metrics["candidate"] if key not in ("example_count", "non_finite_predictions"))
    return {
        "result": result,
        "metric": metric,
        "parent": metrics["baseline"][metric],
        "candidate": metrics["candidate"][metric],
        "recovery": _fine_tuning(metadata_path, run_id),
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--example", choices=sorted(EXAMPLES), default="penguin")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--target-sparsity", type=float, default=0.8)
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument(
        "--epochs", type=int, default=None, help="a fixed count of 20-step epochs (default: until recovered)"
    )
    parser.add_argument("--recovery", choices=RECOVERY, default="plain", help="how Retrain recovers accuracy")
    parser.add_argument("--max-drop", type=float, default=0.03, help="the gate's max_absolute_drop vs the parent")
    parser.add_argument("--runs", type=int, default=1, help="whole chains from scratch (a fresh Trainer each)")
    args = parser.parse_args()

    runs = []
    for index in range(args.runs):
        out = os.path.abspath(os.path.join(args.output_dir, f"run-{index}") if args.runs > 1 else args.output_dir)
        shutil.rmtree(out, ignore_errors=True)
        runs.append(run_once(args, out))
    if args.runs == 1:
        _print_one(runs[0])
        return
    rows = []
    for index, run in enumerate(runs):
        recovery = run["recovery"]
        rows.append(
            [
                index,
                f"{run['parent']:.4f}",
                f"{run['candidate']:.4f}",
                f"{run['parent'] - run['candidate']:+.4f}",
                recovery.get("stop_reason", "epochs"),
                recovery.get("steps", ""),
                "BLESSED" if run["result"].pushed else "refused",
                f"{run['seconds']:.0f}",
            ]
        )
    print(
        tabulate(
            rows,
            headers=["run", f"parent {runs[0]['metric']}", "candidate", "drop", "stopped", "steps", "gate", "s"],
            disable_numparse=True,
        )
    )
    blessed = sum(run["result"].pushed for run in runs)
    drops = [run["parent"] - run["candidate"] for run in runs]
    print(
        f"\n{blessed} of {len(runs)} blessed; drop median {np.median(drops):+.4f}, "
        f"range {min(drops):+.4f} .. {max(drops):+.4f}"
    )


def _print_one(run: dict) -> None:
    result = run["result"]
    metrics, weights = result.gate_result["metrics"], result.gate_result["weights"]
    metric = run["metric"]
    rows = [[f"{metric} (eval, {int(metrics['candidate']['example_count'])} examples)"]]
    rows[0] += [metrics["baseline"][metric], metrics["candidate"][metric]]
    for label, key in (
        ("sparsity, pruned kernels", "masked_sparsity"),
        ("sparsity, all kernels", "kernel_sparsity"),
        ("params", "params"),
        ("non-zero params", "nonzero_params"),
        ("gzip bytes, weights", "weights_gzip_bytes"),
        ("gzip bytes, SavedModel dir", "gzip_bytes"),
        ("SavedModel bytes", "saved_model_bytes"),
    ):
        rows.append([label, weights["baseline"][key], weights["candidate"][key]])
    rows = [[label, *(_cell(value) for value in values)] for label, *values in rows]
    print(tabulate(rows, headers=["", "Trainer (parent)", "pruned + fine-tuned"], disable_numparse=True))
    verdict = f"BLESSED and pushed to {result.pushed_destination}" if result.pushed else "NOT pushed"
    if run["recovery"]:
        print(f"\nfine-tuning: {run['recovery']['summary']}")
    print(f"\n{verdict}; whole pipeline {run['seconds']:.0f} s; report: {result.gate_html_path}")


if __name__ == "__main__":
    main()
