"""Loading and saving SavedModels without losing their serving signatures or assets.

A tf-keras SavedModel reloaded with ``tf_keras.models.load_model`` exposes its original
signatures as concrete functions that capture the *reloaded model's own variables*. So the
model can be pruned or fine-tuned in place and saved again with the very same signatures
(including any preprocessing they do), which is what the stock Pusher, TFMA and TF Serving
expect. A SavedModel written by ``tf.saved_model.save`` (no Keras metadata, as TFX's examples
write them) is reloaded with ``tf.saved_model.load`` and behaves the same way for everything
that does not need the layer graph (``tfx_model_pruning.engine.restored``). Pruning masks travel
inside the SavedModel under ``assets.extra/`` (a directory TF Serving ignores), so a later
fine-tuning step knows which zeros to keep; other ``assets.extra`` files (warm-up requests)
are carried over.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import io
import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Optional

import keras as keras3
import numpy as np
import tensorflow as tf
import tf_keras as keras
from tensorflow.python.saved_model import loader_impl

from tfx_model_pruning.engine.graph import KERAS_3, generation_of
from tfx_model_pruning.engine.graph_scan import GraphScan, scan_model_dir
from tfx_model_pruning.engine.keras_file import (
    KERAS_FILE_SUFFIX,
    find_keras_file,
    load_keras_file,
    looks_like_marshalled_code,
)
from tfx_model_pruning.engine.load_errors import ModelLoadError, UnsafeModelError
from tfx_model_pruning.engine.restored import (
    is_restored,
    model_variables,
    require_tensorflow_backend,
    trainable_variables,
)

MASKS_RELATIVE_PATH = os.path.join("assets.extra", "pruning_masks.npz")
# A Keras 3 optimizer's step count: a ``.keras`` file keeps it only with the optimizer's slots,
# which are not saved (they would triple the file), and a learning-rate schedule reads from it.
OPTIMIZER_STEP_RELATIVE_PATH = os.path.join("assets.extra", "optimizer_step.json")
_OWN_EXTRA_ASSETS = (MASKS_RELATIVE_PATH, OPTIMIZER_STEP_RELATIVE_PATH)


class NonFiniteWeightsError(ValueError):
    """A model holds NaN or infinite weights: whatever it predicts cannot be trusted."""


class SignatureMismatchError(RuntimeError):
    """A saved model's serving signatures differ from the model it was derived from."""


@dataclass
class LoadedModel:
    """A reloaded model, its original serving signatures and any pruning masks.

    ``model`` is a ``keras.Model`` (tf-keras, or Keras 3 read from a ``.keras`` file), or for a
    SavedModel written by ``tf.saved_model.save`` or Keras 3's ``model.export`` the object
    ``tf.saved_model.load`` restores (``is_keras`` is False). ``keras_file`` names the ``.keras``
    file the model was read from; ``serving`` is the SavedModel restored beside it, whose
    signatures are kept (``signatures`` are its).
    """

    model: Any
    path: str
    signatures: Mapping[str, tf.types.experimental.ConcreteFunction]
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    keras_file: Optional[str] = None
    serving: Any = None
    scan: Optional[GraphScan] = None  # what the graph scan found before the model was loaded

    def save(self, model: Any, model_dir: str, masks: Optional[Mapping[str, np.ndarray]] = None, signatures=None):
        """Saves ``model`` (this one, changed, or one rebuilt from it) into ``model_dir`` in this model's
        form: the same ``.keras`` file name and SavedModel beside it, every signature kept, the
        ``assets.extra`` files carried over. ``signatures`` replace this model's (a rebuilt model's)."""
        save_model(
            model,
            model_dir,
            self.signatures if signatures is None else signatures,
            masks,
            extra_assets_from=self.path,
            keras_file=self.keras_file,
            serving=self.serving if signatures is None else None,
        )

    @property
    def is_keras(self) -> bool:
        return not is_restored(self.model)


