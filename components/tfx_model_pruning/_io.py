"""Small helpers the executors share for reading and writing artifact files."""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import tensorflow as tf
from tfx.types import artifact_utils


def write_text(directory: str, name: str, text: str) -> str:
    return _write(directory, name, text, "w")


def write_bytes(directory: str, name: str, data: bytes) -> str:
    return _write(directory, name, data, "wb")


def _write(directory: str, name: str, content, mode: str) -> str:
    tf.io.gfile.makedirs(directory)
    path = os.path.join(directory, name)
    with tf.io.gfile.GFile(path, mode) as f:
        f.write(content)
    return path


def write_json(directory: str, name: str, payload: Any) -> str:
    return write_text(directory, name, json.dumps(payload, indent=2, sort_keys=True, default=str))


def read_json_if_present(directory: str, name: str) -> Optional[Any]:
    """The JSON file ``name`` in ``directory``, or None where there is none."""
    path = os.path.join(directory, name)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def split_patterns(examples: list, split: str) -> list[str]:
    """One glob pattern per Examples artifact for the files of ``split`` (as ExampleGen wrote them)."""
    patterns = []
    for artifact, uri in zip(examples, artifact_utils.get_split_uris(examples, split), strict=True):
        if not tf.io.gfile.isdir(uri):
            available = artifact_utils.decode_split_names(artifact.split_names)
            raise ValueError(f"the examples have no {split!r} split at {uri}; splits are {available}")
        patterns.append(os.path.join(uri, "*"))
    return patterns


def split_files(examples: list, split: str) -> list[str]:
    """All data files of one split of the Examples artifacts."""
    return [path for pattern in split_patterns(examples, split) for path in sorted(tf.io.gfile.glob(pattern))]
