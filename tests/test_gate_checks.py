"""The gate's checks as pure functions: every bound, measured value and verdict."""

import json

import numpy as np
import pytest

from tfx_model_pruning.evaluator_gate.checks import GateDecision, is_blessed, run_checks, unchecked_slices
from tfx_model_pruning.evaluator_gate.config import GateConfig, MetricThreshold

NAMES = {"SparseCategoricalAccuracy": "sparse_categorical_accuracy"}
EFFICIENCY = {
    "candidate": {"saved_model_bytes": 100_000, "weights_gzip_bytes": 3000, "params": 5000, "flops": 9000,
                  "latency_ms": 0.4},
    "baseline": {"saved_model_bytes": 150_000, "weights_gzip_bytes": 10000, "params": 5000, "flops": 9000},
}  # fmt: skip


FINITE = {"weights": 0, "predictions": 0}


def _run(
    config, candidate=0.95, baseline=0.96, example_count=100, sparsity=0.8, efficiency=EFFICIENCY, non_finite=FINITE
):
    return run_checks(
        config, NAMES, {"sparse_categorical_accuracy": candidate}, {"sparse_categorical_accuracy": baseline},
        example_count, sparsity, efficiency, non_finite=non_finite,
    )  # fmt: skip


def _config(**kwargs):
    """Bounds, drops, slices and efficiency; the no-skill checks have tests of their own (test_gate_skill.py)."""
    threshold = MetricThreshold(metric="SparseCategoricalAccuracy", lower_bound=0.9, max_absolute_drop=0.01)
    return GateConfig(label_key="y", thresholds=[threshold], **{"require_skill": False, **kwargs})


def test_within_every_bound_is_blessed_with_measured_values():
    results = _run(_config(min_sparsity=0.8, max_saved_model_bytes=100_000, min_size_reduction=0.6, max_params=5000,
                           max_flops=9000, max_latency_ms=0.5))  # fmt: skip
    assert is_blessed(results)
    by_name = {r.name: r for r in results}
    assert by_name["size reduction vs parent >= min_size_reduction"].measured == pytest.approx(0.7)
    assert by_name["sparse_categorical_accuracy drop vs parent <= max_absolute_drop"].measured == pytest.approx(0.01)
    assert by_name["serving latency (ms, batch 32) <= max_latency_ms"].bound == 0.5


@pytest.mark.parametrize(
    "kwargs, failing",
    [
        ({"max_saved_model_bytes": 99_999}, "saved model bytes <= max_saved_model_bytes"),
        ({"min_size_reduction": 0.75}, "size reduction vs parent >= min_size_reduction"),
        ({"max_params": 4999}, "params <= max_params"),
        ({"max_flops": 8000}, "FLOPs <= max_flops"),
        ({"max_latency_ms": 0.3}, "serving latency (ms, batch 32) <= max_latency_ms"),
        ({"min_sparsity": 0.81}, "sparsity >= min_sparsity"),
    ],
)
def test_each_efficiency_bound_can_refuse_on_its_own(kwargs, failing):
    results = _run(_config(**kwargs))
    assert not is_blessed(results)
    assert [r.name for r in results if not r.passed] == [failing]


def test_accuracy_bounds_and_empty_split_refuse():
    assert [r.name for r in _run(_config(), candidate=0.94) if not r.passed] == [
        "sparse_categorical_accuracy drop vs parent <= max_absolute_drop"
    ]
    assert [r.name for r in _run(_config(), candidate=0.89, baseline=0.89) if not r.passed] == [
        "sparse_categorical_accuracy >= lower_bound"
    ]
    assert "eval examples >= min_eval_examples" in [r.name for r in _run(_config(), example_count=0) if not r.passed]
    assert not is_blessed([])


def test_too_few_eval_examples_refuse_even_when_every_metric_passes():
    # One perfect example used to bless a model.
    failed = [r for r in _run(_config(), candidate=1.0, baseline=1.0, example_count=1) if not r.passed]
    assert [(r.name, r.measured, r.bound) for r in failed] == [("eval examples >= min_eval_examples", 1, 100)]
    assert is_blessed(_run(_config(min_eval_examples=1), candidate=1.0, baseline=1.0, example_count=1))


