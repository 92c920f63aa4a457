"""The serving layout the Pusher writes: numeric version directories under one base directory.

TF Serving loads the highest number; hidden staging directories and anything non-numeric are
ignored, as TF Serving ignores them.
"""

from __future__ import annotations

import os
from typing import Optional

import tensorflow as tf


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
