"""The speed layer: per-backend fast paths applied from outside to layers the library built.

The model code (``backbone.py``, ``fpn.py``, ``heads.py``, ``model.py``) is plain Keras.
When a ``RetinaNet`` is built with fast paths on (the default; see :mod:`keras_retinanet.config`),
:func:`apply_fast_paths` gives some of *its own* layers faster methods with the same weights
and the same results (bit-identical, or equal up to float rounding where the order of a sum
changes). It never touches a layer it was told to leave alone: ``RetinaNet`` passes a backbone
the user handed in as ``exclude`` unless that model was built with
``fast_user_backbone=True``.

Every path here was measured faster on a CPU only, so a path is applied only when every
variable of the layers it would change lives on the CPU (the variables' device, not the
default backend); on an accelerator nothing is applied.

The paths, by backend:

* all backends: a functional backbone runs through :class:`graph_runner.ReleasingCall`,
  which frees each activation after its last use (eager execution) and, in eager
  inference, calls simple built-in layers without ``Layer.__call__``'s bookkeeping.
* PyTorch (``_torch.py``): ``Conv2D`` kernels stored in the memory order torch's
  convolution reads (no kernel copy per call); convolutions on the input as it lies in
  memory (no two copies for channels_last); ``Conv2D.call`` written with torch directly;
  in eager inference, batch normalization, ReLU and residual sums written into the
  intermediate they replace when nothing else holds it. In training: batch normalization
  with torch's own kernel (one pass each way instead of about ten ``keras.ops``), the
  convolution's bias added inside the convolution, the backbone's simple layers called
  directly, and its ReLUs and residual sums written in place where no gradient formula
  reads the tensor they overwrite.
* JAX (``_jax_convolution.py``, ``_jax_pooling.py``, ``_jax_normalization.py``): 1x1
  convolutions as matrix products and the kernel gradient of the others as one product per
  kernel tap; max pooling as the maximum of strided windows with a fused gradient; batch
  normalization trained with its closed-form gradient (a custom VJP).
* TensorFlow (``_tensorflow.py``): channels_first convolutions computed in NHWC, the only
  layout of TensorFlow's CPU kernels.

Measurements are in ``BENCHMARKS.md``; ``nox -s bench`` repeats them.
"""

import keras

from keras_retinanet import _keras_internals as internals
from keras_retinanet.backends import variable_device_kinds


def _owned_layers(root, exclude):
    """``root``'s layers (recursively, ``root`` included) minus everything inside ``exclude``."""
    skipped = {id(layer) for model in exclude for layer in internals.sublayers(model)}
    return [layer for layer in internals.sublayers(root) if id(layer) not in skipped]


def apply_fast_paths(root, *, exclude=()):
    """Gives ``root``'s built layers, except those in (or nested in) ``exclude``, the active
    backend's fast paths (see the module docstring).

    Call it once the layers are built (``RetinaNet.build`` does). Calling it again changes
    nothing further. It is also how a standalone ``FeaturePyramid`` or ``PredictionHead`` gets
    the fast paths.

    Args:
        root: a built Keras layer or model whose layers the library created.
        exclude: layers or models to leave exactly as they are (a user's backbone).

    Returns:
        ``{path name: number of layers changed}``; empty when the variables are not all on
        the CPU.
    """
    layers = _owned_layers(root, exclude)
    variables = [v for layer in layers for v in layer.weights]
    if not variables or variable_device_kinds(variables) != {"cpu"}:
        return {}
    report = {}
    backbones = [
        layer
        for layer in layers
        if isinstance(layer, keras.Model) and internals.functional_graph(layer) is not None
    ]
    if backbones:
        from keras_retinanet.fast.graph_runner import ReleasingCall

        for model in backbones:
            if "call" not in vars(model):
                internals.replace_method(model, "call", ReleasingCall(model))
        report["releasing_graph_runner"] = len(backbones)
    backend = keras.backend.backend()
    if backend == "torch":
        from keras_retinanet.fast import _torch

        report["torch_convolutions"] = _torch.use_torch_convolutions(layers)
        report["torch_kernel_layout"] = _torch.store_kernels_for_torch(layers)
        report["torch_batch_normalization"] = _torch.use_torch_batch_normalization(layers)
    elif backend == "jax":
        from keras_retinanet.fast import _jax_convolution, _jax_normalization, _jax_pooling

        report["jax_convolutions"] = _jax_convolution.use_fast_convolutions(layers)
        report["jax_max_pooling"] = _jax_pooling.use_fast_max_pooling(layers)
        report["jax_batch_normalization"] = _jax_normalization.use_fast_batch_normalization(layers)
    elif backend == "tensorflow":
        from keras_retinanet.fast import _tensorflow

        report["tensorflow_nhwc_convolutions"] = _tensorflow.use_nhwc_convolutions(layers)
    return {name: count for name, count in report.items() if count}


def layers_with_fast_paths(root):
    """``[(layer path name, replaced method names)]`` for every layer of ``root`` (recursively)
    that holds a replacement method: what :func:`apply_fast_paths` changed."""
    found = []
    for layer in internals.sublayers(root):
        names = internals.replaced_methods(layer)
        if names:
            found.append((getattr(layer, "path", None) or layer.name, names))
    return found


def channels_first_needs_fast_paths(root):
    """Whether ``root`` (recursively) holds built channels_first convolutions without the NHWC
    fast path that would run on TensorFlow's CPU kernels, which are NHWC only."""
    if keras.backend.backend() != "tensorflow":
        return False
    convs = [
        layer
        for layer in internals.sublayers(root)
        if isinstance(layer, keras.layers.Conv2D)
        and layer.built
        and layer.data_format == "channels_first"
        and "convolution_op" not in vars(layer)
    ]
    if not convs:
        return False
    return variable_device_kinds([v for layer in convs for v in layer.weights]) == {"cpu"}
