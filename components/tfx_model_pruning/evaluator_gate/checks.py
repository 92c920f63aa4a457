"""The gate's decision: every check with its measured value, bound and verdict. No TFX here."""

from __future__ import annotations

from typing import Mapping, Optional

from scipy.stats import binomtest

from tfx_model_pruning.evaluator_gate.config import GateConfig, MetricThreshold
from tfx_model_pruning.evaluator_gate.result import (
    BOUND,
    DROP,
    RATIO,
    RELATIVE_DROP,
    REQUIREMENT,
    SKILL,
    CheckResult,
)
from tfx_model_pruning.evaluator_gate.result import GateDecision as GateDecision  # re-exported
from tfx_model_pruning.evaluator_gate.result import is_blessed as is_blessed  # re-exported
from tfx_model_pruning.evaluator_gate.skill import SkillTally

# Metrics that are a fraction of examples, so a binomial interval describes their uncertainty.
_PROPORTION_METRICS = {
    "Accuracy",
    "BinaryAccuracy",
    "CategoricalAccuracy",
    "SparseCategoricalAccuracy",
    "TopKCategoricalAccuracy",
    "SparseTopKCategoricalAccuracy",
}


def wilson_interval(proportion: float, examples: float, confidence: float = 0.95) -> Optional[tuple[float, float]]:
    """The Wilson score interval of a proportion measured on ``examples`` examples (None if none)."""
    trials = int(round(examples))
    if trials <= 0 or not 0.0 <= proportion <= 1.0:
        return None
    interval = binomtest(int(round(proportion * trials)), trials).proportion_ci(
        confidence_level=confidence, method="wilson"
    )
    return (float(interval.low), float(interval.high))


# How check names, details and reports call each model: one name each, everywhere.
PARENT_LABEL = "parent"  # the unpruned model (the component's baseline_model)
SERVING_LABEL = "serving"  # the newest version under the push destination
# TFMA reports metrics as float32: a drop of exactly the bound (1.00 - 0.97 vs 0.03) measures
# 0.03000003. Two float32 steps at 1.0 keep such a tie from failing; one example in a million
# still counts.
FLOAT32_SLACK = 2.5e-7


def run_checks(
    config: GateConfig,
    metric_names: Mapping[str, str],
    candidate: Mapping[str, float],
    baseline: Optional[Mapping[str, float]],
    example_count: float,
    sparsity: float,
    efficiency: Optional[Mapping[str, Mapping[str, float]]] = None,
    serving: Optional[Mapping[str, float]] = None,
    slices: Optional[Mapping[str, Mapping[str, Mapping[str, float]]]] = None,
    non_finite: Optional[Mapping[str, int]] = None,
    eval_features: Optional[list[str]] = None,
    skill: Optional[Mapping[str, SkillTally]] = None,
    skill_unmeasured: str = "",
) -> list[CheckResult]:
    """Applies every threshold of ``config``.

    Args:
      metric_names: threshold metric (Keras class name) -> name of its value in the metrics.
      candidate, baseline: metric name -> value on the eval split (baseline None when no parent
        model is connected).
      example_count: examples the candidate was evaluated on.
      sparsity: measured fraction of zeros in the candidate's pruned layers.
      efficiency: per model ("candidate", "baseline") its measured ``saved_model_bytes``,
        ``weights_gzip_bytes``, ``params``, ``flops`` and ``latency_ms``.
      serving: metrics of the model now serving (None when ``config.serving_model_dir`` holds
        no version yet, or is not set).
      slices: slice label (``"species=2"``) -> model ("candidate", "baseline", "serving") ->
        metrics on that slice, ``example_count`` included.
      non_finite: counts of NaN/infinite values in the candidate's ``weights`` and its
        ``predictions`` on the eval split; what is not measured refuses.
      eval_features: feature names of the eval examples, named when ``slice_feature`` is not one.
      skill: slice label ("Overall", "species=2") -> the candidate's no-skill tally (``skill.py``);
        with ``config.require_skill``, None refuses, saying ``skill_unmeasured``.
    """
    results = [
        CheckResult(
            "eval examples >= min_eval_examples",
            example_count >= config.min_eval_examples,
            example_count,
            config.min_eval_examples,
            "a metric measured on a handful of examples means little",
            metric="example_count",
            comparator=">=",
            kind=BOUND,
            bound_name="min_eval_examples",
        ),
        _finite_check(non_finite),
    ]
    if config.require_skill:
        results += skill_checks(config, skill, skill_unmeasured)
    references: list[tuple[str, Mapping[str, float]]] = []
    if baseline is not None:
        references.append((PARENT_LABEL, baseline))
    if config.serving_model_dir is not None:
        if serving is None:
            results.append(
                CheckResult(
                    "serving model to compare with",
                    not config.require_serving_model,
                    None,
                    None,
                    f"none yet under {config.serving_model_dir}"
                    + ("" if config.require_serving_model else " (first release: nothing to compare with)"),
                    reference=SERVING_LABEL,
                    kind=REQUIREMENT,
                )
            )
        else:
            references.append((SERVING_LABEL, serving))
    no_reference_is_expected = config.serving_model_dir is not None and serving is None and baseline is None
    results += _metric_checks(
        config.thresholds,
        metric_names,
        candidate,
        references,
        slice_label=None,
        skip_drops=no_reference_is_expected,
        examples=example_count,
    )
    if config.slice_feature is not None:
        results += _slice_checks(config, metric_names, slices or {}, no_reference_is_expected, eval_features)
    if config.min_sparsity is not None:
        results.append(
            CheckResult(
                "sparsity >= min_sparsity",
                sparsity >= config.min_sparsity,
                sparsity,
                config.min_sparsity,
                "measured from the candidate's weights",
                metric="sparsity",
                comparator=">=",
                kind=BOUND,
                bound_name="min_sparsity",
            )
        )
    results += _efficiency_checks(config, efficiency or {})
    results += _ratio_checks(config, efficiency or {}, no_reference_is_expected)
    return results


