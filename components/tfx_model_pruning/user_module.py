"""A user's module of extensions, loaded once per process wherever a component runs.

The components take TFX's pair of settings: ``module_file`` (a ``.py`` file, which TFX packages
into a wheel under the pipeline root when the pipeline is run or compiled, replacing the
setting by ``module_path = "<module>@<wheel>"``), or ``module_path`` (a module importable in
the image). Executors call ``load_user_module`` before reading their config, the gate's Beam
workers in their ``setup``, so ``register_criterion`` and ``register_layer_handler`` calls in
the module reach every process that prunes, fine-tunes or evaluates, on any runner.

Example (a user's ``extensions.py``)::

    from tfx_model_pruning.engine.importance import register_criterion
    register_criterion("keep_first", KeepFirst())
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import threading
from types import ModuleType
from typing import Any, Mapping, Optional

from tfx.components.util import udf_utils
from tfx.dsl.components.base import base_component
from tfx.dsl.io import fileio
from tfx.utils import io_utils

from tfx_model_pruning import standard_component_specs as specs
from tfx_model_pruning.engine.saved_model import trust_classes_registered_by

_loaded: dict[str, ModuleType] = {}
_lock = threading.Lock()


class UserModuleError(ImportError):
    """The user's module could not be found or imported."""


def load_user_module(module_file: Optional[str] = None, module_path: Optional[str] = None) -> Optional[ModuleType]:
    """Imports the module once per process (a second import would register a second copy of its
    classes, which the models already loaded would not be instances of); None when neither is set."""
    key = module_path or module_file
    if not key:
        return None
    with _lock:
        if key not in _loaded:
            module = _import_path(module_path) if module_path else _import_file(module_file)
            trust_classes_registered_by(module.__name__)
            _loaded[key] = module
        return _loaded[key]


def load_from(exec_properties: Mapping[str, Any]) -> Optional[ModuleType]:
    """``load_user_module`` with the component's execution properties."""
    return load_user_module(exec_properties.get(specs.MODULE_FILE_KEY), exec_properties.get(specs.MODULE_PATH_KEY))


def _import_path(module_path: str) -> ModuleType:
    name, wheels = udf_utils.decode_user_module_key(module_path)
    try:
        if not wheels:
            return importlib.import_module(name)
        # The wheel TFX built from a module_file: installed aside, imported, and kept on the path,
        # as a Beam worker or a later import from the module may need it.
        with udf_utils.TempPipInstallContext([io_utils.ensure_local(wheel) for wheel in wheels]) as installed:
            module = importlib.import_module(name)
            sys.path.append(installed.temp_directory)
            return module
    except ImportError as err:
        raise UserModuleError(f"cannot import the user module {module_path!r}: {err}") from err


def _import_file(module_file: str) -> ModuleType:
    if "://" not in module_file and not os.path.isfile(module_file):
        raise FileNotFoundError(f"module_file {module_file!r} does not exist")
    local = io_utils.ensure_local(module_file)
    name = "user_extensions_" + os.path.splitext(os.path.basename(local))[0]
    spec = importlib.util.spec_from_file_location(name, local)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # pickling and Keras registration look the module up by name
    spec.loader.exec_module(module)
    return module


def attach(component: base_component.BaseComponent, module_file: Optional[str], module_path: Optional[str]) -> None:
    """Has TFX package a ``module_file`` with the pipeline, as it does the Trainer's (the component
    has loaded the module already, with ``load_user_module``, so the names it registers validated)."""
    if module_file and module_path:
        raise ValueError("give module_file or module_path, not both")
    if module_file and "://" not in module_file and not fileio.exists(module_file):
        raise FileNotFoundError(f"module_file {module_file!r} does not exist")
    if module_file:
        udf_utils.add_user_module_dependency(component, specs.MODULE_FILE_KEY, specs.MODULE_PATH_KEY)
