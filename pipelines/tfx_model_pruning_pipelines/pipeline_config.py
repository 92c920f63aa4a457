"""One pipeline description for local runs and Kubeflow: a YAML file, validated by the components' own models.

``prune-pipeline run-local --config F`` and ``compile --config F`` read the same file; flags
override it. Each section is checked by the model its component uses (``prune`` by the pruning
configs, ``retrain`` by ``FineTuneConfig``, ``gate`` by ``GateConfig``), so a typo fails with
its path (``gate.thresholds.0.lower_bound: ...``) before any component runs. Relative paths are
relative to the file. The penguin run is the bundled preset ``presets/penguin.yaml``.

Example::

    config = load_pipeline_config("my_pipeline.yaml", overrides={"prune": {"target_sparsity": 0.7}})
    print(config.prune.target_sparsity)
"""

from __future__ import annotations

import copy
import os
import re
import types
import typing
from typing import Any, Literal, Mapping, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tfx_model_pruning.engine.config import AnyPruningConfig, FineTuneConfig, OneShotPruningConfig, PruningConfig
from tfx_model_pruning.engine.graph_scan import allow_ops_problem
from tfx_model_pruning.engine.keras_names import closest_name, metric_class
from tfx_model_pruning.evaluator_gate.config import GateConfig
from tfx_model_pruning.user_module import load_user_module
from tfx_model_pruning_pipelines.kubeflow_steps import StepSettings

PRESETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "presets")
PENGUIN_PRESET = os.path.join(PRESETS_DIR, "penguin.yaml")


class PipelineConfigError(ValueError):
    """The pipeline description is invalid; the message names each bad key by its path."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSection(_Section):
    """Where the examples are and how to read them."""

    root: Optional[str] = Field(
        default=None, description="Folder of the examples (local or gs://...); empty: the penguin data TFX ships."
    )
    format: Literal["tfrecord", "csv"] = Field(
        default="tfrecord", description="tfrecord: gzipped tf.Examples (ImportExampleGen); csv: CsvExampleGen."
    )
    splits: Optional[dict[str, str]] = Field(
        default=None,
        description="Split name -> file pattern under root; '{SPAN}' reads the newest span at run time. "
        "Default for tfrecord: train=Split-train/*, eval=Split-eval/*; for csv: every file, hashed 2:1 into "
        "train and eval.",
    )
    label_key: str = Field(min_length=1, description="Label feature in the raw examples.")

    @model_validator(mode="after")
    def _train_and_eval(self) -> DataSection:
        if self.splits is not None:
            missing = sorted({"train", "eval"} - set(self.splits))
            if missing:
                raise ValueError(f"splits must name the train and eval splits; missing {missing}")
        return self


class ModelSection(_Section):
    """Where the model to prune comes from: a Trainer (module file or importable run_fn) or an existing SavedModel."""

    trainer_module: Optional[str] = Field(
        default=None, description="Trainer module file with run_fn (TFX's own module files work unchanged)."
    )
    trainer_run_fn: Optional[str] = Field(
        default=None, description="Importable run_fn, e.g. 'my_package.trainer.run_fn' (nothing to package)."
    )
    baseline_model: Optional[str] = Field(
        default=None,
        description="An existing model directory to import instead: a SavedModel, a Keras 3 .keras file, or both.",
    )
    train_steps: int = Field(
        default=500, ge=1, description="Training steps of the Trainer that makes the model to prune."
    )
    transform_module: Optional[str] = Field(
        default=None, description="Module with preprocessing_fn: StatisticsGen, SchemaGen and Transform run first."
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelSection:
        sources = [name for name in ("trainer_module", "trainer_run_fn", "baseline_model") if getattr(self, name)]
        if len(sources) != 1:
            raise ValueError(
                "give exactly one of trainer_module, trainer_run_fn or baseline_model"
                + (f", not {' and '.join(sources)}" if sources else "")
            )
        if self.transform_module and self.baseline_model:
            raise ValueError("transform_module feeds a Trainer; an imported baseline_model has no use for it")
        return self


class RetrainSection(FineTuneConfig):
    """RetrainComponent's options (``FineTuneConfig``); ``label_key`` defaults to ``data.label_key``."""


