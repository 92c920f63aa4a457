"""A pipeline whose pruning needs the Keras layer graph is refused when it is built, not after
Transform and Trainer ran, if its Trainer module saves only with ``tf.saved_model.save``."""

import pytest
import yaml
from tfx_example_models import TAXI_MODULE, TAXI_SAVED_MODEL_SAVE, taxi_module_saving_with_keras

from tfx_model_pruning.engine import NeedsKerasModelError
from tfx_model_pruning.engine.restored import needs_keras_graph, saved_model_save_lines
from tfx_model_pruning_pipelines import cli
from tfx_model_pruning_pipelines.pruning_pipeline import create_pipeline_from_args


def _taxi_save_line() -> int:
    with open(TAXI_MODULE) as f:
        (line,) = [i for i, text in enumerate(f.read().splitlines(), 1) if TAXI_SAVED_MODEL_SAVE in text]
    return line


def _build(tmp_path, trainer_module, prune_args):
    return create_pipeline_from_args(
        pipeline_name="taxi",
        pipeline_root=str(tmp_path / "root"),
        data_root=str(tmp_path),
        serving_model_dir=str(tmp_path / "serving"),
        label_key="tips",
        trainer_module_file=trainer_module,
        transform_module_file=TAXI_MODULE,
        data={"format": "csv"},
        prune_args=prune_args,
        retrain_args={"label_key": "tips_xf", "loss": "BinaryCrossentropy"},
        gate_args={"label_key": "tips_xf", "thresholds": [{"metric": "BinaryAccuracy", "lower_bound": 0.7}]},
    )


@pytest.mark.parametrize(
    "prune_args, what",
    [
        ({"method": "structured", "prune_fraction": 0.5}, "structured pruning"),
        ({"method": "layer_removal", "label_key": "tips_xf"}, "layer removal"),
        ({"target_sparsity": 0.5, "scope": "sensitivity", "label_key": "tips_xf"}, "scope='sensitivity'"),
    ],
)
def test_tfx_taxi_module_is_refused_at_build_time_naming_the_line_and_the_change(tmp_path, prune_args, what):
    with pytest.raises(NeedsKerasModelError) as raised:
        _build(tmp_path, TAXI_MODULE, prune_args)
    message = str(raised.value)
    assert message.startswith(f"{what} needs the Keras layer graph")
    assert f"{TAXI_MODULE}:{_taxi_save_line()}: `{TAXI_SAVED_MODEL_SAVE}`" in message
    assert "model.save(fn_args.serving_model_dir, save_format='tf', signatures=signatures)" in message
    assert not (tmp_path / "root").exists()


def test_the_changed_taxi_module_and_magnitude_pruning_build(tmp_path):
    changed = taxi_module_saving_with_keras(tmp_path)
    assert saved_model_save_lines(changed) == []
    assert _build(tmp_path, changed, {"method": "structured", "prune_fraction": 0.5}) is not None
    # Magnitude pruning works on a tf.saved_model.save model: nothing to refuse.
    assert _build(tmp_path, TAXI_MODULE, {"target_sparsity": 0.5}) is not None


@pytest.mark.parametrize(
    "source",
    [
        "def run_fn(fn_args):\n    tf.saved_model.save(model, fn_args.serving_model_dir)\n    def (:\n",  # no parse
        "def run_fn(fn_args):\n    keras.models.save_model(model, fn_args.serving_model_dir)\n"
        "    tf.saved_model.save(model, '/tmp/other')\n",  # a Keras save too
        "def run_fn(fn_args):\n    export(model, fn_args.serving_model_dir)\n",  # saves some other way
    ],
    ids=["unparseable", "keras_save_too", "no_saved_model_save"],
)
def test_a_module_that_is_not_clearly_saved_model_save_only_is_let_through(tmp_path, source):
    module = tmp_path / "trainer.py"
    module.write_text(source)
    assert saved_model_save_lines(str(module)) == []
    assert _build(tmp_path, str(module), {"method": "structured", "prune_fraction": 0.5}) is not None
    assert saved_model_save_lines(str(tmp_path / "missing.py")) == []


def test_what_needs_the_keras_graph_is_named_as_prune_component_names_it():
    assert needs_keras_graph({"target_sparsity": 0.5}) is None
    assert needs_keras_graph({"method": "magnitude", "criterion": "taylor"}) == "the taylor criterion without a `loss`"
    assert needs_keras_graph({"method": "magnitude", "criterion": "taylor", "loss": "MeanSquaredError"}) is None
    assert needs_keras_graph({"method": "structured", "scope": "sensitivity"}) == "structured pruning"


def test_run_local_refuses_the_unchanged_taxi_module_before_any_component_runs(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    description = {
        "name": "taxi",
        "data": {"root": str(tmp_path / "data"), "format": "csv", "label_key": "tips"},
        "model": {"trainer_module": TAXI_MODULE, "transform_module": TAXI_MODULE},
        "prune": {"method": "structured", "prune_fraction": 0.5},
        "retrain": {"label_key": "tips_xf", "loss": "BinaryCrossentropy"},
        "gate": {"label_key": "tips_xf", "thresholds": [{"metric": "BinaryAccuracy", "lower_bound": 0.7}]},
    }
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(description))
    out = tmp_path / "run"
    assert cli.main(["run-local", "--config", str(tmp_path / "pipeline.yaml"), "--output-dir", str(out)]) == 2
    error = capsys.readouterr().err
    assert f"{TAXI_MODULE}:{_taxi_save_line()}" in error and "model.save(fn_args.serving_model_dir" in error
    assert not (out / "metadata.sqlite").exists()
