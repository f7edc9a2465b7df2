"""JAX convolutions for XLA:CPU (imported only when the JAX backend is active; applied only to
layers whose variables live on the CPU, see :mod:`keras_retinanet.fast`).

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
* **Other kernels, on CPU** (3x3, the 7x7 stem) keep XLA's convolution for the output and for
  the input gradient, but their **kernel gradient** is computed as one matrix product per
  kernel tap, ``window^T @ grad`` with ``window`` the ``[N * H' * W', in]`` input pixels that
  tap reads (for inputs with few channels, such as the RGB stem, one product per kernel row,
  the row's windows side by side), instead of XLA:CPU's kernel-gradient convolution, which is
  several times slower than the forward convolution it belongs to (2-core AVX2 CPU,
  ``2x64x64``: ``3x3, 256 -> 256`` forward 82 ms, kernel gradient 369 ms by XLA, 147 ms by
  taps; ``256 -> 720``, the class head's output, 245 ms, 1213 ms and 262 ms). A RetinaNet
  ResNet50 train step (batch 2, 512x512) went from 11.9 s to 8.4 s on that machine. This is
  done with a ``custom_jvp`` whose kernel tangent is the per-tap sum (linear in the kernel),
  so that reverse mode transposes it into the per-tap products while forward mode, ``jit``
  and ``vmap`` keep working. Other platforms keep XLA's convolution and its gradients.

Outputs differ from ``conv_general_dilated`` only by float rounding in 1x1 convolutions (the
sum runs in another order); the others are XLA's own convolution. Kernel gradients differ by
float rounding (the same products, summed in another order). Forward- and reverse-mode
autodiff, ``jit`` and ``vmap`` all apply as to any JAX function.
"""

import functools

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero


def _dimension_numbers(data_format):
    return ("NHWC", "HWIO", "NHWC") if data_format == "channels_last" else ("NCHW", "HWIO", "NCHW")


def _times_matrix(pixels, matrix, data_format):
    """Every pixel's channel vector times ``matrix`` ``[in, out]``: ``[N, H, W, in] ->
    [N, H, W, out]`` (or NCHW), written as the product whose kernel gradient XLA:CPU computes
    without layout copies."""
    if data_format == "channels_last":
        n, h, w, c = pixels.shape
        # [N, H, W, in] -> [N * H * W, in]: a plain 2-D product, whose gradients are 2-D
        # products too (kernel: rows^T @ grad, no layout copy; einsum over n, h, w copies both).
        rows = jnp.reshape(pixels, (-1, c))
        return jnp.reshape(rows @ matrix, (n, h, w, matrix.shape[1]))
    n, c, h, w = pixels.shape
    # [N, in, H, W] -> [N, in, H * W]; out[n] = matrix^T @ pixels[n].
    columns = jnp.reshape(pixels, (n, c, h * w))
    outputs = jnp.einsum("co,ncp->nop", matrix, columns)
    return jnp.reshape(outputs, (n, matrix.shape[1], h, w))


def _pointwise(inputs, kernel, strides, data_format):
    """A 1x1 convolution: ``[N, H, W, in] x [1, 1, in, out] -> [N, H', W', out]`` (or NCHW)."""
    sh, sw = strides
    if (sh, sw) != (1, 1):  # all a 1x1 kernel's stride does is subsample
        if data_format == "channels_last":
            inputs = inputs[:, ::sh, ::sw, :]
        else:
            inputs = inputs[:, :, ::sh, ::sw]
    return _times_matrix(inputs, kernel[0, 0], data_format)


def _conv(inputs, kernel, strides, padding, data_format):
    return jax.lax.conv_general_dilated(
        inputs, kernel, strides, padding, dimension_numbers=_dimension_numbers(data_format)
    )


def strided_window(padded, i, j, out_h, out_w, strides, axes):
    """What kernel (or pooling) tap ``(i, j)`` reads for every output pixel: the strided slice
    ``[N, out_h, out_w, C]`` (or NCHW; ``axes`` are the spatial axes) of ``padded`` starting at
    ``(i, j)``."""
    sh, sw = strides
    begin, end, step = [0] * 4, list(padded.shape), [1] * 4
    begin[axes[0]], begin[axes[1]] = i, j
    end[axes[0]], end[axes[1]] = i + sh * (out_h - 1) + 1, j + sw * (out_w - 1) + 1
    step[axes[0]], step[axes[1]] = sh, sw
    return jax.lax.slice(padded, begin, end, step)


