"""``combined_non_max_suppression`` equal to ``tf.image.combined_non_max_suppression`` on
every Keras backend.

The function dispatches on ``keras.backend.backend()`` to ``_tensorflow`` (the native op),
``_jax`` or ``_torch`` (exact pure implementations that run where the tensors are), importing
only that module; the arguments are checked once, here, and each module's ``run`` takes them
checked. ``reference.combined_non_max_suppression_reference`` is the plain NumPy
definition of the semantics (also used for the ``numpy`` backend).
"""

import importlib

import keras

from keras_retinanet.nms import reference
from keras_retinanet.nms._validation import validate_arguments
from keras_retinanet.nms.reference import combined_non_max_suppression_reference

_MODULES = {
    "tensorflow": "keras_retinanet.nms._tensorflow",
    "jax": "keras_retinanet.nms._jax",
    "torch": "keras_retinanet.nms._torch",
}

__all__ = ["combined_non_max_suppression", "combined_non_max_suppression_reference"]


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
    """Per-class greedy NMS merged over classes, as ``tf.image.combined_non_max_suppression``.

    Per image and class, boxes scoring strictly above ``score_threshold`` are visited in
    descending score; one is dropped when its IoU with a box already kept for that class is
    strictly above ``iou_threshold``; at most ``max_output_size_per_class`` are kept per class.
    The kept boxes of all classes are merged by descending score and the first ``K`` returned.
    See :mod:`keras_retinanet.nms.reference` for the full definition.

    Args:
        boxes: ``[B, N, q, 4]`` corner boxes (any diagonal pair), ``q`` 1 (shared by every
            class) or ``num_classes``.
        scores: ``[B, N, num_classes]``.
        max_output_size_per_class: positive int.
        max_total_size: positive int.
        iou_threshold: in ``[0, 1]``.
        score_threshold: candidates score strictly above it.
        pad_per_class: ``K = min(max_total_size, max_output_size_per_class * num_classes)``
            instead of ``max_total_size``.
        clip_boxes: clamp the returned coordinates to ``[0, 1]``.

    Returns:
        ``(nmsed_boxes [B, K, 4], nmsed_scores [B, K], nmsed_classes [B, K])`` float32 and
        ``valid_detections [B]`` int32; rows past ``valid_detections`` are zero.

    Raises:
        ValueError: for invalid shapes, sizes or ``iou_threshold``, before any computation.
    """
    backend = keras.backend.backend()
    boxes = keras.ops.convert_to_tensor(boxes, "float32")
    scores = keras.ops.convert_to_tensor(scores, "float32")
    args = validate_arguments(
        tuple(keras.ops.shape(boxes)),
        tuple(keras.ops.shape(scores)),
        max_output_size_per_class,
        max_total_size,
        iou_threshold,
        score_threshold,
    )
    if backend == "numpy":
        return reference.run(boxes, scores, *args, pad_per_class, clip_boxes)
    if backend not in _MODULES:
        raise NotImplementedError(f"combined_non_max_suppression has no {backend!r} version")
    module = importlib.import_module(_MODULES[backend])
    return module.run(boxes, scores, *args, pad_per_class, clip_boxes)
