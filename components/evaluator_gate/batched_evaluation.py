"""The gate's evaluation in one pass over whole batches: every model, every slice, TFMA's metrics.

TFMA runs the models on record batches, then unbatches and slices and combines its metrics one
example at a time, which made the gate 50-60 times slower than a batched ``predict`` of the
same models. Here each Beam element is a file of examples: ``tf.data`` reads it in batches, each
batch goes once through every model's serving (and preprocessing) signature, and the per-slice
states of the same Keras metric objects TFMA would use are updated on the batch's rows. The
states are sums (TFMA merges them the same way), so ``CombinePerKey`` adds them up across
batches and workers and memory stays flat in the number of examples. The result is written in
TFMA's own format (``tfma.load_metrics`` reads it) and equals TFMA's to float rounding.

What it covers, decided before Beam starts (``unsupported_reason``): signatures that take
serialized tf.Examples or features of the examples by name and return one output, and Keras
metric classes that TFMA computes through Keras (not the ones TFMA reimplements, such as
``AUC``). Anything else goes through TFMA itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

import apache_beam as beam
import numpy as np
import tensorflow as tf
import tensorflow_model_analysis as tfma
import tf_keras as keras
from apache_beam.utils import shared
from tensorflow_model_analysis.metrics import metric_types
from tensorflow_model_analysis.writers import eval_config_writer, metrics_plots_and_validations_writer

from tfx_model_pruning.engine.data import tfrecord_compression
from tfx_model_pruning.evaluator_gate import skill
from tfx_model_pruning.evaluator_gate.metrics import NON_FINITE_PREDICTIONS, metric_output_name
from tfx_model_pruning.user_module import load_user_module

EXAMPLE_COUNT = "example_count"
# Large batches amortise the per-call cost of the models and metrics (about a millisecond); the
# bounds on serialized bytes and on forward-pass FLOPs per batch keep a batch of large examples
# (images) or of a large model's activations in memory. Without a FLOPs count (a model restored
# without its Keras layers), TFMA's own batch size.
BATCH_BYTES = 16 << 20
BATCH_FLOPS = 10**11
MAX_BATCH_SIZE = 32768
UNKNOWN_COST_BATCH_SIZE = 1000
_KIND_TO_DTYPE = {"float_list": tf.float32, "int64_list": tf.int64, "bytes_list": tf.string}


@dataclass(frozen=True)
class EvaluationPlan:
    """What one pass computes: which models, where their labels and slices come from, which metrics."""

    models: Mapping[str, str]  # model name -> SavedModel path
    signature_name: str
    preprocessing_function_names: Sequence[str]
    label_key: str
    slice_feature: Optional[str]
    metric_classes: Sequence[str]  # Keras metric class names
    raw_features: Mapping[str, tuple[str, int]]  # feature of the examples -> (kind, values in the first example)
    batch_size: int
    # The user's module (module_file, module_path): a worker on another machine registers its
    # Keras classes and handlers before loading a model.
    user_module: tuple[Optional[str], Optional[str]] = (None, None)


def serialized_input_name(signature) -> Optional[str]:
    """The name of a signature's one input when it takes a batch of serialized tf.Examples."""
    inputs = signature.structured_input_signature[1]
    if len(inputs) == 1:
        ((name, spec),) = inputs.items()
        if spec.dtype == tf.string and spec.shape.rank == 1:
            return name
    return None


def unsupported_reason(plan: EvaluationPlan, signatures_by_model: Mapping[str, Mapping[str, Any]]) -> Optional[str]:
    """Why ``plan`` needs TFMA's own (per-example) evaluator, or None when one pass can do it."""
    registered = metric_types.registered_metrics()
    for name in plan.metric_classes:
        if name in registered:
            return f"{name} is computed by TFMA's own implementation, not by Keras"
    for model_name, signatures in signatures_by_model.items():
        serving = signatures[plan.signature_name]
        outputs = serving.structured_outputs
        if isinstance(outputs, Mapping) and len(outputs) != 1:
            return f"the {model_name} model's {plan.signature_name!r} returns {len(outputs)} outputs"
        if serialized_input_name(serving) is None:
            absent = sorted(set(serving.structured_input_signature[1]) - set(plan.raw_features))
            if absent:
                return f"the {model_name} model's inputs {absent} are not features of the examples"
        for name in plan.preprocessing_function_names:
            if serialized_input_name(signatures[name]) is None:
                return f"the {model_name} model's {name!r} does not take serialized tf.Examples"
    if plan.slice_feature is not None and plan.slice_feature not in plan.raw_features:
        first = next(iter(signatures_by_model.values()))
        produced = {
            output for name in plan.preprocessing_function_names for output in first[name].structured_outputs or {}
        }
        if plan.preprocessing_function_names and plan.slice_feature not in produced:
            return f"slice feature {plan.slice_feature!r} is neither a feature of the examples nor a preprocessed one"
    return None


