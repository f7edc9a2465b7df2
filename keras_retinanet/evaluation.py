"""COCO box evaluation (``pycocotools``) and a Keras callback that logs it during training.

Predictions on the network input are mapped back to the original images with
:func:`detections_to_coco_results` (``boxes / ratio``, clipped, xyxy -> xywh) and scored by
:func:`evaluate_coco`, which returns the twelve standard COCO statistics by name.
"""

import contextlib
import io
import os

import keras
import numpy as np

#: Names of ``COCOeval.stats`` in order.
COCO_STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)


def _pycocotools():
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:
        raise ImportError(
            'COCO evaluation needs pycocotools: pip install "keras3-retinanet[data]"'
        ) from e
    return COCO, COCOeval


def _to_numpy(x):
    """NumPy view of a NumPy array, list or backend tensor (GPU tensors are copied)."""
    if isinstance(x, np.ndarray | list | tuple | int | float):
        return np.asarray(x)
    return keras.ops.convert_to_numpy(x)


def _quiet(verbose):
    return contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())


def load_ground_truth(ground_truth, *, verbose=False):
    """A ``pycocotools.coco.COCO`` from a path, a dataset dict or an existing COCO object."""
    COCO, _ = _pycocotools()
    if isinstance(ground_truth, COCO):
        return ground_truth
    if isinstance(ground_truth, str | os.PathLike):
        path = os.fspath(ground_truth)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"COCO annotation file not found: {path}")
        with _quiet(verbose):
            return COCO(path)
    if isinstance(ground_truth, dict):
        with _quiet(verbose):
            coco = COCO()
            coco.dataset = ground_truth
            coco.createIndex()
        return coco
    raise TypeError(
        "ground_truth must be a path, a COCO dataset dict or a pycocotools COCO object, got "
        f"{type(ground_truth).__name__}"
    )


def _as_result_dicts(detections):
    if isinstance(detections, np.ndarray):
        arr = np.asarray(detections, dtype="float64")
        if arr.size == 0:
            return []
        if arr.ndim != 2 or arr.shape[1] != 7:
            raise ValueError(
                "detection arrays must be [N, 7] rows (image_id, x, y, w, h, score, category_id), "
                f"got shape {arr.shape}"
            )
        return [
            {
                "image_id": int(r[0]),
                "bbox": [float(v) for v in r[1:5]],
                "score": float(r[5]),
                "category_id": int(r[6]),
            }
            for r in arr
        ]
    results = list(detections)
    for i, det in enumerate(results):
        for key in ("image_id", "category_id", "bbox", "score"):
            if not isinstance(det, dict) or key not in det:
                raise ValueError(f"detection {i} must be a dict with '{key}'")
    return results


def evaluate_coco(ground_truth, detections, *, image_ids=None, verbose=False):
    """COCO bbox AP/AR of ``detections`` against ``ground_truth``.

    Args:
        ground_truth: path to an ``instances_*.json`` file, its parsed dict, or a
            ``pycocotools.coco.COCO``.
        detections: list of COCO result dicts ``{"image_id", "category_id",
            "bbox": [x, y, w, h], "score"}`` in original-image pixels, or a float array
            ``[N, 7]`` of ``(image_id, x, y, w, h, score, category_id)`` rows.
        image_ids: evaluate on these images only (for example a validation subset); default
            all images of the ground truth. Images without detections count as misses.
        verbose: let pycocotools print its usual tables.

    Returns:
        Dict ``{name: float}`` for the names in :data:`COCO_STAT_NAMES` (``AP`` is
        mAP@[.5:.95], ``AP50`` mAP@0.5, ...). pycocotools reports ``-1`` for a statistic with
        no ground truth (for example ``APs`` without small objects). With no detections at all
        every statistic that has ground truth is 0.
    """
    COCO, COCOeval = _pycocotools()
    gt = load_ground_truth(ground_truth, verbose=verbose)
    results = _as_result_dicts(detections)
    known = set(gt.getImgIds())
    unknown = sorted({int(d["image_id"]) for d in results} - known)
    if unknown:
        raise ValueError(
            f"detections refer to image ids not in the ground truth, e.g. {unknown[:5]}"
        )
    with _quiet(verbose):
        if results:
            dt = gt.loadRes(results)
        else:
            # loadRes cannot take an empty list; an empty result set scores zero instead.
            dt = COCO()
            dt.dataset = {
                "images": list(gt.dataset.get("images", [])),
                "categories": list(gt.dataset.get("categories", [])),
                "annotations": [],
            }
            dt.createIndex()
        evaluator = COCOeval(gt, dt, "bbox")
        if image_ids is not None:
            ids = [int(i) for i in np.asarray(image_ids).reshape(-1)]
            if not ids:
                # pycocotools reads an empty id list as "every image".
                raise ValueError("image_ids is empty; pass None to evaluate every image")
            missing = sorted(set(ids) - known)
            if missing:
                raise ValueError(f"image_ids not in the ground truth, e.g. {missing[:5]}")
            evaluator.params.imgIds = sorted(set(ids))
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(v) for name, v in zip(COCO_STAT_NAMES, evaluator.stats, strict=True)}


