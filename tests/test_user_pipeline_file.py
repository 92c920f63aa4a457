"""A team's own layout in one pipeline file: CSV data, TFX's own penguin module as Trainer and
Transform, a transformed label; it runs end to end locally and compiles for Kubeflow unchanged."""

import csv
import json
import os

import pytest
import tensorflow as tf
import yaml
from tfx.examples.penguin import penguin_utils_keras

from tfx_model_pruning_pipelines import cli
from tfx_model_pruning_pipelines.penguin_trainer import FEATURE_KEYS
from tfx_model_pruning_pipelines.results import run_result

pytestmark = pytest.mark.integration

TFX_PENGUIN_MODULE = penguin_utils_keras.__file__.removesuffix("c")


def _write_csv(tfrecords, path) -> int:
    path.parent.mkdir(parents=True)
    rows = 0
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*FEATURE_KEYS, "species"])
        for record in tf.data.TFRecordDataset(tfrecords, compression_type="GZIP"):
            feature = tf.train.Example.FromString(record.numpy()).features.feature
            writer.writerow(
                [feature[key].float_list.value[0] for key in FEATURE_KEYS] + [feature["species"].int64_list.value[0]]
            )
            rows += 1
    return rows


def test_a_csv_layout_with_its_own_trainer_and_transform_runs_locally_and_compiles(tmp_path, penguin_files):
    project = tmp_path / "project"
    assert _write_csv(penguin_files["eval"], project / "data" / "eval" / "penguins.csv") == 100
    _write_csv(penguin_files["train"], project / "data" / "train" / "penguins.csv")
    description = {
        "name": "team-penguins",
        "data": {
            "root": "data",
            "format": "csv",
            "splits": {"train": "train/*", "eval": "eval/*"},
            "label_key": "species",
        },
        "model": {"trainer_module": TFX_PENGUIN_MODULE, "transform_module": TFX_PENGUIN_MODULE, "train_steps": 200},
        "prune": {"method": "magnitude", "target_sparsity": 0.75},
        "retrain": {
            "label_key": "species_xf",  # what the transform computes
            "loss": "SparseCategoricalCrossentropy",
            "from_logits": True,
            "epochs": 30,
            "learning_rate": 0.01,
        },
        "gate": {
            "label_key": "species_xf",
            "preprocessing_function_names": ["transform_features"],
            "thresholds": [{"metric": "SparseCategoricalAccuracy", "lower_bound": 0.85, "max_absolute_drop": 0.05}],
            "compare_with": ["parent"],
        },
        "kubeflow": {
            "pipeline_root": "gs://team/root",
            "serving_dir": "gs://team/serving",
            "data_root": "gs://team/data",
        },
    }
    (project / "pipeline.yaml").write_text(yaml.safe_dump(description))
    config = str(project / "pipeline.yaml")

    out = tmp_path / "run"
    assert cli.main(["run-local", "--config", config, "--output-dir", str(out), "--run-id", "team-1"]) == 0
    result = run_result(str(out / "metadata.sqlite"), "team-1")
    assert result.blessed and result.pushed
    assert result.pushed_destination.startswith(str(out / "serving"))
    assert result.gate_result["metrics"]["candidate"]["example_count"] == 100  # the eval CSV, read whole
    assert result.pruning_report.config["target_sparsity"] == 0.75

    # TFX packages a Trainer module file into the pipeline root when it compiles (the pods install
    # that wheel), so the root must be writable then; a local folder stands in for gs://team/root.
    kfp, shared_root = tmp_path / "kfp", tmp_path / "shared-root"
    assert cli.main(["compile", "--config", config, "--output-dir", str(kfp), "--pipeline-root", str(shared_root)]) == 0
    assert list(shared_root.glob("_wheels/*.whl")), "the Trainer module was not packaged for the pods"
    spec = yaml.safe_load((kfp / "team-penguins.yaml").read_text())
    tasks = spec["root"]["dag"]["tasks"]
    assert {"CsvExampleGen", "Transform", "Trainer", "PruneComponent", "EvaluatorGate", "Pusher"} <= set(tasks)
    assert tasks["CsvExampleGen"]["inputs"]["parameters"]["input_base"] == {"componentInputParameter": "data_root"}
    gate_config = json.loads(tasks["EvaluatorGate"]["inputs"]["parameters"]["gate_config"]["runtimeValue"]["constant"])
    assert gate_config["label_key"] == "species_xf" and gate_config["serving_model_dir"] is None
    assert os.path.isfile(kfp / "team-penguins_job.json")
