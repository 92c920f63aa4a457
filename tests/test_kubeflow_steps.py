"""Per-step pod settings (``kubeflow.steps``) land in the compiled spec where KFP reads them: the
container's resources and env, the task's retry and caching policy, and, in the platform spec,
the Kubernetes node selector, tolerations and secrets; read back with the KFP SDK's own protos."""

import re

import kfp_api_server
import pytest
import yaml
from google.protobuf import json_format
from kfp import components
from kfp.pipeline_spec import pipeline_spec_pb2

from tfx_model_pruning_pipelines import cli
from tfx_model_pruning_pipelines.kubeflow_steps import StepSettings, quantity
from tfx_model_pruning_pipelines.pipeline_config import PENGUIN_PRESET, PipelineConfigError, load_pipeline_config

GPU_FINE_TUNING = {
    "RetrainComponent": {
        "cpu_request": "4", "cpu_limit": "8", "memory_request": "8Gi", "memory_limit": "16Gi",
        "accelerator": {"type": "nvidia.com/gpu", "count": 2},
        "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "env": {"TF_FORCE_GPU_ALLOW_GROWTH": "true"},
        "env_from_secrets": [{"secret": "gcs-writer", "key": "key.json", "env": "GCS_KEY"}],
        "retries": 2,
    },
    "PruneComponent": {"memory_request": "64Gi", "memory_limit": "96Gi", "cpu_limit": "500m"},
    "Trainer": {"caching": True},
    "Pusher": {"caching": False, "env_from_secrets": [{"secret": "serving", "key": "token", "env": "PUSH_TOKEN"}]},
}  # fmt: skip


def _file(tmp_path, steps, **kubeflow):
    settings = yaml.safe_load(open(PENGUIN_PRESET))
    settings["kubeflow"] = {
        "pipeline_root": "gs://team/root", "serving_dir": "gs://team/serving", "data_root": "gs://team/data",
        "output_dir": str(tmp_path / "kfp"), "steps": steps, **kubeflow,
    }  # fmt: skip
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return str(path)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("steps")
    assert cli.main(["compile", "--config", _file(tmp_path, GPU_FINE_TUNING)]) == 0
    return tmp_path / "kfp" / "penguin-pruning.yaml"


def test_resources_env_retries_and_caching_are_where_the_pipeline_spec_keeps_them(compiled):
    pipeline_doc, platform_doc = yaml.safe_load_all(compiled.read_text())
    spec = json_format.ParseDict(pipeline_doc, pipeline_spec_pb2.PipelineSpec())  # unknown fields fail here
    executors = json_format.MessageToDict(spec.deployment_spec)["executors"]
    retrain = executors["RetrainComponent_executor"]["container"]
    resources = retrain["resources"]
    assert (resources["cpuRequest"], resources["cpuLimit"]) == (4.0, 8.0)
    assert resources["memoryRequest"] == pytest.approx(8 * 2**30 / 1e9)  # KFP counts memory in decimal GB
    assert resources["memoryLimit"] == pytest.approx(16 * 2**30 / 1e9)
    assert resources["accelerator"]["type"] == "nvidia.com/gpu" and int(resources["accelerator"]["count"]) == 2
    assert {"name": "TF_FORCE_GPU_ALLOW_GROWTH", "value": "true"} in retrain["env"]
    prune = executors["PruneComponent_executor"]["container"]["resources"]
    assert prune["cpuLimit"] == 0.5 and prune["memoryRequest"] == pytest.approx(64 * 2**30 / 1e9)
    assert "resources" not in executors["EvaluatorGate_executor"]["container"]
    tasks = spec.root.dag.tasks
    assert tasks["RetrainComponent"].retry_policy.max_retry_count == 2
    assert not tasks["PruneComponent"].HasField("retry_policy")
    assert tasks["Trainer"].caching_options.enable_cache is True
    assert tasks["Pusher"].caching_options.enable_cache is False
    assert tasks["EvaluatorGate"].caching_options.enable_cache is False  # judges against the serving model

    platform = json_format.ParseDict(platform_doc, pipeline_spec_pb2.PlatformSpec())
    kubernetes = json_format.MessageToDict(platform.platforms["kubernetes"].deployment_spec)["executors"]
    assert set(kubernetes) == {"RetrainComponent_executor", "Pusher_executor"}
    pod = kubernetes["RetrainComponent_executor"]
    assert pod["nodeSelector"] == {"labels": {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["secretAsEnv"] == [
        {"secretName": "gcs-writer", "keyToEnv": [{"secretKey": "key.json", "envVar": "GCS_KEY"}]}
    ]


def test_the_kfp_sdk_loads_both_documents(compiled):
    loaded = components.load_component_from_file(str(compiled))
    assert loaded.pipeline_spec.root.dag.tasks["RetrainComponent"].retry_policy.max_retry_count == 2
    platform = json_format.MessageToDict(loaded.platform_spec)
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors["Pusher_executor"]["secretAsEnv"][0]["secretName"] == "serving"


@pytest.mark.parametrize(
    "steps, message",
    [
        (
            {"RetrainComponnet": {"retries": 1}},
            "no step RetrainComponnet \\(did you mean RetrainComponent\\?\\); the steps are",
        ),
        ({"EvaluatorGate": {"caching": True}}, "compares with the model serving at run time"),
    ],
)
def test_a_step_the_pipeline_lacks_or_a_cached_verdict_is_refused_at_compile(tmp_path, capsys, steps, message):
    assert cli.main(["compile", "--config", _file(tmp_path, steps)]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert not (tmp_path / "kfp").exists() or not list((tmp_path / "kfp").iterdir()), "nothing half-written"


def test_bad_settings_are_named_by_their_path_all_at_once(tmp_path):
    steps = {
        "RetrainComponent": {"memory_limit": "16GB", "cpu_request": "4", "cpu_limit": "2"},
        "PruneComponent": {"tolerations": [{"operator": "Exists", "value": "x"}], "retries": -1, "gpus": 1},
    }
    with pytest.raises(PipelineConfigError) as raised:
        load_pipeline_config(_file(tmp_path, steps))
    text = str(raised.value)
    assert "kubeflow.steps.RetrainComponent.memory_limit: '16GB' is not a Kubernetes quantity" in text
    assert "kubeflow.steps.PruneComponent.retries" in text
    assert "kubeflow.steps.PruneComponent.tolerations.0: a toleration with operator Exists takes no value" in text
    assert "kubeflow.steps.PruneComponent.gpus: unknown key" in text
    with pytest.raises(ValueError, match="cpu_request 4 is above cpu_limit 2"):
        StepSettings(cpu_request="4", cpu_limit="2")
    assert quantity("500m") == quantity("0.5") and quantity("1Gi") == 2**30 and quantity("1e3") == 1000


def test_the_service_account_goes_with_each_run_and_schedule(tmp_path, monkeypatch):
    api, server = kfp_api_server.start()
    try:
        path = _file(tmp_path, {}, service_account="pruning-runner", host=api.host)
        monkeypatch.delenv("KF_PIPELINES_ENDPOINT", raising=False)
        assert cli.main(["compile", "--config", path]) == 0
        assert cli.main(["submit", "--config", path, "--run-name", "sa"]) == 0
        assert cli.main(["schedule", "create", "--config", path, "--name", "nightly", "--cron", "@daily"]) == 0
        (run,) = api.calls("POST", "/runs")
        assert run.json()["service_account"] == "pruning-runner"
        (recurring,) = api.calls("POST", "/recurringruns")
        assert recurring.json()["service_account"] == "pruning-runner"
    finally:
        server.shutdown()
        server.server_close()
