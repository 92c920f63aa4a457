"""The gate's evaluation in one pass over whole batches: every model, every slice, TFMA's metrics.

TFMA runs the models on record batches, then unbatches and slices and combines its metrics one
example at a time, which made the gate 50-60 times slower than a batched ``predict`` of the
same models. Here each Beam element is a file of examples, or a shard of one (``WorkUnit``):
``tf.data`` reads it in batches, each batch goes once through every model's serving (and
preprocessing) signature, and the per-slice states of the same Keras metric objects TFMA would
use are updated on the batch's rows. The states are sums (TFMA merges them the same way), so one
``CombineGlobally`` adds them up across batches, shards and workers and memory stays flat in the
number of examples. The result is written in TFMA's own format (``tfma.load_metrics`` reads it)
and equals TFMA's to float rounding.

What it covers, decided before Beam starts (``unsupported_reason``): signatures that take
serialized tf.Examples or features of the examples by name and return one output, and Keras
metric classes that TFMA computes through Keras (not the ones TFMA reimplements, such as
``AUC``). Anything else goes through TFMA itself.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

import apache_beam as beam
import numpy as np
import tensorflow as tf
import tensorflow_model_analysis as tfma
import tf_keras as keras
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.utils import shared
from google.protobuf import json_format
from tensorflow_model_analysis.metrics import metric_types
from tensorflow_model_analysis.proto import config_pb2
from tensorflow_model_analysis.writers import metrics_plots_and_validations_writer

from tfx_model_pruning.engine.data import FEATURE_KIND_DTYPES, tfrecord_compression
from tfx_model_pruning.engine.graph_scan import scan_model_dir
from tfx_model_pruning.engine.signatures import serialized_input_name
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
    # Shards each file is cut into (WorkUnit), so workers of a distributed runner share one file.
    shards_per_file: int = 1
    # Op types the graph scan lets through: a worker scans each model again before it loads it.
    allow_ops: Sequence[str] = ()


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
    """The models' signatures, loaded once per worker process and shared by its threads."""

    def __init__(self, plan: EvaluationPlan, loaded_signatures: Optional[Mapping[str, Mapping[str, Any]]] = None):
        self.plan = plan
        self.signatures = {}
        functions = [plan.signature_name, *plan.preprocessing_function_names]
        for name, path in plan.models.items():
            if loaded_signatures is not None:  # the models the driver loaded, in its own process
                self.signatures[name] = {function: loaded_signatures[name][function] for function in functions}
                continue
            scan_model_dir(path, plan.allow_ops).require_safe()
            loaded = tf.saved_model.load(path)
            self.signatures[name] = {function: loaded.signatures[function] for function in functions}
            self.signatures[name]["_loaded"] = loaded  # keeps the variables alive
        self.raw_spec = self._raw_spec()

    def _raw_spec(self) -> dict[str, Any]:
        plan, spec = self.plan, {}
        for signatures in self.signatures.values():
            serving = signatures[plan.signature_name]
            if serialized_input_name(serving) is None:
                for name, input_spec in serving.structured_input_signature[1].items():
                    shape = [dim if dim is not None else 1 for dim in input_spec.shape[1:]]
                    spec[name] = tf.io.FixedLenFeature(shape, FEATURE_KIND_DTYPES[plan.raw_features[name][0]])
        if plan.label_key in plan.raw_features and plan.label_key not in spec:
            kind, length = plan.raw_features[plan.label_key]
            spec[plan.label_key] = tf.io.FixedLenFeature([length], FEATURE_KIND_DTYPES[kind])
        if plan.slice_feature in plan.raw_features and plan.slice_feature not in spec:
            # Any number of values per example, none included (see _slice_rows).
            spec[plan.slice_feature] = tf.io.VarLenFeature(
                FEATURE_KIND_DTYPES[plan.raw_features[plan.slice_feature][0]]
            )
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
    """A Keras metric's state over each of some groups of rows alone: reset, update and read,
    group after group, in one compiled call per batch.

    Eager ``update_state`` goes through autograph on every call (12 ms on 8,192 rows); compiled
    without autograph (Keras metrics are graph code already), a call costs about a millisecond and
    the first one no conversion, and one call serves every slice of the batch. A metric that
    builds its variables on first use (``R2Score``) gets them from one eager call before the
    function is traced.
    """

    def __init__(self, class_name: str):
        self.metric = getattr(keras.metrics, class_name)(name=metric_output_name(class_name))
        self._compiled = tf.function(self._fresh_states, reduce_retracing=True, autograph=False)

    def _fresh_states(self, labels, predictions, groups):
        states = []
        for rows in groups:  # in order: each group's updates follow the reset before them
            for variable in self.metric.variables:
                variable.assign(tf.zeros_like(variable))
            self.metric.update_state(tf.gather(labels, rows), tf.gather(predictions, rows))
            states.append([tf.identity(variable) for variable in self.metric.variables])
        return states

    def __call__(self, labels: np.ndarray, predictions: np.ndarray, groups: Sequence[np.ndarray]) -> list[list]:
        """Per group of row indices, the metric's state (its variables' values) over those rows."""
        if not self.metric.variables:
            self.metric.update_state(labels[groups[0]], predictions[groups[0]])
        states = self._compiled(labels, predictions, tuple(groups))
        return [[np.asarray(value, dtype=np.float64) for value in state] for state in states]


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


