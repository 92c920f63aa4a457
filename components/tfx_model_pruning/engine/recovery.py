"""Fine-tuning until recovered: the parent's metric as the target, evaluations, the stop rule, best weights.

One ``RecoveryMonitor`` serves every training path (Keras's ``fit`` and the engine's masked loop):
the path trains ``interval`` batches, calls ``monitor.evaluate(step)`` and stops when it returns a
reason. The monitor keeps a copy of the weights of the best evaluation and puts them back in
``finish``; the masks hold at every evaluation, so the restored weights keep their zeros.

Example::

    evaluator = Evaluator(eval_dataset, loss, "SparseCategoricalAccuracy")
    parent_value, _ = evaluator(parent)
    monitor = RecoveryMonitor(model, evaluator, config.recovery, parent_value, budget_steps=800)
    ...  # train, and after every interval: if monitor.evaluate(step): break
    record = monitor.finish()
    print(record.summary())  # recovered 0.955 of 0.960 in 340 steps (stopped: recovered)
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

import keras as keras3
import numpy as np
import tensorflow as tf
import tf_keras

from tfx_model_pruning.engine import progress
from tfx_model_pruning.engine.config import RecoveryConfig
from tfx_model_pruning.engine.gradual import per_example_loss
from tfx_model_pruning.engine.keras_names import metric_class
from tfx_model_pruning.engine.restored import call, is_restored, model_variables

RECOVERED = "recovered"
PLATEAU = "plateau"
BUDGET = "budget"
EPOCHS = "epochs"  # a fixed count ran out: the user's choice, no rule stopped it


class RecoveryError(ValueError):
    """Recovery cannot be measured as configured (a model with several outputs, no eval data)."""


@dataclass
class Evaluation:
    step: int
    metric: Optional[float]
    loss: float
    seconds: float  # since fine-tuning began, evaluations included


@dataclass
class RecoveryRecord:
    """What fine-tuning until recovered did: fine_tuning.json's ``recovery``, the CLI's line, MLMD's properties."""

    metric: Optional[str]
    higher_is_better: bool
    parent: Optional[float]  # the parent's metric on the eval split; None without a parent or metric
    target: Optional[float]  # parent minus the tolerance (plus, where lower is better)
    stop_reason: str  # recovered | plateau | budget | epochs
    budget: Optional[str]  # which budget ran out: max_steps, max_epochs or max_seconds
    steps: int  # batches trained
    best_step: int
    restored_best: bool  # the best evaluation was not the last: its weights were put back
    evaluations: list[Evaluation] = field(default_factory=list)
    train_seconds: float = 0.0
    eval_seconds: float = 0.0

    @property
    def best(self) -> Evaluation:
        return next(e for e in self.evaluations if e.step == self.best_step)

    @property
    def last(self) -> Evaluation:
        return self.evaluations[-1]

    @property
    def recovered(self) -> bool:
        return self.stop_reason == RECOVERED

    def summary(self) -> str:
        """One line: 'recovered 0.955 of 0.960 in 340 steps (stopped: recovered)', or what to raise."""
        best = self.best
        shown = best.metric if best.metric is not None else best.loss
        what = f"{_figure(shown)} of {_figure(self.parent)}" if self.parent is not None else f"{_figure(shown)}"
        name = self.metric or "eval loss"
        if self.stop_reason == RECOVERED:
            return f"recovered {what} ({name}) in {self.steps} steps (stopped: recovered)"
        restored = f", best at step {best.step} restored" if self.restored_best else ""
        if self.stop_reason == BUDGET:
            advice = f": raise retrain.recovery.{self.budget}" if self.parent is not None else ""
            return f"budget spent at {what} ({name}) after {self.steps} steps{restored}{advice}"
        if self.stop_reason == PLATEAU:
            return f"plateau at {what} ({name}) after {self.steps} steps (stopped: no improvement){restored}"
        return f"{what} ({name}) after a fixed {self.steps} steps (stopped: epochs)"

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record["summary"] = self.summary()
        record["best"] = asdict(self.best)
        record["last"] = asdict(self.last)
        return record

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> RecoveryRecord:
        fields = {key: value for key, value in record.items() if key in cls.__dataclass_fields__}
        fields["evaluations"] = [Evaluation(**e) for e in record.get("evaluations", [])]
        return cls(**fields)


def _figure(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.3f}" if abs(value) < 100 else f"{value:.4g}"


