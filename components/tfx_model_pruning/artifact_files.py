"""The names of the files the components write inside their output artifacts, in one place.

Executors write them and ``tfx_model_pruning_pipelines.results`` reads them back by these constants.
"""

# PruneComponent's pruning_report (tfx_model_pruning.PruningReport)
PRUNING_REPORT_JSON = "report.json"
PRUNING_SUMMARY_MARKDOWN = "summary.md"
SENSITIVITY_PLOT = "sensitivity.png"

# RetrainComponent's model, next to Format-Serving
FINE_TUNING_JSON = "fine_tuning.json"
# Its MLMD custom property (1 or 0) and fine_tuning.json key: whether it was fine-tuned at all.
FINE_TUNED = "fine_tuned"
NOT_FINE_TUNED = "not fine-tuned (retrain.epochs: 0): judged as it came from PruneComponent"

# PruneComponent's and RetrainComponent's models, next to Format-Serving: the compressed sizes
# measured when it was saved (engine.prune.SIZE_FIGURES), so the gate need not compress it again
MODEL_SIZES_JSON = "model_sizes.json"

# EvaluatorGate's evaluation (ModelEvaluation)
GATE_RESULT_JSON = "gate_result.json"
GATE_SUMMARY_MARKDOWN = "summary.md"
GATE_REPORT_HTML = "report.html"
GATE_REPORT_PNG = "report.png"
TFMA_SUBDIR = "tfma"
