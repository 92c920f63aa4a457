"""Readable renderings of the gate's result: why a model was or was not released.

``summary.md`` for logs and terminals; ``report.html`` with ``report.png`` for people deciding
on a release. Everything shown comes from the gate's typed result (``result.py``), so the page
cannot disagree with the blessing.
"""

from __future__ import annotations

import base64
import io
from typing import Any, Mapping, Union

import jinja2
import numpy as np
from matplotlib.figure import Figure
from tabulate import tabulate

from tfx_model_pruning.engine.recovery import RecoveryRecord
from tfx_model_pruning.evaluator_gate.checks import PARENT_LABEL, SERVING_LABEL
from tfx_model_pruning.evaluator_gate.metrics import metric_output_name
from tfx_model_pruning.evaluator_gate.result import (
    OVERALL,
    GateDecision,
    GateFailure,
    GateResult,
    ModelFigures,
    gate_result_from_json,
)
from tfx_model_pruning.serving_versions import INT8_TFLITE_FILE

MODEL_ORDER = ("baseline", "serving", "candidate")
# One name per model, as check names and the pipeline file's compare_with call them.
MODEL_LABELS = {"baseline": PARENT_LABEL, "serving": SERVING_LABEL, "candidate": "candidate"}
MODEL_COLORS = {"baseline": "#9e9e9e", "serving": "#5c85d6", "candidate": "#e08a2e"}


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value.is_integer() and abs(value) > 1:  # counts arrive from TFMA as floats
            return str(int(value))
        return f"{value:.4f}"
    return str(value)


def as_gate_result(result: Union[GateResult, Mapping[str, Any]]) -> GateResult:
    """The typed result: as given, or read from ``gate_result.json``'s content (a dict)."""
    return gate_result_from_json(result) if isinstance(result, Mapping) else result


# The comparison's rows: label, and the ModelFigures field it shows.
_FIGURE_ROWS = (
    ("sparsity (pruned layers)", "masked_sparsity"),
    ("sparsity (all kernels)", "kernel_sparsity"),
    ("params", "params"),
    ("non-zero params", "nonzero_params"),
    ("gzip bytes (weights)", "weights_gzip_bytes"),
    ("gzip bytes (SavedModel dir)", "gzip_bytes"),
    ("SavedModel bytes", "saved_model_bytes"),
    ("FLOPs per example", "flops"),
)


def _latency_cell(figures: ModelFigures, batch: str) -> str:
    timing = (figures.latency or {}).get(batch)
    if timing is None:
        return "-"
    return f"{timing['median_ms']:.3g} ({timing['p25_ms']:.3g}-{timing['p75_ms']:.3g})"


def _latency_rows(result: GateResult, names: list[str]) -> list[list[str]]:
    """Serving latency per batch size measured: median and interquartile range, in ms."""
    batches = sorted({batch for name in names for batch in (result.weights[name].latency or {})}, key=int)
    rows = [
        [f"serving latency, batch {batch} (ms: median, IQR)"]
        + [_latency_cell(result.weights[name], batch) for name in names]
        for batch in batches
    ]
    unmeasured = next(
        (result.weights[name].latency_ms_unmeasured for name in names if result.weights[name].latency_ms_unmeasured),
        None,
    )
    if not rows and unmeasured:
        rows.append(["serving latency", *([unmeasured] * len(names))])
    return rows


def comparison_rows(result: Union[GateDecision, Mapping[str, Any]]) -> list[list[str]]:
    """Baselines vs candidate: each metric, sparsity, params, sizes, FLOPs and latency."""
    result = as_gate_result(result)
    names = _models(result)
    metric_names = sorted({metric for name in names for metric in result.metrics.get(name, {})})
    rows = [[metric] + [_fmt(result.metric(name, metric)) for name in names] for metric in metric_names]
    for label, figure in _FIGURE_ROWS:
        if all(result.weights[name].measured(figure) for name in names):
            rows.append([label] + [_fmt(getattr(result.weights[name], figure)) for name in names])
    rows += _latency_rows(result, names)
    return [["", *(MODEL_LABELS[name] for name in names)], *rows]