# Words in a threshold's metric name that say what kind of task the model does.
_CLASSIFICATION_WORDS = ("accuracy", "auc", "precision", "recall", "crossentropy", "hinge", "f1", "fbeta", "iou")
_REGRESSION_WORDS = ("error", "r2", "huber", "logcosh", "poisson")
# Predictions whose spread is under this share of the labels' are one answer for every example.
MIN_PREDICTION_SPREAD = 0.01
BEATS_MAJORITY = "better than always answering the most common class"
NOT_WORSE_THAN_MAJORITY = "not worse than always answering its most common class"
ANSWERS_VARY = "answers vary between examples"
BEATS_MEAN = "error below always answering the mean label"


def task_kind(config: GateConfig, overall: SkillTally) -> str:
    """ "classification" or "regression": from the thresholds' metric names, else from the labels."""
    names = " ".join(threshold.metric.lower() for threshold in config.all_thresholds)
    if any(word in names for word in _CLASSIFICATION_WORDS):
        return "classification"
    if any(word in names for word in _REGRESSION_WORDS):
        return "regression"
    return "classification" if overall.label_counts is not None else "regression"


def skill_checks(
    config: GateConfig, tallies: Optional[Mapping[str, SkillTally]], unmeasured: str = ""
) -> list[CheckResult]:
    """The candidate must beat the answer of a model that learned nothing, and not give one answer to all.

    Classification: the 95% Wilson interval of its accuracy lies above the most common label's
    share (what always answering that label scores), and it predicts more than one class. Per
    checked slice with two or more classes, the interval must not lie wholly below that slice's
    most common share: a slice may be nearly one class, where a good model can score a little
    below the constant answer, but not clearly. Regression: a mean squared error below the
    labels' variance (always answering the mean), and predictions that vary.
    """
    overall = (tallies or {}).get("Overall")
    if overall is None or not overall.examples:
        why = unmeasured or "the eval split gave no examples"
        detail = f"not measured: {why}; the gate refuses what it cannot check (require_skill: false turns this off)"
        return [CheckResult(BEATS_MAJORITY, False, None, None, detail, metric="no_skill", kind=SKILL)]
    if task_kind(config, overall) == "regression":
        return _regression_skill(overall)
    results = [_beats_majority(overall, slice_label=None), _answers_vary(overall)]
    for label, one in sorted(tallies.items()):
        if label == "Overall" or one.examples < config.min_slice_examples or len(one.label_counts or {}) < 2:
            continue
        results.append(_beats_majority(one, slice_label=label))
    return results


