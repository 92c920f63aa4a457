"""What pruning did to a model: per-layer sparsity, parameter counts and compressed size."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from dataclasses import asdict
from typing import Any, Iterable, Optional

import numpy as np
import tensorflow as tf
from tabulate import tabulate

from tfx_model_pruning.engine.masks import PrunableWeight, iter_prunable_weights
from tfx_model_pruning.engine.restored import count_params, model_variables
from tfx_model_pruning.engine.results import OneShotResult, PruningResult, SensitivityResult, StructureChange, WeightRow
from tfx_model_pruning.engine.saved_model import MASKS_RELATIVE_PATH

# Below this share of the requested fraction the summary warns that barriers kept most channels.
COVERAGE_WARNING_RATIO = 0.8
# Compressed sizes stand for what a zero buys on disk or on the wire, pruned and parent measured
# alike. Level 1 is 3x faster than 6 on pruned weights (80 MB: 0.8 s vs 2.6 s; level 9 took 33 s,
# degrading on long runs of zeros) for a 27% larger output, and the sizes are measured four times
# per prune step (weights and SavedModel, before and after), so it is what keeps them cheap.
GZIP_LEVEL = 1


def gzip_size(directory: str, exclude: Iterable[str] = (MASKS_RELATIVE_PATH,)) -> int:
    """Bytes of ``directory`` as a gzip-compressed tar (``GZIP_LEVEL``), i.e. what a zero buys on disk.

    The masks are bookkeeping for fine-tuning, not part of what is served, so they are left out.
    """
    excluded = {os.path.normpath(path) for path in exclude}
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=GZIP_LEVEL, mtime=0) as zipped:
        with tarfile.open(fileobj=zipped, mode="w") as tar:
            for root, _, files in sorted(tf.io.gfile.walk(directory)):
                for name in sorted(files):
                    full = os.path.join(root, name)
                    relative = os.path.relpath(full, directory)
                    if os.path.normpath(relative) in excluded:
                        continue
                    with tf.io.gfile.GFile(full, "rb") as f:
                        data = f.read()
                    info = tarfile.TarInfo(relative)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return len(buffer.getvalue())


def directory_size(directory: str) -> int:
    return sum(
        tf.io.gfile.stat(os.path.join(root, name)).length
        for root, _, files in tf.io.gfile.walk(directory)
        for name in files
    )


def weight_stats(model: Any, masks: Optional[dict[str, np.ndarray]] = None, compress: bool = True) -> dict[str, Any]:
    """Sparsity of a model measured from its weights (not from what a report claims).

    ``masked_sparsity`` covers the weights the masks name (the pruned layers) and equals
    ``kernel_sparsity`` when the model carries no masks. ``compress=False`` leaves out
    ``weights_gzip_bytes``, the one figure that compresses every weight.
    """
    total_kernel = zero_kernel = total_masked = zero_masked = 0
    for weight in iter_prunable_weights(model):
        values = weight.variable.numpy()
        zeros = int(np.count_nonzero(values == 0))
        total_kernel += values.size
        zero_kernel += zeros
        if not masks or weight.key in masks:
            total_masked += values.size
            zero_masked += zeros
    stats = {
        "params": count_params(model),
        "kernel_params": total_kernel,
        "kernel_zeros": zero_kernel,
        "kernel_sparsity": zero_kernel / total_kernel if total_kernel else 0.0,
        "masked_params": total_masked,
        "masked_sparsity": zero_masked / total_masked if total_masked else 0.0,
        "nonzero_params": count_params(model) - zero_kernel,
    }
    if compress:
        stats["weights_gzip_bytes"] = weights_gzip_size(model)
    return stats


def weights_gzip_size(model: Any) -> int:
    """Bytes of the model's weights, gzip-compressed (``GZIP_LEVEL``).

    Taken from the weights themselves, so optimizer state or graph size that one SavedModel
    carries and another does not cannot blur what pruning bought.
    """
    raw = b"".join(np.ascontiguousarray(variable.numpy()).tobytes() for variable in model_variables(model))
    return len(gzip.compress(raw, compresslevel=GZIP_LEVEL, mtime=0))


def layer_table(model: Any) -> list[dict[str, Any]]:
    """Each prunable weight's shape, width (output units/filters) and measured sparsity."""
    rows = []
    for weight in iter_prunable_weights(model):
        values = weight.variable.numpy()
        rows.append(
            {
                "layer": weight.layer_name,
                "weight": weight.attribute,
                "shape": list(values.shape),
                "width": int(values.shape[-1]) if values.ndim else 1,
                "sparsity": float(np.count_nonzero(values == 0) / values.size) if values.size else 0.0,
            }
        )
    return rows


