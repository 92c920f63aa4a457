"""The gate's decision: every check with its measured value, bound and verdict. No TFX here."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional

from components.evaluator_gate.config import GateConfig


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    measured: Optional[float]
    bound: Optional[float]
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_checks(
    config: GateConfig,
    metric_names: Mapping[str, str],
    candidate: Mapping[str, float],
    baseline: Optional[Mapping[str, float]],
    example_count: float,
    sparsity: float,
    efficiency: Optional[Mapping[str, Mapping[str, float]]] = None,
) -> list[CheckResult]:
    """Applies every threshold of ``config``.

    Args:
      metric_names: threshold metric (Keras class name) -> name of its value in the metrics.
      candidate, baseline: metric name -> value on the eval split (baseline may be None).
      example_count: examples the candidate was evaluated on.
      sparsity: measured fraction of zeros in the candidate's pruned layers.
      efficiency: per model ("candidate", "baseline") its measured ``saved_model_bytes``,
        ``weights_gzip_bytes``, ``params``, ``flops`` and ``latency_ms``.
    """
    results = [
        CheckResult(
            "eval examples > 0",
            example_count > 0,
            example_count,
            0,
            "an empty eval split proves nothing, so it never blesses",
        )
    ]
    for threshold in config.thresholds:
        name = metric_names[threshold.metric]
        value = candidate.get(name)
        if value is None:
            results.append(CheckResult(f"{name} computed", False, None, None, "TFMA produced no value"))
            continue
        if threshold.lower_bound is not None:
            results.append(
                CheckResult(f"{name} >= lower_bound", value >= threshold.lower_bound, value, threshold.lower_bound, "")
            )
        if threshold.upper_bound is not None:
            results.append(
                CheckResult(f"{name} <= upper_bound", value <= threshold.upper_bound, value, threshold.upper_bound, "")
            )
        if threshold.max_absolute_drop is None and threshold.max_relative_drop is None:
            continue
        reference = None if baseline is None else baseline.get(name)
        if reference is None:
            results.append(
                CheckResult(f"{name} baseline available", False, None, None, "a drop bound needs a baseline value")
            )
            continue
        drop = (reference - value) if threshold.higher_is_better else (value - reference)
        if threshold.max_absolute_drop is not None:
            results.append(
                CheckResult(
                    f"{name} drop vs baseline <= max_absolute_drop",
                    # 1e-9: accuracies like 0.98 - 0.97 are not exact in binary floating point.
                    drop <= threshold.max_absolute_drop + 1e-9,
                    drop,
                    threshold.max_absolute_drop,
                    f"baseline {reference:.6g}, candidate {value:.6g}",
                )
            )
        if threshold.max_relative_drop is not None:
            relative = drop / abs(reference) if reference else (0.0 if drop <= 0 else float("inf"))
            results.append(
                CheckResult(
                    f"{name} relative drop vs baseline <= max_relative_drop",
                    relative <= threshold.max_relative_drop + 1e-9,
                    relative,
                    threshold.max_relative_drop,
                    f"baseline {reference:.6g}, candidate {value:.6g}",
                )
            )
    if config.min_sparsity is not None:
        results.append(
            CheckResult(
                "sparsity >= min_sparsity",
                sparsity >= config.min_sparsity,
                sparsity,
                config.min_sparsity,
                "measured from the candidate's weights",
            )
        )
    results += _efficiency_checks(config, efficiency or {})
    return results


def _efficiency_checks(config: GateConfig, efficiency: Mapping[str, Mapping[str, float]]) -> list[CheckResult]:
    candidate = efficiency.get("candidate", {})
    baseline = efficiency.get("baseline")
    results = []
    for name, key, bound in (
        ("saved model bytes <= max_saved_model_bytes", "saved_model_bytes", config.max_saved_model_bytes),
        ("params <= max_params", "params", config.max_params),
        ("FLOPs <= max_flops", "flops", config.max_flops),
        (f"CPU latency (ms, batch {config.latency_batch_size}) <= max_latency_ms", "latency_ms", config.max_latency_ms),
    ):
        if bound is not None:
            value = candidate.get(key)
            passed = value is not None and value <= bound
            results.append(CheckResult(name, passed, value, bound, "measured on the candidate"))
    if config.min_size_reduction is not None:
        if baseline is None:
            results.append(
                CheckResult("size reduction vs baseline", False, None, config.min_size_reduction, "needs a baseline")
            )
        else:
            reduction = 1.0 - candidate["weights_gzip_bytes"] / baseline["weights_gzip_bytes"]
            results.append(
                CheckResult(
                    "size reduction vs baseline >= min_size_reduction",
                    reduction >= config.min_size_reduction,
                    reduction,
                    config.min_size_reduction,
                    f"gzip-compressed weights: baseline {baseline['weights_gzip_bytes']}, "
                    f"candidate {candidate['weights_gzip_bytes']} bytes",
                )
            )
    return results


def is_blessed(results: list[CheckResult]) -> bool:
    return bool(results) and all(result.passed for result in results)
