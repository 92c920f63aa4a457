"""Sensitivity analysis: per-layer curves, an allocation that meets the budget, and the plot."""

import json
import os

import pytest
from pydantic import ValidationError
from tfx.types import artifact_utils, standard_artifacts

from tfx_model_pruning.artifacts import PruningReport
from tfx_model_pruning.engine import prune_saved_model
from tfx_model_pruning.engine.config import PruningConfig, StructuredPruningConfig
from tfx_model_pruning.engine.data import read_serialized
from tfx_model_pruning.engine.prune import MissingExamplesError
from tfx_model_pruning.engine.sensitivity import BudgetError, Curve, allocate
from tfx_model_pruning.prune import executor as prune_executor


def _curves():
    levels = [0.5, 0.9]
    robust = Curve("robust", params=1000, levels=levels, losses=[0.10, 0.11])
    fragile = Curve("fragile", params=1000, levels=levels, losses=[0.30, 2.00])
    return robust, fragile


def test_allocation_prunes_the_robust_layer_harder_and_meets_the_budget():
    robust, fragile = _curves()
    allocation = allocate([robust, fragile], dense_loss=0.10, target_sparsity=0.7)
    assert allocation == {"robust": 0.9, "fragile": 0.5}
    assert (0.9 * 1000 + 0.5 * 1000) / 2000 >= 0.7


def test_an_unreachable_budget_is_an_error():
    with pytest.raises(BudgetError, match="cannot be met"):
        allocate(list(_curves()), dense_loss=0.1, target_sparsity=0.95)
    with pytest.raises(ValidationError, match="sensitivity budget cannot be met"):
        PruningConfig(target_sparsity=0.97, scope="sensitivity", label_key="y")
    with pytest.raises(ValidationError, match="needs label_key"):
        PruningConfig(target_sparsity=0.8, scope="sensitivity")


@pytest.mark.integration
def test_sensitivity_pruning_of_the_penguin_model(tmp_path, penguin_baseline, penguin_files):
    config = PruningConfig(target_sparsity=0.8, scope="sensitivity", label_key="species", sample_size=100)
    holdout = read_serialized(penguin_files["eval"], 100)
    with pytest.raises(MissingExamplesError, match="held-out"):
        prune_saved_model(penguin_baseline, str(tmp_path / "none"), config, latency_repeats=2)
    report = prune_saved_model(
        penguin_baseline, str(tmp_path / "out"), config, latency_repeats=2, holdout_examples=holdout
    )
    sensitivity = report.sensitivity
    assert {curve.key for curve in sensitivity.curves} == {"hidden_0::kernel", "hidden_1::kernel"}
    for curve in sensitivity.curves:
        assert len(curve.losses) == len(config.sensitivity_levels)
    rows = {row.layer: row for row in report.weights}
    for key, level in sensitivity.allocation.items():
        assert rows[key.split("::")[0]].sparsity_after == pytest.approx(level, abs=0.01)
    assert report.after.masked_sparsity >= 0.8 - 0.005


@pytest.mark.integration
def test_executor_writes_the_sensitivity_plot(tmp_path, penguin_baseline, penguin_data):
    model = standard_artifacts.Model()
    model.uri = str(tmp_path / "model")
    report = PruningReport()
    report.uri = str(tmp_path / "report")
    examples = standard_artifacts.Examples()
    examples.uri = penguin_data
    examples.split_names = artifact_utils.encode_split_names(["train", "eval"])
    baseline = standard_artifacts.Model()
    baseline.uri = penguin_baseline
    config = PruningConfig(target_sparsity=0.8, scope="sensitivity", label_key="species", sample_size=100)
    prune_executor.Executor().Do(
        {"input_model": [baseline], "examples": [examples]},
        {"model": [model], "pruning_report": [report]},
        {"pruning_config": config.model_dump_json()},
    )
    with open(os.path.join(report.uri, "sensitivity.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    summary = open(os.path.join(report.uri, "summary.md")).read()
    assert "## Sensitivity" in summary and "sensitivity.png" in summary
    assert json.load(open(os.path.join(report.uri, "report.json")))["sensitivity"]["allocation"]


@pytest.mark.integration
def test_structured_sensitivity_meets_a_flops_budget(tmp_path, penguin_baseline, penguin_files):
    config = StructuredPruningConfig(scope="sensitivity", flops_budget=0.4, label_key="species", sample_size=100)
    holdout = read_serialized(penguin_files["eval"], 100)
    samples = read_serialized(penguin_files["train"], 64)
    report = prune_saved_model(
        penguin_baseline, str(tmp_path / "out"), config, samples, latency_repeats=2, holdout_examples=holdout
    )
    assert report.after.flops <= 0.4 * report.before.flops
    sensitivity = report.sensitivity
    assert {curve.key for curve in sensitivity.curves} == {"hidden_0", "hidden_1"}
    assert all(level in (0.0, 0.25, 0.5, 0.75) for level in sensitivity.allocation.values())
    widths = report.structure.widths
    for name, fraction in sensitivity.allocation.items():
        assert widths[name].after == 64 - int(fraction * 64)


@pytest.mark.integration
def test_structured_sensitivity_budget_that_cannot_be_met(tmp_path, penguin_baseline, penguin_files):
    config = StructuredPruningConfig(scope="sensitivity", flops_budget=0.01, label_key="species")
    holdout = read_serialized(penguin_files["eval"], 100)
    samples = read_serialized(penguin_files["train"], 64)
    with pytest.raises(BudgetError, match="flops_budget 0.01 cannot be met"):
        prune_saved_model(penguin_baseline, str(tmp_path / "out"), config, samples, holdout_examples=holdout)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValidationError, match="needs flops_budget"):
        StructuredPruningConfig(scope="sensitivity", label_key="species")
    with pytest.raises(ValidationError, match="prune_fraction is required"):
        StructuredPruningConfig()
