"""The gate's result, typed: what ``gate_result.json`` holds, and each check in words.

``GateDecision.to_json()`` is the file (``GateFailure.to_json()`` when the evaluation itself
failed) and ``read_gate_result`` reads it back. The report, summary and HTML read these types'
attributes, never the file's keys; a check is put in words from its fields (what kind of
comparison, which metric, slice and model, the bound and the measured value), never from its
name. No TFX here.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, Mapping, Optional, Union

from tfx_model_pruning import artifact_files as files
from tfx_model_pruning.engine.recovery import RecoveryRecord
from tfx_model_pruning.evaluator_gate.config import GateConfig

# What a check compares, which decides how it is put in words.
CheckKind = Literal["bound", "drop", "relative_drop", "ratio", "skill", "requirement", "graph"]
BOUND: CheckKind = "bound"  # the measured value against a fixed bound; ``comparator`` says which side passes
DROP: CheckKind = "drop"  # the candidate's fall from the reference model's value (``reference_value``)
RELATIVE_DROP: CheckKind = "relative_drop"  # that fall as a fraction of the reference model's value
RATIO: CheckKind = "ratio"  # the candidate's figure (latency, size) over the reference model's
SKILL: CheckKind = "skill"  # against what a model that learned nothing scores; ``detail`` says how
REQUIREMENT: CheckKind = "requirement"  # what other checks need is there: a value, a model to compare with, slices
GRAPH: CheckKind = "graph"  # op types the candidate's graphs hold that the reference model's do not
OVERALL = "Overall"  # the whole eval split, as slices are labelled
# What a ratio check's metric is, in words.
_RATIO_SUBJECTS = {
    "latency_ms_ratio": "serving latency",
    "saved_model_bytes_ratio": "SavedModel size on disk",
    "int8_latency_ms_ratio": "int8 interpreter latency",
}


@dataclass(frozen=True)
class CheckResult:
    """One check: what was measured, against which bound, on which slice, compared with what."""

    name: str
    passed: bool
    measured: Optional[float]
    bound: Optional[float]
    detail: str
    # 95% Wilson interval of a proportion (accuracy) over the examples it was measured on:
    # how much the measured value can be trusted, shown next to the bound.
    interval: Optional[tuple[float, float]] = None
    metric: Optional[str] = None  # the metric or quantity checked: "sparse_categorical_accuracy", "flops", ...
    slice: Optional[str] = None  # "species=2"; None for the whole eval split
    reference: Optional[str] = None  # the model a drop is measured against; None for an absolute bound
    comparator: Optional[str] = None  # ">=" or "<=" between measured and bound; None where nothing is compared
    kind: Optional[CheckKind] = None  # None only in a result written before checks recorded it
    bound_name: Optional[str] = None  # the setting the bound comes from: "lower_bound", "max_absolute_drop", ...
    reference_value: Optional[float] = None  # a drop's reference model's value of the metric

    @property
    def verdict(self) -> str:
        """PASS or FAIL; NOTE for a passed check that measured and compared nothing (a first release)."""
        if self.passed and self.measured is None and self.comparator is None:
            return "NOTE"
        return "PASS" if self.passed else "FAIL"

    def explain(self) -> str:
        """The check in words, measured value against bound: why it failed, or what it confirmed.

        Built from the check's fields alone. A check that compared no measured value with a bound
        (a missing value or model, a no-skill check) is its name and its detail.
        """
        if self.kind == GRAPH:
            return f"{self.name}: {self.detail}"
        subject = (self.metric or self.name) + (f" on {self.slice}" if self.slice else "")
        compared = self.measured is not None and self.bound is not None
        if self.kind in (DROP, RELATIVE_DROP) and compared:
            what = "relative drop" if self.kind == RELATIVE_DROP else "drop"
            side = "within" if self.passed else "more than"
            return f"{subject}: {what} vs {self.reference} of {self.measured:.4g}, {side} the allowed {self.bound:.4g}"
        if self.kind == RATIO and compared:
            side = "within" if self.passed else "above"
            subject = _RATIO_SUBJECTS.get(self.metric or "", subject)
            return (
                f"{subject} vs {self.reference}: {self.measured:.3g}x, {side} the allowed {self.bound:.3g}x "
                f"({self.detail})"
            )
        if not compared or self.comparator is None:
            return f"{self.name}: {self.detail}" if self.detail else self.name
        if self.comparator == ">=":
            relation = "below" if not self.passed else "at or above"
            bound = "lower bound"
        else:
            relation = "above" if not self.passed else "at or below"
            bound = "upper bound"
        interval = f" (95% interval {self.interval[0]:.3f}-{self.interval[1]:.3f})" if self.interval else ""
        return f"{subject} is {self.measured:.4g}{interval}, {relation} the {bound} {self.bound:.4g}"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CheckResult:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if values.get("interval") is not None:
            values["interval"] = tuple(values["interval"])
        return cls(**values)


def is_blessed(results: list[CheckResult]) -> bool:
    return bool(results) and all(result.passed for result in results)


def _known_and_other(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """``cls``'s fields from ``data``; what it does not name goes to ``other``, kept as written."""
    known = {f.name for f in fields(cls)} - {"other"}
    return {
        **{key: value for key, value in data.items() if key in known},
        "other": {key: value for key, value in data.items() if key not in known},
    }