def test_accuracy_checks_carry_the_wilson_interval_of_their_sample():
    (row,) = [r for r in _run(_config(), example_count=100) if r.name == "sparse_categorical_accuracy >= lower_bound"]
    low, high = row.interval
    # 95 of 100: the Wilson interval is about 0.888 to 0.978 (Wilson 1927; also scipy's binomtest).
    assert low == pytest.approx(0.8883, abs=1e-3) and high == pytest.approx(0.9785, abs=1e-3)
    assert "95% interval 0.888-0.978 over 100 examples" in row.detail
    (small,) = [r for r in _run(_config(min_eval_examples=1), example_count=10) if r.name == row.name]
    assert small.interval[1] - small.interval[0] > high - low  # fewer examples, less certainty


def test_non_finite_weights_or_predictions_refuse():
    for non_finite in ({"weights": 1, "predictions": 0}, {"weights": 0, "predictions": 7}, None):
        failed = [r.name for r in _run(_config(), non_finite=non_finite) if not r.passed]
        assert failed == ["all weights and predictions finite"], non_finite


def test_missing_measurements_fail_closed():
    results = _run(_config(max_latency_ms=1.0, min_size_reduction=0.1), efficiency={"candidate": {}})
    assert {r.name for r in results if not r.passed} == {
        "serving latency (ms, batch 32) <= max_latency_ms",
        "size reduction vs parent",
    }


def _timed(candidate_ms, parent_ms, serving_ms=None, candidate_bytes=60_000):
    efficiency = {
        "candidate": {**EFFICIENCY["candidate"], "latency_ms": candidate_ms, "saved_model_bytes": candidate_bytes},
        "baseline": {**EFFICIENCY["baseline"], "latency_ms": parent_ms},
    }
    if serving_ms is not None:
        efficiency["serving"] = {**EFFICIENCY["baseline"], "latency_ms": serving_ms}
    return efficiency


def test_latency_and_size_ratios_are_checked_against_every_baseline():
    config = _config(max_latency_ratio=0.7, max_size_ratio=0.5, serving_model_dir="/serving")
    results = _run(config, efficiency=_timed(6.0, 10.0, serving_ms=8.0))
    ratios = {r.name: r for r in results if r.kind == "ratio"}
    assert sorted(ratios) == [
        "SavedModel bytes vs parent <= max_size_ratio",
        "SavedModel bytes vs serving <= max_size_ratio",
        "serving latency (batch 32) vs parent <= max_latency_ratio",
        "serving latency (batch 32) vs serving <= max_latency_ratio",
    ]
    latency = ratios["serving latency (batch 32) vs parent <= max_latency_ratio"]
    assert latency.passed and latency.measured == pytest.approx(0.6) and latency.reference_value == 10.0
    slower = ratios["serving latency (batch 32) vs serving <= max_latency_ratio"]
    assert not slower.passed and slower.measured == pytest.approx(0.75)
    assert slower.explain() == (
        "serving latency vs serving: 0.75x, above the allowed 0.7x (batch 32, medians of calls in alternation "
        "on eval examples: candidate 6 ms, serving 8 ms)"
    )
    assert ratios["SavedModel bytes vs parent <= max_size_ratio"].measured == pytest.approx(0.4)


def test_a_ratio_with_nothing_measured_or_nothing_to_compare_refuses():
    unmeasured = _timed(6.0, 10.0)
    del unmeasured["candidate"]["latency_ms"]
    unmeasured["candidate"]["latency_ms_unmeasured"] = "serving latency not measured: no examples"
    (check,) = [
        r for r in _run(_config(max_latency_ratio=0.7), efficiency=unmeasured) if r.bound_name == "max_latency_ratio"
    ]
    assert not check.passed and "no examples" in check.detail
    alone = {"candidate": _timed(6.0, 10.0)["candidate"]}
    (check,) = [
        r for r in _run(_config(max_latency_ratio=0.7), efficiency=alone) if r.bound_name == "max_latency_ratio"
    ]
    assert not check.passed and "needs the parent model" in check.detail


