"""JAX-specific helpers (imported only when the JAX backend is active).

``is_concrete_tensor``: whether a value is known now (not a tracer).

``use_fast_convolutions`` gives each plain ``Conv2D`` layer of a model a convolution whose
gradient XLA computes faster on CPU. It is the same convolution, evaluated another way:

* **1x1 kernels** become a 2-D matrix product ``[N * H * W, in] @ [in, out]`` (after the
  stride's subsampling, which is all a 1x1 kernel's stride does). XLA lowers the kernel
  gradient of a 1x1 ``conv_general_dilated`` to a convolution over swapped axes with layout
  copies of both activations around it (732 ms for ``64 -> 256`` channels at ``2x256x256``,
  2-core CPU), and even an ``einsum`` over ``n, h, w`` copies both operands. In 2-D the
  kernel gradient is one ``rows^T @ grad`` product that reads the activations in place.
  ResNet50 has 36 such convolutions, the feature pyramid three. A ResNet50 backbone's
  gradient at batch 2, 512x512 went from 3.1-3.5 s to 2.1-2.6 s.
* **More than 256 output channels, on CPU** (RetinaNet's class head output, ``9 * classes``
  channels): the convolution runs in slices of 256 output channels. XLA:CPU's kernel
  gradient slows down sharply past 256 (``3x3, 256 -> 720`` at ``2x64x64``: forward and both
  gradients 468 ms in one piece, 330 ms in slices; the forward alone 145 against 157 ms).
  Other platforms keep the single convolution.

Outputs differ from ``conv_general_dilated`` only by float rounding in 1x1 convolutions (the
sum runs in another order); the others compute the same sums. Forward- and reverse-mode
autodiff, ``jit`` and ``vmap`` all apply as to any JAX function.
"""

import jax
import jax.numpy as jnp

#: Output channels per slice of a wide convolution on CPU (see the module docstring).
CPU_OUTPUT_SLICE = 256


def is_concrete_tensor(x):
    """Not a tracer inside ``jax.jit``/``jax.grad``/``jax.vmap``."""
    return not isinstance(x, jax.core.Tracer)


def _dimension_numbers(data_format):
    return ("NHWC", "HWIO", "NHWC") if data_format == "channels_last" else ("NCHW", "HWIO", "NCHW")


def _pointwise(inputs, kernel, strides, data_format):
    """A 1x1 convolution: ``[N, H, W, in] x [1, 1, in, out] -> [N, H', W', out]`` (or NCHW)."""
    sh, sw = strides
    matrix = kernel[0, 0]  # [in, out]
    if data_format == "channels_last":
        if (sh, sw) != (1, 1):
            inputs = inputs[:, ::sh, ::sw, :]
        n, h, w, c = inputs.shape
        # [N, H, W, in] -> [N * H * W, in]: a plain 2-D product, whose gradients are 2-D
        # products too (kernel: rows^T @ grad, no layout copy; einsum over n, h, w copies both).
        rows = jnp.reshape(inputs, (-1, c))
        return jnp.reshape(rows @ matrix, (n, h, w, matrix.shape[1]))
    if (sh, sw) != (1, 1):
        inputs = inputs[:, :, ::sh, ::sw]
    n, c, h, w = inputs.shape
    # [N, in, H, W] -> [N, in, H * W]; out[n] = matrix^T @ inputs[n].
    columns = jnp.reshape(inputs, (n, c, h * w))
    outputs = jnp.einsum("co,ncp->nop", matrix, columns)
    return jnp.reshape(outputs, (n, matrix.shape[1], h, w))


def _spatial(inputs, kernel, strides, padding, data_format):
    """``conv_general_dilated``, in slices of output channels when wide on CPU."""

    def conv(w):
        return jax.lax.conv_general_dilated(
            inputs, w, strides, padding, dimension_numbers=_dimension_numbers(data_format)
        )

    out_channels = kernel.shape[-1]
    if out_channels <= CPU_OUTPUT_SLICE or jax.default_backend() != "cpu":
        return conv(kernel)
    pieces = [
        conv(kernel[..., start : start + CPU_OUTPUT_SLICE])
        for start in range(0, out_channels, CPU_OUTPUT_SLICE)
    ]
    return jnp.concatenate(pieces, axis=-1 if data_format == "channels_last" else 1)


class _FastConvolution:
    """Replacement ``convolution_op`` of one ``Conv2D`` layer (see the module docstring)."""

    def __init__(self, layer):
        self.strides = tuple(int(s) for s in layer.strides)
        self.padding = layer.padding.upper()
        self.data_format = layer.data_format
        self.pointwise = tuple(layer.kernel_size) == (1, 1)

    def __call__(self, inputs, kernel):
        kernel = jnp.asarray(kernel)
        inputs = jnp.asarray(inputs, dtype=kernel.dtype)
        if self.pointwise:
            return _pointwise(inputs, kernel, self.strides, self.data_format)
        return _spatial(inputs, kernel, self.strides, self.padding, self.data_format)


def use_fast_convolutions(model):
    """Gives every plain, built ``Conv2D`` in ``model`` (recursively) the convolution above.

    Layers that subclass ``Conv2D`` with their own ``convolution_op``, dilated or grouped
    convolutions and LoRA-wrapped kernels keep Keras' convolution.

    Returns:
        The number of layers changed.
    """
    from keras_retinanet.backends import set_convolution_ops

    return set_convolution_ops(model, _FastConvolution)
