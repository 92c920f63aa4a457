"""Per-step pod settings for Kubeflow Pipelines: resources, accelerators, scheduling, environment,
retries and caching, written into the compiled KFP v2 spec where the KFP backend reads them.

``kubeflow.steps.<component id>`` in the pipeline file (``RetrainComponent``, ``PruneComponent``,
``EvaluatorGate``, ``Trainer``, ``Pusher``...) takes a ``StepSettings``. What the pipeline spec
carries (``deploymentSpec.executors.<executor>.container``: ``resources`` and ``env``;
``root.dag.tasks.<task>``: ``retryPolicy`` and ``cachingOptions``) is set there; what only
Kubernetes knows (node selector, tolerations, environment from secrets) goes into the platform
spec, the second YAML document, in the ``kubernetes`` executor config that kfp-kubernetes writes
and the KFP backend's driver applies to the pod.

Example (the pipeline file)::

    kubeflow:
      service_account: pipeline-runner
      steps:
        RetrainComponent:
          cpu_request: "4"
          memory_limit: 16Gi
          accelerator: {type: nvidia.com/gpu, count: 1}
          node_selector: {cloud.google.com/gke-accelerator: nvidia-tesla-t4}
          tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
          env_from_secrets: [{secret: gcs-writer, key: key.json, env: GOOGLE_APPLICATION_CREDENTIALS_JSON}]
          retries: 2
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any, Literal, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tfx_model_pruning.engine.keras_names import closest_name

# A Kubernetes resource quantity: "2", "500m", "1.5", "4Gi", "512Mi", "1e9", "2G".
_QUANTITY = re.compile(r"^(?P<number>[0-9]+(\.[0-9]+)?([eE][0-9]+)?)(?P<suffix>m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_SUFFIX = {
    None: Decimal(1), "m": Decimal("0.001"), "k": Decimal(10) ** 3, "M": Decimal(10) ** 6, "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12, "P": Decimal(10) ** 15, "E": Decimal(10) ** 18, "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20, "Gi": Decimal(2) ** 30, "Ti": Decimal(2) ** 40, "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}  # fmt: skip


def quantity(text: str) -> Decimal:
    """The value of a Kubernetes quantity (cores for CPU, bytes for memory)."""
    match = _QUANTITY.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a Kubernetes quantity such as '500m', '2', '512Mi' or '4Gi'")
    return Decimal(match["number"]) * _SUFFIX[match["suffix"]]


class StepSettingsError(ValueError):
    """``kubeflow.steps`` does not fit the compiled pipeline."""


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Accelerator(_Settings):
    type: str = Field(min_length=1, description="Kubernetes resource name of the device, e.g. nvidia.com/gpu.")
    count: int = Field(default=1, ge=1, description="Devices for the step's pod.")


class Toleration(_Settings):
    key: Optional[str] = Field(default=None, description="Taint key tolerated; empty with Exists: every taint.")
    operator: Literal["Equal", "Exists"] = Field(default="Equal", description="Equal: key and value match.")
    value: Optional[str] = Field(default=None, description="Taint value (operator Equal).")
    effect: Optional[Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]] = Field(
        default=None, description="Taint effect tolerated; empty: every effect."
    )
    toleration_seconds: Optional[int] = Field(
        default=None, ge=0, description="How long a NoExecute taint is tolerated before eviction."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Toleration:
        if self.operator == "Exists" and self.value is not None:
            raise ValueError("a toleration with operator Exists takes no value")
        if self.operator == "Equal" and self.key is None:
            raise ValueError("a toleration with operator Equal needs a key")
        return self


class SecretEnv(_Settings):
    secret: str = Field(min_length=1, description="Kubernetes Secret in the run's namespace.")
    key: str = Field(min_length=1, description="Key in the Secret.")
    env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Environment variable it becomes.")


class StepSettings(_Settings):
    """The pod settings of one step of the pipeline on Kubeflow."""

    cpu_request: Optional[str] = Field(default=None, description="CPU the scheduler reserves, e.g. '2' or '500m'.")
    cpu_limit: Optional[str] = Field(default=None, description="Most CPU the step may use.")
    memory_request: Optional[str] = Field(default=None, description="Memory reserved, e.g. '4Gi'.")
    memory_limit: Optional[str] = Field(default=None, description="Most memory; the pod is killed above it.")
    accelerator: Optional[Accelerator] = Field(default=None, description="Devices such as GPUs for the step.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels the pod must run on.")
    tolerations: list[Toleration] = Field(default_factory=list, description="Node taints the pod tolerates.")
    env: dict[str, str] = Field(default_factory=dict, description="Environment variables of the step's container.")
    env_from_secrets: list[SecretEnv] = Field(
        default_factory=list, description="Environment variables read from Kubernetes Secrets (credentials)."
    )
    retries: Optional[int] = Field(default=None, ge=0, le=100, description="Times a failed step is run again.")
    caching: Optional[bool] = Field(
        default=None, description="Reuse the step's cached outputs (default: as the run says)."
    )

    @field_validator("cpu_request", "cpu_limit", "memory_request", "memory_limit")
    @classmethod
    def _quantity(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            quantity(value)  # a malformed quantity fails here, with the forms that work
        return value

    @field_validator("env")
    @classmethod
    def _names(cls, env: dict[str, str]) -> dict[str, str]:
        bad = [name for name in env if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name)]
        if bad:
            raise ValueError(f"not environment variable names: {bad}")
        return env

    @model_validator(mode="after")
    def _request_within_limit(self) -> StepSettings:
        for kind in ("cpu", "memory"):
            request, limit = getattr(self, f"{kind}_request"), getattr(self, f"{kind}_limit")
            if request is not None and limit is not None and quantity(request) > quantity(limit):
                raise ValueError(f"{kind}_request {request} is above {kind}_limit {limit}")
        clash = sorted(set(self.env) & {secret.env for secret in self.env_from_secrets})
        if clash:
            raise ValueError(f"{clash} set both in env and in env_from_secrets")
        return self


def _resources(settings: StepSettings, spec_fields: frozenset[str]) -> dict[str, Any]:
    """The container's ``resources``: cores and decimal gigabytes as numbers, as every KFP 2 backend
    reads them, and the quantities as written where the installed pipeline spec has those fields."""
    resources: dict[str, Any] = {}
    for kind, unit in (("cpu", Decimal(1)), ("memory", Decimal(10) ** 9)):
        for bound, camel in (("request", "Request"), ("limit", "Limit")):
            value = getattr(settings, f"{kind}_{bound}")
            if value is None:
                continue
            resources[f"{kind}{camel}"] = float(quantity(value) / unit)
            if f"resource_{kind}_{bound}" in spec_fields:
                resources[f"resource{kind.capitalize()}{camel}"] = value
    if settings.accelerator is not None:
        accelerator = {"type": settings.accelerator.type, "count": str(settings.accelerator.count)}
        if "resource_type" in spec_fields:
            accelerator.update(resourceType=settings.accelerator.type, resourceCount=str(settings.accelerator.count))
        resources["accelerator"] = accelerator
    return resources


def _kubernetes(settings: StepSettings) -> dict[str, Any]:
    """The kfp-kubernetes executor config: what the KFP driver applies to the step's pod."""
    config: dict[str, Any] = {}
    if settings.node_selector:
        config["nodeSelector"] = {"labels": dict(settings.node_selector)}
    if settings.tolerations:
        config["tolerations"] = [
            {
                key: value
                for key, value in {
                    "key": t.key, "operator": t.operator, "value": t.value, "effect": t.effect,
                    "tolerationSeconds": t.toleration_seconds,
                }.items()
                if value is not None
            }
            for t in settings.tolerations
        ]  # fmt: skip
    if settings.env_from_secrets:
        by_secret: dict[str, list] = {}
        for secret in settings.env_from_secrets:
            by_secret.setdefault(secret.secret, []).append({"secretKey": secret.key, "envVar": secret.env})
        config["secretAsEnv"] = [{"secretName": name, "keyToEnv": keys} for name, keys in by_secret.items()]
    return config