@pytest.mark.parametrize("setting", ["max_latency_ratio", "max_size_ratio"])
def test_a_ratio_must_be_positive(setting):
    for bad in (0.0, -0.5):
        with pytest.raises(ValueError, match=setting):
            _config(**{setting: bad})


SLICE_THRESHOLD = MetricThreshold(metric="SparseCategoricalAccuracy", lower_bound=0.5, max_absolute_drop=0.1)


def _slices(**accuracy_and_count):
    return {
        label: {
            "candidate": {"sparse_categorical_accuracy": acc, "example_count": n},
            "baseline": {"sparse_categorical_accuracy": 0.9, "example_count": n},
        }
        for label, (acc, n) in accuracy_and_count.items()
    }


def test_drops_are_checked_against_the_serving_model_too():
    config = _config(serving_model_dir="/serving")
    results = run_checks(
        config, NAMES, {"sparse_categorical_accuracy": 0.95}, {"sparse_categorical_accuracy": 0.95},
        100, 0.8, EFFICIENCY, serving={"sparse_categorical_accuracy": 0.99}, non_finite=FINITE,
    )  # fmt: skip
    assert [r.name for r in results if not r.passed] == [
        "sparse_categorical_accuracy drop vs serving <= max_absolute_drop"
    ]
    (failed,) = [r for r in results if not r.passed]
    assert failed.measured == pytest.approx(0.04) and "serving 0.99" in failed.detail


def test_no_serving_model_passes_only_when_not_required():
    for required in (False, True):
        config = _config(serving_model_dir="/serving", require_serving_model=required)
        results = _run(config)
        (check,) = [r for r in results if r.name == "serving model to compare with"]
        assert check.passed is (not required)
        assert is_blessed(results) is (not required)


def test_small_slices_are_listed_not_checked_and_a_missing_slice_feature_refuses():
    config = _config(slice_feature="island", slice_thresholds=[SLICE_THRESHOLD], min_slice_examples=5)
    slices = _slices(**{"island=a": (0.95, 40), "island=b": (0.0, 3)})
    results = run_checks(config, NAMES, {"sparse_categorical_accuracy": 0.95}, {"sparse_categorical_accuracy": 0.96},
                         100, 0.8, EFFICIENCY, slices=slices, non_finite=FINITE)  # fmt: skip
    assert is_blessed(results)
    assert not [r for r in results if "island=b" in r.name]
    assert unchecked_slices(config, slices) == {"island=b": 3}

    slices["island=b"]["candidate"]["example_count"] = 5
    results = run_checks(config, NAMES, {"sparse_categorical_accuracy": 0.95}, {"sparse_categorical_accuracy": 0.96},
                         100, 0.8, EFFICIENCY, slices=slices, non_finite=FINITE)  # fmt: skip
    assert [r.name for r in results if not r.passed] == [
        "[island=b] sparse_categorical_accuracy >= lower_bound",
        "[island=b] sparse_categorical_accuracy drop vs parent <= max_absolute_drop",
    ]
    results = run_checks(config, NAMES, {"sparse_categorical_accuracy": 0.95}, {"sparse_categorical_accuracy": 0.96},
                         100, 0.8, EFFICIENCY, slices={}, non_finite=FINITE)  # fmt: skip
    assert [r.name for r in results if not r.passed] == ["slices by island computed"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"slice_thresholds": [SLICE_THRESHOLD]}, "slice_thresholds need a slice_feature"),
        ({"slice_feature": "island"}, "no slice_thresholds"),
        ({"require_serving_model": True}, "require_serving_model needs serving_model_dir"),
        ({"slice_feature": "island", "slice_thresholds": [SLICE_THRESHOLD, SLICE_THRESHOLD]}, "more than one entry"),
    ],
)
def test_inconsistent_slice_and_serving_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _config(**kwargs)


