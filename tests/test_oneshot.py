"""One-shot pruning (wanda, sparsegpt): each layer read as the matrix product it is, the masks
the papers define, layer-by-layer order, and refusals before any work."""

from __future__ import annotations

import math

import keras as keras3
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from pydantic import ValidationError

from tfx_model_pruning.engine import oneshot
from tfx_model_pruning.engine.config import PruningConfig, SparseGPTPruningConfig, WandaPruningConfig
from tfx_model_pruning.engine.graph import leaf_layers
from tfx_model_pruning.engine.magnitude import find_prunable_weights, prune_model
from tfx_model_pruning.engine.oneshot import OneShotError, prune_one_shot

GENERATIONS = [pytest.param(keras, id="tf_keras"), pytest.param(keras3, id="keras3")]


def _config(method, **options):
    return {"wanda": WandaPruningConfig, "sparsegpt": SparseGPTPruningConfig}[method](**options)


def _prune(model, config, calibration):
    weights = find_prunable_weights(model, config)
    return prune_one_shot(model, weights, dict(leaf_layers(model)), calibration, config)


def _captured_input(model, layer, x):
    seen = []
    with oneshot._Hook(layer, seen.append):
        model(x, training=False)
    return seen[0]


def _products_match(K, layer_under_test, input_shape, x):
    """rows_of(input) @ matrix reproduces the layer's output (bias and activation off)."""
    inputs = K.Input(input_shape)
    model = K.Model(inputs, layer_under_test(inputs))
    (weight,) = [
        w for w in find_prunable_weights(model, PruningConfig(target_sparsity=0.5, protect_output_layer=False))
    ]
    layer = dict(leaf_layers(model))[weight.layer_name]
    view = oneshot._view(layer, weight.attribute, tuple(weight.variable.shape))
    rows = view.rows_of(_captured_input(model, layer, x)).numpy()  # (groups, rows, inputs)
    product = np.matmul(rows, view.to_matrix(weight.variable.numpy()))  # (groups, rows, outputs)
    expected = np.asarray(model(x, training=False))
    if view.kind == "depthwise":  # per channel: (channels, positions, multiplier) -> (positions, channels*mult)
        product = product.transpose(1, 0, 2).reshape(-1)
    np.testing.assert_allclose(np.sort(product.reshape(-1)), np.sort(expected.reshape(-1)), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(product.reshape(expected.size), expected.reshape(-1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("K", GENERATIONS)
@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda L: L.Conv2D(5, 3, strides=2, padding="same", use_bias=False), (9, 9, 4)),
        (lambda L: L.Conv2D(5, (3, 2), dilation_rate=2, padding="valid", use_bias=False), (9, 9, 3)),
        (lambda L: L.Conv1D(4, 3, padding="causal", dilation_rate=2, use_bias=False), (10, 3)),
        (lambda L: L.Conv1D(4, 3, strides=2, padding="same", use_bias=False), (10, 3)),
        (lambda L: L.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2, use_bias=False), (8, 8, 3)),
        (lambda L: L.Dense(6, use_bias=False), (5, 7)),
        (lambda L: L.EinsumDense("abc,cde->abde", output_shape=(None, 2, 3)), (5, 7)),
        (lambda L: L.EinsumDense("abcd,cde->abe", output_shape=(None, 4)), (5, 2, 3)),
    ],
    ids=[
        "conv2d-stride-same",
        "conv2d-dilated",
        "conv1d-causal",
        "conv1d-stride",
        "depthwise",
        "dense-3d",
        "einsum-query",
        "einsum-output",
    ],
)
def test_each_layer_is_read_as_the_matrix_product_it_computes(K, make, shape):
    K.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(2, *shape)).astype("float32")
    _products_match(K, make(K.layers), shape, x)


def _mlp(K, seed=0):
    K.utils.set_random_seed(seed)
    inputs = K.Input((12,))
    hidden = K.layers.Dense(16, activation="relu", name="first")(inputs)
    hidden = K.layers.Dense(16, activation="relu", name="second")(hidden)
    return K.Model(inputs, K.layers.Dense(3, name="out")(hidden))


def _features(rows=400, seed=1, loud=True):
    x = np.random.default_rng(seed).normal(size=(rows, 12)).astype("float32")
    if loud:
        x[:, 3] *= 20.0  # one loud input: its weights matter more than their size says
    return x


