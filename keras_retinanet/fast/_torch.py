"""PyTorch fast paths (imported only when the torch backend is active; CPU only, see
:mod:`keras_retinanet.fast`).

``store_kernels_for_torch`` lays out ``Conv2D`` kernels in the memory order torch's
convolution reads.

Keras keeps a ``Conv2D`` kernel as ``[kh, kw, in, out]`` (HWIO) on every backend. Its torch
backend permutes that to torch's ``[out, in, kh, kw]`` (OIHW; for channels_last layers, OIHW
in channels_last memory order) on every call, and the convolution then copies the permuted,
non-contiguous view into contiguous memory: for RetinaNet (ResNet50) that is 71 kernel copies,
36 M parameters, per forward call, about a fifth of a batch-1 forward at 512x512 on a 2-core
CPU (1.04 s -> 0.77-0.84 s with this module, channels_first).

``store_kernels_for_torch`` re-lays each kernel's *storage* so that Keras' permuted view is
already contiguous. The variable keeps its HWIO shape, values and dtype, so saving, loading,
the optimizers and other backends see no difference, and because Keras assigns torch
variables in place (``copy_``), loaded weights and optimizer updates keep the layout. Outputs
are bit-identical: the convolution receives the same values, only without the copy.

``use_torch_convolutions`` gives each plain ``Conv2D`` a convolution that calls
``F.conv2d`` on the layer's input as it lies in memory. For channels_last, Keras' torch backend
permutes the ``[N, H, W, C]`` input to ``[N, C, H, W]`` and makes it contiguous (one copy),
then converts it to channels_last memory format for oneDNN (a second copy, back to the
original order). But the permuted view of a contiguous ``[N, H, W, C]`` tensor already *is* an
``[N, C, H, W]`` tensor in channels_last memory format, which torch's convolution takes as it
is. Skipping both copies took RetinaNet's batch-1 forward at 512x512 from about 0.98 s to about
0.8 s on a 2-core CPU. For channels_first there is no copy to save, only Keras' per-call
argument handling. Either way the convolution is the same call on the same values in the same
memory order, so outputs are bit-identical to Keras' path.

``donating_function`` returns in-place versions of the elementwise layers (batch
normalization, ReLU, ``Add``) for inputs that ``graph_runner`` knows no one else holds: the
same operations on the same values, written into the input's memory instead of a new tensor.
Batch normalization and ReLU are then 53 + 49 fewer allocations and writes of ResNet50's
largest feature maps per call; the batch-1 forward at 512x512 ran 2-5% faster on a 2-core CPU.

``inference_function`` returns, for the layers whose eager inference
``graph_runner`` runs without ``Layer.__call__``, the same arithmetic written with
torch directly: Keras' ``Conv2D.call`` and ``BatchNormalization.call`` go through ``keras.ops``,
whose per-op dispatch (symbolic-tensor checks over ``torch.utils._pytree``, casts, reshapes)
costs more Python time than the arithmetic of a small feature map.
"""

import weakref

import keras
import torch
import torch.nn.functional as F

from keras_retinanet._keras_internals import training_in_call_context
from keras_retinanet.fast._layers import update_moving_statistics, uses_batch_statistics


def store_kernels_for_torch(layers):
    """Re-lays the storage of the kernel of every plain ``Conv2D`` among ``layers`` for torch.

    Args:
        layers: built Keras layers on the torch backend (others are skipped).

    Returns:
        The number of kernels re-laid (kernels already in that layout are counted too).
    """
    from keras_retinanet.fast._layers import plain_conv2d_layers

    count = 0
    for layer in plain_conv2d_layers(layers):
        parameter = layer.kernel.value  # [kh, kw, in, out]
        if layer.data_format == "channels_first":
            # OIHW contiguous, viewed as HWIO: Keras' permute(3, 2, 0, 1) is contiguous.
            storage_order, view_order = (3, 2, 0, 1), (2, 3, 1, 0)
        else:
            # OHWI contiguous (OIHW in channels_last memory order), viewed as HWIO.
            storage_order, view_order = (3, 0, 1, 2), (1, 2, 3, 0)
        with torch.no_grad():
            stored = parameter.permute(storage_order).contiguous()
            parameter.data = stored.permute(view_order)
        count += 1
    return count