@pytest.mark.parametrize("candidate, blessed", [(0.96, True), (0.9599, False)])
def test_a_drop_equal_to_its_bound_in_float32_passes_and_a_bit_more_refuses(candidate, blessed):
    # TFMA hands over float32 values: 0.99 - 0.96 measures 0.0300000310, not 0.03.
    threshold = MetricThreshold(metric="SparseCategoricalAccuracy", max_absolute_drop=0.03)
    config = GateConfig(label_key="y", thresholds=[threshold])
    results = _run(config, candidate=float(np.float32(candidate)), baseline=float(np.float32(0.99)))
    (drop,) = [r for r in results if "drop" in r.name]
    assert drop.measured > 0.03 and drop.passed is blessed


def test_each_check_says_its_metric_slice_reference_and_comparator():
    config = _config(serving_model_dir="/serving", slice_feature="island", slice_thresholds=[SLICE_THRESHOLD],
                     max_flops=9000)  # fmt: skip
    slices = _slices(**{"island=a": (0.95, 40)})
    results = run_checks(config, NAMES, {"sparse_categorical_accuracy": 0.95}, {"sparse_categorical_accuracy": 0.96},
                         100, 0.8, EFFICIENCY, serving={"sparse_categorical_accuracy": 0.95}, slices=slices,
                         non_finite=FINITE)  # fmt: skip
    fields = {(r.metric, r.slice, r.reference, r.comparator): r for r in results}
    accuracy = "sparse_categorical_accuracy"
    assert fields[(accuracy, None, None, ">=")].bound == 0.9
    assert fields[(accuracy, None, "parent", "<=")].measured == pytest.approx(0.01)
    assert fields[(accuracy, None, "serving", "<=")].measured == pytest.approx(0.0)
    assert fields[(accuracy, "island=a", None, ">=")].name == "[island=a] sparse_categorical_accuracy >= lower_bound"
    assert fields[("flops", None, None, "<=")].bound == 9000
    assert {r.verdict for r in results} == {"PASS"}


def test_the_decision_json_reads_back_as_the_same_decision():
    results = _run(_config(min_sparsity=0.9))
    decision = GateDecision(
        checks=results, config=_config(), models={"candidate": "/c"}, metrics={"candidate": {}},
        slices={}, unchecked_slices={}, weights={}, layers={}, judged_serving_version="/serving/3",
    )  # fmt: skip
    written = json.loads(json.dumps(decision.to_json()))
    assert written["blessed"] is False and written["failed_checks"] == ["sparsity >= min_sparsity"]
    assert written["checks"][-1]["verdict"] in ("PASS", "FAIL")
    assert GateDecision.from_json(written) == decision


def test_each_check_explains_itself_in_words_and_a_first_release_is_a_note():
    config = _config(serving_model_dir="/serving", min_sparsity=0.85, max_params=4000)
    results = {r.name: r for r in _run(config, candidate=0.85, baseline=0.96, sparsity=0.8)}
    bound = results["sparse_categorical_accuracy >= lower_bound"]
    assert bound.explain() == (
        "sparse_categorical_accuracy is 0.85 (95% interval 0.767-0.907), below the lower bound 0.9"
    )
    drop = results["sparse_categorical_accuracy drop vs parent <= max_absolute_drop"]
    assert drop.explain() == "sparse_categorical_accuracy: drop vs parent of 0.11, more than the allowed 0.01"
    assert results["sparsity >= min_sparsity"].explain() == "sparsity is 0.8, below the lower bound 0.85"
    assert results["params <= max_params"].explain() == "params is 5000, above the upper bound 4000"
    first = results["serving model to compare with"]
    assert first.verdict == "NOTE" and first.explain().startswith("serving model to compare with: none yet under")
    assert {r.verdict for r in results.values()} == {"PASS", "FAIL", "NOTE"}