@pytest.mark.parametrize("K", GENERATIONS)
def test_wanda_keeps_per_output_the_largest_weight_times_input_norm(K):
    model = _mlp(K)
    x = _features()
    kernel = model.get_layer("first").kernel.numpy()
    masks, result = _prune(model, WandaPruningConfig(target_sparsity=0.5), tf.constant(x))

    scores = np.abs(kernel) * np.linalg.norm(x, axis=0)[:, None] / math.sqrt(len(x))
    expected = np.ones(kernel.shape, dtype=bool)
    for output in range(kernel.shape[1]):
        expected[np.argsort(scores[:, output], kind="stable")[:6], output] = False
    np.testing.assert_array_equal(masks["first::kernel"], expected)
    # Kept weights are not changed; the loud input's weights are all kept.
    np.testing.assert_array_equal(model.get_layer("first").kernel.numpy(), kernel * expected)
    assert expected[3].all() and not (np.abs(kernel) >= np.median(np.abs(kernel), axis=0)).all(axis=1)[3]
    assert [row.layer for row in result.layers] == ["first", "second"]  # the output layer is protected
    assert all(row.sparsity == 0.5 for row in result.layers)


@pytest.mark.parametrize("K", GENERATIONS)
def test_each_layer_is_judged_on_the_inputs_of_the_model_pruned_so_far(K):
    model = _mlp(K)
    x = _features(loud=False)
    masks, _ = _prune(model, WandaPruningConfig(target_sparsity=0.75), tf.constant(x))
    # Recompute the second layer's inputs with the first already pruned (as it now is) ...
    probe = K.Model(model.inputs, model.get_layer("first").output)
    pruned_inputs = np.asarray(probe(x))
    kernel = model.get_layer("second").kernel.numpy()  # the kept weights are unchanged by wanda
    unpruned = _mlp(K)
    dense_inputs = np.asarray(K.Model(unpruned.inputs, unpruned.get_layer("first").output)(x))

    def wanda_mask(inputs, weights):
        scores = np.abs(weights) * np.linalg.norm(inputs, axis=0)[:, None]
        keep = np.ones(weights.shape, dtype=bool)
        for output in range(weights.shape[1]):
            keep[np.argsort(scores[:, output], kind="stable")[:12], output] = False
        return keep

    original_kernel = unpruned.get_layer("second").kernel.numpy()
    np.testing.assert_array_equal(masks["second::kernel"], wanda_mask(pruned_inputs, original_kernel))
    # ... which is not what the dense model's inputs would have chosen (the test can tell them apart).
    assert (wanda_mask(dense_inputs, original_kernel) != masks["second::kernel"]).any()
    np.testing.assert_array_equal(kernel != 0, masks["second::kernel"] & (original_kernel != 0))


def _reconstruction_error(model, reference, x, layer="first"):
    """Squared error of ``layer``'s output (before its activation's effect is not separable: after it)."""

    def output(m):
        return np.asarray(type(m)(m.inputs, m.get_layer(layer).output)(x))

    return float(np.sum((output(model) - output(reference)) ** 2))


@pytest.mark.parametrize("K", GENERATIONS)
@pytest.mark.parametrize("pattern", [{"target_sparsity": 0.5}, {"n_m": "2:4"}], ids=["50%", "2:4"])
def test_sparsegpt_reconstructs_the_layer_better_than_magnitude_and_wanda(K, pattern):
    x = _features(rows=600)
    errors = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        model, reference = _mlp(K), _mlp(K)
        if method == "magnitude":
            prune_model(
                model, PruningConfig(**pattern, **({"scope": "per_layer"} if "target_sparsity" in pattern else {}))
            )
        else:
            masks, result = _prune(model, _config(method, **pattern), tf.constant(x))
        errors[method] = _reconstruction_error(model, reference, x)
    assert errors["sparsegpt"] < errors["wanda"] < errors["magnitude"], errors
    kernel = model.get_layer("first").kernel.numpy()
    assert np.count_nonzero(kernel) <= kernel.size // 2
    if "n_m" in pattern:  # at most 2 non-zeros in every 4 consecutive inputs of each output
        runs = (kernel.reshape(3, 4, 16) != 0).sum(axis=1)
        assert runs.max() <= 2
    # The kept weights moved (the update), the pruned are exact zeros, and the layer's error is reported.
    original = _mlp(K).get_layer("first").kernel.numpy()
    kept = masks["first::kernel"]
    assert not np.allclose(kernel[kept], original[kept]) and (kernel[~kept] == 0).all()
    assert 0 < result.layers[0].relative_error < 1 and result.layers[0].damping == 0.01