def kernel_is_torch_ordered(layer):
    """Whether ``layer.kernel``'s storage is in the order ``store_kernels_for_torch`` gives."""
    parameter = layer.kernel.value
    if layer.data_format == "channels_first":
        return parameter.permute(3, 2, 0, 1).is_contiguous()
    return parameter.permute(3, 0, 1, 2).is_contiguous()


def _same_padding(length, kernel, stride):
    """``(before, after)`` padding of Keras/TensorFlow ``padding="same"`` along one axis:
    ``ceil(length / stride)`` outputs, the odd pixel of an uneven total at the end."""
    outputs = -(-length // stride)
    total = max(0, (outputs - 1) * stride + kernel - length)
    return total // 2, total - total // 2


class _Convolution:
    """Replacement ``convolution_op`` of one ``Conv2D`` (see the module docstring):
    ``[N, H, W, in] x [kh, kw, in, out] -> [N, H', W', out]`` (channels_last) or
    ``[N, in, H, W] x [kh, kw, in, out] -> [N, out, H', W']`` (channels_first)."""

    def __init__(self, layer):
        self.strides = tuple(int(s) for s in layer.strides)
        self.kernel_size = tuple(int(k) for k in layer.kernel_size)
        self.same = layer.padding == "same"
        self.channels_last = layer.data_format == "channels_last"
        # A strided 1x1 convolution reads only every stride-th pixel (and "same" pads none).
        self.pointwise_strided = self.kernel_size == (1, 1) and self.strides != (1, 1)

    def __call__(self, inputs, kernel, bias=None, subsample=False):
        """``subsample``: a strided 1x1 convolution of channels_first inputs runs as a
        stride-1 convolution of the subsampled input (see :func:`_conv2d_training`)."""
        if not isinstance(kernel, torch.Tensor):
            kernel = keras.ops.convert_to_tensor(kernel)
        if not isinstance(inputs, torch.Tensor):
            inputs = keras.ops.convert_to_tensor(inputs)
        spatial = (1, 2) if self.channels_last else (2, 3)
        padding = (0, 0)
        if self.same:
            (top, bottom), (left, right) = (
                _same_padding(inputs.shape[axis], k, s)
                for axis, k, s in zip(spatial, self.kernel_size, self.strides, strict=True)
            )
            if top == bottom and left == right:
                padding = (top, left)
            elif self.channels_last:  # uneven: pad explicitly (F.pad lists the last axis first)
                inputs = F.pad(inputs, (0, 0, left, right, top, bottom))
            else:
                inputs = F.pad(inputs, (left, right, top, bottom))
        if self.channels_last:
            # [N, C, H, W] view in channels_last memory format
            inputs = inputs.permute(0, 3, 1, 2)
        strides = self.strides
        if subsample and self.pointwise_strided and not self.channels_last:
            # [N, C, H, W] -> [N, C, ceil(H / sh), ceil(W / sw)], the pixels the kernel reads
            inputs = inputs[:, :, :: strides[0], :: strides[1]].contiguous()
            strides = (1, 1)
        outputs = F.conv2d(
            inputs,
            kernel.permute(3, 2, 0, 1),  # [out, in, kh, kw] view of the stored kernel
            bias,
            stride=strides,
            padding=padding,
        )
        if self.channels_last:
            return outputs.permute(0, 2, 3, 1)  # [N, H', W', out], contiguous
        return outputs


def use_torch_convolutions(layers):
    """Gives every plain ``Conv2D`` among ``layers`` the convolution above and a ``call``
    that runs :func:`_conv2d_inference` on eager tensors. Dilated or grouped convolutions,
    subclasses with their own ``convolution_op`` or ``call`` and LoRA-wrapped kernels keep
    Keras' convolution.

    Returns:
        The number of layers changed.
    """
    from keras_retinanet.fast._layers import layer_list, set_convolution_ops, set_layer_calls

    layers = layer_list(layers)
    count = set_convolution_ops(layers, _Convolution)
    set_layer_calls(
        [layer for layer in layers if isinstance(vars(layer).get("convolution_op"), _Convolution)],
        keras.layers.Conv2D,
        _Conv2DCall,
    )
    return count


class _Conv2DCall:
    """Replacement ``call`` of a ``Conv2D`` with :class:`_Convolution`: Keras' ``Conv2D.call``
    written with torch directly for eager tensors (:func:`_conv2d_inference`, or
    :func:`_conv2d_training` in a training call that autograd records), Keras' own ``call``
    while ``torch.compile`` traces."""

    def __init__(self, layer):
        self._layer = weakref.ref(layer)
        self._keras_call = type(layer).call

    def __call__(self, inputs):
        layer = self._layer()
        if torch.compiler.is_compiling() or not isinstance(inputs, torch.Tensor):
            return self._keras_call(layer, inputs)
        if _records_gradient(inputs, layer.kernel.value) and training_in_call_context():
            return _conv2d_training(layer, inputs)
        return _conv2d_inference(layer, inputs)


def _records_gradient(*tensors):
    """Whether autograd records an operation on ``tensors``."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _conv2d_training(layer, inputs):
    """Keras' ``Conv2D.call`` with the bias added inside the convolution: its gradient then
    comes out of the convolution's backward, not from a separate reduction over the output
    gradient (one pass over the largest feature maps per layer). Equal to the separate
    addition up to float rounding (oneDNN adds the bias inside its kernel), so inference
    keeps :func:`_conv2d_inference`'s bit-identical order.

    A strided 1x1 convolution on channels_first inputs (ResNet50's stage entries, two per
    stage) runs as a 1x1 convolution of the subsampled input: the same products, and
    oneDNN's stride-1 gradient plus the scatter back took about half the time of its strided
    gradient on a 2-core CPU (ResNet50's train step at 512x512, batch 2: about 3% less).
    For channels_last the strided kernel was the faster one and is kept."""
    bias = layer.bias.value if layer.use_bias else None
    outputs = layer.convolution_op(inputs, layer.kernel.value, bias, subsample=True)
    return layer.activation(outputs)


def use_torch_batch_normalization(layers):
    """Gives every ``BatchNormalization`` among ``layers`` (not subclasses with their own
    ``call``) a ``call`` that trains with torch's own batch normalization
    (:class:`_BatchNormalizationCall`).

    Returns:
        The number of layers changed.
    """
    from keras_retinanet.fast._layers import set_layer_calls

    return set_layer_calls(layers, keras.layers.BatchNormalization, _BatchNormalizationCall)


class _BatchNormalizationCall:
    """Replacement ``call`` of one ``BatchNormalization``: a float32 training call runs
    ``F.batch_norm(training=True)``, Keras' inference and everything else runs Keras' own
    ``call``.

    In training Keras computes the batch's moments and the normalisation with about ten
    ``keras.ops`` (mean, squared difference, mean, rsqrt, products, sums), each its own pass
    over the activation, and autograd differentiates them one by one; torch's batch
    normalization is one kernel each way. The outputs are Keras' up to float rounding (the
    sums run in another order). The moving averages get Keras' update,
    ``moving * momentum + batch * (1 - momentum)``, from the batch's mean and *biased*
    variance: torch's kernel writes the batch mean and the unbiased variance (``n - 1``) into
    ``running_mean``/``running_var`` buffers passed with ``momentum=1`` (``(1 - 1) * 0 +
    1 * value``, exactly the value), and the variance is rescaled by ``(n - 1) / n``.
    """

    def __init__(self, layer):
        self._layer = weakref.ref(layer)
        self._keras_call = type(layer).call

    def __call__(self, inputs, training=None, mask=None):
        layer = self._layer()
        if (
            not uses_batch_statistics(layer, training, mask)
            or not isinstance(inputs, torch.Tensor)
            or inputs.dtype != torch.float32
            or inputs.device.type == "meta"
            or layer.compute_dtype != "float32"
            or layer.moving_mean.dtype != "float32"
            or torch.compiler.is_compiling()
        ):
            return self._keras_call(layer, inputs, training=training, mask=mask)
        axis = layer.axis % inputs.ndim
        channels = inputs.shape[axis]
        count = inputs.numel() // max(channels, 1)  # values per channel
        if count < 2:  # torch refuses one value per channel; Keras' variance is 0 there
            return self._keras_call(layer, inputs, training=training, mask=mask)
        # [N, ..., C, ...] -> [N, C, ...]: for channels_last a view in channels_last memory
        # format, which torch's kernel reads as it lies.
        x = inputs if axis == 1 else inputs.movedim(axis, 1)
        mean = torch.zeros(channels, dtype=torch.float32, device=inputs.device)
        variance = torch.zeros_like(mean)
        outputs = F.batch_norm(
            x,
            mean,
            variance,
            weight=layer.gamma.value if layer.scale else None,
            bias=layer.beta.value if layer.center else None,
            training=True,
            momentum=1.0,
            eps=layer.epsilon,
        )
        with torch.no_grad():
            # unbiased -> biased, as keras.ops.moments (not in place: autograd saved it)
            variance = variance * ((count - 1) / count)
            update_moving_statistics(layer, mean, variance, "float32")
        return outputs if axis == 1 else outputs.movedim(1, axis)


def _bias_shape(layer):
    return (1, 1, 1, -1) if layer.data_format == "channels_last" else (1, -1, 1, 1)


def _conv2d_inference(layer, inputs, **unused):
    """Keras' ``Conv2D.call``: convolution, bias added (in place: the convolution's output is
    fresh, and the additions are the same), activation (a ReLU in place too, unless autograd
    may need the values)."""
    outputs = layer.convolution_op(inputs, layer.kernel.value)
    if layer.use_bias:
        outputs.add_(layer.bias.value.reshape(_bias_shape(layer)))
    if layer.activation is keras.activations.relu:
        return relu_in_place(outputs)
    return layer.activation(outputs)


def _batch_normalization_inference(layer, inputs, **unused):
    """Keras' ``BatchNormalization.call(training=False)`` for float32 inputs, then its torch
    ``batch_normalization``: ``(x - mean) * (rsqrt(variance + epsilon) * gamma) + beta``, in the
    same order of operations."""
    mean, factor, offset = _batch_normalization_terms(layer, inputs.ndim)
    return inputs.subtract(mean).mul_(factor).add_(offset)


def _batch_normalization_terms(layer, ndim):
    """``(mean, rsqrt(variance + epsilon) * gamma, beta)``, each shaped to broadcast along the
    layer's axis of a rank-``ndim`` input."""
    shape = [1] * ndim
    shape[layer.axis] = -1
    mean = layer.moving_mean.value.reshape(shape)
    variance = layer.moving_variance.value.reshape(shape)
    scale = layer.gamma.value.reshape(shape) if layer.scale else torch.ones_like(variance)
    offset = layer.beta.value.reshape(shape) if layer.center else torch.zeros_like(mean)
    return mean, variance.add(layer.epsilon).rsqrt_().mul(scale), offset