def verdict_line(result: Union[GateDecision, Mapping[str, Any]]) -> str:
    """``BLESSED: all 11 checks passed`` or ``NOT BLESSED: 2 of 13 checks failed`` (NOTEs not counted)."""
    result = as_gate_result(result)
    checks = [check for check in result.checks_failed_first() if check.verdict != "NOTE"]  # a first release
    failed = [check for check in checks if not check.passed]
    first_release = "; no model serving yet (first release)" if len(checks) < len(result.checks) else ""
    if result.blessed:
        return f"BLESSED: all {len(checks)} checks passed{first_release}"
    return f"NOT BLESSED: {len(failed)} of {len(checks)} checks failed"


def header_rows(result: Union[GateDecision, Mapping[str, Any]]) -> list[tuple[str, str]]:
    """Pipeline, run, time, the models compared (by path) and the push destination."""
    result = as_gate_result(result)
    run = result.run
    rows = [(label, value) for label, value in (("pipeline", run.pipeline), ("run", run.run), ("time", run.time))]
    rows = [(label, value) for label, value in rows if value]
    rows += [(MODEL_LABELS[name], result.models[name]) for name in MODEL_ORDER[::-1] if name in result.models]
    if "serving" not in result.models and result.config.serving_model_dir:
        rows.append((SERVING_LABEL, "no model serving yet (first release)"))
    if run.push_destination:
        rows.append(("push destination", run.push_destination))
    if result.evaluated_by:
        rows.append(("evaluated by", result.evaluated_by))
    return rows


def summary_markdown(result: Union[GateDecision, Mapping[str, Any]]) -> str:
    """The verdict and why first (failed checks in words), then every check, then the comparison."""
    result = as_gate_result(result)
    header, *rows = comparison_rows(result)
    checks = result.checks_failed_first()
    failed = [check for check in checks if not check.passed]
    lines = ["# Release gate", "", f"**{verdict_line(result)}**", ""]
    lines += [f"- {label}: `{value}`" for label, value in header_rows(result)] + [""]
    if failed:
        lines += ["## Why it was refused", ""] + [f"- {check.explain()}" for check in failed] + [""]
    table = [[c.verdict, c.name, _fmt(c.measured), _fmt(c.bound), c.detail] for c in checks]
    lines += [
        "## Checks (failed first)",
        "",
        tabulate(
            table, headers=["verdict", "check", "measured", "bound", "detail"], tablefmt="github", disable_numparse=True
        ),
        "",
        "## Models compared",
        "",
        tabulate(rows, headers=header, tablefmt="github", disable_numparse=True),
        "",
    ]
    if result.not_fine_tuned:
        lines += ["## Fine-tuning", "", f"{result.not_fine_tuned[0].upper()}{result.not_fine_tuned[1:]}.", ""]
    if result.fine_tuning is not None:
        head, *evaluations = fine_tuning_rows(result.fine_tuning)
        lines += ["## Fine-tuning", "", f"{result.fine_tuning.summary()}.", ""]
        lines += [tabulate(evaluations, headers=head, tablefmt="github", disable_numparse=True), ""]
    if result.graph_scans:
        head, *scans = graph_scan_rows(result)
        lines += ["## Model graphs (scanned before loading)", ""]
        lines += [tabulate(scans, headers=head, tablefmt="github", disable_numparse=True), ""]
    if result.int8 is not None:
        lines += ["## int8 TFLite model (its own checks; not the SavedModel's blessing)", "", int8_verdict(result), ""]
        head, *figures = int8_rows(result)
        if figures:
            lines += [tabulate(figures, headers=head, tablefmt="github", disable_numparse=True), ""]
        int8_checks = [[c.verdict, c.name, _fmt(c.measured), _fmt(c.bound), c.detail] for c in result.int8.checks]
        headers = ["verdict", "check", "measured", "bound", "detail"]
        lines += [tabulate(int8_checks, headers=headers, tablefmt="github", disable_numparse=True), ""]
    return "\n".join(lines)


