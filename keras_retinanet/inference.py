"""Running a detector over a dataset: COCO results and evaluation in original coordinates."""

import numpy as np
from keras import ops

from keras_retinanet.evaluation import detections_to_coco_results, evaluate_coco


def detect_batch(detector, images):
    """``detector`` on one ``[B, H, W, 3]`` batch -> NumPy ``(boxes, scores, classes, valid)``."""
    out = detector.predict_on_batch(images)
    return tuple(
        ops.convert_to_numpy(out[key]) for key in ("boxes", "scores", "classes", "num_detections")
    )


def predict_coco_results(detector, batches, *, class_to_category_id=None, progress=None):
    """COCO result dicts for every image of ``batches``.

    Args:
        detector: a ``RetinaNetDetector`` (``RetinaNet.make_detector()``).
        batches: an ``InferenceBatches``: ``(images, meta)`` with ``image_id``, ``ratio`` and
            ``original_size``, so boxes are mapped back to original image pixels.
        class_to_category_id: contiguous class index -> COCO category id.
        progress: optional callable advanced by the number of images of each batch.

    Returns:
        list of ``{"image_id", "category_id", "bbox" [x, y, w, h], "score"}``.
    """
    results = []
    for images, meta in batches:
        boxes, scores, classes, valid = detect_batch(detector, images)
        results.extend(
            detections_to_coco_results(
                meta["image_id"],
                boxes,
                scores,
                classes,
                valid,
                ratios=meta["ratio"],
                original_sizes=meta.get("original_size"),
                class_to_category_id=class_to_category_id,
            )
        )
        if progress is not None:
            progress(len(np.asarray(meta["image_id"])))
    return results


def evaluate_detector(detector, batches, annotation_file, *, class_to_category_id=None):
    """COCO AP statistics (``AP``, ``AP50``, ``AP75``, ...) of ``detector`` on ``batches``."""
    results = predict_coco_results(detector, batches, class_to_category_id=class_to_category_id)
    return evaluate_coco(annotation_file, results), results
