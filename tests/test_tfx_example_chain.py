"""End to end after TFX's own penguin Keras example, its module file as the tfx package ships it.

ExampleGen -> StatisticsGen -> SchemaGen -> Transform -> Trainer (``penguin_utils_keras.py``:
``tf.saved_model.save`` with ``serving_default`` and ``transform_features``, label
``species_xf`` computed by the transform) -> Prune (magnitude 80%) -> Retrain -> Gate -> Pusher.
"""

import os

import numpy as np
import pytest
import tensorflow as tf
from tfx.examples.penguin import penguin_utils_keras

from tfx_model_pruning.engine.saved_model import load_model, signature_specs
from tfx_model_pruning_pipelines.pruning_pipeline import create_pipeline_from_args, run_locally
from tfx_model_pruning_pipelines.results import run_result

pytestmark = pytest.mark.integration

TFX_PENGUIN_MODULE = penguin_utils_keras.__file__.removesuffix("c")  # the .py, never a .pyc


def test_tfx_penguin_keras_example_is_pruned_retrained_gated_and_pushed(tmp_path, penguin_data, penguin_files):
    out = tmp_path / "run"
    serving = out / "serving"
    pipeline = create_pipeline_from_args(
        pipeline_name="tfx-penguin-example",
        pipeline_root=str(out / "root"),
        data_root=penguin_data,
        serving_model_dir=str(serving),
        label_key="species",
        trainer_module_file=TFX_PENGUIN_MODULE,
        transform_module_file=TFX_PENGUIN_MODULE,
        train_steps=200,
        prune_args={"target_sparsity": 0.8},
        retrain_args={
            "label_key": "species_xf",
            "loss": "SparseCategoricalCrossentropy",
            "from_logits": True,
            "epochs": 40,
            "learning_rate": 0.01,
        },
        gate_args={
            "label_key": "species_xf",
            "preprocessing_function_names": ["transform_features"],
            "thresholds": [{"metric": "SparseCategoricalAccuracy", "lower_bound": 0.9, "max_absolute_drop": 0.05}],
            "min_sparsity": 0.8,
        },
        metadata_path=str(out / "metadata.sqlite"),
    )
    run_locally(pipeline, "tfx-example")

    result = run_result(str(out / "metadata.sqlite"), "tfx-example")
    assert result.blessed and result.pushed, result.gate_result
    accuracy = {name: m["sparse_categorical_accuracy"] for name, m in result.gate_result["metrics"].items()}
    assert accuracy["candidate"] >= 0.9 and accuracy["baseline"] - accuracy["candidate"] <= 0.05 + 1e-6

    trainer_dir = result.gate_result["models"]["baseline"]
    pushed_dir = result.pushed_destination
    assert not os.path.exists(os.path.join(trainer_dir, "keras_metadata.pb"))  # saved as TFX's example saves
    assert signature_specs(pushed_dir) == signature_specs(trainer_dir)
    assert sorted(signature_specs(pushed_dir)) == ["serving_default", "transform_features"]

    pushed = load_model(pushed_dir)
    rows = result.pruning_report.weights
    (output_layer,) = [row for row in rows if row.protected_by == "output layer"]
    assert output_layer.shape == [8, 3]  # the logits layer, found in the serving graph
    hidden = sorted(f"{row.layer}::{row.weight}" for row in rows if row.protected_by is None)
    assert len(hidden) == 2 and sorted(pushed.masks) == hidden
    variables = {v.name.split(":")[0]: v.numpy() for v in pushed.model.variables}
    kernels = [variables[key.replace("::", "/")] for key in hidden]
    assert sum(np.count_nonzero(k == 0) for k in kernels) / sum(k.size for k in kernels) >= 0.8

    raw = [r.numpy() for r in tf.data.TFRecordDataset(penguin_files["eval"], compression_type="GZIP").take(20)]
    labels = [tf.train.Example.FromString(r).features.feature["species"].int64_list.value[0] for r in raw]
    served = tf.saved_model.load(pushed_dir).signatures["serving_default"](examples=tf.constant(raw))
    predicted = np.argmax(served["outputs"].numpy(), axis=1)
    assert np.mean(predicted == np.array(labels)) >= 0.8
