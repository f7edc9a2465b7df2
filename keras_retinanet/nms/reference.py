"""Pure-NumPy reference for ``combined_non_max_suppression`` (the semantics, written plainly).

This is the definition the TensorFlow, JAX and PyTorch implementations are tested against. It
follows ``tf.image.combined_non_max_suppression``:

1. For every image and every class, the candidates are the boxes whose score is strictly greater
   than ``score_threshold`` (NaN scores never qualify).
2. Greedy NMS per class in descending score: a candidate is dropped when its IoU with a box
   already kept *for that class* is strictly greater than ``iou_threshold``. At most
   ``max_output_size_per_class`` boxes are kept per class.
3. IoU is computed in float32 on boxes normalised with min/max per axis (any diagonal corner
   pair), as ``inter / (area_i + area_j - inter)``; when either area is ``<= 0`` it is 0.
4. The kept boxes of all classes are merged in descending score and the first ``K`` rows are
   returned, ``K = max_total_size`` (or ``min(max_total_size, max_output_size_per_class *
   num_classes)`` with ``pad_per_class``). Rows past ``valid_detections`` are zero.
5. ``clip_boxes`` clamps the returned coordinates to ``[0, 1]``.

6. Subnormal float32 values (nonzero, of magnitude below ``2**-126``) are treated as
   TensorFlow's CPU kernel treats them, which runs with denormals flushed to zero (DAZ/FTZ):
   every comparison and every arithmetic result above uses them as ``0``. A subnormal score
   is no candidate for a threshold of ``0`` (or a subnormal one) and ties with ``0`` in the
   order; a subnormal height, width, area or intersection is ``0`` (so two boxes whose area
   is subnormal never suppress each other); an IoU below ``2**-126`` never exceeds a
   threshold. Returned scores and unclipped coordinates are the input values, unchanged;
   clipped coordinates are clipped after the flush.

TensorFlow breaks equal scores in an unspecified order. This reference uses a fixed order: per
class, equal scores are visited in ascending box index; in the merge, equal scores are ordered
by box index, then class index.
"""

import numpy as np

from keras_retinanet.nms import _subnormal
from keras_retinanet.nms._validation import output_size, validate_arguments

#: The smallest normal float32; nonzero values of smaller magnitude are subnormal.
FLT_MIN = np.float32(_subnormal.FLT_MIN)


def flush(x):
    """Subnormal float32 values -> ``+0.0`` (rule 6); NaN, infinities and normals unchanged."""
    x = np.asarray(x, np.float32)
    return np.where(np.abs(x) < FLT_MIN, np.float32(0.0), x)


def _normalise(boxes):
    """``[M, 4]`` boxes (any corner order) -> ``(ymin, xmin, ymax, xmax, area)``, float32,
    with subnormal inputs and results flushed (rule 6)."""
    boxes = flush(boxes)
    y_min = np.minimum(boxes[:, 0], boxes[:, 2])
    x_min = np.minimum(boxes[:, 1], boxes[:, 3])
    y_max = np.maximum(boxes[:, 0], boxes[:, 2])
    x_max = np.maximum(boxes[:, 1], boxes[:, 3])
    with np.errstate(over="ignore"):
        area = flush(flush(y_max - y_min) * flush(x_max - x_min))
    return y_min, x_min, y_max, x_max, area