def batch_size_for(example_bytes: int, flops_per_example: Optional[int]) -> int:
    """Examples per batch: as many as the bounds on bytes and FLOPs per batch allow."""
    by_flops = BATCH_FLOPS // flops_per_example if flops_per_example else UNKNOWN_COST_BATCH_SIZE
    return max(1, min(MAX_BATCH_SIZE, BATCH_BYTES // max(1, example_bytes), by_flops))


class _Models:
    """The models' signatures and Keras metric objects, loaded once per worker."""

    def __init__(self, plan: EvaluationPlan):
        self.plan = plan
        self.signatures = {}
        for name, path in plan.models.items():
            loaded = tf.saved_model.load(path)
            functions = [plan.signature_name, *plan.preprocessing_function_names]
            self.signatures[name] = {function: loaded.signatures[function] for function in functions}
            self.signatures[name]["_loaded"] = loaded  # keeps the variables alive
        self.metrics = [_MetricState(class_name) for class_name in plan.metric_classes]
        self.raw_spec = self._raw_spec()

    def _raw_spec(self) -> dict[str, Any]:
        plan, spec = self.plan, {}
        for signatures in self.signatures.values():
            serving = signatures[plan.signature_name]
            if serialized_input_name(serving) is None:
                for name, input_spec in serving.structured_input_signature[1].items():
                    shape = [dim if dim is not None else 1 for dim in input_spec.shape[1:]]
                    spec[name] = tf.io.FixedLenFeature(shape, _KIND_TO_DTYPE[plan.raw_features[name][0]])
        if plan.label_key in plan.raw_features and plan.label_key not in spec:
            kind, length = plan.raw_features[plan.label_key]
            spec[plan.label_key] = tf.io.FixedLenFeature([length], _KIND_TO_DTYPE[kind])
        if plan.slice_feature in plan.raw_features and plan.slice_feature not in spec:
            # Any number of values per example, none included (see _slice_rows).
            spec[plan.slice_feature] = tf.io.VarLenFeature(_KIND_TO_DTYPE[plan.raw_features[plan.slice_feature][0]])
        return spec

    def evaluate(self, serialized: tf.Tensor) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], Any]:
        """Labels and predictions per model for one batch, and the slice feature's values."""
        plan = self.plan
        raw = tf.io.parse_example(serialized, self.raw_spec) if self.raw_spec else {}
        labels, predictions, slice_values = {}, {}, None
        for model_name, signatures in self.signatures.items():
            preprocessed = {}
            for function in plan.preprocessing_function_names:
                call = signatures[function]
                preprocessed.update(call(**{serialized_input_name(call): serialized}))
            serving = signatures[plan.signature_name]
            input_name = serialized_input_name(serving)
            if input_name is not None:
                outputs = serving(**{input_name: serialized})
            else:
                specs = serving.structured_input_signature[1]
                outputs = serving(**{name: tf.cast(raw[name], spec.dtype) for name, spec in specs.items()})
            predictions[model_name] = next(iter(outputs.values())).numpy() if isinstance(outputs, Mapping) else outputs
            label = raw[plan.label_key] if plan.label_key in raw else preprocessed[plan.label_key]
            labels[model_name] = np.asarray(label)
            if plan.slice_feature is not None and slice_values is None:
                slice_values = raw.get(plan.slice_feature, preprocessed.get(plan.slice_feature))
        return labels, predictions, slice_values