def _relu(layer, inputs, **unused):
    return F.relu(inputs)


def _may_overwrite(donated, tensor):
    """Whether ``tensor``, donated by the caller, may be written in place: autograd may need
    the values of a tensor that requires grad (an inference call with grad enabled)."""
    return donated and isinstance(tensor, torch.Tensor) and not tensor.requires_grad


def _batch_normalization_donated(layer, donated, inputs, **kwargs):
    """:func:`_batch_normalization_inference` written into ``inputs`` when it is donated."""
    if not _may_overwrite(donated[0], inputs):
        return _batch_normalization_inference(layer, inputs, **kwargs)
    mean, factor, offset = _batch_normalization_terms(layer, inputs.ndim)
    return inputs.sub_(mean).mul_(factor).add_(offset)


def _relu_donated(layer, donated, inputs, **unused):
    """ReLU written into ``inputs`` when it is donated."""
    return relu_in_place(inputs) if _may_overwrite(donated[0], inputs) else F.relu(inputs)


def relu_in_place(x):
    """``relu(x)`` written into ``x`` (which no one else may hold), unless autograd may need
    ``x``; the same values as ``F.relu``."""
    return torch.relu_(x) if not x.requires_grad else F.relu(x)


def _add_donated(layer, donated, inputs, **unused):
    """Keras' ``Add``, ``((x0 + x1) + x2) + ...``, accumulated into ``x0`` or, with two inputs,
    ``x1`` (addition commutes exactly) when that input is donated and has the result's shape
    and dtype."""
    return _add_into(inputs, lambda index: _may_overwrite(donated[index], inputs[index]))


