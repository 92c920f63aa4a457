"""A readable rendering of the gate's result: why a model was or was not released."""

from __future__ import annotations

from typing import Any

from tabulate import tabulate


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value.is_integer() and abs(value) > 1:  # counts arrive from TFMA as floats
            return str(int(value))
        return f"{value:.4f}"
    return str(value)


def comparison_rows(result: dict[str, Any]) -> list[list[str]]:
    """Baseline vs candidate: each metric, sparsity, params and compressed size."""
    names = [name for name in ("baseline", "candidate") if name in result["weights"]]
    metric_names = sorted({key for name in names for key in result["metrics"].get(name, {})})
    rows = [[metric] + [_fmt(result["metrics"].get(name, {}).get(metric)) for name in names] for metric in metric_names]
    for label, key in (
        ("sparsity (pruned layers)", "masked_sparsity"),
        ("sparsity (all kernels)", "kernel_sparsity"),
        ("params", "params"),
        ("non-zero params", "nonzero_params"),
        ("gzip bytes (weights)", "weights_gzip_bytes"),
        ("gzip bytes (SavedModel dir)", "gzip_bytes"),
        ("SavedModel bytes", "saved_model_bytes"),
        ("FLOPs per example", "flops"),
        ("CPU latency (ms)", "latency_ms"),
    ):
        if all(key in result["weights"][name] for name in names):
            rows.append([label] + [_fmt(result["weights"][name][key]) for name in names])
    return [["", *names], *rows]


def summary_markdown(result: dict[str, Any]) -> str:
    header, *rows = comparison_rows(result)
    checks = [
        [
            "PASS" if check["passed"] else "FAIL",
            check["name"],
            _fmt(check["measured"]),
            _fmt(check["bound"]),
            check["detail"],
        ]
        for check in result["checks"]
    ]
    verdict = "BLESSED" if result["blessed"] else "NOT BLESSED: " + ", ".join(result["failed_checks"])
    return "\n".join(
        [
            "# Release gate",
            "",
            f"**{verdict}**",
            "",
            tabulate(rows, headers=header, tablefmt="github", disable_numparse=True),
            "",
            "## Checks",
            "",
            tabulate(
                checks,
                headers=["verdict", "check", "measured", "bound", "detail"],
                tablefmt="github",
                disable_numparse=True,
            ),
            "",
        ]
    )
