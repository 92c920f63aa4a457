"""A model whose graphs touch files, Python or the network is refused before any of it runs; the
models others write (TFX's examples and test data, stock applications, Keras 3) pass unchanged."""

import glob
import os
import shutil

import keras as keras3
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from tensorflow.core.protobuf import saved_model_pb2
from tfx.types import standard_artifacts

from tfx_model_pruning.artifacts import PruningReport
from tfx_model_pruning.component_options import allow_ops_parameter
from tfx_model_pruning.engine import load_model
from tfx_model_pruning.engine.graph_scan import (
    REFUSED_OPS,
    SAVED_MODEL_CLI_DENYLIST,
    UnsafeGraphError,
    introduced_ops,
    scan_model_dir,
)
from tfx_model_pruning.engine.load_errors import UnsafeModelError
from tfx_model_pruning.engine.transform import transform_preprocessing
from tfx_model_pruning.prune import executor as prune_executor

TFX_TESTDATA = os.path.join(os.path.dirname(__import__("tfx").__file__), "components", "testdata")


def _dense_model() -> keras.Model:
    inputs = keras.Input((3,), name="x")
    return keras.Model(inputs, keras.layers.Dense(2, name="out")(inputs))


def _vocabulary_lookup(vocabulary: str) -> tf.Module:
    """A lookup table filled from a vocabulary file, as tf.lookup makes one: saved, the file is an asset."""
    module = tf.Module()
    initializer = tf.lookup.TextFileInitializer(
        vocabulary, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER
    )
    module.table = tf.lookup.StaticHashTable(initializer, default_value=-1)
    module.lookup = tf.function(
        lambda words: module.table.lookup(words), input_signature=[tf.TensorSpec((None,), tf.string)]
    )
    return module


def _tf_module_writing(marker: str, when: str) -> tf.Module:
    """A model saved with tf.saved_model.save whose serving signature, or whose table initializer
    (run by tf.saved_model.load itself), writes ``marker``."""
    module = tf.Module()
    module.w = tf.Variable(tf.ones((3, 2)))
    if when == "load":

        class Writes(tf.saved_model.experimental.TrackableResource):
            def _create_resource(self):
                return tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[])

            def _initialize(self):
                tf.io.write_file(marker, "ran at load")
                return tf.raw_ops.AssignVariableOp(resource=self.resource_handle, value=1.0)

        module.resource = Writes()

    @tf.function(input_signature=[tf.TensorSpec((None, 3), tf.float32, name="x")])
    def serve(x):
        if when == "serve":
            tf.io.write_file(marker, tf.io.read_file("/etc/hostname"))
        return {"out": tf.matmul(x, module.w)}

    module.serve = serve
    return module


def test_a_signature_that_writes_a_file_is_refused_naming_the_function_and_op(tmp_path):
    marker = str(tmp_path / "marker")
    tf.saved_model.save(_tf_module_writing(marker, "serve"), str(tmp_path / "model"))
    with pytest.raises(UnsafeGraphError) as raised:
        load_model(str(tmp_path / "model"))
    message = str(raised.value)
    assert "op WriteFile" in message and "op ReadFile" in message and "__inference_serve" in message
    assert "security.allow_ops: [ReadFile, WriteFile]" in message
    assert not os.path.exists(marker)
    # The control: let through, the same model does write the file when it is evaluated.
    loaded = load_model(str(tmp_path / "model"), allow_ops=["ReadFile", "WriteFile"])
    assert [finding.op for finding in loaded.scan.allowed] == ["ReadFile", "WriteFile"]
    loaded.model.serve(tf.ones((1, 3)))
    assert os.path.exists(marker)


def test_an_initializer_that_writes_at_load_time_never_runs(tmp_path):
    marker = str(tmp_path / "marker")
    tf.saved_model.save(_tf_module_writing(marker, "load"), str(tmp_path / "model"))
    with pytest.raises(UnsafeGraphError, match="op WriteFile .*__inference__initialize"):
        load_model(str(tmp_path / "model"))
    assert not os.path.exists(marker)
    tf.saved_model.load(str(tmp_path / "model"))  # what loading without the scan does
    assert os.path.exists(marker)