@dataclass(frozen=True)
class WorkUnit:
    """A file's batches ``shard``, ``shard + shards``, ...: one element of the evaluation's input.

    A file is cut into ``shards`` so that several workers share a single large file: each reads
    the file (a gzipped TFRecord file can only be read from its start) but parses, predicts and
    updates the metrics for its own batches alone, which is most of the work.
    """

    path: str
    shard: int = 0
    shards: int = 1


def declared_workers(beam_pipeline_args: Sequence[str]) -> int:
    """How many machines the Beam pipeline's options say its workers run on: the most of
    ``num_workers``, ``max_num_workers`` and Flink's ``parallelism``; 1 when none is said, and
    1 for the DirectRunner, whose workers share this machine's cores (which TensorFlow's own
    threads already use: two threads each reading the file ran at half the speed of one)."""
    options = PipelineOptions(list(beam_pipeline_args)).get_all_options()
    if (options.get("runner") or "DirectRunner") in ("DirectRunner", "direct", "FnApiRunner"):
        return 1
    declared = [options.get(name) for name in ("num_workers", "max_num_workers", "parallelism")]
    return max([count for count in declared if isinstance(count, int) and count > 0], default=1)


def shards_per_file(workers: int, files: int) -> int:
    """Enough shards that every worker has one when there are fewer files than workers.

    Each shard reads its whole file, so a file is cut only for workers that would otherwise idle.
    """
    return max(1, math.ceil(workers / max(files, 1))) if workers > files else 1


def work_units(file_patterns: Sequence[str], shards_per_file: int) -> list[WorkUnit]:
    """Every file the patterns match, each cut into ``shards_per_file`` shards."""
    paths = sorted({path for pattern in file_patterns for path in tf.io.gfile.glob(pattern)})
    return [WorkUnit(path, shard, shards_per_file) for path in paths for shard in range(shards_per_file)]


@dataclass
class Evaluation:
    """Sums over some batches: per slice key, each model's metric states; per slice label, the
    tally model's no-skill tally. Sums merge in any order, across shards and workers."""

    states: dict = field(default_factory=dict)  # slice key -> model name -> state (_add)
    tallies: dict = field(default_factory=dict)  # slice label -> skill.SkillTally

    def add(self, other: Evaluation) -> Evaluation:
        for key, by_model in other.states.items():
            mine = self.states.setdefault(key, {})
            for model_name, state in by_model.items():
                mine[model_name] = _add(mine.get(model_name), state)
        for label, tally in other.tallies.items():
            self.tallies[label] = self.tallies[label].add(tally) if label in self.tallies else tally
        return self


