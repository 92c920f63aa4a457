"""Scheduled retraining picks up new data: with {SPAN} patterns the newest span is read at run time."""

import json
import os
import shutil

import pytest
import yaml
from tfx import v1 as tfx
from tfx.proto import example_gen_pb2

from tfx_model_pruning_pipelines import cli

pytestmark = pytest.mark.integration

SPAN_PATTERNS = [
    "--split-pattern",
    "train=span-{SPAN}/Split-train/*",
    "--split-pattern",
    "eval=span-{SPAN}/Split-eval/*",
]


def test_compiled_example_gen_reads_the_span_pattern_under_the_runtime_data_root(tmp_path):
    out = tmp_path / "kfp"
    args = ["compile", "--output-dir", str(out), "--pipeline-root", "gs://b/root", "--serving-dir", "gs://b/serving"]
    assert cli.main([*args, "--data-root", "gs://b/penguin", *SPAN_PATTERNS]) == 0
    task = yaml.safe_load((out / "penguin-pruning.yaml").read_text())["root"]["dag"]["tasks"]["ImportExampleGen"]
    parameters = task["inputs"]["parameters"]
    assert parameters["input_base"] == {"componentInputParameter": "data_root"}
    input_config = json.loads(parameters["input_config"]["runtimeValue"]["constant"])
    assert {s["name"]: s["pattern"] for s in input_config["splits"]} == {
        "train": "span-{SPAN}/Split-train/*",
        "eval": "span-{SPAN}/Split-eval/*",
    }


def test_example_gen_takes_the_newest_span(tmp_path, penguin_data):
    data_root = tmp_path / "penguin"
    for span in (1, 2):
        for split in ("train", "eval"):
            shutil.copytree(os.path.join(penguin_data, f"Split-{split}"), data_root / f"span-{span}" / f"Split-{split}")
    example_gen = tfx.components.ImportExampleGen(
        input_base=str(data_root),
        input_config=example_gen_pb2.Input(
            splits=[
                example_gen_pb2.Input.Split(name="train", pattern="span-{SPAN}/Split-train/*"),
                example_gen_pb2.Input.Split(name="eval", pattern="span-{SPAN}/Split-eval/*"),
            ]
        ),
    )
    metadata_path = str(tmp_path / "metadata.sqlite")
    pipeline = tfx.dsl.Pipeline(
        pipeline_name="spans",
        pipeline_root=str(tmp_path / "root"),
        components=[example_gen],
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path),
        beam_pipeline_args=[],
    )
    tfx.orchestration.LocalDagRunner().run(pipeline)
    (examples,) = _examples(metadata_path)
    assert examples.custom_properties["span"].int_value == 2

    shutil.copytree(data_root / "span-2", data_root / "span-3")  # new data lands
    tfx.orchestration.LocalDagRunner().run(pipeline)
    assert sorted(e.custom_properties["span"].int_value for e in _examples(metadata_path)) == [2, 3]


def _examples(metadata_path):
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    return metadata_store.MetadataStore(config).get_artifacts_by_type("Examples")
