"""The gate's typed result: gate_result.json read back as the same object, and checks put in words
from their fields, never from their names."""

import dataclasses
import json

import numpy as np

from tfx_model_pruning.evaluator_gate.checks import run_checks, unchecked_slices
from tfx_model_pruning.evaluator_gate.config import GateConfig, MetricThreshold
from tfx_model_pruning.evaluator_gate.report import (
    comparison_rows,
    header_rows,
    release_report_html,
    summary_markdown,
    verdict_line,
)
from tfx_model_pruning.evaluator_gate.result import (
    BOUND,
    DROP,
    RELATIVE_DROP,
    REQUIREMENT,
    SKILL,
    CheckResult,
    GateDecision,
    GateFailure,
    LayerRow,
    ModelFigures,
    RunHeader,
    gate_result_from_json,
    read_gate_result,
)
from tfx_model_pruning.evaluator_gate.skill import tally

ACC = "sparse_categorical_accuracy"
NAMES = {"SparseCategoricalAccuracy": ACC}
CONFIG = GateConfig(
    label_key="species",
    thresholds=[
        MetricThreshold(
            metric="SparseCategoricalAccuracy", lower_bound=0.9, max_absolute_drop=0.01, max_relative_drop=0.02
        )
    ],
    slice_feature="species",
    slice_thresholds=[MetricThreshold(metric="SparseCategoricalAccuracy", lower_bound=0.5, max_absolute_drop=0.1)],
    serving_model_dir="/serving",
    min_sparsity=0.85,
    max_params=4000,
    max_flops=100,
    min_size_reduction=0.3,
    max_latency_ms=0.5,
    require_skill=False,
    min_slice_examples=5,
)


def _figures(params, flops=9000, latency=None):
    return {
        "params": params, "kernel_params": params - 100, "kernel_zeros": params // 2, "kernel_sparsity": 0.5,
        "masked_params": params - 200, "masked_sparsity": 0.8, "nonzero_params": params // 2,
        "weights_gzip_bytes": params * 2, "saved_model_bytes": params * 30, "gzip_bytes": params * 10, "flops": flops,
        **({"latency_ms": latency} if latency is not None else {}),
    }  # fmt: skip


LAYERS = [
    {"layer": "hidden_0", "weight": "kernel", "shape": [4, 64], "width": 64, "sparsity": 0.8},
    {"layer": "hidden_0", "weight": "bias", "shape": [64], "width": 64, "sparsity": 0.0},
]


def _decision(flops=9000):
    slices = {
        label: {
            "candidate": {ACC: accuracy, "example_count": n},
            "baseline": {ACC: 0.9, "example_count": n},
            "serving": {ACC: 0.92, "example_count": n},
        }
        for label, (accuracy, n) in {"species=0": (0.95, 40), "species=1": (0.0, 22), "species=2": (0.9, 3)}.items()
    }
    metrics = {"candidate": {ACC: 0.85}, "baseline": {ACC: 0.96}, "serving": {ACC: 0.95}}
    weights = {
        "candidate": _figures(5000, flops, 0.7),
        "baseline": _figures(8000, flops, 0.9),
        "serving": _figures(8000, flops, 0.8),
    }
    checks = run_checks(CONFIG, NAMES, metrics["candidate"], metrics["baseline"], 100, 0.8, weights,
                        serving=metrics["serving"], slices=slices, non_finite={"weights": 0, "predictions": 0},
                        )  # fmt: skip
    return GateDecision(
        checks=checks,
        config=CONFIG,
        models={"candidate": "/c", "baseline": "/b", "serving": "/serving/2"},
        metrics=metrics,
        slices=slices,
        unchecked_slices=unchecked_slices(CONFIG, slices),
        weights={role: ModelFigures.from_json(figures) for role, figures in weights.items()},
        layers={role: [LayerRow.from_json(row) for row in LAYERS] for role in weights},
        judged_serving_version="/serving/2",
        run=RunHeader(pipeline="penguin", run="r1", time="2026-01-01 00:00:00 UTC", push_destination="/serving"),
        evaluated_by="one pass over whole batches",
        graph_scans={
            role: {"passed": True, "ops": {"MatMul": 2, **extra}, "functions": 7, "allowed": [], "refused": []}
            for role, extra in (("candidate", {"Erf": 1}), ("baseline", {}), ("serving", {}))
        },
    )


def _by_name(decision):
    return {check.name: check for check in decision.checks}


def test_the_json_reads_back_as_an_equal_typed_result(tmp_path):
    decision = _decision()
    # As the executor writes it (_io.write_json): sorted keys, indented.
    (tmp_path / "gate_result.json").write_text(json.dumps(decision.to_json(), indent=2, sort_keys=True))
    assert read_gate_result(str(tmp_path / "gate_result.json")) == decision
    assert read_gate_result(str(tmp_path)) == decision, "the evaluation directory names the file too"
    back = GateDecision.from_json(json.loads(json.dumps(decision.to_json())))
    assert back.blessed is False and back.failed_checks == decision.failed_checks
    assert back.checks[0].interval is None or isinstance(back.checks[0].interval, tuple)


