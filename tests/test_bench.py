"""The benchmark script stays runnable (its figures are measured by `make bench`, not here)."""

import os
import re
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

import digits_pruning  # noqa: E402

pytestmark = pytest.mark.integration


def test_benchmark_runs_every_method_on_a_tiny_budget(monkeypatch):
    monkeypatch.setattr(digits_pruning, "BASELINE_EPOCHS", 1)
    monkeypatch.setattr(digits_pruning, "LEARNING_RATES", (1e-3,))
    rows, footnote = digits_pruning.benchmark(digits_pruning.small_cnn, seeds=[0], repeats=2)
    names = [row[0] for row in rows]
    assert names[0] == "dense baseline" and len(names) == 8
    assert any(name.startswith("tfmot") for name in names)
    structured = rows[names.index("ours: structured, half width (L1)")]
    assert int(structured[5]) < int(rows[0][5]) and int(structured[6]) < int(rows[0][6])
    sparsity_90 = rows[names.index("ours: magnitude 90% (one-shot + masked fine-tune)")][1]
    assert float(sparsity_90) == pytest.approx(0.9, abs=0.005)
    assert "dense CPU latency: batch 64" in footnote


def test_the_coverage_benchmark_measures_a_model_with_a_half_width_ideal():
    import structured_coverage

    row = structured_coverage.measure("MobileNetV3Small", fraction=0.5, repeats=2, budget_s=1.0)
    name, share, params, flops, exactness, barriers, batch_1, batch_32, _ = row
    assert name == "MobileNetV3Small" and float(share.rstrip("%")) > 45
    assert float(params) < 0.5 and float(flops) < 0.6 and float(exactness) < 1e-5
    for cell in (batch_1, batch_32):  # "0.93 (0.84–1.09) vs 0.86 = 1.08×": the alpha=0.5 model timed alongside
        measured, ideal, over = re.fullmatch(r"([\d.]+) \([\d.]+–[\d.]+\) vs ([\d.]+) = ([\d.]+)×", cell).groups()
        assert float(over) == pytest.approx(float(measured) / float(ideal), abs=0.02)


def test_the_coverage_benchmark_lists_every_application_and_builds_the_half_width_ideals():
    import structured_coverage

    names = structured_coverage.every_application()
    assert len(names) > 60 and {"ResNet50", "ConvNeXtTiny", "EfficientNetV2B0", "NASNetMobile"} <= set(names)
    for name in ("ResNet50", "EfficientNetB0"):
        dense, half = structured_coverage.build(name), structured_coverage.half_width(name)
        assert 0.2 < half.count_params() / dense.count_params() < 0.4  # about a quarter: half width in and out
    assert structured_coverage.half_width("VGG16") is None  # no width parameter: the FLOPs ratio is the ideal


def test_the_gate_benchmark_measures_predict_and_the_gate_on_the_same_examples(tmp_path, capsys):
    import gate_throughput

    gate_throughput.main(["--examples", "3000", "--work-dir", str(tmp_path), "--modes", "predict", "gate"])
    table = capsys.readouterr().out.split("| examples")[-1]
    predict, gate = (line.split("|") for line in table.splitlines() if line.startswith("| 3,000"))
    assert predict[2].strip() == "predict" and gate[2].strip() == "gate"
    assert float(predict[5]) == 1.0 and 0 < float(gate[5]) and float(gate[6].replace(",", "")) > 100
    assert 0.5 < float(gate[7]) <= 1.0  # the candidate's accuracy on the examples


