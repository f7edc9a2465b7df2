"""``combined_non_max_suppression`` on TensorFlow: the native ``CombinedNonMaxSuppression`` op.

The op has a CPU kernel only (TensorFlow places it there) and cannot be compiled with XLA
(``jit_compile=True``); the JAX and PyTorch versions have neither restriction.
"""

import tensorflow as tf

from keras_retinanet.nms._validation import validate_arguments


def combined_non_max_suppression(
    boxes,
    scores,
    max_output_size_per_class,
    max_total_size,
    iou_threshold=0.5,
    score_threshold=float("-inf"),
    pad_per_class=False,
    clip_boxes=True,
):
    """``tf.image.combined_non_max_suppression`` with the library's argument checks.

    Args:
        boxes: ``[B, N, q, 4]`` with ``q`` 1 or ``num_classes``.
        scores: ``[B, N, num_classes]``.
        max_output_size_per_class, max_total_size: positive ints.
        iou_threshold, score_threshold, pad_per_class, clip_boxes: as TensorFlow.

    Returns:
        ``nmsed_boxes [B, K, 4]``, ``nmsed_scores [B, K]``, ``nmsed_classes [B, K]`` float32 and
        ``valid_detections [B]`` int32.
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    scores = tf.convert_to_tensor(scores, tf.float32)
    per_class, total, iou_threshold, score_threshold = validate_arguments(
        tuple(boxes.shape),
        tuple(scores.shape),
        max_output_size_per_class,
        max_total_size,
        iou_threshold,
        score_threshold,
    )
    return run(
        boxes,
        scores,
        per_class,
        total,
        iou_threshold,
        score_threshold,
        pad_per_class,
        clip_boxes,
    )


def run(
    boxes,
    scores,
    per_class,
    total,
    iou_threshold,
    score_threshold,
    pad_per_class,
    clip_boxes,
):
    """:func:`combined_non_max_suppression` on arguments already checked by
    ``validate_arguments`` (sizes as ``int``, thresholds as ``float`` or traced)."""
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    scores = tf.convert_to_tensor(scores, tf.float32)
    return tf.image.combined_non_max_suppression(
        boxes,
        scores,
        per_class,
        total,
        iou_threshold=iou_threshold,
        score_threshold=score_threshold,
        pad_per_class=bool(pad_per_class),
        clip_boxes=bool(clip_boxes),
    )
