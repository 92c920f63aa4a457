"""End to end: the local pipeline (LocalDagRunner, SQLite MLMD, Beam in memory) on penguin data."""

import json
import os

import numpy as np
import pytest

from tfx_model_pruning.engine import load_model
from tfx_model_pruning_pipelines import cli
from tfx_model_pruning_pipelines.results import run_result

pytestmark = pytest.mark.integration


def test_trainer_to_pusher_releases_a_sparse_model_within_one_point(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(
        ["run-local", "--output-dir", str(out), "--run-id", "e2e", "--train-steps", "300", "--epochs", "10"]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed

    result = run_result(str(out / "metadata.sqlite"), "e2e")
    assert result.blessed and result.pushed
    versions = os.listdir(out / "serving")
    assert len(versions) == 1 and result.pushed_destination == str(out / "serving" / versions[0])
    assert f"BLESSED and pushed to {result.pushed_destination}" in printed
    assert "sparse_categorical_accuracy" in printed and "gzip bytes (weights)" in printed

    pushed = load_model(result.pushed_destination)
    assert list(pushed.signatures) == ["serving_default"]
    kernels = [pushed.model.get_layer(key.split("::")[0]).kernel.numpy() for key in pushed.masks]
    zeros = sum(int(np.count_nonzero(k == 0)) for k in kernels) / sum(k.size for k in kernels)
    assert zeros >= 0.8

    metrics = result.gate_result["metrics"]
    drop = metrics["baseline"]["sparse_categorical_accuracy"] - metrics["candidate"]["sparse_categorical_accuracy"]
    assert drop <= 0.01 + 1e-9
    assert result.pruning_report.after.masked_sparsity >= 0.8


def _imported_baseline_run(out, baseline, epochs):
    return ["run-local", "--output-dir", str(out), "--run-id", "e2e", "--baseline-model", baseline, "--epochs", epochs]


def test_importer_with_unreachable_threshold_is_not_blessed_and_pushes_nothing(tmp_path, penguin_baseline, capsys):
    out = tmp_path / "run"
    extra = ["--target-sparsity", "0.5", "--min-sparsity", "0.99"]
    code = cli.main(_imported_baseline_run(out, penguin_baseline, "2") + extra)
    printed = capsys.readouterr().out
    assert code == cli.EXIT_NOT_PUSHED, printed
    result = run_result(str(out / "metadata.sqlite"), "e2e")
    assert not result.blessed and not result.pushed
    assert result.gate_result["failed_checks"] == ["sparsity >= min_sparsity"]
    assert not (out / "serving").exists() or os.listdir(out / "serving") == []
    blessing_dirs = list((out / "root" / "EvaluatorGate" / "blessing").iterdir())
    assert [os.listdir(d) for d in blessing_dirs] == [["NOT_BLESSED"]]
    assert "NOT pushed: 1 of " in printed and " release checks failed" in printed
    assert printed.index("  FAIL  sparsity is 0.5, below the lower bound 0.99") < printed.index("NOT pushed")
    # The release report opens with where the verdict was made and on which models.
    summary = open(result.gate_summary_path).read()
    header = summary[: summary.index("## Why it was refused")]
    for line in (
        "- pipeline: `penguin-pruning`",
        "- run: `e2e`",
        "- candidate: `",
        "- parent: `",
        "- push destination: `",
    ):
        assert line in header, summary
    assert "- serving: `no model serving yet (first release)`" in header


def test_structured_pruning_with_distillation_pushes_a_physically_smaller_model(tmp_path, penguin_baseline, capsys):
    out = tmp_path / "run"
    extra = ["--method", "structured", "--prune-fraction", "0.5", "--distill"]
    code = cli.main(_imported_baseline_run(out, penguin_baseline, "10") + extra)
    printed = capsys.readouterr().out
    assert code == 0, printed
    result = run_result(str(out / "metadata.sqlite"), "e2e")
    assert result.blessed and result.pushed
    pushed = load_model(result.pushed_destination)
    baseline = load_model(penguin_baseline)
    assert pushed.model.get_layer("hidden_0").kernel.shape == (4, 32)
    assert pushed.model.count_params() < 0.3 * baseline.model.count_params()
    assert list(pushed.signatures) == list(baseline.signatures)
    assert result.pruning_report.after.flops < result.pruning_report.before.flops
    assert [c["name"] for c in result.gate_result["checks"] if "sparsity" in c["name"]] == []
    retrain_dirs = list((out / "root" / "RetrainComponent" / "model").iterdir())
    record = json.load(open(retrain_dirs[0] / "fine_tuning.json"))
    assert record["config"]["distillation"] == {"temperature": 4.0, "alpha": 0.5}
