"""Reading a finished local run back from ML Metadata: what was pruned, judged and pushed."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Optional

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2


@dataclass
class RunResult:
    pruning_report: dict[str, Any]
    gate_result: dict[str, Any]
    gate_summary: str
    pruning_report_path: str
    gate_summary_path: str
    gate_html_path: str
    blessed: bool
    pushed: bool
    pushed_destination: Optional[str]


def _latest_run_artifacts(metadata_path: str) -> dict[str, list[metadata_store_pb2.Artifact]]:
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    store = metadata_store.MetadataStore(config)
    runs = store.get_contexts_by_type("pipeline_run")
    if not runs:
        raise LookupError(f"no pipeline run recorded in {metadata_path}")
    latest = max(runs, key=lambda context: (context.create_time_since_epoch, context.id))
    type_names = {artifact_type.id: artifact_type.name for artifact_type in store.get_artifact_types()}
    by_type: dict[str, list[metadata_store_pb2.Artifact]] = {}
    for artifact in store.get_artifacts_by_context(latest.id):
        by_type.setdefault(type_names[artifact.type_id], []).append(artifact)
    return by_type


def _only(by_type: dict, type_name: str) -> metadata_store_pb2.Artifact:
    found = by_type.get(type_name, [])
    if len(found) != 1:
        raise LookupError(f"expected one {type_name} artifact in the latest run, found {len(found)}")
    return found[0]


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def latest_run_result(metadata_path: str) -> RunResult:
    by_type = _latest_run_artifacts(metadata_path)
    report = _only(by_type, "components.PruningReport")
    evaluation = _only(by_type, "ModelEvaluation")
    blessing = _only(by_type, "ModelBlessing")
    pushed = _only(by_type, "PushedModel")
    props = pushed.custom_properties
    was_pushed = "pushed" in props and props["pushed"].int_value == 1
    return RunResult(
        pruning_report=json.loads(_read(os.path.join(report.uri, "report.json"))),
        gate_result=json.loads(_read(os.path.join(evaluation.uri, "gate_result.json"))),
        gate_summary=_read(os.path.join(evaluation.uri, "summary.md")),
        pruning_report_path=os.path.join(report.uri, "summary.md"),
        gate_summary_path=os.path.join(evaluation.uri, "summary.md"),
        gate_html_path=os.path.join(evaluation.uri, "report.html"),
        blessed=blessing.custom_properties["blessed"].int_value == 1,
        pushed=was_pushed,
        pushed_destination=props["pushed_destination"].string_value if was_pushed else None,
    )
