"""Handlers of layers with weights per channel: normalisations and depthwise convolutions
(channel-wise), EinsumDense and the convolutions (producers).
"""

from __future__ import annotations

import numpy as np

from tfx_model_pruning.engine.channels import ChannelBarrier
from tfx_model_pruning.engine.layer_handlers.base import (
    ChannelWise,
    Producer,
    _spatial,
    _take,
    _zeroed,
)


class LayerNormalizationHandler(ChannelWise):
    """Normalises each position over its channels: removing channels changes the mean and variance
    the others see, so the rebuilt model is close to, not equal to, the disconnected original. The
    group is pruned and the report names the layer; fine-tuning recovers the difference."""

    channelwise = False  # an output channel depends on every input channel's statistics

    def __init__(self):
        super().__init__({"gamma": 0, "beta": 0})

    def output_channels(self, layer, call, inputs, graph):
        rank = len(call.input_tensors[0].shape)
        axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
        if [axis % rank for axis in axes] != [rank - 1]:
            raise ChannelBarrier("LayerNormalization over more than the channel axis")
        graph.approximate[layer.name] = "normalises over the channels: the kept ones see new statistics"
        return super().output_channels(layer, call, inputs, graph)


class BatchNormalizationHandler(ChannelWise):
    def __init__(self):
        super().__init__({"gamma": 0, "beta": 0, "moving_mean": 0, "moving_variance": 0})

    def output_channels(self, layer, call, inputs, graph):
        rank = len(call.input_tensors[0].shape)
        axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
        if [axis % rank for axis in axes] != [rank - 1]:
            raise ChannelBarrier("BatchNormalization over a non-channel axis")
        return super().output_channels(layer, call, inputs, graph)


class DepthwiseConvHandler(ChannelWise):
    def __init__(self):
        # tf-keras calls the kernel depthwise_kernel, Keras 3 kernel.
        super().__init__({"depthwise_kernel": -2, "kernel": -2, "bias": 0})

    def output_channels(self, layer, call, inputs, graph):
        if layer.depth_multiplier != 1:
            raise ChannelBarrier("depth_multiplier > 1")
        return super().output_channels(layer, call, inputs, graph)

    def macs(self, layer, shapes):
        if shapes is None:
            return None
        kernel = layer.depthwise_kernel if hasattr(layer, "depthwise_kernel") else layer.kernel  # tf-keras, Keras 3
        return int(np.prod(kernel.shape)) * _spatial(shapes[1])


class EinsumDenseHandler(Producer):
    """An EinsumDense whose kernel is one matrix from the input's last axis to the output's last
    (``ab,bc->ac``, ``abc,cd->abd``, ``...b,bc->...c``) is a Dense by another name; any other
    equation is a barrier (MultiHeadAttention's projections are read by its own handler)."""

    def __init__(self):
        super().__init__("output_shape", {"kernel": (0, 1), "bias": (None, 0)})

    @staticmethod
    def matrix_form(layer) -> bool:
        equation = str(layer.get_config().get("equation", ""))
        try:
            operands, output = equation.replace(" ", "").split("->")
            features, kernel = operands.split(",")
        except ValueError:
            return False
        bias_axes = layer.get_config().get("bias_axes")
        return (
            len(kernel) == 2
            and features[-1:] == kernel[0]
            and output[-1:] == kernel[1]
            and kernel[0] not in output
            and features[:-1] == output[:-1]
            and bias_axes in (None, "", kernel[1])
        )

    def output_channels(self, layer, call, inputs, graph):
        if not self.matrix_form(layer):
            raise ChannelBarrier(
                f"EinsumDense {layer.get_config().get('equation')!r} is not one matrix over the last axis"
            )
        return super().output_channels(layer, call, inputs, graph)

    def resized_config(self, layer, width):
        config = layer.get_config()
        shape = config["output_shape"]
        config["output_shape"] = width if isinstance(shape, int) else (*tuple(shape)[:-1], width)
        return config

    def macs(self, layer, shapes):
        # Any other equation is not counted: its cost depends on the whole equation, not two widths.
        return super().macs(layer, shapes) if self.matrix_form(layer) else 0


