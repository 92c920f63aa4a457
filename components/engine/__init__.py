"""The pruning engine: plain TensorFlow / tf-keras, no TFX. Usable and testable on its own.

from components.engine import PruningConfig, prune_saved_model
report = prune_saved_model("path/to/saved_model", "/tmp/pruned", PruningConfig(target_sparsity=0.8))
"""

from components.engine.config import FineTuneConfig, PruningConfig
from components.engine.data import ExamplesMismatchError, examples_dataset
from components.engine.finetune import KeepPrunedWeightsZero, fine_tune
from components.engine.magnitude import PruningConfigError, find_prunable_weights, prune_model
from components.engine.prune import prune_saved_model
from components.engine.report import summary_markdown, weight_stats
from components.engine.saved_model import (
    LoadedModel,
    ModelLoadError,
    load_keras_model,
    save_keras_model,
    verify_signatures_preserved,
)

__all__ = [
    "ExamplesMismatchError",
    "FineTuneConfig",
    "KeepPrunedWeightsZero",
    "LoadedModel",
    "ModelLoadError",
    "PruningConfig",
    "PruningConfigError",
    "examples_dataset",
    "fine_tune",
    "find_prunable_weights",
    "load_keras_model",
    "prune_model",
    "prune_saved_model",
    "save_keras_model",
    "summary_markdown",
    "verify_signatures_preserved",
    "weight_stats",
]