def _beats_majority(tally: SkillTally, slice_label: Optional[str]) -> CheckResult:
    name = f"[{slice_label}] {NOT_WORSE_THAN_MAJORITY}" if slice_label else BEATS_MAJORITY
    on = {"metric": "accuracy", "slice": slice_label, "kind": SKILL}
    if tally.label_counts is None or tally.accuracy is None:
        detail = "the labels are not classes (not whole numbers, or over a thousand values): accuracy cannot be judged"
        return CheckResult(name, False, None, None, detail, **on)
    label, share = tally.majority
    if len(tally.label_counts) < 2:
        detail = f"every eval label is {label}: no model can show on these examples that it learned anything"
        return CheckResult(name, False, tally.accuracy, share, detail, **on)
    accuracy, n = tally.accuracy, tally.examples
    low, high = wilson_interval(accuracy, n)
    passed = high >= share if slice_label else low > share
    constant = f"always answering {label} is right {share:.4f} of the time ({tally.label_counts[label]:,} of {n:,})"
    if slice_label:
        verdict = "clearly worse than" if not passed else "not clearly worse than"
    else:
        verdict = "clearly better than" if passed else "not clearly better than"
    detail = f"accuracy {accuracy:.4f} (95% interval {low:.3f}-{high:.3f}) is {verdict} the constant answer: {constant}"
    return CheckResult(name, passed, accuracy, share, detail, (low, high), **on)


def _answers_vary(tally: SkillTally) -> CheckResult:
    predicted = {label: count for label, count in tally.predicted_counts.items() if count}
    classes = len(tally.label_counts or {}) or len(predicted)
    passed = len(predicted) >= 2
    if passed:
        detail = f"predicts {len(predicted)} of {classes} classes"
    else:
        (only,) = predicted or {"nothing": 0}
        detail = (
            f"gives the same answer, {only}, to every one of the {tally.examples:,} eval examples "
            f"(outputs from {tally.prediction_min:.4g} to {tally.prediction_max:.4g}): it has collapsed to a constant"
        )
    return CheckResult(ANSWERS_VARY, passed, len(predicted), 2, detail, metric="predicted_classes", kind=SKILL)


def _regression_skill(tally: SkillTally) -> list[CheckResult]:
    error, variance = tally.mean_squared_error, tally.label_variance
    label_std = variance**0.5
    spread = tally.prediction_std
    return [
        CheckResult(
            BEATS_MEAN,
            error < variance,
            error,
            variance,
            f"mean squared error {error:.4g} vs {variance:.4g} for always answering the mean label "
            f"{tally.label_sum / tally.examples:.4g}",
            metric="mean_squared_error",
            kind=SKILL,
        ),
        CheckResult(
            ANSWERS_VARY,
            spread >= MIN_PREDICTION_SPREAD * label_std and spread > 0.0,
            spread,
            MIN_PREDICTION_SPREAD * label_std,
            f"predictions spread (std) {spread:.4g}; the labels' {label_std:.4g}",
            metric="prediction_std",
            kind=SKILL,
        ),
    ]


