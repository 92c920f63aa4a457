"""Release gate v2 on the penguin data: per-slice checks, the serving-model baseline, the HTML report."""

import os
import shutil

import numpy as np
import pytest
from executor_calls import run_gate, run_prune

from tfx_model_pruning.engine import load_model
from tfx_model_pruning.engine.saved_model import save_model
from tfx_model_pruning.evaluator_gate.config import GateConfig, MetricThreshold

pytestmark = pytest.mark.integration

ACCURACY = "sparse_categorical_accuracy"


@pytest.fixture(scope="module")
def blind_to_chinstrap(tmp_path_factory, penguin_baseline):
    """The baseline with its logit for class 1 (Chinstrap, 22 of 100 eval examples) pushed far down:
    about 0.78 accurate overall, 0 on that class."""
    loaded = load_model(penguin_baseline)
    logits = loaded.model.get_layer("logits")
    kernel, bias = logits.get_weights()
    bias[1] -= 1e4
    logits.set_weights([kernel, bias])
    uri = tmp_path_factory.mktemp("blind")
    save_model(loaded.model, os.path.join(uri, "Format-Serving"), loaded.signatures)
    return str(uri)


@pytest.fixture
def serving_dir(tmp_path, penguin_baseline):
    """A push destination whose newest complete version is the baseline; an older version and a
    staging leftover sit beside it and must be ignored."""
    root = tmp_path / "serving"
    shutil.copytree(os.path.join(penguin_baseline, "Format-Serving"), root / "1700000002")
    (root / "1700000001").mkdir()  # an empty (broken) older version
    (root / ".staging-abc").mkdir()
    return str(root)


def _config(**kwargs):
    return GateConfig(
        label_key="species",
        thresholds=[MetricThreshold(metric="SparseCategoricalAccuracy", lower_bound=0.7)],
        slice_feature="species",
        slice_thresholds=[MetricThreshold(metric="SparseCategoricalAccuracy", lower_bound=0.5, max_absolute_drop=0.1)],
        **kwargs,
    )


def test_a_model_that_holds_overall_but_collapses_on_a_slice_is_refused(
    tmp_path, blind_to_chinstrap, penguin_baseline, penguin_data, serving_dir
):
    blessing, result, error = run_gate(
        tmp_path, blind_to_chinstrap, penguin_baseline, penguin_data, _config(serving_model_dir=serving_dir)
    )
    assert error is None
    assert not result["blessed"] and blessing.get_int_custom_property("blessed") == 0
    checks = {check["name"]: check for check in result["checks"]}
    assert checks[f"{ACCURACY} >= lower_bound"]["passed"], "overall accuracy alone would have passed"
    assert result["metrics"]["candidate"][ACCURACY] == pytest.approx(0.78, abs=0.03)
    assert set(result["slices"]) == {"species=0", "species=1", "species=2"}
    assert result["slices"]["species=1"]["candidate"]["example_count"] == 22
    assert sorted(result["failed_checks"]) == sorted(
        [
            f"[species=1] {ACCURACY} >= lower_bound",
            f"[species=1] {ACCURACY} drop vs parent <= max_absolute_drop",
            f"[species=1] {ACCURACY} drop vs serving <= max_absolute_drop",
        ]
    )
    assert checks[f"[species=1] {ACCURACY} >= lower_bound"]["measured"] == 0.0
    assert checks[f"[species=0] {ACCURACY} >= lower_bound"]["passed"]
    assert result["models"]["serving"] == os.path.join(serving_dir, "1700000002"), "newest complete version"

    evaluation = tmp_path / "evaluation"
    html = (evaluation / "report.html").read_text()
    assert "NOT BLESSED" in html
    assert f"[species=1] {ACCURACY} &gt;= lower_bound" in html, "the failing check, escaped, with its verdict"
    assert "species=2" in html and "hidden_0" in html
    # The verdict and why come first, in words, before the table of every check.
    why = html.index("Why it was refused")
    assert why < html.index("Checks (failed first)") < html.index("Models compared")
    assert "on species=1 is 0" in html[why:] and "below the lower bound 0.5" in html[why:]
    assert ">parent</th>" in html and ">serving</th>" in html  # one name per model
    assert "NOT BLESSED: 3 of " in html
    assert 'src="data:image/png;base64,' in html, "the page is self-contained"
    png = (evaluation / "report.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000


def test_serving_baseline_alone_and_the_first_release(tmp_path, penguin_baseline, penguin_data):
    empty_serving = tmp_path / "serving"
    _, first, _ = run_gate(
        tmp_path / "first", penguin_baseline, None, penguin_data, _config(serving_model_dir=str(empty_serving))
    )
    assert first["blessed"], first["failed_checks"]
    (serving_check,) = [c for c in first["checks"] if c["name"] == "serving model to compare with"]
    assert serving_check["passed"] and "none yet under" in serving_check["detail"]
    assert serving_check["verdict"] == "NOTE", "a first release must not look like a passed comparison"
    summary = (tmp_path / "first" / "evaluation" / "summary.md").read_text()
    assert "- serving: `no model serving yet (first release)`" in summary
    assert not [c for c in first["checks"] if "drop vs" in c["name"]], "nothing to compare with, and it says so"

    _, required, _ = run_gate(
        tmp_path / "required",
        penguin_baseline,
        None,
        penguin_data,
        _config(serving_model_dir=str(empty_serving), require_serving_model=True),
    )
    assert required["failed_checks"] == ["serving model to compare with"]


def test_layer_widths_and_sparsity_reach_the_report(tmp_path, penguin_baseline, penguin_data):
    pruned, _ = run_prune(penguin_baseline, tmp_path / "pruned", target_sparsity=0.8)
    _, result, error = run_gate(tmp_path, pruned.uri, penguin_baseline, penguin_data, _config())
    assert error is None
    layers = {row["layer"]: row for row in result["layers"]["candidate"]}
    assert layers["hidden_0"]["width"] == 64
    assert layers["hidden_0"]["sparsity"] == pytest.approx(
        float(np.mean(load_model(pruned.uri).model.get_layer("hidden_0").kernel.numpy() == 0))
    )
    assert layers["logits"]["sparsity"] == 0.0, "the output layer is protected"
    assert {row["layer"] for row in result["layers"]["baseline"]} == set(layers)
