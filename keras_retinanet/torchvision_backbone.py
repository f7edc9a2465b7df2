"""torchvision's ResNet50 as a Keras backbone returning ``[C3, C4, C5]``.

The layers, their names and their arithmetic follow ``torchvision.models.resnet50`` (v1.5: in
each bottleneck the stride is on the 3x3 convolution), so that a torchvision state dict maps
onto it one tensor per weight (:mod:`keras_retinanet.convert`). Two things differ from
``keras.applications.ResNet50``, whose weights are not interchangeable with these:

* stride-2 convolutions and the max pooling pad symmetrically, as PyTorch's ``padding=k // 2``
  does (Keras' ``"same"`` puts the one extra row and column of an even input at the bottom and
  right), so every stride-2 layer is a ``ZeroPadding2D`` followed by a ``"valid"`` layer;
* the stride of a downsampling bottleneck is on its 3x3 convolution, not on the first 1x1.

Every feature map has size ``ceil(H / stride)``, as in PyTorch. docs/numerics.md, "Model
layout" (torchvision variants) lists the whole layout.
"""

import keras
from keras import layers

from keras_retinanet.backbone import load_weights_file

#: Bottleneck blocks and output channels of the four stages (``layer1`` .. ``layer4``).
STAGES = ((3, 256), (4, 512), (6, 1024), (3, 2048))


def _channel_axis():
    return -1 if keras.config.image_data_format() == "channels_last" else 1


def _conv(x, filters, kernel, strides, name):
    """A bias-free convolution with PyTorch's ``padding=kernel // 2``."""
    padding = kernel // 2
    if strides == 1 or padding == 0:
        # Stride 1: "same" pads kernel // 2 on every side, as PyTorch does. 1x1: no padding.
        mode = "same" if padding else "valid"
    else:
        x = layers.ZeroPadding2D(padding, name=f"{name}_pad")(x)
        mode = "valid"
    return layers.Conv2D(filters, kernel, strides=strides, padding=mode, use_bias=False, name=name)(
        x
    )


def _batch_norm(x, name, epsilon):
    # momentum 0.9 is PyTorch's momentum=0.1 (Keras weighs the running value, PyTorch the new).
    return layers.BatchNormalization(
        axis=_channel_axis(), momentum=0.9, epsilon=epsilon, name=name
    )(x)


def _bottleneck(x, width, out_channels, strides, name, epsilon):
    """torchvision's ``Bottleneck``: 1x1 -> 3x3 (stride) -> 1x1, projection when the shape
    changes, ReLU after the sum."""
    shortcut = x
    if strides != 1 or x.shape[_channel_axis()] != out_channels:
        shortcut = _conv(x, out_channels, 1, strides, f"{name}_downsample_0")
        shortcut = _batch_norm(shortcut, f"{name}_downsample_1", epsilon)
    x = _conv(x, width, 1, 1, f"{name}_conv1")
    x = layers.ReLU(name=f"{name}_relu1")(_batch_norm(x, f"{name}_bn1", epsilon))
    x = _conv(x, width, 3, strides, f"{name}_conv2")
    x = layers.ReLU(name=f"{name}_relu2")(_batch_norm(x, f"{name}_bn2", epsilon))
    x = _conv(x, out_channels, 1, 1, f"{name}_conv3")
    x = _batch_norm(x, f"{name}_bn3", epsilon)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.ReLU(name=f"{name}_out")(x)


def torchvision_resnet50_backbone(
    *, weights=None, input_shape=(None, None, 3), batch_norm_epsilon=1e-5
):
    """torchvision's ResNet50 feature extractor returning ``[C3, C4, C5]``.

    Layer names are torchvision's module paths with ``_`` for ``.`` (``layer2_0_conv2``,
    ``layer2_0_downsample_1``), which is how :func:`keras_retinanet.convert.from_torchvision`
    finds each tensor.

    Args:
        weights: ``None`` (random initialisation) or a local ``.weights.h5`` file saved from
            this backbone. ImageNet weights come with a converted torchvision checkpoint.
        input_shape: ``(H, W, 3)`` (``(3, H, W)`` when ``keras.config.image_data_format()``
            is channels first); ``None`` sizes accept any input size.
        batch_norm_epsilon: PyTorch's ``BatchNorm2d`` default (1e-5). torchvision loads its v1
            COCO RetinaNet with 0 (``overwrite_eps``), which the converter sets.

    Returns:
        A functional ``keras.Model`` mapping ``[N, H, W, 3]`` images normalised the torchvision
        way (RGB in ``[0, 1]``, minus the ImageNet mean, over its standard deviation) to
        ``[C3 [N, H/8, W/8, 512], C4 [N, H/16, W/16, 1024], C5 [N, H/32, W/32, 2048]]``
        (sizes rounded up).
    """
    if weights == "imagenet":
        raise ValueError(
            "torchvision_resnet50 has no ImageNet download; convert a torchvision checkpoint "
            "with keras_retinanet.convert.from_torchvision or use weights=None"
        )
    inputs = keras.Input(tuple(input_shape), name="images")
    x = _conv(inputs, 64, 7, 2, "conv1")
    x = layers.ReLU(name="relu")(_batch_norm(x, "bn1", batch_norm_epsilon))
    # PyTorch pads the max pooling with -inf; after the ReLU every value is >= 0, so zero
    # padding gives the same maxima.
    x = layers.ZeroPadding2D(1, name="maxpool_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="valid", name="maxpool")(x)
    features = []
    for stage, (blocks, out_channels) in enumerate(STAGES, start=1):
        for block in range(blocks):
            strides = 2 if stage > 1 and block == 0 else 1
            x = _bottleneck(
                x,
                out_channels // 4,
                out_channels,
                strides,
                f"layer{stage}_{block}",
                batch_norm_epsilon,
            )
        features.append(x)
    model = keras.Model(inputs, features[1:], name="torchvision_resnet50_backbone")
    return load_weights_file(model, weights)
