"""Pusher executor whose versions appear complete or not at all, never collide, and never go stale.

The stock executor copies files into ``<base>/<unix seconds>``: a reader can see a half-copied
version, and two runs in the same second end up claiming the same version. Here the model is
copied into a hidden staging directory beside the versions (TF Serving only loads numeric
directories) and renamed into place; ``rename`` is atomic on a POSIX filesystem and fails if the
version exists, in which case the next number is tried.

At push time, under a lock on the destination, it also:
- refuses a destination that resolves outside the configured push root (a symlink planted after
  the pipeline was built);
- refuses when the model serving now is not the one the gate compared against (a cached or
  slow verdict must not push a model over a better one that landed since);
- records the newest version as the push when it already holds this very model (a run killed
  right after its rename and resumed), instead of publishing a duplicate;
- removes staging directories that killed pushes left behind.
Blessing checks and the metadata the Pusher records are the stock executor's.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import filecmp
import json
import os
import shutil
import socket
import tempfile
import time
from typing import Any, Iterator, Mapping, Optional

from absl import logging
from tfx import types
from tfx.components.pusher import executor as pusher_executor
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, proto_utils

from tfx_model_pruning import standard_component_specs as specs
from tfx_model_pruning.engine import progress
from tfx_model_pruning.serving_versions import (
    INT8_TFLITE_FILE,
    INT8_TFLITE_PROPERTY,
    JUDGED_SERVING_VERSION_PROPERTY,
    SERVING_MODEL_DIR_PROPERTY,
    check_push_destination,
    latest_version_dir,
    numeric_versions,
)

STAGING_PREFIX = ".staging-"
# A staging directory of another host is only removed once no copy could still be running.
STALE_STAGING_SECONDS = 6 * 3600


class StaleVerdictError(RuntimeError):
    """The model serving now is not the one the gate judged the candidate against."""


def publish_version(
    model_dir: str,
    base_directory: str,
    push_root: Optional[str] = None,
    judged_serving_version: Optional[str] = None,
    extra_files: Optional[Mapping[str, str]] = None,
) -> tuple[str, str]:
    """Copies ``model_dir`` to a new numeric version under ``base_directory`` atomically.

    ``extra_files`` (name in the version -> file) go in beside it, in the same rename: the int8
    TFLite model the gate checked is in the version from its first moment, or not at all.

    Returns ``(version, path)``. The version is the current unix time in seconds, or the next
    free number after it; if the newest version already holds this model, that version.

    Args:
      push_root: refuse unless ``base_directory`` resolves, now, inside this root.
      judged_serving_version: the resolved path of the version the gate compared with (``""``:
        none was serving); refuse if another is the newest now. ``None`` skips the check.

    Raises:
      ValueError: the destination resolves outside ``push_root``.
      StaleVerdictError: the newest version is not the one the gate judged against.
    """
    check_push_destination(base_directory, push_root)
    base = os.path.realpath(base_directory)
    os.makedirs(base, exist_ok=True)
    with _exclusive_lock(base):
        _remove_stale_staging(base)
        existing = numeric_versions(base)
        if existing and _same_files(model_dir, os.path.join(base, str(existing[-1])), extra_files or {}):
            logging.info("Version %s already holds this model; recording it as the push", existing[-1])
            return str(existing[-1]), os.path.join(base, str(existing[-1]))
        if judged_serving_version is not None:
            serving_now = latest_version_dir(base)
            serving_now = os.path.realpath(serving_now) if serving_now else ""
            if serving_now != judged_serving_version:
                raise StaleVerdictError(
                    f"the gate judged this model against {judged_serving_version or 'no serving model'}, "
                    f"but {serving_now} is serving now; not pushed. Run the pipeline again so the gate "
                    "compares with the model serving now"
                )
        staging = tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{socket.gethostname()}-{os.getpid()}-", dir=base)
        try:
            shutil.copytree(model_dir, staging, dirs_exist_ok=True)
            for name, source in (extra_files or {}).items():
                shutil.copyfile(source, os.path.join(staging, name))
            version = max([int(time.time()), *(v + 1 for v in existing)])
            while True:
                target = os.path.join(base, str(version))
                try:
                    os.rename(staging, target)
                    return str(version), target
                except OSError as err:
                    if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
                    version += 1
        finally:
            if os.path.exists(staging):
                shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def _exclusive_lock(base: str) -> Iterator[None]:
    # A lock on the destination directory itself (no lock file beside the versions) serialises
    # pushers on this filesystem; the atomic rename still guards where locks are not shared.
    descriptor = os.open(base, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def _remove_stale_staging(base: str) -> None:
    host = socket.gethostname()
    for name in os.listdir(base):
        if not name.startswith(STAGING_PREFIX):
            continue
        path = os.path.join(base, name)
        # mkdtemp names it .staging-<host>-<pid>-<random>; its random part holds no "-".
        owner_host, pid, _ = (name[len(STAGING_PREFIX) :].rsplit("-", 2) + ["", ""])[:3]
        stale = time.time() - os.path.getmtime(path) > STALE_STAGING_SECONDS
        if owner_host == host and not _process_alive(int(pid) if pid.isdigit() else -1):
            stale = True
        if stale:
            logging.info("Removing %s, left by a push that did not finish", path)
            shutil.rmtree(path, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _same_files(first: str, second: str, extra_files: Mapping[str, str]) -> bool:
    """True when ``second`` holds ``first``'s relative paths and ``extra_files``, with the same bytes."""

    def listing(root: str) -> dict[str, str]:
        return {
            os.path.relpath(os.path.join(folder, name), root): os.path.join(folder, name)
            for folder, _, names in os.walk(root)
            for name in names
        }

    files, held = {**listing(first), **extra_files}, listing(second)
    if not listing(first) or set(files) != set(held):
        return False
    return all(
        os.path.getsize(path) == os.path.getsize(held[name]) and filecmp.cmp(path, held[name], shallow=False)
        for name, path in files.items()
    )


