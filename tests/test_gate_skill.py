"""The gate refuses a model that learned nothing: no better than always answering the most common
class (Wilson interval deciding), one answer for every example, or no better than the mean label."""

import numpy as np
import pytest

from tfx_model_pruning.evaluator_gate.checks import (
    ANSWERS_VARY,
    BEATS_MAJORITY,
    BEATS_MEAN,
    is_blessed,
    run_checks,
    skill_checks,
)
from tfx_model_pruning.evaluator_gate.config import GateConfig, MetricThreshold
from tfx_model_pruning.evaluator_gate.skill import SkillTally, merge_tallies, tally

ACCURACY = MetricThreshold(metric="BinaryAccuracy", lower_bound=0.7, max_absolute_drop=0.02)
CONFIG = GateConfig(label_key="tips_xf", thresholds=[ACCURACY])


def _taxi_like(collapsed: bool, n: int = 4966, seed: int = 0):
    """Labels 77% zeros as in TFX's taxi eval split; a collapsed model outputs at most 0.0013."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.2288).astype(np.int64)
    if collapsed:
        outputs = rng.uniform(0.0, 0.0013, size=(n, 1))
    else:  # right 85% of the time
        right = rng.random(n) < 0.85
        outputs = np.where(right, labels, 1 - labels).reshape(n, 1) * 0.8 + 0.1
    return labels, outputs


def test_a_collapsed_model_that_passes_every_threshold_is_refused_in_words():
    labels, outputs = _taxi_like(collapsed=True)
    overall = tally(labels, outputs)
    accuracy = overall.accuracy
    assert accuracy == pytest.approx(overall.majority[1]) and accuracy > 0.7  # passes the threshold of 0.7
    results = run_checks(
        CONFIG, {"BinaryAccuracy": "binary_accuracy"}, {"binary_accuracy": accuracy},
        {"binary_accuracy": accuracy + 0.003}, len(labels), 0.8, {}, non_finite={"weights": 0, "predictions": 0},
        skill={"Overall": overall},
    )  # fmt: skip
    failed = {r.name: r for r in results if not r.passed}
    assert set(failed) == {BEATS_MAJORITY, ANSWERS_VARY}, [r.name for r in results if not r.passed]
    assert not is_blessed(results)
    majority = failed[BEATS_MAJORITY].explain()
    assert "not clearly better than the constant answer: always answering 0 is right" in majority
    assert "95% interval" in majority
    collapse = failed[ANSWERS_VARY].explain()
    assert "gives the same answer, 0, to every one of the 4,966 eval examples" in collapse


def test_a_model_that_learned_passes_and_the_point_estimate_alone_does_not():
    labels, outputs = _taxi_like(collapsed=False)
    assert all(r.passed for r in skill_checks(CONFIG, {"Overall": tally(labels, outputs)}))
    # 80 right of 100 with 77 the most common: above the share, but within the interval's reach.
    labels = np.array([0] * 77 + [1] * 23)
    outputs = np.where(np.arange(100) < 80, labels, 1 - labels).astype(float).reshape(-1, 1)
    (beats, varies) = skill_checks(CONFIG, {"Overall": tally(labels, outputs)})
    assert beats.measured == pytest.approx(0.80) and beats.bound == pytest.approx(0.77)
    assert not beats.passed and varies.passed


def test_logits_and_multiclass_outputs_are_read_as_classes():
    labels = np.array([0, 1, 1, 0] * 50)
    logits = np.where(labels == 1, 3.0, -3.0).reshape(-1, 1)  # outside [0, 1]: class 1 above 0
    assert tally(labels, logits).accuracy == 1.0
    three = np.array([0, 1, 2, 2] * 50)
    scores = np.eye(3)[three] * 5.0 - 1.0
    counted = tally(three, scores)
    assert counted.accuracy == 1.0 and counted.majority == ("2", 0.5)
    assert set(counted.predicted_counts) == {"0", "1", "2"}
    one_hot = tally(np.eye(3)[three], scores)
    assert one_hot.label_counts == counted.label_counts


def test_batches_add_up_to_the_whole():
    labels, outputs = _taxi_like(collapsed=False, n=1000)
    whole = tally(labels, outputs)
    parts = merge_tallies([tally(labels[i : i + 128], outputs[i : i + 128]) for i in range(0, 1000, 128)])
    assert parts.label_counts == whole.label_counts and parts.predicted_counts == whole.predicted_counts
    assert parts.accuracy == whole.accuracy
    assert parts.prediction_std == pytest.approx(whole.prediction_std)


def test_slices_must_not_be_clearly_worse_than_their_own_most_common_class():
    labels, outputs = _taxi_like(collapsed=False, n=2000)
    pure = tally(np.zeros(50, dtype=np.int64), np.full((50, 1), 0.9))  # one class: nothing to judge, skipped
    bad = tally(np.array([0] * 95 + [1] * 5), np.full((100, 1), 0.9))  # answers 1 where 95% are 0
    nearly = tally(np.array([0] * 98 + [1] * 2), np.array([0.1] * 97 + [0.9] * 3).reshape(-1, 1))
    results = skill_checks(
        CONFIG, {"Overall": tally(labels, outputs), "a=pure": pure, "a=bad": bad, "a=nearly": nearly}
    )
    by_slice = {r.slice: r for r in results if r.slice}
    assert set(by_slice) == {"a=bad", "a=nearly"}
    assert not by_slice["a=bad"].passed and "clearly worse than" in by_slice["a=bad"].detail
    assert by_slice["a=nearly"].passed  # 0.97 against 0.98 over 100 examples: not clearly worse


def test_regression_must_beat_the_mean_label_and_vary():
    rng = np.random.default_rng(2)
    labels = rng.normal(10.0, 3.0, size=500)
    config = GateConfig(label_key="fare", thresholds=[MetricThreshold(metric="MeanSquaredError", upper_bound=50.0,
                                                                      higher_is_better=False)])  # fmt: skip
    good = skill_checks(config, {"Overall": tally(labels, (labels + rng.normal(0, 1, 500)).reshape(-1, 1))})
    assert [r.name for r in good] == [BEATS_MEAN, ANSWERS_VARY] and all(r.passed for r in good)
    constant = skill_checks(config, {"Overall": tally(labels, np.full((500, 1), 10.0))})
    assert [r.passed for r in constant] == [False, False]


def test_unmeasured_refuses_and_require_skill_false_turns_it_off():
    (row,) = skill_checks(CONFIG, None, "the model's 'serving_default' returns 2 outputs")
    assert not row.passed and "not measured: the model's 'serving_default' returns 2 outputs" in row.detail
    assert "require_skill: false" in row.detail
    single = tally(np.zeros(200, dtype=np.int64), np.full((200, 1), 0.2))
    (row, _) = skill_checks(CONFIG, {"Overall": single})
    assert not row.passed and "every eval label is 0" in row.detail
    off = CONFIG.model_copy(update={"require_skill": False})
    results = run_checks(off, {"BinaryAccuracy": "binary_accuracy"}, {"binary_accuracy": 0.8}, None, 200, 0.0, {},
                         non_finite={"weights": 0, "predictions": 0})  # fmt: skip
    assert not [r for r in results if r.metric in ("accuracy", "predicted_classes", "no_skill")]


def test_a_tally_round_trips_through_json():
    labels, outputs = _taxi_like(collapsed=True, n=300)
    original = tally(labels, outputs)
    assert SkillTally.from_json(original.to_json()) == original