def layer_rows(weights: Iterable[PrunableWeight], nonzeros_before: dict[str, int]) -> list[WeightRow]:
    rows = []
    for weight in weights:
        values = weight.variable.numpy()
        nonzero_after = int(np.count_nonzero(values))
        rows.append(
            WeightRow(
                layer=weight.layer_name,
                weight=weight.attribute,
                shape=list(values.shape),
                params=int(values.size),
                nonzeros_before=nonzeros_before[weight.key],
                nonzeros_after=nonzero_after,
                sparsity_before=1.0 - nonzeros_before[weight.key] / values.size,
                sparsity_after=1.0 - nonzero_after / values.size,
                protected_by=weight.protected_by,
            )
        )
    return rows


def _criterion(config: dict[str, Any]) -> str:
    if config["method"] == "layer_removal":
        return (
            f"greedy layer/block removal, each followed by {config['fine_tune_steps']} fine-tuning steps, "
            f"kept while the validation metric drops by at most {config['tolerance']}"
        )
    if config["method"] == "structured" and config["scope"] == "sensitivity":
        return (
            f"structured ({config['criterion']}), per-group fractions allocated from sensitivity curves "
            f"to keep at most {config['flops_budget']:.0%} of the FLOPs"
        )
    if config["method"] == "structured":
        return (
            f"structured ({config['criterion']}): remove {config['prune_fraction']:.0%} of the removable "
            f"units/filters ({config['scope']}), at least {config['min_units']} kept per layer"
            + (
                f", kept widths rounded up to a multiple of {config['width_multiple']}"
                if config.get("width_multiple", 1) > 1
                else ""
            )
        )
    if config["method"] in ("wanda", "sparsegpt"):
        amount = (
            f"N:M pattern {config['n_m']}"
            if config.get("n_m") is not None
            else f"target sparsity {config['target_sparsity']:.1%} ({config['allocation']} across layers)"
        )
        return (
            f"{config['method']}, one-shot from {config['calibration_examples']} calibration examples, layer by "
            f"layer: {amount}"
        )
    if config.get("n_m") is not None:
        return f"magnitude: N:M pattern {config['n_m']} along each kernel's input axis"
    if config.get("scope") == "sensitivity":
        return (
            f"magnitude: target sparsity {config['target_sparsity']:.1%}, per-layer sparsities allocated from "
            "sensitivity curves (sensitivity.png)"
        )
    if config.get("target_sparsity") is not None:
        return f"magnitude: target sparsity {config['target_sparsity']:.1%} ({config['scope']})"
    return f"magnitude: |w| < {config['magnitude_threshold']}"


def _latency(stats: dict[str, Any], batch_size: int) -> str:
    median, iqr = stats[f"latency_ms_batch_{batch_size}"], stats.get(f"latency_iqr_ms_batch_{batch_size}")
    if median is None:
        return "not measured"
    return f"{median:.3f} ({iqr[0]:.3f}–{iqr[1]:.3f})" if iqr else f"{median:.3f}"


def _or_unmeasured(value: Any) -> Any:
    # A model saved with tf.saved_model.save has no Keras layers to count FLOPs from.
    return "not measured (no Keras layers)" if value is None else value