def resolve_saved_model_dir(path: str) -> str:
    """Returns the model directory for a TFX Model artifact URI or a plain model path: the one holding
    a SavedModel (``saved_model.pb``) or a Keras 3 ``.keras`` file, or both.

    Raises:
      ModelLoadError: neither is there, or the directory holds two ``.keras`` files.
    """
    for candidate in (os.path.join(path, "Format-Serving"), path):
        if tf.io.gfile.exists(os.path.join(candidate, "saved_model.pb")) or (
            tf.io.gfile.isdir(candidate) and find_keras_file(candidate)
        ):
            return candidate
    if not tf.io.gfile.exists(path):
        raise ModelLoadError(f"model directory {path!r} does not exist")
    raise ModelLoadError(
        f"no saved_model.pb and no {KERAS_FILE_SUFFIX} file in {path!r} or {os.path.join(path, 'Format-Serving')!r}: "
        "not a SavedModel or Keras model"
    )


# Class names the tf-keras serializer writes for plain data (shapes, tuples, bytes, type specs),
# and built-in model classes. TFOpLambda names a TensorFlow API function; Lambda carries
# marshalled Python bytecode.
_SAFE_EXTRA_CLASSES = {
    "Functional",
    "Sequential",
    "Model",
    "TFOpLambda",
    "SlicingOpLambda",
    "TensorShape",
    "TypeSpec",
    "CompositeTensor",
    "__tuple__",
    "__ellipsis__",
    "__bytes__",
    # A built-in function by name (e.g. a loss); a user's function also names its module.
    "function",
}
_KERAS_NAMESPACES = (
    keras.layers,
    keras.models,
    keras.metrics,
    keras.losses,
    keras.optimizers,
    keras.optimizers.schedules,
    keras.initializers,
    keras.regularizers,
    keras.constraints,
    keras.mixed_precision,
)
# A config naming a module makes Keras import it; only Keras's and TensorFlow's own are data.
_TRUSTED_MODULE_PREFIXES = ("keras", "tf_keras", "tensorflow", "builtins")
# Installed packages whose Keras-registered classes a model may name: their code is what is
# installed here, none of it travels with the model. tf.Transform's TransformFeaturesLayer is
# how TFX models carry their preprocessing.
TRUSTED_LAYER_PACKAGES = ("tensorflow_transform",)
# marshal.dumps(code) starts with TYPE_CODE ('c'), with or without FLAG_REF (0x80).


# Modules the pipeline's owner gave the components (module_file / module_path): the Keras classes
# they register are code the pipeline brought, not code that came with the model.
_USER_MODULES: set[str] = set()


def trust_classes_registered_by(module_name: str) -> None:
    """Lets models name the Keras classes that module ``module_name`` (already imported) registers."""
    _USER_MODULES.add(module_name)


def _user_registered_classes() -> set[str]:
    names = set()
    for registered_name, registered in keras.utils.get_custom_objects().items():
        if isinstance(registered, type) and getattr(registered, "__module__", None) in _USER_MODULES:
            names.update((registered_name, registered.__name__))
    return names


def _is_keras_class(class_name: str) -> bool:
    # tf-keras registers its own optimizers under the default package: "Custom>Adam".
    class_name = class_name.removeprefix("Custom>")
    return (
        class_name in _SAFE_EXTRA_CLASSES
        or any(isinstance(getattr(namespace, class_name, None), type) for namespace in _KERAS_NAMESPACES)
        or class_name in trusted_registered_classes()
        or class_name in _user_registered_classes()
    )


@functools.cache
def trusted_registered_classes() -> frozenset[str]:
    """Names (``Package>Class`` and bare ``Class``) of Keras classes registered by trusted packages."""
    for package in TRUSTED_LAYER_PACKAGES:
        try:
            importlib.import_module(package)  # registering its classes is a side effect of the import
        except ImportError:
            continue
    names = set()
    for registered_name, registered in keras.utils.get_custom_objects().items():
        module = getattr(registered, "__module__", "") or ""
        if isinstance(registered, type) and module.split(".")[0] in TRUSTED_LAYER_PACKAGES:
            names.update((registered_name, registered.__name__))
    return frozenset(names)


