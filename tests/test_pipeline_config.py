"""The pipeline file: validated with path-qualified errors before any component runs; flags override it."""

import argparse
import os

import pytest
import yaml

from tfx_model_pruning.engine.config import FineTuneConfig
from tfx_model_pruning_pipelines import cli
from tfx_model_pruning_pipelines.pipeline_config import (
    PENGUIN_PRESET,
    PipelineConfigError,
    json_schema,
    load_pipeline_config,
)


def _description(argv):
    """What run-local would build from ``argv``, without running anything."""
    return cli.load_description(cli._parser().parse_args(["run-local", *argv]))


def _write(path, settings) -> str:
    path.write_text(yaml.safe_dump(settings))
    return str(path)


def test_the_penguin_preset_is_what_make_run_runs():
    config = load_pipeline_config()
    assert config.name == "penguin-pruning" and config.data.root is None and config.data.label_key == "species"
    assert config.model.trainer_run_fn == "tfx_model_pruning_pipelines.penguin_trainer.run_fn"
    assert config.prune.method == "magnitude" and config.prune.target_sparsity == 0.8
    # Labels and the sparsity to check follow the data and pruning sections.
    assert config.retrain.label_key == config.gate.label_key == "species"
    assert config.gate.min_sparsity == 0.8 and config.gate.compare_with == ["parent", "serving"]
    assert [(t.metric, t.lower_bound, t.max_absolute_drop) for t in config.gate.thresholds] == [
        ("SparseCategoricalAccuracy", 0.9, 0.01)
    ]
    assert config.gate.slice_feature == "species" and config.gate.slice_thresholds[0].lower_bound == 0.8


def test_every_bad_key_and_value_is_reported_with_its_path_at_once(tmp_path):
    preset = yaml.safe_load(open(PENGUIN_PRESET))
    preset["prune"]["target_sparsity"] = 1.5
    preset["prune"]["sparsity"] = 0.5  # a typo for target_sparsity
    preset["gate"]["thresholds"][0]["lower_bound"] = 2
    preset["retrain"]["epoch"] = 3
    preset["dataa"] = {}
    with pytest.raises(PipelineConfigError) as raised:
        load_pipeline_config(_write(tmp_path / "bad.yaml", preset))
    message = str(raised.value)
    for path in ("prune.target_sparsity", "prune.sparsity", "gate.thresholds.0", "retrain.epoch", "dataa"):
        assert f"  {path}: " in message, message
    assert "  retrain.epoch: unknown key; did you mean epochs?" in message and "lower_bound=2" in message
    assert "  prune.sparsity: unknown key; did you mean target_sparsity?" in message
    assert "  dataa: unknown key; did you mean data?" in message
    assert "gate.min_sparsity" not in message  # the bad target_sparsity is not copied where the user wrote nothing