def int8_verdict(result: GateDecision) -> str:
    """Whether the int8 TFLite model goes out with the SavedModel, and if not, why."""
    int8 = result.int8
    if int8.passed and result.blessed:
        return f"Passed its checks: pushed beside the SavedModel as `{INT8_TFLITE_FILE}`."
    if int8.passed:
        return "Passed its checks, but the SavedModel is not blessed: nothing is pushed."
    failed = [check.explain() for check in int8.checks if not check.passed]
    return "Left out of the push (the SavedModel's verdict stands alone): " + "; ".join(failed)


def int8_rows(result: GateDecision) -> list[list[str]]:
    """The float candidate (SavedModel, TF runtime) beside its int8 TFLite model (interpreter)."""
    int8, candidate = result.int8, result.weights.get("candidate")
    if not int8.path:
        return [["", ""]]
    rows = [["", "float candidate (SavedModel)", "int8 (TFLite interpreter)"]]
    rows += [[metric, _fmt(int8.float_metrics.get(metric)), _fmt(value)] for metric, value in int8.metrics.items()]
    rows.append(["bytes", _fmt(candidate.saved_model_bytes if candidate else None), _fmt(int8.size_bytes)])
    rows.append(["gzip bytes", _fmt(candidate.gzip_bytes if candidate else None), _fmt(int8.gzip_bytes)])
    for batch in sorted(int8.latency, key=int):
        float_cell = _latency_cell(candidate, batch) if candidate else "-"
        timing = int8.latency[batch]
        int8_cell = f"{timing['median_ms']:.3g} ({timing['p25_ms']:.3g}-{timing['p75_ms']:.3g})"
        rows.append([f"latency, batch {batch} (ms: median, IQR)", float_cell, int8_cell])
    return rows


def graph_scan_rows(result: GateDecision) -> list[list[str]]:
    """A header and a row per model: what its graphs hold, and what the scan let through."""
    rows = [["model", "scan", "op types", "functions", "allowed by security.allow_ops", "op types only it holds"]]
    ops = {name: set(scan.get("ops") or {}) for name, scan in result.graph_scans.items()}
    for name in [name for name in MODEL_ORDER if name in result.graph_scans]:
        scan = result.graph_scans[name]
        others = set().union(*(found for other, found in ops.items() if other != name))
        rows.append(
            [
                MODEL_LABELS.get(name, name),
                "passed" if scan.get("passed") else "refused",
                str(len(ops[name])),
                str(scan.get("functions", "")),
                "; ".join(scan.get("allowed") or []) or "-",
                ", ".join(sorted(ops[name] - others)) or "-" if len(ops) > 1 else "-",
            ]
        )
    return rows


def fine_tuning_rows(record: RecoveryRecord) -> list[list[str]]:
    """A header and a row per evaluation while fine-tuning: step, metric, eval loss, time, best/last."""
    name = record.metric or "metric"
    rows = [["step", name, "eval loss", "seconds", ""]]
    if record.parent is not None:
        rows.append(["parent", _fmt(record.parent), "", "", f"target {_fmt(record.target)}"])
    for evaluation in record.evaluations:
        ends = (("best", record.best_step), ("last", record.last.step))
        marks = [mark for mark, step in ends if evaluation.step == step]
        rows.append(
            [
                str(evaluation.step),
                _fmt(evaluation.metric) if evaluation.metric is not None else "-",
                _fmt(evaluation.loss),
                f"{evaluation.seconds:.1f}",
                ", ".join(marks) + (" (kept)" if marks and evaluation.step == record.best_step else ""),
            ]
        )
    return rows


