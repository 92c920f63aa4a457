"""Submitting and scheduling on Kubeflow, tested at the HTTP boundary against a local KFP API."""

import json
import re

import kfp_api_server
import pytest

from tfx_model_pruning_pipelines import cli, kfp_runs


@pytest.fixture
def kfp_api():
    api, server = kfp_api_server.start()
    yield api
    server.shutdown()
    assert api.errors == []
    server.server_close()


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("kfp")
    args = ["compile", "--output-dir", str(out), "--pipeline-root", "gs://bucket/root"]
    args += ["--serving-dir", "gs://bucket/serving", "--data-root", "gs://bucket/data/span-1"]
    assert cli.main(args) == 0
    return str(out / "penguin-pruning.yaml")


def _cli(api, *args):
    return cli.main([*args, "--host", api.host, "--existing-token", "secret-token"])


def test_submit_uploads_the_spec_creates_the_experiment_and_the_run(kfp_api, spec_path, capsys):
    assert _cli(kfp_api, "submit", "--spec", spec_path, "--param", "data_root=gs://bucket/data/span-8") == 0

    (upload,) = kfp_api.calls("POST", "/pipelines/upload")
    assert upload.query["name"] == "penguin-pruning"
    with open(spec_path, "rb") as f:
        assert f.read() in upload.body, "the bare pipeline spec is what gets uploaded"
    (version_upload,) = kfp_api.calls("POST", "/pipelines/upload_version")
    assert version_upload.query["name"].startswith("penguin-pruning-")
    (experiment,) = kfp_api.calls("POST", "/experiments")
    assert experiment.json()["display_name"] == "penguin-pruning"
    (run,) = kfp_api.calls("POST", "/runs")
    body = run.json()
    assert body["experiment_id"] == experiment_id(kfp_api)
    assert body["runtime_config"]["parameters"] == {"data_root": "gs://bucket/data/span-8"}
    version = kfp_api.versions[body["pipeline_version_reference"]["pipeline_version_id"]]
    assert version["display_name"] == version_upload.query["name"]
    assert "pipeline_spec" not in body or body["pipeline_spec"] is None, "the run references the uploaded version"
    assert all(r.headers.get("authorization") == "Bearer secret-token" for r in kfp_api.requests)
    (run_id,) = kfp_api.runs
    assert run_id in capsys.readouterr().out


def _refused(call, message, capsys):
    """The CLI exits with status 2 and a one-line reason, not a traceback."""
    with pytest.raises(SystemExit) as exit_info:
        call()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "Traceback" not in err


