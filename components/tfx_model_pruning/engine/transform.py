"""A tf.Transform graph as ``Preprocessing``: raw tf.Example features to the model's inputs."""

from __future__ import annotations

import os
from typing import Iterable

import tensorflow_transform as tft

from tfx_model_pruning.engine.data import Preprocessing
from tfx_model_pruning.engine.graph_scan import scan_model_dir


def transform_preprocessing(transform_graph_dir: str, allow_ops: Iterable[str] = ()) -> Preprocessing:
    """The transform a TFX ``Transform`` wrote (its ``transform_graph`` artifact URI), once its
    graph has been scanned as a model's is (``graph_scan``; ``allow_ops`` lets refused op types through).

    Example::

        preprocessing = transform_preprocessing(transform.outputs["transform_graph"].get()[0].uri)
        dataset = examples_dataset(raw_files, model, "species_xf", 32, preprocessing=preprocessing)
    """
    scan_model_dir(os.path.join(transform_graph_dir, tft.TFTransformOutput.TRANSFORM_FN_DIR), allow_ops).require_safe()
    output = tft.TFTransformOutput(transform_graph_dir)
    return Preprocessing(
        raw_feature_spec=output.raw_feature_spec(),
        transform=output.transform_features_layer(),
        output_names=frozenset(output.transformed_feature_spec()),
    )