def test_mistakes_in_every_section_come_out_together_with_the_closest_valid_name(tmp_path):
    settings = {
        "name": "chicago-taxi",
        "data": {"label_key": "tips", "format": "tfrecods"},
        "model": {"trainer_run_fn": "taxi.trainer.run_fn", "train_stpes": 100},
        "prune": {"target_sparsity": 80},  # no method: magnitude, stated so the section's own errors show
        "retrain": {"from_logit": False, "loss": "binary_crossentropy"},
        "gate": {
            "thresholds": [{"metric": "binary_accuracy", "lower_bound": 0.6}, {"metric": "Acuracy", "lower_bound": 0}],
            "slice_thresholds": [{"metric": "MeanIoU", "lower_bound": 0.5}],
        },
        "kubeflow": {"pipline_root": "gs://bucket/root"},
    }
    with pytest.raises(PipelineConfigError) as raised:
        load_pipeline_config(_write(tmp_path / "taxi.yaml", settings))
    lines = str(raised.value).splitlines()
    assert lines[0].endswith("taxi.yaml: 9 invalid setting(s):"), lines
    expected = {
        "data.format": "did you mean tfrecord?",
        "model.train_stpes": "unknown key; did you mean train_steps?",
        "prune.target_sparsity": "less than 1 (got 80)",
        "retrain.from_logit": "unknown key; did you mean from_logits?",
        "retrain.loss": "'binary_crossentropy' is not a Keras loss class name fine-tuning can build; "
        "did you mean 'BinaryCrossentropy'?",
        "gate.thresholds.0.metric": "'binary_accuracy' is not a Keras metric class name the gate can compute; "
        "did you mean 'BinaryAccuracy'?",
        "gate.thresholds.1.metric": "did you mean 'Accuracy'?",
        "gate.slice_thresholds.0.metric": "'MeanIoU' is not a Keras metric class name",  # needs num_classes
        "kubeflow.pipline_root": "unknown key; did you mean pipeline_root?",
    }
    for path, text in expected.items():
        assert any(line.startswith(f"  {path}: ") and text in line for line in lines), (path, lines)
    assert not any("min_sparsity" in line for line in lines)  # reported once, where it was written

    # Nothing close: the keys that section takes (here structured pruning's, the method named).
    settings["prune"] = {"method": "structured", "prune_fraction": 0.5, "target_sparsity": 0.5}
    with pytest.raises(PipelineConfigError) as raised:
        load_pipeline_config(_write(tmp_path / "taxi.yaml", settings))
    line = next(line for line in str(raised.value).splitlines() if line.startswith("  prune."))
    assert line.startswith("  prune.target_sparsity: unknown key; the keys here are criterion, flops_budget, ")


def test_cross_field_problems_of_a_section_are_all_reported(tmp_path):
    settings = yaml.safe_load(open(PENGUIN_PRESET))
    settings["gate"]["thresholds"] *= 2  # the same metric twice
    settings["gate"].update(slice_thresholds=[], require_serving_model=True, compare_with=["parent"])
    settings["prune"] = {"method": "magnitud", "target_sparsity": 0.5}
    with pytest.raises(PipelineConfigError) as raised:
        load_pipeline_config(_write(tmp_path / "bad.yaml", settings))
    message = str(raised.value)
    assert "  gate: more than one entry in thresholds for ['SparseCategoricalAccuracy']" in message
    assert "  gate: slice_feature 'species' is set but no slice_thresholds" in message
    assert "  gate: require_serving_model needs 'serving' in compare_with" in message
    assert "  prune.method: " in message and "did you mean magnitude?" in message

    # A misspelt metric fails the section's fields; its contradictions are still checked and reported.
    settings = yaml.safe_load(open(PENGUIN_PRESET))
    settings["gate"]["thresholds"][0]["metric"] = "binary_accuracy"
    settings["gate"]["slice_thresholds"] = []
    with pytest.raises(PipelineConfigError) as raised:
        load_pipeline_config(_write(tmp_path / "bad.yaml", settings))
    lines = str(raised.value).splitlines()[1:]
    assert len(lines) == 2, lines
    assert lines[0].startswith("  gate.thresholds.0.metric: 'binary_accuracy' is not") and "BinaryAccuracy" in lines[0]
    assert lines[1] == "  gate: slice_feature 'species' is set but no slice_thresholds say what to check"


