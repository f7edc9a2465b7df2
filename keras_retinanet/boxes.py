"""Box format conversions and pairwise IoU, written with ``keras.ops``.

Conventions used throughout the library:

* *corners*: ``[x1, y1, x2, y2]`` in pixels of the (resized, padded) network input.
* *center*: ``[cx, cy, w, h]`` in the same pixels; anchors use this format.
"""

from keras import ops


def corners_to_center(boxes):
    """``[..., 4]`` corners ``[x1, y1, x2, y2]`` -> ``[..., 4]`` centre form ``[cx, cy, w, h]``."""
    xy_min, xy_max = boxes[..., :2], boxes[..., 2:]
    return ops.concatenate([(xy_min + xy_max) / 2.0, xy_max - xy_min], axis=-1)


def center_to_corners(boxes):
    """``[..., 4]`` centre form ``[cx, cy, w, h]`` -> ``[..., 4]`` corners ``[x1, y1, x2, y2]``."""
    xy, wh = boxes[..., :2], boxes[..., 2:]
    return ops.concatenate([xy - wh / 2.0, xy + wh / 2.0], axis=-1)


def pairwise_iou(boxes1, boxes2):
    """IoU of every box in ``boxes1`` with every box in ``boxes2``.

    Args:
        boxes1: ``[..., N, 4]`` corners ``[x1, y1, x2, y2]``.
        boxes2: ``[..., M, 4]`` corners, with the same leading (batch) dimensions.

    Returns:
        ``[..., N, M]`` IoU in ``[0, 1]``. A pair whose union is not positive (both boxes
        degenerate) has IoU 0 rather than NaN, so padded ground-truth rows are harmless.
    """
    b1 = boxes1[..., :, None, :]  # [..., N, 1, 4]
    b2 = boxes2[..., None, :, :]  # [..., 1, M, 4]
    top_left = ops.maximum(b1[..., :2], b2[..., :2])
    bottom_right = ops.minimum(b1[..., 2:], b2[..., 2:])
    inter_wh = ops.maximum(bottom_right - top_left, 0.0)
    inter = inter_wh[..., 0] * inter_wh[..., 1]
    area1 = ops.maximum(boxes1[..., 2] - boxes1[..., 0], 0.0) * ops.maximum(
        boxes1[..., 3] - boxes1[..., 1], 0.0
    )
    area2 = ops.maximum(boxes2[..., 2] - boxes2[..., 0], 0.0) * ops.maximum(
        boxes2[..., 3] - boxes2[..., 1], 0.0
    )
    union = area1[..., :, None] + area2[..., None, :] - inter
    safe_union = ops.where(union > 0.0, union, ops.ones_like(union))
    return ops.where(union > 0.0, inter / safe_union, ops.zeros_like(union))
