"""Fine-tuning steps per second: ``fine_tune`` holding masks against a bare ``model.fit``.

    .venv/bin/python bench/finetune_cost.py
    .venv/bin/python bench/finetune_cost.py --models penguin mlp-1M --steps 400

Models: a 64-64 MLP (5,002 params), a 1M-param MLP and the penguin classifier (4,675), each 80% magnitude-pruned,
trained on in-memory random data at batch 32. Each row is the steady-state rate: the median of
epochs 2-4 of ``--steps`` steps (the first compiles); for the gradual loop, which has no epoch
hooks, four epochs' time minus one epoch's.

- ``bare fit``: ``model.fit``, no masks (the floor);
- ``fine_tune, masks in the train step``: a fixed count of epochs (``KeepPrunedWeightsZero``);
- ``fine_tune until recovered``: the default, with an evaluation of 1,024 examples at each
  epoch's end priced into the epoch's time;
- ``fit + per-batch mask callback``: the masks applied from ``on_train_batch_end``, as the
  callback did before (the cost the default path removed);
- ``fine_tune, gradual pruning``: the engine's compiled loop, pruning on a schedule.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402
from tabulate import tabulate  # noqa: E402

from tfx_model_pruning.engine import FineTuneConfig, PruningConfig, fine_tune, prune_model  # noqa: E402
from tfx_model_pruning.engine.config import GradualPruningSchedule  # noqa: E402
from tfx_model_pruning.engine.finetune import mask_variables  # noqa: E402
from tfx_model_pruning_pipelines import penguin_trainer  # noqa: E402

BATCH = 32
MODES = (
    "bare fit",
    "fine_tune, masks in the train step",
    "fine_tune until recovered, 1 evaluation an epoch",
    "fit + per-batch mask callback",
    "fine_tune, gradual pruning",
)


class _PerBatchMasks(keras.callbacks.Callback):
    """The masks applied from Python after every batch: what the default path no longer does."""

    def __init__(self, masked):
        super().__init__()
        self._masked = masked
        self._apply = tf.function(lambda: [v.assign(v * m) for v, m in masked])

    def on_train_batch_end(self, batch, logs=None):
        self._apply()


def build(name: str) -> tuple[keras.Model, dict]:
    keras.utils.set_random_seed(0)
    if name == "penguin":
        model = penguin_trainer.build_model()
        features = {key: np.random.default_rng(0).normal(size=(4096, 1)).astype("float32") for key in model.input}
    elif name == "mlp-64-64":
        inputs = keras.Input(shape=(64,), name="x")
        x = keras.layers.Dense(64, activation="relu", name="dense_0")(inputs)
        x = keras.layers.Dense(64, activation="relu", name="dense_1")(x)
        model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))
        features = np.random.default_rng(0).normal(size=(4096, 64)).astype("float32")
    else:
        inputs = keras.Input(shape=(64,), name="x")
        x = inputs
        for index in range(3):
            x = keras.layers.Dense(700, activation="relu", name=f"dense_{index}")(x)
        model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))
        features = np.random.default_rng(0).normal(size=(4096, 64)).astype("float32")
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    labels = np.random.default_rng(1).integers(0, 3, size=4096)
    return model, (features, labels)


class _EpochTimes(keras.callbacks.Callback):
    """Wall time of each epoch; no batch hooks, so Keras makes no Python call per step for it."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def _gradual_seconds(model, dataset, masks, steps: int) -> float:
    schedule = GradualPruningSchedule(initial_sparsity=0.0, final_sparsity=0.9, end_step=steps * 3 // 4, frequency=10)
    config = FineTuneConfig(epochs=1, steps_per_epoch=steps, batch_size=BATCH, gradual_pruning=schedule)
    start = time.perf_counter()
    fine_tune(model, dataset, None, config, masks, verbose=0)
    return time.perf_counter() - start


EVAL_EXAMPLES = 1024  # a quarter of the train data, the eval split's usual share


def steps_per_second(name: str, mode: str, steps: int, epochs: int = 4) -> float:
    """Steady-state steps/s: the median epoch after the first (which compiles)."""
    model, data = build(name)
    _, masks = prune_model(model, PruningConfig(target_sparsity=0.8))
    dataset = tf.data.Dataset.from_tensor_slices(data).batch(BATCH).repeat()
    if mode == "fine_tune, gradual pruning":  # the engine's own loop has no epoch hooks: a long run minus a short one
        short = _gradual_seconds(model, dataset, masks, steps)
        return (epochs - 1) * steps / (_gradual_seconds(model, dataset, masks, epochs * steps) - short)
    timer = _EpochTimes()
    if mode == "fine_tune, masks in the train step":
        config = FineTuneConfig(epochs=epochs, steps_per_epoch=steps, batch_size=BATCH)
        fine_tune(model, dataset, None, config, masks, verbose=0, callbacks=[timer])
    elif mode.startswith("fine_tune until recovered"):
        # Every epoch ends in an evaluation of EVAL_EXAMPLES examples, counted in the epoch's time;
        # no parent and a patience longer than the run, so it never stops early.
        evaluation = tf.data.Dataset.from_tensor_slices(tf.nest.map_structure(lambda a: a[:EVAL_EXAMPLES], data))
        recovery = {"patience": epochs + 1, "max_steps": epochs * steps, "eval_every_steps": steps}
        config = FineTuneConfig(steps_per_epoch=steps, batch_size=BATCH, recovery=recovery)
        fine_tune(model, dataset, evaluation.batch(256), config, masks, verbose=0, callbacks=[timer])
    else:
        hooks = [_PerBatchMasks(mask_variables(model, masks))] if mode == "fit + per-batch mask callback" else []
        model.fit(dataset, epochs=epochs, steps_per_epoch=steps, verbose=0, callbacks=[*hooks, timer])
    return steps / float(np.median(timer.seconds[1:]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mlp-64-64", "mlp-1M"], help="mlp-64-64, mlp-1M, penguin")
    parser.add_argument("--steps", type=int, default=500, help="steps per epoch (4 epochs a path)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES, metavar="MODE")
    parser.add_argument("--repeats", type=int, default=1, help="rounds over the paths, in alternation")
    args = parser.parse_args(argv)
    modes = [mode for mode in MODES if mode in args.modes or mode == "bare fit"]
    rows = []
    for name in args.models:
        rates: dict[str, list[float]] = {mode: [] for mode in modes}
        for _ in range(args.repeats):  # alternation: a slow minute of the machine slows every path alike
            for mode in modes:
                rates[mode].append(steps_per_second(name, mode, args.steps))
        floor = float(np.median(rates["bare fit"]))
        for mode in modes:
            ratios = [floor / rate for rate in rates[mode]]
            spread = f" ({min(ratios):.2f}-{max(ratios):.2f})" if args.repeats > 1 else ""
            rows.append([name, mode, f"{np.median(rates[mode]):,.0f}", f"{floor / np.median(rates[mode]):.2f}{spread}"])
            print(rows[-1], flush=True)
    headers = ["model", "path", "steps/s (median)", "step time vs bare fit (range)"]
    print(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