@dataclass(frozen=True)
class ModelFigures:
    """One model's measured weight, size and cost figures (an entry of ``weights``); None: not measured."""

    params: Optional[int] = None
    kernel_params: Optional[int] = None
    kernel_zeros: Optional[int] = None
    kernel_sparsity: Optional[float] = None  # zeros among all kernels
    masked_params: Optional[int] = None
    masked_sparsity: Optional[float] = None  # zeros among the weights the masks name (the pruned layers)
    nonzero_params: Optional[int] = None
    weights_gzip_bytes: Optional[int] = None
    saved_model_bytes: Optional[int] = None
    gzip_bytes: Optional[int] = None  # the SavedModel directory, gzip-compressed
    # Counted with the weights; None there is a finding: a model saved without its Keras layers.
    flops: Optional[int] = None
    latency_ms: Optional[float] = None  # median serving latency (ms) at the gate's latency_batch_size
    # Serving latency by batch size ("1", "32"): ServingLatency.to_json(), median and quartiles in ms.
    latency: Optional[Mapping[str, Mapping[str, float]]] = None
    latency_ms_unmeasured: Optional[str] = None  # why the serving signature could not be timed
    other: Mapping[str, Any] = field(default_factory=dict)  # figures not named above, kept as written

    def measured(self, figure: str) -> bool:
        """Whether ``figure`` (a field name) was measured: FLOPs were whenever the weights were."""
        if figure == "flops":
            return self.flops is not None or self.params is not None
        return getattr(self, figure) is not None

    def to_json(self) -> dict[str, Any]:
        measured = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "other"}
        return {
            **{key: value for key, value in measured.items() if value is not None or key == "flops"},
            **self.other,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelFigures:
        return cls(**_known_and_other(cls, data))


@dataclass(frozen=True)
class LayerRow:
    """One prunable weight of a model: its shape, width (output units) and measured sparsity."""

    layer: str
    weight: str  # "kernel", "bias", ...
    shape: list[int]
    width: int
    sparsity: float
    other: Mapping[str, Any] = field(default_factory=dict)  # columns not named above, kept as written

    @property
    def label(self) -> str:
        """The layer's name for its kernel, ``layer/weight`` for its other weights."""
        return self.layer if self.weight == "kernel" else f"{self.layer}/{self.weight}"

    def to_json(self) -> dict[str, Any]:
        return {**{f.name: getattr(self, f.name) for f in fields(self) if f.name != "other"}, **self.other}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LayerRow:
        return cls(**_known_and_other(cls, data))


@dataclass(frozen=True)
class RunHeader:
    """Where the verdict was made: the first lines of the report."""

    pipeline: str = ""
    run: str = ""
    time: str = ""  # UTC
    push_destination: str = ""

    def to_json(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunHeader:
        return cls(**{f.name: data[f.name] for f in fields(cls) if data.get(f.name) is not None})


@dataclass(frozen=True)
class Int8Result:
    """The int8 TFLite model's conversion, figures and own checks (``int8_tflite``); not the blessing's.

    ``path`` is empty when the conversion failed (``error`` says why, ``ops`` names the ops without
    an int8 kernel). The file is pushed beside the SavedModel only when every check passed.
    """

    path: str
    checks: list[CheckResult]
    error: str = ""
    ops: list[str] = field(default_factory=list)
    size_bytes: Optional[int] = None
    gzip_bytes: Optional[int] = None
    latency: dict[str, dict[str, float]] = field(default_factory=dict)  # batch -> ServingLatency.to_json()
    metrics: dict[str, float] = field(default_factory=dict)  # threshold metric -> the int8 model's value
    float_metrics: dict[str, float] = field(default_factory=dict)  # the float candidate's, same examples
    examples: int = 0

    @property
    def passed(self) -> bool:
        return is_blessed(self.checks)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "checks": [check.as_dict() for check in self.checks], "passed": self.passed}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Int8Result:
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        values["checks"] = [CheckResult.from_dict(check) for check in data.get("checks", [])]
        return cls(**values)


@dataclass
class GateDecision:
    """The gate's verdict with everything it was decided on; ``to_json()`` is ``gate_result.json``."""

    checks: list[CheckResult]
    config: GateConfig
    models: dict[str, str]  # role ("candidate", "baseline", "serving") -> SavedModel path
    metrics: dict[str, dict[str, float]]  # role -> metric -> value on the whole eval split
    slices: dict[str, dict[str, dict[str, float]]]  # slice label -> role -> metric -> value
    unchecked_slices: dict[str, float]  # slices too small to check -> example count
    weights: dict[str, ModelFigures]  # role -> measured weight, size and cost figures
    layers: dict[str, list[LayerRow]]  # role -> per-weight table
    judged_serving_version: str = ""  # the serving version compared with, so a stale verdict is not pushed
    run: RunHeader = field(default_factory=RunHeader)  # pipeline, run id, time (UTC), push destination
    evaluated_by: str = ""  # which evaluator computed the metrics, and why TFMA's when it was
    # How the candidate was fine-tuned: its recovery record (fine_tuning.json), where it has one.
    fine_tuning: Optional[RecoveryRecord] = None
    # Why the candidate was not fine-tuned at all (retrain.epochs: 0); empty where it was.
    not_fine_tuned: str = ""
    # role -> what the graph scan found before the model was loaded (GraphScan.summary()).
    graph_scans: dict[str, dict[str, Any]] = field(default_factory=dict)
    int8: Optional[Int8Result] = None  # the int8 TFLite model's own result, when int8_tflite asked for one

    @property
    def blessed(self) -> bool:
        return is_blessed(self.checks)

    @property
    def failed_checks(self) -> list[str]:
        return [check.name for check in self.checks if not check.passed]

    def checks_failed_first(self) -> list[CheckResult]:
        """Every check, the failed ones first, each group in the order the gate ran them."""
        return sorted(self.checks, key=lambda check: check.passed)

    def metrics_on(self, slice_label: Optional[str] = None) -> dict[str, dict[str, float]]:
        """role -> metric -> value on one slice; the whole eval split for None or "Overall"."""
        return self.metrics if slice_label in (None, OVERALL) else self.slices.get(slice_label, {})

    def metric(self, role: str, metric: str, slice_label: Optional[str] = None) -> Optional[float]:
        """One model's value of one metric on a slice (None: the whole eval split), if measured."""
        return self.metrics_on(slice_label).get(role, {}).get(metric)

    def to_json(self) -> dict[str, Any]:
        return {
            "blessed": self.blessed,
            "config": self.config.model_dump(),
            "models": self.models,
            "metrics": self.metrics,
            "slices": self.slices,
            "unchecked_slices": self.unchecked_slices,
            "weights": {role: figures.to_json() for role, figures in self.weights.items()},
            "layers": {role: [row.to_json() for row in rows] for role, rows in self.layers.items()},
            "judged_serving_version": self.judged_serving_version,
            "run": self.run.to_json(),
            "evaluated_by": self.evaluated_by,
            "fine_tuning": self.fine_tuning.to_json() if self.fine_tuning is not None else None,
            "not_fine_tuned": self.not_fine_tuned,
            "graph_scans": self.graph_scans,
            "int8": self.int8.to_json() if self.int8 is not None else None,
            "checks": [check.as_dict() for check in self.checks],
            "failed_checks": self.failed_checks,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GateDecision:
        """The decision ``to_json`` wrote; ``blessed`` and ``failed_checks`` follow from its checks."""
        return cls(
            checks=[CheckResult.from_dict(check) for check in data["checks"]],
            config=GateConfig.model_validate(data["config"]),
            models=dict(data["models"]),
            metrics=dict(data["metrics"]),
            slices=dict(data.get("slices") or {}),
            unchecked_slices=dict(data.get("unchecked_slices") or {}),
            weights={role: ModelFigures.from_json(figures) for role, figures in data["weights"].items()},
            layers={
                role: [LayerRow.from_json(row) for row in rows] for role, rows in (data.get("layers") or {}).items()
            },
            judged_serving_version=data.get("judged_serving_version") or "",
            run=RunHeader.from_json(data.get("run") or {}),
            evaluated_by=data.get("evaluated_by") or "",
            fine_tuning=RecoveryRecord.from_json(data["fine_tuning"]) if data.get("fine_tuning") else None,
            not_fine_tuned=data.get("not_fine_tuned") or "",
            graph_scans=dict(data.get("graph_scans") or {}),
            int8=Int8Result.from_json(data["int8"]) if data.get("int8") else None,
        )


@dataclass(frozen=True)
class GateFailure:
    """``gate_result.json`` of an evaluation that failed: not blessed, and why; nothing else is known."""

    error: str

    @property
    def blessed(self) -> bool:
        return False

    def to_json(self) -> dict[str, Any]:
        return {"blessed": False, "error": self.error}


GateResult = Union[GateDecision, GateFailure]


def gate_result_from_json(data: Mapping[str, Any]) -> GateResult:
    """The typed form of ``gate_result.json``'s content: a decision, or the failure that prevented one."""
    if "checks" not in data:
        return GateFailure(error=str(data.get("error") or "unknown"))
    return GateDecision.from_json(data)


def read_gate_result(path: str) -> GateResult:
    """Reads ``gate_result.json``: its path, or the evaluation directory (artifact URI) holding it."""
    if os.path.isdir(path):
        path = os.path.join(path, files.GATE_RESULT_JSON)
    with open(path, encoding="utf-8") as f:
        return gate_result_from_json(json.load(f))
