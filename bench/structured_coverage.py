"""How much of real architectures structured pruning reaches, and what it buys on this CPU.

For stock ``tf_keras.applications`` CNNs built at 96x96 without weights (plus a small Transformer
encoder and an LSTM text model), or with ``--keras 3`` the same from Keras 3's
``keras.applications`` and layers, prunes ``--fraction`` of every removable group by l1 and prints:
- the share of *all* Dense/convolution channels removed (``StructureChange.removed_share``);
- params and FLOPs ratios;
- exactness: the largest difference between the rebuilt model and the original with the removed
  channels disconnected;
- CPU latency ratios at batch 1 and 32, timed in alternation (median and interquartile range),
  next to the ideal: the latency ratio of the application built at half width by its own builder
  where it has a width parameter (``half_width``), otherwise the FLOPs ratio (marked ``F``), and
  the measured ratio over the ideal.

    .venv/bin/python bench/structured_coverage.py                  # the default set
    .venv/bin/python bench/structured_coverage.py --models ResNet50 MobileNetV2 --repeats 30
    .venv/bin/python bench/structured_coverage.py --all               # all 71 applications (~1-2 h)
    .venv/bin/python bench/structured_coverage.py --keras 3           # the default set, built with Keras 3
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Optional

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras as keras3  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
from keras.src.applications import efficientnet as efficientnet3  # noqa: E402
from keras.src.applications import resnet as resnet3  # noqa: E402
from tabulate import tabulate  # noqa: E402
from tf_keras.src.applications import efficientnet, resnet  # noqa: E402  (their width-parameterised builders)

from tfx_model_pruning.engine.config import StructuredPruningConfig  # noqa: E402
from tfx_model_pruning.engine.efficiency import alternating_latency, count_flops  # noqa: E402
from tfx_model_pruning.engine.structured import StructuredPruningError, apply_removal, plan_removal  # noqa: E402

# The Keras generation the models are built with (``--keras``): tf-keras by default.
keras = tf_keras
L = keras.layers
A = keras.applications


def use_keras(generation: str) -> None:
    """Builds every model with tf-keras (``"2"``) or Keras 3 (``"3"``) from here on."""
    global keras, L, A
    keras = keras3 if generation == "3" else tf_keras
    L, A = keras.layers, keras.applications


DEFAULT_MODELS = [
    "ResNet50", "MobileNetV2", "EfficientNetB0", "MobileNetV3Small", "RegNetX002", "NASNetMobile",
    "DenseNet121", "VGG16", "ConvNeXtTiny", "TransformerEncoder", "LSTMText",
]  # fmt: skip
# Applications with a width multiplier: the hand-built half-width model is the ideal to compare with.
SEQUENCE_MODELS = ["TransformerEncoder", "LSTMText"]
ALPHA = ("MobileNet", "MobileNetV2", "MobileNetV3Small", "MobileNetV3Large")
# (width, depth, default size) of each EfficientNet: its width_coefficient is its width multiplier.
EFFICIENTNET = {
    "EfficientNetB0": (1.0, 1.0, 224), "EfficientNetB1": (1.0, 1.1, 240), "EfficientNetB2": (1.1, 1.2, 260),
    "EfficientNetB3": (1.2, 1.4, 300), "EfficientNetB4": (1.4, 1.8, 380), "EfficientNetB5": (1.6, 2.2, 456),
    "EfficientNetB6": (1.8, 2.6, 528), "EfficientNetB7": (2.0, 3.1, 600),
}  # fmt: skip


def half_width(name: str) -> Optional[keras.Model]:
    """The application built natively at half width, where its own builder can: the ideal a pruned
    model's latency is compared with (``alpha=0.5``; EfficientNet's ``width_coefficient`` halved;
    ResNet50's stacks at half their filters, its 64-filter stem being fixed in tf-keras)."""
    common = {"weights": None, "input_shape": SHAPE, "classes": 10}
    if name in ALPHA:
        return getattr(A, name)(alpha=0.5, **common)
    if name in EFFICIENTNET:
        width, depth, size = EFFICIENTNET[name]
        if keras is keras3:
            return efficientnet3.EfficientNet(width / 2, depth, size, name=f"{name}_half", **common)
        return efficientnet.EfficientNet(width / 2, depth, size, model_name=f"{name}_half", **common)
    if name == "ResNet50":
        stack = resnet3.stack_residual_blocks_v1 if keras is keras3 else resnet.stack1

        def stack_fn(x):
            for filters, blocks, stage in ((32, 3, "conv2"), (64, 4, "conv3"), (128, 6, "conv4"), (256, 3, "conv5")):
                x = stack(x, filters, blocks, stride1=1 if stage == "conv2" else 2, name=stage)
            return x

        if keras is keras3:
            return resnet3.ResNet(
                stack_fn, False, True, weights=None, input_shape=SHAPE, classes=10, name="resnet50_half"
            )
        return resnet.ResNet(stack_fn, False, True, "resnet50_half", True, None, None, SHAPE, None, 10)
    return None


SHAPE = (96, 96, 3)


def every_application() -> list[str]:
    """The model builders ``tf_keras.applications`` exports (all CNNs; each builds at 96x96)."""
    return sorted(name for name, value in vars(A).items() if callable(value) and name[:1].isupper())