class _EvaluateFiles(beam.DoFn):
    """One work unit (a file, or a shard of one) -> its ``Evaluation``: per slice, each model's
    metric states, and, with ``tally_model``, that model's no-skill tallies, counted from the
    same batches (no second read of the split)."""

    def __init__(self, plan: EvaluationPlan, tally_model: Optional[str] = None):
        self._plan, self._tally_model = plan, tally_model
        self._shared = shared.Shared()
        self._models: Optional[_Models] = None

    def share_loaded(self, loaded_signatures: Mapping[str, Mapping[str, Any]]) -> _Models:
        """Lets a worker in this process use the models already loaded here instead of loading
        them again; the caller keeps the returned object alive while the pipeline runs (the
        shared handle holds it weakly). A worker in another process loads its own, once."""
        return self._shared.acquire(lambda: _Models(self._plan, loaded_signatures))

    def setup(self):
        load_user_module(*self._plan.user_module)
        self._models = self._shared.acquire(lambda: _Models(self._plan))
        # The models are shared by this process's worker threads; the metric variables each
        # update and read back are not (two threads on one would mix their batches).
        self._metrics = [_MetricState(class_name) for class_name in self._plan.metric_classes]

    def process(self, unit: WorkUnit) -> Iterator[Evaluation]:
        result = Evaluation()
        dataset = tf.data.TFRecordDataset(unit.path, compression_type=tfrecord_compression(unit.path))
        batches = dataset.batch(self._plan.batch_size)
        if unit.shards > 1:
            batches = batches.shard(unit.shards, unit.shard)
        for serialized in batches.prefetch(1):
            labels, predictions, slice_values = self._models.evaluate(serialized)
            size = int(serialized.shape[0])
            keys, groups = [], []
            for key, rows in _slice_rows(self._plan, size, slice_values):
                keys.append(key)
                groups.append(np.arange(size) if isinstance(rows, slice) else rows)
            for model_name in self._plan.models:
                updates = self._states(labels[model_name], predictions[model_name], groups)
                for key, update in zip(keys, updates, strict=True):
                    state = result.states.setdefault(key, {})
                    state[model_name] = _add(state.get(model_name), update)
            if self._tally_model is not None:
                for key, rows in zip(keys, groups, strict=True):
                    tally = skill.tally(labels[self._tally_model][rows], predictions[self._tally_model][rows])
                    label = skill.slice_label(key)
                    result.tallies[label] = result.tallies[label].add(tally) if label in result.tallies else tally
        yield result

    def _states(self, labels: np.ndarray, predictions: np.ndarray, groups: list[np.ndarray]) -> list[list]:
        """Per group of rows: [example count, non-finite predictions, each metric's state]."""
        by_metric = [metric(labels, predictions, groups) for metric in self._metrics]
        finite = np.isfinite(predictions).reshape(len(predictions), -1).sum(axis=1)
        per_row = predictions[0].size if len(predictions) else 0
        return [
            [float(len(rows)), float(len(rows) * per_row - finite[rows].sum()), [states[index] for states in by_metric]]
            for index, rows in enumerate(groups)
        ]


def _add(total: Optional[list], update: list) -> list:
    if total is None:
        return update
    count, non_finite, weights = total
    return [
        count + update[0],
        non_finite + update[1],
        [[a + b for a, b in zip(mine, theirs, strict=True)] for mine, theirs in zip(weights, update[2], strict=True)],
    ]


class _SumEvaluations(beam.CombineFn):
    def create_accumulator(self) -> Evaluation:
        return Evaluation()

    def add_input(self, accumulator: Evaluation, evaluation: Evaluation) -> Evaluation:
        return accumulator.add(evaluation)

    def merge_accumulators(self, accumulators: Iterable[Evaluation]) -> Evaluation:
        merged = Evaluation()
        for accumulator in accumulators:
            merged.add(accumulator)
        return merged

    def extract_output(self, accumulator: Evaluation) -> Evaluation:
        return accumulator


def metric_values(states: Mapping[tuple, dict], metric_classes: Sequence[str]) -> Iterator[tuple[tuple, dict]]:
    """Summed states -> TFMA's (slice key, {MetricKey: value}), through the Keras metrics' own ``result()``."""
    metrics = [getattr(keras.metrics, name)(name=metric_output_name(name)) for name in metric_classes]
    for slice_key, by_model in states.items():
        values = {}
        for model_name, (count, non_finite, weights) in by_model.items():
            values[metric_types.MetricKey(name=EXAMPLE_COUNT, model_name=model_name)] = count
            values[metric_types.MetricKey(name=NON_FINITE_PREDICTIONS, model_name=model_name)] = non_finite
            for metric, metric_weights in zip(metrics, weights, strict=True):
                metric.set_weights(metric_weights)
                values[metric_types.MetricKey(name=metric.name, model_name=model_name)] = float(metric.result())
        yield slice_key, values