def _add_into(inputs, may_overwrite):
    """``((x0 + x1) + x2) + ...``, accumulated into ``x0`` or, with two inputs, ``x1`` when
    ``may_overwrite(index)`` and that input has the result's shape and dtype; else a new
    tensor."""
    candidates = [0, 1] if len(inputs) == 2 else [0]
    same = all(x.shape == inputs[0].shape and x.dtype == inputs[0].dtype for x in inputs)
    for index in candidates:
        if same and may_overwrite(index):
            output = inputs[index].add_(inputs[1 - index])
            for x in inputs[2:]:
                output = output.add_(x)
            return output
    output = inputs[0]
    for x in inputs[1:]:
        output = torch.add(output, x)
    return output


def donating_function(layer):
    """``(layer, donated, *args, **kwargs) -> outputs``, the in-place version of ``layer``'s
    float32 eager inference, or ``None``. ``donated`` holds one flag per input tensor (in the
    order of the flattened call arguments): whether the caller holds its only reference, so
    that it may be overwritten. The outputs equal :func:`inference_function`'s bit for bit.
    The caller has made the same checks as for :func:`inference_function`."""
    if isinstance(layer, keras.layers.BatchNormalization):
        return _batch_normalization_donated
    if isinstance(layer, keras.layers.Activation) and layer.activation is keras.activations.relu:
        return _relu_donated
    if isinstance(layer, keras.layers.Add):
        return _add_donated
    return None