def unchecked_slices(config: GateConfig, slices: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict[str, float]:
    """Slices too small to check (label -> example count), shown in the report, never hidden."""
    return {
        label: models["candidate"].get("example_count", 0.0)
        for label, models in sorted(slices.items())
        if models.get("candidate", {}).get("example_count", 0.0) < config.min_slice_examples
    }


def _slice_checks(
    config: GateConfig,
    metric_names: Mapping[str, str],
    slices: Mapping[str, Mapping[str, Mapping[str, float]]],
    skip_drops: bool,
    eval_features: Optional[list[str]] = None,
) -> list[CheckResult]:
    if not slices:
        absent = eval_features is not None and config.slice_feature not in eval_features
        detail = (
            f"the eval examples have no feature {config.slice_feature!r}; they have {eval_features}"
            if absent
            else f"TFMA found no values of {config.slice_feature!r} in the eval split"
        )
        return [
            CheckResult(
                f"slices by {config.slice_feature} computed",
                False,
                0,
                None,
                detail,
                slice=config.slice_feature,
                kind=REQUIREMENT,
            )
        ]
    too_small = unchecked_slices(config, slices)
    results = []
    for label, models in sorted(slices.items()):
        if label in too_small:
            continue
        references = [
            (label, models[model])
            for label, model in ((PARENT_LABEL, "baseline"), (SERVING_LABEL, "serving"))
            if model in models
        ]
        results += _metric_checks(
            config.slice_thresholds,
            metric_names,
            models.get("candidate", {}),
            references,
            slice_label=label,
            skip_drops=skip_drops,
            examples=models.get("candidate", {}).get("example_count", 0.0),
        )
    return results


def _finite_check(non_finite: Optional[Mapping[str, int]]) -> CheckResult:
    name = "all weights and predictions finite"
    non_finite = non_finite or {}
    unmeasured = [what for what in ("weights", "predictions") if what not in non_finite]
    total = sum(non_finite.values())
    detail = ", ".join(
        [f"{count} non-finite {what}" for what, count in sorted(non_finite.items())]
        + [f"{what} not measured" for what in unmeasured]
    )
    return CheckResult(
        name, total == 0 and not unmeasured, total, 0, detail, metric="non_finite_values", comparator="<=", kind=BOUND
    )


def _metric_checks(
    thresholds: list[MetricThreshold],
    metric_names: Mapping[str, str],
    candidate: Mapping[str, float],
    references: list[tuple[str, Mapping[str, float]]],
    slice_label: Optional[str],
    skip_drops: bool,
    examples: float,
) -> list[CheckResult]:
    prefix = f"[{slice_label}] " if slice_label else ""
    results = []
    for threshold in thresholds:
        name = metric_names[threshold.metric]
        value = candidate.get(name)
        on = {"metric": name, "slice": slice_label}
        if value is None:
            results.append(
                CheckResult(
                    f"{prefix}{name} computed", False, None, None, "TFMA produced no value", kind=REQUIREMENT, **on
                )
            )
            continue
        interval = wilson_interval(value, examples) if threshold.metric in _PROPORTION_METRICS else None
        detail = f"95% interval {interval[0]:.3f}-{interval[1]:.3f} over {int(examples)} examples" if interval else ""
        if threshold.lower_bound is not None:
            results.append(
                CheckResult(
                    f"{prefix}{name} >= lower_bound",
                    value >= threshold.lower_bound,
                    value,
                    threshold.lower_bound,
                    detail,
                    interval,
                    comparator=">=",
                    kind=BOUND,
                    bound_name="lower_bound",
                    **on,
                )
            )
        if threshold.upper_bound is not None:
            results.append(
                CheckResult(
                    f"{prefix}{name} <= upper_bound",
                    value <= threshold.upper_bound,
                    value,
                    threshold.upper_bound,
                    detail,
                    interval,
                    comparator="<=",
                    kind=BOUND,
                    bound_name="upper_bound",
                    **on,
                )
            )
        if (threshold.max_absolute_drop is None and threshold.max_relative_drop is None) or skip_drops:
            continue
        if not references:
            results.append(
                CheckResult(
                    f"{prefix}{name} model to compare with",
                    False,
                    None,
                    None,
                    "a drop bound needs the parent or the serving model; neither is connected",
                    reference=PARENT_LABEL,
                    kind=REQUIREMENT,
                    **on,
                )
            )
        for reference_name, reference_metrics in references:
            results += _drop_checks(threshold, name, value, reference_name, reference_metrics, slice_label)
    return results


def _drop_checks(
    threshold: MetricThreshold,
    name: str,
    value: float,
    reference_name: str,
    reference_metrics: Mapping[str, float],
    slice_label: Optional[str],
) -> list[CheckResult]:
    prefix = f"[{slice_label}] " if slice_label else ""
    on = {"metric": name, "slice": slice_label, "reference": reference_name}
    reference = reference_metrics.get(name)
    if reference is None:
        return [
            CheckResult(
                f"{prefix}{name} {reference_name} value available",
                False,
                None,
                None,
                "a drop bound needs the reference's value",
                kind=REQUIREMENT,
                **on,
            )
        ]
    drop = (reference - value) if threshold.higher_is_better else (value - reference)
    detail = f"{reference_name} {reference:.6g}, candidate {value:.6g}"
    results = []
    if threshold.max_absolute_drop is not None:
        results.append(
            CheckResult(
                f"{prefix}{name} drop vs {reference_name} <= max_absolute_drop",
                # 1e-9: accuracies like 0.98 - 0.97 are not exact in binary floating point.
                drop <= threshold.max_absolute_drop + FLOAT32_SLACK,
                drop,
                threshold.max_absolute_drop,
                detail,
                comparator="<=",
                kind=DROP,
                bound_name="max_absolute_drop",
                reference_value=reference,
                **on,
            )
        )
    if threshold.max_relative_drop is not None:
        relative = drop / abs(reference) if reference else (0.0 if drop <= 0 else float("inf"))
        results.append(
            CheckResult(
                f"{prefix}{name} relative drop vs {reference_name} <= max_relative_drop",
                relative <= threshold.max_relative_drop + FLOAT32_SLACK,
                relative,
                threshold.max_relative_drop,
                detail,
                comparator="<=",
                kind=RELATIVE_DROP,
                bound_name="max_relative_drop",
                reference_value=reference,
                **on,
            )
        )
    return results


# Ratio bounds: (setting, the figure of each model compared, how it reads in a check's name).
_RATIO_BOUNDS = (
    ("max_latency_ratio", "latency_ms", "serving latency"),
    ("max_size_ratio", "saved_model_bytes", "SavedModel bytes"),
)
# Each baseline's figures in the efficiency mapping, by its label in the checks.
_EFFICIENCY_REFERENCES = ((PARENT_LABEL, "baseline"), (SERVING_LABEL, "serving"))


def _ratio_checks(
    config: GateConfig, efficiency: Mapping[str, Mapping[str, float]], no_reference_is_expected: bool
) -> list[CheckResult]:
    """The candidate's latency and size over each baseline's: one check per bound and baseline."""
    candidate = efficiency.get("candidate", {})
    results = []
    for bound_name, key, label in _RATIO_BOUNDS:
        bound = getattr(config, bound_name)
        if bound is None:
            continue
        if key == "latency_ms":
            label = f"{label} (batch {config.latency_batch_size})"
        references = [(ref, efficiency[name]) for ref, name in _EFFICIENCY_REFERENCES if name in efficiency]
        if not references:
            results.append(
                CheckResult(
                    f"{label} ratio: a baseline to compare with",
                    no_reference_is_expected,
                    None,
                    None,
                    "no model serving yet (first release) and no parent: nothing to compare with"
                    if no_reference_is_expected
                    else "needs the parent model (baseline_model) or a serving model",
                    metric=f"{key}_ratio",
                    kind=REQUIREMENT,
                    bound_name=bound_name,
                )
            )
            continue
        for reference, figures in references:
            value, base = candidate.get(key), figures.get(key)
            name = f"{label} vs {reference} <= {bound_name}"
            if value is None or not base:
                why = candidate.get(f"{key}_unmeasured") or figures.get(f"{key}_unmeasured") or "not measured"
                results.append(
                    CheckResult(
                        name,
                        False,
                        None,
                        bound,
                        f"{why}: refused",
                        metric=f"{key}_ratio",
                        reference=reference,
                        kind=REQUIREMENT,
                        bound_name=bound_name,
                    )
                )
                continue
            if key == "latency_ms":
                detail = f"batch {config.latency_batch_size}, medians of calls in alternation on eval examples: "
                detail += f"candidate {value:.3g} ms, {reference} {base:.3g} ms"
            else:
                detail = f"candidate {value:,.0f} bytes, {reference} {base:,.0f} bytes"
            results.append(
                CheckResult(
                    name,
                    value / base <= bound,
                    value / base,
                    bound,
                    detail,
                    metric=f"{key}_ratio",
                    reference=reference,
                    comparator="<=",
                    kind=RATIO,
                    bound_name=bound_name,
                    reference_value=base,
                )
            )
    return results


def _efficiency_checks(config: GateConfig, efficiency: Mapping[str, Mapping[str, float]]) -> list[CheckResult]:
    candidate = efficiency.get("candidate", {})
    baseline = efficiency.get("baseline")
    results = []
    for name, key, bound_name in (
        ("saved model bytes <= max_saved_model_bytes", "saved_model_bytes", "max_saved_model_bytes"),
        ("params <= max_params", "params", "max_params"),
        ("FLOPs <= max_flops", "flops", "max_flops"),
        (f"serving latency (ms, batch {config.latency_batch_size}) <= max_latency_ms", "latency_ms", "max_latency_ms"),
    ):
        bound = getattr(config, bound_name)
        if bound is not None:
            value = candidate.get(key)
            passed = value is not None and value <= bound
            detail = "measured on the candidate" if value is not None else "not measurable for this model: refused"
            if value is None and key == "flops":
                detail = "not counted: the model was saved without its Keras layers (tf.saved_model.save)"
            results.append(
                CheckResult(
                    name, passed, value, bound, detail, metric=key, comparator="<=", kind=BOUND, bound_name=bound_name
                )
            )
    if config.min_size_reduction is not None:
        if baseline is None:
            results.append(
                CheckResult(
                    "size reduction vs parent",
                    False,
                    None,
                    config.min_size_reduction,
                    "needs the parent model (baseline_model)",
                    metric="size_reduction",
                    reference=PARENT_LABEL,
                    kind=REQUIREMENT,
                    bound_name="min_size_reduction",
                )
            )
        else:
            reduction = 1.0 - candidate["weights_gzip_bytes"] / baseline["weights_gzip_bytes"]
            results.append(
                CheckResult(
                    "size reduction vs parent >= min_size_reduction",
                    reduction >= config.min_size_reduction,
                    reduction,
                    config.min_size_reduction,
                    f"gzip-compressed weights: parent {baseline['weights_gzip_bytes']}, "
                    f"candidate {candidate['weights_gzip_bytes']} bytes",
                    metric="size_reduction",
                    reference=PARENT_LABEL,
                    comparator=">=",
                    kind=BOUND,
                    bound_name="min_size_reduction",
                )
            )
    return results
