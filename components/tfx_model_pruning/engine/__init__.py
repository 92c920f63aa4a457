"""The pruning engine: plain TensorFlow / tf-keras, no TFX. Usable and testable on its own.

Models saved by tf-keras or by ``tf.saved_model.save`` load with ``load_model``; a tf.Transform
graph becomes fine-tuning input through ``tfx_model_pruning.engine.transform.transform_preprocessing``.

from tfx_model_pruning.engine import PruningConfig, prune_saved_model
report = prune_saved_model("path/to/saved_model", "pruned", PruningConfig(target_sparsity=0.8))
"""

from tfx_model_pruning.engine.config import (
    DistillationConfig,
    FineTuneConfig,
    GoalPruningConfig,
    GradualPruningSchedule,
    LayerRemovalConfig,
    OneShotPruningConfig,
    PruningConfig,
    SparseGPTPruningConfig,
    StructuredPruningConfig,
    WandaPruningConfig,
)
from tfx_model_pruning.engine.data import ExamplesMismatchError, Preprocessing, examples_dataset
from tfx_model_pruning.engine.finetune import FineTuneResult, KeepPrunedWeightsZero, fine_tune
from tfx_model_pruning.engine.importance import Criterion, register_criterion
from tfx_model_pruning.engine.layer_handlers import LayerHandler, Producer, register_layer_handler
from tfx_model_pruning.engine.layer_removal import remove_layers
from tfx_model_pruning.engine.magnitude import PruningConfigError, find_prunable_weights, prune_model
from tfx_model_pruning.engine.oneshot import OneShotError, erk_sparsities, prune_one_shot
from tfx_model_pruning.engine.prune import PruningGoalError, UnclonableLayerError, prune_saved_model
from tfx_model_pruning.engine.report import summary_markdown, weight_stats
from tfx_model_pruning.engine.restored import NeedsKerasModelError
from tfx_model_pruning.engine.saved_model import (
    LoadedModel,
    ModelLoadError,
    NonFiniteWeightsError,
    load_model,
    require_finite_weights,
    save_model,
    verify_signatures_preserved,
)
from tfx_model_pruning.engine.structured import StructuredPruningError, prune_structured

__all__ = [
    "Criterion",
    "LayerHandler",
    "Producer",
    "register_criterion",
    "register_layer_handler",
    "DistillationConfig",
    "ExamplesMismatchError",
    "FineTuneConfig",
    "FineTuneResult",
    "GoalPruningConfig",
    "GradualPruningSchedule",
    "KeepPrunedWeightsZero",
    "LayerRemovalConfig",
    "LoadedModel",
    "ModelLoadError",
    "NeedsKerasModelError",
    "NonFiniteWeightsError",
    "OneShotError",
    "OneShotPruningConfig",
    "SparseGPTPruningConfig",
    "WandaPruningConfig",
    "Preprocessing",
    "PruningConfig",
    "PruningConfigError",
    "PruningGoalError",
    "StructuredPruningConfig",
    "StructuredPruningError",
    "UnclonableLayerError",
    "examples_dataset",
    "fine_tune",
    "find_prunable_weights",
    "load_model",
    "prune_model",
    "prune_one_shot",
    "erk_sparsities",
    "prune_saved_model",
    "prune_structured",
    "remove_layers",
    "require_finite_weights",
    "save_model",
    "summary_markdown",
    "verify_signatures_preserved",
    "weight_stats",
]