def test_the_prune_and_fine_tuning_benchmarks_run_on_a_small_model(tmp_path, capsys):
    import finetune_cost
    import prune_cost

    prune_cost.main(["--models", "mlp-10k", "--work-dir", str(tmp_path)])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| mlp-10k")]
    assert [row.split("|")[3].strip() for row in rows] == list(prune_cost.STEPS)
    assert float(rows[0].split("|")[5]) == 1.0 and all(float(row.split("|")[4]) > 0 for row in rows)

    finetune_cost.main(["--models", "penguin", "--steps", "80"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| penguin")]
    assert len(rows) == len(finetune_cost.MODES) and float(rows[0].split("|")[4]) == 1.0


def test_the_graph_scan_benchmark_names_real_applications_and_scans_a_saved_one(tmp_path, capsys):
    import graph_scan
    import tf_keras

    assert all(callable(getattr(tf_keras.applications, name, None)) for name in graph_scan.APPLICATIONS)
    model_dir = str(tmp_path / "MobileNet")
    tf_keras.applications.MobileNet(weights=None, input_shape=(32, 32, 3), alpha=0.25, classes=3).save(
        model_dir, save_format="tf"
    )
    row = graph_scan.measure(model_dir, repeats=2)
    assert row["findings"] == [] and row["op_types"] > 10 and row["min_s"] <= row["median_s"] <= row["max_s"]


def test_the_serving_methods_benchmark_times_every_method_float_and_int8(tmp_path):
    import serving_methods

    paths = serving_methods.prepare(str(tmp_path), "MobileNetV2", 32)
    row = serving_methods.measure(paths, 32, repeats=2)
    assert sorted(row) == sorted(serving_methods.METHODS)
    parent, magnitude, two_of_four, structured = (row[method] for method in serving_methods.METHODS)
    assert structured["bytes"] < 0.5 * parent["bytes"]  # channels removed: a smaller SavedModel
    assert magnitude["gzip"] < 0.5 * parent["gzip"] and magnitude["bytes"] > 0.9 * parent["bytes"]  # zeros compress
    assert two_of_four["gzip"] < parent["gzip"]
    assert "int8 sparse" in magnitude and "int8 sparse" in two_of_four and "int8 sparse" not in structured
    assert all(row[m]["int8"]["bytes"] < row[m]["bytes"] for m in row) and all(parent[f"ms_{b}"] > 0 for b in (1, 32))


def test_the_serving_speed_tables_put_gate_and_independent_timings_side_by_side():
    import serving_speed

    row = {
        "exit": 0, "blessed": True, "pushed": True, "int8_pushed": True, "parent_params": 2_270_794,
        "candidate_params": 605_322, "gate_parent_ms": 14.0, "gate_candidate_ms": 9.8, "gate_parent_ms_1": 7.2,
        "gate_candidate_ms_1": 7.0, "parent_accuracy": 0.9447, "candidate_accuracy": 0.9012,
        "independent_parent_ms": 13.5, "independent_pushed_ms": 9.31, "int8_accuracy": 0.8995, "int8_ms": 2.45,
        "int8_bytes": 700_000, "candidate_bytes": 3_746_586,
    }  # fmt: skip
    text = serving_speed.tables([row, {**row, "gate_candidate_ms": 11.2}])
    assert "| 14.00 -> 9.80 (0.70x)" in text and "| 13.50 -> 9.31 (0.69x)" in text and "| 5%" in text
    assert "3,746,586 -> 700,000 (0.19x)" in text and "9.80 -> 2.45 (0.25x)" in text
    assert text.endswith("gate latency ratio at batch 32: median 0.75, range 0.70-0.80")


def test_the_masked_sequence_benchmark_prunes_heads_of_a_masked_encoder_through_the_pipeline(tmp_path, capsys):
    import json

    import masked_sequence

    argv = ["--work", str(tmp_path), "--runs", "1", "--train-epochs", "2", "--width", "16", "--repeats", "3"]
    code = masked_sequence.main([*argv, "--max-epochs", "1"])
    (row,) = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert isinstance(row["blessed"], bool) and (code == 0) == (row["blessed"] and row["pushed"])
    parent, pruned = row["saved_widths"]["parent"], row["saved_widths"]["pruned"]
    assert parent["heads"] == [4, 4] and pruned["heads"] == [2, 2]  # read from the pruned SavedModel
    assert [row["report_widths"][f"mha{b}:heads"] for b in range(2)] == [[4, 2], [4, 2]]
    assert pruned["ffn"] == [w[1] for w in (row["report_widths"]["ffn0"], row["report_widths"]["ffn1"])] < [32, 32]
    assert pruned["mask_zero"] and pruned["pool_masked"]  # the padding mask still reaches the pool
    assert row["flops"][1] < row["flops"][0] and row["params"][1] == pruned["params"] < parent["params"]
    out = capsys.readouterr().out
    assert re.search(r"^\| 0 +\| .*\| 4/4 -> 2/2 ", out, re.M) and re.search(
        r"^\| median +\| [01] of 1 blessed", out, re.M
    )


def test_the_one_shot_benchmark_trains_a_stock_cnn_and_prunes_it_by_each_method_asked(tmp_path, capsys):
    import json

    import oneshot_pruning

    rows = ["2:4/magnitude", "2:4/wanda"]
    argv = ["--work", str(tmp_path), "--models", "mobilenetv2", "--seeds", "1", "--train-epochs", "1"]
    assert oneshot_pruning.main([*argv, "--calibration-examples", "128", "--only", *rows]) == 0
    measured = json.loads((tmp_path / "results-mobilenetv2.json").read_text())
    assert [f"{row['pattern']}/{row['method']}" for row in measured] == rows
    for row in measured:
        assert 0.0 <= row["accuracy"] <= 1.0 and 0.0 < row["parent_accuracy"] <= 1.0
        assert 0.45 < row["sparsity"] <= 0.5 and row["seconds"] > 0 and row["peak_rss_mib"] > 0
    assert measured[0]["statistics_mib"] == 0.0 < measured[1]["statistics_mib"]  # wanda reads input norms
    assert "| mobilenetv2 | 2:4 | wanda |" in capsys.readouterr().out
