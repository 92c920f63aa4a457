"""Submitting and scheduling the compiled pipeline on a Kubeflow Pipelines (v2) cluster.

Everything goes through the KFP SDK's ``kfp.Client`` (REST API ``/apis/v2beta1``). The pipeline
spec is uploaded once per content: its version is named after the spec's hash, so resubmitting
an unchanged spec reuses that version and a recompiled one adds a new version to the same
pipeline.

Example::

    spec = read_spec("build/kubeflow/penguin-pruning.yaml")
    client = connect(host="http://localhost:8080")
    run_id = submit_run(client, spec, experiment="pruning", run_name="manual",
                        parameters={"data_root": "gs://bucket/data/span-7"})
    schedule_id = schedule_run(client, spec, experiment="pruning", schedule_name="nightly", cron="0 0 2 * * *")
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import kfp
import yaml

# robfig/cron, which KFP's scheduler uses: seconds first, then the usual five fields.
_CRON_FIELDS = (
    ("seconds", 0, 59, ()),
    ("minutes", 0, 59, ()),
    ("hours", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")),
    ("day of week", 0, 6, ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")),
)
_CRON_DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_CRON_EVERY = re.compile(r"^@every (\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")
_CRON_TERM = re.compile(r"^(?P<range>\*|\?|[0-9A-Za-z]+(-[0-9A-Za-z]+)?)(/(?P<step>\d+))?$")


class CronError(ValueError):
    """A cron expression KFP's scheduler would reject or read differently than intended."""


