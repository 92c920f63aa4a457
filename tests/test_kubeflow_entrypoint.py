"""Each executor run the way a Kubeflow pod runs it: the container command and arguments taken
from the compiled pipeline spec, with KFP's ``{{$}}`` placeholder replaced by an ExecutorInput
JSON, in a subprocess, on the real penguin data."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from tfx_model_pruning.engine import load_model
from tfx_model_pruning_pipelines import cli

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Container commands, compiled parameter constants and serving dir of the compiled spec."""
    out = tmp_path_factory.mktemp("kfp")
    args = ["compile", "--output-dir", str(out), "--pipeline-root", str(out / "root"), "--serving-dir", str(out)]
    args += ["--data-root", str(out), "--beam-arg=--direct_running_mode=in_memory", "--beam-arg=--direct_num_workers=1"]
    assert cli.main(args) == 0
    spec = yaml.safe_load((out / "penguin-pruning.yaml").read_text())
    containers = {name: e["container"] for name, e in spec["deploymentSpec"]["executors"].items()}
    parameters = {
        task: {
            name: value["runtimeValue"]["constant"]
            for name, value in definition["inputs"].get("parameters", {}).items()
            if "runtimeValue" in value
        }
        for task, definition in spec["root"]["dag"]["tasks"].items()
    }
    return {"containers": containers, "parameters": parameters, "serving_dir": str(out)}


def _artifact(uri, type_name, metadata=None):
    return {"artifacts": [{"uri": str(uri), "type": {"schemaTitle": type_name}, "metadata": metadata or {}}]}


def _run_pod(container, inputs, outputs, parameters, task_dir):
    invocation = {
        "inputs": {"artifacts": inputs, "parameterValues": parameters},
        "outputs": {"artifacts": outputs, "outputFile": str(task_dir / "executor_output.json")},
    }
    assert container["command"][:2] == ["python", "-m"]
    args = [json.dumps(invocation) if arg == "{{$}}" else arg for arg in container["args"]]
    # The image sets TF_USE_LEGACY_KERAS=1 (Dockerfile); the pod's python is this venv's here.
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [sys.executable, *container["command"][1:], *args]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    with open(task_dir / "executor_output.json") as f:
        return json.load(f)


def test_prune_retrain_gate_and_pusher_pods(tmp_path, compiled, penguin_baseline, penguin_data):
    examples = _artifact(penguin_data, "tfx.Examples", {"split_names": '["train", "eval"]'})
    baseline = _artifact(penguin_baseline, "tfx.Model")

    pruned_uri, report_uri = tmp_path / "pruned", tmp_path / "report"
    output = _run_pod(
        compiled["containers"]["PruneComponent_executor"],
        {"input_model": baseline, "examples": examples},
        {
            "model": _artifact(pruned_uri, "tfx.Model"),
            "pruning_report": _artifact(report_uri, "tfx_model_pruning.PruningReport"),
        },
        {"pruning_config": '{"method": "magnitude", "target_sparsity": 0.8}'},
        tmp_path,
    )
    assert output["artifacts"]["pruning_report"]["artifacts"][0]["metadata"]["sparsity"] > 0.79
    assert os.path.isfile(report_uri / "report.json")

    retrained_uri = tmp_path / "retrained"
    _run_pod(
        compiled["containers"]["RetrainComponent_executor"],
        {"input_model": _artifact(pruned_uri, "tfx.Model"), "examples": examples},
        {"model": _artifact(retrained_uri, "tfx.Model")},
        {"fine_tune_config": '{"label_key": "species", "epochs": 2}'},
        tmp_path,
    )
    retrained = load_model(str(retrained_uri))
    for key, mask in retrained.masks.items():
        assert np.all(retrained.model.get_layer(key.split("::")[0]).kernel.numpy()[~mask] == 0)

    compiled_gate = json.loads(compiled["parameters"]["EvaluatorGate"]["gate_config"])
    assert compiled_gate["serving_model_dir"] == compiled["serving_dir"], "compile wires the serving baseline"
    assert compiled_gate["slice_feature"] == "species"
    blessing_uri = tmp_path / "blessing"
    gate = {
        "label_key": "species",
        "thresholds": [{"metric": "SparseCategoricalAccuracy", "lower_bound": 0.5, "max_absolute_drop": 0.5}],
        "min_sparsity": 0.79,
        "slice_feature": "species",
        "slice_thresholds": [{"metric": "SparseCategoricalAccuracy", "lower_bound": 0.3}],
        "serving_model_dir": compiled["serving_dir"],
    }
    output = _run_pod(
        compiled["containers"]["EvaluatorGate_executor"],
        {"model": _artifact(retrained_uri, "tfx.Model"), "baseline_model": baseline, "examples": examples},
        {
            "blessing": _artifact(blessing_uri, "tfx.ModelBlessing"),
            "evaluation": _artifact(tmp_path / "evaluation", "tfx.ModelEvaluation"),
        },
        {"gate_config": json.dumps(gate)},
        tmp_path,
    )
    assert os.listdir(blessing_uri) == ["BLESSED"]
    blessing_metadata = output["artifacts"]["blessing"]["artifacts"][0]["metadata"]
    assert blessing_metadata["blessed"] == 1
    assert os.path.isfile(tmp_path / "evaluation" / "report.html")

    # The Pusher pod runs this project's executor with the push destination compiled into the spec,
    # and reads the blessing the way KFP hands it over: as the gate's output metadata.
    pusher_parameters = compiled["parameters"]["Pusher"]
    output = _run_pod(
        compiled["containers"]["Pusher_executor"],
        {
            "model": _artifact(retrained_uri, "tfx.Model"),
            "model_blessing": _artifact(blessing_uri, "tfx.ModelBlessing", blessing_metadata),
        },
        {"pushed_model": _artifact(tmp_path / "pushed", "tfx.PushedModel")},
        pusher_parameters,
        tmp_path,
    )
    pushed = output["artifacts"]["pushed_model"]["artifacts"][0]["metadata"]
    assert pushed["pushed"] == 1
    versions = [name for name in os.listdir(compiled["serving_dir"]) if name.isdigit()]
    assert [os.path.join(compiled["serving_dir"], v) for v in versions] == [pushed["pushed_destination"]]
    assert load_model(pushed["pushed_destination"]).signatures