def test_an_api_error_is_reported_with_the_server_answer(kfp_api, spec_path, capsys):
    args = ["schedule", "disable", "--host", kfp_api.host, "no-such-id"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "the KFP API answered 404" in err and "recurring run not found" in err, err
    assert kfp_api.calls("POST", "/recurringruns/no-such-id:disable")


def experiment_id(api):
    (experiment,) = api.experiments.values()
    return experiment["experiment_id"]


def test_resubmitting_the_same_spec_reuses_pipeline_version_and_experiment(kfp_api, spec_path):
    for _ in range(2):
        assert _cli(kfp_api, "submit", "--spec", spec_path) == 0
    assert len(kfp_api.calls("POST", "/pipelines/upload")) == 1
    assert len(kfp_api.calls("POST", "/pipelines/upload_version")) == 1, "an identical spec is not uploaded twice"
    assert len(kfp_api.calls("POST", "/experiments")) == 1
    runs = [r.json() for r in kfp_api.calls("POST", "/runs")]
    assert len(runs) == 2
    assert len({r["pipeline_version_reference"]["pipeline_version_id"] for r in runs}) == 1


def test_a_changed_spec_becomes_a_new_version_of_the_same_pipeline(kfp_api, spec_path, tmp_path):
    assert _cli(kfp_api, "submit", "--spec", spec_path) == 0
    changed = tmp_path / "penguin-pruning.yaml"
    changed.write_text(open(spec_path).read().replace("tfx-model-pruning:", "registry.example/tfx-model-pruning:"))
    assert _cli(kfp_api, "submit", "--spec", str(changed)) == 0
    assert len(kfp_api.pipelines) == 1
    assert len(kfp_api.versions) == 3  # the upload's own version, then one per distinct spec
    runs = [r.json() for r in kfp_api.calls("POST", "/runs")]
    assert runs[0]["pipeline_version_reference"] != runs[1]["pipeline_version_reference"]


def test_schedule_create_sends_cron_one_at_a_time_and_no_catchup(kfp_api, spec_path):
    args = ["schedule", "create", "--spec", spec_path, "--name", "nightly", "--cron", "0 30 2 * * *"]
    assert cli.main([*args, "--host", kfp_api.host, "--param", "data_root=gs://bucket/data/latest"]) == 0
    (request,) = kfp_api.calls("POST", "/recurringruns")
    body = request.json()
    assert body["trigger"]["cron_schedule"]["cron"] == "0 30 2 * * *"
    assert body["max_concurrency"] == "1" or body["max_concurrency"] == 1
    assert body["no_catchup"] is True
    assert body["mode"] == "ENABLE"
    assert body["display_name"] == "nightly"
    assert body["runtime_config"]["parameters"] == {"data_root": "gs://bucket/data/latest"}
    assert body["pipeline_version_reference"]["pipeline_version_id"] in kfp_api.versions


def test_schedule_list_and_disable(kfp_api, spec_path, capsys):
    create = ["schedule", "create", "--host", kfp_api.host, "--spec", spec_path, "--cron", "@daily"]
    assert cli.main([*create, "--name", "nightly"]) == 0
    uploads = len(kfp_api.calls("POST", "/pipelines/upload_version"))
    _refused(lambda: cli.main([*create, "--name", "nightly"]), "already exists and is enabled", capsys)
    assert len(kfp_api.calls("POST", "/pipelines/upload_version")) == uploads, "refused before uploading"
    (schedule_id,) = kfp_api.recurring_runs
    capsys.readouterr()
    assert cli.main(["schedule", "list", "--host", kfp_api.host]) == 0
    listing = capsys.readouterr().out
    assert schedule_id in listing and "nightly" in listing and "enabled" in listing

    assert cli.main(["schedule", "disable", "--host", kfp_api.host, schedule_id]) == 0
    assert kfp_api.calls("POST", f"/recurringruns/{schedule_id}:disable")
    capsys.readouterr()
    cli.main(["schedule", "list", "--host", kfp_api.host])
    assert "disabled" in capsys.readouterr().out
    assert cli.main([*create, "--name", "nightly"]) == 0, "a disabled schedule's name can be reused"


@pytest.mark.parametrize(
    "cron, message",
    [
        ("0 2 * * *", "did you mean '0 0 2 \\* \\* \\*'"),
        ("0 0 25 * * *", "hours field: 25 is outside 0-23"),
        ("0 0 2 * * MON-FRIDAY", "day of week field"),
        ("0 */0 * * * *", "step 0"),
        ("? 0 2 * * *", "only allowed for day of month or day of week"),
        ("@fortnightly", "unknown cron descriptor"),
        ("0 0 2 * * 5-1", "range '5-1' runs backwards"),
    ],
)
def test_bad_cron_is_refused_before_any_request(kfp_api, spec_path, cron, message, capsys):
    with pytest.raises(kfp_runs.CronError, match=message):
        kfp_runs.validate_cron(cron)
    args = ["schedule", "create", "--host", kfp_api.host, "--spec", spec_path, "--name", "n", "--cron", cron]
    _refused(lambda: cli.main(args), message, capsys)
    assert kfp_api.requests == []


@pytest.mark.parametrize("cron", ["0 0 2 * * *", "0 0 9 ? * 2-6", "0 */15 * * * *", "0 0 3 1 JAN,JUL *", "@every 6h"])
def test_valid_kfp_cron_expressions_pass(cron):
    assert kfp_runs.validate_cron(cron) == cron


def test_an_unreachable_host_is_one_line_not_a_traceback(spec_path, capsys):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["schedule", "list", "--host", f"http://127.0.0.1:{port}"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"prune-pipeline schedule: error: cannot reach the KFP API at http://127.0.0.1:{port}")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_unknown_parameter_or_job_wrapper_is_refused_before_upload(kfp_api, spec_path, capsys):
    message = r"declares no parameter \['data_rot'\]; it takes \['data_root'\]"
    _refused(lambda: _cli(kfp_api, "submit", "--spec", spec_path, "--param", "data_rot=gs://x"), message, capsys)
    job_path = spec_path.replace(".yaml", "_job.json")
    _refused(lambda: _cli(kfp_api, "submit", "--spec", job_path), "PipelineJob wrapper", capsys)
    assert kfp_api.requests == [], "refused before any request"


def test_host_and_token_come_from_the_environment(kfp_api, spec_path, monkeypatch, capsys):
    monkeypatch.setenv("KF_PIPELINES_ENDPOINT", kfp_api.host)
    monkeypatch.setenv("KF_PIPELINES_TOKEN", "env-token")
    assert cli.main(["submit", "--spec", spec_path, "--run-name", "from-env"]) == 0
    (run,) = kfp_api.calls("POST", "/runs")
    assert json.loads(run.body)["display_name"] == "from-env"
    assert run.headers["authorization"] == "Bearer env-token"
    with pytest.raises(SystemExit):
        cli.main(["submit", "--help"])
    assert "env-token" not in capsys.readouterr().out, "--help never prints a token"


def test_one_pipeline_file_compiles_and_submits_with_its_kubeflow_section(kfp_api, tmp_path, monkeypatch):
    import yaml

    from tfx_model_pruning_pipelines.pipeline_config import PENGUIN_PRESET

    settings = yaml.safe_load(open(PENGUIN_PRESET))
    settings["name"] = "team-pruning"
    settings["kubeflow"] = {
        "pipeline_root": "gs://team/root", "serving_dir": "gs://team/serving", "data_root": "gs://team/data",
        "output_dir": str(tmp_path / "kfp"), "host": kfp_api.host, "experiment": "nightly-pruning",
    }  # fmt: skip
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(settings))
    monkeypatch.delenv("KF_PIPELINES_ENDPOINT", raising=False)
    assert cli.main(["compile", "--config", str(config)]) == 0
    assert (tmp_path / "kfp" / "team-pruning.yaml").is_file()
    # No --host, --experiment or --spec: the file's kubeflow section gives them.
    assert cli.main(["submit", "--config", str(config), "--run-name", "from-file"]) == 0
    (experiment,) = kfp_api.calls("POST", "/experiments")
    assert experiment.json()["display_name"] == "nightly-pruning"
    (upload,) = kfp_api.calls("POST", "/pipelines/upload")
    assert upload.query["name"] == "team-pruning"
    (run,) = kfp_api.calls("POST", "/runs")
    assert run.json()["display_name"] == "from-file"
