"""Kubeflow (KFP v2) compilation, checked without a cluster."""

import importlib
import json
import os

import pytest
import tensorflow as tf
import yaml
from google.auth.exceptions import DefaultCredentialsError
from kfp import components as kfp_components

from tfx_model_pruning_pipelines import cli, kubeflow

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
    # The Trainer's model is the parent whose accuracy fine-tuning recovers.
    assert set(tasks["RetrainComponent"]["dependentTasks"]) == {"ImportExampleGen", "PruneComponent", "Trainer"}
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


def test_compile_with_a_module_file_prints_two_lines_not_the_wheel_build(tmp_path, capfd):
    trainer = importlib.import_module("tfx_model_pruning_pipelines.penguin_trainer").__file__
    out = _compile_local(tmp_path, "--trainer-module", trainer)
    printed = capfd.readouterr()
    assert printed.out.splitlines() == [
        f"PipelineJob: {out / 'penguin-pruning_job.json'}",
        f"Pipeline spec (for KFP upload_pipeline): {out / 'penguin-pruning.yaml'}",
    ]
    assert "bdist_wheel" not in printed.err and "setuptools" not in printed.err, printed.err
    assert list((tmp_path / "root").glob("_wheels/*.whl")), "the module file's wheel was still built"


def _compile_local(tmp_path, *extra):
    out = tmp_path / "kfp"
    args = ["compile", "--output-dir", str(out), "--pipeline-root", str(tmp_path / "root")]
    args += ["--serving-dir", "gs://bucket/serving", "--data-root", "gs://bucket/data/span-1", *extra]
    assert cli.main(args) == 0
    return out


@pytest.mark.parametrize(
    "error, expected",
    [
        (
            tf.errors.PermissionDeniedError(
                None,
                None,
                "Error executing an HTTP request: HTTP response code 401 with body 'Anonymous caller "
                "does not have storage.objects.get access' when reading metadata of gs://bucket/root",
            ),
            "cannot write to gs://bucket/root: Google Cloud credentials are missing",
        ),
        (
            tf.errors.FailedPreconditionError(
                None, None, "libcurl code 6 meaning 'Couldn't resolve host name' when reading metadata of gs://b/r"
            ),
            "cannot reach gs://b/r from this machine",
        ),
        (DefaultCredentialsError("Your default credentials were not found."), "credentials are missing"),
    ],
)
def test_a_cloud_storage_failure_at_compile_is_one_line_saying_how_to_fix_it(
    tmp_path, capsys, monkeypatch, error, expected
):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(kubeflow, "compile_pipeline", fail)
    args = ["compile", "--output-dir", str(tmp_path), "--pipeline-root", "gs://bucket/root"]
    assert cli.main([*args, "--serving-dir", "gs://bucket/serving", "--data-root", "gs://bucket/data"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("prune-pipeline compile: error: ") and expected in err
    assert "gcloud auth application-default login" in err or "trainer_run_fn" in err


def test_an_unexplained_compile_failure_shows_what_was_held_back(tmp_path, monkeypatch, capfd):
    def fail(*args, **kwargs):
        os.write(1, b"running bdist_wheel\nerror: invalid command\n")  # as setuptools' subprocess does
        raise RuntimeError("wheel build failed")

    monkeypatch.setattr(kubeflow, "compile_pipeline", fail)
    with pytest.raises(RuntimeError, match="wheel build failed"):
        _compile_local(tmp_path)
    assert "running bdist_wheel\nerror: invalid command" in capfd.readouterr().err


def test_submit_without_google_credentials_says_so_in_one_line(monkeypatch, capsys):
    from tfx_model_pruning_pipelines import kfp_runs

    def connect(**kwargs):
        raise DefaultCredentialsError("Your default credentials were not found.")

    monkeypatch.setattr(kfp_runs, "connect", connect)
    with pytest.raises(SystemExit) as exited:
        cli.main(["schedule", "list", "--host", "https://kfp.example", "--iap-client-id", "x.apps"])
    err = capsys.readouterr().err
    assert exited.value.code == 1 and len(err.strip().splitlines()) == 1, err
    assert "no usable Google Cloud credentials for the KFP API" in err and "gcloud auth" in err
