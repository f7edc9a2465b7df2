"""The only place (with ``nms/_*.py``) that imports TensorFlow, JAX or PyTorch.

Each function dispatches on ``keras.backend.backend()`` and imports the matching private
module lazily, so the package imports with any one backend installed.
"""

import importlib

import keras

_MODULES = {"tensorflow": "_tensorflow", "jax": "_jax", "torch": "_torch"}


def _backend_module():
    name = _MODULES.get(keras.backend.backend())
    return None if name is None else importlib.import_module(f"{__name__}.{name}")


def is_concrete_tensor(x):
    """Whether a backend tensor's values are known now (eager, not traced or symbolic)."""
    module = _backend_module()
    return True if module is None else module.is_concrete_tensor(x)


def plain_conv2d_layers(model):
    """``model``'s built ``Conv2D`` layers (recursively) that use Keras' own convolution: not
    a subclass with its own ``convolution_op``, not LoRA-wrapped (a kernel computed per call).
    The per-backend fast paths apply only to these."""
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if (
            isinstance(layer, keras.layers.Conv2D)
            and type(layer).convolution_op is keras.layers.Conv2D.convolution_op
            and isinstance(getattr(layer, "kernel", None), keras.Variable)
            and len(layer.kernel.shape) == 4
        ):
            yield layer


def set_convolution_ops(model, op_class, accept=None):
    """Gives ``model``'s plain ``Conv2D`` layers (see :func:`plain_conv2d_layers`) that are
    undilated and ungrouped, and that ``accept(layer)`` admits, an instance ``convolution_op``
    of ``op_class(layer)``; Keras' ``Conv2D.call`` calls ``self.convolution_op``. A layer whose
    instance already holds another replacement keeps it; one holding an ``op_class`` gets a
    fresh one, so calling this again changes nothing further.

    Returns:
        The number of layers given an ``op_class``.
    """
    count = 0
    for layer in plain_conv2d_layers(model):
        if (
            isinstance(vars(layer).get("convolution_op"), op_class | None)
            and tuple(layer.dilation_rate) == (1, 1)
            and int(getattr(layer, "groups", 1)) == 1
            and (accept is None or accept(layer))
        ):
            object.__setattr__(layer, "convolution_op", op_class(layer))
            count += 1
    return count


def set_layer_calls(model, layer_class, call_class):
    """Gives ``model``'s layers (recursively, ``model`` included) that are ``layer_class`` and
    still run ``layer_class.call`` an instance ``call`` of ``call_class(layer)``; Keras'
    ``Layer.__call__`` calls ``self.call``. Subclasses that define their own ``call`` keep it,
    as does a layer whose instance already holds another replacement; one holding a
    ``call_class`` gets a fresh one, so calling this again changes nothing further.

    Returns:
        The number of layers given a ``call_class``.
    """
    count = 0
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if (
            isinstance(layer, layer_class)
            and type(layer).call is layer_class.call
            and isinstance(vars(layer).get("call"), call_class | None)
        ):
            object.__setattr__(layer, "call", call_class(layer))
            count += 1
    return count


def inference_function(layer):
    """A faster ``(layer, *args, **kwargs) -> outputs`` equivalent of ``layer.call`` for
    float32 eager inference on the active backend, or ``None`` (see ``graph_runner``). Only
    PyTorch has one: its ``keras.ops`` dispatch costs more than a small feature map's
    arithmetic."""
    module = _backend_module()
    function = getattr(module, "inference_function", None)
    return None if function is None else function(layer)


def donating_function(layer):
    """The in-place version of :func:`inference_function` for inputs the caller may give up
    (``(layer, donated, *args, **kwargs) -> outputs``), or ``None``; PyTorch only, where
    eager inference writes every elementwise result into new memory."""
    module = _backend_module()
    function = getattr(module, "donating_function", None)
    return None if function is None else function(layer)


def relu_in_place(x):
    """``relu(x)`` for a tensor ``x`` that no one else holds (a layer's fresh output) in eager
    inference: written into ``x`` where the backend allows it (PyTorch), else ``ops.relu``."""
    module = _backend_module()
    function = getattr(module, "relu_in_place", None)
    return keras.ops.relu(x) if function is None else function(x)


def support_channels_first(model):
    """Makes ``model``'s channels_first ``Conv2D`` layers run where the backend's kernels are
    NHWC only (TensorFlow without a GPU: ``backends._tensorflow.use_nhwc_convolutions``), with
    the same outputs and weights; nothing on the other backends. Layers that hold convolutions
    (``FeaturePyramid``, ``PredictionHead``, the named backbones) call it once built, so they
    run on their own too. Returns the number of layers changed."""
    if keras.backend.backend() != "tensorflow":
        return 0
    return _backend_module().use_nhwc_convolutions(model)


def prepare_layers(model):
    """Makes ``model``'s plain ``Conv2D`` layers (and on JAX its ``MaxPooling2D`` and
    ``BatchNormalization`` layers) run fast on the active backend, with the same outputs and
    weights. Returns the number of layers changed.

    * PyTorch: kernels stored in the order torch's convolution reads
      (``backends._torch.store_kernels_for_torch``), so no kernel is copied per call, and
      the convolution runs on the input as it lies in memory (for channels_last, instead of
      copying it twice; ``backends._torch.use_torch_convolutions``).
    * JAX: 1x1 convolutions as matrix products; on CPU, the kernel gradients of the others as
      one matrix product per kernel tap
      (``backends._jax.use_fast_convolutions``), which XLA:CPU trains much faster; on CPU,
      max pooling as the maximum of strided windows with a gradient of fused elementwise
      passes (``backends._jax_pooling``); in training, batch normalization with its
      closed-form gradient (``backends._jax_normalization``).
    * TensorFlow: channels_first layers convolve in NHWC when there is no GPU
      (:func:`support_channels_first`).
    """
    backend = keras.backend.backend()
    if backend == "torch":
        module = _backend_module()
        module.use_torch_convolutions(model)  # a subset of the layers re-laid below
        return module.store_kernels_for_torch(model)
    if backend == "jax":
        from keras_retinanet.backends import _jax_normalization, _jax_pooling

        return (
            _backend_module().use_fast_convolutions(model)
            + _jax_pooling.use_fast_max_pooling(model)
            + _jax_normalization.use_fast_batch_normalization(model)
        )
    return support_channels_first(model)
