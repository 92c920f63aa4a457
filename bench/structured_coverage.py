"""How much of real architectures structured pruning reaches, and what it buys on this CPU.

For stock ``tf_keras.applications`` CNNs built at 96x96 without weights (plus a small Transformer
encoder and an LSTM text model), prunes ``--fraction`` of every removable group by l1 and prints:
- the share of *all* Dense/convolution channels removed (``StructureChange.removed_share``);
- params and FLOPs ratios;
- exactness: the largest difference between the rebuilt model and the original with the removed
  channels disconnected;
- CPU latency ratios at batch 1 and 32, timed in alternation (median and interquartile range),
  next to the ideal: the ``alpha=0.5`` variant where the application has one.

    .venv/bin/python bench/structured_coverage.py                  # the default set
    .venv/bin/python bench/structured_coverage.py --models ResNet50 MobileNetV2 --repeats 30
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tf_keras as keras  # noqa: E402
from tabulate import tabulate  # noqa: E402

from tfx_model_pruning.engine.config import StructuredPruningConfig  # noqa: E402
from tfx_model_pruning.engine.efficiency import alternating_latency, count_flops  # noqa: E402
from tfx_model_pruning.engine.structured import StructuredPruningError, apply_removal, plan_removal  # noqa: E402

L = keras.layers
A = keras.applications
DEFAULT_MODELS = [
    "ResNet50", "MobileNetV2", "EfficientNetB0", "MobileNetV3Small", "RegNetX002", "NASNetMobile",
    "DenseNet121", "VGG16", "ConvNeXtTiny", "TransformerEncoder", "LSTMText",
]  # fmt: skip
# Applications with a width multiplier: the hand-built half-width model is the ideal to compare with.
HALF_WIDTH = {"MobileNet": {"alpha": 0.5}, "MobileNetV2": {"alpha": 0.5}, "MobileNetV3Small": {"alpha": 0.5}}
SHAPE = (96, 96, 3)


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


def build(name: str, **extra) -> keras.Model:
    if name == "TransformerEncoder":
        return transformer_encoder()
    if name == "LSTMText":
        return lstm_text()
    return getattr(A, name)(weights=None, input_shape=SHAPE, classes=10, **extra)


def _inputs(model: keras.Model, batch: int):
    rng = np.random.default_rng(0)
    spec = model.inputs[0]
    if spec.dtype.is_integer:
        return rng.integers(0, 1000, size=(batch, *spec.shape[1:])).astype("int32")
    return rng.normal(size=(batch, *spec.shape[1:])).astype("float32")


def measure(name: str, fraction: float, repeats: int) -> list:
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
    exactness = float(np.max(np.abs(smaller(x, training=False).numpy() - reference(x, training=False).numpy())))

    ideal = build(name, **HALF_WIDTH[name]) if name in HALF_WIDTH else None
    ratios = []
    for batch in (1, 32):
        timed = [model, smaller] + ([ideal] if ideal is not None else [])
        latencies = alternating_latency(timed, batch, repeats)
        dense, pruned = latencies[0], latencies[1]
        low, high = pruned.p25_ms / dense.median_ms, pruned.p75_ms / dense.median_ms
        cell = f"{pruned.median_ms / dense.median_ms:.2f} ({low:.2f}–{high:.2f})"
        if ideal is not None:
            cell += f" vs {latencies[2].median_ms / dense.median_ms:.2f}"
        ratios.append(cell)
    flops_before, flops_after = count_flops(model), count_flops(smaller)
    return [
        name,
        f"{change.removed_share:.1%}",
        f"{smaller.count_params() / model.count_params():.2f}",
        f"{flops_after / flops_before:.2f}" if flops_before else "-",
        f"{exactness:.1e}",
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
    parser.add_argument("--repeats", type=int, default=30, help="timed forward passes per model and batch size")
    args = parser.parse_args()
    headers = [
        "model", "channels removed (of all)", "params ratio", "FLOPs ratio", "max |rebuilt - disconnected|",
        "barriers", "latency ratio b1 (IQR) vs ideal", "latency ratio b32 (IQR) vs ideal", "s",
    ]  # fmt: skip
    rows = []
    for name in args.models:
        rows.append(measure(name, args.fraction, args.repeats))
        print(" | ".join(str(cell) for cell in rows[-1]), flush=True)
    print()
    print(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))


if __name__ == "__main__":
    main()
