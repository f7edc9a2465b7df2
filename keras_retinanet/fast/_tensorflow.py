"""TensorFlow fast path (imported only when the TensorFlow backend is active).

``use_nhwc_convolutions``: TensorFlow's CPU convolution kernels (forward and both gradients)
accept only NHWC; given an NCHW layout they fail with ``UnimplementedError: The Conv2D op
currently only supports the NHWC tensor format on the CPU``. For layers whose variables live
on the CPU, each channels_first ``Conv2D`` therefore convolves its input transposed to NHWC and
transposes the result back: the same sums, so the same outputs, and the weights (HWIO kernels
in both layouts) are untouched. On a GPU, NCHW is cuDNN's native layout and the layers are
left as they are. Pooling needs nothing: Keras' TensorFlow backend already transposes around
it. Without this path (fast paths off, or a backbone of the user's) a channels_first model
cannot run on TensorFlow's CPU.
"""

import keras
import tensorflow as tf


class _NHWCConvolution:
    """Replacement ``convolution_op`` of one channels_first ``Conv2D`` layer: ``[N, C, H, W]``
    in and out, computed as an NHWC convolution."""

    def __init__(self, layer):
        self.strides = tuple(int(s) for s in layer.strides)
        self.padding = layer.padding
        self.dilation_rate = tuple(int(d) for d in layer.dilation_rate)

    def __call__(self, inputs, kernel):
        inputs = tf.transpose(inputs, (0, 2, 3, 1))  # [N, C, H, W] -> [N, H, W, C]
        outputs = keras.ops.conv(
            inputs,
            kernel,  # [kh, kw, in / groups, out], the same in both layouts
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            data_format="channels_last",
        )
        return tf.transpose(outputs, (0, 3, 1, 2))  # [N, H', W', out] -> [N, out, H', W']


def use_nhwc_convolutions(layers):
    """Gives every plain, built, channels_first ``Conv2D`` among ``layers`` an NHWC
    convolution between two transposes (see the module docstring); the caller has checked
    that the variables live on the CPU. Layers with a ``convolution_op`` of their own keep it,
    so calling this again changes nothing.

    Returns:
        The number of layers changed.
    """
    from keras_retinanet.fast._layers import set_convolution_ops

    return set_convolution_ops(
        layers, _NHWCConvolution, accept=lambda layer: layer.data_format == "channels_first"
    )