class Evaluator:
    """The recovery metric and the mean loss of a model over ``dataset``, in one pass of whole batches.

    Each call builds fresh metric state; under a ``tf.distribute`` strategy the batches are split
    across its replicas as in training (a metric's variables sum per replica and are read across).
    """

    def __init__(self, dataset: tf.data.Dataset, loss: Any, metric: Optional[str]):
        self.dataset = dataset
        self.loss = loss
        self.metric = metric
        self._steps: dict[int, Callable] = {}

    def __call__(self, model: Any) -> tuple[Optional[float], float]:
        strategy = tf.distribute.get_strategy()
        if id(model) not in self._steps:  # traced once per model, its metric state reset per call
            self._steps[id(model)] = self._compile(model, strategy)
        step, metric = self._steps[id(model)]
        if metric is not None:
            metric.reset_state()
        batches = self.dataset
        if tf.distribute.has_strategy():
            batches = strategy.experimental_distribute_dataset(batches)
        total, count = 0.0, 0.0
        for features, labels in batches:
            batch_total, batch_count = step(features, labels)
            total, count = total + batch_total, count + batch_count
        if not count:
            raise RecoveryError("the eval split holds no examples: recovery cannot be measured")
        value = float(metric.result()) if metric is not None else None
        return value, float(total / count)

    def _compile(self, model: Any, strategy: tf.distribute.Strategy) -> tuple[Callable, Any]:
        metric = metric_class(self.metric)() if self.metric is not None else None
        loss = self.loss

        def replica_step(features, labels):
            outputs = call(model, features, training=False)
            if isinstance(outputs, (list, tuple, dict)):
                raise RecoveryError(
                    "recovery is measured on one output, and this model has several: set epochs for a fixed "
                    "count instead"
                )
            if metric is not None:
                metric.update_state(labels, outputs)
            values = per_example_loss(loss, labels, outputs)
            return tf.reduce_sum(values), tf.cast(tf.size(values), tf.float32)

        @tf.function
        def step(features, labels):
            total, count = strategy.run(replica_step, args=(features, labels))
            reduce = tf.distribute.ReduceOp.SUM
            return strategy.reduce(reduce, total, axis=None), strategy.reduce(reduce, count, axis=None)

        return step, metric


def batch_norm_layers(model: Any) -> list:
    """The BatchNormalization layers of a Keras model (none for a model restored without its classes)."""
    if is_restored(model):
        return []
    kinds = (tf_keras.layers.BatchNormalization, keras3.layers.BatchNormalization)
    return [layer for layer in _all_layers(model) if isinstance(layer, kinds)]


def _all_layers(model: Any) -> list:
    found = []
    for layer in getattr(model, "layers", []):
        found.append(layer)
        if hasattr(layer, "layers"):
            found += _all_layers(layer)
    return found


def recalibrate_batch_norm(model: Any, layers: list, batches: Any) -> int:
    """Recomputes each layer's moving mean and variance as the average over ``batches`` (features, labels).

    Momentum 1 - 1/k at the k-th batch makes the moving value the plain mean of the k batch values;
    the weights are not touched (forward passes in training mode, no gradient). Returns the batches read.
    """
    kept = [layer.momentum for layer in layers]
    count = 0
    try:
        for count, (features, _) in enumerate(batches, start=1):
            for layer in layers:
                layer.momentum = 1.0 - 1.0 / count
            call(model, features, training=True)
    finally:
        for layer, momentum in zip(layers, kept, strict=True):
            layer.momentum = momentum
    return count


