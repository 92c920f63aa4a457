"""``prune-pipeline``: run the pruning pipeline locally, or compile, submit and schedule it on Kubeflow.

prune-pipeline run-local --output-dir runs/penguin --target-sparsity 0.8
prune-pipeline compile --pipeline-root gs://b/root --serving-dir gs://b/serving --data-root gs://b/data
prune-pipeline submit --host http://localhost:8080 --spec build/kubeflow/penguin-pruning.yaml
prune-pipeline schedule create --spec build/kubeflow/penguin-pruning.yaml --name nightly --cron "0 0 2 * * *"
prune-pipeline schedule list | prune-pipeline schedule disable ID
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

EXIT_FAILED = 1
EXIT_NOT_PUSHED = 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prune-pipeline", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument(
        "--split-pattern",
        action="append",
        default=[],
        metavar="SPLIT=GLOB",
        help="files of a split under the data root; with {SPAN} the newest span is read at run time, e.g. "
        "train=span-{SPAN}/Split-train/* (default: train=Split-train/* eval=Split-eval/*)",
    )

    gate = argparse.ArgumentParser(add_help=False)
    gate.add_argument("--metric", default="SparseCategoricalAccuracy", help="Keras metric class the gate checks")
    gate.add_argument("--min-metric", type=float, default=0.9, help="absolute lower bound on --metric")
    gate.add_argument("--max-drop", type=float, default=0.01, help="largest allowed drop of --metric vs each baseline")
    gate.add_argument(
        "--compare-with",
        choices=["parent", "serving", "both"],
        default="both",
        help="gate baselines: the unpruned parent model, the newest pushed version, or both",
    )
    gate.add_argument(
        "--slice-feature", default="species", help="check --slice-min-metric per value of this feature ('' for none)"
    )
    gate.add_argument(
        "--min-eval-examples", type=int, default=100, help="the gate refuses an eval split with fewer examples"
    )
    gate.add_argument("--slice-min-metric", type=float, default=0.8, help="lower bound on --metric in every slice")
    gate.add_argument(
        "--slice-max-drop", type=float, default=0.05, help="largest allowed drop of --metric in any slice"
    )

    local = commands.add_parser(
        "run-local",
        parents=[data, gate],
        help="train a baseline (or import one), prune, fine-tune, gate and push, on this machine",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    local.add_argument(
        "--output-dir", default="runs/penguin", help="pipeline root, metadata and push destination go here"
    )
    local.add_argument("--data-root", default=None, help="TFRecord splits (default: the penguin data shipped with TFX)")
    local.add_argument("--label-key", default="species")
    local.add_argument("--baseline-model", default=None, help="import this SavedModel instead of training a baseline")
    local.add_argument("--train-steps", type=int, default=500, help="baseline Trainer steps")
    local.add_argument("--method", choices=["magnitude", "structured"], default="magnitude")
    local.add_argument("--target-sparsity", type=float, default=0.8, help="magnitude: fraction of weights zeroed")
    local.add_argument(
        "--prune-fraction", type=float, default=0.5, help="structured: fraction of units/filters removed"
    )
    local.add_argument("--scope", choices=["global", "per_layer"], default=None, help="default: the method's")
    local.add_argument("--protected-layer", action="append", default=[], help="layer name or regex; repeatable")
    local.add_argument("--epochs", type=int, default=20, help="fine-tuning epochs")
    local.add_argument(
        "--enable-cache",
        action="store_true",
        help="reuse outputs of components whose inputs and settings are unchanged (resume after a killed run)",
    )
    local.add_argument("--learning-rate", type=float, default=1e-3)
    local.add_argument(
        "--loss",
        default=None,
        help="Keras loss class for fine-tuning, e.g. SparseCategoricalCrossentropy (default: the model's compiled "
        "loss; a model saved with tf.saved_model.save has none, so give it)",
    )
    local.add_argument(
        "--distill",
        action="store_true",
        help="fine-tune with knowledge distillation from the baseline (T=4, alpha=0.5)",
    )
    local.add_argument("--min-sparsity", type=float, default=None, help="default: the target sparsity")
    local.add_argument(
        "--run-id", default=None, help="name of this run in ML Metadata (default: <pipeline>-<UTC time>-<random>)"
    )
    local.add_argument("-v", "--verbose", action="store_true", help="print the full traceback when the run fails")

    kubeflow = commands.add_parser(
        "compile",
        parents=[data, gate],
        help="compile the pipeline for Kubeflow Pipelines v2 (PipelineJob JSON + bare pipeline-spec YAML)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    kubeflow.add_argument("--output-dir", default="build/kubeflow")
    kubeflow.add_argument("--image", default=None, help="component image (default: tfx-model-pruning:<version>)")
    kubeflow.add_argument(
        "--pipeline-root", required=True, help="shared storage for artifacts, e.g. gs://... or s3://..."
    )
    kubeflow.add_argument("--serving-dir", required=True, help="push destination the serving system watches")
    kubeflow.add_argument(
        "--push-root", default=None, help="refuse a --serving-dir outside this root (e.g. gs://bucket/serving)"
    )
    kubeflow.add_argument("--data-root", required=True, help="default of the data_root runtime parameter")
    kubeflow.add_argument("--label-key", default="species")
    kubeflow.add_argument("--target-sparsity", type=float, default=0.8)
    kubeflow.add_argument("--epochs", type=int, default=20)
    kubeflow.add_argument(
        "--beam-arg",
        action="append",
        default=[],
        help="passed to Beam; repeatable, e.g. --beam-arg=--runner=DirectRunner",
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
    connection.add_argument("--experiment", default="penguin-pruning", help="KFP experiment (created if absent)")
    run_options = argparse.ArgumentParser(add_help=False)
    run_options.add_argument(
        "--spec", default="build/kubeflow/penguin-pruning.yaml", help="the pipeline-spec YAML `compile` wrote"
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
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    submit.add_argument("--run-name", default=None, help="default: <experiment>-<UTC time>")
    caching = submit.add_mutually_exclusive_group()
    caching.add_argument("--no-cache", dest="enable_caching", action="store_false", default=None)
    caching.add_argument("--cache", dest="enable_caching", action="store_true")

    schedule = commands.add_parser("schedule", help="recurring retraining runs on Kubeflow")
    schedule_commands = schedule.add_subparsers(dest="schedule_command", required=True)
    create = schedule_commands.add_parser(
        "create",
        parents=[connection, run_options],
        help="schedule recurring runs (one at a time, no catch-up)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    create.add_argument("--name", required=True, help="schedule name, unique among enabled schedules")
    create.add_argument(
        "--cron", required=True, help="KFP cron: 6 fields, seconds first ('0 0 2 * * *' = 02:00 daily), or @daily"
    )
    schedule_commands.add_parser(
        "list",
        parents=[connection],
        help="list schedules of the experiment",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
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


def _split_patterns(args: argparse.Namespace) -> dict[str, str]:
    from tfx_model_pruning.pipelines.pruning_pipeline import DEFAULT_SPLIT_PATTERNS

    patterns = _pairs(args.split_pattern, "--split-pattern") or dict(DEFAULT_SPLIT_PATTERNS)
    missing = sorted({"train", "eval"} - set(patterns))
    if missing:
        raise SystemExit(f"--split-pattern must name the train and eval splits; missing {missing}")
    return patterns


def kubeflow_command(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from tabulate import tabulate

    from tfx_model_pruning.pipelines import kfp_runs

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


def _prune_args(args: argparse.Namespace) -> dict:
    common = {"method": args.method, "scope": args.scope, "protected_layers": args.protected_layer}
    if args.method == "structured":
        return {**common, "prune_fraction": args.prune_fraction}
    return {**common, "target_sparsity": args.target_sparsity}


def _gate_args(args: argparse.Namespace, min_sparsity) -> dict:
    gate_args = {
        "thresholds": [{"metric": args.metric, "lower_bound": args.min_metric, "max_absolute_drop": args.max_drop}],
        "min_sparsity": min_sparsity,
        "min_eval_examples": args.min_eval_examples,
    }
    if args.slice_feature:
        gate_args["slice_feature"] = args.slice_feature
        gate_args["slice_thresholds"] = [
            {"metric": args.metric, "lower_bound": args.slice_min_metric, "max_absolute_drop": args.slice_max_drop}
        ]
    return gate_args


def _compare_with(args: argparse.Namespace) -> tuple[str, ...]:
    return ("parent", "serving") if args.compare_with == "both" else (args.compare_with,)


def _min_sparsity(args: argparse.Namespace):
    if args.min_sparsity is not None:
        return args.min_sparsity
    # Structured pruning removes weights instead of zeroing them, so it leaves no sparsity to check.
    return args.target_sparsity if args.method == "magnitude" else None


def run_local(args: argparse.Namespace) -> int:
    import traceback
    import uuid
    from datetime import datetime, timezone

    from tfx_model_pruning.pipelines import penguin_trainer, pruning_pipeline

    output_dir = os.path.abspath(args.output_dir)
    metadata_path = os.path.join(output_dir, "metadata.sqlite")
    run_id = args.run_id or f"penguin-pruning-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    try:
        pipeline = pruning_pipeline.create_pipeline(
            pipeline_name="penguin-pruning",
            pipeline_root=os.path.join(output_dir, "root"),
            data_root=args.data_root or penguin_trainer.penguin_data_root(),
            serving_model_dir=os.path.join(output_dir, "serving"),
            label_key=args.label_key,
            trainer_module_file=None if args.baseline_model else pruning_pipeline.PENGUIN_TRAINER_MODULE,
            baseline_model_uri=args.baseline_model,
            train_steps=args.train_steps,
            prune_args=_prune_args(args),
            retrain_args={
                "epochs": args.epochs,
                "learning_rate": args.learning_rate,
                "loss": args.loss,
                "distillation": {"temperature": 4.0, "alpha": 0.5} if args.distill else None,
            },
            gate_args=_gate_args(args, _min_sparsity(args)),
            compare_with=_compare_with(args),
            split_patterns=_split_patterns(args),
            metadata_path=metadata_path,
            push_root=output_dir,
            enable_cache=args.enable_cache,
        )
    except (ValueError, OSError) as err:  # pydantic's ValidationError is a ValueError
        if args.verbose:
            traceback.print_exc()
        print(f"prune-pipeline run-local: error: {_one_line(err)}", file=sys.stderr)
        return 2
    print(f"Run {run_id}")
    try:
        pruning_pipeline.run_locally(pipeline, run_id)
    except Exception as err:
        if args.verbose:
            traceback.print_exc()
        print(failure_line(metadata_path, run_id, err), file=sys.stderr)
        print(f"NOT pushed: run {run_id} failed{'' if args.verbose else ' (-v prints the traceback)'}", file=sys.stderr)
        return EXIT_FAILED
    return _print_run_result(metadata_path, run_id)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 600 else text[:597] + "..."


def failure_line(metadata_path: str, run_id: str, err: BaseException) -> str:
    """Which component failed and why, in one line: its own recorded reason, or the exception."""
    from tfx_model_pruning.pipelines.results import failed_steps

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


def check_lines(gate_result: dict) -> list[str]:
    """One line per gate check: verdict, name, measured value, bound and detail."""
    lines = []
    for check in gate_result["checks"]:
        verdict = "PASS" if check["passed"] else "FAIL"
        measured = "-" if check["measured"] is None else f"{check['measured']:.6g}"
        bound = "-" if check["bound"] is None else f"{check['bound']:.6g}"
        detail = f" ({check['detail']})" if check["detail"] else ""
        lines.append(f"  {verdict}  {check['name']}: measured {measured}, bound {bound}{detail}")
    return lines


def _print_run_result(metadata_path: str, run_id: str) -> int:
    from tabulate import tabulate

    from tfx_model_pruning.evaluator_gate.report import comparison_rows
    from tfx_model_pruning.pipelines.results import run_result

    result = run_result(metadata_path, run_id)
    header, *rows = comparison_rows(result.gate_result)
    print()
    print(tabulate(rows, headers=header, tablefmt="github", disable_numparse=True))
    print()
    print("\n".join(check_lines(result.gate_result)))
    print(f"\nPruning report:      {result.pruning_report_path}")
    print(f"Release gate report: {result.gate_summary_path}")
    print(f"                     {result.gate_html_path} (open in a browser)")
    if result.pushed:
        print(f"\nRun {run_id}: BLESSED and pushed to {result.pushed_destination}")
        return 0
    print(f"\nRun {run_id}: NOT pushed: the gate refused the model ({', '.join(result.gate_result['failed_checks'])})")
    return EXIT_NOT_PUSHED


def compile_kubeflow(args: argparse.Namespace) -> int:
    from tfx_model_pruning.pipelines import kubeflow

    pipeline = kubeflow.kubeflow_pipeline(
        pipeline_name="penguin-pruning",
        pipeline_root=args.pipeline_root,
        default_data_root=args.data_root,
        serving_model_dir=args.serving_dir,
        label_key=args.label_key,
        prune_args={"target_sparsity": args.target_sparsity},
        retrain_args={"epochs": args.epochs},
        gate_args=_gate_args(args, args.target_sparsity),
        compare_with=_compare_with(args),
        split_patterns=_split_patterns(args),
        push_root=args.push_root,
        beam_pipeline_args=args.beam_arg,
    )
    job, spec = kubeflow.compile_pipeline(
        pipeline,
        args.output_dir,
        args.image or kubeflow.default_image(),
        parameter_defaults={kubeflow.DATA_ROOT_PARAMETER: args.data_root},
    )
    print(f"PipelineJob: {job}\nPipeline spec (for KFP upload_pipeline): {spec}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "run-local":
        return run_local(args)
    if args.command == "compile":
        return compile_kubeflow(args)
    if args.command in ("submit", "schedule"):
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
        except ApiException as err:  # the API server's own answer, without the SDK's traceback
            parser.exit(
                1, f"prune-pipeline {args.command}: the KFP API answered {err.status} {err.reason}: {err.body}\n"
            )
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
