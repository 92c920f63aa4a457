"""Keras 3 native ``.keras`` files, scanned for code before anything in them is revived.

A ``.keras`` file is a zip of ``config.json`` (the model's classes and their settings),
``metadata.json`` and ``model.weights.h5``. Reviving the config runs code the file chooses: a
``Lambda`` layer's marshalled bytecode, or any class or function registered with Keras in this
process that the config names. Keras's own ``safe_mode`` only stops the first. So the config is
read as plain JSON and every class and function it names is checked against Keras 3's built-in
namespaces before Keras sees the file; the bytes that were checked are the bytes that are loaded.

    model = load_keras_file(find_keras_file("gs://bucket/model") or "model.keras")
"""

from __future__ import annotations

import binascii
import importlib
import io
import json
import os
import re
import sys
import tempfile
import zipfile
from types import ModuleType
from typing import Any, Optional

import keras
import tensorflow as tf
from keras.src.saving.keras_saveable import KerasSaveable

# Not from saved_model, which imports this module to read .keras files.
from tfx_model_pruning.engine.load_errors import ModelLoadError, UnsafeModelError
from tfx_model_pruning.engine.restored import require_tensorflow_backend

KERAS_FILE_SUFFIX = ".keras"
CONFIG_MEMBER = "config.json"
# A config holds settings, not weights; anything near this size is not a model worth reading.
MAX_CONFIG_BYTES = 256 * 1024 * 1024

# Namespaces whose classes a config may name by ``module`` and ``class_name``: Keras writes a
# public class under the first name it is exported as (``keras.layers``, ``keras`` for
# DTypePolicy and Sequential, ...).
_CLASS_NAMESPACES = frozenset(
    {
        "keras",
        "keras.layers",
        "keras.models",
        "keras.losses",
        "keras.metrics",
        "keras.optimizers",
        "keras.optimizers.schedules",
        "keras.initializers",
        "keras.regularizers",
        "keras.constraints",
        "keras.activations",
        "keras.saving",
        "keras.dtype_policies",
        "keras.mixed_precision",
        "keras.quantizers",
        "keras.random",
    }
)
# Keras's own classes without a public name are recorded by their source module under
# ``keras.src``: the model class of every functional model (``keras.src.models.functional``),
# the operations a functional graph records for keras.ops calls (``x + y`` is
# ``keras.src.ops.numpy.Add``), layers private to an application (ConvNeXt's LayerScale).
_KERAS_INTERNAL_PREFIX = "keras.src."
# Namespaces whose functions a config may name (an activation, a loss or metric function).
# Keras writes a built-in function either by its public module or as module "builtins" with the
# bare name, which Keras looks up in these (serialization_lib.BUILTIN_MODULES).
_FUNCTION_NAMESPACES = frozenset(
    {
        "keras.activations",
        "keras.losses",
        "keras.metrics",
        "keras.initializers",
        "keras.regularizers",
        "keras.constraints",
        "keras.ops",
        "keras.ops.nn",
        "keras.ops.numpy",
        "keras.ops.image",
        "keras.ops.linalg",
    }
)
_BUILTIN_FUNCTION_NAMESPACES = tuple(
    f"keras.{name}"
    for name in ("activations", "constraints", "initializers", "losses", "metrics", "optimizers", "regularizers")
)
# How Keras 3 encodes plain data (tensors, arrays, bytes, slices, symbolic inputs): revived
# without looking anything up.
_DATA_ENCODINGS = frozenset({"__keras_tensor__", "__tensor__", "__numpy__", "__bytes__", "__ellipsis__", "__slice__"})
# Built-in layers whose revival runs or loads code that is not Keras's own.
_CODE_RUNNING_LAYERS = {
    "Lambda": "Lambda layer: runs a Python function that came with the model",
    "TorchModuleWrapper": "TorchModuleWrapper: unpickles a PyTorch module with torch.load",
    "TFSMLayer": "TFSMLayer: loads a SavedModel from a path outside the .keras file",
    "JaxLayer": "JaxLayer: calls the JAX functions its config names",
    "FlaxLayer": "FlaxLayer: calls the Flax module its config names",
}
# marshal.dumps(code) starts with TYPE_CODE ('c'), with or without FLAG_REF (0x80).
_MARSHALLED_CODE_MARKERS = (0x63, 0xE3)
_BASE64_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\n")
# Keys naming what a node is: judged as a whole, not as loose strings.
_NODE_KEYS = frozenset({"module", "class_name", "registered_name", "spec_name"})
# How ``register_keras_serializable`` names what it registers: "Package>Name".
_REGISTERED_NAME = re.compile(r"[\w.\-]+>[\w.\-]+")
# Keys whose values are a node's own parts rather than a named setting of it.
_STRUCTURAL_KEYS = frozenset({"config", "layers", "layer"})


