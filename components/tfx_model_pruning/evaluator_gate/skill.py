"""What a model that learned nothing would score, measured beside the candidate in one pass.

A threshold like "accuracy >= 0.7" passes a model that answers "no" to every example when 77%
of the labels are "no" (TFX's taxi data). So the gate also counts, per slice, the eval labels
(the most common class's share is what always answering it scores; the mean and variance of a
regression label are what always answering the mean scores) and the candidate's answers (how
many classes it ever predicts, how far its outputs spread). The counts are sums, added across
batches, files and workers like the metric states in ``batched_evaluation`` (which runs the
pass); ``checks.skill_checks`` judges them.

Example::

    tallies = read_tallies(output_dir)  # after batched_evaluation.add_skill_tallies(...)
    tallies["Overall"].majority  # ("0", 0.7712): always answering 0 is right 77% of the time
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np
import tensorflow as tf

TALLIES_FILE = "skill_tallies.json"
# A label with more distinct values than this is not a class label (or not one worth counting).
MAX_CLASSES = 1000


@dataclass
class SkillTally:
    """Counts over some examples of one slice: labels, the candidate's answers, and their moments.

    Binary outputs (one column) are counted as class 1 both above 0.5 (probabilities) and above 0
    (logits); ``binary_threshold`` picks one when the tally is read.
    """

    examples: int = 0
    label_counts: Optional[dict[str, int]] = field(default_factory=dict)  # None: not class labels
    predicted_at_half: dict[str, int] = field(default_factory=dict)  # one column, class = output > 0.5; or argmax
    predicted_at_zero: dict[str, int] = field(default_factory=dict)  # one column, class = output > 0
    correct_at_half: int = 0
    correct_at_zero: int = 0
    label_sum: float = 0.0
    label_square_sum: float = 0.0
    prediction_sum: float = 0.0
    prediction_square_sum: float = 0.0
    squared_error_sum: float = 0.0
    prediction_min: float = float("inf")
    prediction_max: float = float("-inf")

    def add(self, other: SkillTally) -> SkillTally:
        self.examples += other.examples
        if self.label_counts is None or other.label_counts is None:
            self.label_counts = None
        else:
            self.label_counts = _add_counts(self.label_counts, other.label_counts)
            if len(self.label_counts) > MAX_CLASSES:
                self.label_counts = None
        self.predicted_at_half = _add_counts(self.predicted_at_half, other.predicted_at_half)
        self.predicted_at_zero = _add_counts(self.predicted_at_zero, other.predicted_at_zero)
        for name in (
            "correct_at_half",
            "correct_at_zero",
            "label_sum",
            "label_square_sum",
            "prediction_sum",
            "prediction_square_sum",
            "squared_error_sum",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.prediction_min = min(self.prediction_min, other.prediction_min)
        self.prediction_max = max(self.prediction_max, other.prediction_max)
        return self

    @property
    def one_column(self) -> bool:
        return bool(self.predicted_at_zero)

    @property
    def binary_threshold(self) -> float:
        """0.5 when the one-column outputs are probabilities (all in [0, 1]), else 0 (logits)."""
        return 0.5 if 0.0 <= self.prediction_min and self.prediction_max <= 1.0 else 0.0

    @property
    def predicted_counts(self) -> dict[str, int]:
        if self.one_column and self.binary_threshold == 0.0:
            return self.predicted_at_zero
        return self.predicted_at_half

    @property
    def accuracy(self) -> Optional[float]:
        if not self.examples or self.label_counts is None:
            return None
        correct = self.correct_at_zero if self.one_column and self.binary_threshold == 0.0 else self.correct_at_half
        return correct / self.examples

    @property
    def majority(self) -> Optional[tuple[str, float]]:
        """The most common label and its share: what always answering it scores."""
        if not self.label_counts or not self.examples:
            return None
        label, count = max(self.label_counts.items(), key=lambda item: (item[1], item[0]))
        return label, count / self.examples

    @property
    def label_variance(self) -> float:
        """The mean squared error of always answering the mean label."""
        mean = self.label_sum / self.examples
        return max(0.0, self.label_square_sum / self.examples - mean * mean)

    @property
    def prediction_std(self) -> float:
        mean = self.prediction_sum / self.examples
        return float(np.sqrt(max(0.0, self.prediction_square_sum / self.examples - mean * mean)))

    @property
    def mean_squared_error(self) -> float:
        return self.squared_error_sum / self.examples

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SkillTally:
        return cls(**data)


def _add_counts(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    merged = dict(a)
    for key, count in b.items():
        merged[key] = merged.get(key, 0) + count
    return merged


def _counts(values: np.ndarray) -> dict[str, int]:
    distinct, counts = np.unique(values, return_counts=True)
    return {_class_name(value): int(count) for value, count in zip(distinct, counts, strict=True)}


def _class_name(value: Any) -> str:
    value = value.item() if isinstance(value, np.generic) else value
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def tally(labels: np.ndarray, predictions: np.ndarray) -> SkillTally:
    """The counts of one batch's rows (labels and the candidate's outputs for the same examples)."""
    labels, predictions = np.asarray(labels), np.asarray(predictions, dtype=np.float64)
    size = len(labels)
    result = SkillTally(examples=size)
    if size == 0:
        return result
    outputs = predictions.reshape(size, -1)
    one_column = outputs.shape[1] == 1
    flat_labels = labels.reshape(size, -1)
    if flat_labels.shape[1] > 1 and flat_labels.shape[1] == outputs.shape[1]:
        label_classes = flat_labels.argmax(axis=1)  # one-hot labels
    elif flat_labels.shape[1] == 1 and labels.dtype.kind in "biuf":
        label_classes = flat_labels[:, 0]
    else:
        label_classes = None
    numeric = label_classes is not None and label_classes.dtype.kind in "biuf"
    if numeric and np.all(np.isfinite(label_classes)) and np.all(label_classes == np.round(label_classes)):
        result.label_counts = _counts(label_classes.astype(np.int64))
    else:
        result.label_counts = None
    if one_column:
        values = outputs[:, 0]
        at_half, at_zero = (values > 0.5).astype(np.int64), (values > 0.0).astype(np.int64)
        result.predicted_at_half, result.predicted_at_zero = _counts(at_half), _counts(at_zero)
        result.prediction_min, result.prediction_max = float(values.min()), float(values.max())
        result.prediction_sum, result.prediction_square_sum = float(values.sum()), float(np.square(values).sum())
        if numeric:
            result.correct_at_half = int(np.sum(at_half == label_classes))
            result.correct_at_zero = int(np.sum(at_zero == label_classes))
            result.label_sum = float(label_classes.sum())
            result.label_square_sum = float(np.square(label_classes.astype(np.float64)).sum())
            result.squared_error_sum = float(np.square(values - label_classes).sum())
    else:
        predicted = outputs.argmax(axis=1)
        result.predicted_at_half = _counts(predicted)
        result.prediction_min, result.prediction_max = float(outputs.min()), float(outputs.max())
        top = outputs.max(axis=1)
        result.prediction_sum, result.prediction_square_sum = float(top.sum()), float(np.square(top).sum())
        if numeric:
            result.correct_at_half = int(np.sum(predicted == label_classes))
    return result


def slice_label(slice_key: tuple) -> str:
    """``"species=2"`` for TFMA's ``(("species", 2),)``; ``"Overall"`` for the empty key."""
    parts = []
    for column, value in slice_key:
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        parts.append(f"{column}={value}")
    return ", ".join(parts) or "Overall"


def write_tallies(slices: list[tuple[str, SkillTally]], output_dir: str) -> None:
    tf.io.gfile.makedirs(output_dir)
    with tf.io.gfile.GFile(os.path.join(output_dir, TALLIES_FILE), "w") as f:
        json.dump({label: one.to_json() for label, one in slices}, f)


def read_tallies(output_dir: str) -> dict[str, SkillTally]:
    """Slice label -> tally, as ``write_tallies`` wrote them (empty if nothing was written)."""
    path = os.path.join(output_dir, TALLIES_FILE)
    if not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path) as f:
        return {label: SkillTally.from_json(data) for label, data in json.load(f).items()}


def merge_tallies(tallies) -> SkillTally:
    total = SkillTally(label_counts={})
    for one in tallies:
        total.add(one)
    return total
