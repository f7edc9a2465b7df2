"""Backbones that return the C3, C4, C5 feature maps (strides 8, 16, 32)."""

import contextlib
import os

import keras

from keras_retinanet.layout import standardize_data_format

#: Layer names of the C3/C4/C5 outputs in ``keras.applications.ResNet50``
#: (docs/numerics.md, "Model layout").
RESNET50_FEATURE_LAYERS = ("conv3_block4_out", "conv4_block6_out", "conv5_block3_out")


def resnet50_backbone(*, weights=None, input_shape=(None, None, 3)):
    """ResNet50 feature extractor returning ``[C3, C4, C5]``.

    Args:
        weights: ``None`` (random initialisation; the default, because nothing can be downloaded
            in many training environments), a path to a local weights file for
            ``keras.applications.ResNet50(include_top=False)`` (``.h5`` or ``.weights.h5``), or
            ``"imagenet"`` to download (fails with a clear error when offline).
        input_shape: ``(H, W, 3)`` (``(3, H, W)`` when ``keras.config.image_data_format()``
            is channels first); ``None`` sizes accept any input size.

    Returns:
        A functional ``keras.Model`` mapping ``[N, H, W, 3]`` caffe-preprocessed images to
        ``[C3 [N, H/8, W/8, 512], C4 [N, H/16, W/16, 1024], C5 [N, H/32, W/32, 2048]]``
        (sizes rounded up).
    """
    if weights is not None and weights != "imagenet":
        weights = os.fspath(weights)
        if not os.path.isfile(weights):
            raise ValueError(
                f"weights must be None, 'imagenet' or an existing file, got {weights!r}"
            )
    try:
        resnet = keras.applications.ResNet50(
            include_top=False, weights=weights, input_shape=tuple(input_shape)
        )
    except Exception as err:  # network errors surface as many exception types
        if weights == "imagenet":
            raise RuntimeError(
                "Could not download the ImageNet ResNet50 weights (no network?). Download "
                "'resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5' elsewhere and pass its "
                "local path as weights=..., or use weights=None."
            ) from err
        raise
    outputs = [resnet.get_layer(name).output for name in RESNET50_FEATURE_LAYERS]
    return keras.Model(resnet.inputs, outputs, name="resnet50_backbone")


@contextlib.contextmanager
def image_data_format(data_format):
    """Temporarily sets ``keras.config.image_data_format()`` (how backbones, which read the
    global setting as ``keras.applications`` do, are built in a given layout)."""
    previous = keras.config.image_data_format()
    keras.config.set_image_data_format(standardize_data_format(data_format))
    try:
        yield
    finally:
        keras.config.set_image_data_format(previous)


def _channel_axis():
    return -1 if keras.config.image_data_format() == "channels_last" else 1