def test_the_file_keeps_every_key_its_readers_read():
    written = json.loads(json.dumps(_decision(flops=None).to_json()))
    assert set(written) == {
        "blessed", "config", "models", "metrics", "slices", "unchecked_slices", "weights", "layers",
        "judged_serving_version", "run", "evaluated_by", "fine_tuning", "not_fine_tuned", "graph_scans", "int8",
        "checks", "failed_checks",
    }  # fmt: skip
    assert written["config"] == CONFIG.model_dump()
    assert written["metrics"]["candidate"][ACC] == 0.85
    assert written["weights"]["candidate"]["masked_sparsity"] == 0.8
    assert written["weights"]["candidate"]["flops"] is None, "not countable is written, as null"
    assert written["weights"]["candidate"] == _figures(5000, None, 0.7)
    assert written["layers"]["candidate"] == LAYERS
    assert written["models"]["serving"] == "/serving/2"
    assert written["run"] == {"pipeline": "penguin", "run": "r1", "time": "2026-01-01 00:00:00 UTC",
                              "push_destination": "/serving"}  # fmt: skip
    check = {c["name"]: c for c in written["checks"]}[f"[species=1] {ACC} drop vs parent <= max_absolute_drop"]
    assert {"name", "passed", "measured", "bound", "detail", "interval", "metric", "slice", "reference",
            "comparator", "verdict"} <= set(check)  # fmt: skip
    assert (check["kind"], check["bound_name"], check["reference"], check["reference_value"]) == (
        DROP, "max_absolute_drop", "parent", 0.9,
    )  # fmt: skip
    assert written["failed_checks"] == [c["name"] for c in written["checks"] if not c["passed"]]


def test_figures_and_layer_columns_the_types_do_not_name_are_kept():
    figures = {**_figures(10), "pruned_heads": 3}
    assert ModelFigures.from_json(figures).to_json() == figures
    row = {**LAYERS[0], "kind": "Dense"}
    assert LayerRow.from_json(row).to_json() == row and LayerRow.from_json(row).label == "hidden_0"
    assert LayerRow.from_json(LAYERS[1]).label == "hidden_0/bias"


def test_a_failed_evaluation_reads_back_as_a_failure(tmp_path):
    failure = GateFailure(error="ValueError('no examples')")
    assert failure.to_json() == {"blessed": False, "error": "ValueError('no examples')"}
    (tmp_path / "gate_result.json").write_text(json.dumps(failure.to_json()))
    assert read_gate_result(str(tmp_path)) == failure
    html = release_report_html(failure)
    assert "NOT BLESSED" in html and "ValueError(&#39;no examples&#39;)" in html


def test_the_report_renders_the_typed_result_as_it_renders_its_json():
    decision = _decision()
    written = json.loads(json.dumps(decision.to_json()))
    assert summary_markdown(decision) == summary_markdown(written)
    assert release_report_html(decision, b"png") == release_report_html(written, b"png")
    assert comparison_rows(decision) == comparison_rows(written)
    assert verdict_line(decision) == verdict_line(written) == "NOT BLESSED: 12 of 18 checks failed"
    assert ("push destination", "/serving") in header_rows(decision)
    assert f"- {ACC} on species=1 is 0 (95% interval 0.000-0.149), below the lower bound 0.5" in (
        summary_markdown(decision)
    )


def test_flops_not_countable_is_a_row_of_dashes_and_unmeasured_latency_no_row():
    decision = _decision(flops=None)
    rows = {row[0]: row[1:] for row in comparison_rows(decision)[1:]}
    assert rows["FLOPs per example"] == ["-", "-", "-"]
    decision.weights = {role: dataclasses.replace(each, latency=None) for role, each in decision.weights.items()}
    assert not [row for row in comparison_rows(decision) if row[0].startswith("serving latency")]


def test_latency_rows_give_median_and_quartiles_per_batch_or_why_nothing_was_timed():
    decision = _decision()
    timing = {
        "32": {"median_ms": 4.2, "p25_ms": 4.0, "p75_ms": 4.5, "calls": 30},
        "1": {"median_ms": 1.5, "p25_ms": 1.25, "p75_ms": 1.9, "calls": 30},
    }
    decision.weights = {role: dataclasses.replace(each, latency=timing) for role, each in decision.weights.items()}
    rows = [row for row in comparison_rows(decision) if row[0].startswith("serving latency")]
    assert rows == [
        ["serving latency, batch 1 (ms: median, IQR)", *["1.5 (1.25-1.9)"] * 3],
        ["serving latency, batch 32 (ms: median, IQR)", *["4.2 (4-4.5)"] * 3],
    ]
    why = "serving latency not measured: no examples"
    decision.weights = {
        role: dataclasses.replace(each, latency=None, latency_ms_unmeasured=why)
        for role, each in decision.weights.items()
    }
    assert [row for row in comparison_rows(decision) if row[0] == "serving latency"] == [
        ["serving latency", *[why] * 3]
    ]


