"""A local HTTP server answering the KFP v2beta1 REST endpoints the project uses.

It keeps pipelines, versions, experiments, runs and recurring runs in memory, applies the
``display_name`` EQUALS filters the SDK sends, and records every request, so tests assert what
went over the wire rather than which Python methods were called.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional
from urllib.parse import parse_qs, urlparse

PREFIX = "/apis/v2beta1"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class FakeKfpApi:
    requests: list[Request] = field(default_factory=list)
    pipelines: dict[str, dict] = field(default_factory=dict)
    versions: dict[str, dict] = field(default_factory=dict)
    experiments: dict[str, dict] = field(default_factory=dict)
    runs: dict[str, dict] = field(default_factory=dict)
    recurring_runs: dict[str, dict] = field(default_factory=dict)
    host: str = ""
    errors: list[str] = field(default_factory=list)

    def calls(self, method: str, path_suffix: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and r.path == PREFIX + path_suffix]

    def handle(self, request: Request) -> tuple[int, dict]:
        self.requests.append(request)
        route = request.path[len(PREFIX) :] if request.path.startswith(PREFIX) else None
        method = request.method
        if route == "/healthz" and method == "GET":
            return 200, {"multi_user": False}
        if route == "/pipelines" and method == "GET":
            return 200, {"pipelines": _filtered(self.pipelines.values(), request.query)}
        if route == "/pipelines/upload" and method == "POST":
            pipeline = {"pipeline_id": _new_id(), "display_name": request.query["name"]}
            self.pipelines[pipeline["pipeline_id"]] = pipeline
            self._add_version(pipeline["pipeline_id"], request.query["name"], request.body)
            return 200, pipeline
        if route == "/pipelines/upload_version" and method == "POST":
            pipeline_id = request.query["pipelineid"]
            if pipeline_id not in self.pipelines:
                return 404, {"error": "pipeline not found"}
            return 200, self._add_version(pipeline_id, request.query["name"], request.body)
        if route and route.startswith("/pipelines/") and route.endswith("/versions") and method == "GET":
            pipeline_id = route.split("/")[2]
            versions = [v for v in self.versions.values() if v["pipeline_id"] == pipeline_id]
            return 200, {"pipeline_versions": _filtered(versions, request.query)}
        if route == "/experiments" and method == "GET":
            return 200, {"experiments": _filtered(self.experiments.values(), request.query)}
        if route == "/experiments" and method == "POST":
            experiment = {**request.json(), "experiment_id": _new_id()}
            self.experiments[experiment["experiment_id"]] = experiment
            return 200, experiment
        if route == "/runs" and method == "POST":
            run = {**request.json(), "run_id": _new_id(), "state": "PENDING"}
            self.runs[run["run_id"]] = run
            return 200, run
        if route == "/recurringruns" and method == "POST":
            recurring = {**request.json(), "recurring_run_id": _new_id()}
            self.recurring_runs[recurring["recurring_run_id"]] = recurring
            return 200, recurring
        if route == "/recurringruns" and method == "GET":
            found = list(self.recurring_runs.values())
            if "experiment_id" in request.query:
                found = [r for r in found if r.get("experiment_id") == request.query["experiment_id"]]
            # The v2beta1 proto names this field recurringRuns, and the server emits it so.
            return 200, {"recurringRuns": found, "total_size": len(found)}
        if route and route.startswith("/recurringruns/") and route.endswith(":disable") and method == "POST":
            recurring_id = route[len("/recurringruns/") : -len(":disable")]
            if recurring_id not in self.recurring_runs:
                return 404, {"error": "recurring run not found"}
            self.recurring_runs[recurring_id]["mode"] = "DISABLE"
            return 200, {}
        return 404, {"error": f"no route {method} {request.path}"}

    def _add_version(self, pipeline_id: str, name: str, body: bytes) -> dict:
        version = {
            "pipeline_id": pipeline_id,
            "pipeline_version_id": _new_id(),
            "display_name": name,
            "uploaded_bytes": len(body),
        }
        self.versions[version["pipeline_version_id"]] = version
        return version


def _new_id() -> str:
    return str(uuid.uuid4())


def _filtered(items, query: dict[str, str]) -> list[dict]:
    items = list(items)
    if "filter" not in query:
        return items
    for predicate in json.loads(query["filter"])["predicates"]:
        # The SDK sends the enum's number, our code its name; the API server reads both.
        assert predicate["operation"] in ("EQUALS", 1), predicate
        items = [item for item in items if item.get(predicate["key"]) == predicate["stringValue"]]
    return items


def start(api: Optional[FakeKfpApi] = None) -> tuple[FakeKfpApi, ThreadingHTTPServer]:
    api = api or FakeKfpApi()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            url = urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            request = Request(
                method=self.command,
                path=url.path,
                query={key: values[0] for key, values in parse_qs(url.query).items()},
                body=self.rfile.read(length),
                headers={key.lower(): value for key, value in self.headers.items()},
            )
            try:
                status, payload = api.handle(request)
            except Exception as err:  # a broken assumption must fail the test, not hang the client
                api.errors.append(repr(err))
                status, payload = 500, {"error": repr(err)}
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _serve

        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # shutdown() waits up to one poll interval; the default half second, per test, adds up.
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    api.host = f"http://127.0.0.1:{server.server_address[1]}"
    return api, server
