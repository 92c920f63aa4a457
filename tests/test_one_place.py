"""One option, one place: the components' keywords and docs, the CLI's flags and the Kubeflow spec
all come from the config models, and fail here when they drift from them."""

import argparse
import filecmp
import inspect
import os
import typing

import pytest
import yaml
from pydantic import ValidationError

from tfx_model_pruning import EvaluatorGate, PruneComponent, RetrainComponent
from tfx_model_pruning.engine.config import FineTuneConfig, LayerRemovalConfig, PruningConfig, StructuredPruningConfig
from tfx_model_pruning.evaluator_gate.config import GateConfig, MetricThreshold
from tfx_model_pruning_pipelines import cli, kubeflow
from tfx_model_pruning_pipelines.pipeline_config import (
    DataSection,
    GateSection,
    KubeflowSection,
    ModelSection,
    PipelineConfig,
    RetrainSection,
    field_types,
    load_pipeline_config,
)

COMPONENTS = {
    PruneComponent: (PruningConfig, StructuredPruningConfig, LayerRemovalConfig),
    RetrainComponent: (FineTuneConfig,),
    EvaluatorGate: (GateConfig,),
}


@pytest.mark.parametrize("component", COMPONENTS, ids=lambda c: c.__name__)
def test_every_config_field_is_a_documented_keyword_of_its_component(component):
    parameters = inspect.signature(component).parameters
    for model in COMPONENTS[component]:
        for name, field in model.model_fields.items():
            assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY and parameters[name].default is None
            assert f"\n      {name}: " in component.__doc__, f"{component.__name__} does not document {name}"
            assert field.description.split()[0] in component.__doc__
    assert "config" in parameters


def test_a_config_object_and_the_same_keywords_make_the_same_component(tmp_path):
    from tfx.types import channel_utils, standard_artifacts

    model = channel_utils.as_channel([standard_artifacts.Model()])
    examples = channel_utils.as_channel([standard_artifacts.Examples()])
    config = StructuredPruningConfig(prune_fraction=0.5, criterion="l2", min_units=4)
    by_object = PruneComponent(model=model, examples=examples, config=config)
    by_keywords = PruneComponent(model=model, examples=examples, method="structured", prune_fraction=0.5,
                                 criterion="l2", min_units=4)  # fmt: skip
    by_mapping = PruneComponent(model=model, examples=examples, config=config.model_dump(), min_units=4)
    assert by_object.exec_properties["pruning_config"] == by_keywords.exec_properties["pruning_config"]
    assert by_object.exec_properties["pruning_config"] == by_mapping.exec_properties["pruning_config"]
    overridden = PruneComponent(model=model, examples=examples, config=config, min_units=2)
    assert '"min_units":2' in overridden.exec_properties["pruning_config"]
    with pytest.raises(TypeError, match="'prune_fractoin' \\(did you mean 'prune_fraction'\\?\\)"):
        PruneComponent(model=model, examples=examples, method="structured", prune_fractoin=0.5)
    gate = GateConfig(label_key="y", thresholds=[MetricThreshold(metric="AUC", lower_bound=0.5)])
    assert (
        EvaluatorGate(model=model, examples=examples, config=gate).exec_properties["gate_config"]
        == EvaluatorGate(model=model, examples=examples, **gate.model_dump()).exec_properties["gate_config"]
    )


def test_a_criterion_is_chosen_by_its_registered_name():
    assert PruningConfig(target_sparsity=0.5, criterion="l2").criterion == "l2"  # registered, once refused
    with pytest.raises(ValidationError, match="did you mean 'apoz'\\?.*Registered: apoz, l1, l2"):
        StructuredPruningConfig(prune_fraction=0.5, criterion="apozz")
    with pytest.raises(ValidationError, match="scores channels by their activations"):
        PruningConfig(target_sparsity=0.5, criterion="apoz")


def _actions(command: str) -> dict[str, argparse.Action]:
    parser = cli._parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {option: action for action in subcommands.choices[command]._actions for option in action.option_strings}