def find_keras_file(directory: str) -> Optional[str]:
    """The one ``.keras`` file directly in ``directory``, or None (also for a missing directory).

    Two or more are refused rather than one picked: which model gets pruned must not depend
    on a directory listing's order.
    """
    if not tf.io.gfile.isdir(directory):
        return None
    found = sorted(
        os.path.join(directory, name.rstrip("/"))
        for name in tf.io.gfile.listdir(directory)
        if name.rstrip("/").endswith(KERAS_FILE_SUFFIX)
    )
    found = [path for path in found if not tf.io.gfile.isdir(path)]
    if len(found) > 1:
        listed = ", ".join(repr(path) for path in found)
        raise ModelLoadError(
            f"{directory!r} holds {len(found)} {KERAS_FILE_SUFFIX} files: {listed}; keep one, the model to load"
        )
    return found[0] if found else None


def unsafe_keras_file_entries(path: str) -> list[str]:
    """Everything in a ``.keras`` file's ``config.json`` whose revival would run or import code.

    Only ``config.json`` is read, as JSON: no weights, no Keras deserialization, nothing
    unmarshalled. Each finding names the node's path in the model (``outer/inner/layer``).

    Raises:
      ModelLoadError: the file is missing, not a zip, or has no readable ``config.json``.
    """
    return _findings(_read_config(_read_bytes(path), path))


def require_safe_keras_file(path: str) -> None:
    """Raises UnsafeModelError naming every finding, before any of the file is revived."""
    _require_safe(_read_bytes(path), path)


def load_keras_file(path: str, allow_unsafe_layers: bool = False) -> keras.Model:
    """Loads a ``.keras`` model (compiled) once its config has been found free of code.

    The file is read once and the checked bytes are what Keras loads, from a local copy, so a
    file replaced between the check and the load is never revived (and gs:// paths work).

    Raises:
      UnsafeModelError: the file names code to run and ``allow_unsafe_layers`` is False.
      ModelLoadError: the file is missing or corrupt, or Keras cannot revive it.
      KerasBackendError: Keras 3 runs on a backend other than TensorFlow.
    """
    if keras.backend.backend() != "tensorflow":
        require_tensorflow_backend()
    data = _read_bytes(path)
    if not allow_unsafe_layers:
        _require_safe(data, path)
    with tempfile.TemporaryDirectory() as local_dir:
        local_path = os.path.join(local_dir, "model" + KERAS_FILE_SUFFIX)
        with open(local_path, "wb") as f:
            f.write(data)
        try:
            model = keras.saving.load_model(local_path, compile=True, safe_mode=not allow_unsafe_layers)
        except Exception as err:  # a corrupt config or weights file surfaces as many error types
            raise ModelLoadError(f"could not load the Keras file {path!r}: {err}") from err
    if not isinstance(model, keras.Model):
        raise ModelLoadError(f"{path!r} holds a {type(model).__name__}, not a Keras model")
    return model


def _require_safe(data: bytes, path: str) -> None:
    unsafe = _findings(_read_config(data, path))
    if unsafe:
        raise UnsafeModelError(
            f"{path!r} contains layers whose loading runs code shipped with the model: "
            f"{', '.join(unsafe)}. Refused; set allow_unsafe_layers=True only for models you trust."
        )


