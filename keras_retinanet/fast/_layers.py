"""Selecting the layers a fast path may change, and giving them their replacement methods.

Every function takes the flat list of layers that :func:`keras_retinanet.fast.apply_fast_paths`
has restricted to the ones the library built, or one layer or model standing for all of its
layers (recursively; for applying a single path by hand).
"""

import keras

from keras_retinanet import _keras_internals as internals


def layer_list(layers):
    """``layers`` as a list: a single layer or model stands for itself and everything in it."""
    if isinstance(layers, keras.layers.Layer):
        return internals.sublayers(layers)
    return list(layers)


def plain_conv2d_layers(layers):
    """The built ``Conv2D`` layers among ``layers`` that use Keras' own convolution: exactly
    ``Conv2D``'s ``convolution_op`` (not a subclass's), a 4-D kernel variable, no LoRA (whose
    kernel is computed per call), not quantized."""
    for layer in layer_list(layers):
        if (
            isinstance(layer, keras.layers.Conv2D)
            and type(layer).convolution_op is keras.layers.Conv2D.convolution_op
            and isinstance(getattr(layer, "kernel", None), keras.Variable)
            and len(layer.kernel.shape) == 4
            and not internals.has_lora(layer)
            and not internals.is_quantized(layer)
        ):
            yield layer


def set_convolution_ops(layers, op_class, accept=None):
    """Gives the plain ``Conv2D`` layers among ``layers`` (:func:`plain_conv2d_layers`) that
    are undilated and ungrouped, and that ``accept(layer)`` admits, a ``convolution_op`` of
    ``op_class(layer)``; Keras' ``Conv2D.call`` calls ``self.convolution_op``. A layer that
    already holds another replacement keeps it; one holding an ``op_class`` gets a fresh one,
    so calling this again changes nothing further.

    Returns:
        The number of layers given an ``op_class``.
    """
    count = 0
    for layer in plain_conv2d_layers(layers):
        if (
            isinstance(vars(layer).get("convolution_op"), op_class | None)
            and tuple(layer.dilation_rate) == (1, 1)
            and int(getattr(layer, "groups", 1)) == 1
            and (accept is None or accept(layer))
        ):
            internals.replace_method(layer, "convolution_op", op_class(layer))
            count += 1
    return count


def set_layer_calls(layers, layer_class, call_class):
    """Gives the layers among ``layers`` that are ``layer_class`` and still run
    ``layer_class.call`` a ``call`` of ``call_class(layer)``; Keras' ``Layer.__call__`` calls
    ``self.call``. Subclasses with their own ``call`` keep it, as does a layer holding another
    replacement; one holding a ``call_class`` gets a fresh one.

    Returns:
        The number of layers given a ``call_class``.
    """
    count = 0
    for layer in layer_list(layers):
        if (
            isinstance(layer, layer_class)
            and type(layer).call is layer_class.call
            and isinstance(vars(layer).get("call"), call_class | None)
        ):
            internals.replace_method(layer, "call", call_class(layer))
            count += 1
    return count


def uses_batch_statistics(layer, training, mask):
    """Whether a ``BatchNormalization`` call normalises with the batch's own statistics in
    the standard way, the case the training fast paths replace: a trainable layer called with
    ``training`` true, without a mask, renormalisation or synchronised statistics."""
    return (
        bool(training)
        and layer.trainable
        and mask is None
        and internals.batch_normalization_is_standard(layer)
    )


def update_moving_statistics(layer, mean, variance, dtype):
    """Keras' update of a ``BatchNormalization`` layer's moving averages from a batch's
    ``mean`` and biased ``variance`` (``[C]``), computed in ``dtype`` (the layer's statistics
    dtype, at least float32): ``moving * momentum + batch * (1 - momentum)``."""
    momentum = layer.momentum
    for variable, value in ((layer.moving_mean, mean), (layer.moving_variance, variance)):
        moving = keras.ops.cast(variable.value, dtype)
        variable.assign(moving * momentum + value * (1.0 - momentum))
