"""TFX's own penguin Keras example, module file unchanged, followed by this project's chain.

    .venv/bin/python bench/tfx_example_chain.py --output-dir /tmp/tfx-example

ImportExampleGen -> StatisticsGen -> SchemaGen -> Transform -> Trainer
(``tfx/examples/penguin/penguin_utils_keras.py`` as the installed tfx package ships it: it saves
with ``tf.saved_model.save`` and exports ``serving_default`` and ``transform_features``) ->
PruneComponent (magnitude) -> RetrainComponent (transformed examples + transform graph, label
``species_xf``) -> EvaluatorGate (raw examples, label through ``transform_features``) -> Pusher.
Prints the parent vs pushed table the gate measured. The same chain runs in
``tests/test_tfx_example_chain.py``.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tabulate import tabulate  # noqa: E402
from tfx.examples.penguin import penguin_utils_keras  # noqa: E402

from pipelines.pruning_pipeline import create_pipeline, penguin_data_root, run_locally  # noqa: E402
from pipelines.results import run_result  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--target-sparsity", type=float, default=0.8)
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()

    module = penguin_utils_keras.__file__.removesuffix("c")
    out = os.path.abspath(args.output_dir)
    pipeline = create_pipeline(
        pipeline_name="tfx-penguin-example",
        pipeline_root=os.path.join(out, "root"),
        data_root=penguin_data_root(),
        serving_model_dir=os.path.join(out, "serving"),
        label_key="species",
        trainer_module_file=module,
        transform_module_file=module,
        train_steps=args.train_steps,
        prune_args={"target_sparsity": args.target_sparsity},
        retrain_args={
            "label_key": "species_xf",
            "loss": "SparseCategoricalCrossentropy",
            "epochs": args.epochs,
            "learning_rate": 0.01,
        },
        gate_args={
            "label_key": "species_xf",
            "preprocessing_function_names": ["transform_features"],
            "thresholds": [{"metric": "SparseCategoricalAccuracy", "lower_bound": 0.9, "max_absolute_drop": 0.05}],
            "min_sparsity": args.target_sparsity,
        },
        metadata_path=os.path.join(out, "metadata.sqlite"),
    )
    run_id = f"bench-{int(time.time())}"
    start = time.perf_counter()
    run_locally(pipeline, run_id)
    seconds = time.perf_counter() - start

    result = run_result(os.path.join(out, "metadata.sqlite"), run_id)
    metrics, weights = result.gate_result["metrics"], result.gate_result["weights"]
    rows = [
        [label, weights["baseline"][key], weights["candidate"][key]]
        for label, key in (
            ("sparsity, pruned kernels", "masked_sparsity"),
            ("sparsity, all kernels", "kernel_sparsity"),
            ("params", "params"),
            ("non-zero params", "nonzero_params"),
            ("gzip bytes, weights", "weights_gzip_bytes"),
            ("gzip bytes, SavedModel dir", "gzip_bytes"),
            ("SavedModel bytes", "saved_model_bytes"),
        )
    ]
    rows.insert(
        0,
        [
            "accuracy (eval, 100 examples)",
            metrics["baseline"]["sparse_categorical_accuracy"],
            metrics["candidate"]["sparse_categorical_accuracy"],
        ],
    )
    rows = [[label, *(f"{v:.4f}" if isinstance(v, float) else str(v) for v in values)] for label, *values in rows]
    print(tabulate(rows, headers=["", "Trainer (parent)", "pruned + fine-tuned"], disable_numparse=True))
    verdict = "BLESSED and pushed to " + str(result.pushed_destination) if result.pushed else "NOT pushed"
    print(f"\n{verdict}; whole pipeline {seconds:.0f} s; report: {result.gate_html_path}")


if __name__ == "__main__":
    main()
