"""Batch normalization for JAX training with a closed-form gradient.

In training, Keras' ``BatchNormalization`` normalises with the batch's mean and variance, and
JAX differentiates that through ``jnp.mean``, ``jnp.var`` and the affine map one operation at
a time: several passes over the activation and its gradient for each of ResNet50's 53
normalisations. The gradient has a well-known closed form (Ioffe and Szegedy, 2015): with
``x_hat = (x - mean) / sqrt(var + eps)`` and ``M`` values per channel,

    d_beta  = sum(dy)
    d_gamma = sum(dy * x_hat)
    dx      = gamma / sqrt(var + eps) / M * (M * dy - d_beta - x_hat * d_gamma)

(plus the terms of gradients flowing into the returned mean and variance), i.e. one fused
reduction over ``dy`` and ``x`` and one elementwise pass. :func:`normalize_batch` is that,
as a ``jax.custom_vjp``. Its outputs are computed exactly as Keras computes them (bit-identical
on CPU); its gradients differ from autodiff's by float rounding.

Measured on a 2-core AVX2 CPU: batch normalization plus ReLU at ``2x128x128x256``, gradient
with its forward, 34.6 ms by autodiff and 27.7 ms in closed form; a ResNet50 backbone train
step (batch 2, 512x512) ran at 0.97x the time (median of 20 interleaved steps). The same rule
written as a ``custom_jvp`` (whose transpose JAX derives) took 40 ms, so this is a
``custom_vjp``: reverse mode, ``jit`` and ``vmap`` apply, but forward-mode autodiff
(``jax.jvp``, ``jax.jacfwd``) of a *training* call raises JAX's ``TypeError`` for custom-VJP
functions. Inference calls use Keras' own path and are unaffected.
"""

import functools
import weakref

import jax
import jax.numpy as jnp

from keras_retinanet.fast._layers import update_moving_statistics, uses_batch_statistics


def _reduction_axes(ndim, axis):
    return tuple(a for a in range(ndim) if a != axis)


def _per_channel(value, ndim, axis):
    """``[C] -> [1, .., C, .., 1]``, broadcastable along ``axis``."""
    shape = [1] * ndim
    shape[axis] = value.shape[0]
    return jnp.reshape(value, shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def normalize_batch(x, gamma, beta, axis, epsilon):
    """Batch normalization with the batch's own statistics.

    Args:
        x: ``[N, H, W, C]`` (any rank; channels on ``axis``), floating point.
        gamma, beta: ``[C]`` scale and offset (ones and zeros stand for Keras' ``scale=False``
            and ``center=False``: multiplying by 1 and adding 0 change no value).
        axis: the channel axis (non-negative).
        epsilon: added to the variance.

    Returns:
        ``(outputs, mean, variance)``: ``outputs`` like ``x``; ``mean`` and ``variance`` ``[C]``,
        as ``keras.ops.moments`` returns them (for the moving averages).
    """
    axes = _reduction_axes(x.ndim, axis)
    # As keras.ops.moments and keras.ops.batch_normalization (JAX backend) compute them.
    mean = jnp.mean(x, axes, keepdims=True)
    variance = jnp.var(x, axis=axes, keepdims=True)
    inv = jax.lax.rsqrt(variance + epsilon) * _per_channel(gamma, x.ndim, axis)
    shift = -mean * inv + _per_channel(beta, x.ndim, axis)
    outputs = jnp.add(x * inv, shift)
    return outputs, jnp.squeeze(mean, axes), jnp.squeeze(variance, axes)


def _normalize_batch_forward(x, gamma, beta, axis, epsilon):
    outputs, mean, variance = normalize_batch(x, gamma, beta, axis, epsilon)
    return (outputs, mean, variance), (x, mean, variance, gamma)


def _normalize_batch_backward(axis, epsilon, residuals, cotangents):
    x, mean, variance, gamma = residuals
    d_outputs, d_mean, d_variance = cotangents
    axes = _reduction_axes(x.ndim, axis)
    count = x.size // x.shape[axis]

    def channel(value):
        return _per_channel(value, x.ndim, axis)

    inv = jax.lax.rsqrt(variance + epsilon)
    centered = x - channel(mean)
    d_beta = jnp.sum(d_outputs, axes)
    d_x_hat_sum = jnp.sum(d_outputs * centered, axes) * inv  # sum(dy * x_hat)
    scale = gamma * inv
    # dx = scale / M * (M * dy - d_beta - x_hat * sum(dy * x_hat)), x_hat = centered * inv.
    d_x = channel(scale / count) * (
        count * d_outputs - channel(d_beta) - centered * channel(inv * d_x_hat_sum)
    )
    # Gradients that reach the returned statistics (zero in a Keras train step, where they
    # only feed the moving averages): d mean / dx = 1 / M, d var / dx = 2 (x - mean) / M.
    d_x = d_x + channel(d_mean / count) + centered * channel(2.0 * d_variance / count)
    return d_x, d_x_hat_sum, d_beta


normalize_batch.defvjp(_normalize_batch_forward, _normalize_batch_backward)


class _FastBatchNormalization:
    """Replacement ``call`` of one ``BatchNormalization`` layer: in training,
    :func:`normalize_batch` and the same moving-average updates as Keras; otherwise (and for
    masks, renormalisation and synchronised statistics) Keras' own ``call``."""

    def __init__(self, layer):
        self.layer = weakref.ref(layer)
        self.keras_call = type(layer).call

    def __call__(self, inputs, training=None, mask=None):
        layer = self.layer()
        if not uses_batch_statistics(layer, training, mask):
            return self.keras_call(layer, inputs, training=training, mask=mask)
        import keras

        # As Keras: statistics in at least float32 (float16 would overflow).
        compute_dtype = keras.backend.result_type(inputs.dtype, "float32")
        inputs = jnp.asarray(inputs, dtype=compute_dtype)
        channels = inputs.shape[layer.axis]
        gamma = layer.gamma.value if layer.scale else jnp.ones((channels,))
        beta = layer.beta.value if layer.center else jnp.zeros((channels,))
        gamma, beta = jnp.asarray(gamma, compute_dtype), jnp.asarray(beta, compute_dtype)
        outputs, mean, variance = normalize_batch(
            inputs, gamma, beta, layer.axis % inputs.ndim, layer.epsilon
        )
        update_moving_statistics(layer, mean, variance, compute_dtype)
        return jnp.asarray(outputs, dtype=layer.compute_dtype)


def use_fast_batch_normalization(layers):
    """Gives every ``BatchNormalization`` layer among ``layers`` (not subclasses with their
    own ``call``) the training path above. Returns the number of layers changed."""
    import keras

    from keras_retinanet.fast._layers import set_layer_calls

    return set_layer_calls(layers, keras.layers.BatchNormalization, _FastBatchNormalization)
