"""The custom artifact type was renamed with the import root; stores written by the old name keep working."""

import sqlite3

import pytest

from tfx_model_pruning.artifacts import PruningReport
from tfx_model_pruning_pipelines import cli
from tfx_model_pruning_pipelines.results import run_result

pytestmark = pytest.mark.integration

OLD_TYPE_NAME = "components.PruningReport"


def _run(out, baseline, run_id, sparsity="0.5"):
    args = ["run-local", "--output-dir", str(out), "--run-id", run_id, "--baseline-model", baseline]
    args += ["--target-sparsity", sparsity, "--min-sparsity", "0.45"]  # the gate's bound, below either target
    return cli.main([*args, "--epochs", "2", "--enable-cache"])


def _type_names(out) -> set[str]:
    with sqlite3.connect(out / "metadata.sqlite") as store:
        return {name for (name,) in store.execute("SELECT name FROM Type")}


def test_a_store_written_under_the_old_type_name_does_not_break_a_new_run(tmp_path, penguin_baseline, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as old_release:
        old_release.setattr(PruningReport, "TYPE_NAME", OLD_TYPE_NAME)
        assert _run(out, penguin_baseline, "before-rename") == 0
    assert OLD_TYPE_NAME in _type_names(out)
    assert PruningReport.TYPE_NAME == "tfx_model_pruning.PruningReport"

    # Same inputs and settings with the cache on: TFX hands the old execution's artifact, old
    # type name and all, to the new run. The run and its report must still work.
    assert _run(out, penguin_baseline, "cached-after-rename") == 0
    result = run_result(str(out / "metadata.sqlite"), "cached-after-rename")
    assert result.blessed and result.pushed
    assert result.pruning_report.after.masked_sparsity >= 0.5

    # New settings: a fresh execution registers the new name beside the old one in the same store.
    assert _run(out, penguin_baseline, "fresh-after-rename", sparsity="0.6") == 0
    assert {OLD_TYPE_NAME, PruningReport.TYPE_NAME} <= _type_names(out)
    assert run_result(str(out / "metadata.sqlite"), "fresh-after-rename").pruning_report.after.masked_sparsity > 0.55
    assert run_result(str(out / "metadata.sqlite"), "before-rename").pushed  # the old run still reads