def _conv_bn(x, filters, kernel, strides, name, activation=True):
    x = keras.layers.Conv2D(
        filters, kernel, strides=strides, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    x = keras.layers.BatchNormalization(
        axis=_channel_axis(), momentum=0.9, epsilon=1e-5, name=f"{name}_bn"
    )(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x) if activation else x


def _basic_block(x, filters, strides, name):
    """ResNet basic block: two 3x3 convs with a projection shortcut when the shape changes."""
    shortcut = x
    if strides != 1 or x.shape[_channel_axis()] != filters:
        shortcut = _conv_bn(x, filters, 1, strides, f"{name}_proj", activation=False)
    x = _conv_bn(x, filters, 3, strides, f"{name}_1")
    x = _conv_bn(x, filters, 3, 1, f"{name}_2", activation=False)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.ReLU(name=f"{name}_out")(x)


def compact_backbone(*, weights=None, input_shape=(None, None, 3), widths=(32, 64, 128, 256)):
    """A slim ResNet (basic blocks, ~1.2 M parameters) returning ``[C3, C4, C5]``.

    Meant for CPU training from scratch on small images (the demo trains it in minutes on two
    cores), where ResNet50's 23 M parameters are far more than the data needs. Stem
    ``3x3/2``, then one basic block per stage at strides 4, 8, 16, 32 with ``widths`` channels.

    Args:
        weights: ``None`` or a local ``.weights.h5`` file saved from this backbone.
        input_shape: ``(H, W, 3)`` (``(3, H, W)`` when channels first).
        widths: channels of the stride-4, 8, 16 and 32 stages.

    Returns:
        A ``keras.Model`` mapping ``[N, H, W, 3]`` to
        ``[C3 [N, H/8, W/8, widths[1]], C4 [.., widths[2]], C5 [.., widths[3]]]``.
    """
    if weights == "imagenet":
        raise ValueError("the compact backbone has no ImageNet weights; use weights=None")
    inputs = keras.Input(tuple(input_shape), name="images")
    # Caffe-mode inputs span about [-125, 150]; rescale so the stem starts well conditioned.
    x = keras.layers.Rescaling(1.0 / 64.0, name="input_scale")(inputs)
    # At least 16 stem channels: narrower 3-channel stride-2 convs crash the backward pass of
    # some oneDNN CPU builds (seen with PyTorch 2.13 and TensorFlow 2.21).
    x = _conv_bn(x, max(16, widths[0] // 2), 3, 2, "stem")
    features = []
    for i, width in enumerate(widths):
        x = _basic_block(x, width, 2, f"stage{i + 2}")
        features.append(x)
    model = keras.Model(inputs, features[1:], name="compact_backbone")
    return load_weights_file(model, weights)


def load_weights_file(model, weights):
    """``model`` with ``weights`` loaded: ``None`` (keep the initialisation) or the path of a
    local ``.weights.h5`` file saved from a model of the same layout (``ValueError`` when it is
    not an existing file)."""
    if weights is not None:
        weights = os.fspath(weights)
        if not os.path.isfile(weights):
            raise ValueError(f"weights must be None or an existing file, got {weights!r}")
        model.load_weights(weights)
    return model


def _torchvision_resnet50(**kwargs):
    # Imported when used: torchvision_backbone itself uses this module's helpers.
    from keras_retinanet.torchvision_backbone import torchvision_resnet50_backbone

    return torchvision_resnet50_backbone(**kwargs)


_BACKBONES = {
    "resnet50": resnet50_backbone,
    "compact": compact_backbone,
    "torchvision_resnet50": _torchvision_resnet50,
}


def register_backbone(name, factory):
    """Make ``RetinaNet(backbone=name)`` build ``factory(weights=..., input_shape=...)``.

    The factory runs with ``keras.config.image_data_format()`` set to the model's layout and
    gets ``input_shape`` in that layout, so one built from default Keras layers follows it.
    """
    _BACKBONES[name] = factory


def get_backbone(backbone="resnet50", *, weights=None, input_shape=None, data_format=None):
    """Returns a backbone model from a registered name or validates a user model.

    A user model must take one image tensor and return exactly three feature maps at strides
    8, 16 and 32 (any channel counts), in the model's ``data_format``; this is how model zoos
    plug in their own backbones.

    Args:
        backbone: a registered name or a ``keras.Model``.
        weights: weights for a named backbone (see :func:`resnet50_backbone`).
        input_shape: image shape without the batch axis; defaults to any size with 3 channels
            in ``data_format``'s layout.
        data_format: ``"channels_last"`` / ``"channels_first"``; ``None`` takes
            ``keras.config.image_data_format()``.
    """
    data_format = standardize_data_format(data_format)
    if input_shape is None:
        input_shape = (None, None, 3) if data_format == "channels_last" else (3, None, None)
    if isinstance(backbone, str):
        if backbone not in _BACKBONES:
            raise ValueError(
                f"backbone must be one of {sorted(_BACKBONES)} or a keras.Model, got {backbone!r}"
            )
        with image_data_format(data_format):
            model = _BACKBONES[backbone](weights=weights, input_shape=input_shape)
        return model
    if not isinstance(backbone, keras.Model):
        raise ValueError(
            f"backbone must be a registered name or a keras.Model, got {type(backbone).__name__}"
        )
    if weights is not None:
        raise ValueError("backbone_weights only applies to named backbones; load them yourself")
    outputs = getattr(backbone, "outputs", None)
    if outputs is not None and len(outputs) != 3:
        raise ValueError(
            f"backbone must return 3 feature maps (C3, C4, C5), got {len(outputs)} outputs"
        )
    return backbone