def _unsafe_in_config(value: Any, where: str) -> Iterator[str]:
    """Everything in a (nested) Keras config whose revival would run or import code."""
    if isinstance(value, dict):
        config = value.get("config")
        name = value.get("name") or (config.get("name") if isinstance(config, dict) else None)
        here = f"{where}/{name}" if isinstance(name, str) and name else where
        class_name = value.get("class_name")
        if isinstance(class_name, str) and (class_name == "Lambda" or not _is_keras_class(class_name)):
            yield f"{here} ({class_name})"
        module = value.get("module")
        if isinstance(module, str) and module and not module.startswith(_TRUSTED_MODULE_PREFIXES):
            yield f"{here} (imports module {module!r})"
        if "function_type" in value:
            yield f"{here} (Python function of type {value['function_type']!r})"
        for key, item in value.items():
            yield from _unsafe_in_config(item, here if key in ("config", "layer", "layers") else f"{here}.{key}")
    elif isinstance(value, list):
        for item in value:
            yield from _unsafe_in_config(item, where)
    elif isinstance(value, str) and looks_like_marshalled_code(value):
        yield f"{where} (marshalled Python bytecode)"


def unsafe_layers(model_dir: str) -> list[str]:
    """Everything in a SavedModel's Keras metadata whose revival runs code shipped with the model.

    Every node and every nested config is read (wrappers such as ``TimeDistributed``, nested
    models, ``layer``/``layers`` keys): ``Lambda`` layers, classes tf-keras does not know,
    configs that name a module to import, Python functions, and marshalled bytecode wherever it
    appears, whatever the node or class is called. Nothing is revived or unmarshalled here.
    """
    from tf_keras.protobuf import saved_metadata_pb2

    metadata = saved_metadata_pb2.SavedMetadata()
    with tf.io.gfile.GFile(os.path.join(model_dir, "keras_metadata.pb"), "rb") as f:
        metadata.ParseFromString(f.read())
    found: list[str] = []
    for node in metadata.nodes:
        details = json.loads(node.metadata or "{}")
        for finding in _unsafe_in_config(details, node.node_path or "root"):
            if finding not in found:
                found.append(finding)
    return found


def load_model(path: str, allow_unsafe_layers: bool = False, allow_ops: Iterable[str] = ()) -> LoadedModel:
    """Loads a SavedModel (artifact URI or SavedModel dir) with its signatures and masks, once its
    graphs and files have been scanned (``graph_scan``): nothing of the model runs before that.

    A model whose graphs hold ops that act on the machine (file I/O, Python callbacks, network,
    ...; ``graph_scan.REFUSED_OPS``) is refused unless each such op is named in ``allow_ops``; a
    link or an asset name leading out of the model directory is always refused. A tf-keras
    SavedModel is loaded as a Keras model. A model containing ``Lambda`` layers or custom classes
    is refused unless ``allow_unsafe_layers``: reviving them runs code that came with the model
    (classes registered by ``TRUSTED_LAYER_PACKAGES`` are installed code, not the model's). A
    SavedModel without Keras metadata (``tf.saved_model.save``) is restored with
    ``tf.saved_model.load``, which runs no Python from the model.

    Example::

        loaded = load_model("gs://bucket/model", allow_ops=["PrintV2"])
        loaded.scan.ops  # the op census the scan took

    Raises:
      ModelLoadError: the directory is missing or corrupt, or has neither Keras metadata nor
        trainable variables.
      UnsafeGraphError: the graphs hold refused ops, or files reach outside the directory.
      UnsafeModelError: the model holds Lambda or custom layers and they are not allowed.
    """
    model_dir = resolve_saved_model_dir(path)
    scan = scan_model_dir(model_dir, allow_ops)
    scan.require_safe()
    return dataclasses.replace(_load_scanned(model_dir, allow_unsafe_layers), scan=scan)


