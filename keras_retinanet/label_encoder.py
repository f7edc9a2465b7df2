"""Anchor matching and regression targets for training (docs/numerics.md, "Training targets")."""

import keras
import numpy as np
from keras import ops

from keras_retinanet.anchors import AnchorGenerator
from keras_retinanet.box_coding import BoxCoder
from keras_retinanet.boxes import center_to_corners, pairwise_iou
from keras_retinanet.device_constants import DeviceConstants, size_key
from keras_retinanet.validation import any_true, is_concrete

#: Class-target codes for anchors that are not positives.
NEGATIVE = -1.0
IGNORE = -2.0


@keras.saving.register_keras_serializable(package="keras_retinanet")
class LabelEncoder:
    """Turns padded ground truth into per-anchor training targets.

    Every anchor is matched to the ground-truth box of highest IoU: positive when that IoU is
    ``>= positive_threshold``, negative when ``< negative_threshold``, ignored in between
    (0.5 / 0.4: the paper's and keras.io's values). Written in ``keras.ops`` with static shapes,
    so it runs inside a compiled train step on every backend.

    Args:
        anchor_generator: the model's ``AnchorGenerator``.
        box_coder: the ``BoxCoder`` whose ``encode`` gives the box targets.
        positive_threshold: minimum IoU of a positive anchor.
        negative_threshold: IoU below which an anchor is background.
    """

    def __init__(
        self,
        *,
        anchor_generator=None,
        box_coder=None,
        positive_threshold=0.5,
        negative_threshold=0.4,
    ):
        self.anchor_generator = anchor_generator or AnchorGenerator()
        self.box_coder = box_coder or BoxCoder()
        self.positive_threshold = float(positive_threshold)
        self.negative_threshold = float(negative_threshold)
        # Anchors per (input size, device) for eager train steps (see device_constants.py).
        self._anchors = DeviceConstants()
        if not 0.0 <= self.negative_threshold <= self.positive_threshold <= 1.0:
            raise ValueError(
                "thresholds must satisfy 0 <= negative_threshold <= positive_threshold <= 1, got "
                f"negative_threshold={negative_threshold}, positive_threshold={positive_threshold}"
            )

    def encode(self, image_shape, gt_boxes, gt_classes):
        """Training targets for a batch.

        Args:
            image_shape: ``(H, W)`` of the (padded) network input the anchors are laid on.
            gt_boxes: ``[B, M, 4]`` ground-truth corners ``[x1, y1, x2, y2]`` in input pixels.
            gt_classes: ``[B, M]`` class ids; rows with a negative id are padding.

        Returns:
            ``[B, A, 5]`` float32: ``[..., :4]`` box targets (``BoxCoder.encode`` of the
            matched box; zeros for non-positive anchors) and ``[..., 4]`` the class target:
            the class id for positives, ``-1`` for negatives, ``-2`` for ignored anchors.

        Ground truth is matched as given, on every backend and inside compiled steps:

        * boxes are not clipped: a box partly outside the input matches the anchors it
          overlaps (its target reaches past the border); a box entirely outside the input or
          with zero width or height overlaps no anchor, so it only adds background;
        * a row with a NaN or Inf coordinate is treated as padding;
        * an image without any real row (no objects) gets all anchors negative, and an empty
          batch (``B = 0``) gives ``[0, A, 5]``.

        With concrete inputs (NumPy arrays or eager tensors) a non-padding row with a NaN or
        Inf coordinate, or inverted (``x2 < x1`` or ``y2 < y1``, typically ``[x, y, w, h]``
        boxes passed as corners), raises ``ValueError`` instead.

        Raises:
            ValueError: for a malformed ``image_shape``, ``gt_boxes`` or ``gt_classes``
                shape, or the concrete-value checks above.
        """
        try:
            if len(image_shape) != 2:
                raise TypeError
        except TypeError:
            raise ValueError(f"image_shape must be (height, width), got {image_shape!r}") from None
        gt_boxes = ops.convert_to_tensor(gt_boxes, dtype="float32")
        gt_classes = ops.cast(ops.convert_to_tensor(gt_classes), "float32")
        if len(gt_boxes.shape) != 3 or gt_boxes.shape[-1] != 4:
            raise ValueError(f"gt_boxes must be [batch, boxes, 4], got shape {gt_boxes.shape}")
        if len(gt_classes.shape) != 2:
            raise ValueError(f"gt_classes must be [batch, boxes], got shape {gt_classes.shape}")
        for axis in (0, 1):
            a, b = gt_boxes.shape[axis], gt_classes.shape[axis]
            if a is not None and b is not None and a != b:
                raise ValueError(
                    f"gt_classes must be [batch, boxes] matching gt_boxes [batch, boxes, 4], got "
                    f"shapes {tuple(gt_classes.shape)} and {tuple(gt_boxes.shape)}"
                )
        height, width = image_shape
        anchors = self._anchors.get(  # [A, 4] cxcywh
            size_key(height, width), gt_boxes, lambda: self.anchor_generator(height, width)
        )
        batch = ops.shape(gt_boxes)[0]
        num_anchors = ops.shape(anchors)[0]
        if gt_boxes.shape[0] == 0 or gt_boxes.shape[1] == 0:
            # An empty batch, or no boxes at all in this batch: everything is background.
            targets = ops.zeros((batch, num_anchors, 4), "float32")
            classes = ops.full((batch, num_anchors, 1), NEGATIVE, "float32")
            return ops.concatenate([targets, classes], axis=-1)
        real = gt_classes >= 0.0  # [B, M]
        finite = ops.all(ops.isfinite(gt_boxes), axis=-1)  # [B, M]
        if is_concrete(gt_boxes) and is_concrete(gt_classes):
            inverted = ops.logical_or(
                gt_boxes[..., 2] < gt_boxes[..., 0], gt_boxes[..., 3] < gt_boxes[..., 1]
            )
            bad = ops.logical_and(real, ops.logical_or(ops.logical_not(finite), inverted))
            if any_true(bad):
                _raise_bad_rows(ops.convert_to_numpy(gt_boxes), ops.convert_to_numpy(real))
        gt_boxes = ops.where(finite[..., None], gt_boxes, 0.0)
        valid = ops.logical_and(real, finite)  # [B, M]
        anchor_corners = center_to_corners(anchors)[None]  # [1, A, 4]
        iou = pairwise_iou(anchor_corners, gt_boxes)  # [B, A, M]
        iou = ops.where(valid[:, None, :], iou, -1.0)
        max_iou = ops.max(iou, axis=-1)  # [B, A]
        matched = ops.argmax(iou, axis=-1)  # [B, A]
        matched_boxes = ops.take_along_axis(gt_boxes, matched[..., None], axis=1)  # [B, A, 4]
        matched_classes = ops.take_along_axis(gt_classes, matched, axis=1)  # [B, A]
        positive = max_iou >= self.positive_threshold
        negative = max_iou < self.negative_threshold
        classes = ops.where(
            positive, matched_classes, ops.where(negative, NEGATIVE, IGNORE)
        )  # [B, A]
        # Only positives have a box target; elsewhere the matched box may be a padding row
        # whose log-size target would be -inf.
        safe_boxes = ops.where(positive[..., None], matched_boxes, anchor_corners)
        targets = self.box_coder.encode(safe_boxes, anchors)
        targets = ops.where(positive[..., None], targets, 0.0)
        return ops.concatenate([targets, classes[..., None]], axis=-1)

    def get_config(self):
        return {
            "anchor_generator": keras.saving.serialize_keras_object(self.anchor_generator),
            "box_coder": keras.saving.serialize_keras_object(self.box_coder),
            "positive_threshold": self.positive_threshold,
            "negative_threshold": self.negative_threshold,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("anchor_generator", "box_coder"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


def _raise_bad_rows(boxes, real):
    """``ValueError`` naming the first non-padding ``gt_boxes`` row that is NaN/Inf or inverted."""
    for b, m in zip(*np.nonzero(real), strict=True):
        x1, y1, x2, y2 = (float(v) for v in boxes[b, m])
        if not np.isfinite(boxes[b, m]).all():
            raise ValueError(f"gt_boxes[{b}, {m}] has a NaN or Inf coordinate: {boxes[b, m]}")
        if x2 < x1 or y2 < y1:
            raise ValueError(
                f"gt_boxes[{b}, {m}] = {boxes[b, m]} is inverted: corners [x1, y1, x2, y2] need "
                "x1 <= x2 and y1 <= y2 (were [x, y, w, h] boxes passed?)"
            )