class _MetricState:
    """A Keras metric's state over some rows alone: reset, update and read in one compiled call.

    Eager ``update_state`` goes through autograph on every call (12 ms on 8,192 rows); compiled
    without autograph (Keras metrics are graph code already), a call costs about a millisecond and
    the first one no conversion. A metric that builds its variables on first use (``R2Score``)
    gets them from one eager call before the function is traced.
    """

    def __init__(self, class_name: str):
        self.metric = getattr(keras.metrics, class_name)(name=metric_output_name(class_name))
        self._compiled = tf.function(self._fresh_state, reduce_retracing=True, autograph=False)

    def _fresh_state(self, labels, predictions):
        for variable in self.metric.variables:
            variable.assign(tf.zeros_like(variable))
        self.metric.update_state(labels, predictions)
        return [tf.identity(variable) for variable in self.metric.variables]

    def __call__(self, labels: np.ndarray, predictions: np.ndarray) -> list[np.ndarray]:
        if not self.metric.variables:
            self.metric.update_state(labels, predictions)
        return [np.asarray(value, dtype=np.float64) for value in self._compiled(labels, predictions)]


def _slice_rows(plan: EvaluationPlan, size: int, slice_values) -> Iterator[tuple[tuple, Any]]:
    """(TFMA slice key, row indices): the whole batch, then each value of the slice feature.

    An example with several values of the feature is in each of their slices, one without any
    in none, as in TFMA.
    """
    yield (), slice(None)
    if slice_values is None:
        return
    if isinstance(slice_values, tf.SparseTensor):
        rows, values = slice_values.indices[:, 0].numpy(), slice_values.values.numpy()
    else:
        values = np.asarray(slice_values).reshape(size, -1)
        rows, values = np.repeat(np.arange(size), values.shape[1]), values.reshape(-1)
    order = np.argsort(values, kind="stable")
    distinct, starts = np.unique(values[order], return_index=True)
    for value, group in zip(distinct, np.split(rows[order], starts[1:]), strict=True):
        key_value = value.item() if isinstance(value, np.generic) and not isinstance(value, np.bytes_) else value
        yield ((plan.slice_feature, key_value),), np.unique(group)


TALLIES = "tallies"


class _EvaluateFiles(beam.DoFn):
    """One file of examples -> (slice key, per-model metric states) for each slice in it.

    With ``tally_model``, also (slice label, that model's no-skill tally) for each slice, on the
    ``TALLIES`` output: counted from the same batches, so no second read of the split.
    """

    def __init__(self, plan: EvaluationPlan, tally_model: Optional[str] = None):
        self._plan, self._tally_model = plan, tally_model
        self._shared = shared.Shared()
        self._models: Optional[_Models] = None

    def setup(self):
        load_user_module(*self._plan.user_module)
        self._models = self._shared.acquire(lambda: _Models(self._plan))

    def process(self, path: str) -> Iterator:
        states: dict[tuple, dict] = {}
        tallies: dict[str, skill.SkillTally] = {}
        dataset = tf.data.TFRecordDataset(path, compression_type=tfrecord_compression(path))
        for serialized in dataset.batch(self._plan.batch_size).prefetch(1):
            labels, predictions, slice_values = self._models.evaluate(serialized)
            size = int(serialized.shape[0])
            for key, rows in _slice_rows(self._plan, size, slice_values):
                state = states.setdefault(key, {})
                for model_name in self._plan.models:
                    update = self._state(labels[model_name][rows], predictions[model_name][rows])
                    state[model_name] = _add(state.get(model_name), update)
                if self._tally_model is not None:
                    tally = skill.tally(labels[self._tally_model][rows], predictions[self._tally_model][rows])
                    label = skill.slice_label(key)
                    tallies[label] = tallies[label].add(tally) if label in tallies else tally
        yield from states.items()
        for item in tallies.items():
            yield beam.pvalue.TaggedOutput(TALLIES, item)

    def _state(self, labels: np.ndarray, predictions: np.ndarray) -> list:
        weights = [metric(labels, predictions) for metric in self._models.metrics]
        non_finite = int(predictions.size - np.count_nonzero(np.isfinite(predictions)))
        return [float(len(labels)), float(non_finite), weights]


def _add(total: Optional[list], update: list) -> list:
    if total is None:
        return update
    count, non_finite, weights = total
    return [
        count + update[0],
        non_finite + update[1],
        [[a + b for a, b in zip(mine, theirs, strict=True)] for mine, theirs in zip(weights, update[2], strict=True)],
    ]


