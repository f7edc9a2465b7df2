"""Encoding of ground-truth boxes against anchors and decoding of predictions.

The formulas are in docs/numerics.md, "Box coding".
"""

import math

import keras
from keras import ops

from keras_retinanet.boxes import center_to_corners, corners_to_center
from keras_retinanet.device_constants import DeviceConstants

#: Box-regression variance of the keras.io example (1 / (10, 10, 5, 5) in Detectron terms).
DEFAULT_BOX_VARIANCE = (0.1, 0.1, 0.2, 0.2)
#: torchvision's ``bbox_xform_clip``: ``dw, dh`` above it are clamped before ``exp``.
TORCHVISION_MAX_LOG_SCALE = math.log(1000.0 / 16)


@keras.saving.register_keras_serializable(package="keras_retinanet")
class BoxCoder:
    """Converts between boxes and the regression targets predicted by the box head.

    ``encode``: ``[(g_xy - a_xy) / a_wh, log(g_wh / a_wh)] / variance``;
    ``decode``: ``b = delta * variance``, ``xy = b_xy * a_wh + a_xy``, ``wh = exp(b_wh) * a_wh``.

    Args:
        variance: 4 positive divisors applied to ``(dx, dy, dw, dh)``. The default makes the
            targets roughly unit-variance for matched anchors (keras.io / Detectron choice);
            torchvision's RetinaNet uses ``(1, 1, 1, 1)`` (its box coder's weights are the
            reciprocals).
        max_log_scale: ``None`` (keras.io: no limit) or the largest ``dw, dh`` (after the
            variance) that ``decode`` passes to ``exp``; larger ones are clamped to it.
            torchvision uses ``log(1000 / 16)`` (:data:`TORCHVISION_MAX_LOG_SCALE`), so no
            decoded box grows past ~62 times its anchor.
    """

    def __init__(self, *, variance=DEFAULT_BOX_VARIANCE, max_log_scale=None):
        try:
            variance = tuple(float(v) for v in variance)
        except (TypeError, ValueError):
            raise ValueError(f"variance must be 4 positive numbers, got {variance!r}") from None
        if len(variance) != 4 or not all(math.isfinite(v) and v > 0 for v in variance):
            raise ValueError(f"variance must be 4 positive finite numbers, got {variance!r}")
        self.variance = variance
        self._constants = DeviceConstants(max_entries=4)  # the variance tensor per device
        if max_log_scale is not None:
            try:
                max_log_scale = float(max_log_scale)
            except (TypeError, ValueError):
                max_log_scale = math.nan
            if not math.isfinite(max_log_scale):
                raise ValueError(
                    f"max_log_scale must be None or a finite number, got {max_log_scale!r}"
                )
        self.max_log_scale = max_log_scale

    def encode(self, boxes, anchors):
        """Regression targets for ``boxes`` relative to ``anchors``.

        Args:
            boxes: ``[..., A, 4]`` corners ``[x1, y1, x2, y2]`` (e.g. the matched ground truth).
            anchors: ``[A, 4]`` (or broadcastable) anchors ``[cx, cy, w, h]``.

        Returns:
            ``[..., A, 4]`` float targets ``(dx, dy, dw, dh)`` divided by the variance. Boxes
            with a non-positive width or height have no finite target (``log`` of it): encode
            only real, matched boxes, as ``LabelEncoder`` does.

        Raises:
            ValueError: when ``boxes`` or ``anchors`` do not have 4 values in the last axis.
        """
        boxes = ops.convert_to_tensor(boxes, dtype="float32")
        anchors = ops.convert_to_tensor(anchors, dtype="float32")
        _check_last_axis(boxes, "boxes", "[x1, y1, x2, y2]")
        _check_last_axis(anchors, "anchors", "[cx, cy, w, h]")
        boxes = corners_to_center(boxes)
        deltas = ops.concatenate(
            [
                (boxes[..., :2] - anchors[..., :2]) / anchors[..., 2:],
                ops.log(boxes[..., 2:] / anchors[..., 2:]),
            ],
            axis=-1,
        )
        return deltas / self._variance(deltas)

    def decode(self, deltas, anchors):
        """Boxes predicted by ``deltas`` on ``anchors``.

        Args:
            deltas: ``[..., A, 4]`` raw box-head outputs.
            anchors: ``[A, 4]`` (or broadcastable) anchors ``[cx, cy, w, h]``.

        Returns:
            ``[..., A, 4]`` float32 corners ``[x1, y1, x2, y2]`` in pixels. NaN or Inf deltas,
            or (without ``max_log_scale``) ``dw, dh`` large enough to overflow ``exp``, give
            non-finite boxes
            (``DecodePredictions`` never turns those into detections).

        Raises:
            ValueError: when ``deltas`` or ``anchors`` do not have 4 values in the last axis.
        """
        deltas = ops.convert_to_tensor(deltas, dtype="float32")
        anchors = ops.convert_to_tensor(anchors, dtype="float32")
        _check_last_axis(deltas, "deltas", "(dx, dy, dw, dh)")
        _check_last_axis(anchors, "anchors", "[cx, cy, w, h]")
        deltas = deltas * self._variance(deltas)
        log_scale = deltas[..., 2:]
        if self.max_log_scale is not None:
            log_scale = ops.minimum(log_scale, self.max_log_scale)
        centers = ops.concatenate(
            [
                deltas[..., :2] * anchors[..., 2:] + anchors[..., :2],
                ops.exp(log_scale) * anchors[..., 2:],
            ],
            axis=-1,
        )
        return center_to_corners(centers)

    def _variance(self, like):
        """``[4]`` float32 variance tensor, made once per device for eager calls."""
        return self._constants.get(
            "variance", like, lambda: ops.convert_to_tensor(self.variance, dtype="float32")
        )

    def get_config(self):
        return {"variance": list(self.variance), "max_log_scale": self.max_log_scale}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _check_last_axis(x, name, layout):
    shape = tuple(x.shape)
    if len(shape) == 0 or (shape[-1] is not None and shape[-1] != 4):
        raise ValueError(f"{name} must be [..., 4] {layout}, got shape {shape}")