def _load_scanned(model_dir: str, allow_unsafe_layers: bool) -> LoadedModel:
    keras_file = find_keras_file(model_dir)
    if keras_file is not None:
        return _load_keras_file(model_dir, keras_file, allow_unsafe_layers)
    if not tf.io.gfile.exists(os.path.join(model_dir, "keras_metadata.pb")):
        return _load_restored(model_dir)
    if not allow_unsafe_layers:
        try:
            unsafe = unsafe_layers(model_dir)
        except Exception as err:  # an unreadable metadata file is a corrupt model
            raise ModelLoadError(f"could not load {model_dir!r}: its Keras metadata is unreadable: {err}") from err
        if unsafe:
            raise UnsafeModelError(
                f"{model_dir!r} contains layers whose loading runs code shipped with the model: "
                f"{', '.join(unsafe)}. Refused; set allow_unsafe_layers=True only for models you trust."
            )
    try:
        model = keras.models.load_model(model_dir, compile=True)
    except Exception as err:  # corrupt protobufs and variables surface as many error types
        raise ModelLoadError(f"could not load the Keras SavedModel in {model_dir!r}: {err}") from err
    if not isinstance(model, keras.Model):
        raise ModelLoadError(f"{model_dir!r} holds a {type(model).__name__}, not a Keras model")
    _restore_optimizer_step(model, model_dir)
    signatures = dict(getattr(model, "signatures", {}) or {})
    return LoadedModel(model=model, path=model_dir, signatures=signatures, masks=load_masks(model_dir))


# The step counter of tf-keras's optimizer, and of its legacy optimizer, in a SavedModel's checkpoint.
_OPTIMIZER_STEP_KEYS = ("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE", "optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE")


def _step_count(step_variable: Any) -> int:
    """An optimizer's step count: ``int()`` of a variable fails for a MirroredVariable."""
    return int(np.asarray(step_variable.numpy()))


def _restore_optimizer_step(model: Any, model_dir: str) -> None:
    """Sets the optimizer's step count from the checkpoint: tf-keras restores a SavedModel's
    optimizer at step 0 (a ``.keras`` or HDF5 file keeps it), so a learning-rate schedule would
    read as at its start, not where training ended."""
    iterations = getattr(getattr(model, "optimizer", None), "iterations", None)
    if iterations is None or _step_count(iterations) != 0:
        return
    try:
        reader = tf.train.load_checkpoint(os.path.join(model_dir, "variables", "variables"))
    except (tf.errors.OpError, ValueError):
        return
    for key in _OPTIMIZER_STEP_KEYS:
        if reader.has_tensor(key):
            iterations.assign(int(reader.get_tensor(key)))
            return


def _restore_keras_3_optimizer_step(model: Any, model_dir: str) -> None:
    """Sets a Keras 3 optimizer's step count from the file ``save_model`` wrote beside the model."""
    iterations = getattr(getattr(model, "optimizer", None), "iterations", None)
    step_path = os.path.join(model_dir, OPTIMIZER_STEP_RELATIVE_PATH)
    if iterations is None or _step_count(iterations) != 0 or not tf.io.gfile.exists(step_path):
        return
    try:
        with tf.io.gfile.GFile(step_path) as f:
            step = int(json.load(f)["iterations"])
    except (ValueError, KeyError, TypeError) as err:
        raise ModelLoadError(f"{step_path!r} is unreadable: {err}") from err
    iterations.assign(step)


def _load_keras_file(model_dir: str, keras_file: str, allow_unsafe_layers: bool) -> LoadedModel:
    """A Keras 3 model from its ``.keras`` file, and the SavedModel beside it if there is one."""
    model = load_keras_file(keras_file, allow_unsafe_layers)
    _restore_keras_3_optimizer_step(model, model_dir)
    serving, signatures = None, {}
    if tf.io.gfile.exists(os.path.join(model_dir, "saved_model.pb")):
        serving = _load_restored(model_dir).model
        signatures = dict(getattr(serving, "signatures", {}) or {})
    return LoadedModel(
        model=model,
        path=model_dir,
        signatures=signatures,
        masks=load_masks(model_dir),
        keras_file=os.path.basename(keras_file),
        serving=serving,
    )


def holds_keras_graph(model_dir: str) -> bool:
    """Whether a model directory holds a Keras model's layer graph (tf-keras metadata, or a
    ``.keras`` file), read from the files alone: what structured pruning and its kin need."""
    return tf.io.gfile.exists(os.path.join(model_dir, "keras_metadata.pb")) or find_keras_file(model_dir) is not None


def with_serving_export(loaded: LoadedModel, scratch_dir: str) -> LoadedModel:
    """``loaded`` itself when it has a SavedModel; for a Keras 3 ``.keras`` file alone, the model
    with Keras 3's own export of it written to ``scratch_dir`` (its ``serve``/``serving_default``
    signatures), for readers of SavedModels (the gate, TFMA)."""
    if loaded.serving is not None or loaded.keras_file is None:
        return loaded
    loaded.model.export(scratch_dir, verbose=False)
    serving = _load_restored(scratch_dir).model
    return dataclasses.replace(
        loaded, path=scratch_dir, signatures=dict(serving.signatures), serving=serving, keras_file=None
    )