def apply_step_settings(
    spec: dict[str, Any], steps: Mapping[str, StepSettings], spec_fields: frozenset[str] = frozenset()
) -> Optional[dict[str, Any]]:
    """Writes ``steps`` into the pipeline spec dict; returns the platform spec (None when empty).

    Raises:
      StepSettingsError: a step the pipeline does not have (the closest named), or caching asked of a
        step whose verdict depends on the model serving at run time.
    """
    tasks = spec["root"]["dag"]["tasks"]
    unknown = [name for name in steps if name not in tasks]
    if unknown:
        hints = [f"{n}" + (f" (did you mean {c}?)" if (c := closest_name(n, list(tasks))) else "") for n in unknown]
        raise StepSettingsError(f"kubeflow.steps: no step {', '.join(hints)}; the steps are {', '.join(sorted(tasks))}")
    platform: dict[str, Any] = {}
    for name, settings in steps.items():
        task = tasks[name]
        executor_label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
        container = spec["deploymentSpec"]["executors"][executor_label]["container"]
        resources = _resources(settings, spec_fields)
        if resources:
            container["resources"] = resources
        if settings.env:
            container["env"] = [*container.get("env", []), *({"name": k, "value": v} for k, v in settings.env.items())]
        if settings.retries is not None:
            task["retryPolicy"] = {"maxRetryCount": settings.retries}
        if settings.caching is not None:
            if settings.caching and task.get("cachingOptions") == {"enableCache": False}:
                raise StepSettingsError(
                    f"kubeflow.steps.{name}.caching: this step compares with the model serving at run time, "
                    "which KFP's cache key does not see; its verdict is never cached"
                )
            task["cachingOptions"] = {"enableCache": settings.caching}
        kubernetes = _kubernetes(settings)
        if kubernetes:
            platform[executor_label] = kubernetes
    if not platform:
        return None
    return {"platforms": {"kubernetes": {"deploymentSpec": {"executors": platform}}}}
