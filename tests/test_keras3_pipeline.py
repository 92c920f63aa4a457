"""A Keras 3 penguin classifier (``import keras``) saved each way a Keras 3 user saves it, through
``run-local``: pruned, fine-tuned, gated and pushed in the form it came in, or refused before any
work with the one form to add."""

import os

import numpy as np
import pytest
import tensorflow as tf

from tfx_model_pruning.engine import PruningConfig, load_model, prune_saved_model
from tfx_model_pruning.engine.data import read_serialized
from tfx_model_pruning_pipelines import cli
from tfx_model_pruning_pipelines import penguin_trainer_keras3 as keras3_trainer
from tfx_model_pruning_pipelines.penguin_trainer import FEATURE_KEYS, LABEL_KEY
from tfx_model_pruning_pipelines.results import run_result

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def keras3_baselines(tmp_path_factory, penguin_files) -> dict[str, str]:
    """The same trained Keras 3 model saved in every form: form -> model directory."""
    model = keras3_trainer.train(penguin_files["train"], penguin_files["eval"], train_steps=100, eval_steps=5)
    root = tmp_path_factory.mktemp("keras3_baselines")
    baselines = {}
    for form in keras3_trainer.SAVE_FORMS:
        baselines[form] = str(root / form.replace("+", "_and_"))
        keras3_trainer.save(model, baselines[form], form)
    return baselines


def _run(out, baseline, method, loss=None, evaluator=None):
    amount = ["--target-sparsity", "0.8"] if method == "magnitude" else ["--prune-fraction", "0.5"]
    args = ["run-local", "--output-dir", str(out), "--run-id", "keras3", "--baseline-model", baseline]
    # Fine-tuned until recovered (the default): a fixed three epochs left this model 0.02-0.04 short.
    args += ["--method", method, *amount, "-q", *(["--loss", loss] if loss else [])]
    return cli.main([*args, *(["--set", f"gate.evaluator={evaluator}"] if evaluator else [])])


def _signature_answers(model_dir: str, serialized: tf.Tensor) -> dict[str, np.ndarray]:
    """Each serving signature's predicted class per example, fed as the signature takes them."""
    restored = tf.saved_model.load(model_dir)
    parsed = tf.io.parse_example(serialized, {k: tf.io.FixedLenFeature([1], tf.float32) for k in FEATURE_KEYS})
    answers = {}
    for name, function in restored.signatures.items():
        inputs = function.structured_input_signature[1]
        if list(inputs) == ["examples"]:
            outputs = function(examples=serialized)
        else:
            outputs = function(**{key: parsed[key] for key in inputs})
        answers[name] = np.argmax(next(iter(outputs.values())).numpy(), axis=-1)
    return answers


@pytest.mark.parametrize(
    "form, method, evaluator",
    [
        ("keras", "magnitude", None),
        ("keras", "structured", "tfma"),  # TFMA's evaluator reads the .keras file's export too
        ("keras+export", "magnitude", None),
        ("keras+export", "structured", None),
        ("export", "magnitude", None),
        ("saved_model", "magnitude", None),
    ],
)
def test_a_keras_3_model_is_pruned_gated_and_pushed_in_the_form_it_came_in(
    form, method, evaluator, keras3_baselines, penguin_files, tmp_path
):
    baseline = keras3_baselines[form]
    out = tmp_path / "run"
    # A SavedModel alone keeps no loss (a .keras file keeps the compiled one): it is named, as for tf-keras.
    loss = None if form.startswith("keras") else "SparseCategoricalCrossentropy"
    assert _run(out, baseline, method, loss, evaluator) == 0
    result = run_result(str(out / "metadata.sqlite"), "keras3")
    assert result.blessed and result.pushed
    assert result.gate_result["evaluated_by"].startswith("TFMA") == (evaluator == "tfma")
    after = result.pruning_report.after
    # The model's own weights, whatever else the form carries (tf.saved_model.save keeps Adam's slots).
    assert result.pruning_report.before.params == keras3_trainer.build_model().count_params()
    if method == "magnitude":
        assert after.masked_sparsity == pytest.approx(0.8, abs=0.005)
    else:
        widths = result.pruning_report.structure.widths
        assert (widths["hidden_0"].after, widths["hidden_1"].after) == (32, 32)
        assert after.params < 0.4 * result.pruning_report.before.params

    pushed = result.pushed_destination
    has_keras_file = form.startswith("keras")
    assert os.path.isfile(os.path.join(pushed, keras3_trainer.KERAS_FILE)) == has_keras_file
    assert os.path.isfile(os.path.join(pushed, "saved_model.pb"))  # what TF Serving and the gate read

    serialized = read_serialized(penguin_files["eval"], 100)
    labels = tf.io.parse_example(serialized, {LABEL_KEY: tf.io.FixedLenFeature([], tf.int64)})[LABEL_KEY].numpy()
    pushed_answers = _signature_answers(pushed, serialized)
    if form != "keras":  # a .keras file alone has no signatures; the pushed model adds Keras 3's export
        assert set(pushed_answers) == set(tf.saved_model.load(baseline).signatures)
    for name, answers in pushed_answers.items():
        assert np.mean(answers == labels) >= 0.9, name
    if has_keras_file:
        import keras

        model = keras.saving.load_model(os.path.join(pushed, keras3_trainer.KERAS_FILE))
        features = tf.io.parse_example(serialized, {k: tf.io.FixedLenFeature([1], tf.float32) for k in FEATURE_KEYS})
        keras_answers = np.argmax(model(features, training=False).numpy(), axis=-1)
        assert np.array_equal(keras_answers, next(iter(pushed_answers.values())))  # the two files are one model