def test_a_tf_keras_model_save_with_a_writing_signature_is_refused(tmp_path):
    marker = str(tmp_path / "marker")
    model = _dense_model()

    @tf.function(input_signature=[tf.TensorSpec((None, 3), tf.float32, name="x")])
    def serving_default(x):
        tf.io.write_file(marker, "served")
        return {"out": model(x)}

    model.save(str(tmp_path / "model"), save_format="tf", signatures={"serving_default": serving_default})
    with pytest.raises(UnsafeGraphError, match="op WriteFile"):
        load_model(str(tmp_path / "model"))
    assert not os.path.exists(marker)


@pytest.mark.parametrize(
    "body, op",
    [
        (lambda x: tf.py_function(lambda t: t, [x], tf.float32), "EagerPyFunc"),
        (lambda x: tf.numpy_function(lambda t: t, [x], tf.float32, stateful=False), "PyFuncStateless"),
        (lambda x: (tf.print(x, output_stream="file:///tmp/leak.txt"), x)[1], "PrintV2"),
        (lambda x: (tf.io.matching_files("/etc/*"), x)[1], "MatchingFiles"),
    ],
)
def test_python_callbacks_and_file_access_are_refused(tmp_path, body, op):
    module = tf.Module()
    module.serve = tf.function(body, input_signature=[tf.TensorSpec((None, 3), tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "model"))
    scan = scan_model_dir(str(tmp_path / "model"))
    assert [finding.op for finding in scan.findings] == [op]
    assert scan_model_dir(str(tmp_path / "model"), allow_ops=[op]).passed


def test_printing_to_the_log_is_not_file_io(tmp_path):
    module = tf.Module()
    module.serve = tf.function(lambda x: (tf.print(x), x)[1], input_signature=[tf.TensorSpec((None, 3), tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "model"))
    scan = scan_model_dir(str(tmp_path / "model"))
    assert scan.passed and "PrintV2" in scan.ops


def test_checkpoint_ops_pass_only_in_the_saver(tmp_path):
    module = tf.Module()
    module.v = tf.Variable([1.0, 2.0])

    @tf.function(input_signature=[tf.TensorSpec((), tf.string)])
    def leak(prefix):
        tf.raw_ops.SaveV2(prefix=prefix, tensor_names=["v"], shape_and_slices=[""], tensors=[module.v])
        return prefix

    module.leak = leak
    tf.saved_model.save(module, str(tmp_path / "model"))
    scan = scan_model_dir(str(tmp_path / "model"))
    # The saver's own SaveV2/RestoreV2 (every SavedModel has them) pass; the one in a callable does not.
    assert [(finding.op, finding.function.split("_")[-2]) for finding in scan.findings] == [("SaveV2", "leak")]
    assert scan.ops["SaveV2"] >= 2 and "RestoreV2" in scan.ops


def test_a_table_filled_from_an_asset_passes_and_from_a_host_file_is_refused(tmp_path):
    vocabulary = tmp_path / "vocab.txt"
    vocabulary.write_text("a\nb\nc\n")
    module = _vocabulary_lookup(str(vocabulary))
    tf.saved_model.save(module, str(tmp_path / "from_asset"))
    assert scan_model_dir(str(tmp_path / "from_asset")).passed
    assert os.path.exists(tmp_path / "from_asset" / "assets" / "vocab.txt")

    hostile = tf.Module()
    hostile.table = tf.lookup.experimental.MutableHashTable(tf.string, tf.int64, -1)

    @tf.function(input_signature=[tf.TensorSpec((None,), tf.string)])
    def lookup(words):
        handle = tf.raw_ops.HashTableV2(key_dtype=tf.string, value_dtype=tf.int64)
        tf.raw_ops.InitializeTableFromTextFileV2(
            table_handle=handle, filename=tf.constant("/etc/passwd"), key_index=-2, value_index=-1
        )
        return tf.raw_ops.LookupTableFindV2(table_handle=handle, keys=words, default_value=tf.constant(-1, tf.int64))

    hostile.lookup = lookup
    tf.saved_model.save(hostile, str(tmp_path / "from_host"))
    scan = scan_model_dir(str(tmp_path / "from_host"))
    assert [finding.op for finding in scan.findings] == ["InitializeTableFromTextFileV2"]


def _rewrite_saved_model(model_dir: str, change) -> None:
    path = os.path.join(model_dir, "saved_model.pb")
    saved_model = saved_model_pb2.SavedModel()
    with open(path, "rb") as f:
        saved_model.ParseFromString(f.read())
    change(saved_model.meta_graphs[0])
    with open(path, "wb") as f:
        f.write(saved_model.SerializeToString())


def test_an_op_tensorflow_does_not_register_is_refused(tmp_path):
    _dense_model().save(str(tmp_path / "model"), save_format="tf")

    def rename_an_op(graph):
        for function in graph.graph_def.library.function:
            for node in function.node_def:
                if node.op == "MatMul":
                    node.op = "LoadsMyKernel"
                    return

    _rewrite_saved_model(str(tmp_path / "model"), rename_an_op)
    with pytest.raises(UnsafeGraphError, match="op LoadsMyKernel .*not an op TensorFlow registers"):
        load_model(str(tmp_path / "model"))


def test_links_and_climbing_asset_names_are_refused_whatever_allow_ops_says(tmp_path):
    vocabulary = tmp_path / "vocab.txt"
    vocabulary.write_text("a\nb\n")
    module = _vocabulary_lookup(str(vocabulary))
    model_dir = str(tmp_path / "model")
    tf.saved_model.save(module, model_dir)
    pristine = str(tmp_path / "pristine")
    shutil.copytree(model_dir, pristine)

    os.symlink("/etc/hostname", os.path.join(model_dir, "assets", "hostname"))
    os.symlink("vocab.txt", os.path.join(model_dir, "assets", "inside"))  # stays in the directory: fine
    os.link(str(vocabulary), os.path.join(model_dir, "assets.extra"))
    findings = [str(finding) for finding in scan_model_dir(model_dir, allow_ops=list(REFUSED_OPS)).findings]
    assert findings == [
        "assets.extra: a hard link (2 names for one file): copy the file into the model",
        "assets/hostname: a symbolic link to /etc/hostname, outside the model directory",
    ]

    def climb(graph):
        graph.asset_file_def[0].filename = "../../../etc/hostname"

    _rewrite_saved_model(pristine, climb)
    with pytest.raises(UnsafeGraphError, match="climbs out of the model's assets/ directory"):
        load_model(pristine)


def test_a_keras3_export_with_a_writing_layer_is_refused(tmp_path):
    marker = str(tmp_path / "marker")

    class Writes(keras3.layers.Layer):
        def call(self, inputs):
            tf.io.write_file(marker, "called")
            return inputs

    inputs = keras3.Input((3,))
    model = keras3.Model(inputs, keras3.layers.Dense(2)(Writes()(inputs)))
    model.export(str(tmp_path / "exported"), verbose=False)
    if os.path.exists(marker):  # tracing the layer for the export may have run it in Python
        os.remove(marker)
    with pytest.raises(UnsafeGraphError, match="op WriteFile"):
        load_model(str(tmp_path / "exported"))
    assert not os.path.exists(marker)


def test_a_keras3_file_whose_lambda_writes_is_refused_before_keras_builds_it(tmp_path):
    marker = tmp_path / "marker"
    inputs = keras3.Input((3,))
    writes = keras3.layers.Lambda(lambda t, path=str(marker): (open(path, "w").write("ran"), t)[1])
    (tmp_path / "model").mkdir()
    keras3.Model(inputs, keras3.layers.Dense(2)(writes(inputs))).save(str(tmp_path / "model" / "model.keras"))
    marker.unlink(missing_ok=True)
    with pytest.raises(UnsafeModelError, match="Lambda"):
        load_model(str(tmp_path / "model"))
    assert not marker.exists()


def test_the_prune_executor_refuses_and_writes_no_model(tmp_path):
    tf.saved_model.save(_tf_module_writing(str(tmp_path / "marker"), "serve"), str(tmp_path / "model"))
    model, out, report = standard_artifacts.Model(), standard_artifacts.Model(), PruningReport()
    model.uri, out.uri, report.uri = str(tmp_path / "model"), str(tmp_path / "out"), str(tmp_path / "report")
    with pytest.raises(UnsafeGraphError, match="WriteFile"):
        prune_executor.Executor().Do(
            {"input_model": [model]},
            {"model": [out], "pruning_report": [report]},
            {"pruning_config": '{"method": "magnitude", "target_sparsity": 0.5}'},
        )
    assert not glob.glob(str(tmp_path / "out" / "**" / "saved_model.pb"), recursive=True)
    assert not os.path.exists(tmp_path / "marker")


def test_the_table_covers_saved_model_cli_scans_deny_list():
    from tensorflow.python.tools import saved_model_cli

    assert saved_model_cli._OP_DENYLIST <= set(REFUSED_OPS) and SAVED_MODEL_CLI_DENYLIST == saved_model_cli._OP_DENYLIST


def test_allow_ops_is_checked_when_the_pipeline_is_built():
    assert allow_ops_parameter(["PrintV2", "WriteFile", "PrintV2"], "PruneComponent") == "PrintV2,WriteFile"
    assert allow_ops_parameter([], "PruneComponent") is None
    with pytest.raises(ValueError, match="PruneComponent: allow_ops 'write_file': not an op type .*CamelCase"):
        allow_ops_parameter(["write_file"], "PruneComponent")
    with pytest.raises(TypeError, match="list of op names"):
        allow_ops_parameter("WriteFile", "PruneComponent")


def test_the_candidate_may_add_no_op_type(tmp_path):
    parent, candidate = tmp_path / "parent", tmp_path / "candidate"
    _dense_model().save(str(parent), save_format="tf")
    inputs = keras.Input((3,), name="x")
    keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="out")(inputs)).save(
        str(candidate), save_format="tf"
    )
    assert introduced_ops(scan_model_dir(str(candidate)), scan_model_dir(str(parent))) == ["Softmax"]
    assert introduced_ops(scan_model_dir(str(candidate)), scan_model_dir(str(parent)), ["Softmax"]) == []
    assert introduced_ops(scan_model_dir(str(parent)), scan_model_dir(str(candidate))) == []