def test_the_cli_flags_take_their_choices_and_help_from_the_fields_they_set():
    actions = _actions("run-local")
    for flags in cli.FILE_FLAGS.values():
        for flag, path in flags.items():
            fields = cli._field_at(path)
            assert fields, f"{flag}: no field {path}"
            kinds = [t for f in fields for t in field_types(f.annotation, True) if t is not type(None)]
            closed = all(typing.get_origin(t) is typing.Literal for t in kinds)
            choices = sorted({value for t in kinds for value in t.__args__}) if closed else []
            assert sorted(actions[flag].choices or []) == choices, flag
            assert f"[{path}" in actions[flag].help
    assert set(actions["--scope"].choices) == {"global", "per_layer", "sensitivity"}
    assert set(actions["--method"].choices) == {"magnitude", "structured", "wanda", "sparsegpt", "layer_removal"}
    # One-shot methods have no fine-tuning to recover from more: --method wanda starts at half the weights.
    assert "wanda: {'target_sparsity': 0.5}" in actions["--method"].help
    assert actions["--criterion"].choices is None  # any registered name, checked by the model


def test_the_pipeline_file_and_the_python_call_compile_byte_identical_kubeflow_specs(tmp_path):
    locations = {
        "pipeline_root": str(tmp_path / "root"),
        "serving_dir": str(tmp_path / "serving"),
        "data_root": str(tmp_path / "data"),
        "output_dir": str(tmp_path / "from-file"),
        "image": "registry.example/pruning:1",
    }
    description = {
        "name": "ducks",
        "data": {"label_key": "species", "splits": {"train": "span-{SPAN}/train/*", "eval": "span-{SPAN}/eval/*"}},
        "model": {"trainer_run_fn": "tfx_model_pruning_pipelines.penguin_trainer.run_fn", "train_steps": 50},
        "prune": {"method": "structured", "prune_fraction": 0.4, "criterion": "l2"},
        "retrain": {"epochs": 3, "distillation": {"temperature": 2.0}},
        "gate": {
            "thresholds": [{"metric": "SparseCategoricalAccuracy", "lower_bound": 0.8}],
            "compare_with": ["serving"],
        },
        "kubeflow": locations,
    }
    path = tmp_path / "ducks.yaml"
    path.write_text(yaml.safe_dump(description, sort_keys=False))  # as a person writes it: train, then eval
    assert cli.main(["compile", "--config", str(path)]) == 0

    config = PipelineConfig(
        name="ducks",
        data=DataSection(label_key="species", splits={"train": "span-{SPAN}/train/*", "eval": "span-{SPAN}/eval/*"}),
        model=ModelSection(trainer_run_fn="tfx_model_pruning_pipelines.penguin_trainer.run_fn", train_steps=50),
        prune=StructuredPruningConfig(prune_fraction=0.4, criterion="l2"),
        retrain=RetrainSection(label_key="species", epochs=3, distillation={"temperature": 2.0}),
        gate=GateSection(
            label_key="species",
            thresholds=[MetricThreshold(metric="SparseCategoricalAccuracy", lower_bound=0.8)],
            compare_with=["serving"],
        ),
        kubeflow=KubeflowSection(**{**locations, "output_dir": str(tmp_path / "from-python")}),
    )
    assert config == load_pipeline_config(str(path)).model_copy(update={"kubeflow": config.kubeflow})
    kubeflow.compile_pipeline(
        kubeflow.kubeflow_pipeline(config),
        config.kubeflow.output_dir,
        config.kubeflow.image,
        parameter_defaults={kubeflow.DATA_ROOT_PARAMETER: config.kubeflow.data_root},
    )
    for name in ("ducks.yaml", "ducks_job.json"):
        assert filecmp.cmp(tmp_path / "from-file" / name, tmp_path / "from-python" / name, shallow=False), name
    spec = yaml.safe_load((tmp_path / "from-file" / "ducks.yaml").read_text())
    assert (
        '"criterion":"l2"'
        in spec["root"]["dag"]["tasks"]["PruneComponent"]["inputs"]["parameters"]["pruning_config"]["runtimeValue"][
            "constant"
        ]
    )
    assert os.path.getsize(tmp_path / "from-file" / "ducks.yaml") > 1000