@pytest.mark.parametrize("form", ["export", "saved_model"])
def test_structured_pruning_of_a_keras_3_export_alone_is_refused_before_any_work_naming_the_file_to_add(
    form, keras3_baselines, tmp_path, capsys
):
    out = tmp_path / "run"
    assert _run(out, keras3_baselines[form], "structured") == 2
    error = " ".join(capsys.readouterr().err.split())
    assert "structured pruning needs the Keras layer graph" in error and keras3_baselines[form] in error
    assert "model.save(os.path.join(fn_args.serving_model_dir, 'model.keras'))" in error
    assert not (out / "metadata.sqlite").exists()


@pytest.mark.parametrize("form", ["export", "saved_model"])
def test_the_taylor_criterion_prunes_a_keras_3_savedmodel_through_its_serving_function(
    form, keras3_baselines, penguin_files, tmp_path
):
    # No compiled loss travels with a SavedModel: the configured one is differentiated instead.
    config = PruningConfig(
        target_sparsity=0.5, criterion="taylor", label_key=LABEL_KEY, loss="SparseCategoricalCrossentropy"
    )
    sample = read_serialized(penguin_files["train"], 200)
    taylor = prune_saved_model(keras3_baselines[form], str(tmp_path / "taylor"), config, sample, latency_repeats=0)
    prune_saved_model(
        keras3_baselines[form], str(tmp_path / "magnitude"), PruningConfig(target_sparsity=0.5), latency_repeats=0
    )
    assert taylor.after.masked_sparsity == pytest.approx(0.5, abs=0.005)
    taylor_masks, magnitude_masks = (
        load_model(str(tmp_path / "taylor")).masks,
        load_model(str(tmp_path / "magnitude")).masks,
    )
    assert sorted(taylor_masks) == sorted(magnitude_masks) == ["hidden_0::kernel", "hidden_1::kernel"]
    assert any(not np.array_equal(taylor_masks[k], magnitude_masks[k]) for k in taylor_masks)  # |w x grad| is not |w|
    with pytest.raises(ValueError, match="set `loss` in the pruning config"):
        prune_saved_model(
            keras3_baselines[form], str(tmp_path / "no-loss"), config.model_copy(update={"loss": None}), sample
        )


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_a_keras_3_model_pruned_in_one_shot_is_gated_as_pruned(method, keras3_baselines, tmp_path):
    """No fine-tuning: the gate judges the one-shot model as it came. On this small penguin model
    sparsegpt stays within the gate's 0.01 of its parent (its update makes up for the removed
    weights); wanda, which only chooses them, may not, and is then refused, never pushed."""
    out = tmp_path / "run"
    args = ["run-local", "--output-dir", str(out), "--run-id", "oneshot", "--baseline-model"]
    args += [keras3_baselines["keras+export"], "--method", method, "--target-sparsity", "0.5", "--epochs", "0", "-q"]
    code = cli.main(args)
    result = run_result(str(out / "metadata.sqlite"), "oneshot")
    assert code == (0 if result.blessed else 3) and result.pushed == result.blessed
    assert result.blessed or method == "wanda"
    report = result.pruning_report
    assert report.method == method and report.after.masked_sparsity == pytest.approx(0.5, abs=0.005)
    assert [row.layer for row in report.one_shot.layers] == ["hidden_0", "hidden_1"]
    assert "retrain.epochs: 0" in result.gate_result["not_fine_tuned"]


def test_one_shot_pruning_of_a_keras_3_export_alone_is_refused_before_any_work(keras3_baselines, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run-local", "--output-dir", str(out), "--run-id", "oneshot", "--baseline-model"]
    assert cli.main([*args, keras3_baselines["export"], "--method", "wanda", "--epochs", "0", "-q"]) == 2
    error = " ".join(capsys.readouterr().err.split())
    assert "one-shot pruning (wanda: it reads each layer's inputs) needs the Keras layer graph" in error
    assert not (out / "metadata.sqlite").exists()
