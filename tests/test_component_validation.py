"""Bad static input fails when the pipeline is constructed, before any work."""

import re

import pytest
from pydantic import ValidationError
from tfx import types
from tfx.types import standard_artifacts

from tfx_model_pruning import EvaluatorGate, PruneComponent, RetrainComponent
from tfx_model_pruning.evaluator_gate.metrics import UnknownMetricError, metric_output_name
from tfx_model_pruning.serving_versions import check_push_destination
from tfx_model_pruning_pipelines import pruning_pipeline


def _channel(artifact_type):
    return types.Channel(type=artifact_type)


MODEL = _channel(standard_artifacts.Model)
EXAMPLES = _channel(standard_artifacts.Examples)
ACCURACY = "SparseCategoricalAccuracy"


def test_components_expose_the_agreed_channel_names():
    prune = PruneComponent(model=MODEL, examples=EXAMPLES, target_sparsity=0.5)
    retrain = RetrainComponent(model=prune.outputs["model"], examples=EXAMPLES, label_key="species")
    gate = EvaluatorGate(
        model=retrain.outputs["model"],
        baseline_model=MODEL,
        examples=EXAMPLES,
        label_key="species",
        thresholds=[{"metric": ACCURACY, "lower_bound": 0.9}],
    )
    assert set(prune.outputs) == {"model", "pruning_report"}
    assert prune.outputs["pruning_report"].type.TYPE_NAME == "tfx_model_pruning.PruningReport"
    assert re.fullmatch(r"[a-z_]+\.[A-Za-z]+", prune.outputs["pruning_report"].type.TYPE_NAME)
    assert set(retrain.outputs) == {"model"}
    assert set(gate.outputs) == {"blessing", "evaluation"}
    assert gate.outputs["blessing"].type is standard_artifacts.ModelBlessing


@pytest.mark.parametrize("sparsity", [0.0, 1.0, 1.5, -0.2])
def test_prune_rejects_sparsity_outside_the_open_unit_interval(sparsity):
    with pytest.raises(ValidationError, match="target_sparsity"):
        PruneComponent(model=MODEL, target_sparsity=sparsity)


def test_prune_rejects_an_invalid_protected_layer_regex():
    with pytest.raises(ValidationError, match="not a valid regular expression"):
        PruneComponent(model=MODEL, target_sparsity=0.5, protected_layers=["dense_["])


@pytest.mark.parametrize(
    "threshold, message",
    [
        ({"metric": ACCURACY, "lower_bound": 1.2}, "cannot make sense"),
        ({"metric": ACCURACY, "upper_bound": -0.1}, "cannot make sense"),
        ({"metric": ACCURACY, "max_absolute_drop": -0.01}, "greater than or equal to 0"),
        ({"metric": ACCURACY, "max_relative_drop": 1.5}, "less than or equal to 1"),
        ({"metric": ACCURACY}, "sets no bound"),
        ({"metric": ACCURACY, "lower_bound": 0.9, "upper_bound": 0.8}, "above upper_bound"),
    ],
)
def test_gate_rejects_thresholds_that_cannot_make_sense(threshold, message):
    with pytest.raises(ValidationError, match=message):
        EvaluatorGate(model=MODEL, baseline_model=MODEL, examples=EXAMPLES, label_key="y", thresholds=[threshold])


def test_gate_rejects_an_unknown_metric_and_a_drop_without_baseline():
    # The threshold's own validation: the same rule metric_output_name applies at run time, with a suggestion.
    with pytest.raises(ValidationError, match="'Acuracy' is not a Keras metric class name.*did you mean 'Accuracy'"):
        EvaluatorGate(
            model=MODEL, examples=EXAMPLES, label_key="y", thresholds=[{"metric": "Acuracy", "lower_bound": 0}]
        )
    with pytest.raises(UnknownMetricError, match="'binary_accuracy' is not.*did you mean 'BinaryAccuracy'"):
        metric_output_name("binary_accuracy")  # a function of keras.metrics, not a class
    with pytest.raises(ValueError, match="a drop bound needs a baseline_model or a serving_model_dir"):
        EvaluatorGate(
            model=MODEL, examples=EXAMPLES, label_key="y", thresholds=[{"metric": ACCURACY, "max_absolute_drop": 0.01}]
        )
    with pytest.raises(ValueError, match="a drop bound needs"):
        EvaluatorGate(
            model=MODEL, examples=EXAMPLES, label_key="y", thresholds=[{"metric": ACCURACY, "lower_bound": 0.5}],
            slice_feature="island", slice_thresholds=[{"metric": ACCURACY, "max_absolute_drop": 0.1}],
        )  # fmt: skip
    serving_only = EvaluatorGate(
        model=MODEL, examples=EXAMPLES, label_key="y", thresholds=[{"metric": ACCURACY, "max_absolute_drop": 0.01}],
        serving_model_dir="/serving/penguin",
    )  # fmt: skip
    assert '"serving_model_dir":"/serving/penguin"' in serving_only.exec_properties["gate_config"]
    with pytest.raises(ValidationError, match="min_sparsity"):
        EvaluatorGate(
            model=MODEL, examples=EXAMPLES, label_key="y", thresholds=[{"metric": ACCURACY, "lower_bound": 0}],
            min_sparsity=1.5,
        )  # fmt: skip


