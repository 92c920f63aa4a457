"""Pruning by goal: latency picks structured pruning, size picks magnitude, and the report says why."""

import pytest
import yaml
from pydantic import ValidationError

from tfx_model_pruning.engine import GoalPruningConfig, PruningGoalError, prune_saved_model, summary_markdown
from tfx_model_pruning.engine.data import read_serialized
from tfx_model_pruning_pipelines import cli
from tfx_model_pruning_pipelines.pipeline_config import PENGUIN_PRESET, PipelineConfigError, load_pipeline_config


def _description(argv):
    return cli.load_description(cli._parser().parse_args(["run-local", *argv]))


def test_each_goal_chooses_its_method_and_says_why():
    faster, why = GoalPruningConfig(goal="latency", target_ratio=0.5, protected_layers=["out.*"]).chosen()
    assert (faster.method, faster.prune_fraction, faster.protected_layers) == ("structured", 0.5, ["out.*"])
    assert why.startswith("goal latency: structured pruning removes 50% of the units")
    smaller, why = GoalPruningConfig(goal="size", target_ratio=0.7).chosen()
    assert (smaller.method, smaller.target_sparsity) == ("magnitude", 0.7)
    assert "makes no kernel faster" in why
    for bad in ({"goal": "speed", "target_ratio": 0.5}, {"goal": "latency", "target_ratio": 0.0}, {"goal": "size"}):
        with pytest.raises(ValidationError):
            GoalPruningConfig(**bad)


def test_a_pipeline_file_names_a_goal_without_a_method(tmp_path):
    settings = yaml.safe_load(open(PENGUIN_PRESET))
    for goal, ratio, min_sparsity in (("latency", 0.5, None), ("size", 0.7, 0.7)):
        settings["prune"] = {"goal": goal, "target_ratio": ratio}
        path = tmp_path / f"{goal}.yaml"
        path.write_text(yaml.safe_dump(settings))
        config = load_pipeline_config(str(path))
        assert (config.prune.method, config.prune.goal, config.prune.target_ratio) == ("goal", goal, ratio)
        assert config.gate.min_sparsity == min_sparsity  # zeros to count only where the goal makes them
    settings["prune"] = {"goal": "latency", "target_ratio": 1.5, "method": "goal"}
    path.write_text(yaml.safe_dump(settings))
    with pytest.raises(PipelineConfigError, match="prune.target_ratio"):
        load_pipeline_config(str(path))
    settings["prune"] = {"goal": "speed", "target_ratio": 0.5}
    path.write_text(yaml.safe_dump(settings))
    with pytest.raises(PipelineConfigError, match="prune.goal: Input should be 'latency' or 'size'"):
        load_pipeline_config(str(path))


def test_the_cli_goal_replaces_the_files_method():
    config = _description(["--goal", "latency"])
    assert (config.prune.method, config.prune.goal, config.prune.target_ratio) == ("goal", "latency", 0.5)
    assert config.gate.min_sparsity is None  # the preset's 0.8 followed its magnitude section, now gone
    assert _description(["--goal", "size", "--target-ratio", "0.6"]).gate.min_sparsity == 0.6


def test_the_component_asks_for_examples_when_the_goal_needs_them():
    from tfx import types
    from tfx.types import standard_artifacts

    from tfx_model_pruning.prune.component import PruneComponent

    model = types.Channel(type=standard_artifacts.Model)
    with pytest.raises(ValueError, match="structured pruning proves the rebuilt serving signatures"):
        PruneComponent(model=model, goal="latency", target_ratio=0.5)
    component = PruneComponent(model=model, goal="size", target_ratio=0.5)
    assert '"method":"goal"' in component.exec_properties["pruning_config"]


@pytest.mark.integration
def test_goal_latency_prunes_structurally_and_the_report_says_why(tmp_path, penguin_baseline, penguin_files):
    sample = read_serialized(penguin_files["train"], 64)
    result = prune_saved_model(
        penguin_baseline, str(tmp_path / "faster"), GoalPruningConfig(goal="latency", target_ratio=0.5), sample, 0
    )
    assert result.method == "structured" and result.structure.removed_units > 0
    assert result.after.params < result.before.params and result.after.flops < result.before.flops
    assert "Method chosen by the goal: goal latency: structured pruning" in summary_markdown(result)
    assert result.to_json()["method_reason"] == result.method_reason

    everything = GoalPruningConfig(goal="latency", target_ratio=0.5, protected_layers=[".*"])
    cannot = "goal latency needs structured pruning, which cannot prune this model: no unit or filter can be removed"
    with pytest.raises(PruningGoalError, match=cannot):
        prune_saved_model(penguin_baseline, str(tmp_path / "protected"), everything, sample, 0)
