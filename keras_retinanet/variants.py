"""Named configurations of :class:`~keras_retinanet.RetinaNet` beyond the keras.io default.

torchvision's ``retinanet_resnet50_fpn`` (v1) and ``retinanet_resnet50_fpn_v2`` (v2) are the
same classes as the default model with other settings (docs/numerics.md, "torchvision
variants"):

=====================  ======================  ========================  =======================
setting                keras.io (default)      torchvision v1            torchvision v2
=====================  ======================  ========================  =======================
backbone               Keras ResNet50          ``torchvision_resnet50``  ``torchvision_resnet50``
P6 from                C5                      P5                        C5
P6/P7 padding          ``"same"``              symmetric                 symmetric
head hidden layers     conv + ReLU             conv + ReLU               conv, GroupNorm(32), ReLU
anchors                keras.io                ``AnchorGenerator         ``AnchorGenerator
                                               .torchvision()``          .torchvision()``
box coding             variance 0.1/0.2        1, clamp log(1000/16)     1, clamp log(1000/16)
classes                80                      91 (COCO category ids)    91
input                  caffe preprocessing     RGB [0, 1], ImageNet      RGB [0, 1], ImageNet
                                               mean/std                  mean/std
=====================  ======================  ========================  =======================
"""

from keras_retinanet.anchors import AnchorGenerator
from keras_retinanet.box_coding import TORCHVISION_MAX_LOG_SCALE, BoxCoder
from keras_retinanet.model import RetinaNet

#: torchvision's two RetinaNet architectures.
TORCHVISION_VERSIONS = ("v1", "v2")
#: Class slots of torchvision's COCO models: COCO category ids 1..90 plus background 0.
TORCHVISION_COCO_CLASSES = 91
#: torchvision's ``GeneralizedRCNNTransform`` normalisation of RGB images in ``[0, 1]``.
TORCHVISION_IMAGE_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_IMAGE_STD = (0.229, 0.224, 0.225)


def check_torchvision_version(version):
    """``version`` if it is ``"v1"`` or ``"v2"``, else a ``ValueError`` naming both."""
    if version not in TORCHVISION_VERSIONS:
        raise ValueError(
            f"version must be one of {TORCHVISION_VERSIONS} (retinanet_resnet50_fpn, "
            f"retinanet_resnet50_fpn_v2), got {version!r}"
        )
    return version


def torchvision_retinanet(
    *,
    version="v1",
    num_classes=TORCHVISION_COCO_CLASSES,
    data_format=None,
    batch_norm_epsilon=1e-5,
    **kwargs,
):
    """A randomly initialised ``RetinaNet`` laid out as torchvision's RetinaNet ``version``.

    Args:
        version: ``"v1"`` (``retinanet_resnet50_fpn``, COCO box AP 36.4) or ``"v2"``
            (``retinanet_resnet50_fpn_v2``, 41.5).
        num_classes: class slots (91 for torchvision's COCO models, background included).
        data_format: layout of the images (``None``: ``keras.config.image_data_format()``).
        batch_norm_epsilon: epsilon of the backbone's batch normalisation (PyTorch's 1e-5;
            torchvision runs its published v1 COCO weights with 0).
        **kwargs: other ``RetinaNet`` arguments (``fast_paths``, ``name``, ...).

    Returns:
        An unbuilt ``RetinaNet`` whose ``call`` takes ``[N, H, W, 3]`` images normalised as
        torchvision does (:data:`TORCHVISION_IMAGE_MEAN`, :data:`TORCHVISION_IMAGE_STD`).
    """
    check_torchvision_version(version)
    model = RetinaNet(
        num_classes,
        backbone="torchvision_resnet50",
        anchor_generator=AnchorGenerator.torchvision(),
        box_coder=BoxCoder(variance=(1.0, 1.0, 1.0, 1.0), max_log_scale=TORCHVISION_MAX_LOG_SCALE),
        data_format=data_format,
        fpn_p6_input="p5" if version == "v1" else "c5",
        fpn_downsample_padding="symmetric",
        head_norm="group_norm" if version == "v2" else None,
        **kwargs,
    )
    epsilon = float(batch_norm_epsilon)
    if not epsilon >= 0.0:
        raise ValueError(f"batch_norm_epsilon must be >= 0, got {batch_norm_epsilon!r}")
    for layer in model.backbone.layers:
        if hasattr(layer, "moving_variance"):
            # Read at call time; the model is not built yet, so nothing has used it.
            layer.epsilon = epsilon
    return model
