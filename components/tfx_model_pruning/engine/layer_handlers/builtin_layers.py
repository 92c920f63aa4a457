"""The built-in layers of both Keras generations, registered at import through
``register_layer_handler``: the same call a user makes for a custom layer.
"""

from __future__ import annotations

import keras as keras3
import tf_keras as keras
from keras.src.applications.inception_resnet_v2 import CustomScaleLayer as Keras3InceptionResNetScale

from tfx_model_pruning.engine.graph import (
    ConvNeXtLayerScale,
    InceptionResNetScale,
    Keras3ConvNeXtLayerScale,
    Keras3Operation,
    TFOpLambda,
)
from tfx_model_pruning.engine.layer_handlers.base import (
    ActivationHandler,
    Barrier,
    ChannelWise,
    KeepsChannels,
    LayerHandler,
    PassThrough,
    Producer,
    register_layer_handler,
)
from tfx_model_pruning.engine.layer_handlers.merges_and_reshapes import (
    ConcatenateHandler,
    ElementwiseMergeHandler,
    ElementwiseOpHandler,
    FlattenHandler,
    KerasOpHandler,
    ReshapeHandler,
)
from tfx_model_pruning.engine.layer_handlers.sequence_layers import (
    BidirectionalHandler,
    MultiHeadAttentionHandler,
    RecurrentHandler,
)
from tfx_model_pruning.engine.layer_handlers.weighted_layers import (
    BatchNormalizationHandler,
    ConvolutionHandler,
    ConvTransposeHandler,
    DepthwiseConvHandler,
    EinsumDenseHandler,
    LayerNormalizationHandler,
    SeparableConvHandler,
)

_PASS_THROUGH = (
    "InputLayer", "ReLU", "LeakyReLU", "ELU", "ThresholdedReLU", "Identity",
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
    "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
    "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D", "Cropping3D",
    "UpSampling1D", "UpSampling2D", "UpSampling3D",
)  # fmt: skip


def _register_builtins() -> None:
    """The same handlers for tf-keras's layers and Keras 3's (a name one generation lacks is skipped)."""
    for layers in (keras.layers, keras3.layers):

        def classes(*names, layers=layers):
            return [getattr(layers, name) for name in names if isinstance(getattr(layers, name, None), type)]

        for layer_class in classes(*_PASS_THROUGH):
            register_layer_handler(layer_class, PassThrough())
        for layer_class in classes("Activation"):
            register_layer_handler(layer_class, ActivationHandler())
        for layer_class in classes("Rescaling", "Normalization"):
            register_layer_handler(layer_class, KeepsChannels())
        for layer_class in classes("Softmax"):
            register_layer_handler(layer_class, Barrier("softmax mixes channels"))
        for layer_class in classes("BatchNormalization"):
            register_layer_handler(layer_class, BatchNormalizationHandler())
        for layer_class in classes("LayerNormalization"):
            register_layer_handler(layer_class, LayerNormalizationHandler())
        for layer_class in classes("DepthwiseConv2D", "DepthwiseConv1D"):
            register_layer_handler(layer_class, DepthwiseConvHandler())
        for layer_class in classes("Dense"):
            register_layer_handler(layer_class, Producer("units", {"kernel": (-2, -1), "bias": (None, 0)}))
        for layer_class in classes("EinsumDense"):
            register_layer_handler(layer_class, EinsumDenseHandler())
        for layer_class in classes("Embedding"):
            register_layer_handler(layer_class, Producer("output_dim", {"embeddings": (None, 1)}))
        for layer_class in classes("Conv1D", "Conv2D", "Conv3D"):
            register_layer_handler(layer_class, ConvolutionHandler())
        for layer_class in classes("SeparableConv1D", "SeparableConv2D"):
            register_layer_handler(layer_class, SeparableConvHandler())
        for layer_class in classes("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"):
            register_layer_handler(layer_class, ConvTransposeHandler())
        for layer_class in classes("Flatten"):
            register_layer_handler(layer_class, FlattenHandler())
        for layer_class in classes("MultiHeadAttention"):
            register_layer_handler(layer_class, MultiHeadAttentionHandler())
        for name, gates in (("LSTM", 4), ("GRU", 3), ("SimpleRNN", 1)):
            for layer_class in classes(name):
                register_layer_handler(layer_class, RecurrentHandler(gates))
        for layer_class in classes("Bidirectional"):
            register_layer_handler(layer_class, BidirectionalHandler())
        for layer_class in classes("Reshape"):
            register_layer_handler(layer_class, ReshapeHandler())
        for layer_class in classes("Concatenate"):
            register_layer_handler(layer_class, ConcatenateHandler())
        for layer_class in classes("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"):
            register_layer_handler(layer_class, ElementwiseMergeHandler())
    register_layer_handler(TFOpLambda, ElementwiseOpHandler())
    register_layer_handler(Keras3Operation, KerasOpHandler(), every_subclass=True)  # every keras.ops call
    for layer_scale in (ConvNeXtLayerScale, Keras3ConvNeXtLayerScale):
        register_layer_handler(layer_scale, ChannelWise({"gamma": 0}, width_argument="projection_dim"))
    # InceptionResNetV2's residual: inputs[0] + inputs[1] * scale, with a scalar scale.
    for scale in (InceptionResNetScale, Keras3InceptionResNetScale):
        register_layer_handler(scale, ElementwiseMergeHandler())
    register_layer_handler(keras.Model, Barrier("nested model"), every_subclass=True)
    register_layer_handler(keras3.Model, Barrier("nested model"), every_subclass=True)
    # A Keras 3 layer without a handler of its own is a barrier, not a keras.ops operation.
    register_layer_handler(keras3.layers.Layer, LayerHandler(), every_subclass=True)


_register_builtins()
