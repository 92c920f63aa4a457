"""Runs that share an output directory: each judges against what serves now and reports its own result."""

import os
import shutil
import subprocess
import sys

import pytest
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from tfx_model_pruning_pipelines import cli
from tfx_model_pruning_pipelines.results import failed_steps, run_result

pytestmark = pytest.mark.integration


def _executions(metadata_path, run_id):
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    store = metadata_store.MetadataStore(config)
    types = {t.id: t.name.rsplit(".", 1)[-1] for t in store.get_execution_types()}
    context = store.get_context_by_type_and_name("pipeline_run", run_id)
    return {types[e.type_id]: e.last_known_state for e in store.get_executions_by_context(context.id)}


def test_a_verdict_is_not_reused_after_a_better_model_lands(tmp_path, penguin_baseline, capsys):
    out = tmp_path / "run"
    metadata = str(out / "metadata.sqlite")
    # A crippled candidate (99% of its weights zeroed, barely fine-tuned) that passes on its own:
    # no accuracy floor, and nothing serving yet to compare with.
    args = ["run-local", "--output-dir", str(out), "--baseline-model", penguin_baseline, "--enable-cache"]
    args += ["--compare-with", "serving", "--slice-feature", "", "--min-metric", "0"]
    args += ["--target-sparsity", "0.99", "--min-sparsity", "0.98", "--epochs", "1", "--learning-rate", "1e-6"]
    out.mkdir()
    (out / "serving").write_text("a file where the versions go: the push dies, as if the run were killed there")
    assert cli.main([*args, "--run-id", "first"]) == cli.EXIT_FAILED
    assert [step.component for step in failed_steps(metadata, "first")] == ["AtomicPusher"]
    (blessing_dir,) = (out / "root" / "EvaluatorGate" / "blessing").iterdir()
    assert os.listdir(blessing_dir) == ["BLESSED"], "the first run's gate did bless the candidate"

    (out / "serving").unlink()
    shutil.copytree(os.path.join(penguin_baseline, "Format-Serving"), out / "serving" / "1")  # better, lands
    capsys.readouterr()
    assert cli.main([*args, "--run-id", "resumed"]) == cli.EXIT_NOT_PUSHED
    assert "Run resumed: NOT pushed" in capsys.readouterr().out

    states = _executions(metadata, "resumed")
    for name in ("PruneComponent", "RetrainComponent"):
        assert states[name] == metadata_store_pb2.Execution.CACHED, name
    assert states["EvaluatorGate"] == metadata_store_pb2.Execution.COMPLETE, "the gate judged again"
    result = run_result(metadata, "resumed")
    assert "sparse_categorical_accuracy drop vs serving <= max_absolute_drop" in result.gate_result["failed_checks"]
    assert not result.pushed and os.listdir(out / "serving") == ["1"]


def _run_local(out, baseline, run_id, *extra):
    command = [
        sys.executable,
        "-m",
        "tfx_model_pruning_pipelines.cli",
        "run-local",
        "--output-dir",
        str(out),
        "--run-id",
        run_id,
    ]
    command += ["--baseline-model", baseline, "--compare-with", "parent", "--epochs", "3", *extra]
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}  # as on a user's shell
    env["TMPDIR"] = str(out.parent / "system-temp")
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_concurrent_runs_into_one_directory_each_report_their_own_verdict(tmp_path, penguin_baseline):
    out = tmp_path / "shared"
    (tmp_path / "system-temp").mkdir()
    refused = _run_local(out, penguin_baseline, "refused", "--target-sparsity", "0.5", "--min-sparsity", "0.99")
    blessed = _run_local(out, penguin_baseline, "blessed", "--target-sparsity", "0.5")
    refused_out, refused_err = refused.communicate(timeout=900)
    blessed_out, blessed_err = blessed.communicate(timeout=900)

    assert refused.returncode == cli.EXIT_NOT_PUSHED, refused_out[-2000:] + refused_err[-2000:]
    assert blessed.returncode == 0, blessed_out[-2000:] + blessed_err[-2000:]
    assert "Run refused: NOT pushed: 1 of 14 release checks failed" in refused_out
    assert "  FAIL  sparsity is 0.5, below the lower bound 0.99" in refused_out  # the reason, with its figures
    assert "BLESSED" not in refused_out.replace("NOT BLESSED", "")
    # The terminal shows one line per component and the verdict; the libraries' logs go to the run's log.
    for out_text, err_text in ((refused_out, refused_err), (blessed_out, blessed_err)):
        lines = (out_text + err_text).splitlines()
        assert len(lines) < 40, "\n".join(lines)
        steps = [line.split()[1] for line in lines if line.startswith("  done ")]
        assert sorted(steps) == sorted(
            ["ImportExampleGen", "baseline_importer", "PruneComponent", "RetrainComponent", "EvaluatorGate", "Pusher"]
        )
        assert err_text == ""
    # TFX's sdists of tfx and other scratch files went to each run's own temp folder, now deleted.
    assert os.listdir(tmp_path / "system-temp") == []
    log_files = sorted(os.listdir(out / "logs"))
    assert log_files == ["blessed.log", "refused.log"]
    assert "Component EvaluatorGate is running" in (out / "logs" / "refused.log").read_text()
    (version,) = os.listdir(out / "serving")
    assert f"Run blessed: BLESSED and pushed to {out / 'serving' / version}" in blessed_out
    assert run_result(str(out / "metadata.sqlite"), "blessed").pushed
    assert not run_result(str(out / "metadata.sqlite"), "refused").pushed