def summary_markdown(result: PruningResult) -> str:
    """A readable rendering of a pruning result."""
    before, after = asdict(result.before), asdict(result.after)
    rows = [
        ["params", before["params"], after["params"]],
        ["non-zero params", before["nonzero_params"], after["nonzero_params"]],
        ["sparsity of pruned layers", f"{before['masked_sparsity']:.2%}", f"{after['masked_sparsity']:.2%}"],
        ["sparsity of all kernels", f"{before['kernel_sparsity']:.2%}", f"{after['kernel_sparsity']:.2%}"],
        ["FLOPs per example", _or_unmeasured(before["flops"]), _or_unmeasured(after["flops"])],
        ["CPU latency, batch 1 (ms, median)", _latency(before, 1), _latency(after, 1)],
        ["CPU latency, batch 64 (ms, median)", _latency(before, 64), _latency(after, 64)],
        ["gzip bytes (weights only)", before["weights_gzip_bytes"], after["weights_gzip_bytes"]],
        ["gzip bytes (whole SavedModel)", before["gzip_bytes"], after["gzip_bytes"]],
        ["SavedModel bytes", before["saved_model_bytes"], after["saved_model_bytes"]],
    ]
    lines = [
        "# Pruning report",
        "",
        *([f"Method chosen by the goal: {result.method_reason}.", ""] if result.method_reason else []),
        f"Criterion: {_criterion(result.config)}.",
        "",
        tabulate(rows, headers=["", "before", "after"], tablefmt="github", disable_numparse=True),
        "",
        *(
            ["Latencies: before and after timed in alternation; median (interquartile range).", ""]
            if result.after.latency_timing == "in alternation"
            else []
        ),
        "## Layers",
        "",
    ]
    if result.layer_removal is not None:
        removal = result.layer_removal
        lines.append(f"Metric: {removal.metric} (original {removal.baseline:.4f}).")
        lines.append("")
        rows = [
            [
                step.removed,
                step.candidates,
                f"{step.drop_before_fine_tune:.4f}",
                f"{step.drop_after_fine_tune:.4f}",
                step.params,
                "kept" if step.kept else "rolled back",
            ]
            for step in removal.steps
        ]
        headers = ["step", "candidates", "drop before fine-tune", "drop after", "params", "verdict"]
        lines.append(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))
        lines += ["", f"Stopped: {removal.stop_reason}."]
    elif result.structure is not None:
        lines += coverage_lines(result.structure, result.config.get("prune_fraction"))
        if result.dropped_masks:
            lines += [
                f"**The input's {len(result.dropped_masks)} magnitude-pruning masks were dropped**: their zeros "
                "stay in the kept weights, but fine-tuning no longer holds them at zero.",
                "",
            ]
        widths = [[name, w.before, w.after] for name, w in result.structure.widths.items()]
        lines.append(tabulate(widths, headers=["layer", "width before", "width after"], tablefmt="github"))
        lines += ["", "## Barriers (channels through these layers keep their width)", ""]
        barriers = result.structure.barriers or {"(none)": ""}
        lines += [f"- {name}: {reason}" for name, reason in barriers.items()]
        if result.structure.approximate:
            lines += ["", "## Not exact: these layers' outputs changed beyond the removed channels (fine-tune)", ""]
            lines += [f"- {name}: {reason}" for name, reason in result.structure.approximate.items()]
    else:
        table = [
            [
                row.layer,
                row.weight,
                "x".join(map(str, row.shape)),
                row.params,
                row.nonzeros_after,
                f"{row.sparsity_after:.2%}",
                row.protected_by or "",
            ]
            for row in result.weights or []
        ]
        headers = ["layer", "weight", "shape", "params", "non-zeros", "sparsity", "protected"]
        lines.append(tabulate(table, headers=headers, tablefmt="github"))
    if result.one_shot is not None:
        lines += _one_shot_lines(result.one_shot)
    if result.sensitivity is not None:
        lines += _sensitivity_lines(result.sensitivity)
    lines.append("")
    return "\n".join(lines)


def _one_shot_lines(one_shot: OneShotResult) -> list[str]:
    rows = [
        [
            row.layer,
            row.weight,
            row.kind,
            row.inputs,
            row.calibration_rows,
            f"{row.sparsity:.2%}",
            "" if row.relative_error is None else f"{row.relative_error:.4f}",
            row.recalibrated or "",
            f"{row.seconds:.2f}",
        ]
        for row in one_shot.layers
    ]
    headers = ["layer", "weight", "as", "inputs", "calibration rows", "sparsity", "layer error", "BatchNorm", "s"]
    if one_shot.reconstruct == "dense_outputs":
        error = (
            "||X W_pruned - D W||^2 / ||D W||^2 on the calibration rows, X the layer's inputs in the pruned "
            "model and D in the unpruned one (so it counts the drift of the layers before)."
        )
    else:
        error = "||X (W - W_pruned)||^2 / ||X W||^2 on the calibration rows."
    method = one_shot.method + (f", reconstructing the {one_shot.reconstruct}" if one_shot.reconstruct else "")
    return [
        "",
        f"## One-shot ({method.replace('_', ' ')}), in the order the layers were pruned",
        "",
        f"{one_shot.calibration_examples} calibration examples, {one_shot.seconds:.1f} s; the largest layer "
        f"statistics held at once: {one_shot.peak_statistics_bytes / 2**20:.1f} MiB. Layer error: {error} "
        "BatchNorm: the one whose moving statistics were recomputed for the pruned outputs.",
        "",
        tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True),
    ]


def coverage_lines(structure: StructureChange, fraction: Optional[float]) -> list[str]:
    """How much of the whole model was removed, against what was asked, said first."""
    line = (
        f"Removed {structure.channels_removed} of {structure.channels_before} Dense/convolution channels "
        f"({structure.removed_share:.1%})"
    )
    if fraction is None:
        return [line + ".", ""]
    line += f"; asked for {fraction:.0%}."
    if structure.removed_share < COVERAGE_WARNING_RATIO * fraction:
        line = (
            f"**Warning: far less was removed than asked.** {line} Channels behind barriers keep their "
            "width; the barriers are listed below (register a layer handler for a custom layer)."
        )
    return [line, ""]


def _sensitivity_lines(sensitivity: SensitivityResult) -> list[str]:
    levels = sensitivity.curves[0].levels
    rows = [
        [curve.key, f"{sensitivity.allocation[curve.key]:.2f}", *[f"{loss:.4f}" for loss in curve.losses]]
        for curve in sensitivity.curves
    ]
    headers = ["pruned alone", "allocated", *[f"{level:.2f}" for level in levels]]
    return [
        "",
        "## Sensitivity (loss on held-out examples, each layer or group pruned alone)",
        "",
        tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True),
        "",
        f"Dense loss: {sensitivity.dense_loss:.4f}. Plot: sensitivity.png",
    ]