class Executor(pusher_executor.Executor):
    def Do(
        self,
        input_dict: dict[str, list[types.Artifact]],
        output_dict: dict[str, list[types.Artifact]],
        exec_properties: dict[str, Any],
    ) -> None:
        push_destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], push_destination)
        base = push_destination.filesystem.base_directory
        if push_destination.WhichOneof("destination") != "filesystem" or "://" in base:
            # Object stores have no atomic rename; the stock executor writes saved_model.pb last.
            return super().Do(input_dict, output_dict, exec_properties)
        model_push = artifact_utils.get_single_instance(output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        if not self.CheckBlessing(input_dict):
            self._MarkNotPushed(model_push)
            progress.figure("not pushed: the model is not blessed")
            return
        custom_config = json.loads(exec_properties.get(standard_component_specs.CUSTOM_CONFIG_KEY) or "null") or {}
        version, serving_path = publish_version(
            self.GetModelPath(input_dict),
            base,
            push_root=custom_config.get(specs.PUSH_ROOT_KEY),
            judged_serving_version=_judged_serving_version(input_dict, base),
            extra_files=_int8_model(input_dict),
        )
        logging.info("Model published atomically as version %s at %s", version, serving_path)
        progress.figure(f"version {version}")
        io_utils.copy_dir(self.GetModelPath(input_dict), model_push.uri)
        self._MarkPushed(model_push, pushed_destination=serving_path, pushed_version=version)


def _int8_model(input_dict: dict[str, list[types.Artifact]]) -> dict[str, str]:
    """The int8 TFLite model that passed the gate's checks for it, by its name in the version; or nothing."""
    blessings = input_dict.get(standard_component_specs.MODEL_BLESSING_KEY) or []
    if not blessings or INT8_TFLITE_PROPERTY not in blessings[0].mlmd_artifact.custom_properties:
        return {}
    return {INT8_TFLITE_FILE: blessings[0].get_string_custom_property(INT8_TFLITE_PROPERTY)}


def _judged_serving_version(input_dict: dict[str, list[types.Artifact]], base: str) -> Optional[str]:
    """What the gate compared with, if it compared with the model serving at this destination."""
    blessings = input_dict.get(standard_component_specs.MODEL_BLESSING_KEY) or []
    if not blessings:
        return None
    blessing = blessings[0]
    if SERVING_MODEL_DIR_PROPERTY not in blessing.mlmd_artifact.custom_properties:
        return None
    judged_dir = blessing.get_string_custom_property(SERVING_MODEL_DIR_PROPERTY)
    if os.path.realpath(judged_dir) != os.path.realpath(base):
        return None
    return blessing.get_string_custom_property(JUDGED_SERVING_VERSION_PROPERTY)