def _read_bytes(path: str) -> bytes:
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    except tf.errors.NotFoundError as err:
        raise ModelLoadError(f"Keras file {path!r} does not exist") from err
    except (tf.errors.OpError, OSError) as err:
        raise ModelLoadError(f"could not read the Keras file {path!r}: {err}") from err


def _read_config(data: bytes, path: str) -> dict:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            info = archive.getinfo(CONFIG_MEMBER)
            if info.file_size > MAX_CONFIG_BYTES:
                raise ModelLoadError(
                    f"{path!r}: its {CONFIG_MEMBER} declares {info.file_size} bytes, over {MAX_CONFIG_BYTES}"
                )
            with archive.open(info) as member:
                text = member.read(MAX_CONFIG_BYTES + 1)
    except ModelLoadError:
        raise
    except KeyError as err:
        raise ModelLoadError(f"{path!r} is not a Keras 3 model file: it has no {CONFIG_MEMBER}") from err
    except Exception as err:  # BadZipFile, CRC and decompression errors, encrypted members, ...
        raise ModelLoadError(f"{path!r} is not a readable {KERAS_FILE_SUFFIX} (zip) file: {err}") from err
    if len(text) > MAX_CONFIG_BYTES:
        raise ModelLoadError(f"{path!r}: its {CONFIG_MEMBER} is over {MAX_CONFIG_BYTES} bytes")
    try:
        config = json.loads(text)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ModelLoadError(f"{path!r}: its {CONFIG_MEMBER} is not valid JSON: {err}") from err
    if not isinstance(config, dict) or not isinstance(config.get("class_name"), str):
        raise ModelLoadError(f"{path!r}: its {CONFIG_MEMBER} does not describe a Keras object")
    return config


def _findings(config: dict) -> list[str]:
    # Walked with an explicit stack: a deeply nested config must not end in a RecursionError.
    found: list[str] = []
    registered = frozenset(keras.saving.get_custom_objects())
    stack: list[tuple[Any, str]] = [(config, "")]
    while stack:
        value, where = stack.pop()
        children: list[tuple[Any, str]] = []
        if isinstance(value, dict):
            here = _located(value, where)
            reason = _unsafe_reason(value) if isinstance(value.get("class_name"), str) else None
            if reason is not None:
                found.append(f"{here}: {reason}")
            for key, item in value.items():
                if key not in _judged_keys(value):
                    children.append((item, here if key in _STRUCTURAL_KEYS else f"{here}.{key}"))
        elif isinstance(value, list):
            children = [(item, where) for item in value]
        elif isinstance(value, str):
            if looks_like_marshalled_code(value):
                found.append(f"{where or 'model'}: marshalled Python bytecode")
            elif _names_registered_object(value, registered):
                # A plain string setting (activation="...", loss="...") is looked up among
                # registered objects before Keras's own names.
                found.append(f"{where or 'model'}: names the registered object {value!r}, not a Keras built-in")
        stack.extend(reversed(children))
    return list(dict.fromkeys(found))


def _judged_keys(value: dict) -> frozenset[str]:
    """Keys of a node that ``_unsafe_reason`` has judged already, so are not walked again."""
    class_name = value.get("class_name")
    if not isinstance(class_name, str):
        return frozenset()
    if class_name == "__lambda__":  # its bytecode is the finding already made
        return frozenset(value)
    if class_name == "function":  # its config is the function's name
        return _NODE_KEYS | {"config"}
    return _NODE_KEYS


def _names_registered_object(text: str, registered: frozenset[str]) -> bool:
    return text in registered or _REGISTERED_NAME.fullmatch(text) is not None


def _located(value: dict, where: str) -> str:
    """The path of a class node: its parent's path and its own name, as Keras names layers."""
    if not isinstance(value.get("class_name"), str):
        return where
    config = value.get("config")
    name = value.get("name") or (config.get("name") if isinstance(config, dict) else None)
    if not isinstance(name, str) or not name:
        return where or "model"
    return f"{where}/{name}" if where else name


