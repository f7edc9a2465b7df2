"""COCO box evaluation (``pycocotools``) and a Keras callback that logs it during training.

Predictions on the network input are mapped back to the original images with
:func:`detections_to_coco_results` (``boxes / ratio``, clipped, xyxy -> xywh) and scored by
:func:`evaluate_coco`, which returns the twelve standard COCO statistics by name and, from the
same pycocotools run, a per-category breakdown (``stats["per_class"]``) that
:func:`format_per_class_table` prints as a table.
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
        every statistic that has ground truth is 0. The dict also holds ``"per_class"``: the
        list of :func:`per_class_stats` of this same evaluation, one entry per ground-truth
        category ordered by category id; the mean of its ``AP`` over the categories with
        ground truth is ``AP`` (likewise ``AP50``, ``AP75``).
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
    stats = {name: float(v) for name, v in zip(COCO_STAT_NAMES, evaluator.stats, strict=True)}
    stats["per_class"] = per_class_stats(evaluator)
    return stats


def _mean_precision(precision):
    """Mean of the entries of ``precision`` > -1 (pycocotools' ``summarize``); -1 if none."""
    valid = precision[precision > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def per_class_stats(evaluator):
    """Per-category AP, AP50, AP75 and counts of an evaluated ``COCOeval``.

    Read from the arrays that ``evaluator.accumulate()`` filled, so they describe exactly the
    run whose ``summarize()`` gave the overall numbers (no second evaluation).
    ``evaluator.eval["precision"]`` is ``[T, R, K, A, M]``: T = 10 IoU thresholds
    0.5:0.05:0.95, R = 101 recall points, K = ``params.catIds``, A = 4 area ranges, M = 3
    ``maxDets``. As in the overall ``AP`` we take area ``"all"`` and ``maxDets`` 100 and average
    the entries > -1: over every IoU threshold for ``AP``, the IoU 0.5 row for ``AP50`` and
    the 0.75 row for ``AP75``. A category with ground truth has all its T x R entries set,
    so the mean of the per-category ``AP`` over those categories equals pycocotools' ``AP``.

    A category without (non-crowd) ground truth in the evaluated images has no precision
    values; its APs are ``-1.0``, pycocotools' own marker (as ``stats["APs"]`` without small
    objects), chosen over ``None``/NaN so every AP is a float and the dict stays plain JSON.
    Its detections are not scored against any category. :func:`format_per_class_table`
    prints such APs as ``n/a``.

    Args:
        evaluator: a ``pycocotools.cocoeval.COCOeval`` after ``evaluate()`` and
            ``accumulate()`` with the default ``useCats=1``.

    Returns:
        List, ordered by category id, of dicts ``{"category_id": int, "name": str,
        "AP": float, "AP50": float, "AP75": float, "num_gt": int, "num_detections": int}``.
        ``num_gt`` counts the ground-truth boxes that AP is computed against (not crowd,
        area within the ``"all"`` range) and ``num_detections`` every detection of the
        category, both in the evaluated images (``params.imgIds``).
    """
    params = evaluator.params
    precision = evaluator.eval["precision"]
    area = params.areaRngLbl.index("all")
    max_dets = list(params.maxDets).index(100)
    iou50 = int(np.argmin(np.abs(params.iouThrs - 0.5)))
    iou75 = int(np.argmin(np.abs(params.iouThrs - 0.75)))
    low, high = params.areaRng[area]
    image_ids = list(params.imgIds)
    gt, dt = evaluator.cocoGt, evaluator.cocoDt
    num_gt, num_det = {}, {}
    for ann in gt.loadAnns(gt.getAnnIds(imgIds=image_ids)):
        if not ann.get("iscrowd", 0) and low <= ann.get("area", 0) <= high:
            num_gt[ann["category_id"]] = num_gt.get(ann["category_id"], 0) + 1
    for ann in dt.loadAnns(dt.getAnnIds(imgIds=image_ids)):
        num_det[ann["category_id"]] = num_det.get(ann["category_id"], 0) + 1

    per_class = []
    for k, category_id in enumerate(params.catIds):
        p = precision[:, :, k, area, max_dets]  # [T, R]
        category = gt.cats.get(category_id, {})
        per_class.append(
            {
                "category_id": int(category_id),
                "name": str(category.get("name", category_id)),
                "AP": _mean_precision(p),
                "AP50": _mean_precision(p[iou50]),
                "AP75": _mean_precision(p[iou75]),
                "num_gt": int(num_gt.get(category_id, 0)),
                "num_detections": int(num_det.get(category_id, 0)),
            }
        )
    return sorted(per_class, key=lambda row: row["category_id"])


def _mean_of_valid(per_class, key):
    values = [row[key] for row in per_class if row[key] is not None and row[key] >= 0]
    return float(np.mean(values)) if values else -1.0


def format_per_class_table(per_class, *, digits=4):
    """Plain-text table of :func:`per_class_stats`, one aligned row per category.

    Columns ``id  category  AP  AP50  AP75  #gt  #det``; an AP below 0 (no ground truth)
    shows as ``n/a``. The final ``all`` row averages each AP column over the categories that
    have ground truth, which is the overall COCO ``AP``/``AP50``/``AP75``, and totals the
    counts.

    Args:
        per_class: ``stats["per_class"]`` of :func:`evaluate_coco` (or the same list read back
            from JSON).
        digits: decimals of the AP columns (4, as the ``evaluate`` command's summary lines).

    Returns:
        The table as one string without a trailing newline.
    """

    def ap(value):
        return "n/a" if value is None or value < 0 else f"{value:.{digits}f}"

    header = ("id", "category", "AP", "AP50", "AP75", "#gt", "#det")
    rows = [
        (
            str(row["category_id"]),
            str(row["name"]),
            ap(row["AP"]),
            ap(row["AP50"]),
            ap(row["AP75"]),
            str(row["num_gt"]),
            str(row["num_detections"]),
        )
        for row in per_class
    ]
    total = (
        "",
        "all",
        *(ap(_mean_of_valid(per_class, key)) for key in ("AP", "AP50", "AP75")),
        str(sum(int(row["num_gt"]) for row in per_class)),
        str(sum(int(row["num_detections"]) for row in per_class)),
    )
    widths = [max(len(r[i]) for r in (header, *rows, total)) for i in range(len(header))]

    def line(cells):
        # The category name is left-aligned, numbers right-aligned.
        return "  ".join(
            cell.ljust(w) if i == 1 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "-" * len(line(tuple("x" * w for w in widths)))
    return "\n".join([line(header), rule, *(line(r) for r in rows), rule, line(total)])


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
        per_class_logs: also log ``f"{prefix}AP50/{name}"`` for every category with ground
            truth in the evaluated images (``name`` from the annotation file, whitespace
            replaced by ``_`` so TensorBoard keeps the tag as is). Categories without ground
            truth have no AP and are left out; the set of keys is the same every epoch.
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
        per_class_logs=False,
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
        self.per_class_logs = bool(per_class_logs)
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
            if self.per_class_logs:
                for row in stats["per_class"]:
                    if row["AP50"] >= 0:
                        name = "_".join(row["name"].split()) or str(row["category_id"])
                        logs[f"{self.prefix}AP50/{name}"] = row["AP50"]