class GateSection(GateConfig):
    """EvaluatorGate's options (``GateConfig``); ``label_key`` defaults to ``data.label_key``.

    ``min_sparsity`` defaults to magnitude pruning's ``target_sparsity`` (structured pruning
    removes weights, leaving no zeros to count); ``serving_model_dir`` is the push destination
    when ``compare_with`` names ``serving``.
    """

    compare_with: list[Literal["parent", "serving"]] = Field(
        default_factory=lambda: ["parent", "serving"],
        min_length=1,
        description="Baselines: the unpruned parent and/or the newest version under the push destination.",
    )

    @classmethod
    def baselines(cls) -> list[str]:
        """The names ``compare_with`` takes."""
        return [value for t in field_types(cls.model_fields["compare_with"].annotation, True) for value in t.__args__]

    def inconsistencies(self) -> list[str]:
        # GateConfig's, with the serving directory the push destination, which the pipeline fills in
        # (a local run's lies under its output directory).
        filled = self.serving_model_dir or ("<push destination>" if "serving" in self.compare_with else None)
        problems = GateConfig.inconsistencies(self.model_copy(update={"serving_model_dir": filled}))
        if self.require_serving_model and "serving" not in self.compare_with:
            problems = [p for p in problems if not p.startswith("require_serving_model")]
            problems.append("require_serving_model needs 'serving' in compare_with")
        return problems


class SecuritySection(_Section):
    """Every model is scanned before it is loaded (docs/security.md)."""

    allow_ops: list[str] = Field(
        default_factory=list,
        description="Op types the graph scan lets through (it refuses file I/O, Python callbacks, network "
        "and unknown ops: engine/graph_scan.py's REFUSED_OPS), e.g. [PrintV2]; only for models you trust.",
    )
    allow_unsafe_layers: bool = Field(
        default=False,
        description="Load models with Lambda or custom Keras layers, whose loading runs code shipped with the model.",
    )

    @field_validator("allow_ops")
    @classmethod
    def _registered_ops(cls, names: list[str]) -> list[str]:
        problem = allow_ops_problem(names)
        if problem:
            raise ValueError(problem)
        return list(dict.fromkeys(names))


class PushSection(_Section):
    destination: Optional[str] = Field(
        default=None, description="Where versions are pushed (default for local runs: <output dir>/serving)."
    )
    root: Optional[str] = Field(default=None, description="Refuse a destination outside this folder.")


class KubeflowSection(_Section):
    """What only a Kubeflow run needs; the rest of the file is shared with local runs."""

    pipeline_root: Optional[str] = Field(default=None, description="Shared storage for artifacts (gs://, s3://).")
    data_root: Optional[str] = Field(default=None, description="Default of the data_root runtime parameter.")
    serving_dir: Optional[str] = Field(default=None, description="Push destination the serving system watches.")
    push_root: Optional[str] = Field(default=None, description="Refuse a serving_dir outside this root.")
    image: Optional[str] = Field(default=None, description="Component image (default: tfx-model-pruning:<version>).")
    output_dir: str = Field(default="build/kubeflow", description="Where compile writes the job and spec files.")
    host: Optional[str] = Field(default=None, description="KFP API endpoint for submit/schedule.")
    namespace: Optional[str] = Field(default=None, description="Kubernetes namespace (multi-user KFP).")
    experiment: Optional[str] = Field(default=None, description="KFP experiment (default: the pipeline name).")
    service_account: Optional[str] = Field(
        default=None, description="Kubernetes service account the runs' pods use (submit and schedule)."
    )
    steps: dict[str, StepSettings] = Field(
        default_factory=dict,
        description="Pod settings per step, by component id (RetrainComponent, PruneComponent, EvaluatorGate, "
        "Trainer, Pusher...): CPU and memory, accelerators, node selector, tolerations, env, retries, caching.",
    )


# How much a pipeline prunes when its file names a method but no amount: 80% of the weights, half the
# channels; half the weights for the one-shot methods, which have no fine-tuning to recover from more.
_STARTING_AMOUNTS = {"target_sparsity": 0.8, "prune_fraction": 0.5}
_ONE_SHOT_START = {"target_sparsity": 0.5}
_PRUNING_MODELS = typing.get_args(typing.get_args(AnyPruningConfig)[0])