def test_a_bad_file_fails_before_any_component_runs(tmp_path, capsys):
    bad = _write(tmp_path / "bad.yaml", {**yaml.safe_load(open(PENGUIN_PRESET)), "model": {"train_steps": 10}})
    out = tmp_path / "run"
    assert cli.main(["run-local", "--config", bad, "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "model: give exactly one of trainer_module, trainer_run_fn or baseline_model" in err
    assert not out.exists()  # nothing ran: no metadata store, no pipeline root

    (tmp_path / "broken.yaml").write_text("data: [unclosed")
    assert cli.main(["run-local", "--config", str(tmp_path / "broken.yaml"), "--output-dir", str(out)]) == 2
    assert "is not valid YAML" in capsys.readouterr().err


def test_flags_override_the_file_and_name_the_keys_they_change():
    config = _description(["--target-sparsity", "0.7", "--epochs", "3", "--set", "retrain.batch_size=64"])
    assert config.prune.target_sparsity == 0.7 and config.gate.min_sparsity == 0.7
    assert config.retrain.epochs == 3 and config.retrain.batch_size == 64

    structured = _description(["--method", "structured", "--prune-fraction", "0.25", "--compare-with", "parent"])
    assert structured.prune.method == "structured" and structured.prune.prune_fraction == 0.25
    assert structured.gate.min_sparsity is None  # removed weights leave no zeros to count
    assert structured.gate.compare_with == ["parent"]

    gate = _description(["--metric", "BinaryAccuracy", "--min-metric", "0.6", "--slice-feature", ""])
    assert (gate.gate.thresholds[0].metric, gate.gate.thresholds[0].lower_bound) == ("BinaryAccuracy", 0.6)
    assert gate.gate.thresholds[0].max_absolute_drop == 0.01  # the file's, untouched
    assert gate.gate.slice_feature is None and gate.gate.slice_thresholds == []

    imported = _description(["--baseline-model", PENGUIN_PRESET])  # any path: validated when the pipeline is built
    assert imported.model.baseline_model == PENGUIN_PRESET and imported.model.trainer_run_fn is None

    with pytest.raises(PipelineConfigError, match="prune.target_sparsity"):
        _description(["--set", "prune.target_sparsity=2"])
    with pytest.raises(SystemExit, match="no section 'trainer'"):
        _description(["--set", "trainer.steps=3"])


def test_run_local_writes_under_runs_slash_the_pipeline_name_unless_told(tmp_path):
    taxi = _write(tmp_path / "taxi.yaml", {**yaml.safe_load(open(PENGUIN_PRESET)), "name": "chicago-taxi"})
    for argv, expected in (
        (["--config", taxi], os.path.abspath(os.path.join("runs", "chicago-taxi"))),
        ([], os.path.abspath(os.path.join("runs", "penguin-pruning"))),  # the preset: `make run`
        (["--config", taxi, "--output-dir", str(tmp_path / "mine")], str(tmp_path / "mine")),
    ):
        args = cli._parser().parse_args(["run-local", *argv])
        assert cli.local_output_dir(args, cli.load_description(args)) == expected


def test_relative_paths_in_a_file_are_relative_to_the_file(tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    settings = yaml.safe_load(open(PENGUIN_PRESET))
    settings["data"]["root"] = "data"
    settings["model"] = {"trainer_module": "src/trainer.py", "transform_module": "gs://bucket/transform.py"}
    config = load_pipeline_config(_write(folder / "pipeline.yaml", settings))
    assert config.data.root == str(folder / "data")
    assert config.model.trainer_module == str(folder / "src" / "trainer.py")
    assert config.model.transform_module == "gs://bucket/transform.py"


def test_the_schema_documents_every_section():
    schema = json_schema()
    assert set(schema["properties"]) >= {"data", "model", "prune", "retrain", "gate", "push", "beam_args", "kubeflow"}
    assert "description" in schema["$defs"]["DataSection"]["properties"]["format"]


def test_every_key_of_the_schema_has_a_description():
    """`prune-pipeline config-schema` is the reference of the file: no key without its meaning."""
    keys, undocumented = [], []

    def walk(where: str, node) -> None:
        if isinstance(node, dict):
            for key, prop in (node.get("properties") or {}).items():
                keys.append(f"{where}.{key}")
                if not (isinstance(prop, dict) and len(prop.get("description", "").split()) >= 3):
                    undocumented.append(f"{where}.{key}")
            for key, value in node.items():
                walk(f"{where}/{key}", value)
        elif isinstance(node, list):
            for item in node:
                walk(where, item)

    walk("", json_schema())
    assert len(keys) > 100 and not undocumented, undocumented


def test_compile_says_which_kubeflow_locations_are_missing(tmp_path, capsys):
    assert cli.main(["compile", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    for key in ("kubeflow.pipeline_root (--pipeline-root)", "kubeflow.serving_dir", "kubeflow.data_root"):
        assert key in err


def test_every_flag_of_run_local_and_compile_has_help():
    parser = cli._parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("run-local", "compile"):
        for action in subcommands.choices[name]._actions:
            assert action.help, f"{name} {action.option_strings} has no help"


def test_the_preset_ships_with_the_package():
    assert os.path.isfile(PENGUIN_PRESET) and PENGUIN_PRESET.endswith(
        os.path.join("pipelines", "presets", "penguin.yaml")
    )


def test_fine_tuning_recovers_the_gates_metric_within_half_its_allowed_drop():
    config = load_pipeline_config()  # gate: SparseCategoricalAccuracy, max_absolute_drop 0.01
    recovery = config.retrain.recovery
    assert config.retrain.until_recovered and config.retrain.epochs is None
    assert (recovery.metric, recovery.higher_is_better, recovery.tolerance) == (
        "SparseCategoricalAccuracy",
        True,
        0.005,
    )

    relative = load_pipeline_config(
        overrides={
            "gate": {
                "thresholds": [{"metric": "MeanSquaredError", "max_relative_drop": 0.1, "higher_is_better": False}]
            }
        }
    ).retrain.recovery
    assert (relative.metric, relative.higher_is_better, relative.relative_tolerance) == (
        "MeanSquaredError",
        False,
        0.05,
    )
    fixed = load_pipeline_config(overrides={"retrain": {"epochs": 5}}).retrain
    assert not fixed.until_recovered and fixed.recovery.metric is None  # a fixed count recovers nothing


def test_a_pipeline_can_say_prune_then_gate_with_no_fine_tuning():
    retrain = load_pipeline_config(overrides={"retrain": {"epochs": 0}}).retrain
    assert not retrain.fine_tunes and retrain.recovery.metric is None  # nothing follows the gate
    read_back = FineTuneConfig.model_validate_json(FineTuneConfig(**retrain.model_dump()).model_dump_json())
    assert read_back.model_dump() == retrain.model_dump()  # what the component reads back validates
    with pytest.raises(PipelineConfigError, match="epochs 0 means no fine-tuning, so recovery would never"):
        load_pipeline_config(overrides={"retrain": {"epochs": 0, "recovery": {"patience": 3}}})


def test_a_recovery_metric_other_than_the_gates_is_refused():
    with pytest.raises(PipelineConfigError, match="differs from the metric the gate checks"):
        load_pipeline_config(overrides={"retrain": {"recovery": {"metric": "AUC"}}})


def test_bad_recovery_settings_are_reported_together_with_their_paths():
    with pytest.raises(PipelineConfigError) as raised:
        load_pipeline_config(overrides={"retrain": {"recovery": {"tolerance": 0, "max_steps": 0, "metric": "MeanIoU"}}})
    message = str(raised.value)
    assert "3 invalid setting(s)" in message
    assert "retrain.recovery.tolerance: Input should be greater than 0" in message
    assert "retrain.recovery.max_steps: Input should be greater than or equal to 1" in message
    assert "retrain.recovery.metric: fine-tuning cannot compute 'MeanIoU'" in message
    assert "SparseCategoricalAccuracy" in message  # the metrics it can compute are listed


def test_security_allow_ops_from_the_file_and_the_flag_are_checked_op_names(tmp_path):
    config = _description(["--allow-op", "PrintV2", "--allow-op", "WriteFile"])
    assert config.security.allow_ops == ["PrintV2", "WriteFile"] and not config.security.allow_unsafe_layers
    assert _description([]).security.allow_ops == []
    settings = {**yaml.safe_load(open(PENGUIN_PRESET)), "security": {"allow_ops": ["writefile", "PrintV2"]}}
    with pytest.raises(PipelineConfigError, match=r"security.allow_ops.*'writefile': not an op type TensorFlow"):
        load_pipeline_config(_write(tmp_path / "p.yaml", settings))