def _iou_one_to_many(norm, i, others):
    """float32 IoU of box ``i`` with the boxes ``others`` (indices into ``norm``), every
    result flushed (rule 6)."""
    y_min, x_min, y_max, x_max, area = norm
    inter_h = flush(np.minimum(y_max[i], y_max[others]) - np.maximum(y_min[i], y_min[others]))
    inter_w = flush(np.minimum(x_max[i], x_max[others]) - np.maximum(x_min[i], x_min[others]))
    inter = flush(np.maximum(inter_h, 0) * np.maximum(inter_w, 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = flush(inter / flush(flush(area[i] + area[others]) - inter))
    both_positive = (area[i] > 0) & (area[others] > 0)
    return np.where(both_positive, iou, np.float32(0.0))


def _nms_one_class(boxes, scores, max_output, iou_threshold, score_threshold):
    """Greedy NMS of one class of one image.

    Args:
        boxes: ``[N, 4]`` float32.
        scores: ``[N]`` float32.

    Returns:
        Indices of the kept boxes, in the order they were kept (descending score).
    """
    scores = flush(scores)
    candidates = np.flatnonzero(scores > flush(score_threshold))
    order = candidates[np.argsort(-scores[candidates], kind="stable")]
    norm = _normalise(boxes[order])
    alive = np.ones(len(order), dtype=bool)
    kept = []
    while len(kept) < max_output and alive.any():
        position = int(np.argmax(alive))  # the best candidate not yet kept or suppressed
        kept.append(order[position])
        alive[position] = False
        others = np.flatnonzero(alive)
        alive[others] = ~(_iou_one_to_many(norm, position, others) > iou_threshold)
    return kept


def combined_non_max_suppression_reference(
    boxes,
    scores,
    max_output_size_per_class,
    max_total_size,
    iou_threshold=0.5,
    score_threshold=float("-inf"),
    pad_per_class=False,
    clip_boxes=True,
):
    """NumPy ``tf.image.combined_non_max_suppression``.

    Args:
        boxes: ``[B, N, q, 4]`` with ``q`` 1 (shared by all classes) or ``num_classes``.
        scores: ``[B, N, num_classes]``.
        max_output_size_per_class: positive int, boxes kept per class and image.
        max_total_size: positive int, boxes kept per image.
        iou_threshold: in ``[0, 1]``; a box is suppressed when its IoU is strictly greater.
        score_threshold: a box is a candidate when its score is strictly greater.
        pad_per_class: output length ``min(max_total_size, max_output_size_per_class * C)``.
        clip_boxes: clamp the returned coordinates to ``[0, 1]``.

    Returns:
        ``(nmsed_boxes [B, K, 4], nmsed_scores [B, K], nmsed_classes [B, K])`` float32 and
        ``valid_detections [B]`` int32, as NumPy arrays.
    """
    boxes = np.asarray(boxes, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    per_class, total, iou_threshold, score_threshold = validate_arguments(
        boxes.shape,
        scores.shape,
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
    boxes = np.asarray(boxes, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    iou_threshold = flush(iou_threshold)
    score_threshold = np.float32(score_threshold)
    batch, _, q, _ = boxes.shape
    num_classes = scores.shape[2]
    k = output_size(per_class, total, num_classes, pad_per_class)

    nmsed_boxes = np.zeros((batch, k, 4), np.float32)
    nmsed_scores = np.zeros((batch, k), np.float32)
    nmsed_classes = np.zeros((batch, k), np.float32)
    valid = np.zeros((batch,), np.int32)
    for b in range(batch):
        kept = []  # (score, box index, class)
        for c in range(num_classes):
            class_boxes = boxes[b, :, c if q > 1 else 0]
            for n in _nms_one_class(
                class_boxes, scores[b, :, c], per_class, iou_threshold, score_threshold
            ):
                kept.append((scores[b, n, c], n, c))
        kept.sort(key=lambda item: (-flush(item[0]), item[1], item[2]))
        kept = kept[:k]
        valid[b] = len(kept)
        for row, (score, n, c) in enumerate(kept):
            nmsed_boxes[b, row] = boxes[b, n, c if q > 1 else 0]
            nmsed_scores[b, row] = score
            nmsed_classes[b, row] = c
    if clip_boxes:
        nmsed_boxes = np.clip(flush(nmsed_boxes), np.float32(0.0), np.float32(1.0))
    return nmsed_boxes, nmsed_scores, nmsed_classes, valid
