"""Every input, output and parameter key of the components' specs, in one place.

As TFX's ``tfx/types/standard_component_specs.py``: component specs, executors and pipeline code
name a channel or parameter through these constants, never by a string of their own.
"""

# Channels
MODEL_KEY = "model"  # the candidate model (EvaluatorGate, Pusher) and every component's output model
INPUT_MODEL_KEY = "input_model"  # TFX forbids one key in both INPUTS and OUTPUTS; constructors still say `model`
OUTPUT_MODEL_KEY = MODEL_KEY
EXAMPLES_KEY = "examples"
BASELINE_MODEL_KEY = "baseline_model"
TEACHER_MODEL_KEY = "teacher_model"
PARENT_MODEL_KEY = "parent_model"  # the unpruned model whose metric fine-tuning recovers
TRANSFORM_GRAPH_KEY = "transform_graph"
PRUNING_REPORT_KEY = "pruning_report"
BLESSING_KEY = "blessing"
EVALUATION_KEY = "evaluation"

# Parameters
PRUNING_CONFIG_KEY = "pruning_config"
FINE_TUNE_CONFIG_KEY = "fine_tune_config"
GATE_CONFIG_KEY = "gate_config"
MODULE_FILE_KEY = "module_file"  # TFX's names: udf_utils packages module_file into a wheel named by module_path
MODULE_PATH_KEY = "module_path"
ALLOW_UNSAFE_LAYERS_KEY = "allow_unsafe_layers"
ALLOW_OPS_KEY = "allow_ops"  # comma-separated op names the graph scan lets through
LATENCY_REPEATS_KEY = "latency_repeats"
PUSH_ROOT_KEY = "push_root"
