"""RetinaNet object detection for Keras 3 on TensorFlow, JAX and PyTorch.

Set ``KERAS_BACKEND`` before importing; the model is written with ``keras.ops`` only, so the
same weights give the same outputs on every backend.
"""

from keras_retinanet.anchors import AnchorGenerator
from keras_retinanet.backbone import (
    compact_backbone,
    get_backbone,
    register_backbone,
    resnet50_backbone,
)
from keras_retinanet.box_coding import BoxCoder
from keras_retinanet.boxes import center_to_corners, corners_to_center, pairwise_iou
from keras_retinanet.convert import from_torchvision, to_torchvision
from keras_retinanet.cpu_memory import keep_freed_memory
from keras_retinanet.decoder import DecodePredictions, RetinaNetDetector
from keras_retinanet.fpn import FeaturePyramid
from keras_retinanet.heads import PredictionHead, prior_bias
from keras_retinanet.label_encoder import LabelEncoder
from keras_retinanet.losses import RetinaNetLoss
from keras_retinanet.model import RetinaNet
from keras_retinanet.presets import PRESETS, list_presets

__version__ = "0.1.0"

__all__ = [
    "AnchorGenerator",
    "BoxCoder",
    "DecodePredictions",
    "FeaturePyramid",
    "LabelEncoder",
    "PRESETS",
    "PredictionHead",
    "RetinaNet",
    "RetinaNetDetector",
    "RetinaNetLoss",
    "center_to_corners",
    "compact_backbone",
    "corners_to_center",
    "from_torchvision",
    "get_backbone",
    "keep_freed_memory",
    "list_presets",
    "pairwise_iou",
    "prior_bias",
    "register_backbone",
    "resnet50_backbone",
    "to_torchvision",
]
