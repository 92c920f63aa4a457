"""Release thresholds for EvaluatorGate, validated when the pipeline is built."""

from __future__ import annotations

import typing
from typing import Any, Iterator, Literal, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from tfx_model_pruning.engine.keras_names import metric_class

# Metrics whose values live in [0, 1]; a bound outside that range can never be met (or always is).
_UNIT_INTERVAL_MARKERS = ("accuracy", "auc", "precision", "recall")


class _StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MetricThreshold(_StrictModel):
    """Bounds on one metric, computed by TFMA from the Keras metric class named ``metric``.

    Example::

        MetricThreshold(metric="SparseCategoricalAccuracy", lower_bound=0.9, max_absolute_drop=0.01)
    """

    metric: str = Field(min_length=1, description="Keras metric class name, e.g. 'SparseCategoricalAccuracy'.")
    lower_bound: Optional[float] = Field(default=None, description="The candidate's value must be at least this.")
    upper_bound: Optional[float] = Field(default=None, description="The candidate's value must be at most this.")
    max_absolute_drop: Optional[float] = Field(
        default=None, ge=0.0, description="Largest allowed worsening versus the baseline, in metric units."
    )
    max_relative_drop: Optional[float] = Field(
        default=None, ge=0.0, le=1.0, description="Largest allowed worsening as a fraction of the baseline value."
    )
    higher_is_better: bool = Field(
        default=True, description="Direction of a drop: false for errors and losses, where a rise is the worsening."
    )

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        metric_class(metric)  # the rule the gate computes by; a typo gets the closest name
        return metric

    @model_validator(mode="after")
    def _sensible(self) -> MetricThreshold:
        bounds = (self.lower_bound, self.upper_bound, self.max_absolute_drop, self.max_relative_drop)
        if all(value is None for value in bounds):
            raise ValueError(f"threshold on {self.metric} sets no bound and no allowed drop")
        if self.lower_bound is not None and self.upper_bound is not None and self.lower_bound > self.upper_bound:
            raise ValueError(f"{self.metric}: lower_bound {self.lower_bound} is above upper_bound {self.upper_bound}")
        if any(marker in self.metric.lower() for marker in _UNIT_INTERVAL_MARKERS):
            for name in ("lower_bound", "upper_bound"):
                value = getattr(self, name)
                if value is not None and not 0.0 <= value <= 1.0:
                    raise ValueError(f"{self.metric} lies in [0, 1]; {name}={value} cannot make sense")
        return self


class Int8Export(_StrictModel):
    """An int8 TFLite model of the candidate, pushed beside its SavedModel when it passes its own checks.

    Post-training quantization calibrated on eval examples; the TFLite model is then evaluated
    with the interpreter on up to ``max_eval_examples`` eval examples and timed. Its checks do not
    decide the SavedModel's blessing: a conversion that fails, or an int8 model that is too
    inaccurate, is reported and left out of the push, and the SavedModel is pushed as before.

    Example::

        Int8Export(max_drop=0.01, max_latency_ratio=1.0)  # no less accurate than 0.01, no slower
    """

    representative_examples: int = Field(
        default=200, ge=1, description="Eval examples the int8 ranges are calibrated on."
    )
    max_eval_examples: int = Field(
        default=10_000, ge=1, description="Most eval examples the int8 model (and the float one) is scored on."
    )
    max_drop: float = Field(
        default=0.01,
        ge=0.0,
        description="Largest allowed worsening of each threshold's metric versus the float candidate, on the "
        "same examples; the thresholds' own lower and upper bounds apply too.",
    )
    max_latency_ratio: Optional[float] = Field(
        default=None,
        gt=0.0,
        description="Largest allowed interpreter latency at latency_batch_size over the float SavedModel's.",
    )
    keep_sparsity: bool = Field(
        default=False,
        description="Store sparse weights in TFLite's sparse format (XNNPACK's sparse kernels, where zeros "
        "form blocks): measure before relying on it.",
    )