class ConvolutionHandler(Producer):
    """Conv1D/2D/3D. A grouped convolution (``groups > 1``; depthwise when ``groups`` equals the
    channels) loses whole groups: a group's input channels and its filters form one unit."""

    def __init__(self):
        super().__init__("filters", {"kernel": (-2, -1), "bias": (None, 0)})

    def output_channels(self, layer, call, inputs, graph):
        (channels,) = super().output_channels(layer, call, inputs, graph)
        groups = getattr(layer, "groups", 1)
        if groups == 1:
            return [channels]
        incoming = inputs[0]
        in_size, out_size = len(incoming) // groups, len(channels) // groups
        for group in range(groups):
            members = (
                incoming[group * in_size : (group + 1) * in_size] + channels[group * out_size : (group + 1) * out_size]
            )
            for member in members[1:]:
                graph.join(members[0], member)
        return [channels]

    def sliced_weights(self, layer, keep_in, keep_out):
        if getattr(layer, "groups", 1) == 1:
            return super().sliced_weights(layer, keep_in, keep_out)
        # Whole groups go, so each kept filter still reads its group's inputs at the same offsets.
        return _take(layer, {"kernel": (None, -1), "bias": (None, 0)}, keep_in, keep_out)

    def resized_config(self, layer, width):
        config = super().resized_config(layer, width)
        if getattr(layer, "groups", 1) != 1:
            config["groups"] = width // (layer.filters // layer.groups)
        return config

    def disconnected_weights(self, layer, dropped_in, dropped_out):
        if getattr(layer, "groups", 1) == 1:
            return super().disconnected_weights(layer, dropped_in, dropped_out)
        in_size, out_size = layer.kernel.shape[-2], layer.filters // layer.groups
        columns = np.array(
            [g * out_size + k for g in sorted({int(i) // in_size for i in dropped_in}) for k in range(out_size)]
        )
        return [_zeroed(values, columns, -1) for values in layer.get_weights()]

    def macs(self, layer, shapes):
        # The kernel's size counts the window and, for a grouped convolution, only a group's inputs.
        return int(np.prod(layer.kernel.shape)) * _spatial(shapes[1]) if shapes is not None else None


class ConvTransposeHandler(Producer):
    """Conv1D/2D/3DTranspose: the kernel is stored as (..., out, in), and each input position
    scatters a whole kernel into the output."""

    def __init__(self):
        super().__init__("filters", {"kernel": (-1, -2), "bias": (None, 0)})

    def macs(self, layer, shapes):
        return int(np.prod(layer.kernel.shape)) * _spatial(shapes[0]) if shapes is not None else None


class SeparableConvHandler(Producer):
    """Depthwise then pointwise: an input channel owns ``depth_multiplier`` pointwise rows."""

    def __init__(self):
        super().__init__("filters", {"pointwise_kernel": (-2, -1), "bias": (None, 0)})

    def _rows(self, layer, channels: np.ndarray) -> np.ndarray:
        multiplier = layer.depth_multiplier
        return (channels[:, None] * multiplier + np.arange(multiplier)[None, :]).ravel()

    def sliced_weights(self, layer, keep_in, keep_out):
        depthwise, pointwise, *bias = layer.get_weights()
        pointwise = pointwise[..., self._rows(layer, keep_in), :][..., keep_out]
        return [depthwise[..., keep_in, :], pointwise] + [b[keep_out] for b in bias]

    def disconnected_weights(self, layer, dropped_in, dropped_out):
        depthwise, *rest = layer.get_weights()
        return [_zeroed(depthwise, dropped_in, -2), *rest]

    def macs(self, layer, shapes):
        if shapes is None:
            return None
        kernels = (layer.depthwise_kernel, layer.pointwise_kernel)
        return sum(int(np.prod(kernel.shape)) for kernel in kernels) * _spatial(shapes[1])
