"""A Keras 3 ``.keras`` file is scanned before anything in it is revived: stock models pass, and a
Lambda or a class Keras does not know is refused before its code can run."""

import base64
import json
import marshal
import os
import re
import zipfile

import keras
import numpy as np
import pytest

from tfx_model_pruning.engine.keras_file import (
    find_keras_file,
    load_keras_file,
    require_safe_keras_file,
    unsafe_keras_file_entries,
)
from tfx_model_pruning.engine.load_errors import ModelLoadError, UnsafeModelError
from tfx_model_pruning.engine.restored import KerasBackendError

REFUSAL = "Refused; set allow_unsafe_layers=True only for models you trust."


@keras.saving.register_keras_serializable(package="Mine")
class DoublingLayer(keras.layers.Layer):
    def call(self, inputs):
        return inputs * 2.0


@keras.saving.register_keras_serializable(package="Mine")
def halved_mse(y_true, y_pred):
    return keras.ops.mean(keras.ops.square(y_true - y_pred)) / 2.0


def _functional_model() -> keras.Model:
    features = keras.Input((16,), name="features")
    tokens = keras.Input((6,), dtype="int32", name="tokens")
    image = keras.Input((8, 8, 3), name="image")
    seq = keras.layers.Embedding(20, 8)(tokens)
    seq = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)(seq, seq)
    seq = keras.layers.LSTM(8)(seq)
    x = keras.layers.Normalization(mean=np.full(16, 0.5), variance=np.full(16, 2.0))(features)
    x = keras.layers.Dense(8, activation="relu", kernel_regularizer="l2")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Dropout(0.2)(x)
    y = keras.layers.Dense(8)(x)
    x = keras.layers.Add()([x, y])
    x = keras.ops.relu(x) + y  # keras.ops calls: recorded as keras.src.ops operations
    img = keras.layers.Rescaling(1.0 / 255)(image)
    img = keras.layers.Conv2D(4, 3, activation="relu")(img)
    img = keras.layers.GlobalAveragePooling2D()(img)
    x = keras.layers.Concatenate()([x, seq, img])
    model = keras.Model([features, tokens, image], keras.layers.Dense(3)(x))
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def _functional_inputs() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [
        rng.normal(size=(4, 16)).astype("float32"),
        rng.integers(0, 20, size=(4, 6)).astype("int32"),
        rng.uniform(0, 255, size=(4, 8, 8, 3)).astype("float32"),
    ]


def _sequential_model() -> keras.Model:
    model = keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(3, activation="softmax")]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _sequential_inputs() -> np.ndarray:
    return np.random.default_rng(1).normal(size=(4, 5)).astype("float32")


def _save(model: keras.Model, path) -> str:
    model.save(path)
    return str(path)