#: Below this many input channels, the taps of one kernel row are concatenated along the
#: channel axis and multiplied at once: a product over 3 channels (the 7x7 stem on RGB images)
#: is too thin to run fast, and each one rereads the whole output gradient. The stem's kernel
#: gradient (``2x512x512x3``, ``7x7/2 -> 64``) took 241 ms as 49 products and 140 ms as 7 on a
#: 2-core AVX2 CPU; at 64 channels the single taps stay faster (108 ms against 145 ms for one
#: concatenated product).
ROW_AT_ONCE_BELOW_CHANNELS = 16


def _tap_products(inputs, kernel, *, strides, padding, data_format):
    """The convolution of ``inputs`` with ``kernel`` ``[kh, kw, in, out]`` written as a sum of
    matrix products, one per kernel tap: the (strided) input window that tap ``(i, j)`` reads,
    ``[N * H' * W', in]``, times ``kernel[i, j]`` ``[in, out]``. With fewer than
    ``ROW_AT_ONCE_BELOW_CHANNELS`` input channels, one product per kernel row instead: the row's
    ``kw`` windows side by side, ``[N * H' * W', kw * in]``, times ``kernel[i]`` as
    ``[kw * in, out]``.

    Only its derivative in ``kernel`` is used (see ``_spatial``): it is linear in ``kernel``
    and its transpose, the kernel gradient, is one ``window^T @ grad`` product per tap (or row).
    """
    kh, kw, in_channels, out_channels = kernel.shape
    sh, sw = strides
    h_axis, w_axis, c_axis = (1, 2, 3) if data_format == "channels_last" else (2, 3, 1)
    pads = jax.lax.padtype_to_pads(
        (inputs.shape[h_axis], inputs.shape[w_axis]), (kh, kw), strides, padding
    )
    pad_width = [(0, 0)] * 4
    pad_width[h_axis], pad_width[w_axis] = pads
    padded = jnp.pad(inputs, pad_width)
    ho = (padded.shape[h_axis] - kh) // sh + 1
    wo = (padded.shape[w_axis] - kw) // sw + 1

    def window(i, j):  # the input pixels tap (i, j) reads: [N, H', W', in] / [N, in, H', W']
        return strided_window(padded, i, j, ho, wo, strides, (h_axis, w_axis))

    row_at_once = in_channels < ROW_AT_ONCE_BELOW_CHANNELS
    total = None
    for i in range(kh):
        if row_at_once:
            # [N, H', W', kw * in], channel index j * in + c, the order of kernel[i]'s rows
            # once [kw, in, out] is flattened to [kw * in, out].
            row = jnp.concatenate([window(i, j) for j in range(kw)], axis=c_axis)
            matrix = jnp.reshape(kernel[i], (kw * in_channels, out_channels))
            terms = [_times_matrix(row, matrix, data_format)]
        else:
            terms = [_times_matrix(window(i, j), kernel[i, j], data_format) for j in range(kw)]
        for term in terms:
            total = term if total is None else total + term
    return total


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def _spatial(inputs, kernel, strides, padding, data_format):
    """``conv_general_dilated``, whose kernel derivative is taken through ``_tap_products``.

    The value and the derivative in ``inputs`` are XLA's convolution and its transpose. The
    derivative in ``kernel`` is the same linear map written as per-tap matrix products, so that
    reverse mode computes the kernel gradient as ``kh * kw`` products instead of XLA:CPU's
    kernel-gradient convolution (see the module docstring). ``jax.checkpoint`` keeps the
    input windows out of the saved residuals: the backward pass slices them from ``inputs``
    again instead of holding ``kh * kw`` copies of every input from the forward pass.
    """
    return _conv(inputs, kernel, strides, padding, data_format)


@functools.partial(_spatial.defjvp, symbolic_zeros=True)
def _spatial_jvp(strides, padding, data_format, primals, tangents):
    inputs, kernel = primals
    d_inputs, d_kernel = tangents
    outputs = _conv(inputs, kernel, strides, padding, data_format)
    d_outputs = None
    if not isinstance(d_inputs, SymbolicZero):
        d_outputs = _conv(d_inputs, kernel, strides, padding, data_format)
    if not isinstance(d_kernel, SymbolicZero):
        taps = functools.partial(
            _tap_products, strides=strides, padding=padding, data_format=data_format
        )
        term = jax.checkpoint(taps)(inputs, d_kernel)
        d_outputs = term if d_outputs is None else d_outputs + term
    if d_outputs is None:
        d_outputs = jnp.zeros_like(outputs)
    return outputs, d_outputs


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


def use_fast_convolutions(layers):
    """Gives every plain, built ``Conv2D`` among ``layers`` the convolution above.

    Layers that subclass ``Conv2D`` with their own ``convolution_op``, dilated or grouped
    convolutions and LoRA-wrapped kernels keep Keras' convolution.

    Returns:
        The number of layers changed.
    """
    from keras_retinanet.fast._layers import set_convolution_ops

    return set_convolution_ops(layers, _FastConvolution)