class PruningMethod:
    """The pruning methods by name (each config model's ``method``), and the setting a pipeline
    starts each from: the file's default section, and the CLI's ``--method`` switch."""

    defaults: dict[str, dict[str, float]] = {
        model.model_fields["method"].default: (
            _ONE_SHOT_START
            if issubclass(model, OneShotPruningConfig)
            else {key: value for key, value in _STARTING_AMOUNTS.items() if key in model.model_fields}
        )
        for model in _PRUNING_MODELS
        if model.model_fields["method"].default != "goal"  # a goal is asked for by --goal, not as a method
    }
    goal_start = 0.5  # target_ratio of a goal the CLI's --goal asks for without --target-ratio


# Every pruning config's method tag, the goal's too: the names a validation error's path may carry.
_METHODS = tuple(model.model_fields["method"].default for model in _PRUNING_MODELS)


class PipelineConfig(_Section):
    """A whole pipeline: data, model source, pruning, fine-tuning, release gate, push and runner options."""

    name: str = Field(
        default="pruning-pipeline",
        pattern=r"^[a-z0-9][a-z0-9-]*$",
        description="Pipeline name (lowercase, digits, '-'): names its runs, its "
        "Kubeflow files and run-local's default output directory runs/<name>.",
    )
    data: DataSection = Field(description="The examples: their folder, format, splits and label feature.")
    model: ModelSection = Field(description="The model to prune: trained by a Trainer, or an existing SavedModel.")
    prune: AnyPruningConfig = Field(
        default_factory=lambda: PruningConfig(**PruningMethod.defaults["magnitude"]),
        description="How to prune; method picks magnitude (default, 80% sparsity), structured, wanda or "
        "sparsegpt (one-shot, 50%), or layer_removal; or goal (latency: structured; size: magnitude) with "
        "target_ratio.",
    )
    retrain: RetrainSection = Field(description="How the pruned model is fine-tuned (RetrainComponent).")
    gate: GateSection = Field(description="The release checks the fine-tuned model must pass to be pushed.")
    push: PushSection = Field(default_factory=PushSection, description="Where blessed models are pushed.")
    security: SecuritySection = Field(
        default_factory=SecuritySection, description="What a model may hold: the graph scan's opt-ins."
    )
    beam_args: Optional[list[str]] = Field(
        default=None, description="Beam pipeline args (default: DirectRunner in memory, one worker)."
    )
    enable_cache: bool = Field(
        default=False, description="Reuse outputs of unchanged components (resume a killed local run)."
    )
    kubeflow: KubeflowSection = Field(
        default_factory=KubeflowSection, description="Locations and endpoint for compile, submit and schedule."
    )
    module_file: Optional[str] = Field(
        default=None,
        description="Your Python module of extensions (register_criterion, register_layer_handler, Keras "
        "classes): imported here, so the names it registers validate, and by PruneComponent, RetrainComponent "
        "and EvaluatorGate wherever they run (TFX packages it with the pipeline); an input_fn in it feeds "
        "fine-tuning.",
    )
    module_path: Optional[str] = Field(
        default=None, description="Instead of module_file: an importable module, installed in the image."
    )

    @model_validator(mode="before")
    @classmethod
    def _defaults_from_data(cls, values: Any) -> Any:
        """The label key and the sparsity to check follow the data and pruning sections unless set;
        the user's module is imported first, so the names it registers are known to the sections."""
        if not isinstance(values, dict):
            return values
        values = dict(values)
        if values.get("module_file") and values.get("module_path"):
            raise ValueError("give module_file or module_path, not both")
        if isinstance(values.get("module_file"), str) or isinstance(values.get("module_path"), str):
            load_user_module(values.get("module_file"), values.get("module_path"))
        label = (values.get("data") or {}).get("label_key") if isinstance(values.get("data"), dict) else None
        prune = values.get("prune") if isinstance(values.get("prune"), dict) else {}
        for section in ("retrain", "gate"):
            body = values.get(section)
            body = dict(body) if isinstance(body, dict) else ({} if body is None else body)
            if isinstance(body, dict) and label is not None:
                body.setdefault("label_key", label)
            values[section] = body
        if isinstance(values.get("prune"), dict) and "method" not in prune:
            # The default method, stated: without it the union cannot pick a model, and the
            # section's own mistakes would hide behind "cannot tell the method". A goal picks its own.
            values["prune"] = prune = {**prune, "method": "goal" if "goal" in prune else "magnitude"}
        gate = values["gate"]
        retrain = values["retrain"]
        if isinstance(retrain, dict) and isinstance(gate, dict) and retrain.get("epochs") is None:
            recovery = retrain.get("recovery")
            recovery = dict(recovery) if isinstance(recovery, dict) else recovery
            if recovery is None or isinstance(recovery, dict):
                followed = _recovery_from_gate(gate)
                recovery = recovery or {}
                if followed is not None and recovery.get("metric", followed["metric"]) == followed["metric"]:
                    for key, value in followed.items():
                        recovery.setdefault(key, value)
                values["retrain"] = {**retrain, "recovery": recovery}
        size_goal = prune.get("method") == "goal" and prune.get("goal") == "size"
        if isinstance(gate, dict) and "min_sparsity" not in gate and (prune.get("method") == "magnitude" or size_goal):
            target = prune.get("target_ratio" if size_goal else "target_sparsity")
            # Only a valid value: a bad one is reported once, where the user wrote it.
            if isinstance(target, (int, float)) and not isinstance(target, bool) and 0.0 < target < 1.0:
                gate["min_sparsity"] = target
        return values

    @model_validator(mode="after")
    def _recovery_follows_the_gate(self) -> PipelineConfig:
        followed = _recovery_from_gate(self.gate.model_dump())
        recovery = self.retrain.recovery
        if self.retrain.until_recovered and followed is not None and recovery.metric != followed["metric"]:
            raise ValueError(
                f"retrain.recovery.metric {recovery.metric!r} differs from the metric the gate checks "
                f"({followed['metric']!r}, gate.thresholds): fine-tuning recovers the gate's metric; leave "
                "retrain.recovery.metric out"
            )
        return self