def _models(result: GateDecision) -> list[str]:
    return [name for name in MODEL_ORDER if name in result.weights]


def _threshold_metrics(result: GateDecision) -> list[str]:
    """Output names of the metrics the thresholds bound, in the order the config gives them."""
    classes = dict.fromkeys(threshold.metric for threshold in result.config.all_thresholds)
    return [metric_output_name(name) for name in classes]


def release_report_png(result: Union[GateDecision, Mapping[str, Any]]) -> bytes:
    """The report's plots: metric per slice, size and speed relative to the baseline, per-layer
    sparsity and width."""
    result = as_gate_result(result)
    models = _models(result)
    metric = (_threshold_metrics(result) or ["example_count"])[0]
    slice_labels = [OVERALL, *sorted(result.slices)]
    figure = Figure(figsize=(13, 8.5))  # not pyplot: no global backend switched under a notebook user
    axes = figure.subplots(2, 2)

    ax = axes[0][0]
    width = 0.8 / len(models)
    x = np.arange(len(slice_labels))
    for index, name in enumerate(models):
        values = [result.metric(name, metric, label) for label in slice_labels]
        values = [np.nan if value is None else value for value in values]
        bars = ax.bar(x + index * width, values, width, label=MODEL_LABELS[name], color=MODEL_COLORS[name])
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    lower_bounds = {
        check.bound
        for check in result.checks
        if check.metric == metric and check.comparator == ">=" and not check.reference
    }
    for bound in lower_bounds:
        ax.axhline(bound, color="#c62828", linestyle="--", linewidth=1, label=f"lower bound {bound:g}")
    ax.set_xticks(x + width * (len(models) - 1) / 2, slice_labels, rotation=20, ha="right")
    ax.set_title(f"{metric} per slice")
    ax.set_ylim(0, max(1.0, ax.get_ylim()[1]) * 1.25)  # headroom for the legend above the bars
    ax.legend(fontsize=8, ncol=3, loc="upper center")

    ax = axes[0][1]
    reference = "baseline" if "baseline" in models else ("serving" if "serving" in models else None)
    quantities = [
        ("params", "params"),
        ("non-zero params", "nonzero_params"),
        ("gzip weights", "weights_gzip_bytes"),
        ("SavedModel bytes", "saved_model_bytes"),
        ("FLOPs", "flops"),
        (f"serving latency, batch {result.config.latency_batch_size}", "latency_ms"),
    ]
    weights = result.weights
    if reference is None:
        ax.text(0.5, 0.5, "no baseline to compare sizes with", ha="center", va="center")
        ax.set_axis_off()
    else:
        candidate = weights["candidate"]
        shown = [
            (label, figure)
            for label, figure in quantities
            if getattr(weights[reference], figure) and getattr(candidate, figure) is not None
        ]
        ratios = [getattr(candidate, figure) / getattr(weights[reference], figure) for _, figure in shown]
        ax.barh([label for label, _ in shown], ratios, color=MODEL_COLORS["candidate"])
        ax.axvline(1.0, color="black", linewidth=1)
        for y, ratio in enumerate(ratios):
            ax.text(ratio, y, f" {ratio:.2f}", va="center", fontsize=8)
        ax.set_title(f"candidate / {MODEL_LABELS[reference]} (lower is smaller or faster)")
        ax.invert_yaxis()

    layers = result.layers
    for ax, column, title in (
        (axes[1][0], "sparsity", "per-layer sparsity"),
        (axes[1][1], "width", "per-layer width"),
    ):
        names = [row.label for row in layers.get("candidate", [])]
        y = np.arange(len(names))
        height = 0.8 / max(len(models), 1)
        for index, name in enumerate(models):
            by_layer = {row.label: getattr(row, column) for row in layers.get(name, [])}
            ax.barh(
                y + index * height,
                [by_layer.get(n, np.nan) for n in names],
                height,
                label=MODEL_LABELS[name],
                color=MODEL_COLORS[name],
            )
        ax.set_yticks(y + height * (len(models) - 1) / 2, names, fontsize=8)
        if column == "sparsity":
            ax.set_xlim(0, 1)
        ax.invert_yaxis()
        ax.set_title(title)
        ax.legend(fontsize=8)

    verdict = "BLESSED" if result.blessed else "NOT BLESSED"
    figure.suptitle(f"Release gate: {verdict}", color="#2e7d32" if result.blessed else "#c62828", fontsize=14)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


