"""Fine-tuning that keeps pruned weights at exactly zero."""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Mapping, Optional, Sequence, Union

import numpy as np
import tensorflow as tf
import tf_keras as keras
from tf_keras.src.utils.generic_utils import to_snake_case

from tfx_model_pruning.engine import progress
from tfx_model_pruning.engine.config import FineTuneConfig
from tfx_model_pruning.engine.gradual import GradualPruner, masked_train_loop
from tfx_model_pruning.engine.graph import keras_of
from tfx_model_pruning.engine.keras_names import loss_class
from tfx_model_pruning.engine.magnitude import find_prunable_weights
from tfx_model_pruning.engine.masks import iter_prunable_weights
from tfx_model_pruning.engine.outputs import (
    PROBABILITIES,
    OutputConventionError,
    no_information_loss,
    output_convention,
    resolve_from_logits,
    takes_from_logits,
)
from tfx_model_pruning.engine.recovery import (
    Evaluator,
    RecoveryMonitor,
    RecoveryRecord,
    batch_norm_layers,
    recalibrate_batch_norm,
)
from tfx_model_pruning.engine.restored import (
    call,
    is_restored,
    require_tensorflow_backend,
    trainable_variables,
    variable_of,
)
from tfx_model_pruning.engine.saved_model import compiled_metrics


class MaskedWeightsError(ValueError):
    """Masks do not match the model they are applied to."""


class FineTuneDataError(ValueError):
    """Training stopped on the data: a label out of range, a feature of the wrong shape or type."""


def root_cause(error: tf.errors.OpError) -> str:
    """The lines of a TensorFlow runtime error that name the problem, without its graph traceback."""
    lines = [line.strip() for line in error.message.splitlines()]
    meaningful = [
        line
        for line in lines
        if line
        and not line.startswith(("File ", "Detected at node", "Graph execution error", "[[", "defined at"))
        and not line.endswith(":")  # source lines of the traceback are indented code, followed by File lines
    ]
    cause = meaningful[-1] if meaningful else error.message.strip()
    cause = cause.split("\t [[")[0].split(" [[")[0].strip()
    return cause if len(cause) <= 300 else cause[:297] + "..."


def mask_variables(model: Any, masks: Mapping[str, np.ndarray]) -> list[tuple[tf.Variable, tf.Tensor]]:
    """Pairs each masked variable of ``model`` with its mask as a constant of the variable's dtype."""
    if not masks:
        return []
    weights = {w.key: w for w in iter_prunable_weights(model)}
    unknown = sorted(set(masks) - set(weights))
    if unknown:
        raise MaskedWeightsError(f"masks name weights the model does not have: {unknown}")
    pairs = []
    for key, mask in masks.items():
        variable = weights[key].variable
        if tuple(mask.shape) != tuple(variable.shape):
            raise MaskedWeightsError(f"mask {key} has shape {mask.shape}, weight has {tuple(variable.shape)}")
        pairs.append((variable, tf.constant(mask, dtype=variable.dtype)))
    return pairs


