"""``prune-pipeline``: run the pruning pipeline locally, or compile, submit and schedule it on Kubeflow.

prune-pipeline run-local --target-sparsity 0.8    # into runs/<name>: runs/penguin-pruning for the preset
prune-pipeline compile --pipeline-root gs://b/root --serving-dir gs://b/serving --data-root gs://b/data
prune-pipeline submit --host http://localhost:8080 --spec build/kubeflow/penguin-pruning.yaml
prune-pipeline schedule create --spec build/kubeflow/penguin-pruning.yaml --name nightly --cron "0 0 2 * * *"
prune-pipeline schedule list | prune-pipeline schedule disable ID
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import tempfile
from typing import Iterator, Optional, Sequence

EXIT_FAILED = 1
EXIT_REFUSED = 2  # bad input: a configuration, or a model the graph scan refuses
EXIT_NOT_PUSHED = 3


def _version() -> str:
    from importlib import metadata

    return metadata.version("tfx-model-pruning")


# Flags that each set one key of the pipeline file: flag -> dotted path. Type, choices and help
# come from the model's field at that path, so a flag cannot drift from the file it overrides.
FILE_FLAGS: dict[str, dict[str, str]] = {
    "data": {"--data-root": "data.root", "--data-format": "data.format", "--label-key": "data.label_key"},
    "model to prune": {"--train-steps": "model.train_steps", "--transform-module": "model.transform_module"},
    "pruning": {
        "--target-sparsity": "prune.target_sparsity",
        "--prune-fraction": "prune.prune_fraction",
        "--scope": "prune.scope",
        "--criterion": "prune.criterion",
        "--protected-layer": "prune.protected_layers",
        "--goal": "prune.goal",
        "--target-ratio": "prune.target_ratio",
    },
    "fine-tuning": {"--epochs": "retrain.epochs", "--learning-rate": "retrain.learning_rate", "--loss": "retrain.loss"},
    "release gate (flags change the first threshold and slice threshold)": {
        "--min-eval-examples": "gate.min_eval_examples",
        "--min-sparsity": "gate.min_sparsity",
    },
    "extensions": {"--module-file": "module_file"},
    "security": {"--allow-op": "security.allow_ops"},
    "runner": {"--beam-arg": "beam_args"},
}
# compile: where the data_root runtime parameter's default lives.
COMPILE_PATHS = {"--data-root": "kubeflow.data_root"}


def _field_at(path: str):
    """The pipeline file's field at ``path`` in every model that has it (each pruning method's)."""

    return [field for field, _ in _fields_with_models(path)]


def _fields_with_models(path: str) -> list:
    """``(field, model)`` for each model that has the field at ``path``."""
    from pydantic import BaseModel

    from tfx_model_pruning_pipelines.pipeline_config import PipelineConfig, field_types

    models: list = [PipelineConfig]
    found: list = []
    for part in path.split("."):
        found = [(model.model_fields[part], model) for model in models if part in model.model_fields]
        models = [t for field, _ in found for t in field_types(field.annotation) if isinstance(t, type)]
        models = [t for t in models if issubclass(t, BaseModel)]
    return found


def _add_file_flag(group, flag: str, path: str) -> None:
    import typing

    from tfx_model_pruning_pipelines.pipeline_config import field_types

    fields = _field_at(path)
    kinds = [t for field in fields for t in field_types(field.annotation, keep_literals=True)]
    literals = [t for t in kinds if typing.get_origin(t) is typing.Literal]
    # Choices only where every method's field is a fixed set (a criterion is any registered name).
    closed = all(t is type(None) or t in literals for t in kinds)
    choices = list(dict.fromkeys(value for t in literals for value in t.__args__)) if closed else []
    scalar = next((t for t in kinds if t in (bool, int, float, str)), str)
    wrapped = [t for f in fields for t in (f.annotation, *typing.get_args(f.annotation))]
    repeated = any(typing.get_origin(t) is list for t in wrapped)
    description = fields[0].description.rstrip(".")
    if len({field.description for field in fields}) > 1:  # each pruning method says what it means by it
        description = "; ".join(
            f"{model.model_fields['method'].default}: {field.description.rstrip('.')}"
            for field, model in _fields_with_models(path)
        )
    defaults = {repr(field.get_default(call_default_factory=True)) for field in fields if not field.is_required()}
    shown = f"; default {defaults.pop()}" if len(defaults) == 1 and "None" not in defaults else ""
    if len(defaults) > 1:
        shown = "; default " + ", ".join(
            f"{model.model_fields['method'].default}: {field.get_default(call_default_factory=True)!r}"
            for field, model in _fields_with_models(path)
        )
    # The flag's own default stays None: a flag left out leaves the file's value (or the model's default).
    options: dict = {"help": f"{description} [{path}{shown}{'; repeatable' if repeated else ''}]", "default": None}
    if scalar is bool:
        options["action"] = "store_true"
    else:
        options.update(type=scalar, action="append" if repeated else "store")
        if choices:
            options["choices"] = choices
    group.add_argument(flag, **options)


def _description_options(parser: argparse.ArgumentParser) -> None:
    """The flags run-local and compile share: each overrides one key of the pipeline file."""
    from tfx_model_pruning_pipelines.pipeline_config import GateSection, PruningMethod

    source = parser.add_argument_group("pipeline file (every flag below overrides one of its keys)")
    source.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="pipeline description (YAML; `prune-pipeline config-schema` lists every key); default: the bundled "
        "penguin preset",
    )
    source.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any key of the file by its dotted path, the value read as YAML, e.g. --set retrain.batch_size=64; "
        "repeatable",
    )
    groups = {title: parser.add_argument_group(title) for title in FILE_FLAGS}
    for title, flags in FILE_FLAGS.items():
        for flag, path in flags.items():
            _add_file_flag(groups[title], flag, path)
    groups["data"].add_argument(
        "--split-pattern",
        action="append",
        metavar="SPLIT=GLOB",
        help="files of a split under the data root, repeatable; with {SPAN} the newest span is read at run time, "
        "e.g. train=span-{SPAN}/Split-train/* [data.splits]",
    )
    model = groups["model to prune"]
    model.add_argument(
        "--trainer-module",
        metavar="FILE",
        help="Trainer module file with run_fn, instead of the file's model source [model.trainer_module]",
    )
    model.add_argument(
        "--baseline-model",
        metavar="DIR",
        help="import this model (SavedModel, .keras file, or both) instead of the file's model source "
        "[model.baseline_model]",
    )
    groups["pruning"].add_argument(
        "--method",
        choices=list(PruningMethod.defaults),
        help="[prune.method]; another method than the file's starts from its defaults ("
        + ", ".join(f"{method}: {defaults}" for method, defaults in PruningMethod.defaults.items())
        + ")",
    )
    groups["fine-tuning"].add_argument(
        "--distill", action="store_true", default=None, help="distil from the unpruned model [retrain.distillation]"
    )
    gate = groups["release gate (flags change the first threshold and slice threshold)"]
    gate.add_argument("--metric", help="Keras metric class the gate checks [gate.thresholds.0.metric]")
    gate.add_argument("--min-metric", type=float, help="absolute lower bound [gate.thresholds.0.lower_bound]")
    gate.add_argument(
        "--max-drop", type=float, help="largest allowed drop vs each baseline [gate.thresholds.0.max_absolute_drop]"
    )
    gate.add_argument(
        "--compare-with",
        choices=[*GateSection.baselines(), "both"],
        help="baselines of the gate [gate.compare_with]",
    )
    gate.add_argument("--slice-feature", help="check each value of this feature on its own; '' for none")
    gate.add_argument("--slice-min-metric", type=float, help="lower bound in every slice")
    gate.add_argument("--slice-max-drop", type=float, help="largest allowed drop in any slice")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prune-pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    local = commands.add_parser(
        "run-local",
        help="train a baseline (or import one), prune, fine-tune, gate and push, on this machine",
        description="Runs the pipeline file (default: the penguin preset) on this machine with LocalDagRunner.",
    )
    _description_options(local)
    local_only = local.add_argument_group("this run")
    local_only.add_argument(
        "--output-dir",
        default=None,
        help="pipeline root, metadata and pushes go here (default: runs/<name>, the pipeline's name: runs/"
        "penguin-pruning for the preset), so that two pipelines never share a push destination",
    )
    local_only.add_argument(
        "--enable-cache",
        action="store_true",
        default=None,
        help="reuse outputs of components whose inputs and settings are unchanged (resume after a killed run)",
    )
    local_only.add_argument(
        "--run-id", default=None, help="name of this run in ML Metadata (default: <pipeline>-<UTC time>-<random>)"
    )
    loudness = local_only.add_mutually_exclusive_group()
    loudness.add_argument(
        "-v", "--verbose", action="store_true", help="show every library's log on the terminal, and tracebacks"
    )
    loudness.add_argument(
        "-q", "--quiet", action="store_true", help="print only the failed checks, the report path and the verdict"
    )

    kubeflow = commands.add_parser(
        "compile",
        help="compile the pipeline for Kubeflow Pipelines v2 (PipelineJob JSON + bare pipeline-spec YAML)",
        description="Compiles the pipeline file (default: the penguin preset) for Kubeflow; the kubeflow section "
        "of the file gives what the flags below do not.",
    )
    _description_options(kubeflow)
    cluster = kubeflow.add_argument_group("Kubeflow locations")
    cluster.add_argument("--output-dir", help="where the job and spec files go [kubeflow.output_dir]")
    cluster.add_argument("--image", help="component image (default: tfx-model-pruning:<version>) [kubeflow.image]")
    cluster.add_argument("--pipeline-root", help="shared storage for artifacts, gs://... [kubeflow.pipeline_root]")
    cluster.add_argument("--serving-dir", help="push destination the serving system watches [kubeflow.serving_dir]")
    cluster.add_argument("--push-root", help="refuse a --serving-dir outside this root [kubeflow.push_root]")
    # --data-root (from the data group) is the default of the data_root runtime parameter here.

    commands.add_parser(
        "config-schema", help="print the JSON schema of the pipeline file (every key, its type and its meaning)"
    )

    connection = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: unset flags fall back to the environment, and --help must never print a token.
    connection.add_argument(
        "--host",
        default=argparse.SUPPRESS,
        help="KFP API endpoint, e.g. http://localhost:8080 [env KF_PIPELINES_ENDPOINT]",
    )
    connection.add_argument("--namespace", default=argparse.SUPPRESS, help="Kubernetes namespace (multi-user KFP)")
    connection.add_argument(
        "--existing-token", default=argparse.SUPPRESS, help="bearer token for every request [env KF_PIPELINES_TOKEN]"
    )
    connection.add_argument(
        "--iap-client-id", default=argparse.SUPPRESS, help="IAP OAuth client id [env KF_PIPELINES_IAP_OAUTH2_CLIENT_ID]"
    )
    connection.add_argument(
        "--experiment", default=None, help="KFP experiment, created if absent [kubeflow.experiment; else the name]"
    )
    connection.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="pipeline file whose kubeflow section gives --host, --namespace, --experiment and --spec "
        "(default: the penguin preset)",
    )
    run_options = argparse.ArgumentParser(add_help=False)
    run_options.add_argument(
        "--spec", default=None, help="the pipeline-spec YAML `compile` wrote [<kubeflow.output_dir>/<name>.yaml]"
    )
    run_options.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="runtime parameter, e.g. --param data_root=gs://bucket/data/span-8; repeatable",
    )

    submit = commands.add_parser(
        "submit",
        parents=[connection, run_options],
        help="upload the compiled pipeline (or reuse the identical version) and start one run",
    )
    submit.add_argument("--run-name", default=None, help="default: <experiment>-<UTC time>")
    caching = submit.add_mutually_exclusive_group()
    caching.add_argument(
        "--no-cache", dest="enable_caching", action="store_false", default=None, help="run every step again"
    )
    caching.add_argument(
        "--cache", dest="enable_caching", action="store_true", help="reuse cached steps (default: the spec's setting)"
    )

    schedule = commands.add_parser("schedule", help="recurring retraining runs on Kubeflow")
    schedule_commands = schedule.add_subparsers(dest="schedule_command", required=True)
    create = schedule_commands.add_parser(
        "create",
        parents=[connection, run_options],
        help="schedule recurring runs (one at a time, no catch-up)",
    )
    create.add_argument("--name", required=True, help="schedule name, unique among enabled schedules")
    create.add_argument(
        "--cron", required=True, help="KFP cron: 6 fields, seconds first ('0 0 2 * * *' = 02:00 daily), or @daily"
    )
    schedule_commands.add_parser(
        "list",
        parents=[connection],
        help="list schedules of the experiment",
    )
    disable = schedule_commands.add_parser("disable", parents=[connection], help="stop a schedule from starting runs")
    disable.add_argument("schedule_id")
    return parser


def _pairs(pairs: Sequence[str], flag: str = "--param") -> dict[str, str]:
    parameters = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name or not value:
            raise SystemExit(f"{flag} takes NAME=VALUE, got {pair!r}")
        parameters[name] = value
    return parameters


def _kubeflow_defaults(args: argparse.Namespace) -> None:
    """Fills what the flags left unset from the pipeline file's kubeflow section (or the preset)."""
    from tfx_model_pruning_pipelines.pipeline_config import load_pipeline_config

    config = load_pipeline_config(args.config)
    kubeflow = config.kubeflow
    for name in ("host", "namespace"):
        if getattr(args, name, None) is None and getattr(kubeflow, name) is not None:
            setattr(args, name, getattr(kubeflow, name))
    args.experiment = args.experiment or kubeflow.experiment or config.name
    args.service_account = kubeflow.service_account
    if hasattr(args, "spec") and args.spec is None:
        args.spec = os.path.join(kubeflow.output_dir, f"{config.name}.yaml")