class _SumStates(beam.CombineFn):
    def create_accumulator(self) -> dict:
        return {}

    def add_input(self, accumulator: dict, state: dict) -> dict:
        for model_name, value in state.items():
            accumulator[model_name] = _add(accumulator.get(model_name), value)
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[dict]) -> dict:
        merged: dict = {}
        for accumulator in accumulators:
            self.add_input(merged, accumulator)
        return merged

    def extract_output(self, accumulator: dict) -> dict:
        return accumulator


class _MetricValues(beam.DoFn):
    """Summed states -> TFMA's {MetricKey: value}, through the Keras metrics' own ``result()``."""

    def __init__(self, metric_classes: Sequence[str]):
        self._metric_classes = list(metric_classes)

    def setup(self):
        self._metrics = [
            getattr(keras.metrics, class_name)(name=metric_output_name(class_name))
            for class_name in self._metric_classes
        ]

    def process(self, element: tuple[tuple, dict]) -> Iterator[tuple[tuple, dict]]:
        slice_key, states = element
        values = {}
        for model_name, (count, non_finite, weights) in states.items():
            values[metric_types.MetricKey(name=EXAMPLE_COUNT, model_name=model_name)] = count
            values[metric_types.MetricKey(name=NON_FINITE_PREDICTIONS, model_name=model_name)] = non_finite
            for metric, metric_weights in zip(self._metrics, weights, strict=True):
                metric.set_weights(metric_weights)
                values[metric_types.MetricKey(name=metric.name, model_name=model_name)] = float(metric.result())
        yield slice_key, values


def _evaluated_files(pipeline: beam.Pipeline, file_patterns: Sequence[str], do_fn: _EvaluateFiles, stage: str):
    return (
        pipeline
        | f"{stage}FilePatterns" >> beam.Create(list(file_patterns))
        | f"Match{stage}Files" >> beam.FlatMap(lambda pattern: sorted(tf.io.gfile.glob(pattern)))
        | f"Spread{stage}Files" >> beam.Reshuffle()
        | f"{stage}Batches" >> beam.ParDo(do_fn).with_outputs(TALLIES, main="states")
    )


def _write_tallies(tallies, output_dir: str) -> None:
    _ = (
        tallies
        | "SumTallies" >> beam.CombinePerKey(skill.merge_tallies)
        | "AllSlices" >> beam.combiners.ToList()
        | "WriteTallies" >> beam.Map(skill.write_tallies, output_dir)
    )


def evaluate_and_write(
    pipeline: beam.Pipeline,
    file_patterns: Sequence[str],
    plan: EvaluationPlan,
    eval_config,
    output_path: str,
    tally_model: Optional[str] = None,
    tallies_dir: Optional[str] = None,
) -> None:
    """Adds the one-pass evaluation to ``pipeline``; TFMA's metrics file and eval config go to ``output_path``.

    With ``tally_model``, that model's no-skill tallies (``skill.py``) go to ``tallies_dir``.
    """
    evaluated = _evaluated_files(pipeline, file_patterns, _EvaluateFiles(plan, tally_model), "Evaluate")
    metrics = (
        evaluated.states
        | "SumSliceStates" >> beam.CombinePerKey(_SumStates())
        | "MetricValues" >> beam.ParDo(_MetricValues(plan.metric_classes))
    )
    if tally_model is not None:
        _write_tallies(evaluated[TALLIES], tallies_dir)
    evaluation = {tfma.constants.METRICS_KEY: metrics}
    writer = metrics_plots_and_validations_writer.MetricsPlotsAndValidationsWriter(
        output_paths={tfma.constants.METRICS_KEY: os.path.join(output_path, tfma.constants.METRICS_KEY)},
        eval_config=eval_config,
    )
    _ = evaluation | "WriteMetrics" >> writer.ptransform
    config_writer = eval_config_writer.EvalConfigWriter(output_path, eval_config, model_locations=dict(plan.models))
    _ = evaluation | "WriteEvalConfig" >> config_writer.ptransform


def add_skill_tallies(pipeline: beam.Pipeline, file_patterns: Sequence[str], plan: EvaluationPlan, output_dir: str):
    """The no-skill tallies of the plan's one model alone (beside TFMA's evaluator), for ``skill.read_tallies``."""
    (model_name,) = plan.models
    _write_tallies(
        _evaluated_files(pipeline, file_patterns, _EvaluateFiles(plan, model_name), "Tally")[TALLIES], output_dir
    )