def _load_restored(model_dir: str) -> LoadedModel:
    try:
        restored = tf.saved_model.load(model_dir)
    except Exception as err:  # corrupt protobufs and variables surface as many error types
        raise ModelLoadError(f"could not load the SavedModel in {model_dir!r}: {err}") from err
    if not trainable_variables(restored):
        raise ModelLoadError(
            f"{model_dir!r} has neither Keras metadata nor trainable variables: there is nothing to prune or fine-tune"
        )
    signatures = dict(getattr(restored, "signatures", {}) or {})
    return LoadedModel(model=restored, path=model_dir, signatures=signatures, masks=load_masks(model_dir))


def _copy_extra_assets(source_dir: str, model_dir: str) -> None:
    source_root = os.path.join(source_dir, "assets.extra")
    if not tf.io.gfile.isdir(source_root):
        return
    for root, _, files in tf.io.gfile.walk(source_root):
        for name in files:
            source = os.path.join(root, name)
            relative = os.path.relpath(source, source_dir)
            if os.path.normpath(relative) in {os.path.normpath(path) for path in _OWN_EXTRA_ASSETS}:
                continue
            target = os.path.join(model_dir, relative)
            tf.io.gfile.makedirs(os.path.dirname(target))
            tf.io.gfile.copy(source, target, overwrite=True)


def load_masks(model_dir: str) -> dict[str, np.ndarray]:
    mask_path = os.path.join(model_dir, MASKS_RELATIVE_PATH)
    if not tf.io.gfile.exists(mask_path):
        return {}
    with tf.io.gfile.GFile(mask_path, "rb") as f:
        with np.load(io.BytesIO(f.read())) as archive:
            return {key: archive[key].astype(bool) for key in archive.files}


def save_model(
    model: Any,
    model_dir: str,
    signatures: Optional[Mapping[str, tf.types.experimental.ConcreteFunction]] = None,
    masks: Optional[Mapping[str, np.ndarray]] = None,
    extra_assets_from: Optional[str] = None,
    keras_file: Optional[str] = None,
    serving: Any = None,
) -> None:
    """Saves ``model`` as a SavedModel with the given signatures and pruning masks.

    A Keras model is saved by tf-keras. Optimizer state is not saved: a served model does not
    need it and Adam's slots would triple the size of what gets pushed. The loss and metrics
    the model was compiled with are kept (with a fresh optimizer of the same kind), so a later
    fine-tuning step can reuse them. A restored model is saved by ``tf.saved_model.save``, as
    it was written. ``extra_assets_from`` names the SavedModel whose ``assets.extra`` files
    (other than masks) are copied over.

    A Keras 3 model is saved as ``keras_file`` (default ``model.keras``) with its compiled loss and
    metrics, and as a SavedModel beside it: ``serving`` (the SavedModel it was loaded beside) with
    the model's weights copied in, so every one of its signatures is kept as it was; else with
    ``signatures`` (rebuilt for a changed model); else Keras 3's own export, so that the gate,
    TFMA and TF Serving, which read SavedModels, can read it.
    """
    if generation_of(model) is KERAS_3:
        _save_keras_3(model, model_dir, signatures, keras_file, serving)
    elif is_restored(model):
        tf.saved_model.save(model, model_dir, signatures=dict(signatures) if signatures else None)
    else:
        require_tensorflow_backend(model)
        compiled = getattr(model, "optimizer", None) is not None and getattr(model, "loss", None) is not None
        # The caller's optimizer, with its state, is put back after the save: saving must not change the model.
        caller = (model.optimizer, model.loss, compiled_metrics(model)) if compiled else None
        copy_compile_settings(model, model)
        try:
            model.save(
                model_dir,
                save_format="tf",
                include_optimizer=True,
                signatures=dict(signatures) if signatures else None,
                save_traces=not _rebuilt_from_configs(model),
            )
        finally:
            if caller is not None:
                model.compile(optimizer=caller[0], loss=caller[1], metrics=caller[2])
    if extra_assets_from is not None:
        _copy_extra_assets(extra_assets_from, model_dir)
    if masks:
        mask_path = os.path.join(model_dir, MASKS_RELATIVE_PATH)
        tf.io.gfile.makedirs(os.path.dirname(mask_path))
        buffer = io.BytesIO()  # GFile cannot seek while writing, which zipfile needs
        np.savez_compressed(buffer, **{key: np.asarray(mask, dtype=bool) for key, mask in masks.items()})
        with tf.io.gfile.GFile(mask_path, "wb") as f:
            f.write(buffer.getvalue())