def test_sparsegpt_is_the_least_squares_refit_of_the_weights_not_yet_processed():
    """One weight removed from a row: SparseGPT leaves the columns before it as they were (they are
    processed, frozen) and refits the columns after it by least squares on the layer's inputs."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 6))
    x[:, 4] += 0.8 * x[:, 2]  # correlated inputs, or there is nothing to make up for
    w = rng.normal(size=(6, 3))
    hessian = (x.T @ x / len(x))[None]
    updated, keep, _, _ = oneshot._sparsegpt(w[None], hessian, 1 / 6, None, 0, 128, damping=1e-9)
    assert keep[0].sum() == 15  # ceil(18 / 6) = 3 weights of the block
    refitted = 0
    for output in range(3):
        gone = np.flatnonzero(~keep[0][:, output])
        if len(gone) != 1:
            continue
        before, after = np.arange(gone[0]), np.arange(gone[0] + 1, 6)
        np.testing.assert_allclose(updated[0][before, output], w[before, output], rtol=1e-9)
        target = x @ w[:, output] - x[:, before] @ w[before, output]
        refit, *_ = np.linalg.lstsq(x[:, after], target, rcond=None)
        np.testing.assert_allclose(updated[0][after, output], refit, rtol=1e-5, atol=1e-6)
        refitted += 1
    assert refitted >= 1


@pytest.mark.parametrize("K", GENERATIONS)
def test_embeddings_are_scored_by_how_often_each_token_is_read(K):
    ids = np.random.default_rng(0).integers(1, 5, size=(64, 5)).astype("int32")  # 0 and 5..9 never read
    for method in ("wanda", "sparsegpt"):
        K.utils.set_random_seed(0)
        inputs = K.Input((5,), dtype="int32")
        embedded = K.layers.Embedding(10, 4, name="embed")(inputs)
        model = K.Model(inputs, K.layers.Dense(2, name="out")(K.layers.Flatten()(embedded)))
        table = model.get_layer("embed").embeddings.numpy()
        masks, result = _prune(model, _config(method, target_sparsity=0.5), tf.constant(ids))
        assert result.layers[0].kind == "embedding"
        keep = masks["embed::embeddings"]
        # Every read token keeps its row; of the six never read, the one with the largest |w| per column.
        unread = np.array([0, 5, 6, 7, 8, 9])
        assert keep[1:5].all() and (keep[unread].sum(axis=0) == 1).all()
        largest = unread[np.argmax(np.abs(table[unread]), axis=0)]
        assert keep[largest, np.arange(4)].all()


@pytest.mark.parametrize("K", GENERATIONS)
def test_attention_projections_are_pruned_in_the_order_they_run(K):
    K.utils.set_random_seed(0)
    tokens = K.Input((6, 8))
    attended = K.layers.MultiHeadAttention(num_heads=2, key_dim=4, name="mha")(tokens, tokens)
    pooled = K.layers.GlobalAveragePooling1D()(K.layers.Dense(8, name="ffn")(attended))
    model = K.Model(tokens, K.layers.Dense(2, name="out")(pooled))
    x = np.random.default_rng(0).normal(size=(64, 6, 8)).astype("float32")
    before = np.asarray(model(x))
    masks, result = _prune(model, SparseGPTPruningConfig(target_sparsity=0.5), tf.constant(x))
    assert [(row.layer, row.weight) for row in result.layers] == [
        ("mha", "query/kernel"),
        ("mha", "key/kernel"),
        ("mha", "value/kernel"),
        ("mha", "attention_output/kernel"),
        ("ffn", "kernel"),
    ]
    assert all(row.sparsity == 0.5 for row in result.layers)
    assert np.count_nonzero(model.get_layer("mha")._query_dense.kernel.numpy()) == 32
    assert np.abs(np.asarray(model(x)) - before).max() < np.abs(before).max()


@pytest.mark.parametrize("K", GENERATIONS)
def test_layers_the_methods_cannot_read_are_all_named_before_any_work(K):
    K.utils.set_random_seed(0)
    inputs = K.Input((6, 4))
    x = K.layers.LSTM(5, return_sequences=True, name="recurrent")(inputs)
    x = K.layers.Conv1D(4, 3, groups=1, name="conv")(x)
    x = K.layers.SeparableConv1D(4, 2, name="separable")(x)
    model = K.Model(inputs, K.layers.Dense(2, name="out")(K.layers.Flatten()(x)))
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(OneShotError) as error:
        _prune(model, WandaPruningConfig(target_sparsity=0.5), tf.constant(np.ones((8, 6, 4), "float32")))
    message = str(error.value)
    assert "recurrent (LSTM" in message and "separable (SeparableConv1D" in message and "conv (" not in message
    assert "protected_layers" in message
    assert all((a == b).all() for a, b in zip(before, model.get_weights(), strict=True))
    # Protected, they are left dense and the rest is pruned.
    config = WandaPruningConfig(target_sparsity=0.5, protected_layers=["recurrent", "separable"])
    _, result = _prune(model, config, tf.constant(np.ones((8, 6, 4), "float32")))
    assert [row.layer for row in result.layers] == ["conv"]


def test_sparsegpt_refuses_fewer_calibration_rows_than_a_layer_has_inputs_naming_each():
    model = _mlp(keras)
    config = SparseGPTPruningConfig(target_sparsity=0.5)
    kernels = [w.copy() for w in model.get_weights()]
    with pytest.raises(
        OneShotError,
        match=r"first \(12 inputs not always zero, 8 rows from 8 examples; needs at least "
        r"12 examples\); second \(\d+ inputs",
    ):
        _prune(model, config, tf.constant(_features(rows=8)))
    assert all((a == b).all() for a, b in zip(kernels, model.get_weights(), strict=True))
    _prune(_mlp(keras), WandaPruningConfig(target_sparsity=0.5), tf.constant(_features(rows=8)))


def test_config_errors_are_specific():
    with pytest.raises(ValidationError, match="exactly one of target_sparsity or n_m"):
        WandaPruningConfig()
    with pytest.raises(ValidationError, match="exactly one of target_sparsity or n_m"):
        SparseGPTPruningConfig(target_sparsity=0.5, n_m="2:4")
    with pytest.raises(ValidationError, match="damping\n  Extra inputs are not permitted"):
        WandaPruningConfig(target_sparsity=0.5, damping=0.1)  # sparsegpt's: wanda updates no weights
    with pytest.raises(ValidationError, match="N:M needs 0 < N < M"):
        WandaPruningConfig(n_m="4:4")
    assert SparseGPTPruningConfig(n_m="2:4").sample_size == 256


def test_erk_shares_the_budget_by_shape_and_keeps_narrow_layers_denser():
    shapes = {"conv": (3, 3, 16, 16), "pointwise": (1, 1, 64, 128), "wide": (1, 1, 256, 512)}
    allocated = oneshot.erk_sparsities(shapes, 0.8)
    sizes = {key: np.prod(shape) for key, shape in shapes.items()}
    pruned = sum(allocated[key] * sizes[key] for key in shapes)
    assert pruned == pytest.approx(0.8 * sum(sizes.values()))
    # Density is proportional to sum(shape) / prod(shape): 0.0237 (pointwise) > 0.0165 > 0.0059 (wide).
    density = {key: 1 - allocated[key] for key in shapes}
    for key in shapes:
        assert density[key] / (sum(shapes[key]) / sizes[key]) == pytest.approx(density["wide"] / (770 / sizes["wide"]))
    assert 0 < allocated["pointwise"] < allocated["conv"] < allocated["wide"] < 1
    # A layer whose density would pass 1 is left dense, the others make up for it.
    capped = oneshot.erk_sparsities({"tiny": (2, 2), "big": (1000, 1000)}, 0.5)
    assert capped["tiny"] == 0.0 and capped["big"] == pytest.approx(0.5 * 1000004 / 1000000)
    with pytest.raises(ValidationError, match="allocation shares target_sparsity"):
        WandaPruningConfig(n_m="2:4", allocation="erk")


def test_the_dense_outputs_refit_is_the_least_squares_fit_of_the_unpruned_models_outputs():
    """On the pruned model's inputs X, the refit M' reproduces the unpruned model's outputs D M as
    well as any dense weights can (least squares), and is M itself when X is D."""
    rng = np.random.default_rng(0)
    dense_inputs = rng.normal(size=(600, 8))
    pruned_inputs = dense_inputs @ (np.eye(8) + 0.3 * rng.normal(size=(8, 8))) + 0.1 * rng.normal(size=(600, 8))
    matrix = rng.normal(size=(1, 8, 5))
    hessian = (pruned_inputs.T @ pruned_inputs / 600)[None]
    cross = (pruned_inputs.T @ dense_inputs / 600)[None]
    refit = oneshot._refit_to_dense(matrix, hessian, cross, damping=1e-12)
    expected, *_ = np.linalg.lstsq(pruned_inputs, dense_inputs @ matrix[0], rcond=None)
    np.testing.assert_allclose(refit[0], expected, rtol=1e-6, atol=1e-8)
    assert not np.allclose(refit, matrix)
    same = oneshot._refit_to_dense(matrix, hessian, hessian, damping=0.01)
    np.testing.assert_allclose(same, matrix, rtol=1e-12)


@pytest.mark.parametrize("K", GENERATIONS)
def test_dense_outputs_bring_each_pruned_layer_closer_to_the_unpruned_model(K):
    """With reconstruct=dense_outputs, a layer after a pruned one corrects the drift it inherits:
    its outputs are nearer the unpruned model's than SparseGPT's own objective leaves them; the
    model ends with the pruned values (the unpruned ones were only swapped in to read them)."""
    x = _features(rows=600, loud=False)
    errors, reported = {}, {}
    for reconstruct in ("layer_outputs", "dense_outputs"):
        model, reference = _mlp(K), _mlp(K)
        masks, result = _prune(model, SparseGPTPruningConfig(n_m="2:4", reconstruct=reconstruct), tf.constant(x))
        errors[reconstruct] = _reconstruction_error(model, reference, x, layer="second")
        reported[reconstruct] = result.layers[1].relative_error
        for key, mask in masks.items():
            kernel = model.get_layer(key.split("::")[0]).kernel.numpy()
            assert (kernel[~mask] == 0).all() and (kernel[mask] != 0).all()
    assert errors["dense_outputs"] < 0.9 * errors["layer_outputs"], errors
    # The second layer's reported error is measured against the unpruned outputs, so it counts the
    # first layer's drift too: larger than the error against its own outputs, and still below 1.
    assert reported["layer_outputs"] < reported["dense_outputs"] < 1, reported


@pytest.mark.parametrize("K", GENERATIONS)
@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "sparsegpt-layer_outputs"])
def test_a_batch_norm_after_a_pruned_layer_gets_the_statistics_of_the_pruned_outputs(K, method):
    method, _, reconstruct = method.partition("-")
    options = {"reconstruct": reconstruct} if reconstruct else {}
    K.utils.set_random_seed(0)
    inputs = K.Input((8, 8, 3))
    x = K.layers.Conv2D(16, 3, padding="same", name="conv")(inputs)
    x = K.layers.BatchNormalization(name="bn")(x)
    x = K.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(K.layers.ReLU()(x))
    x = K.layers.BatchNormalization(name="dw_bn")(x)
    model = K.Model(inputs, K.layers.Dense(2, name="out")(K.layers.GlobalAveragePooling2D()(x)))
    images = np.random.default_rng(0).normal(1.0, 2.0, size=(300, 8, 8, 3)).astype("float32")
    masks, result = _prune(model, _config(method, target_sparsity=0.5, **options), tf.constant(images))
    assert [row.recalibrated for row in result.layers] == ["bn", "dw_bn"]
    for layer, batch_norm in (("conv", "bn"), ("dw", "dw_bn")):
        outputs = np.asarray(K.Model(model.inputs, model.get_layer(layer).output)(images)).reshape(
            -1, 32 if layer == "dw" else 16
        )
        bn = model.get_layer(batch_norm)
        np.testing.assert_allclose(np.asarray(bn.moving_mean), outputs.mean(axis=0), rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(np.asarray(bn.moving_variance), outputs.var(axis=0), rtol=1e-3, atol=1e-4)
    # Turned off, the moving statistics are the model's own.
    K.utils.set_random_seed(0)
    fresh = K.models.clone_model(model)
    before = np.asarray(fresh.get_layer("bn").moving_variance).copy()
    _, result = _prune(
        fresh,
        _config(method, target_sparsity=0.5, recalibrate_batch_norm=False),
        tf.constant(images),
    )
    assert all(row.recalibrated is None for row in result.layers)
    np.testing.assert_array_equal(np.asarray(fresh.get_layer("bn").moving_variance), before)


@pytest.mark.integration
def test_sparsegpt_through_the_prune_executor_then_gated_without_fine_tuning(tmp_path, penguin_baseline, penguin_data):
    """PruneComponent's executor (calibration from the train split) -> RetrainComponent with
    epochs 0 -> the gate: the one-shot model is judged as pruned and its report says how."""
    import json
    import os

    from executor_calls import artifact, examples_artifact, run_gate, run_retrain
    from tfx.types import standard_artifacts

    from tfx_model_pruning.artifacts import PruningReport
    from tfx_model_pruning.engine import load_model
    from tfx_model_pruning.engine.results import PruningResult
    from tfx_model_pruning.evaluator_gate.config import GateConfig, MetricThreshold
    from tfx_model_pruning.prune import executor as prune_executor

    model = artifact(standard_artifacts.Model, tmp_path / "model")
    report = artifact(PruningReport, tmp_path / "report")
    config = SparseGPTPruningConfig(target_sparsity=0.5, calibration_examples=200)
    prune_executor.Executor().Do(
        {
            "input_model": [artifact(standard_artifacts.Model, penguin_baseline)],
            "examples": [examples_artifact(penguin_data)],
        },
        {"model": [model], "pruning_report": [report]},
        {"pruning_config": config.model_dump_json()},
    )
    result = PruningResult.from_json(json.load(open(os.path.join(report.uri, "report.json"))))
    assert result.method == "sparsegpt" and result.one_shot.calibration_examples == 200
    assert [row.layer for row in result.one_shot.layers] == ["hidden_0", "hidden_1"]
    assert all(row.sparsity == 0.5 and 0 < row.relative_error < 1 for row in result.one_shot.layers)
    summary = open(os.path.join(report.uri, "summary.md")).read()
    assert "Criterion: sparsegpt, one-shot from 200 calibration examples" in summary
    assert "## One-shot (sparsegpt, reconstructing the dense outputs), in the order the layers were pruned" in summary
    assert result.one_shot.reconstruct == "dense_outputs" and "the drift of the layers before" in summary
    loaded = load_model(model.uri)
    assert set(loaded.masks) == {"hidden_0::kernel", "hidden_1::kernel"}
    assert list(loaded.signatures) == ["serving_default"]

    retrained = run_retrain(model.uri, penguin_data, tmp_path / "retrained", label_key="species", epochs=0)
    gate = GateConfig(
        label_key="species",
        thresholds=[MetricThreshold(metric="SparseCategoricalAccuracy", lower_bound=0.8, max_absolute_drop=0.05)],
        min_sparsity=0.5,
    )
    _, verdict, error = run_gate(tmp_path, retrained.uri, penguin_baseline, penguin_data, gate)
    assert error is None and verdict["blessed"], verdict
    assert "retrain.epochs: 0" in verdict["not_fine_tuned"]


def test_sparsegpt_prunes_weights_on_always_zero_inputs_first_but_no_more_than_asked():
    """A 3x3 convolution over a 1x1 map reads padding on 8 of its 9 taps: those weights go first,
    and the layer still ends at the sparsity asked, not at 8/9."""
    rng = np.random.default_rng(0)
    taps, channels, rows = 9, 4, 400
    x = np.zeros((rows, taps * channels))
    x[:, 4 * channels : 5 * channels] = rng.normal(size=(rows, channels))  # the centre tap only
    w = rng.normal(size=(taps * channels, 6))
    hessian = (x.T @ x / rows)[None]
    updated, keep, _, error = oneshot._sparsegpt(w[None], hessian, 0.5, None, 0, 128, 0.01)
    assert keep[0].mean() == 0.5
    centre = slice(4 * channels, 5 * channels)
    assert keep[0][centre].all()  # 18 of the 32 padding-only weights went, no live one
    padding_only = np.ones(taps * channels, dtype=bool)
    padding_only[centre] = False
    kept_on_padding = keep[0] & padding_only[:, None]
    assert kept_on_padding.any()
    np.testing.assert_allclose(updated[0][kept_on_padding], w[kept_on_padding])  # left as they were
    assert error == pytest.approx(0.0, abs=1e-12)
