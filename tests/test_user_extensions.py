"""A user's module of extensions (a Keras layer with its structured-pruning handler, and a criterion
of its own, in ``tests/data/pruning_extensions.py``) reaches every executor: through ``run-local``,
and through the Kubeflow container entrypoint, with TFX's user-module wheel."""

import json
import os

import numpy as np
import pytest
import tf_keras as keras
import yaml
from test_kubeflow_entrypoint import _artifact, _run_pod

from tfx_model_pruning.engine import load_model
from tfx_model_pruning.user_module import load_user_module
from tfx_model_pruning_pipelines import cli, penguin_trainer

pytestmark = pytest.mark.integration

EXTENSIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "pruning_extensions.py")
WIDTH = 32


@pytest.fixture(scope="module")
def scaled_baseline(tmp_path_factory, penguin_files):
    """A penguin classifier whose hidden layer is the user's ScaledDense, trained and saved as TFX's Trainer saves."""
    extensions = load_user_module(EXTENSIONS)
    keras.utils.set_random_seed(0)
    inputs = {key: keras.layers.Input(shape=(1,), name=key) for key in penguin_trainer.FEATURE_KEYS}
    x = keras.layers.concatenate([inputs[key] for key in penguin_trainer.FEATURE_KEYS])
    x = keras.layers.Activation("relu")(extensions.ScaledDense(WIDTH, name="scaled")(x))
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["sparse_categorical_accuracy"],
    )
    penguin_trainer.fit(model, penguin_files["train"], penguin_files["eval"], train_steps=300, eval_steps=5)
    path = str(tmp_path_factory.mktemp("scaled") / "model")
    model.save(path, save_format="tf", signatures=penguin_trainer.serving_signatures(model))
    return path, model.get_layer("scaled").kernel.numpy()


PRUNE_FLAGS = ["--method", "structured", "--prune-fraction", "0.5", "--criterion", "keep_first"]


def _kept_first_half(model_dir, kernel):
    pruned = load_model(model_dir).model
    assert type(pruned.get_layer("scaled")).__name__ == "ScaledDense"
    kept = pruned.get_layer("scaled").kernel.numpy()
    # keep_first keeps units 0..15, whatever their weights: no built-in criterion would.
    np.testing.assert_array_equal(kept, kernel[:, : WIDTH // 2])


def test_a_users_layer_and_criterion_prune_through_run_local(tmp_path, scaled_baseline, capsys):
    baseline, kernel = scaled_baseline
    out = tmp_path / "run"
    args = ["run-local", "--output-dir", str(out), "--run-id", "ext", "--baseline-model", baseline]
    args += ["--module-file", EXTENSIONS, *PRUNE_FLAGS, "--epochs", "5", "--set", "retrain.steps_per_epoch=20"]
    args += ["--min-metric", "0.7", "--max-drop", "0.3", "--slice-min-metric", "0.2", "--slice-max-drop", "0.8"]
    assert cli.main(args) == 0, capsys.readouterr().err
    (pruned_dir,) = [
        os.path.join(root, "Format-Serving")
        for root, dirs, _ in os.walk(out / "root" / "PruneComponent" / "model")
        if "Format-Serving" in dirs
    ]
    _kept_first_half(pruned_dir, kernel)
    (report,) = [
        os.path.join(r, "report.json") for r, _, f in os.walk(out / "root" / "PruneComponent") if "report.json" in f
    ]
    with open(report) as f:
        widths = json.load(f)["structure"]["widths"]
    assert widths["scaled"] == {"before": WIDTH, "after": WIDTH // 2}
    assert [name for name in os.listdir(out / "serving") if name.isdigit()], "BLESSED and pushed"


def test_a_users_layer_and_criterion_prune_through_the_kubeflow_entrypoint(tmp_path, scaled_baseline, penguin_data):
    baseline, kernel = scaled_baseline
    out = tmp_path / "kfp"
    args = ["compile", "--output-dir", str(out), "--pipeline-root", str(out / "root"), "--serving-dir", str(out)]
    args += ["--data-root", str(out), "--module-file", EXTENSIONS, *PRUNE_FLAGS]
    assert cli.main(args) == 0
    spec = yaml.safe_load((out / "penguin-pruning.yaml").read_text())
    task = spec["root"]["dag"]["tasks"]["PruneComponent"]["inputs"]["parameters"]
    parameters = {name: value["runtimeValue"]["constant"] for name, value in task.items() if "runtimeValue" in value}
    # TFX packaged the module into a wheel under the pipeline root; the pod installs it from there.
    module, wheel = parameters["module_path"].split("@")
    assert os.path.isfile(wheel) and wheel.startswith(str(out / "root"))
    assert json.loads(parameters["pruning_config"])["criterion"] == "keep_first"
    container = spec["deploymentSpec"]["executors"]["PruneComponent_executor"]["container"]
    pruned = tmp_path / "pruned"
    examples = _artifact(penguin_data, "tfx.Examples", {"split_names": '["train", "eval"]'})
    _run_pod(
        container,
        {"input_model": _artifact(baseline, "tfx.Model"), "examples": examples},
        {
            "model": _artifact(pruned, "tfx.Model"),
            "pruning_report": _artifact(tmp_path / "report", "tfx_model_pruning.PruningReport"),
        },
        parameters,
        tmp_path,
    )
    _kept_first_half(str(pruned / "Format-Serving"), kernel)