class GateConfig(_StrictModel):
    """Everything EvaluatorGate checks before it blesses a model.

    Example::

        GateConfig(
            label_key="species",
            thresholds=[MetricThreshold(metric="SparseCategoricalAccuracy", lower_bound=0.9, max_absolute_drop=0.01)],
            min_sparsity=0.8,
            slice_feature="species",  # per class; any feature in the examples works
            slice_thresholds=[MetricThreshold(metric="SparseCategoricalAccuracy", lower_bound=0.85)],
            serving_model_dir="/serving/penguin",  # the model now serving is a baseline too
        )
    """

    label_key: str = Field(min_length=1, description="Label feature the metrics compare predictions with.")
    thresholds: list[MetricThreshold] = Field(
        min_length=1, description="Bounds on metrics over the whole eval split, one entry per metric."
    )
    min_sparsity: Optional[float] = Field(
        default=None, ge=0.0, lt=1.0, description="Least fraction of exact zeros in the pruned layers' weights."
    )
    max_saved_model_bytes: Optional[int] = Field(
        default=None, ge=1, description="Largest allowed size on disk of the candidate SavedModel (what is pushed)."
    )
    min_size_reduction: Optional[float] = Field(
        default=None, gt=0.0, lt=1.0, description="Least reduction of gzip-compressed weights versus the baseline."
    )
    max_latency_ms: Optional[float] = Field(
        default=None,
        gt=0.0,
        description="Largest allowed median CPU latency (ms) of the serving signature at latency_batch_size.",
    )
    max_latency_ratio: Optional[float] = Field(
        default=None,
        gt=0.0,
        description="Largest allowed median serving latency at latency_batch_size over each baseline's (the "
        "parent, the model now serving), the models timed in alternation: 0.7 means at least 30% faster.",
    )
    max_size_ratio: Optional[float] = Field(
        default=None,
        gt=0.0,
        description="Largest allowed SavedModel size on disk over each baseline's (gzip-compressed weights: "
        "min_size_reduction).",
    )
    latency_batch_size: int = Field(
        default=32,
        ge=1,
        description="Examples per serving call that latency is gated at: the batch size you serve. Latency is "
        "always measured, at batch 1 and at this size, on eval examples through signature_name.",
    )
    latency_repeats: int = Field(
        default=30,
        ge=5,
        description="Timed calls of each model at each batch size (after the same warm-up); the report gives "
        "the median and the interquartile range.",
    )
    max_params: Optional[int] = Field(
        default=None,
        ge=1,
        description="Largest allowed parameter count of the candidate (zeros count too: only structured pruning "
        "or layer removal lowers it).",
    )
    max_flops: Optional[int] = Field(
        default=None,
        ge=1,
        description="Largest allowed FLOPs of one example's forward pass (matrix layers; 2 per multiply-add).",
    )
    int8_tflite: Optional[Int8Export] = Field(
        default=None,
        description="Also convert the candidate to an int8 TFLite model, check it on its own, and push it as "
        "model_int8.tflite in the version directory when it passes.",
    )
    eval_split: str = Field(default="eval", description="Split of the examples the gate evaluates on.")
    signature_name: str = Field(
        default="serving_default", description="Signature the gate calls for predictions, the one serving uses."
    )
    preprocessing_function_names: list[str] = Field(
        default_factory=list,
        description="Signatures (e.g. 'transform_features') that turn raw examples into features, as for "
        "TFMA: the label and slice feature may be among their outputs (a label that tf.Transform computes).",
    )
    slice_feature: Optional[str] = Field(
        default=None, min_length=1, description="Feature whose every value is a slice checked on its own (TFMA)."
    )
    slice_thresholds: list[MetricThreshold] = Field(
        default_factory=list, description="Bounds each slice must meet; drops are against the same slice."
    )
    min_eval_examples: int = Field(
        default=100,
        ge=1,
        description="Refuse when the eval split has fewer examples: a metric measured on a handful means little.",
    )
    min_slice_examples: int = Field(
        default=1, ge=1, description="Slices with fewer eval examples are reported but not checked."
    )
    serving_model_dir: Optional[str] = Field(
        default=None,
        min_length=1,
        description="Push destination: its newest version, the model now serving, is a second baseline.",
    )
    require_serving_model: bool = Field(
        default=False, description="Refuse when no model is serving yet (otherwise the first release passes)."
    )
    eval_batch_size: Optional[int] = Field(
        default=None,
        ge=1,
        description="Examples per batch of the one-pass evaluation; by default as many as 16 MiB of "
        "serialized examples and 1e11 FLOPs of the largest model allow, at most 32768.",
    )
    require_skill: bool = Field(
        default=True,
        description="Refuse a candidate that does not beat a model that learned nothing: its accuracy's 95% "
        "interval above the most common label's share (overall; not clearly below it per slice), more than "
        "one class predicted; for regression, an error below always answering the mean label.",
    )
    evaluator: Literal["auto", "tfma"] = Field(
        default="auto",
        description="'auto': one pass over whole batches for every model and slice, with the Keras metrics TFMA "
        "uses, where the models and metrics allow it (else TFMA); 'tfma': always TFMA's per-example evaluator.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> GateConfig:
        problems = self.inconsistencies()
        if problems:
            raise ValueError("\n".join(problems))  # every one, a line each: one does not hide the next
        return self

    @model_validator(mode="wrap")
    @classmethod
    def _with_field_errors(cls, data: Any, handler: Any) -> GateConfig:
        """A bad field (a misspelt metric) fails the model before ``_consistent`` runs; check the rest anyway.

        The settings that did validate (and the thresholds that did) are checked for contradictions,
        so one typo does not hide a contradiction elsewhere in the section.
        """
        try:
            return handler(data)
        except ValidationError as err:
            errors = err.errors()
            if not isinstance(data, Mapping) or any(not e["loc"] for e in errors):
                raise  # not a mapping, or the contradictions were checked and are among the errors
            try:
                problems = cls._partial(data, {e["loc"][0] for e in errors}).inconsistencies()
            except Exception:  # too broken to check further: the field errors say enough
                problems = []
            if not problems:
                raise
            details = [
                InitErrorDetails(
                    type=PydanticCustomError(e["type"], e["msg"]) if "error" in e.get("ctx", {}) else e["type"],
                    loc=e["loc"],
                    input=e["input"],
                    **({"ctx": e["ctx"]} if "ctx" in e and "error" not in e["ctx"] else {}),
                )
                for e in errors
            ]
            details.append(
                InitErrorDetails(type=PydanticCustomError("value_error", "\n".join(problems)), loc=(), input=data)
            )
            raise ValidationError.from_exception_data(cls.__name__, details) from None

    @classmethod
    def _partial(cls, data: Mapping, bad: set) -> GateConfig:
        """The section without its invalid settings (defaults instead; of a list, its valid items)."""
        values = {}
        for name, field in cls.model_fields.items():
            if name not in data:
                continue
            items = typing.get_args(field.annotation)
            if name not in bad:
                values[name] = TypeAdapter(field.annotation).validate_python(data[name])
            elif typing.get_origin(field.annotation) is list:
                values[name] = [item for item in _valid_items(items[0], data[name])]
            elif field.is_required():
                return cls.model_construct(thresholds=[], slice_thresholds=[])  # too little to check
        return cls.model_construct(**values)

    def inconsistencies(self) -> list[str]:
        """What contradicts what among the settings, one sentence per problem."""
        problems = []
        for field_name in ("thresholds", "slice_thresholds"):
            names = [threshold.metric for threshold in getattr(self, field_name)]
            duplicates = sorted({name for name in names if names.count(name) > 1})
            if duplicates:
                problems.append(f"more than one entry in {field_name} for {duplicates}; merge them into one")
        if self.slice_thresholds and self.slice_feature is None:
            problems.append("slice_thresholds need a slice_feature to slice by")
        if self.slice_feature is not None and not self.slice_thresholds:
            problems.append(f"slice_feature {self.slice_feature!r} is set but no slice_thresholds say what to check")
        if self.require_serving_model and self.serving_model_dir is None:
            problems.append("require_serving_model needs serving_model_dir")
        return problems

    @property
    def all_thresholds(self) -> list[MetricThreshold]:
        return [*self.thresholds, *self.slice_thresholds]


def _valid_items(item_type: Any, values: Any) -> Iterator[Any]:
    for value in values if isinstance(values, list) else []:
        try:
            yield TypeAdapter(item_type).validate_python(value)
        except ValidationError:
            continue