def validate_cron(expression: str) -> str:
    """Returns ``expression`` stripped if it is a valid KFP (robfig/cron) schedule, else raises.

    KFP takes six fields, seconds first (``"0 0 2 * * *"`` is 02:00:00 daily), or a descriptor
    such as ``@daily`` or ``@every 6h``. A five-field crontab line is the common mistake: it would
    be refused by the API server, so it is refused here with the six-field spelling.
    """
    expression = " ".join(expression.split())
    if expression.startswith("@"):
        if expression in _CRON_DESCRIPTORS or _CRON_EVERY.match(expression):
            return expression
        raise CronError(f"unknown cron descriptor {expression!r}; use one of {_CRON_DESCRIPTORS} or '@every 6h'")
    fields = expression.split(" ")
    if len(fields) == 5:
        raise CronError(f"{expression!r} has 5 fields; KFP cron takes 6, seconds first: did you mean '0 {expression}'?")
    if len(fields) != 6:
        raise CronError(f"{expression!r} has {len(fields)} fields; KFP cron takes 6 (sec min hour dom month dow)")
    for text, (name, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        for term in text.split(","):
            _check_cron_term(term, name, low, high, names)
    return expression


def _check_cron_term(term: str, name: str, low: int, high: int, names: tuple[str, ...]) -> None:
    match = _CRON_TERM.match(term)
    if not match:
        raise CronError(f"cron {name} field: cannot read {term!r}")
    if match["step"] is not None and int(match["step"]) == 0:
        raise CronError(f"cron {name} field: step 0 in {term!r}")
    span = match["range"]
    if span == "?" and name not in ("day of month", "day of week"):
        raise CronError(f"cron {name} field: '?' is only allowed for day of month or day of week")
    if span in ("*", "?"):
        return
    numbers = []
    for value in span.split("-"):
        number = names.index(value.upper()) + low if value.upper() in names else None
        if number is None:
            if not value.isdigit():
                raise CronError(
                    f"cron {name} field: {value!r} is not a number" + (f" or one of {names}" if names else "")
                )
            number = int(value)
        if not low <= number <= high:
            raise CronError(f"cron {name} field: {number} is outside {low}-{high}")
        numbers.append(number)
    if len(numbers) == 2 and numbers[0] > numbers[1]:
        # robfig/cron refuses a reversed range at schedule time; a wrap-around needs two terms.
        raise CronError(
            f"cron {name} field: range {span!r} runs backwards; write it low-high, or as two terms "
            f"'{numbers[0]}-{high},{low}-{numbers[1]}' to wrap around"
        )


@dataclass(frozen=True)
class PipelineVersion:
    pipeline_id: str
    version_id: str
    version_name: str
    uploaded: bool  # False when an identical spec was already there and is reused


def connect(
    host: Optional[str] = None,
    namespace: Optional[str] = None,
    existing_token: Optional[str] = None,
    iap_client_id: Optional[str] = None,
    cookies: Optional[str] = None,
) -> kfp.Client:
    """A ``kfp.Client``. Unset values fall back to the SDK's own environment variables.

    ``KF_PIPELINES_ENDPOINT`` (host), ``KF_PIPELINES_IAP_OAUTH2_CLIENT_ID`` (IAP) are read by
    the SDK itself; a bearer token is sent with ``existing_token``.
    """
    kwargs: dict[str, Any] = {
        "host": host,
        "existing_token": existing_token,
        "client_id": iap_client_id,
        "cookies": cookies,
    }
    if namespace:
        kwargs["namespace"] = namespace
    with warnings.catch_warnings():
        # Said on every construction; docs/kubeflow.md states the KFP >= 2.0 requirement once.
        warnings.filterwarnings(
            "ignore", message="This client only works with Kubeflow Pipeline", category=FutureWarning
        )
        return kfp.Client(**kwargs)


@dataclass(frozen=True)
class PipelineSpecFile:
    """A compiled pipeline spec read from disk: what gets uploaded, and what it accepts."""

    path: str
    pipeline_name: str
    content: bytes
    declared_parameters: frozenset[str]

    def check_parameters(self, parameters: Optional[Mapping[str, Any]]) -> None:
        unknown = sorted(set(parameters or {}) - self.declared_parameters)
        if unknown:
            raise ValueError(
                f"{self.path} declares no parameter {unknown}; it takes {sorted(self.declared_parameters)}"
            )


def read_spec(spec_path: str) -> PipelineSpecFile:
    """Reads the bare pipeline-spec YAML that ``compile`` writes; refuses the PipelineJob wrapper."""
    with open(spec_path, "rb") as f:
        content = f.read()
    try:
        # The pipeline spec, then (with per-step Kubernetes settings) the platform spec.
        spec = next(iter(yaml.safe_load_all(content)), None)
    except yaml.YAMLError as err:
        raise ValueError(f"{spec_path} is not valid YAML: {err}") from None
    if not isinstance(spec, dict) or "root" not in spec or "pipelineInfo" not in spec:
        hint = (
            " (that is the PipelineJob wrapper; pass the .yaml that compile writes)"
            if "pipelineSpec" in (spec or {})
            else ""
        )
        raise ValueError(f"{spec_path} is not a KFP pipeline spec{hint}")
    declared = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    return PipelineSpecFile(spec_path, spec["pipelineInfo"]["name"], content, frozenset(declared))


def _equals_filter(key: str, value: str) -> str:
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": key, "stringValue": value}]})


def ensure_pipeline_version(client: kfp.Client, spec: PipelineSpecFile) -> PipelineVersion:
    """Uploads the spec unless a version with the same content exists; returns the version to run."""
    pipeline_name = spec.pipeline_name
    version_name = f"{pipeline_name}-{hashlib.sha256(spec.content).hexdigest()[:12]}"
    pipeline_id = client.get_pipeline_id(pipeline_name)
    if pipeline_id is None:
        pipeline = client.upload_pipeline(spec.path, pipeline_name=pipeline_name)
        pipeline_id = pipeline.pipeline_id
    else:
        existing = client.list_pipeline_versions(
            pipeline_id, page_size=1, filter=_equals_filter("display_name", version_name)
        ).pipeline_versions
        if existing:
            return PipelineVersion(pipeline_id, existing[0].pipeline_version_id, version_name, uploaded=False)
    version = client.upload_pipeline_version(spec.path, version_name, pipeline_id=pipeline_id)
    return PipelineVersion(pipeline_id, version.pipeline_version_id, version_name, uploaded=True)


def submit_run(
    client: kfp.Client,
    spec: PipelineSpecFile,
    *,
    experiment: str,
    run_name: str,
    parameters: Optional[Mapping[str, Any]] = None,
    namespace: Optional[str] = None,
    enable_caching: Optional[bool] = None,
    service_account: Optional[str] = None,
) -> str:
    """Creates one run of the (uploaded or reused) pipeline version in ``experiment``; returns its id."""
    spec.check_parameters(parameters)  # before any request
    experiment_id = client.create_experiment(experiment, namespace=namespace).experiment_id
    version = ensure_pipeline_version(client, spec)
    run = client.run_pipeline(
        experiment_id=experiment_id,
        job_name=run_name,
        params=dict(parameters or {}),
        pipeline_id=version.pipeline_id,
        version_id=version.version_id,
        enable_caching=enable_caching,
        service_account=service_account,
    )
    return run.run_id


def schedule_run(
    client: kfp.Client,
    spec: PipelineSpecFile,
    *,
    experiment: str,
    schedule_name: str,
    cron: str,
    parameters: Optional[Mapping[str, Any]] = None,
    namespace: Optional[str] = None,
    service_account: Optional[str] = None,
) -> str:
    """Creates a recurring run; returns its id; its pods run as ``service_account`` when given.

    One run at a time (``max_concurrency=1``: two retrainings pushing at once would race for the
    gate's serving baseline) and no catch-up (a paused schedule resumes with one run, not a
    backfill of every missed slot). A schedule with the same name that is still enabled in the
    experiment is an error, so re-running a deploy script does not double the retraining.
    """
    cron = validate_cron(cron)
    spec.check_parameters(parameters)  # before any request
    experiment_id = client.create_experiment(experiment, namespace=namespace).experiment_id
    for existing in list_schedules(client, experiment=experiment, namespace=namespace):
        if existing["name"] == schedule_name and existing["enabled"]:
            raise ValueError(
                f"schedule {schedule_name!r} already exists and is enabled (id {existing['id']}); disable it first"
            )
    version = ensure_pipeline_version(client, spec)
    recurring = client.create_recurring_run(
        experiment_id=experiment_id,
        job_name=schedule_name,
        cron_expression=cron,
        max_concurrency=1,
        no_catchup=True,
        params=dict(parameters or {}),
        pipeline_id=version.pipeline_id,
        version_id=version.version_id,
        enabled=True,
        service_account=service_account,
    )
    return recurring.recurring_run_id


def list_schedules(
    client: kfp.Client, *, experiment: Optional[str] = None, namespace: Optional[str] = None
) -> list[dict[str, Any]]:
    """Every recurring run (of ``experiment`` if given), each as id, name, cron, enabled, version."""
    experiment_id = None
    if experiment is not None:
        experiment_id = client.get_experiment(experiment_name=experiment, namespace=namespace).experiment_id
    schedules, page_token = [], ""
    while True:
        response = client.list_recurring_runs(
            page_token=page_token, page_size=100, experiment_id=experiment_id, namespace=namespace
        )
        for recurring in response.recurring_runs or []:
            cron = (
                recurring.trigger.cron_schedule.cron if recurring.trigger and recurring.trigger.cron_schedule else None
            )
            reference = recurring.pipeline_version_reference
            schedules.append(
                {
                    "id": recurring.recurring_run_id,
                    "name": recurring.display_name,
                    "cron": cron,
                    "enabled": recurring.mode == "ENABLE",
                    "pipeline_version_id": reference.pipeline_version_id if reference else None,
                }
            )
        page_token = response.next_page_token
        if not page_token:
            return schedules


def disable_schedule(client: kfp.Client, schedule_id: str) -> None:
    """Stops a recurring run from starting new runs (runs already started go on)."""
    client.disable_recurring_run(schedule_id)