def test_every_check_records_its_kind_and_drops_their_reference_value():
    nothing_measured = run_checks(
        CONFIG.model_copy(update={"require_skill": True}), NAMES, {}, None, 0, 0.0, {"candidate": {}},
        slices={}, non_finite=None, skill=None,
    )  # fmt: skip
    labels = np.array([0, 1, 1, 2] * 25)
    skill = {"Overall": tally(labels, np.eye(3)[labels])}
    learned = run_checks(CONFIG.model_copy(update={"require_skill": True}), NAMES, {ACC: 1.0, "example_count": 100},
                         {ACC: 1.0}, 100, 0.9, {}, slices={}, non_finite={"weights": 0, "predictions": 0},
                         skill=skill)  # fmt: skip
    checks = [*_decision().checks, *nothing_measured, *learned]
    assert [check.name for check in checks if check.kind is None] == []
    assert {check.kind for check in checks} == {BOUND, DROP, RELATIVE_DROP, SKILL, REQUIREMENT}
    for check in checks:
        if check.kind in (DROP, RELATIVE_DROP):
            assert check.reference in ("parent", "serving") and check.reference_value is not None
            assert check.bound_name == ("max_absolute_drop" if check.kind == DROP else "max_relative_drop")


def test_a_renamed_check_is_explained_the_same_from_its_fields():
    checks = [check for check in _decision().checks if check.measured is not None and check.comparator is not None]
    assert {check.kind for check in checks} == {BOUND, DROP, RELATIVE_DROP}
    for check in checks:
        renamed = dataclasses.replace(check, name="check 7")
        assert renamed.explain() == check.explain(), check.name
        assert "check 7" not in renamed.explain()


def test_the_sentence_comes_from_kind_metric_slice_bound_and_measured_value():
    bound = CheckResult("c1", False, 0.0, 0.5, "", metric=ACC, slice="species=1", comparator=">=", kind=BOUND)
    assert bound.explain() == f"{ACC} on species=1 is 0, below the lower bound 0.5"
    drop = CheckResult("c2", False, 0.11, 0.01, "", metric=ACC, reference="parent", comparator="<=", kind=DROP,
                       bound_name="max_absolute_drop", reference_value=0.96)  # fmt: skip
    assert drop.explain() == f"{ACC}: drop vs parent of 0.11, more than the allowed 0.01"
    # A name that says "drop" makes no drop of a bound check; the kind alone does.
    named_like_a_drop = dataclasses.replace(bound, name=f"[species=1] {ACC} relative drop vs parent")
    assert named_like_a_drop.explain() == bound.explain()
    relative = dataclasses.replace(drop, kind=RELATIVE_DROP, passed=True, measured=0.005)
    assert relative.explain() == f"{ACC}: relative drop vs parent of 0.005, within the allowed 0.01"
    params = CheckResult("c3", False, 5000, 4000, "", metric="params", comparator="<=", kind=BOUND)
    assert params.explain() == "params is 5000, above the upper bound 4000"


def test_a_check_that_compared_nothing_is_its_name_and_detail():
    missing = CheckResult("serving model to compare with", True, None, None, "none yet under /s", reference="serving",
                          kind=REQUIREMENT)  # fmt: skip
    assert missing.verdict == "NOTE" and missing.explain() == "serving model to compare with: none yet under /s"


def test_a_dict_without_the_newer_fields_still_reads():
    """A check row as an older gate or a hand-made result writes it: no kind, no metric."""
    row = {"name": "[island=a] x >= lower_bound", "passed": False, "measured": 0.5, "bound": 0.8, "detail": "",
           "interval": [0.4, 0.6], "verdict": "FAIL"}  # fmt: skip
    check = CheckResult.from_dict(row)
    assert check.kind is None and check.interval == (0.4, 0.6)
    assert check.explain() == "[island=a] x >= lower_bound"
    data = {**_decision().to_json(), "checks": [row]}
    del data["run"], data["evaluated_by"], data["judged_serving_version"]
    result = gate_result_from_json(data)
    assert isinstance(result, GateDecision) and result.run == RunHeader() and not result.blessed


def test_the_report_names_the_op_types_only_the_candidate_holds():
    decision = _decision()
    markdown = summary_markdown(decision)
    assert "## Model graphs (scanned before loading)" in markdown
    (candidate_row,) = [line for line in markdown.splitlines() if line.startswith("| candidate ")]
    assert "| passed " in candidate_row and "| Erf " in candidate_row
    html = release_report_html(decision)
    assert "Model graphs (scanned before loading)" in html and "<td>Erf</td>" in html