class RecoveryMonitor:
    """Records each evaluation, keeps the best weights, and says when to stop."""

    def __init__(
        self,
        model: Any,
        evaluator: Callable[[Any], tuple[Optional[float], float]],
        config: RecoveryConfig,
        parent: Optional[float],
        budget_steps: int,
        steps_per_epoch: int,
        fixed: bool = False,
        eligible_from_step: int = 0,
        prepare: Optional[Callable[[], None]] = None,
    ):
        self.model = model
        self.evaluator = evaluator
        self.config = config
        self.parent = parent if config.metric is not None else None
        self.budget_steps = budget_steps
        self.steps_per_epoch = steps_per_epoch
        self.fixed = fixed  # a fixed count: evaluations are recorded, nothing stops early or is restored
        self.eligible_from_step = eligible_from_step  # gradual pruning: no weights before the final sparsity
        self.prepare = prepare  # before each evaluation: BatchNormalization statistics recomputed
        self.target = None
        if self.parent is not None:
            shortfall = config.tolerance_at(self.parent)
            self.target = self.parent - shortfall if config.higher_is_better else self.parent + shortfall
        self.evaluations: list[Evaluation] = []
        self._started = time.perf_counter()
        self._eval_seconds = 0.0
        self._best: Optional[Evaluation] = None
        self._best_weights: Optional[list[np.ndarray]] = None
        self._since_improvement = 0
        self._best_metric: Optional[float] = None
        self._best_loss = math.inf
        self.stop_reason: Optional[str] = None
        self.budget: Optional[str] = None

    def _better(self, a: Evaluation, b: Optional[Evaluation]) -> bool:
        """Whether ``a`` ranks above ``b``: the metric first (the gate's), the eval loss breaking ties."""
        if b is None:
            return True
        if a.metric is not None and b.metric is not None and a.metric != b.metric:
            return (a.metric > b.metric) == self.config.higher_is_better
        return a.loss < b.loss

    def evaluate(self, step: int) -> Optional[str]:
        """Evaluates the model after ``step`` batches; the reason to stop now, or None."""
        started = time.perf_counter()
        if self.prepare is not None:
            self.prepare()
        metric, loss = self.evaluator(self.model)
        self._eval_seconds += time.perf_counter() - started
        evaluation = Evaluation(step, metric, loss, time.perf_counter() - self._started)
        self.evaluations.append(evaluation)
        improved = self._improves(evaluation)
        eligible = step >= self.eligible_from_step
        if eligible and (self.fixed or self._better(evaluation, self._best)):
            self._best = evaluation  # a fixed count keeps its last weights: its best is its last
            if not self.fixed:
                self._best_weights = [variable.numpy() for variable in model_variables(self.model)]
        self._report(evaluation)
        self._since_improvement = 0 if improved or not eligible else self._since_improvement + 1
        self.stop_reason = self._stop_reason(evaluation, eligible)
        return self.stop_reason

    def _improves(self, evaluation: Evaluation) -> bool:
        """Neither the metric nor the loss improved: what ``patience`` counts (a loss still falling is progress)."""
        improved = evaluation.loss < self._best_loss * (1.0 - self.config.min_improvement)
        self._best_loss = min(self._best_loss, evaluation.loss)
        value, best = evaluation.metric, self._best_metric
        if value is not None and (best is None or (value > best if self.config.higher_is_better else value < best)):
            self._best_metric = value
            improved = True
        return improved

    def _stop_reason(self, evaluation: Evaluation, eligible: bool) -> Optional[str]:
        if evaluation.step >= self.budget_steps:
            if self.fixed:
                return EPOCHS
            self.budget = "max_steps" if self.config.max_steps == self.budget_steps else "max_epochs"
            return BUDGET
        if self.fixed:
            return None
        if eligible and self.target is not None and self._reached(evaluation.metric):
            return RECOVERED
        if eligible and self._since_improvement >= self.config.patience:
            return PLATEAU
        if self.config.max_seconds is not None and evaluation.seconds >= self.config.max_seconds:
            self.budget = "max_seconds"
            return BUDGET
        return None

    def _reached(self, value: Optional[float]) -> bool:
        return value is not None and (value >= self.target if self.config.higher_is_better else value <= self.target)

    def _report(self, evaluation: Evaluation) -> None:
        name = self.config.metric or "eval loss"
        value = evaluation.metric if evaluation.metric is not None else evaluation.loss
        target = f" (parent {_figure(self.parent)}, target {_figure(self.target)})" if self.target is not None else ""
        epoch = evaluation.step / self.steps_per_epoch if self.steps_per_epoch else 0.0
        progress.advance(
            evaluation.step,
            self.budget_steps,
            f"step {evaluation.step} (epoch {epoch:.1f}): {name} {_figure(value)}{target}, "
            f"eval loss {evaluation.loss:.4g}",
        )

    def finish(self, steps: int) -> RecoveryRecord:
        """Puts the best evaluation's weights back (not for a fixed count) and returns the record."""
        if self._best is None:  # gradual pruning stopped before its end step: only the last is at the sparsity
            self._best = self.evaluations[-1]
        restored = not self.fixed and self._best is not self.evaluations[-1] and self._best_weights is not None
        if restored:
            for variable, value in zip(model_variables(self.model), self._best_weights, strict=True):
                variable.assign(value)
        total = time.perf_counter() - self._started
        return RecoveryRecord(
            metric=self.config.metric,
            higher_is_better=self.config.higher_is_better,
            parent=self.parent,
            target=self.target,
            stop_reason=self.stop_reason or BUDGET,
            budget=self.budget,
            steps=steps,
            best_step=self._best.step,
            restored_best=restored,
            evaluations=list(self.evaluations),
            train_seconds=total - self._eval_seconds,
            eval_seconds=self._eval_seconds,
        )
