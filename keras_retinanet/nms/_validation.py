"""Argument checks shared by every implementation of ``combined_non_max_suppression``.

The checks mirror those of ``tf.image.combined_non_max_suppression`` but run on static shapes
and Python scalars, before any computation, and raise ``ValueError`` naming the argument.
"""

import operator

from keras_retinanet.validation import static_dims


def _known_and_different(a, b):
    return a is not None and b is not None and a != b


def _positive_int(value, name):
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    try:
        result = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be a positive integer, got {value!r}") from None
    if result <= 0:
        raise ValueError(f"{name} must be a positive integer, got {result}")
    return int(result)


def _static_float(value, name):
    """``float(value)``, or ``None`` when ``value`` is a traced/symbolic tensor."""
    try:
        return float(value)
    except (TypeError, ValueError) as error:
        if isinstance(value, (str, bytes)):
            raise ValueError(f"{name} must be a number, got {value!r}") from error
        return None


def validate_arguments(
    boxes_shape,
    scores_shape,
    max_output_size_per_class,
    max_total_size,
    iou_threshold,
    score_threshold,
):
    """Checks the arguments and returns them normalised.

    Args:
        boxes_shape: static shape of ``boxes``, expected ``[batch, num_boxes, q, 4]``.
        scores_shape: static shape of ``scores``, expected ``[batch, num_boxes, num_classes]``.
        max_output_size_per_class: positive ``int``.
        max_total_size: positive ``int``.
        iou_threshold: number in ``[0, 1]`` (a traced value is accepted unchecked).
        score_threshold: number (may be ``-inf`` or NaN, as in TensorFlow).

    Returns:
        ``(max_output_size_per_class, max_total_size, iou_threshold, score_threshold)`` with
        the sizes as ``int`` and the thresholds as ``float`` (or unchanged when traced).

    Raises:
        ValueError: naming the offending argument.
    """
    boxes_dims = static_dims(boxes_shape)
    scores_dims = static_dims(scores_shape)
    if boxes_dims is None or len(boxes_dims) != 4:
        raise ValueError(f"boxes must be 4-D [batch, num_boxes, q, 4], got shape {boxes_shape}")
    if _known_and_different(boxes_dims[3], 4):
        raise ValueError(f"boxes must have 4 coordinates in the last axis, got shape {boxes_shape}")
    if scores_dims is None or len(scores_dims) != 3:
        raise ValueError(
            f"scores must be 3-D [batch, num_boxes, num_classes], got shape {scores_shape}"
        )
    if _known_and_different(boxes_dims[0], scores_dims[0]):
        raise ValueError(
            f"boxes and scores must have the same batch size, got boxes shape {boxes_shape} "
            f"and scores shape {scores_shape}"
        )
    if _known_and_different(boxes_dims[1], scores_dims[1]):
        raise ValueError(
            f"scores must have as many boxes as boxes, got boxes shape {boxes_shape} and "
            f"scores shape {scores_shape}"
        )
    q, num_classes = boxes_dims[2], scores_dims[2]
    if q is not None and q != 1 and _known_and_different(q, num_classes):
        raise ValueError(
            f"the third axis of boxes (q) must be 1 or num_classes={num_classes}, got shape "
            f"{boxes_shape}"
        )
    per_class = _positive_int(max_output_size_per_class, "max_output_size_per_class")
    total = _positive_int(max_total_size, "max_total_size")
    iou = _static_float(iou_threshold, "iou_threshold")
    if iou is not None and not 0.0 <= iou <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold!r}")
    score = _static_float(score_threshold, "score_threshold")
    return (
        per_class,
        total,
        iou_threshold if iou is None else iou,
        score_threshold if score is None else score,
    )


def output_size(max_output_size_per_class, max_total_size, num_classes, pad_per_class):
    """Number of output rows ``K``: ``max_total_size``, or with ``pad_per_class``
    ``min(max_total_size, max_output_size_per_class * num_classes)``."""
    if pad_per_class:
        return min(max_total_size, max_output_size_per_class * num_classes)
    return max_total_size