def _rewrite_config(source: str, target: str, change) -> str:
    """Copies a .keras file with its config.json changed by ``change`` (a hand-edited file)."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as edited:
        for item in original.infolist():
            data = original.read(item)
            if item.filename == "config.json":
                config = json.loads(data)
                change(config)
                data = json.dumps(config).encode()
            edited.writestr(item, data)
    return target


@pytest.mark.parametrize(
    "build, inputs",
    [(_functional_model, _functional_inputs), (_sequential_model, _sequential_inputs)],
    ids=["functional", "sequential"],
)
def test_stock_model_has_no_findings_and_loads_with_the_same_predictions(tmp_path, build, inputs):
    model = build()
    path = _save(model, tmp_path / "model.keras")

    assert unsafe_keras_file_entries(path) == []
    require_safe_keras_file(path)
    loaded = load_keras_file(path)

    assert isinstance(loaded, keras.Model)
    assert loaded.optimizer is not None and type(loaded.optimizer) is type(model.optimizer)
    np.testing.assert_allclose(
        np.asarray(loaded(inputs(), training=False)), np.asarray(model(inputs(), training=False)), rtol=1e-6, atol=1e-6
    )


# ConvNeXt holds a layer class private to Keras (keras.src.applications.convnext.LayerScale).
@pytest.mark.parametrize("application", ["MobileNetV2", "ConvNeXtTiny"])
def test_keras_application_has_no_findings(tmp_path, application):
    model = getattr(keras.applications, application)(weights=None, input_shape=(32, 32, 3), classes=3)
    path = _save(model, tmp_path / "model.keras")

    assert unsafe_keras_file_entries(path) == []


def test_lambda_is_refused_before_its_code_runs(tmp_path):
    marker = tmp_path / "ran"
    writes_marker = eval(f"lambda t: (open({str(marker)!r}, 'w').close(), t)[1]")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(writes_marker, name="writes_marker")])
    path = _save(model, tmp_path / "model.keras")
    marker.unlink()  # building the model ran the lambda once

    with pytest.raises(UnsafeModelError) as raised:
        require_safe_keras_file(path)
    message = str(raised.value)
    assert repr(path) in message and REFUSAL in message
    assert f"{model.name}/writes_marker: Lambda layer" in message
    with pytest.raises(UnsafeModelError):
        load_keras_file(path)
    assert not marker.exists()

    # The marker is real: reviving the lambda, as an allowed load does, writes it.
    load_keras_file(path, allow_unsafe_layers=True)
    assert marker.exists()


def _lambda():
    return keras.layers.Lambda(lambda t: t * 3.0, name="hidden_lambda")


def _in_nested_sequential() -> keras.Model:
    inputs = keras.Input((4,))
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4), _lambda()], name="inner")
    return keras.Model(inputs, keras.layers.Dense(2)(inner(inputs)), name="outer")


def _in_nested_functional() -> keras.Model:
    inner_inputs = keras.Input((4,))
    inner = keras.Model(inner_inputs, _lambda()(keras.layers.Dense(4)(inner_inputs)), name="inner")
    return keras.Sequential([keras.Input((4,)), inner, keras.layers.Dense(2)], name="outer")


def _in_time_distributed() -> keras.Model:
    inputs = keras.Input((3, 4))
    wrapped = keras.layers.TimeDistributed(_lambda(), name="inner")(inputs)
    return keras.Model(inputs, wrapped, name="outer")


@pytest.mark.parametrize("build", [_in_nested_sequential, _in_nested_functional, _in_time_distributed])
def test_hidden_lambda_is_found(tmp_path, build):
    path = _save(build(), tmp_path / "model.keras")

    findings = unsafe_keras_file_entries(path)

    assert "outer/inner/hidden_lambda: Lambda layer: runs a Python function that came with the model" in findings
    assert "outer/inner/hidden_lambda.function: marshalled Python lambda (__lambda__)" in findings
    with pytest.raises(UnsafeModelError, match="outer/inner/hidden_lambda"):
        load_keras_file(path)


def test_registered_custom_layer_is_named_and_loads_only_when_allowed(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3), DoublingLayer(name="doubling")], name="seq")
    path = _save(model, tmp_path / "model.keras")

    findings = unsafe_keras_file_entries(path)

    assert len(findings) == 1
    assert findings[0].startswith("seq/doubling: class 'DoublingLayer' (registered as 'Mine>DoublingLayer'")
    assert findings[0].endswith("is not a Keras built-in")
    with pytest.raises(UnsafeModelError, match="Mine>DoublingLayer"):
        load_keras_file(path)
    loaded = load_keras_file(path, allow_unsafe_layers=True)
    assert isinstance(loaded.get_layer("doubling"), DoublingLayer)
    x = np.ones((2, 3), "float32")
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), rtol=1e-6)


def test_registered_custom_loss_function_is_found(tmp_path):
    model = _sequential_model()
    model.compile(optimizer="adam", loss=halved_mse)
    path = _save(model, tmp_path / "model.keras")

    findings = unsafe_keras_file_entries(path)

    assert len(findings) == 1 and "'Mine>halved_mse'" in findings[0], findings
    assert ".compile_config.loss" in findings[0]


_MARSHALLED = base64.b64encode(marshal.dumps((lambda t: t).__code__)).decode()


def _dense(config: dict) -> dict:
    (dense,) = [layer for layer in config["config"]["layers"] if layer["class_name"] == "Dense"][:1]
    return dense


@pytest.mark.parametrize(
    "change, expected",
    [
        # Keras revives the class registered under registered_name, whatever class_name says.
        (
            lambda dense: dense.update(registered_name="Mine>DoublingLayer"),
            "carries registered_name 'Mine>DoublingLayer'",
        ),
        (lambda dense: dense.update(module="os", class_name="system"), "class 'system' (module 'os')"),
        (lambda dense: dense.update(module="keras.layers", class_name="__class__"), "class '__class__'"),
        # Keras's own class, by its source module: still a Lambda.
        (lambda dense: dense.update(module="keras.src.layers.core.lambda_layer", class_name="Lambda"), "Lambda layer"),
        # A class in a Keras module, but not one Keras revives from a config.
        (
            lambda dense: dense.update(module="keras.src.saving.object_registration", class_name="CustomObjectScope"),
            "class 'CustomObjectScope'",
        ),
        (
            lambda dense: dense["config"].update(
                activation={"module": "builtins", "class_name": "function", "config": "Mine>halved_mse"}
            ),
            "Python function 'Mine>halved_mse'",
        ),
        # A public Keras function, but not a modeling one.
        (
            lambda dense: dense["config"].update(
                activation={"module": "keras.saving", "class_name": "function", "config": "load_model"}
            ),
            "Python function 'load_model' (module 'keras.saving'",
        ),
        (
            lambda dense: dense["config"].update(activation={"class_name": "__lambda__", "config": {"value": "x"}}),
            "marshalled Python lambda",
        ),
        (lambda dense: dense["config"].update(note=_MARSHALLED), "marshalled Python bytecode"),
        # A plain string setting is looked up among registered objects before Keras's own names.
        (
            lambda dense: dense["config"].update(activation="Mine>halved_mse"),
            ".activation: names the registered object 'Mine>halved_mse'",
        ),
    ],
    ids=[
        "registered-name",
        "foreign-module",
        "dunder",
        "internal-lambda",
        "internal-non-saveable",
        "registered-function",
        "non-modeling",
        "lambda",
        "bytecode",
        "registered-string",
    ],
)
def test_hand_edited_configs_are_found(tmp_path, change, expected):
    source = _save(_sequential_model(), tmp_path / "stock.keras")
    path = _rewrite_config(source, str(tmp_path / "edited.keras"), lambda config: change(_dense(config)))

    findings = unsafe_keras_file_entries(path)

    assert any(expected in finding for finding in findings), findings
    with pytest.raises(UnsafeModelError):
        load_keras_file(path)


def test_registered_object_named_by_a_plain_compile_setting_is_found(tmp_path):
    def name_custom_loss(config):
        config["compile_config"]["loss"] = "Mine>halved_mse"

    model = _sequential_model()
    source = _save(model, tmp_path / "stock.keras")
    path = _rewrite_config(source, str(tmp_path / "edited.keras"), name_custom_loss)

    findings = unsafe_keras_file_entries(path)

    assert findings == [
        f"{model.name}.compile_config.loss: names the registered object 'Mine>halved_mse', not a Keras built-in"
    ]
    # Keras would indeed revive the registered function from that string.
    assert load_keras_file(path, allow_unsafe_layers=True).loss is halved_mse


def test_find_keras_file(tmp_path):
    assert find_keras_file(str(tmp_path)) is None
    assert find_keras_file(str(tmp_path / "missing")) is None
    (tmp_path / "notes.txt").write_text("not a model")
    (tmp_path / "dir.keras").mkdir()  # a directory is not a .keras file
    assert find_keras_file(str(tmp_path)) is None

    first = _save(_sequential_model(), tmp_path / "first.keras")
    assert find_keras_file(str(tmp_path)) == first

    second = _save(_sequential_model(), tmp_path / "second.keras")
    with pytest.raises(ModelLoadError) as raised:
        find_keras_file(str(tmp_path))
    message = str(raised.value)
    assert repr(first) in message and repr(second) in message and "keep one" in message


def _zip_with(member: str, text: str):
    def write(path):
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr(member, text)

    return write


@pytest.mark.parametrize(
    "write, expected",
    [
        (lambda path: path.write_bytes(os.urandom(4096)), "not a readable .keras (zip) file"),
        (_zip_with("metadata.json", "{}"), "has no config.json"),
        (_zip_with("config.json", "{not json"), "not valid JSON"),
    ],
    ids=["random-bytes", "no-config", "bad-json"],
)
def test_corrupt_file_is_a_load_error(tmp_path, write, expected):
    path = tmp_path / "model.keras"
    write(path)

    for call in (unsafe_keras_file_entries, require_safe_keras_file, load_keras_file):
        with pytest.raises(ModelLoadError, match=re.escape(expected)) as raised:
            call(str(path))
        assert not isinstance(raised.value, UnsafeModelError)


def test_missing_file_is_a_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_keras_file(str(tmp_path / "absent.keras"))


def test_other_backend_is_refused_before_the_file_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")

    with pytest.raises(KerasBackendError, match="jax backend"):
        load_keras_file(str(tmp_path / "absent.keras"))