def _save_keras_3(model: Any, model_dir: str, signatures, keras_file: Optional[str], serving: Any) -> None:
    tf.io.gfile.makedirs(model_dir)
    compiled = getattr(model, "optimizer", None) is not None and getattr(model, "loss", None) is not None
    caller = (model.optimizer, model.loss, compiled_metrics(model)) if compiled else None
    copy_compile_settings(model, model)  # a fresh optimizer: its slots would triple the file
    try:
        model.save(os.path.join(model_dir, keras_file or "model" + KERAS_FILE_SUFFIX))
    finally:
        if caller is not None:
            model.compile(optimizer=caller[0], loss=caller[1], metrics=caller[2])
    if serving is not None:
        copy_weights_into(model, serving)
        tf.saved_model.save(serving, model_dir, signatures=dict(serving.signatures))
    elif signatures:
        tf.saved_model.save(model, model_dir, signatures=dict(signatures))
    else:
        model.export(model_dir, verbose=False)
    if caller is not None and _step_count(caller[0].iterations) > 0:
        step_path = os.path.join(model_dir, OPTIMIZER_STEP_RELATIVE_PATH)
        tf.io.gfile.makedirs(os.path.dirname(step_path))
        with tf.io.gfile.GFile(step_path, "w") as f:
            json.dump({"iterations": _step_count(caller[0].iterations)}, f)


class WeightMismatchError(ModelLoadError):
    """A Keras model's weights do not match the variables of the SavedModel saved beside it."""


def copy_weights_into(model: Any, serving: Any) -> None:
    """Copies a Keras 3 model's weights into the variables of the SavedModel restored beside its
    ``.keras`` file, matched by path (``dense/kernel``), so the SavedModel's signatures serve them.

    Raises:
      WeightMismatchError: a SavedModel variable has no weight of its path and shape in the model
        (the two files were not saved from one model), before anything is copied.
    """
    weights = {weight.path: weight for weight in model.weights}
    pairs, missing = [], []
    for variable in model_variables(serving):
        path = variable.name.split(":")[0]
        weight = weights.get(path)
        if weight is None or tuple(weight.shape) != tuple(variable.shape):
            if variable.trainable or path.endswith(("moving_mean", "moving_variance")):
                missing.append(f"{path} {tuple(variable.shape)}")
            continue
        pairs.append((variable, weight))
    if missing:
        raise WeightMismatchError(
            f"the SavedModel beside the .keras file has variables the Keras model has not (or of another shape): "
            f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}; save both from the same model"
        )
    for variable, weight in pairs:
        variable.assign(weight.numpy())


def _rebuilt_from_configs(model: keras.Model) -> bool:
    """Whether Keras can load ``model`` from its layers' configs alone, without saved traces.

    Keras otherwise traces and saves every layer's call function, which dominated the cost of
    saving a large model (and of loading it); the serving signatures are saved either way. A
    layer revived without a config (a tf.Transform layer attached for the signatures) needs them.
    """
    try:
        for layer in model._flatten_layers(include_self=True):
            # A layer Keras revived without its class (the class was not importable) would not
            # load again from a config.
            if type(layer).__module__ == _REVIVED_LAYERS_MODULE:
                return False
            layer.get_config()
    except NotImplementedError:
        return False
    return True


_REVIVED_LAYERS_MODULE = "tf_keras.src.saving.legacy.saved_model.load"