def _recovery_from_gate(gate: Mapping) -> Optional[dict[str, Any]]:
    """The recovery settings the gate implies: its first threshold that bounds a drop against the
    parent (else its first), its direction, and half the drop it allows as the tolerance (a margin
    for the slices and the serving baseline the gate also checks). None when the gate's thresholds
    are not readable (their own errors say why)."""
    thresholds = gate.get("thresholds")
    if not isinstance(thresholds, list) or not thresholds or not all(isinstance(t, Mapping) for t in thresholds):
        return None
    chosen = next(
        (t for t in thresholds if t.get("max_absolute_drop") is not None or t.get("max_relative_drop") is not None),
        thresholds[0],
    )
    metric = chosen.get("metric")
    try:
        metric_class(metric)
    except (TypeError, ValueError):
        return None
    followed: dict[str, Any] = {"metric": metric, "higher_is_better": bool(chosen.get("higher_is_better", True))}
    for drop, tolerance in (("max_absolute_drop", "tolerance"), ("max_relative_drop", "relative_tolerance")):
        value = chosen.get(drop)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            followed[tolerance] = value / 2
            break
    return followed


def field_types(annotation: Any, keep_literals: bool = False) -> list[Any]:
    """The types a field may hold: Optional, unions, Annotated and lists unwrapped (with
    ``keep_literals``, a ``Literal[...]`` stays whole, for its choices)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return field_types(typing.get_args(annotation)[0], keep_literals)
    if origin in (typing.Union, types.UnionType, list):
        return [inner for arg in typing.get_args(annotation) for inner in field_types(arg, keep_literals)]
    return [annotation]


_candidates = field_types


def _fields_at(loc: tuple) -> list[str]:
    """The keys the section at ``loc`` accepts (the models it may be, walked from the top)."""
    models: list[Any] = [PipelineConfig]
    for part in loc:
        models = [m for m in models if isinstance(m, type) and issubclass(m, BaseModel)]
        if isinstance(part, int):
            continue  # a list's item: the list's type was unwrapped already
        if part in _METHODS and all("method" in m.model_fields for m in models):
            models = [m for m in models if m.model_fields["method"].default == part]
            continue
        models = [c for m in models if part in m.model_fields for c in _candidates(m.model_fields[part].annotation)]
    return sorted({name for m in models if isinstance(m, type) and issubclass(m, BaseModel) for name in m.model_fields})


def _suggestion(problem: dict) -> str:
    """'; did you mean X?' for an unknown key or a misspelt choice, when one valid name is close."""
    given = problem.get("input")
    if problem["type"] == "extra_forbidden":
        given, choices = problem["loc"][-1], _fields_at(problem["loc"][:-1])
    elif problem["type"] == "union_tag_invalid":
        given, choices = problem["ctx"]["tag"], re.findall(r"'([^']*)'", str(problem["ctx"]["expected_tags"]))
    elif problem["type"] == "literal_error":
        choices = re.findall(r"'([^']*)'", str(problem["ctx"]["expected"]))
    else:
        return ""
    close = closest_name(str(given), choices) if isinstance(given, str) else None
    if close:
        return f"; did you mean {close}?"
    return f"; the keys here are {', '.join(choices)}" if problem["type"] == "extra_forbidden" and choices else ""


def _located(err: ValidationError, source: str) -> PipelineConfigError:
    lines = []
    for problem in err.errors():
        # The discriminated union adds the chosen method to the path (prune.magnitude.x): drop it.
        loc = list(problem["loc"])
        if loc[:1] == ["prune"] and len(loc) > 1 and loc[1] in _METHODS:
            del loc[1]  # only the tag: "goal" is also a key of the goal's section
        path = [str(part) for part in loc]
        if problem["type"] == "union_tag_invalid":
            path.append(problem["ctx"]["discriminator"].strip("'"))
        where = ".".join(path) or "(top level)"
        if problem["type"] == "extra_forbidden":
            messages = ["unknown key"]
        else:  # a cross-field check reports each of its problems on a line of its own
            messages = problem["msg"].removeprefix("Value error, ").splitlines()
        suggestion = _suggestion(problem)
        value = problem.get("input")
        shown = "input" in problem and path and not isinstance(value, (dict, list)) and repr(value) not in messages[0]
        shown = shown and problem["type"] not in ("extra_forbidden", "union_tag_invalid")
        lines.append(f"  {where}: {messages[0]}{suggestion}" + (f" (got {value!r})" if shown else ""))
        lines += [f"  {where}: {message}" for message in messages[1:]]
    return PipelineConfigError(f"{source}: {len(lines)} invalid setting(s):\n" + "\n".join(lines))


class Replace(dict):
    """An override that replaces a whole section of the file instead of merging into it."""


def _merge(base: dict, overrides: Mapping) -> dict:
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, Replace):
            merged[key] = dict(copy.deepcopy(value))
        elif isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


_PATH_KEYS = {("data", "root"), ("model", "trainer_module"), ("model", "baseline_model"), ("model", "transform_module")}
_PATH_KEYS |= {("push", "destination"), ("push", "root")}


def _resolve_paths(raw: dict, base_dir: str) -> dict:
    """Relative local paths in the file are relative to the file; URLs (gs://...) stay as they are."""
    module_file = raw.get("module_file")
    if isinstance(module_file, str) and module_file and "://" not in module_file and not os.path.isabs(module_file):
        raw["module_file"] = os.path.normpath(os.path.join(base_dir, module_file))
    for section, key in _PATH_KEYS:
        value = (raw.get(section) or {}).get(key) if isinstance(raw.get(section), dict) else None
        if isinstance(value, str) and value and "://" not in value and not os.path.isabs(value):
            raw[section][key] = os.path.normpath(os.path.join(base_dir, value))
    return raw


def read_pipeline_file(path: str) -> dict:
    """The file's settings as a dict, relative paths resolved; a clear error for unreadable YAML."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except OSError as err:
        raise PipelineConfigError(f"cannot read pipeline file {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise PipelineConfigError(f"{path} is not valid YAML: {err}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise PipelineConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    return _resolve_paths(raw, os.path.dirname(os.path.abspath(path)))


def load_pipeline_config(path: Optional[str] = None, overrides: Optional[Mapping] = None) -> PipelineConfig:
    """The validated description in ``path`` (default: the penguin preset) with ``overrides`` merged in.

    Raises:
      PipelineConfigError: unreadable file, unknown key or bad value; every problem with its path.
    """
    source = path or PENGUIN_PRESET
    raw = _merge(read_pipeline_file(source), overrides or {})
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as err:
        raise _located(err, source + (" with the command line's settings" if overrides else "")) from None


def json_schema() -> dict:
    """The JSON schema of the pipeline file (``prune-pipeline config-schema`` prints it)."""
    return PipelineConfig.model_json_schema()