def transformer_encoder() -> keras.Model:
    tokens = keras.Input((32,), dtype="int32", name="tokens")
    x = L.Embedding(1000, 64)(tokens)
    attended = L.MultiHeadAttention(num_heads=4, key_dim=16)(x, x)
    x = L.LayerNormalization()(x + attended)
    x = L.LayerNormalization()(x + L.Dense(64)(L.Dense(256, activation="relu")(x)))
    return keras.Model(tokens, L.Dense(2)(L.GlobalAveragePooling1D()(x)), name="TransformerEncoder")


def lstm_text() -> keras.Model:
    tokens = keras.Input((32,), dtype="int32", name="tokens")
    x = L.LSTM(128)(L.Embedding(1000, 64)(tokens))
    return keras.Model(tokens, L.Dense(2)(L.Dense(64, activation="relu")(x)), name="LSTMText")


def build(name: str) -> keras.Model:
    if name == "TransformerEncoder":
        return transformer_encoder()
    if name == "LSTMText":
        return lstm_text()
    return getattr(A, name)(weights=None, input_shape=SHAPE, classes=10)


def _inputs(model: keras.Model, batch: int):
    rng = np.random.default_rng(0)
    spec = model.inputs[0]
    if tf.as_dtype(spec.dtype).is_integer:  # tf-keras gives a DType, Keras 3 a name
        return rng.integers(0, 1000, size=(batch, *spec.shape[1:])).astype("int32")
    return rng.normal(size=(batch, *spec.shape[1:])).astype("float32")


def _repeats(model: keras.Model, batch: int, repeats: int, models: int, budget_s: float) -> int:
    """As many timed passes as ``budget_s`` allows for the largest models (at least 5), at most ``repeats``."""
    inputs = _inputs(model, batch)
    model(inputs, training=False)
    started = time.perf_counter()
    model(inputs, training=False)
    one_pass = time.perf_counter() - started
    return int(min(repeats, max(5, budget_s / max(one_pass * models, 1e-6))))


def measure(name: str, fraction: float, repeats: int, budget_s: float) -> list:
    started = time.perf_counter()
    keras.utils.set_random_seed(0)
    model = build(name)
    config = StructuredPruningConfig(prune_fraction=fraction)
    try:
        plan = plan_removal(model, config)
        smaller, change = apply_removal(plan, config)
    except StructuredPruningError as refused:
        return [name, f"refused: {refused}"[:60], *[""] * 7]
    reference = plan.disconnected()
    x = _inputs(model, 2)
    exactness = float(np.max(np.abs(np.asarray(smaller(x, training=False)) - np.asarray(reference(x, training=False)))))

    flops_before, flops_after = count_flops(model), count_flops(smaller)
    flops_ratio = flops_after / flops_before if flops_before else float("nan")
    half = half_width(name)
    ratios = []
    for batch in (1, 32):
        timed = [model, smaller] + ([half] if half is not None else [])
        dense, pruned, *alpha = alternating_latency(timed, batch, _repeats(model, batch, repeats, len(timed), budget_s))
        low, high = pruned.p25_ms / dense.median_ms, pruned.p75_ms / dense.median_ms
        ratio = pruned.median_ms / dense.median_ms
        ideal = alpha[0].median_ms / dense.median_ms if alpha else flops_ratio
        ratios.append(
            f"{ratio:.2f} ({low:.2f}–{high:.2f}) vs {ideal:.2f}{'' if alpha else ' F'} = {ratio / ideal:.2f}×"
        )
    return [
        name,
        f"{change.removed_share:.1%}",
        f"{smaller.count_params() / model.count_params():.2f}",
        f"{flops_ratio:.2f}",
        f"{exactness:.1e}" + (f" (not exact: {len(change.approximate)} LayerNorm)" if change.approximate else ""),
        len(plan.graph.barriers),
        *ratios,
        f"{time.perf_counter() - started:.0f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=DEFAULT_MODELS, help="application names (or the two sequence models)"
    )
    parser.add_argument("--fraction", type=float, default=0.5, help="prune_fraction for every removable group")
    parser.add_argument("--repeats", type=int, default=30, help="most timed forward passes per model and batch size")
    parser.add_argument(
        "--budget-s", type=float, default=60.0, help="seconds of timing per batch size; large models get fewer passes"
    )
    parser.add_argument(
        "--all", action="store_true", help="every CNN in the applications, then the two sequence models"
    )
    parser.add_argument(
        "--keras", choices=["2", "3"], default="2", help="build the models with tf-keras (2) or Keras 3 (3)"
    )
    args = parser.parse_args()
    use_keras(args.keras)
    models = [*every_application(), *SEQUENCE_MODELS] if args.all else args.models
    headers = [
        "model", "channels removed (of all)", "params ratio", "FLOPs ratio", "max |rebuilt - disconnected|",
        "barriers", "latency ratio b1 (IQR) vs ideal = ×ideal", "latency ratio b32 (IQR) vs ideal = ×ideal", "s",
    ]  # fmt: skip
    rows = []
    for name in models:
        rows.append(measure(name, args.fraction, args.repeats, args.budget_s))
        keras.backend.clear_session()
        print(" | ".join(str(cell) for cell in rows[-1]), flush=True)
    print()
    print(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))


if __name__ == "__main__":
    main()