def test_retrain_rejects_unknown_loss_and_missing_module_file(tmp_path):
    with pytest.raises(ValueError, match="not a Keras loss class name"):
        RetrainComponent(model=MODEL, examples=EXAMPLES, label_key="y", loss="CrossEntropyTypo")
    with pytest.raises(ValidationError, match="did you mean 'SparseCategoricalCrossentropy'"):
        RetrainComponent(model=MODEL, examples=EXAMPLES, label_key="y", loss="sparse_categorical_crossentropy")
    with pytest.raises(FileNotFoundError, match="module_file"):
        RetrainComponent(model=MODEL, examples=EXAMPLES, label_key="y", module_file=str(tmp_path / "nope.py"))
    with pytest.raises(ValidationError, match="label_key"):
        RetrainComponent(model=MODEL, examples=EXAMPLES, label_key="")


def _pipeline_args(tmp_path, penguin_data, **overrides):
    args = dict(
        pipeline_name="p",
        pipeline_root=str(tmp_path / "root"),
        data_root=penguin_data,
        serving_model_dir=str(tmp_path / "serving"),
        label_key="species",
        trainer_module_file=pruning_pipeline.PENGUIN_TRAINER_MODULE,
        prune_args={"target_sparsity": 0.8},
        retrain_args={},
        gate_args={"thresholds": [{"metric": ACCURACY, "lower_bound": 0.9}]},
    )
    args.update(overrides)
    return args


def test_pipeline_construction_validates_everything_static(tmp_path, penguin_data):
    pipeline = pruning_pipeline.create_pipeline_from_args(**_pipeline_args(tmp_path, penguin_data))
    assert [c.id for c in pipeline.components] == [
        "ImportExampleGen", "Trainer", "PruneComponent", "RetrainComponent", "EvaluatorGate", "Pusher",
    ]  # fmt: skip
    with pytest.raises(ValidationError, match="target_sparsity"):
        pruning_pipeline.create_pipeline_from_args(
            **_pipeline_args(tmp_path, penguin_data, prune_args={"target_sparsity": 1.0})
        )
    with pytest.raises(FileNotFoundError, match="data_root"):
        pruning_pipeline.create_pipeline_from_args(
            **_pipeline_args(tmp_path, penguin_data, data_root=str(tmp_path / "none"))
        )
    with pytest.raises(ValueError, match="exactly one of trainer_module, trainer_run_fn or baseline_model"):
        pruning_pipeline.create_pipeline_from_args(
            **_pipeline_args(tmp_path, penguin_data, baseline_model_uri=str(tmp_path))
        )  # fmt: skip


def test_pipeline_rejects_a_missing_or_non_savedmodel_baseline(tmp_path, penguin_data):
    from tfx_model_pruning.engine import ModelLoadError

    for uri, message in ((tmp_path / "missing", "does not exist"), (tmp_path, "no saved_model.pb")):
        with pytest.raises(ModelLoadError, match=message):
            pruning_pipeline.create_pipeline_from_args(
                **_pipeline_args(tmp_path, penguin_data, trainer_module_file=None, baseline_model_uri=str(uri))
            )