def kubeflow_command(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from tabulate import tabulate

    from tfx_model_pruning_pipelines import kfp_runs

    _kubeflow_defaults(args)
    # Before connecting: a typo in the cron, the file or a parameter needs no cluster to be found.
    starts_runs = args.command == "submit" or args.schedule_command == "create"
    if starts_runs:
        if args.command == "schedule":
            kfp_runs.validate_cron(args.cron)
        spec = kfp_runs.read_spec(args.spec)
        parameters = _pairs(args.param)
        spec.check_parameters(parameters)
    namespace = getattr(args, "namespace", None)
    client = kfp_runs.connect(
        host=getattr(args, "host", None),
        namespace=namespace,
        existing_token=getattr(args, "existing_token", None) or os.environ.get("KF_PIPELINES_TOKEN"),
        iap_client_id=getattr(args, "iap_client_id", None),
    )
    if args.command == "submit":
        run_name = args.run_name or f"{args.experiment}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
        run_id = kfp_runs.submit_run(
            client,
            spec,
            experiment=args.experiment,
            run_name=run_name,
            parameters=parameters,
            namespace=namespace,
            enable_caching=args.enable_caching,
            service_account=args.service_account,
        )
        print(f"run {run_name}: {run_id}")
    elif args.schedule_command == "create":
        schedule_id = kfp_runs.schedule_run(
            client,
            spec,
            experiment=args.experiment,
            schedule_name=args.name,
            cron=args.cron,
            parameters=parameters,
            namespace=namespace,
            service_account=args.service_account,
        )
        print(f"schedule {args.name} ({args.cron}): {schedule_id}")
    elif args.schedule_command == "list":
        schedules = kfp_runs.list_schedules(client, experiment=args.experiment, namespace=namespace)
        rows = [[s["id"], s["name"], s["cron"], "enabled" if s["enabled"] else "disabled"] for s in schedules]
        print(tabulate(rows, headers=["id", "name", "cron", "state"], tablefmt="github"))
    else:
        kfp_runs.disable_schedule(client, args.schedule_id)
        print(f"schedule {args.schedule_id} disabled")
    return 0


def _set_path(tree: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise SystemExit(f"--set {dotted}: {key} is not a section")
    node[keys[-1]] = value


def _first(raw: dict, section: str, key: str) -> dict:
    """The first entry of a list of thresholds, created when the file has none."""
    entries = raw.setdefault(section, {}).setdefault(key, [{}])
    if not entries:
        entries.append({})
    return entries[0]


def description_overrides(args: argparse.Namespace, file_settings: dict) -> dict:
    """The pipeline-file keys the flags given on the command line set (flags left out change nothing)."""
    import yaml

    from tfx_model_pruning_pipelines.pipeline_config import PipelineConfig, PruningMethod, Replace

    given = {name: value for name, value in vars(args).items() if value is not None}
    raw: dict = {}
    flat = {flag: path for flags in FILE_FLAGS.values() for flag, path in flags.items()}
    flat["--enable-cache"] = "enable_cache"
    if args.command == "compile":
        flat.update(COMPILE_PATHS)
        flat.update(
            {
                "--output-dir": "kubeflow.output_dir", "--image": "kubeflow.image",
                "--pipeline-root": "kubeflow.pipeline_root", "--serving-dir": "kubeflow.serving_dir",
                "--push-root": "kubeflow.push_root",
            }
        )  # fmt: skip
    for flag, path in flat.items():
        name = flag.removeprefix("--").replace("-", "_")
        if name in given:
            _set_path(raw, path, given[name])
    if "split_pattern" in given:
        raw.setdefault("data", {})["splits"] = _pairs(given["split_pattern"], "--split-pattern")
    for name in ("trainer_module", "baseline_model"):
        if name in given:  # one source replaces the file's
            raw["model"] = {**raw.get("model", {}), "trainer_module": None, "trainer_run_fn": None}
            raw["model"]["baseline_model"] = None
            raw["model"][name] = given[name]
    file_prune = file_settings.get("prune") or {}
    if "method" in given and given["method"] != file_prune.get("method", "magnitude"):
        # Another method: the file's options for its own method do not apply.
        kept = {key: value for key, value in file_prune.items() if key in ("protected_layers", "label_key")}
        defaults = PruningMethod.defaults[given["method"]]
        raw["prune"] = Replace({**kept, **defaults, "method": given["method"], **raw.get("prune", {})})
    if "goal" in given and (file_prune.get("method") != "goal" or given["goal"] != file_prune.get("goal")):
        # A goal instead of the file's method: its own config, the amount from --target-ratio or the start.
        kept = {key: value for key, value in file_prune.items() if key == "protected_layers"}
        start = {"target_ratio": file_prune.get("target_ratio", PruningMethod.goal_start)}
        raw["prune"] = Replace({**kept, **start, "method": "goal", **raw.get("prune", {})})
    if given.get("distill"):
        raw.setdefault("retrain", {})["distillation"] = {}  # DistillationConfig's defaults
    if "compare_with" in given:
        choice = given["compare_with"]
        raw.setdefault("gate", {})["compare_with"] = ["parent", "serving"] if choice == "both" else [choice]
    gate = {**(file_settings.get("gate") or {}), **raw.get("gate", {})}
    threshold_flags = {"metric": "metric", "min_metric": "lower_bound", "max_drop": "max_absolute_drop"}
    if any(flag in given for flag in threshold_flags):
        raw.setdefault("gate", {})["thresholds"] = [dict(t) for t in gate.get("thresholds") or [{}]]
        for flag, key in threshold_flags.items():
            if flag in given:
                _first(raw, "gate", "thresholds")[key] = given[flag]
    if given.get("slice_feature") == "":
        raw.setdefault("gate", {}).update({"slice_feature": None, "slice_thresholds": []})
    else:
        if "slice_feature" in given:
            raw.setdefault("gate", {})["slice_feature"] = given["slice_feature"]
        slice_flags = {"slice_min_metric": "lower_bound", "slice_max_drop": "max_absolute_drop"}
        # --metric names the metric everywhere; slice bounds apply where there is a slice feature.
        if any(flag in given for flag in slice_flags) or ("metric" in given and gate.get("slice_thresholds")):
            raw.setdefault("gate", {})["slice_thresholds"] = [dict(t) for t in gate.get("slice_thresholds") or [{}]]
            first = _first(raw, "gate", "slice_thresholds")
            first.update({key: given[flag] for flag, key in slice_flags.items() if flag in given})
            thresholds = raw.get("gate", {}).get("thresholds") or gate.get("thresholds") or [{}]
            first["metric"] = given.get("metric") or first.get("metric") or thresholds[0].get("metric")
    for pair in args.set:
        path, sep, text = pair.partition("=")
        if not sep or not path:
            raise SystemExit(f"--set takes KEY=VALUE, got {pair!r}")
        if path.split(".")[0] not in PipelineConfig.model_fields:
            raise SystemExit(
                f"--set {path}: no section {path.split('.')[0]!r}; sections: {sorted(PipelineConfig.model_fields)}"
            )
        _set_path(raw, path, yaml.safe_load(text))
    return raw


def load_description(args: argparse.Namespace):
    """The validated pipeline description: the file (or the preset), then the flags."""
    from tfx_model_pruning_pipelines.pipeline_config import PENGUIN_PRESET, load_pipeline_config, read_pipeline_file

    file_settings = read_pipeline_file(args.config or PENGUIN_PRESET)
    return load_pipeline_config(args.config, description_overrides(args, file_settings))


def run_local(args: argparse.Namespace) -> int:
    import traceback
    import uuid
    from datetime import datetime, timezone

    from tfx_model_pruning_pipelines import pruning_pipeline
    from tfx_model_pruning_pipelines.pipeline_config import PipelineConfigError

    try:
        config = load_description(args)
        output_dir = local_output_dir(args, config)
        metadata_path = os.path.join(output_dir, "metadata.sqlite")
        run_id = args.run_id or f"{config.name}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        pipeline = pruning_pipeline.create_pipeline(
            config,
            pipeline_root=os.path.join(output_dir, "root"),
            serving_model_dir=config.push.destination or os.path.join(output_dir, "serving"),
            metadata_path=metadata_path,
            push_root=config.push.root or output_dir,
        )
    except PipelineConfigError as err:
        print(f"prune-pipeline run-local: error: {err}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as err:  # pydantic's ValidationError is a ValueError
        if args.verbose:
            traceback.print_exc()
        print(f"prune-pipeline run-local: error: {_one_line(err)}", file=sys.stderr)
        return 2
    from tfx_model_pruning_pipelines.console import RunConsole, log_path_for, paint

    log_path = log_path_for(output_dir, run_id)
    shown_log = os.path.relpath(log_path) if not os.path.relpath(log_path).startswith("..") else log_path
    print(f"Run {run_id} (log: {shown_log})")
    try:
        with RunConsole(sys.stdout, log_path, verbose=args.verbose, steps=not args.quiet):
            pruning_pipeline.run_locally(pipeline, run_id)
    except Exception as err:
        if args.verbose:
            traceback.print_exc()
        line = failure_line(metadata_path, run_id, err)
        print(paint(line, "red", sys.stderr), file=sys.stderr)
        if refused_model(err, line):
            print(f"NOT pushed: run {run_id} refused a model its graph scan found unsafe", file=sys.stderr)
            return EXIT_REFUSED
        print(f"NOT pushed: run {run_id} failed{'' if args.verbose else ' (-v prints the traceback)'}", file=sys.stderr)
        return EXIT_FAILED
    return _print_run_result(metadata_path, run_id, quiet=args.quiet)


def local_output_dir(args: argparse.Namespace, config) -> str:
    """--output-dir, else runs/<pipeline name>: each pipeline its own metadata, root and serving versions."""
    return os.path.abspath(args.output_dir or os.path.join("runs", config.name))


def refused_model(err: BaseException, line: str) -> bool:
    """Whether a run failed because a component refused a model as unsafe (the exception itself, or
    the reason the component recorded: the gate records its failure rather than raising it)."""
    from tfx_model_pruning.engine.load_errors import UnsafeModelError

    return isinstance(err, UnsafeModelError) or any(
        f"{name}:" in line for name in ("UnsafeGraphError", "UnsafeModelError")
    )


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 600 else text[:597] + "..."


def failure_line(metadata_path: str, run_id: str, err: BaseException) -> str:
    """Which component failed and why, in one line: its own recorded reason, or the exception."""
    from tfx_model_pruning_pipelines.results import failed_steps

    try:
        failed = failed_steps(metadata_path, run_id)
    except Exception:  # the run may have failed before ML Metadata recorded anything
        failed = []
    reason = f"{type(err).__name__}: {_one_line(err)}"
    if not failed:
        return f"prune-pipeline run-local: error: {reason}"
    step = failed[0]
    if step.message:
        reason = " ".join(step.message.split())
    return f"prune-pipeline run-local: error: {step.component} failed: {reason}"


def check_lines(gate_result) -> list[str]:
    """One line per gate check, failures first: its verdict and, in words, measured value against bound."""
    from tfx_model_pruning.evaluator_gate.report import as_gate_result

    return [f"  {check.verdict}  {check.explain()}" for check in as_gate_result(gate_result).checks_failed_first()]


def _print_run_result(metadata_path: str, run_id: str, quiet: bool = False) -> int:
    from tabulate import tabulate

    from tfx_model_pruning.evaluator_gate.report import comparison_rows
    from tfx_model_pruning.evaluator_gate.result import GateDecision
    from tfx_model_pruning_pipelines.console import paint
    from tfx_model_pruning_pipelines.results import run_result

    result = run_result(metadata_path, run_id)
    gate = GateDecision.from_json(result.gate_result)
    checks = gate.checks
    lines = check_lines(gate)
    failed = [line for line in lines if line.startswith("  FAIL")]
    notes = [line.removeprefix("  NOTE  ") for line in lines if line.startswith("  NOTE")]
    if not quiet:
        header, *rows = comparison_rows(gate)
        print()
        print(tabulate(rows, headers=header, tablefmt="github", disable_numparse=True))
    print()
    counted = len(checks) - len(notes)
    if failed:
        print(paint(f"{len(failed)} of {counted} checks failed:", "red", sys.stdout))
        print("\n".join(paint(line, "red", sys.stdout) for line in failed))
    else:
        print(f"All {counted} checks passed (each with its measured value in the release report).")
    for note in notes:
        print(f"Note: {note}")
    if gate.fine_tuning is not None:
        print(f"Fine-tuning: {gate.fine_tuning.summary()}")
    print(f"Release report: {result.gate_html_path}")
    if not quiet:
        print(f"                {result.gate_summary_path}")
        print(f"Pruning report: {result.pruning_report_path}")
    if result.pushed:
        print(paint(f"\nRun {run_id}: BLESSED and pushed to {result.pushed_destination}", "green", sys.stdout))
        return 0
    print(paint(f"\nRun {run_id}: NOT pushed: {len(failed)} of {counted} release checks failed", "red", sys.stdout))
    return EXIT_NOT_PUSHED


def compile_kubeflow(args: argparse.Namespace) -> int:
    from tfx_model_pruning_pipelines import kubeflow
    from tfx_model_pruning_pipelines.kubeflow_steps import StepSettingsError
    from tfx_model_pruning_pipelines.pipeline_config import PipelineConfigError

    try:
        config = load_description(args)
        missing = [
            f"kubeflow.{key} (--{key.replace('_', '-')})"
            for key in ("pipeline_root", "serving_dir", "data_root")
            if getattr(config.kubeflow, key) is None
        ]
        if missing:
            raise PipelineConfigError(f"compiling for Kubeflow needs {', '.join(missing)}")
        pipeline = kubeflow.kubeflow_pipeline(config)
    except PipelineConfigError as err:
        print(f"prune-pipeline compile: error: {err}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as err:
        print(f"prune-pipeline compile: error: {_one_line(err)}", file=sys.stderr)
        return 2
    try:
        # TFX packages a Trainer module file into a wheel here: setuptools' ~100 lines are shown on failure only.
        with _captured_output() as captured:
            job, spec = kubeflow.compile_pipeline(
                pipeline,
                config.kubeflow.output_dir,
                config.kubeflow.image or kubeflow.default_image(),
                parameter_defaults={kubeflow.DATA_ROOT_PARAMETER: config.kubeflow.data_root},
                steps=config.kubeflow.steps,
            )
    except StepSettingsError as err:
        print(f"prune-pipeline compile: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        explained = cloud_storage_error(err, config.kubeflow.pipeline_root)
        if explained is None:
            sys.stderr.write(captured.text)
            raise
        print(f"prune-pipeline compile: error: {explained}", file=sys.stderr)
        return 2
    print(f"PipelineJob: {job}\nPipeline spec (for KFP upload_pipeline): {spec}")
    return 0


class _Captured:
    text = ""


@contextlib.contextmanager
def _captured_output() -> Iterator[_Captured]:
    """Holds what this process and its subprocesses write to stdout and stderr (the file descriptors)."""
    captured = _Captured()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as capture:
        try:
            os.dup2(capture.fileno(), 1)
            os.dup2(capture.fileno(), 2)
            yield captured
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            for fd, saved_fd in zip((1, 2), saved, strict=True):
                os.dup2(saved_fd, fd)
                os.close(saved_fd)
            capture.seek(0)
            captured.text = capture.read().decode("utf-8", "replace")


_GCLOUD_FIX = (
    "run `gcloud auth application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file"
)


def cloud_storage_error(err: BaseException, pipeline_root: Optional[str]) -> Optional[str]:
    """One line for a cloud storage or credentials failure (what failed, why, how to fix); None for others."""
    import tensorflow as tf

    try:
        from google.auth.exceptions import GoogleAuthError
    except ImportError:  # pragma: no cover - installed with apache-beam[gcp]
        GoogleAuthError = ()  # noqa: N806
    if not isinstance(err, (tf.errors.OpError, GoogleAuthError)):
        return None
    text = " ".join(str(getattr(err, "message", None) or err).split())
    url = re.search(r"\b[a-z0-9]+://[^\s'\"]+", text)
    where = url.group(0) if url else (pipeline_root or "cloud storage")
    why = "TFX uploads module files (the Trainer's, the Transform's, module_file) as packages under the pipeline root"
    denied = (tf.errors.UnauthenticatedError, tf.errors.PermissionDeniedError, GoogleAuthError)
    if isinstance(err, denied) or re.search(r"\b40[13]\b|credential|anonymous caller|bearer token", text, re.I):
        return (
            f"cannot write to {where}: Google Cloud credentials are missing or may not write there ({why}). "
            f"To fix: {_GCLOUD_FIX} with write access to the bucket, then compile again."
        )
    if re.search(r"resolve host|couldn't connect|timed out|network is unreachable", text, re.I):
        return (
            f"cannot reach {where} from this machine ({why}): {_one_line(text)[:200]}. To fix: compile where "
            "the bucket is reachable (network, proxy, DNS) with Google Cloud credentials, or give "
            "model.trainer_run_fn and module_path (importable in the image) instead of module files: nothing to upload."
        )
    return f"cannot access {where} ({why}): {_one_line(text)[:300]}"


def print_schema() -> int:
    import json

    from tfx_model_pruning_pipelines.pipeline_config import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def _import_tensorflow_quietly() -> None:
    """Imports TensorFlow with file descriptor 2 pointed at a scratch file.

    TensorFlow 2.21 writes its start-up lines (oneDNN, CUDA driver probes) through absl before
    ``TF_CPP_MIN_LOG_LEVEL`` applies, so the variable no longer keeps them off the terminal. What
    the import wrote is shown only if the import fails.
    """
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as scratch:
        os.dup2(scratch.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        except BaseException:
            os.dup2(saved, 2)
            scratch.seek(0)
            sys.stderr.write(scratch.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _choose_keras_for_this_process() -> None:
    """The command's own process, before TensorFlow loads: ``tf.keras`` is tf-keras, as TFX 1.16+ asks.

    Trainer and Transform module files written from TFX's examples and templates build their
    models with ``tf.keras``, and TFMA loads models with it; the local run executes them in this
    process. The library itself never sets this: only this entry point, for its own process, and
    only when TensorFlow has not loaded yet (a caller that imported it already has chosen).
    """
    if "tensorflow" not in sys.modules:
        os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _choose_keras_for_this_process()
    if not {"-v", "--verbose"} & set(argv):
        # Before TensorFlow is imported: its C++ log lines (CUDA probes, rendezvous notes) stay off,
        # and the libraries' import-time warnings go to the run's log, not the terminal.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import logging

        logging.captureWarnings(True)
        logging.getLogger("py.warnings").addHandler(logging.NullHandler())
        logging.getLogger("py.warnings").propagate = False  # a library's basicConfig must not print them
        _import_tensorflow_quietly()
    # The flags are made from the config models, which import TensorFlow: after the quieting above.
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "run-local":
        return run_local(args)
    if args.command == "compile":
        return compile_kubeflow(args)
    if args.command == "config-schema":
        return print_schema()
    if args.command in ("submit", "schedule"):
        from google.auth.exceptions import GoogleAuthError
        from kfp_server_api import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return kubeflow_command(args)
        except HTTPError as err:  # no answer at all: wrong host, port, proxy or network
            host = getattr(args, "host", None) or os.environ.get("KF_PIPELINES_ENDPOINT", "the default host")
            parser.exit(
                1,
                f"prune-pipeline {args.command}: error: cannot reach the KFP API at {host}: "
                f"{_one_line(getattr(err, 'reason', None) or err)}\n",
            )
        except (ValueError, OSError) as err:  # bad cron, spec file or parameter; a clash with what exists
            parser.exit(2, f"prune-pipeline {args.command}: error: {err}\n")
        except GoogleAuthError as err:  # an IAP-protected endpoint, without Google credentials here
            parser.exit(
                1,
                f"prune-pipeline {args.command}: error: no usable Google Cloud credentials for the KFP API "
                f"({_one_line(err)[:200]}). To fix: {_GCLOUD_FIX}, then try again.\n",
            )
        except ApiException as err:  # the API server's own answer, without the SDK's traceback
            parser.exit(
                1, f"prune-pipeline {args.command}: the KFP API answered {err.status} {err.reason}: {err.body}\n"
            )
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
