"""A run killed mid-component (a pod eviction) and re-run with caching.

The re-run must reuse what finished, redo what did not, and nothing the killed component
half-wrote may look finished: not to ML Metadata (its output never becomes LIVE, so neither the
cache nor a downstream component can pick it up), and not in the serving directory.
"""

import os
import signal
import subprocess
import sys
import time

import pytest
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from tfx_model_pruning.engine import load_model
from tfx_model_pruning_pipelines.results import run_result

pytestmark = pytest.mark.integration

UPSTREAM = ("ImportExampleGen", "Trainer", "PruneComponent")


def _command(out):
    # Enough fine-tuning epochs that the kill lands while RetrainComponent is running.
    args = ["run-local", "--output-dir", str(out), "--train-steps", "100", "--epochs", "150", "--enable-cache"]
    return [sys.executable, "-m", "tfx_model_pruning_pipelines.cli", *args]


def _store(out):
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = str(out / "metadata.sqlite")
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return metadata_store.MetadataStore(config)


def _executions_by_component(store, run_context):
    types = {t.id: t.name.rsplit(".", 1)[-1] for t in store.get_execution_types()}
    found = {}
    for execution in store.get_executions_by_context(run_context.id):
        name = types[execution.type_id]
        found[{"AtomicPusher": "Pusher"}.get(name, name)] = execution
    return found


def _runs(store):
    return sorted(store.get_contexts_by_type("pipeline_run"), key=lambda c: (c.create_time_since_epoch, c.id))


def test_killed_run_resumes_from_cache_without_a_finished_looking_partial(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    retrain_outputs = out / "root" / "RetrainComponent" / "model"
    process = subprocess.Popen(
        _command(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while not (retrain_outputs.exists() and any(retrain_outputs.iterdir())):
        assert process.poll() is None, "the run ended before RetrainComponent started"
        assert time.monotonic() < deadline, "RetrainComponent never started"
        time.sleep(0.05)
    time.sleep(2)  # into the fine-tuning epochs
    assert process.poll() is None, "the run finished before it could be killed; raise --epochs"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()

    store = _store(out)
    (killed_run,) = _runs(store)
    killed = _executions_by_component(store, killed_run)
    assert all(killed[name].last_known_state == metadata_store_pb2.Execution.COMPLETE for name in UPSTREAM)
    assert killed["RetrainComponent"].last_known_state not in (
        metadata_store_pb2.Execution.COMPLETE,
        metadata_store_pb2.Execution.CACHED,
    )
    assert "EvaluatorGate" not in killed and "Pusher" not in killed
    # What the killed executor left on disk is known to ML Metadata, if at all, only as not LIVE.
    (half_written_dir,) = retrain_outputs.iterdir()
    half_written = [str(half_written_dir), str(half_written_dir / "Format-Serving")]
    for uri in half_written:
        for artifact in store.get_artifacts_by_uri(uri):
            assert artifact.state != metadata_store_pb2.Artifact.LIVE, "a killed component's output looks finished"
    assert not (out / "serving").exists() or os.listdir(out / "serving") == []
    del store

    resumed = subprocess.run(_command(out), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    store = _store(out)
    first, second = _runs(store)
    assert first.id == killed_run.id
    rerun = _executions_by_component(store, second)
    for name in UPSTREAM:
        assert rerun[name].last_known_state == metadata_store_pb2.Execution.CACHED, name
    for name in ("RetrainComponent", "EvaluatorGate", "Pusher"):
        assert rerun[name].last_known_state == metadata_store_pb2.Execution.COMPLETE, name

    gate_inputs = [
        event.artifact_id
        for event in store.get_events_by_execution_ids([rerun["EvaluatorGate"].id])
        if event.type == metadata_store_pb2.Event.INPUT
    ]
    judged = {artifact.uri for artifact in store.get_artifacts_by_id(gate_inputs)}
    assert not judged & set(half_written), "the gate judged the re-run's model, not the killed one's"
    assert any("RetrainComponent" in uri for uri in judged)

    result = run_result(str(out / "metadata.sqlite"), second.name)
    assert result.blessed and result.pushed
    versions = os.listdir(out / "serving")
    assert [os.path.join(out / "serving", v) for v in versions] == [result.pushed_destination]
    assert load_model(result.pushed_destination).signatures, "the pushed version is complete and loads"