def test_prune_structured_options_are_validated_at_construction():
    structured = PruneComponent(model=MODEL, examples=EXAMPLES, method="structured", prune_fraction=0.5)
    assert '"method":"structured"' in structured.exec_properties["pruning_config"]
    with pytest.raises(
        ValueError, match="structured pruning proves the rebuilt serving signatures on examples: connect `examples`"
    ):
        PruneComponent(model=MODEL, method="structured", prune_fraction=0.5)
    with pytest.raises(ValidationError, match="target_sparsity"):
        PruneComponent(model=MODEL, examples=EXAMPLES, method="structured", prune_fraction=0.5, target_sparsity=0.5)
    with pytest.raises(ValidationError, match="prune_fraction"):
        PruneComponent(model=MODEL, method="magnitude", target_sparsity=0.5, prune_fraction=0.5)
    with pytest.raises(ValidationError, match="prune_fraction"):
        PruneComponent(model=MODEL, examples=EXAMPLES, method="structured", prune_fraction=1.0)
    with pytest.raises(ValidationError, match="method"):
        PruneComponent(model=MODEL, method="random", target_sparsity=0.5)


def test_prune_data_criteria_need_examples_and_labels():
    with pytest.raises(ValueError, match="criterion 'taylor' reads train examples"):
        PruneComponent(model=MODEL, target_sparsity=0.5, criterion="taylor", label_key="species")
    with pytest.raises(ValidationError, match="needs label_key"):
        PruneComponent(model=MODEL, examples=EXAMPLES, method="structured", prune_fraction=0.5, criterion="taylor")
    component = PruneComponent(
        model=MODEL, examples=EXAMPLES, method="structured", prune_fraction=0.5, criterion="apoz", sample_size=128
    )
    assert '"criterion":"apoz"' in component.exec_properties["pruning_config"]


def test_gate_efficiency_bounds_are_validated_at_construction():
    accuracy = [{"metric": ACCURACY, "lower_bound": 0.5}]
    with pytest.raises(ValueError, match="min_size_reduction is measured against a baseline_model"):
        EvaluatorGate(model=MODEL, examples=EXAMPLES, label_key="y", thresholds=accuracy, min_size_reduction=0.5)
    for bad in ({"max_params": 0}, {"max_latency_ms": -1.0}, {"min_size_reduction": 1.5}, {"latency_batch_size": 0}):
        with pytest.raises(ValidationError):
            EvaluatorGate(
                model=MODEL, baseline_model=MODEL, examples=EXAMPLES, label_key="y", thresholds=accuracy, **bad
            )


def test_ratio_bounds_need_a_baseline_and_every_problem_is_named_at_once():
    accuracy = [{"metric": ACCURACY, "lower_bound": 0.5, "max_absolute_drop": 0.01}]
    with pytest.raises(ValueError) as raised:
        EvaluatorGate(
            model=MODEL,
            examples=EXAMPLES,
            label_key="y",
            thresholds=accuracy,
            max_latency_ratio=0.7,
            max_size_ratio=0.5,
        )
    lines = str(raised.value).splitlines()
    assert lines == [
        f"{ACCURACY}: a drop bound needs a baseline_model or a serving_model_dir",
        "max_latency_ratio compares with a baseline: connect a baseline_model or set serving_model_dir",
        "max_size_ratio compares with a baseline: connect a baseline_model or set serving_model_dir",
    ]
    for baseline in ({"baseline_model": MODEL}, {"serving_model_dir": "/serving/x"}):
        gate = EvaluatorGate(
            model=MODEL, examples=EXAMPLES, label_key="y", thresholds=accuracy, max_latency_ratio=0.7, **baseline
        )
        assert '"max_latency_ratio":0.7' in gate.exec_properties["gate_config"]
    for bad in ({"max_latency_ratio": 0.0}, {"max_size_ratio": -1.0}, {"latency_repeats": 1}):
        with pytest.raises(ValidationError):
            EvaluatorGate(
                model=MODEL, baseline_model=MODEL, examples=EXAMPLES, label_key="y", thresholds=accuracy, **bad
            )


def test_push_destination_must_stay_inside_the_push_root(tmp_path, penguin_data):
    root = tmp_path / "serving_root"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)  # a symlink out of the root is an escape too
    for escape in (str(root / ".." / "elsewhere"), str(tmp_path / "other"), str(root / "link" / "x"), str(root)):
        with pytest.raises(ValueError, match="outside the push root"):
            pruning_pipeline.create_pipeline_from_args(
                **_pipeline_args(tmp_path, penguin_data, serving_model_dir=escape, push_root=str(root))
            )
    pruning_pipeline.create_pipeline_from_args(
        **_pipeline_args(tmp_path, penguin_data, serving_model_dir=str(root / "penguin"), push_root=str(root))
    )
    with pytest.raises(ValueError, match="outside the push root"):
        check_push_destination("gs://b/serving/../other", "gs://b/serving")
    check_push_destination("gs://b/serving/penguin", "gs://b/serving")