@pytest.mark.parametrize(
    "model_dir",
    sorted(os.path.dirname(path) for path in glob.glob(f"{TFX_TESTDATA}/**/saved_model.pb", recursive=True)),
    ids=lambda path: os.path.relpath(path, TFX_TESTDATA),
)
def test_tfx_testdata_models_pass(model_dir):
    scan = scan_model_dir(model_dir)
    assert scan.passed, scan.findings
    assert scan.ops  # a census was taken


def test_tfx_transform_graph_passes():
    preprocessing = transform_preprocessing(os.path.join(TFX_TESTDATA, "transform", "transform_graph"))
    assert preprocessing.output_names


@pytest.mark.parametrize("application", ["MobileNetV2", "DenseNet121", "EfficientNetB0"])
def test_stock_tf_keras_applications_pass(tmp_path, application):
    model = getattr(keras.applications, application)(weights=None, input_shape=(64, 64, 3), classes=5)
    model.save(str(tmp_path / "model"), save_format="tf")
    scan = scan_model_dir(str(tmp_path / "model"))
    assert scan.passed, scan.findings
    assert {"Conv2D", "SaveV2", "RestoreV2"} <= set(scan.ops)


def test_a_keras3_export_passes(tmp_path):
    inputs = keras3.Input((8, 8, 3))
    x = keras3.layers.Conv2D(4, 3)(inputs)
    x = keras3.layers.BatchNormalization()(x)
    outputs = keras3.layers.Dense(2)(keras3.layers.GlobalAveragePooling2D()(x))
    model = keras3.Model(inputs, outputs)
    model.export(str(tmp_path / "exported"), verbose=False)
    model.save(str(tmp_path / "exported" / "model.keras"))
    loaded = load_model(str(tmp_path / "exported"))
    assert loaded.scan.passed and loaded.scan.functions > 0
    assert np.asarray(loaded.model(np.zeros((1, 8, 8, 3), np.float32))).shape == (1, 2)


@pytest.mark.integration
def test_the_penguin_baseline_passes_and_records_its_census(penguin_baseline):
    loaded = load_model(penguin_baseline)
    summary = loaded.scan.summary()
    assert summary["passed"] and summary["refused"] == [] and summary["ops"]["MatMul"] > 0
