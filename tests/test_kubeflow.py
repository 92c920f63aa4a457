"""Kubeflow (KFP v2) compilation, checked without a cluster."""

import importlib
import json

import yaml
from kfp import components as kfp_components

from tfx_model_pruning.pipelines import cli

TASKS = {"ImportExampleGen", "Trainer", "PruneComponent", "RetrainComponent", "EvaluatorGate", "Pusher"}


def _compile(tmp_path, *extra):
    out = tmp_path / "kfp"
    args = ["compile", "--output-dir", str(out), "--pipeline-root", "gs://bucket/root"]
    args += ["--serving-dir", "gs://bucket/serving", "--data-root", "gs://bucket/data/span-1", *extra]
    assert cli.main(args) == 0
    return out


def test_compiled_spec_has_every_component_edge_image_and_runtime_parameter(tmp_path):
    out = _compile(tmp_path, "--image", "registry.example/pruning:7", "--beam-arg=--direct_num_workers=2")
    spec = yaml.safe_load((out / "penguin-pruning.yaml").read_text())
    job = json.loads((out / "penguin-pruning_job.json").read_text())
    assert job["pipelineSpec"] == spec, "the YAML is the job's bare pipeline spec"

    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == TASKS
    assert set(tasks["PruneComponent"]["dependentTasks"]) == {"ImportExampleGen", "Trainer"}
    assert set(tasks["RetrainComponent"]["dependentTasks"]) == {"ImportExampleGen", "PruneComponent"}
    assert set(tasks["EvaluatorGate"]["dependentTasks"]) == {"ImportExampleGen", "RetrainComponent", "Trainer"}
    assert set(tasks["Pusher"]["dependentTasks"]) == {"EvaluatorGate", "RetrainComponent"}
    assert not [name for name in tasks if "Resolver" in name], "open-source KFP cannot run Resolver nodes"
    # The gate compares with the model serving at run time, which KFP's cache key cannot see.
    assert tasks["EvaluatorGate"]["cachingOptions"] == {"enableCache": False}
    assert [name for name in tasks if "cachingOptions" in tasks[name]] == ["EvaluatorGate"]

    data_root = spec["root"]["inputDefinitions"]["parameters"]["data_root"]
    assert data_root == {"parameterType": "STRING", "defaultValue": "gs://bucket/data/span-1", "isOptional": True}
    assert job["runtimeConfig"]["parameterValues"]["data_root"] == "gs://bucket/data/span-1"
    example_gen = spec["root"]["dag"]["tasks"]["ImportExampleGen"]["inputs"]["parameters"]["input_base"]
    assert example_gen == {"componentInputParameter": "data_root"}, "read at run time, not frozen at compile time"

    executors = spec["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {"registry.example/pruning:7"}
    prune = executors["PruneComponent_executor"]["container"]
    assert "--direct_num_workers=2" in prune["args"]
    assert prune["command"][-1] == "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"
    report = spec["components"]["PruneComponent"]["outputDefinitions"]["artifacts"]["pruning_report"]
    assert report["artifactType"]["instanceSchema"].startswith("title: tfx_model_pruning.PruningReport")


def test_a_gate_without_a_serving_baseline_may_be_cached(tmp_path):
    spec = yaml.safe_load((_compile(tmp_path, "--compare-with", "parent") / "penguin-pruning.yaml").read_text())
    assert "cachingOptions" not in spec["root"]["dag"]["tasks"]["EvaluatorGate"]


def test_kfp_sdk_loads_the_spec_and_the_image_can_run_every_executor(tmp_path):
    out = _compile(tmp_path)
    loaded = kfp_components.load_component_from_file(str(out / "penguin-pruning.yaml"))
    assert loaded.name == "penguin-pruning"
    spec = yaml.safe_load((out / "penguin-pruning.yaml").read_text())
    for executor in spec["deploymentSpec"]["executors"].values():
        container = executor["container"]
        assert container["image"] == "tfx-model-pruning:0.1.0"
        importlib.import_module(container["command"][-1])  # the entrypoint module the pod runs
        args = container["args"]
        if "--executor_class_path" in args:
            path = args[args.index("--executor_class_path") + 1]
            module, name = path.rsplit(".", 1)
            assert hasattr(importlib.import_module(module), name), path


def test_compile_refuses_a_serving_dir_that_escapes_the_push_root(tmp_path, capsys):
    args = ["compile", "--output-dir", str(tmp_path), "--pipeline-root", "gs://b/root", "--data-root", "gs://b/data"]
    args += ["--push-root", "gs://b/serving"]
    assert cli.main([*args, "--serving-dir", "gs://b/serving/penguin"]) == 0
    for escaping in ("gs://b/serving/../models", "gs://other/serving/penguin"):
        capsys.readouterr()
        assert cli.main([*args, "--serving-dir", escaping]) == 2
        assert "outside the push root" in capsys.readouterr().err