# The template ships inside the package (setup.py package_data), so pods and wheels have it.
_HTML = jinja2.Environment(
    loader=jinja2.PackageLoader("tfx_model_pruning.evaluator_gate", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
).get_template("release_report.html.j2")


def release_report_html(result: Union[GateResult, Mapping[str, Any]], png: bytes = b"") -> str:
    """A self-contained page (plots embedded) with the verdict, every check and the comparisons."""
    result = as_gate_result(result)
    if isinstance(result, GateFailure):  # the evaluation itself failed: say so, nothing else is known
        return _HTML.render(
            verdict="NOT BLESSED", blessed=False, header=[], failed=[], error=result.error, checks=[],
            png="", comparison=[[""]], slices=[], unchecked=[], min_slice_examples=0, layers=[], models=[],
            labels=MODEL_LABELS, paths=[], fine_tuning="", not_fine_tuned="", fine_tuning_rows=[], graph_rows=[],
            int8=None,
        )  # fmt: skip
    models = _models(result)
    metrics = _threshold_metrics(result) + ["example_count"]
    slice_rows = []
    for label in [OVERALL, *sorted(result.slices)]:
        for metric in metrics:
            slice_rows.append([label, metric, *(_fmt(result.metric(name, metric, label)) for name in models)])
    by_model = {name: {(row.layer, row.weight): row for row in result.layers.get(name, [])} for name in models}
    layer_rows = []
    for key, candidate_row in by_model.get("candidate", {}).items():
        cells = [candidate_row.label]
        for name in models:
            row = by_model[name].get(key)
            cells += ["×".join(map(str, row.shape)), _fmt(row.sparsity)] if row else ["-", "-"]
        layer_rows.append(cells)
    checks = result.checks_failed_first()
    return _HTML.render(
        verdict=verdict_line(result),
        blessed=result.blessed,
        header=header_rows(result),
        failed=[check.explain() for check in checks if not check.passed],
        error=None,
        checks=[
            {
                "verdict": c.verdict,
                "name": c.name,
                "measured": _fmt(c.measured),
                "bound": _fmt(c.bound),
                "detail": c.detail,
            }
            for c in checks
        ],
        png=base64.b64encode(png).decode("ascii"),
        comparison=comparison_rows(result),
        slices=slice_rows if result.slices else [],
        unchecked=sorted(result.unchecked_slices.items()),
        min_slice_examples=result.config.min_slice_examples,
        layers=layer_rows,
        models=models,
        labels=MODEL_LABELS,
        paths=[(name, result.models[name]) for name in models if name in result.models],
        fine_tuning=result.fine_tuning.summary() if result.fine_tuning is not None else "",
        not_fine_tuned=result.not_fine_tuned,
        fine_tuning_rows=fine_tuning_rows(result.fine_tuning) if result.fine_tuning is not None else [],
        graph_rows=graph_scan_rows(result) if result.graph_scans else [],
        int8=None
        if result.int8 is None
        else {
            "verdict": int8_verdict(result),
            "rows": int8_rows(result),
            "checks": [
                {
                    "verdict": c.verdict,
                    "name": c.name,
                    "measured": _fmt(c.measured),
                    "bound": _fmt(c.bound),
                    "detail": c.detail,
                }
                for c in result.int8.checks
            ],
        },
    )
