"""Backbones that return the C3, C4, C5 feature maps (strides 8, 16, 32)."""

import os

import keras

#: Layer names of the C3/C4/C5 outputs in ``keras.applications.ResNet50`` (SPEC §1).
RESNET50_FEATURE_LAYERS = ("conv3_block4_out", "conv4_block6_out", "conv5_block3_out")


def resnet50_backbone(*, weights=None, input_shape=(None, None, 3)):
    """ResNet50 feature extractor returning ``[C3, C4, C5]``.

    Args:
        weights: ``None`` (random initialisation; the default, because nothing can be downloaded
            in many training environments), a path to a local weights file for
            ``keras.applications.ResNet50(include_top=False)`` (``.h5`` or ``.weights.h5``), or
            ``"imagenet"`` to download (fails with a clear error when offline).
        input_shape: ``(H, W, 3)``; ``None`` sizes accept any input size.

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


_BACKBONES = {"resnet50": resnet50_backbone}


def register_backbone(name, factory):
    """Make ``RetinaNet(backbone=name)`` build ``factory(weights=..., input_shape=...)``."""
    _BACKBONES[name] = factory


def get_backbone(backbone="resnet50", *, weights=None, input_shape=(None, None, 3)):
    """Returns a backbone model from a registered name or validates a user model.

    A user model must take one image tensor and return exactly three feature maps at strides
    8, 16 and 32 (any channel counts), which is how model zoos plug in their own backbones.
    """
    if isinstance(backbone, str):
        if backbone not in _BACKBONES:
            raise ValueError(
                f"backbone must be one of {sorted(_BACKBONES)} or a keras.Model, got {backbone!r}"
            )
        return _BACKBONES[backbone](weights=weights, input_shape=input_shape)
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