def compiled_metrics(model: keras.Model) -> list:
    """Fresh copies of the metrics ``model`` was compiled with (metric objects carry state)."""
    # Keras 3 keeps them on _compile_metrics (its compiled_metrics is a deprecated stand-in).
    containers = (getattr(model, "_compile_metrics", None), getattr(model, "compiled_metrics", None))
    user_metrics = next((c._user_metrics for c in containers if hasattr(c, "_user_metrics")), None)
    if not isinstance(user_metrics, (list, tuple, dict)):
        return []
    return _fresh_metrics(user_metrics)


def _fresh_metrics(metrics):
    if isinstance(metrics, (keras.metrics.Metric, keras3.metrics.Metric)):
        return type(metrics).from_config(metrics.get_config())
    if isinstance(metrics, (list, tuple)):
        return [_fresh_metrics(metric) for metric in metrics]
    if isinstance(metrics, dict):
        return {name: _fresh_metrics(metric) for name, metric in metrics.items()}
    return metrics


def copy_compile_settings(source: keras.Model, target: keras.Model) -> None:
    """Compiles ``target`` with ``source``'s loss and metrics and a fresh optimizer of its kind, at
    the step ``source``'s reached: its learning-rate schedule reads where training ended."""
    if getattr(source, "optimizer", None) is None or getattr(source, "loss", None) is None:
        return
    step = _step_count(source.optimizer.iterations)
    target.compile(
        optimizer=type(source.optimizer).from_config(source.optimizer.get_config()),
        loss=source.loss,
        metrics=compiled_metrics(source),
    )
    target.optimizer.iterations.assign(step)


def non_finite_weights(model: Any) -> dict[str, int]:
    """Weight name -> count of NaN or infinite values, for every weight that has any."""
    found = {}
    for variable in model_variables(model):
        values = variable.numpy()
        if np.issubdtype(values.dtype, np.floating):
            bad = int(values.size - np.count_nonzero(np.isfinite(values)))
            if bad:
                found[variable.name] = bad
    return found


def require_finite_weights(model: Any, what: str) -> None:
    """Raises NonFiniteWeightsError naming the weights that hold NaN or infinity."""
    found = non_finite_weights(model)
    if found:
        listed = ", ".join(f"{name} ({count})" for name, count in sorted(found.items()))
        raise NonFiniteWeightsError(f"{what} has NaN or infinite weights: {listed}")


def signature_specs(model_dir: str) -> dict[str, tuple[tuple, tuple]]:
    """Maps each signature name of a SavedModel to its canonical (inputs, outputs) spec.

    Read from the SavedModel's signature defs, what TF Serving reads, without loading the model
    (a load of a large model takes seconds). Inputs and outputs are compared by name, shape and
    dtype, never by the order of their keys.
    """
    meta_graph = loader_impl.parse_saved_model(model_dir).meta_graphs[0]
    return {
        name: (_tensor_infos(signature.inputs), _tensor_infos(signature.outputs))
        for name, signature in meta_graph.signature_def.items()
        if name != "__saved_model_init_op"
    }


def _tensor_infos(infos) -> tuple:
    canonical = []
    for key in sorted(infos):
        info = infos[key]
        if info.HasField("composite_tensor"):
            canonical.append((key, str(info.composite_tensor.type_spec)))
            continue
        dims = info.tensor_shape.dim
        shape = None if info.tensor_shape.unknown_rank else tuple(d.size if d.size >= 0 else None for d in dims)
        canonical.append((key, (shape, tf.dtypes.as_dtype(info.dtype).name)))
    return tuple(canonical)


def verify_signatures_preserved(original_dir: str, new_dir: str) -> None:
    """Raises SignatureMismatchError unless both SavedModels expose the same signatures."""
    if not tf.io.gfile.exists(os.path.join(original_dir, "saved_model.pb")):
        return  # a .keras file alone: no signatures to keep (the output adds Keras 3's own export)
    before, after = signature_specs(original_dir), signature_specs(new_dir)
    if before != after:
        missing = sorted(set(before) - set(after))
        changed = sorted(name for name in set(before) & set(after) if before[name] != after[name])
        details = "; ".join(f"{name}: {before[name]} -> {after[name]}" for name in changed)
        raise SignatureMismatchError(
            f"serving signatures changed from {original_dir!r} to {new_dir!r}: missing={missing} changed={changed}"
            + (f" ({details})" if details else "")
        )
