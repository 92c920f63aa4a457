"""A tf.Transform graph as ``Preprocessing``: raw tf.Example features to the model's inputs."""

from __future__ import annotations

import tensorflow_transform as tft

from tfx_model_pruning.engine.data import Preprocessing


def transform_preprocessing(transform_graph_dir: str) -> Preprocessing:
    """The transform a TFX ``Transform`` wrote (its ``transform_graph`` artifact URI).

    Example::

        preprocessing = transform_preprocessing(transform.outputs["transform_graph"].get()[0].uri)
        dataset = examples_dataset(raw_files, model, "species_xf", 32, preprocessing=preprocessing)
    """
    output = tft.TFTransformOutput(transform_graph_dir)
    return Preprocessing(
        raw_feature_spec=output.raw_feature_spec(),
        transform=output.transform_features_layer(),
        output_names=frozenset(output.transformed_feature_spec()),
    )
