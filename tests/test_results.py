"""Typed results and their JSON form: a written report reads back as the same object, old ones too."""

import json
import os

import pytest

from tfx_model_pruning.engine.results import (
    Curve,
    LayerRemovalResult,
    LayerWidth,
    ModelStats,
    PruningResult,
    RemovalStep,
    SensitivityResult,
    StructureChange,
    WeightRow,
)

DATA = os.path.join(os.path.dirname(__file__), "data")


def _stats(params: int, flops=1000) -> ModelStats:
    return ModelStats(
        params=params, kernel_params=params - 10, kernel_zeros=0, kernel_sparsity=0.0, masked_params=params - 10,
        masked_sparsity=0.0, nonzero_params=params, weights_gzip_bytes=params * 3, flops=flops,
        latency_ms_batch_1=0.5, latency_ms_batch_64=0.9, saved_model_bytes=10_000, gzip_bytes=4000,
    )  # fmt: skip


def _round_trip(result: PruningResult) -> PruningResult:
    return PruningResult.from_json(json.loads(json.dumps(result.to_json())))


def test_every_kind_of_result_reads_back_as_written():
    common = dict(config={"method": "structured"}, input_model="in", output_model="out", signatures=["serving_default"])
    sensitivity = SensitivityResult(0.3, [Curve("a+b", 0, [0.25, 0.5], [0.31, 0.4])], {"a+b": 0.5}, flops_budget=0.6)
    structured = PruningResult(
        **common,
        before=_stats(500),
        after=_stats(200, flops=None),
        structure=StructureChange(
            10, 5, {"a": LayerWidth(8, 4)}, {"lambda": "not understood"}, 500, 200, 24, 4, sensitivity=sensitivity
        ),
        sensitivity=sensitivity,
        dropped_masks=["a::kernel"],
    )
    assert _round_trip(structured) == structured
    magnitude = PruningResult(
        **{**common, "config": {"method": "magnitude"}},
        before=_stats(500),
        after=_stats(500),
        weights=[WeightRow("a", "kernel", [4, 8], 32, 32, 8, 0.0, 0.75, None)],
    )
    assert _round_trip(magnitude) == magnitude
    removal = LayerRemovalResult("loss", 0.3, 0.01, [RemovalStep("layer a", 3, 0.02, 0.005, 400, True)], None, 500, 400)
    removed = PruningResult(
        **{**common, "config": {"method": "layer_removal"}},
        before=_stats(500),
        after=_stats(400),
        layer_removal=removal,
    )
    assert _round_trip(removed) == removed
    assert removed.to_json()["layer_removal"]["removed"] == ["layer a"]


def test_a_report_written_by_release_0_1_still_reads():
    with open(os.path.join(DATA, "report_magnitude_v0.1.json")) as f:
        legacy = json.load(f)  # a real report.json of the previous release (penguin, magnitude 50%)
    result = PruningResult.from_json(legacy)
    assert result.after.masked_sparsity == pytest.approx(0.5)
    assert result.before.input_saved_model_bytes == legacy["before"]["input_saved_model_bytes"]
    assert [row.layer for row in result.weights] == [row["layer"] for row in legacy["layers"]]
    assert result.structure is None and result.layer_removal is None


def test_old_structured_and_layer_removal_layouts_read():
    base = {
        "config": {"method": "structured"}, "input_model": "in", "output_model": "out", "signatures": [],
        "before": json.loads(json.dumps(_stats(500).__dict__)), "after": json.loads(json.dumps(_stats(200).__dict__)),
    }  # fmt: skip
    structured = PruningResult.from_json(
        {**base, "widths": {"a": {"before": 8, "after": 4}}, "barriers": {}, "removed_units": 4, "removable_units": 8,
         "dropped_masks": [], "sensitivity": None}
    )  # fmt: skip
    assert structured.structure == StructureChange(8, 4, {"a": LayerWidth(8, 4)}, {}, 500, 200)
    steps = [{"removed": "layer a", "candidates": 2, "drop_before_fine_tune": 0.1, "drop_after_fine_tune": 0.0,
              "params": 400, "kept": True}, {"stop": "no candidate left"}]  # fmt: skip
    removal = {"metric": "loss", "baseline": 0.3, "tolerance": 0.01, "steps": steps, "removed": ["layer a"],
               "params_before": 500, "params_after": 400}  # fmt: skip
    result = PruningResult.from_json({**base, "config": {"method": "layer_removal"}, "layer_removal": removal})
    assert result.layer_removal.stop_reason == "no candidate left"
    assert result.layer_removal.removed == ["layer a"] and len(result.layer_removal.steps) == 1
