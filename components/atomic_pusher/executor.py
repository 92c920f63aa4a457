"""Pusher executor whose versions appear complete or not at all, and never collide.

The stock executor copies files into ``<base>/<unix seconds>``: a reader can see a half-copied
version, and two runs in the same second end up claiming the same version. Here the model is
copied into a hidden staging directory beside the versions (TF Serving only loads numeric
directories) and renamed into place; ``rename`` is atomic on a POSIX filesystem and fails if the
version exists, in which case the next number is tried. Blessing checks and the metadata the
Pusher records are the stock executor's.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import time
from typing import Any

from absl import logging
from tfx import types
from tfx.components.pusher import executor as pusher_executor
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, proto_utils

from components.serving_versions import numeric_versions

STAGING_PREFIX = ".staging-"


def publish_version(model_dir: str, base_directory: str) -> tuple[str, str]:
    """Copies ``model_dir`` to a new numeric version under ``base_directory`` atomically.

    Returns ``(version, path)``. The version is the current unix time in seconds, or the next
    free number after it.
    """
    os.makedirs(base_directory, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=base_directory)
    try:
        shutil.copytree(model_dir, staging, dirs_exist_ok=True)
        existing = numeric_versions(base_directory)
        version = max([int(time.time()), *(v + 1 for v in existing)])
        while True:
            target = os.path.join(base_directory, str(version))
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
            return
        version, serving_path = publish_version(self.GetModelPath(input_dict), base)
        logging.info("Model published atomically as version %s at %s", version, serving_path)
        io_utils.copy_dir(self.GetModelPath(input_dict), model_push.uri)
        self._MarkPushed(model_push, pushed_destination=serving_path, pushed_version=version)