def distribution_strategy(name: str) -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy ``FineTuneConfig.strategy`` names; build or load the model
    inside its ``scope()`` before ``fine_tune``.

    ``mirrored`` replicates across every local GPU, or, without one, every logical CPU device (one
    on a plain machine; tests configure two). ``multi_worker`` reads the cluster from ``TF_CONFIG``.

    Example::

        strategy = distribution_strategy("mirrored")
        with strategy.scope():
            model = load_model(path).model
            fine_tune(model, train, val, FineTuneConfig(strategy="mirrored", ...), masks)
    """
    if name == "one_device":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown strategy {name!r}: one_device, mirrored or multi_worker")


def _masked(variable: tf.Variable, mask: tf.Tensor) -> Any:
    return variable.assign(variable * mask)


def hold_masks(masked: Sequence[tuple[tf.Variable, tf.Tensor]]) -> None:
    """Sets every masked weight to ``weight * mask``, on every replica when a strategy distributes
    them: in a replica's step the update goes through the strategy (a replicated variable cannot
    be assigned by one replica alone)."""
    if not tf.distribute.has_strategy():
        for variable, mask in masked:
            variable.assign(variable * mask)
        return

    def update(strategy):
        for variable, mask in masked:
            strategy.extended.update(variable, _masked, args=(mask,))

    if tf.distribute.in_cross_replica_context():
        update(tf.distribute.get_strategy())
    else:
        tf.distribute.get_replica_context().merge_call(update)


class KeepPrunedWeightsZero(keras.callbacks.Callback):
    """Holds pruned weights at zero through ``fit``, so momentum or weight decay can never
    revive one: the masks are applied inside the compiled train step, right after each
    optimizer update, and checked at the start and end of training.

    Inside the step, masking costs next to nothing; a Python call per batch (Keras's
    ``on_train_batch_end``) made each step 1.3-1.6 times as long as a plain ``fit``.

    Example::

        model.fit(dataset, epochs=3, callbacks=[KeepPrunedWeightsZero(mask_variables(model, masks))])
    """

    def __init__(self, masked: list[tuple[tf.Variable, tf.Tensor]]):
        super().__init__()
        self._masked = masked
        self._apply = tf.function(self._apply_masks)
        self._own_train_step = None

    def _apply_masks(self) -> None:
        hold_masks(self._masked)

    def on_train_begin(self, logs=None):
        self._apply()
        if not self._masked:
            return
        model = self.model
        # fit has compiled its train function before this hook; it is rebuilt around a masked step.
        self._own_train_step = vars(model).get("train_step")
        plain_step = model.train_step

        def masked_train_step(data):
            logs = plain_step(data)
            self._apply_masks()
            return logs

        model.train_step = masked_train_step
        model.make_train_function(force=True)

    def on_train_end(self, logs=None):
        if self._masked:
            model = self.model
            if self._own_train_step is not None:
                model.train_step = self._own_train_step
            else:
                del model.train_step  # the class's own again
            model.train_function = None  # the next fit compiles an unmasked one
        self._apply()


@dataclass
class FineTuneResult:
    history: dict[str, list[float]]
    masks: dict[str, np.ndarray]
    # The loss of a uniform guess (ln k for a k-class cross-entropy), where the loss has one.
    no_information_loss: Optional[float] = None
    # The loss trained with: its name, from_logits and what it was read from (fine_tuning.json).
    loss: dict[str, Any] = field(default_factory=dict)
    # Why fine-tuning stopped, each evaluation, the parent's value and the best step (None: a fixed
    # count with no parent to compare with).
    recovery: Optional[RecoveryRecord] = None
    # The peak rate, the schedule and the steps it spans.
    learning_rate: dict[str, Any] = field(default_factory=dict)

    @property
    def final_loss(self) -> Optional[float]:
        """The validation loss of the weights kept (the best evaluation's, where they were restored),
        else the last epoch's, or its training loss without validation data."""
        if self.recovery is not None and self.recovery.restored_best:
            return self.recovery.best.loss
        losses = self.history.get("val_loss") or self.history.get("loss") or []
        return losses[-1] if losses else None


class NoLearningError(ValueError):
    """Fine-tuning ended at the loss of a uniform guess: the model cannot tell the classes apart."""


# Within 1% of ln k: the last digits of a loss that never left the uniform guess.
_NO_INFORMATION_TOLERANCE = 0.01


def require_learned(result: FineTuneResult) -> None:
    """Raises NoLearningError when the final loss is at or above the no-information loss (ln 2, ln k).

    Example::

        require_learned(fine_tune(model, train, val, config, masks))
    """
    floor, final = result.no_information_loss, result.final_loss
    if floor is None or final is None or final < floor * (1.0 - _NO_INFORMATION_TOLERANCE):
        return
    which = "validation" if result.history.get("val_loss") else "training"
    raise NoLearningError(
        f"fine-tuning ended with a {which} loss of {final:.4f}, at or above {floor:.4f} (ln {round(math.exp(floor))}), "
        "the loss of guessing every class equally often: the model learned nothing. Usual causes: from_logits "
        "contradicting the model's output activation, a learning rate too high, or labels that do not match "
        "the model's outputs"
    )


class EpochProgress(keras.callbacks.Callback):
    """Reports each finished epoch through ``progress`` (a progress bar on the command line)."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        figures = ", ".join(f"{name} {value:.4g}" for name, value in (logs or {}).items())
        progress.advance(epoch + 1, self.epochs, f"epoch {epoch + 1}/{self.epochs}: {figures}")


Data = Union[tf.data.Dataset, tuple[Any, Any]]


def _as_dataset(data: Optional[Data], config: FineTuneConfig, shuffle: bool) -> Optional[tf.data.Dataset]:
    """A dataset of ``(features, labels)`` batches: as given, or built from in-memory ``(x, y)``."""
    if data is None or isinstance(data, tf.data.Dataset):
        return data
    if not (isinstance(data, tuple) and len(data) == 2):
        raise TypeError(
            f"fine-tuning data is a tf.data.Dataset of (features, labels) or an (x, y) tuple, got {type(data)}"
        )
    dataset = tf.data.Dataset.from_tensor_slices(data)
    if shuffle:
        dataset = dataset.shuffle(config.shuffle_buffer, seed=config.seed)
    return dataset.batch(config.batch_size)


def fine_tune(
    model: Any,
    train_dataset: Data,
    eval_dataset: Optional[Data],
    config: FineTuneConfig,
    masks: Mapping[str, np.ndarray],
    teacher: Optional[keras.Model] = None,
    verbose: Union[int, str] = "auto",
    callbacks: Sequence[keras.callbacks.Callback] = (),
    optimizer: Union[keras.optimizers.Optimizer, Literal["compiled", "fresh"]] = "compiled",
    parent: Any = None,
) -> FineTuneResult:
    """Fine-tunes ``model`` in place, holding masked weights at zero, until it has recovered.

    Without ``config.epochs`` the ``parent`` (the unpruned model; default the ``teacher``) is
    evaluated once on ``eval_dataset`` with ``config.recovery.metric``, and fine-tuning stops at
    the first evaluation within the tolerance of it, on a plateau, or when the budget is spent;
    the best evaluation's weights are kept (``result.recovery`` says which and why). With
    ``config.epochs`` it runs exactly that many epochs and keeps the last weights; with
    ``epochs=0`` it returns at once, the model untouched.

    ``train_dataset`` yields ``(features, labels)`` batches. With ``config.gradual_pruning`` the
    model is pruned further on that schedule while it trains; with ``config.distillation`` the
    ``teacher`` (usually the unpruned model) supplies soft labels. Returns the history and the
    masks the model carries afterwards. A model restored without its Keras classes
    (``tf.saved_model.save``, Keras 3's ``model.export``) is trained by a loop over its call
    function (or its ``serve`` endpoint or serving signature); it needs ``config.loss`` (it carries
    none), and is pruned gradually and distilled in that loop too.
    ``verbose`` is Keras's (``"auto"``, 0, 1, 2); ``callbacks`` are called at each epoch's (or
    evaluation's) end. Data may be in-memory ``(x, y)`` arrays (batched by ``config.batch_size``).
    ``optimizer`` is one to train with; ``"compiled"`` (the default) the one the model was compiled
    with, as it is, where it has one; ``"fresh"``, or a model without one: a new Adam on
    ``config.effective_schedule`` peaking at ``config.learning_rate`` (default until recovered:
    the rate the model's own optimizer ended with, times ``learning_rate_factor``).
    RetrainComponent always starts fresh.

    Example::

        result = fine_tune(model, (x_train, y_train), (x_val, y_val), FineTuneConfig(epochs=3), masks, verbose=0)
        result = fine_tune(
            pruned, train, val, FineTuneConfig(recovery={"metric": "SparseCategoricalAccuracy"}), masks, parent=original
        )
        print(result.recovery.summary())  # recovered 0.955 of 0.960 in 340 steps (stopped: recovered)
    """
    require_tensorflow_backend(model)
    if not config.fine_tunes:  # epochs 0: the model as it is, its masks as they are
        return FineTuneResult(history={}, masks=dict(masks))
    _require_built_under(model, config.strategy)
    # First: the shuffle of a dataset made from (x, y) here depends on the global seed as well.
    (keras if is_restored(model) else keras_of(model)).utils.set_random_seed(config.seed)
    train_dataset = _as_dataset(train_dataset, config, shuffle=True)
    eval_dataset = _as_dataset(eval_dataset, config, shuffle=False)
    loss, loss_settings = _loss_for(model, config, train_dataset)
    steps_per_epoch = config.steps_per_epoch or count_batches(train_dataset)
    budget = config.budget_steps(steps_per_epoch)
    chosen = optimizer if not isinstance(optimizer, str) else None
    if optimizer == "compiled" and not is_restored(model):
        chosen = getattr(model, "optimizer", None)
    fresh = chosen is None
    learning_rate = _learning_rate(model, config) if fresh else None
    if fresh:
        chosen = fresh_adam(model, learning_rate_schedule(model, config, learning_rate, budget))
    recovery = _recovery_plan(model, eval_dataset, config, loss, parent if parent is not None else teacher)
    restored = is_restored(model)
    if not restored:
        # Keep the metrics the model was compiled with: they are saved with it, and a generic
        # "accuracy" would be resolved against logits and report nonsense downstream.
        model.compile(optimizer=chosen, loss=loss, metrics=compiled_metrics(model))
    (keras if restored else keras_of(model)).utils.set_random_seed(config.seed)
    # Keras's fit serves a Keras model fine-tuned plainly; the engine's loop everything else.
    in_loop = config.gradual_pruning is not None or config.distillation is not None
    if in_loop or (restored and config.until_recovered):
        result = _fine_tune_in_loop(
            model, train_dataset, eval_dataset, config, masks, teacher, loss, chosen, steps_per_epoch, budget, recovery
        )
    elif restored:
        result = _fine_tune_restored(model, train_dataset, eval_dataset, config, masks, loss, chosen, callbacks)
    else:
        result = _fine_tune_with_fit(
            model, train_dataset, eval_dataset, config, masks, callbacks, verbose, steps_per_epoch, budget, recovery
        )
    if recovery is not None and not config.until_recovered:
        result.recovery = recovery.finish_fixed(budget, steps_per_epoch)
    result.no_information_loss, result.loss = no_information_loss(model, loss), loss_settings
    schedule = {"peak": learning_rate, "schedule": config.effective_schedule, "steps": budget}
    result.learning_rate = schedule if fresh else {"optimizer": "given"}
    return result


def count_batches(dataset: tf.data.Dataset) -> int:
    """Batches in one pass of ``dataset``: its cardinality where tf.data knows it, else counted."""
    known = int(dataset.cardinality())
    if known >= 0:
        return known
    return int(dataset.reduce(0, lambda count, _: count + 1))


# Warm-up over the first 5% of the budget: Adam's first moments are estimated from a few batches,
# and a pruned model's first steps at the full rate were where its loss jumped.
WARMUP_FRACTION = 0.05
DEFAULT_LEARNING_RATE = 1e-3


def trained_learning_rate(model: Any) -> Optional[float]:
    """The learning rate the model's own optimizer ended training with, where it was saved with it."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return None
    try:
        # A schedule's value at the step training ended on. tf-keras's ``learning_rate`` reads the
        # rate its last step used, a variable no saved format keeps: reloaded, it is the schedule's
        # first value, not its last.
        rate = getattr(optimizer, "_learning_rate", None)
        if not _is_schedule(rate):
            rate = getattr(optimizer, "learning_rate", None)
        if rate is None:
            return None
        if _is_schedule(rate):
            rate = rate(optimizer.iterations)
        value = float(np.asarray(rate))
    except (TypeError, ValueError, tf.errors.OpError):
        return None
    return value if math.isfinite(value) and 0.0 < value < 1.0 else None


def _is_schedule(rate: Any) -> bool:
    return callable(rate) and not isinstance(rate, tf.Variable)


def _learning_rate(model: Any, config: FineTuneConfig) -> float:
    if config.learning_rate is not None:
        return config.learning_rate
    if not config.until_recovered:
        return DEFAULT_LEARNING_RATE  # a fixed count trains as it always did
    trained = trained_learning_rate(model)
    rate = trained * config.learning_rate_factor if trained is not None else DEFAULT_LEARNING_RATE
    logging.getLogger(__name__).info(
        "Fine-tuning at a peak learning rate of %.3g (%s)",
        rate,
        f"{config.learning_rate_factor} x the model's own {trained:.3g}" if trained else "the default",
    )
    return min(rate, 0.5)  # a factor up to 10 times a rate near 0.1 would leave FineTuneConfig's own range


def learning_rate_schedule(model: Any, config: FineTuneConfig, peak: float, steps: int) -> Any:
    """``config.schedule`` over ``steps`` batches, in the model's Keras generation (a float for constant)."""
    if config.effective_schedule == "constant":
        return peak
    schedules = (keras if is_restored(model) else keras_of(model)).optimizers.schedules
    warmup = max(1, int(round(WARMUP_FRACTION * steps)))
    return schedules.CosineDecay(
        initial_learning_rate=0.0, decay_steps=max(1, steps - warmup), warmup_target=peak, warmup_steps=warmup
    )


class _Recovery:
    """What a recovery needs before training starts: the evaluator and the parent's value."""

    def __init__(self, model: Any, evaluator: Evaluator, parent_value: Optional[float], config: FineTuneConfig):
        self.model = model
        self.evaluator = evaluator
        self.parent_value = parent_value
        self.config = config

    def start(
        self, budget: int, steps_per_epoch: int, train_dataset: Optional[tf.data.Dataset] = None
    ) -> RecoveryMonitor:
        schedule = self.config.gradual_pruning
        layers = batch_norm_layers(self.model)
        count = self.config.recovery.batch_norm_batches
        prepare = None
        if layers and count and train_dataset is not None:
            batches = train_dataset.repeat().take(count)

            def prepare():
                recalibrate_batch_norm(self.model, layers, batches)

        return RecoveryMonitor(
            self.model,
            self.evaluator,
            self.config.recovery,
            self.parent_value,
            budget_steps=budget,
            steps_per_epoch=steps_per_epoch,
            fixed=not self.config.until_recovered,
            # The masks of end_step are made at the start of batch end_step + 1 (steps count from 0).
            eligible_from_step=schedule.end_step + 1 if schedule is not None else 0,
            prepare=prepare,
        )

    def finish_fixed(self, budget: int, steps_per_epoch: int) -> RecoveryRecord:
        """A fixed count, measured once at its end against the parent."""
        monitor = self.start(budget, steps_per_epoch)
        with _data_errors_named():
            monitor.evaluate(budget)
        return monitor.finish(budget)


def _recovery_plan(model, eval_dataset, config: FineTuneConfig, loss, parent) -> Optional[_Recovery]:
    """The evaluator and the parent's metric; None for a fixed count that has nothing to compare with."""
    metric = config.recovery.metric
    if not config.until_recovered and (metric is None or parent is None or eval_dataset is None):
        return None
    if eval_dataset is None:
        raise ValueError(
            "fine-tuning until recovered evaluates on held-out data: give eval data, or epochs for a fixed count"
        )
    evaluator = Evaluator(eval_dataset, loss, metric)
    parent_value = None
    if metric is not None and parent is not None:
        with _data_errors_named():
            parent_value, _ = evaluator(parent)
        logging.getLogger(__name__).info("The parent's %s on the eval split: %.4f", metric, parent_value)
    elif metric is not None:
        logging.getLogger(__name__).warning(
            "recovery.metric %s is set but no parent model was given: fine-tuning stops on a plateau or its budget",
            metric,
        )
    return _Recovery(model, evaluator, parent_value, config)


class _EvaluateEveryEpoch(keras.callbacks.Callback):
    """Runs the recovery monitor at the end of each of fit's epochs (one evaluation interval each)."""

    def __init__(self, monitor: RecoveryMonitor, interval: int):
        super().__init__()
        self.monitor = monitor
        self.interval = interval
        self.steps = 0

    def on_epoch_end(self, epoch, logs=None):
        self.steps = (epoch + 1) * self.interval
        if self.monitor.evaluate(self.steps):
            self.model.stop_training = True


def _fine_tune_with_fit(
    model, train_dataset, eval_dataset, config, masks, callbacks, verbose, steps_per_epoch, budget, recovery
) -> FineTuneResult:
    masked = mask_variables(model, masks)
    hold = KeepPrunedWeightsZero(masked)
    if not config.until_recovered:
        if config.steps_per_epoch is not None:
            train_dataset = train_dataset.repeat()
        with _data_errors_named():
            history = model.fit(
                train_dataset,
                validation_data=eval_dataset,
                epochs=config.epochs,
                steps_per_epoch=config.steps_per_epoch,
                callbacks=[hold, *callbacks],
                verbose=verbose,
            )
        return FineTuneResult(
            {name: [float(v) for v in values] for name, values in history.history.items()}, dict(masks)
        )
    interval = min(config.recovery.eval_every_steps or steps_per_epoch, budget)
    monitor = recovery.start(budget, steps_per_epoch, train_dataset)
    evaluate = _EvaluateEveryEpoch(monitor, interval)
    history = {"loss": []}
    with _data_errors_named():
        hold_masks(masked)  # the zeros exact before the evaluation of the untrained model
        if not monitor.evaluate(0):
            fitted = model.fit(
                train_dataset.repeat(),
                epochs=math.ceil(budget / interval),
                steps_per_epoch=interval,
                callbacks=[hold, evaluate, *callbacks],
                verbose=verbose,
            )
            history["loss"] = [float(v) for v in fitted.history.get("loss", [])]
    result = FineTuneResult(history, dict(masks))
    result.recovery = monitor.finish(evaluate.steps)
    _evaluations_into(result)
    return result


def _evaluations_into(result: FineTuneResult) -> None:
    """The recovery's evaluations as the history's val_ series (the eval loss, the metric)."""
    record = result.recovery
    result.history["val_loss"] = [e.loss for e in record.evaluations]
    if record.metric is not None:
        result.history[f"val_{to_snake_case(record.metric)}"] = [e.metric for e in record.evaluations]
    result.history["val_step"] = [float(e.step) for e in record.evaluations]


def _require_built_under(model: Any, strategy: str) -> None:
    """A distributed fine-tune needs the model's variables made under the strategy's scope."""
    if strategy == "one_device":
        return
    if is_restored(model):
        raise ValueError(
            f"strategy {strategy!r} distributes Keras's fit; a model restored without its Keras classes "
            "(tf.saved_model.save, model.export) is fine-tuned on one device"
        )
    first = variable_of(model.weights[0]) if model.weights else None
    if not isinstance(first, tf.distribute.DistributedValues):
        raise ValueError(
            f"strategy {strategy!r}: build or load the model inside distribution_strategy({strategy!r}).scope(), "
            "so its weights are made on every replica"
        )


def fresh_adam(model: Any, learning_rate: float) -> Any:
    """A new Adam of the model's Keras generation (a Keras 3 model trains only with Keras 3's)."""
    return (keras if is_restored(model) else keras_of(model)).optimizers.Adam(learning_rate)


def _fine_tune_in_loop(
    model, train_dataset, eval_dataset, config, masks, teacher, loss, optimizer, steps_per_epoch, budget, recovery
) -> FineTuneResult:
    if config.distillation is not None and teacher is None:
        raise ValueError("distillation is configured but no teacher model was given")
    pruner = None
    if config.gradual_pruning is not None:
        config.gradual_pruning.check_fits(budget)
        weights = find_prunable_weights(model, config.gradual_pruning.as_pruning_config())
        pruner = GradualPruner(weights, config.gradual_pruning)
    probabilities = _output_probabilities(model, teacher, train_dataset) if teacher is not None else (False, False)
    monitor = recovery.start(budget, steps_per_epoch, train_dataset) if config.until_recovered else None
    interval = min(config.recovery.eval_every_steps or steps_per_epoch, budget)
    fixed_masks = mask_variables(model, masks)
    with _data_errors_named():
        stopped_at_start = False
        if monitor is not None:
            hold_masks(fixed_masks)
            stopped_at_start = bool(monitor.evaluate(0))
        losses = []
        if not stopped_at_start:
            losses = masked_train_loop(
                model,
                train_dataset.repeat(),
                budget,
                loss,
                optimizer,
                fixed_masks=fixed_masks,
                pruner=pruner,
                teacher=teacher,
                distillation=config.distillation,
                probabilities=probabilities,
                evaluate_every=interval if monitor is not None else None,
                on_evaluate=(lambda step: bool(monitor.evaluate(step))) if monitor is not None else None,
            )
    per = interval if monitor is not None else steps_per_epoch
    history = {"loss": [float(np.mean(losses[i : i + per])) for i in range(0, len(losses), per)]}
    combined = dict(masks)
    if pruner is not None:
        for key, mask in pruner.numpy_masks().items():
            combined[key] = mask & combined[key] if key in combined else mask
    result = FineTuneResult(history, combined)
    if monitor is not None:
        result.recovery = monitor.finish(len(losses))
        _evaluations_into(result)
    elif eval_dataset is not None and is_restored(model):
        history["val_loss"] = [_mean_loss(model, eval_dataset, loss)]
    elif eval_dataset is not None:
        for name, value in model.evaluate(eval_dataset, return_dict=True, verbose=0).items():
            history[f"val_{name}"] = [float(value)]
    return result


def _mean_loss(model: Any, dataset: tf.data.Dataset, loss) -> float:
    step = tf.function(lambda features, labels: loss(labels, call(model, features, training=False)))
    return float(np.mean([float(step(x, y)) for x, y in dataset]))


def _fine_tune_restored(model, train_dataset, eval_dataset, config, masks, loss, optimizer, callbacks=()):
    """A fixed count of epochs for a model restored without its Keras classes, evaluated every epoch."""
    variables = trainable_variables(model)
    masked = mask_variables(model, masks)

    def hold_masks():
        for variable, mask in masked:
            variable.assign(variable * mask)

    @tf.function
    def train_step(features, labels):
        with tf.GradientTape() as tape:
            value = loss(labels, call(model, features, training=True))
        pairs = [(g, v) for g, v in zip(tape.gradient(value, variables), variables, strict=True) if g is not None]
        optimizer.apply_gradients(pairs)
        hold_masks()
        return value

    @tf.function
    def eval_step(features, labels):
        return loss(labels, call(model, features, training=False))

    tf.function(hold_masks)()
    history: dict[str, list[float]] = {"loss": []}
    with _data_errors_named():
        for epoch in range(config.epochs):
            batches = train_dataset.repeat().take(config.steps_per_epoch) if config.steps_per_epoch else train_dataset
            history["loss"].append(float(np.mean([float(train_step(x, y)) for x, y in batches])))
            if eval_dataset is not None:
                history.setdefault("val_loss", []).append(
                    float(np.mean([float(eval_step(x, y)) for x, y in eval_dataset]))
                )
            for callback in callbacks:
                callback.on_epoch_end(epoch, {name: values[-1] for name, values in history.items()})
    return FineTuneResult(history, dict(masks))


def _output_probabilities(model: Any, teacher: Any, train_dataset: tf.data.Dataset) -> tuple[bool, bool]:
    """Whether the student and the teacher output probabilities, read as for ``from_logits``."""
    found = []
    for role, network in (("student", model), ("teacher", teacher)):
        convention, evidence = output_convention(network, lambda: next(iter(train_dataset.take(1)))[0])
        if convention is None:
            raise OutputConventionError(
                f"distillation compares class scores, and the {role} model's outputs say neither logits nor "
                f"probabilities ({evidence})"
            )
        found.append(convention == PROBABILITIES)
    return found[0], found[1]


@contextlib.contextmanager
def _data_errors_named() -> Iterator[None]:
    """Turns TensorFlow's runtime errors about the data into one line naming the cause."""
    try:
        yield
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as err:
        raise FineTuneDataError(f"fine-tuning stopped on the data: {root_cause(err)}") from err


def _loss_for(model: Any, config: FineTuneConfig, train_dataset: Optional[tf.data.Dataset]) -> tuple[Any, dict]:
    """The loss to fine-tune with, and what it is: its name, ``from_logits`` and where that came from."""
    if config.loss is not None:
        named = loss_class(config.loss)
        if not is_restored(model):
            named = getattr(keras_of(model).losses, config.loss, named)  # the model's own generation's class
        if not takes_from_logits(named):
            return named(), {"name": config.loss}
        sample = (lambda: next(iter(train_dataset.take(1)))[0]) if train_dataset is not None else None
        from_logits, evidence = resolve_from_logits(model, named, config.from_logits, sample)
        logging.getLogger(__name__).info("Fine-tuning with %s(from_logits=%s): %s", config.loss, from_logits, evidence)
        return named(from_logits=from_logits), {"name": config.loss, "from_logits": from_logits, "evidence": evidence}
    if is_restored(model):
        raise ValueError(
            "the model is a SavedModel without Keras metadata (tf.saved_model.save or Keras 3's model.export), "
            "which keeps no loss; set `loss` in the fine-tuning "
            "config, e.g. loss='SparseCategoricalCrossentropy' (from_logits is read from the model)"
        )
    compiled_loss = getattr(model, "loss", None)
    if compiled_loss is None:
        raise ValueError(
            "the model was saved without a compiled loss; set `loss` in the fine-tuning config "
            "(for example 'SparseCategoricalCrossentropy')"
        )
    if config.from_logits is not None:
        raise OutputConventionError(
            "from_logits goes with `loss`; without `loss` the model's compiled loss is used as it was saved"
        )
    return compiled_loss, {"name": getattr(compiled_loss, "name", str(compiled_loss)), "evidence": "compiled loss"}


def make_loss(class_name: str, from_logits: Optional[bool] = None) -> keras.losses.Loss:
    """Builds a Keras loss from its class name; ``from_logits`` where the loss takes it (None: its default)."""
    named = loss_class(class_name)
    if from_logits is not None and takes_from_logits(named):
        return named(from_logits=from_logits)
    return named()
