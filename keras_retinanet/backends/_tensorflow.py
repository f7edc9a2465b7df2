"""TensorFlow-specific helpers (imported only when the TensorFlow backend is active).

``is_concrete_tensor``: whether a value is known now (eager, not traced or symbolic).

``use_nhwc_convolutions``: TensorFlow's CPU convolution kernels (forward and both gradients)
accept only NHWC; given an NCHW layout they fail with ``UnimplementedError: The Conv2D op
currently only supports the NHWC tensor format on the CPU``. On a machine without a GPU, each
channels_first ``Conv2D`` therefore convolves its input transposed to NHWC and transposes the
result back: the same sums, so the same outputs, and the weights (HWIO kernels in both layouts)
are untouched. With a GPU, NCHW is cuDNN's native layout and the layers are left as they are.
Pooling needs nothing: Keras' TensorFlow backend already transposes around it.
"""

import keras
import tensorflow as tf


def is_concrete_tensor(x):
    """Eager (not traced, not symbolic) TensorFlow value."""
    return tf.executing_eagerly() and hasattr(x, "numpy") and not tf.is_symbolic_tensor(x)


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


def has_gpu():
    """Whether TensorFlow sees a GPU (where NCHW convolutions run natively)."""
    return bool(tf.config.list_logical_devices("GPU"))


def use_nhwc_convolutions(model):
    """Gives every plain, built, channels_first ``Conv2D`` in ``model`` (recursively) an NHWC
    convolution between two transposes, when TensorFlow has no GPU (see the module docstring).
    Layers with a ``convolution_op`` of their own (a subclass's or an earlier replacement) keep
    it, so calling this again changes nothing.

    Returns:
        The number of layers changed.
    """
    from keras_retinanet.backends import plain_conv2d_layers

    if has_gpu():
        return 0
    count = 0
    for layer in plain_conv2d_layers(model):
        if layer.data_format == "channels_first" and "convolution_op" not in vars(layer):
            object.__setattr__(layer, "convolution_op", _NHWCConvolution(layer))
            count += 1
    return count