METRICS_FILE = f"{tfma.constants.METRICS_KEY}-00000-of-00001.tfrecord"  # the name TFMA's writer gives
EVAL_CONFIG_FILE = "eval_config.json"


def _write_results(
    evaluation: Evaluation,
    metric_classes: Sequence[str],
    output_path: Optional[str],
    eval_run: str,
    tallies_dir: Optional[str],
) -> None:
    """TFMA's metrics file (``MetricsForSlice`` records) and eval config, as ``tfma.load_metrics``
    and ``tfma.load_eval_result`` read them; the tallies as ``skill.read_tallies`` reads them.

    A handful of slices, written by the one element the evaluation combines to: TFMA's writers
    would add file-sink stages to every run for the same few records.
    """
    if output_path is not None:
        tf.io.gfile.makedirs(output_path)
        with tf.io.TFRecordWriter(os.path.join(output_path, METRICS_FILE)) as writer:
            for slice_metrics in metric_values(evaluation.states, metric_classes):
                proto = metrics_plots_and_validations_writer.convert_slice_metrics_to_proto(slice_metrics, None)
                writer.write(proto.SerializeToString())
        with tf.io.gfile.GFile(os.path.join(output_path, EVAL_CONFIG_FILE), "w") as f:
            f.write(eval_run)
    if tallies_dir is not None:
        skill.write_tallies(list(evaluation.tallies.items()), tallies_dir)


def _evaluate(
    pipeline: beam.Pipeline,
    file_patterns: Sequence[str],
    plan: EvaluationPlan,
    do_fn: _EvaluateFiles,
    stage: str,
    write: Any,
) -> None:
    _ = (
        pipeline
        | f"{stage}WorkUnits" >> beam.Create(work_units(file_patterns, plan.shards_per_file))
        | f"Spread{stage}WorkUnits" >> beam.Reshuffle()
        | f"{stage}Batches" >> beam.ParDo(do_fn)
        | f"Sum{stage}" >> beam.CombineGlobally(_SumEvaluations())
        | f"Write{stage}" >> beam.Map(write)
    )


def evaluate_and_write(
    pipeline: beam.Pipeline,
    file_patterns: Sequence[str],
    plan: EvaluationPlan,
    eval_config,
    output_path: str,
    tally_model: Optional[str] = None,
    tallies_dir: Optional[str] = None,
    loaded_signatures: Optional[Mapping[str, Mapping[str, Any]]] = None,
) -> Optional[_Models]:
    """Adds the one-pass evaluation to ``pipeline``; TFMA's metrics file and eval config go to ``output_path``.

    With ``tally_model``, that model's no-skill tallies (``skill.py``) go to ``tallies_dir``. With
    ``loaded_signatures`` (model name -> its signatures, loaded here), workers in this process use
    them; keep the returned object until the pipeline has run.
    """
    do_fn = _EvaluateFiles(plan, tally_model)
    shared_models = do_fn.share_loaded(loaded_signatures) if loaded_signatures is not None else None
    eval_run = json_format.MessageToJson(
        config_pb2.EvalRun(
            eval_config=eval_config,
            version=tfma.__version__,
            data_location="<user provided PCollection>",  # what TFMA's EvalConfigWriter records
            file_format="<unknown>",
            model_locations=dict(plan.models),
        )
    )
    tallies = tallies_dir if tally_model is not None else None
    metric_classes = list(plan.metric_classes)
    write = functools.partial(
        _write_results, metric_classes=metric_classes, output_path=output_path, eval_run=eval_run, tallies_dir=tallies
    )
    _evaluate(pipeline, file_patterns, plan, do_fn, "Evaluate", write)
    return shared_models


def add_skill_tallies(pipeline: beam.Pipeline, file_patterns: Sequence[str], plan: EvaluationPlan, output_dir: str):
    """The no-skill tallies of the plan's one model alone (beside TFMA's evaluator), for ``skill.read_tallies``."""
    (model_name,) = plan.models
    write = functools.partial(_write_results, metric_classes=(), output_path=None, eval_run="", tallies_dir=output_dir)
    _evaluate(pipeline, file_patterns, plan, _EvaluateFiles(plan, model_name), "Tally", write)
