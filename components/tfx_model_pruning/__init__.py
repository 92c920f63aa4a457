"""TFX components that prune, fine-tune, gate and hand a Keras model to the stock Pusher.

    from tfx_model_pruning import PruneComponent, RetrainComponent, EvaluatorGate, AtomicPusher

The pruning engine (``tfx_model_pruning.engine``) is plain TensorFlow/tf-keras and imports no
TFX; the components are thin adapters over it. They are loaded lazily so that importing
the engine does not pull in TFX.
"""

# Importing the package changes nothing in its host: no environment variable (TF_USE_LEGACY_KERAS
# included), no logging setup. The engine speaks tf-keras and Keras 3 by importing each by name
# (``tf_keras``, ``keras``) and choosing per model, whatever ``tf.keras`` is in this process.

__all__ = ["PruneComponent", "RetrainComponent", "EvaluatorGate", "AtomicPusher", "PruningReport"]

_LAZY = {
    "PruneComponent": "tfx_model_pruning.prune.component",
    "RetrainComponent": "tfx_model_pruning.retrain.component",
    "EvaluatorGate": "tfx_model_pruning.evaluator_gate.component",
    "AtomicPusher": "tfx_model_pruning.atomic_pusher.component",
    "PruningReport": "tfx_model_pruning.artifacts",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tfx_model_pruning' has no attribute {name!r}")