def _may_overwrite_in_training(donated, tensor):
    """Whether ``tensor``, donated by the caller (no gradient formula reads it back), may be
    written in place in training: not a view. An in-place write into a view (the
    channels_last batch normalization's output is one) makes autograd copy the whole base
    gradient back in the backward pass, which costs more than the write saves."""
    return donated and isinstance(tensor, torch.Tensor) and tensor._base is None


def _relu_donated_training(layer, donated, inputs, **unused):
    """ReLU written into ``inputs`` when it is donated (in training too: the caller donates
    only tensors that no gradient formula reads back; ``relu_`` records ReLU's gradient)."""
    if _may_overwrite_in_training(donated[0], inputs):
        return torch.relu_(inputs)
    return F.relu(inputs)


def _add_donated_training(layer, donated, inputs, **unused):
    """:func:`_add_donated` for training: ``add_`` records the sum's gradient, and the caller
    donates only tensors that no gradient formula reads back."""
    return _add_into(
        inputs, lambda index: _may_overwrite_in_training(donated[index], inputs[index])
    )


def training_donating_function(layer):
    """``(layer, donated, *args, **kwargs) -> outputs``, the in-place version of ``layer``'s
    float32 eager training call, or ``None``: ReLU and ``Add`` (see
    :func:`donating_function`)."""
    if isinstance(layer, keras.layers.Activation) and layer.activation is keras.activations.relu:
        return _relu_donated_training
    if isinstance(layer, keras.layers.Add):
        return _add_donated_training
    return None


def direct_calls_allowed(layer):
    """Whether calling ``layer.call`` directly skips nothing that ``Layer.__call__`` would do
    on PyTorch here: no forward hooks on the module or globally, no autocast."""
    if torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda"):
        return False
    for name in ("_forward_hooks", "_forward_pre_hooks"):
        if getattr(layer, name, None):
            return False
    module = torch.nn.modules.module
    for name in ("_global_forward_hooks", "_global_forward_pre_hooks"):
        if getattr(module, name, None):
            return False
    return True


def inference_function(layer):
    """``(layer, inputs, **call_kwargs) -> outputs`` computing ``layer``'s float32 eager
    inference with torch ops (the same ops Keras' torch backend runs, in the same order), or
    ``None`` to use ``layer.call``. Module-level functions, so nothing is built per call.

    Covers ``Conv2D`` layers with this module's convolution (and no LoRA, whose kernel is
    computed per call), ``BatchNormalization`` and ``Activation("relu")``; the caller
    (``graph_runner``) has checked the layer's exact type, dtype policy and inputs.
    """
    if isinstance(layer, keras.layers.Conv2D):
        from keras_retinanet._keras_internals import has_lora

        plain = isinstance(vars(layer).get("convolution_op"), _Convolution)
        return _conv2d_inference if plain and not has_lora(layer) else None
    if isinstance(layer, keras.layers.BatchNormalization):
        return _batch_normalization_inference
    if isinstance(layer, keras.layers.Activation) and layer.activation is keras.activations.relu:
        return _relu
    return None
