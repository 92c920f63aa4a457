"""A library must not change its host: importing the packages leaves the environment, logging and
``tf.keras`` as they were, and one process prunes tf-keras and Keras 3 models side by side.

Each test runs in a fresh interpreter without ``TF_USE_LEGACY_KERAS`` (this suite's conftest sets
it, as TFX's own example modules need), so ``tf.keras`` is what TensorFlow makes it by default.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.integration


def _run_without_legacy_keras(script: str) -> dict:
    env = {name: value for name, value in os.environ.items() if name != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"  # set before the snapshot below, so it is not a change
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


SNAPSHOT = """
import json, logging, os, warnings

def snapshot():
    return dict(os.environ), list(logging.getLogger().handlers), logging.getLogger().level

def changes(before):
    environment, handlers, level = before
    changed = sorted(n for n in set(environment) | set(os.environ) if environment.get(n) != os.environ.get(n))
    return {"environment": changed, "logging_kept": (handlers, level) == snapshot()[1:]}
"""


def test_importing_the_package_and_its_engine_leaves_the_host_as_it_was():
    found = _run_without_legacy_keras(
        SNAPSHOT
        + """
before = snapshot()
import tfx_model_pruning
package = changes(before)

import tensorflow as tf  # TensorFlow's own import sets a few variables of its own (TF2_BEHAVIOR, ...)
before = snapshot()
import tfx_model_pruning.engine
from tfx_model_pruning.engine import graph, graph_scan, layer_handlers, prune, serving_latency, structured, tflite_int8
engine = changes(before)
print(json.dumps({"package": package, "engine": engine, "tf_keras": tf.keras.version()}))
"""
    )
    assert found["package"] == {"environment": [], "logging_kept": True}
    assert found["engine"] == {"environment": [], "logging_kept": True}
    # TensorFlow >= 2.16 makes tf.keras Keras 3 unless told otherwise; the engine must not tell it.
    assert found["tf_keras"].startswith("3."), found


def test_the_components_and_pipelines_add_nothing_to_what_importing_tfx_does():
    """TFX's own import sets TF_USE_LEGACY_KERAS when it is unset (tensorflow_transform's keras_lib
    does, and so turns ``tf.keras`` into tf-keras). The components are TFX components and the
    engine's tf.Transform adapter is tf.Transform: they must add nothing to that, and must not undo
    it either, or the same pipeline would run a Trainer module's ``tf.keras`` as Keras 3 or 2
    depending on which import came first."""
    found = _run_without_legacy_keras(
        SNAPSHOT
        + """
import tensorflow as tf
import tensorflow_transform
from tfx import v1 as tfx
before = snapshot()
from tfx_model_pruning import AtomicPusher, EvaluatorGate, PruneComponent, PruningReport, RetrainComponent
from tfx_model_pruning.engine import transform
from tfx_model_pruning_pipelines import cli, kubeflow, penguin_trainer, pipeline_config, pruning_pipeline
print(json.dumps(changes(before)))
"""
    )
    assert found == {"environment": [], "logging_kept": True}


def test_one_process_prunes_and_fine_tunes_a_tf_keras_and_a_keras_3_model_side_by_side():
    found = _run_without_legacy_keras(
        """
        import json
        import numpy as np
        import keras
        import tf_keras
        import tensorflow as tf
        from tfx_model_pruning.engine import (
            FineTuneConfig, PruningConfig, StructuredPruningConfig, fine_tune, prune_model, prune_structured,
        )

        rng = np.random.default_rng(0)
        x = rng.normal(size=(256, 8)).astype("float32")
        y = (x[:, 0] + x[:, 1] > 0).astype("int64")

        def build(library):
            library.utils.set_random_seed(0)
            inputs = library.Input((8,), name="x")
            hidden = library.layers.Dense(32, activation="relu", name="hidden")(inputs)
            model = library.Model(inputs, library.layers.Dense(2, name="out")(hidden))
            loss = library.losses.SparseCategoricalCrossentropy(from_logits=True)
            model.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
            model.fit(x, y, epochs=3, verbose=0)
            return model

        found = {}
        for name, library in (("tf_keras", tf_keras), ("keras3", keras)):
            model = build(library)
            smaller, _ = prune_structured(model, StructuredPruningConfig(prune_fraction=0.5))
            _, masks = prune_model(model, PruningConfig(target_sparsity=0.5))
            fine_tune(model, (x, y), None, FineTuneConfig(epochs=1, batch_size=32), masks, verbose=0)
            kernel = model.get_layer("hidden").kernel.numpy()
            found[name] = {
                "type": type(model).__module__.split(".")[0],
                "zeros_after_fine_tuning": float(np.mean(kernel == 0)),
                "units_after_structured": int(smaller.get_layer("hidden").units),
                "same_library": type(smaller).__module__.split(".")[0] == type(model).__module__.split(".")[0],
            }
        found["tf_keras_is_keras_3"] = tf.keras.layers.Dense is keras.layers.Dense
        print(json.dumps(found))
        """
    )
    assert found["tf_keras_is_keras_3"], "the host's tf.keras stayed TensorFlow's default (Keras 3)"
    assert found["tf_keras"]["type"] == "tf_keras" and found["keras3"]["type"] == "keras"
    for name in ("tf_keras", "keras3"):
        assert found[name]["zeros_after_fine_tuning"] >= 0.5, (name, found[name])
        assert found[name]["units_after_structured"] == 16, (name, found[name])
        assert found[name]["same_library"], (name, found[name])
