"""The serving layout the Pusher writes: numeric version directories under one base directory.

TF Serving loads the highest number; hidden staging directories and anything non-numeric are
ignored, as TF Serving ignores them.
"""

from __future__ import annotations

import os
from typing import Optional

import tensorflow as tf

# Blessing properties the gate writes and the Pusher re-checks at push time: the model serving
# then must be the one the verdict compared against (a cached or slow verdict must not outlive it).
SERVING_MODEL_DIR_PROPERTY = "serving_model_dir"
JUDGED_SERVING_VERSION_PROPERTY = "judged_serving_version"
# The int8 TFLite file that passed its own checks (int8_tflite): the Pusher copies it beside the SavedModel.
INT8_TFLITE_PROPERTY = "int8_tflite_uri"
INT8_TFLITE_FILE = "model_int8.tflite"  # its name in the pushed version directory


def numeric_versions(base_directory: str) -> list[int]:
    """Version numbers present under ``base_directory`` (empty if it does not exist)."""
    if not tf.io.gfile.isdir(base_directory):
        return []
    return sorted(int(name.rstrip("/")) for name in tf.io.gfile.listdir(base_directory) if name.rstrip("/").isdigit())


def latest_version_dir(base_directory: str) -> Optional[str]:
    """The newest complete version (highest number holding a saved_model.pb), or None."""
    for version in reversed(numeric_versions(base_directory)):
        path = os.path.join(base_directory, str(version))
        if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
            return path
    return None


def check_push_destination(serving_model_dir: str, push_root: Optional[str]) -> None:
    """Raises ValueError unless ``serving_model_dir`` lies inside ``push_root`` (when one is set)."""
    if push_root is None:
        return
    if "://" in serving_model_dir or "://" in push_root:
        scheme_root, scheme_dir = push_root.rstrip("/") + "/", serving_model_dir
        if not scheme_dir.startswith(scheme_root) or ".." in scheme_dir[len(scheme_root) :].split("/"):
            raise ValueError(f"push destination {serving_model_dir!r} is outside the push root {push_root!r}")
        return
    root, target = os.path.realpath(push_root), os.path.realpath(serving_model_dir)
    if os.path.commonpath([root, target]) != root or target == root:
        raise ValueError(
            f"push destination {serving_model_dir!r} resolves to {target!r}, outside the push root {root!r}"
        )
