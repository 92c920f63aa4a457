"""Gradual magnitude pruning inside a compiled training step.

Sparsity follows a polynomial decay from ``initial_sparsity`` to ``final_sparsity`` between
``begin_step`` and ``end_step`` (Zhu & Gupta, the schedule tfmot's ``PolynomialDecay`` uses).
Masks are recomputed every ``frequency`` steps *and* at ``end_step``, inside the same
``tf.function`` as the optimizer step, and the zeros are re-applied after every optimizer step.
Unlike tfmot, a schedule that could not reach its target within the training run is an error
before training starts (tfmot's default ``frequency=100`` silently prunes nothing on small data).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import keras as keras3
import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfx_model_pruning.engine.config import DistillationConfig, GradualPruningSchedule
from tfx_model_pruning.engine.masks import PrunableWeight
from tfx_model_pruning.engine.restored import call, is_restored, trainable_variables


class GradualPruner:
    """Holds masks as variables and updates them in graph mode on the schedule."""

    def __init__(self, weights: list[PrunableWeight], schedule: GradualPruningSchedule):
        self.schedule = schedule
        self.variables = [w.variable for w in weights if not w.protected]
        self.keys = [w.key for w in weights if not w.protected]
        self.masks = [tf.Variable(tf.ones_like(v), trainable=False, name="mask") for v in self.variables]

    def sparsity_at(self, step: tf.Tensor) -> tf.Tensor:
        s = self.schedule
        progress = tf.clip_by_value(tf.cast(step - s.begin_step, tf.float32) / float(s.end_step - s.begin_step), 0, 1)
        return s.final_sparsity + (s.initial_sparsity - s.final_sparsity) * tf.pow(1.0 - progress, s.power)

    def should_update(self, step: tf.Tensor) -> tf.Tensor:
        s = self.schedule
        in_window = tf.logical_and(step >= s.begin_step, step <= s.end_step)
        on_beat = tf.logical_or(tf.equal((step - s.begin_step) % s.frequency, 0), tf.equal(step, s.end_step))
        return tf.logical_and(in_window, on_beat)

    def update_masks(self, sparsity: tf.Tensor) -> None:
        magnitudes = [tf.abs(v * m) for v, m in zip(self.variables, self.masks, strict=True)]
        if self.schedule.scope == "global":
            thresholds = [self._threshold(tf.concat([tf.reshape(a, [-1]) for a in magnitudes], 0), sparsity)] * len(
                magnitudes
            )
        else:
            thresholds = [self._threshold(tf.reshape(a, [-1]), sparsity) for a in magnitudes]
        for mask, magnitude, threshold in zip(self.masks, magnitudes, thresholds, strict=True):
            mask.assign(tf.cast(magnitude > threshold, mask.dtype))

    @staticmethod
    def _threshold(flat: tf.Tensor, sparsity: tf.Tensor) -> tf.Tensor:
        count = tf.size(flat)
        k = tf.cast(tf.round(sparsity * tf.cast(count, tf.float32)), tf.int32)
        ordered = tf.sort(flat)
        # Weights at or below the k-th smallest magnitude go; with k == 0 nothing does.
        return tf.cond(k > 0, lambda: ordered[tf.maximum(k - 1, 0)], lambda: -tf.ones([], flat.dtype))

    def apply(self) -> None:
        for variable, mask in zip(self.variables, self.masks, strict=True):
            variable.assign(variable * mask)

    def numpy_masks(self) -> dict[str, np.ndarray]:
        return {key: mask.numpy().astype(bool) for key, mask in zip(self.keys, self.masks, strict=True)}


# Probabilities of exactly 0 or 1 have no finite logit.
_PROBABILITY_FLOOR = 1e-7


def as_class_logits(outputs: tf.Tensor, probabilities: bool) -> tf.Tensor:
    """Logits over every class, whatever the model outputs.

    Probabilities become their logarithms (softmax(log p / T) is p sharpened or softened by T, as
    for logits); one sigmoid column becomes two classes, ``[0, z]`` or ``log [1 - p, p]``, since
    a softmax over one column is always 1 and would distil nothing.
    """
    if probabilities:
        p = tf.clip_by_value(outputs, _PROBABILITY_FLOOR, 1.0 - _PROBABILITY_FLOOR)
        return tf.math.log(tf.concat([1.0 - p, p], axis=-1) if outputs.shape[-1] == 1 else p)
    return tf.concat([tf.zeros_like(outputs), outputs], axis=-1) if outputs.shape[-1] == 1 else outputs


def per_example_loss(loss: Any, labels: tf.Tensor, outputs: tf.Tensor) -> tf.Tensor:
    """``loss`` of each example, shape ``[batch]``: their mean is what ``loss(labels, outputs)`` gives.

    A Keras loss's ``call`` is its unreduced value (its ``__call__`` reduces over the batch, which
    a replica of a distributed step must not do alone); values over further axes (time steps) are
    averaged within each example, as Keras's reduction averages them.
    """
    values = (
        loss.call(labels, outputs)
        if isinstance(loss, (keras.losses.Loss, keras3.losses.Loss))
        else loss(labels, outputs)
    )
    values = tf.cast(values, tf.float32)
    if values.shape.rank == 0:
        return tf.broadcast_to(values, tf.shape(outputs)[:1])
    if values.shape.rank > 1:
        values = tf.reduce_mean(tf.reshape(values, [tf.shape(values)[0], -1]), axis=1)
    return values


def distillation_loss(
    config: DistillationConfig, hard_loss, student_probabilities: bool = False, teacher_probabilities: bool = False
):
    """alpha * hard-label loss + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T)),
    per example (shape ``[batch]``; the loss of the batch is their mean).

    Teacher and student are compared as class logits (``as_class_logits``): a model that ends in
    a softmax or a sigmoid is distilled as well as one that outputs logits.
    """
    temperature, alpha = config.temperature, config.alpha

    def loss(labels, student_outputs, teacher_outputs):
        student_logits = as_class_logits(student_outputs, student_probabilities)
        teacher_logits = as_class_logits(teacher_outputs, teacher_probabilities)
        soft = keras.losses.kl_divergence(
            tf.nn.softmax(teacher_logits / temperature), tf.nn.softmax(student_logits / temperature)
        )
        hard = per_example_loss(hard_loss, labels, student_outputs)
        return alpha * hard + (1.0 - alpha) * temperature**2 * tf.cast(soft, tf.float32)

    return loss


def masked_train_loop(
    model: keras.Model,
    train_dataset: tf.data.Dataset,
    total_steps: int,
    loss: keras.losses.Loss,
    optimizer: keras.optimizers.Optimizer,
    fixed_masks: list[tuple[tf.Variable, tf.Tensor]] = (),
    pruner: Optional[GradualPruner] = None,
    teacher: Optional[keras.Model] = None,
    distillation: Optional[DistillationConfig] = None,
    probabilities: tuple[bool, bool] = (False, False),
    evaluate_every: Optional[int] = None,
    on_evaluate: Optional[Callable[[int], bool]] = None,
) -> list[float]:
    """Trains ``model`` for ``total_steps`` batches in one compiled step function.

    Fixed masks (from an earlier pruning) and, with a ``pruner``, the gradual schedule's masks
    are applied after every optimizer step; with a ``teacher`` the loss is the distillation
    loss; ``probabilities`` says whether the student and the teacher output probabilities (else
    logits). Returns the loss of every step. ``train_dataset`` must yield ``total_steps`` batches.
    With ``on_evaluate``, it is called with the step count every ``evaluate_every`` steps (and
    after the last); training stops early when it returns True.

    Called inside a ``tf.distribute`` strategy's scope (model, teacher and pruner made there), each
    batch is split across the replicas, the loss is the mean over the whole batch, and the masks
    are recomputed and applied once for all replicas, between their steps.

    Raises:
      ValueError: the pruner's schedule does not fit in ``total_steps`` (before any training).
    """
    if pruner is not None:
        pruner.schedule.check_fits(total_steps)
    if (teacher is None) != (distillation is None):
        raise ValueError("distillation needs both a teacher model and a DistillationConfig")
    objective = distillation_loss(distillation, loss, *probabilities) if distillation is not None else None
    # A model restored from a SavedModel trains its tf.Variables through its call function.
    variables = trainable_variables(model) if is_restored(model) else model.trainable_variables
    if isinstance(optimizer, keras3.optimizers.Optimizer) and not optimizer.built:
        optimizer.build(variables)  # Keras 3 creates its slots outside the traced step
    strategy = tf.distribute.get_strategy()  # the default one, on one device, outside any scope
    step = tf.Variable(0, dtype=tf.int64, trainable=False)

    def hold_zeros():
        for variable, mask in fixed_masks:
            variable.assign(variable * mask)
        if pruner is not None:
            pruner.apply()

    def replica_step(features, labels):
        context = tf.distribute.get_replica_context()
        with tf.GradientTape() as tape:
            predictions = call(model, features, training=True)
            if objective is not None:
                per_example = objective(labels, predictions, call(teacher, features, training=False))
            else:
                per_example = per_example_loss(loss, labels, predictions)
            # The mean over the global batch, however unevenly its last one is split.
            examples = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(tf.size(per_example), tf.float32))
            value = tf.reduce_sum(per_example) / examples
            if not is_restored(model) and model.losses:
                value += tf.add_n(model.losses) / strategy.num_replicas_in_sync
        gradients = tape.gradient(value, variables)
        optimizer.apply_gradients([(g, v) for g, v in zip(gradients, variables, strict=True) if g is not None])
        return value

    @tf.function
    def train_step(features, labels):
        # In cross-replica context: the masks are computed once and assigned on every replica.
        if pruner is not None and pruner.should_update(step):
            pruner.update_masks(pruner.sparsity_at(step))
        hold_zeros()
        value = strategy.reduce(
            tf.distribute.ReduceOp.SUM, strategy.run(replica_step, args=(features, labels)), axis=None
        )
        hold_zeros()
        step.assign_add(1)
        return value

    batches = train_dataset.take(total_steps)
    if tf.distribute.has_strategy():
        batches = strategy.experimental_distribute_dataset(batches)
    losses, stopped = [], False
    for features, labels in batches:
        losses.append(train_step(features, labels))  # read back at evaluations: no sync per step
        done = len(losses)
        if on_evaluate is not None and (done % (evaluate_every or total_steps) == 0 or done == total_steps):
            if on_evaluate(done):
                stopped = True
                break
    losses = [float(value) for value in losses]
    if len(losses) < total_steps and not stopped:
        raise ValueError(f"the dataset ran out after {len(losses)} of {total_steps} steps; repeat it")
    return losses