def detections_to_coco_results(
    image_ids,
    boxes,
    scores,
    classes,
    valid=None,
    *,
    ratios=None,
    original_sizes=None,
    class_to_category_id=None,
):
    """Convert batched predictions on the network input to COCO result dicts.

    Args:
        image_ids: ``[B]`` COCO image ids.
        boxes: ``[B, K, 4]`` xyxy pixels of the resized, padded input.
        scores: ``[B, K]``.
        classes: ``[B, K]`` contiguous class indices (float or int, as NMS returns floats).
        valid: ``[B]`` number of real detections per image (rows past it are ignored);
            default all ``K``.
        ratios: ``[B]`` or a scalar resize ratio; boxes are divided by it. Default 1.
        original_sizes: ``[B, 2]`` original ``(height, width)``; boxes are clipped to it when
            given (padding can hold predictions past the image).
        class_to_category_id: dict or sequence mapping a class index to its COCO category id
            (:attr:`CocoDataset.class_to_category_id`); default identity.

    Returns:
        List of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` dicts with
        Python numbers, ready for :func:`evaluate_coco` or ``json.dump``.
    """
    image_ids = np.asarray(image_ids).reshape(-1)
    boxes = np.asarray(boxes, dtype="float64")
    scores = np.asarray(scores, dtype="float64")
    classes = np.asarray(classes)
    batch = len(image_ids)
    if boxes.ndim != 3 or boxes.shape[0] != batch or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be [B={batch}, K, 4], got shape {boxes.shape}")
    if scores.shape != boxes.shape[:2] or classes.shape != boxes.shape[:2]:
        raise ValueError(
            f"scores {scores.shape} and classes {classes.shape} must be [B, K] = {boxes.shape[:2]}"
        )
    valid = (
        np.full(batch, boxes.shape[1])
        if valid is None
        else np.asarray(valid).reshape(-1).astype("int64")
    )
    ratios = np.broadcast_to(
        np.asarray(1.0 if ratios is None else ratios, dtype="float64").reshape(-1), (batch,)
    )
    if np.any(ratios <= 0):
        raise ValueError("ratios must be positive")
    sizes = None if original_sizes is None else np.asarray(original_sizes).reshape(batch, 2)

    results = []
    for b in range(batch):
        n = int(min(max(valid[b], 0), boxes.shape[1]))
        img_boxes = boxes[b, :n] / ratios[b]
        if sizes is not None:
            h, w = float(sizes[b, 0]), float(sizes[b, 1])
            img_boxes = np.clip(img_boxes, 0.0, [w, h, w, h])
        for box, score, cls in zip(img_boxes, scores[b, :n], classes[b, :n], strict=True):
            cls = int(round(float(cls)))
            category_id = cls if class_to_category_id is None else class_to_category_id[cls]
            x1, y1, x2, y2 = (float(v) for v in box)
            results.append(
                {
                    "image_id": int(image_ids[b]),
                    "category_id": int(category_id),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(score),
                }
            )
    return results


class CocoEvaluationCallback(keras.callbacks.Callback):
    """Runs COCO evaluation every ``every_n_epochs`` epochs and adds it to ``logs``.

    Keys ``f"{prefix}{name}"`` for ``name`` in ``metrics`` (``val_AP``, ``val_AP50``,
    ``val_AP75`` by default) are written into the epoch ``logs``, so ``History``,
    ``ModelCheckpoint(monitor="val_AP", mode="max")`` and ``EarlyStopping`` can use them
    (list this callback before those that read the keys).

    Args:
        predict_fn: ``predict_fn(images) -> (boxes, scores, classes, valid)`` NumPy-convertible
            arrays as :func:`detections_to_coco_results` takes them.
        dataset: re-iterable of ``(images, meta)`` batches, e.g.
            :class:`~keras_retinanet.data.InferenceBatches`; ``meta`` holds ``image_id``,
            ``ratio`` and (optionally) ``original_size``.
        annotation_file: ground truth, anything :func:`evaluate_coco` accepts.
        every_n_epochs: evaluation period; COCO evaluation is slow, so it can be thinned out.
        class_to_category_id: class -> category id mapping; default taken from
            ``dataset.class_to_category_id`` when present, else identity.
        metrics: statistic names to log.
        prefix: key prefix in ``logs``.
        verbose: print the pycocotools tables.
    """

    def __init__(
        self,
        predict_fn,
        dataset,
        annotation_file,
        *,
        every_n_epochs=1,
        class_to_category_id=None,
        metrics=("AP", "AP50", "AP75"),
        prefix="val_",
        verbose=False,
    ):
        super().__init__()
        if int(every_n_epochs) <= 0:
            raise ValueError(f"every_n_epochs must be positive, got {every_n_epochs}")
        unknown = [m for m in metrics if m not in COCO_STAT_NAMES]
        if unknown:
            raise ValueError(f"unknown COCO metrics {unknown}; choose from {COCO_STAT_NAMES}")
        self.predict_fn = predict_fn
        self.dataset = dataset
        self.every_n_epochs = int(every_n_epochs)
        if class_to_category_id is None:
            class_to_category_id = getattr(dataset, "class_to_category_id", None)
        self.class_to_category_id = class_to_category_id
        self.metrics = tuple(metrics)
        self.prefix = prefix
        self.verbose = verbose
        self._ground_truth = load_ground_truth(annotation_file, verbose=verbose)
        self.last_results = None

    def evaluate(self):
        """Predict over ``dataset`` and return the statistics dict of :func:`evaluate_coco`."""
        results, seen = [], []
        for images, meta in self.dataset:
            boxes, scores, classes, valid = (_to_numpy(a) for a in self.predict_fn(images))
            results.extend(
                detections_to_coco_results(
                    meta["image_id"],
                    boxes,
                    scores,
                    classes,
                    valid,
                    ratios=meta.get("ratio"),
                    original_sizes=meta.get("original_size"),
                    class_to_category_id=self.class_to_category_id,
                )
            )
            seen.extend(int(i) for i in np.asarray(meta["image_id"]).reshape(-1))
        return evaluate_coco(self._ground_truth, results, image_ids=seen, verbose=self.verbose)

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        stats = self.evaluate()
        self.last_results = stats
        if logs is not None:
            for name in self.metrics:
                logs[f"{self.prefix}{name}"] = stats[name]