def _unsafe_reason(value: dict) -> Optional[str]:
    """Why reviving this class node would run code that is not Keras's own, or None."""
    class_name = value["class_name"]
    module = value.get("module")
    registered_name = value.get("registered_name", class_name)
    if class_name in _DATA_ENCODINGS:
        return None
    if class_name == "__lambda__":
        return "marshalled Python lambda (__lambda__)"
    if class_name == "__typespec__":
        spec = value.get("spec_name")
        if registered_name is None and isinstance(module, str) and _in_package(module, ("keras", "tensorflow")):
            return None
        return (
            f"type spec {spec!r} (module {module!r}, registered as {registered_name!r}) is not Keras's or TensorFlow's"
        )
    if class_name == "function":
        return _unsafe_function_reason(value.get("config"), module, registered_name)
    if not _is_keras_class(module, class_name):
        details = [f"registered as {registered_name!r}"] if registered_name not in (None, class_name) else []
        details.append(f"module {module!r}" if isinstance(module, str) else "no module")
        return f"class {class_name!r} ({', '.join(details)}) is not a Keras built-in"
    if registered_name not in (None, class_name):
        # Keras looks a class up by its registered name first, whatever class_name says.
        return f"{class_name!r} carries registered_name {registered_name!r}: Keras would revive that registered class"
    if class_name in _CODE_RUNNING_LAYERS:
        return _CODE_RUNNING_LAYERS[class_name]
    return None


def _unsafe_function_reason(name: Any, module: Any, registered_name: Any) -> Optional[str]:
    if not isinstance(name, str):
        return f"function config {name!r} is not a Keras function name"
    # Keras revives a function by looking its name up among registered objects before its module.
    if registered_name in (None, "function", name) and ">" not in name:
        if module == "builtins":
            namespaces: tuple[str, ...] = _BUILTIN_FUNCTION_NAMESPACES
        elif module in _FUNCTION_NAMESPACES:
            namespaces = (module,)
        else:
            namespaces = ()
        if any(callable(_member(namespace, name)) for namespace in namespaces):
            return None
    return f"Python function {name!r} (module {module!r}, registered as {registered_name!r}) is not a Keras built-in"


def _is_keras_class(module: Any, class_name: str) -> bool:
    if not isinstance(module, str) or class_name.startswith("_"):
        return False
    if module in _CLASS_NAMESPACES:
        found = _member(module, class_name)
        return isinstance(found, type) and hasattr(found, "from_config")
    if module.startswith(_KERAS_INTERNAL_PREFIX):
        # Keras imports such a module and takes a KerasSaveable class defined in it. Only modules
        # that importing Keras already imported are looked at: the file gets nothing imported.
        loaded = sys.modules.get(module)
        found = vars(loaded).get(class_name) if loaded is not None else None
        return isinstance(found, type) and issubclass(found, KerasSaveable) and found.__module__ == module
    return False


def _member(namespace: str, name: str) -> Any:
    """A name defined in one of Keras's own modules; ``vars`` so no module ``__getattr__`` runs."""
    module = _keras_module(namespace)
    return vars(module).get(name) if module is not None else None


def _keras_module(namespace: str) -> Optional[ModuleType]:
    # Only the fixed namespaces above are ever imported, never a module a config names.
    try:
        return importlib.import_module(namespace)
    except ImportError:
        return None


def looks_like_marshalled_code(text: str) -> bool:
    """True for base64 text that decodes to a marshalled code object (how Keras stores a lambda)."""
    if len(text) < 24 or not set(text) <= _BASE64_CHARACTERS:
        return False
    try:
        raw = binascii.a2b_base64(text)
    except binascii.Error:
        return False
    return bool(raw) and raw[0] in _MARSHALLED_CODE_MARKERS


def _in_package(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == package or module.startswith(package + ".") for package in packages)
