"""Reading a finished local run back from ML Metadata: what was pruned, judged and pushed."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Optional

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from tfx_model_pruning import artifact_files as files
from tfx_model_pruning.artifacts import PruningReport
from tfx_model_pruning.engine.results import PruningResult


@dataclass
class RunResult:
    pruning_report: PruningResult
    gate_result: dict[str, Any]
    gate_summary: str
    pruning_report_path: str
    gate_summary_path: str
    gate_html_path: str
    blessed: bool
    pushed: bool
    pushed_destination: Optional[str]


@dataclass
class FailedStep:
    component: str
    message: str


def open_store(metadata_path: str) -> metadata_store.MetadataStore:
    """The run's ML Metadata store, read-only."""
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return metadata_store.MetadataStore(config)


def _run_context(store: metadata_store.MetadataStore, run_id: str) -> metadata_store_pb2.Context:
    # Runs sharing one output directory share the store: read this run's context, never "the latest".
    context = store.get_context_by_type_and_name("pipeline_run", run_id)
    if context is None:
        raise LookupError(f"no pipeline run {run_id!r} recorded")
    return context


def _run_artifacts(metadata_path: str, run_id: str) -> dict[str, list[metadata_store_pb2.Artifact]]:
    store = open_store(metadata_path)
    context = _run_context(store, run_id)
    type_names = {artifact_type.id: artifact_type.name for artifact_type in store.get_artifact_types()}
    by_type: dict[str, list[metadata_store_pb2.Artifact]] = {}
    for artifact in store.get_artifacts_by_context(context.id):
        by_type.setdefault(type_names[artifact.type_id], []).append(artifact)
    return by_type


def failed_steps(metadata_path: str, run_id: str) -> list[FailedStep]:
    """The components of run ``run_id`` whose execution failed, with the reason they recorded."""
    store = open_store(metadata_path)
    context = _run_context(store, run_id)
    type_names = {execution_type.id: execution_type.name for execution_type in store.get_execution_types()}
    failed = []
    for execution in store.get_executions_by_context(context.id):
        if execution.last_known_state != metadata_store_pb2.Execution.FAILED:
            continue
        recorded = execution.custom_properties.get("__execution_result__")
        message = json.loads(recorded.string_value).get("resultMessage", "") if recorded else ""
        component = type_names[execution.type_id].rsplit(".", 1)[-1]
        failed.append(FailedStep(component=component, message=message))
    return failed


def _only(by_type: dict, type_name: str, *legacy_names: str) -> metadata_store_pb2.Artifact:
    found = [artifact for name in dict.fromkeys((type_name, *legacy_names)) for artifact in by_type.get(name, [])]
    if len(found) != 1:
        raise LookupError(f"expected one {type_name} artifact in the run, found {len(found)}")
    return found[0]


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def run_result(metadata_path: str, run_id: str) -> RunResult:
    """What run ``run_id`` pruned, judged and pushed."""
    by_type = _run_artifacts(metadata_path, run_id)
    report = _only(by_type, PruningReport.TYPE_NAME, *PruningReport.LEGACY_TYPE_NAMES)
    evaluation = _only(by_type, "ModelEvaluation")
    blessing = _only(by_type, "ModelBlessing")
    pushed = _only(by_type, "PushedModel")
    props = pushed.custom_properties
    was_pushed = "pushed" in props and props["pushed"].int_value == 1
    return RunResult(
        pruning_report=PruningResult.from_json(json.loads(_read(os.path.join(report.uri, files.PRUNING_REPORT_JSON)))),
        gate_result=json.loads(_read(os.path.join(evaluation.uri, files.GATE_RESULT_JSON))),
        gate_summary=_read(os.path.join(evaluation.uri, files.GATE_SUMMARY_MARKDOWN)),
        pruning_report_path=os.path.join(report.uri, files.PRUNING_SUMMARY_MARKDOWN),
        gate_summary_path=os.path.join(evaluation.uri, files.GATE_SUMMARY_MARKDOWN),
        gate_html_path=os.path.join(evaluation.uri, files.GATE_REPORT_HTML),
        blessed=blessing.custom_properties["blessed"].int_value == 1,
        pushed=was_pushed,
        pushed_destination=props["pushed_destination"].string_value if was_pushed else None,
    )
