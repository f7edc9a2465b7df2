"""Anchor coverage: which ground-truth boxes no anchor matches, per size bucket.

A data-analysis step to run before training: it lays the model's anchors on every image at
the size the network sees (resized and padded as by
:class:`~keras_retinanet.data.DetectionDataset`), finds each box's best IoU with any anchor,
and sorts the boxes by the matching thresholds of
:class:`~keras_retinanet.label_encoder.LabelEncoder` (docs/numerics.md, "Training targets"):

* *matched*: best IoU ``>= positive_iou``: at least one anchor can be trained on the box;
* *ignored only*: best IoU in ``[negative_iou, positive_iou)``: its anchors are ignored, the
  box itself never trains a positive;
* *unmatched*: best IoU ``< negative_iou``: every anchor sees background where the box is.

A size bucket with many boxes that are not matched calls for other anchor ``areas``, scales or
aspect ratios (or another ``min_side``).

Uses NumPy and ``keras.ops.convert_to_numpy`` only; any backend gives the same report.
"""

import dataclasses
import math
import os

import numpy as np
from keras import ops

from keras_retinanet.anchors import AnchorGenerator
from keras_retinanet.data.pipeline import clip_boxes_to_image
from keras_retinanet.data.preprocessing import check_boxes, compute_resize_ratio

#: ``LabelEncoder``'s default thresholds: positive IoU >= 0.5, background below 0.4, ignored
#: in between (the paper's and keras.io's values; docs/numerics.md, "Training targets").
POSITIVE_IOU = 0.5
NEGATIVE_IOU = 0.4

#: COCO's small / medium / large objects (areas below 32², below 96², the rest), as
#: ``(name, low, high)`` on ``sqrt(width * height)`` of the box in the resized image, in
#: pixels, ``low <= side < high``.
COCO_SIZE_BUCKETS = (
    ("small", 0.0, 32.0),
    ("medium", 32.0, 96.0),
    ("large", 96.0, math.inf),
)

#: Boxes whose candidate anchors are scored at once (bounds memory to a few tens of MB).
_CHUNK = 16384


@dataclasses.dataclass(frozen=True)
class BucketStats:
    """Counts of one size bucket: ``count == matched + ignored_only + unmatched``.

    ``median_best_iou`` is NaN for an empty bucket.
    """

    name: str
    low: float
    high: float
    count: int
    matched: int
    ignored_only: int
    unmatched: int
    median_best_iou: float

    @property
    def fraction_matched(self):
        """``matched / count``; NaN for an empty bucket."""
        return self.matched / self.count if self.count else math.nan

    def to_dict(self):
        return {
            "name": self.name,
            "low": self.low,
            "high": None if math.isinf(self.high) else self.high,
            "count": self.count,
            "matched": self.matched,
            "ignored_only": self.ignored_only,
            "unmatched": self.unmatched,
            "fraction_matched": _finite_or_none(self.fraction_matched),
            "median_best_iou": _finite_or_none(self.median_best_iou),
        }


@dataclasses.dataclass(frozen=True)
class WorstBox:
    """One of the boxes with the lowest best IoU: row ``row`` of record ``record_index``'s
    ``boxes``.

    ``box`` is in the original image (clipped to it, as training does), ``resized_box`` in the
    network input; ``anchor`` is the best anchor ``[cx, cy, w, h]`` in the network input.
    """

    record_index: int
    row: int
    image_id: object
    file_name: str | None
    box: tuple
    resized_box: tuple
    best_iou: float
    bucket: str
    anchor: tuple

    def to_dict(self):
        return {
            "record_index": self.record_index,
            "row": self.row,
            "image_id": _json_id(self.image_id),
            "file_name": self.file_name,
            "box": list(self.box),
            "resized_box": list(self.resized_box),
            "best_iou": self.best_iou,
            "bucket": self.bucket,
            "anchor": list(self.anchor),
        }


@dataclasses.dataclass(frozen=True)
class AnchorCoverage:
    """Result of :func:`anchor_coverage`.

    Attributes:
        num_images: records analysed.
        total: boxes analysed (after clipping to their image, as training does).
        dropped: boxes left without area by that clipping (training drops them too).
        positive_iou, negative_iou: the thresholds used.
        buckets: one :class:`BucketStats` per size bucket; their counts sum to ``total``.
        overall: :class:`BucketStats` of all boxes (named ``"all"``).
        worst: :class:`WorstBox` es, lowest best IoU first.
        settings: the resize options and the anchor generator's config.
        best_ious: float32 ``[total]`` best IoU of each box, in record and row order.
        box_index: int64 ``[total, 2]`` ``(record index, row in the record's boxes)`` of each.
        bucket_index: int64 ``[total]`` index into ``buckets`` of each box.
    """

    num_images: int
    total: int
    dropped: int
    positive_iou: float
    negative_iou: float
    buckets: tuple
    overall: BucketStats
    worst: tuple
    settings: dict
    best_ious: np.ndarray = dataclasses.field(repr=False, compare=False)
    box_index: np.ndarray = dataclasses.field(repr=False, compare=False)
    bucket_index: np.ndarray = dataclasses.field(repr=False, compare=False)

    @property
    def matched(self):
        """Boolean ``[total]``: best IoU ``>= positive_iou``."""
        return self.best_ious >= self.positive_iou

    def to_dict(self):
        """The report as JSON-able Python types (``None`` for NaN and infinite bounds); the
        per-box arrays are left out."""
        return {
            "num_images": self.num_images,
            "total": self.total,
            "dropped": self.dropped,
            "positive_iou": self.positive_iou,
            "negative_iou": self.negative_iou,
            "settings": self.settings,
            "overall": self.overall.to_dict(),
            "buckets": [b.to_dict() for b in self.buckets],
            "worst": [w.to_dict() for w in self.worst],
        }

    def to_text(self):
        """A readable table: one row per bucket and one for all boxes, then the worst boxes."""
        return "\n".join([*_summary_lines(self), "", *_bucket_lines(self), *_worst_lines(self)])

    __str__ = to_text


def anchor_coverage(
    dataset_or_records,
    *,
    anchor_generator=None,
    min_side=800,
    max_side=1333,
    stride=128,
    image_size=None,
    positive_iou=POSITIVE_IOU,
    negative_iou=NEGATIVE_IOU,
    size_buckets=COCO_SIZE_BUCKETS,
    num_worst=20,
):
    """Best IoU of every ground-truth box with the model's anchors, per size bucket.

    Boxes are clipped to their image (boxes left without area are counted in ``dropped``)
    and scaled by the pipeline's resize ratio in float32, exactly as
    :class:`~keras_retinanet.data.DetectionDataset` does; the anchors are those
    ``anchor_generator`` gives for the image's padded size (docs/numerics.md, "Input
    preprocessing" and "Anchors"). IoU is ``pairwise_iou``'s formula in float32
    (docs/numerics.md, "Conventions"). Horizontal flips and jitter are not modelled: a flipped
    box sits at another offset from the anchor grid, and with jitter the size varies (run the
    report at both ends of the range). In a training batch an image may be padded beyond its
    own padded size to the batch's largest image; that only adds anchors past its bottom/right
    edge.

    Only the anchors nearest a box are scored: for one anchor shape on one level the
    intersection width shrinks as the anchor's centre moves away from the box's centre along
    x (the same along y), and IoU grows with the intersection at fixed areas, so the best of
    that shape is centred on the grid column nearest the box centre and the nearest row. The
    two columns and rows around the centre are scored per shape and level (``4 * k`` anchors
    per level instead of the whole grid), giving the same maximum as all ``A`` anchors
    (~236k for an 800 x 1333 image) up to float32 rounding in the last place.

    "Matched" means *some* anchor reaches ``positive_iou``. ``LabelEncoder`` gives each anchor
    to its highest-IoU box (no forced best-anchor match, docs/numerics.md, "Training targets"),
    so where boxes overlap a matched box can lose all its anchors to a neighbour; on
    non-overlapping boxes the report and ``LabelEncoder``'s positives agree.

    Args:
        dataset_or_records: a data set with ``.records`` (``CocoDataset``, ``CsvDataset``,
            ``VocDataset``) or a sequence of record dicts with ``boxes`` (``[n, 4]``
            ``[x1, y1, x2, y2]`` pixels of the original image) and the image size as
            ``height``/``width``, else an ``image`` array, else a ``path`` whose header is read
            with Pillow. Optional ``image_id`` and ``file_name`` name the worst boxes.
        anchor_generator: the model's :class:`~keras_retinanet.anchors.AnchorGenerator`;
            default the paper's anchors (``AnchorGenerator()``).
        min_side, max_side, stride, image_size: the resize options of the training pipeline
            (defaults 800 / 1333 / 128 / ``None``, those of ``DetectionDataset``).
            ``image_size`` is ``None``, an int (square) or ``(height, width)``.
        positive_iou: IoU at which a box counts as matched, in ``(0, 1]``; default
            ``LabelEncoder``'s ``positive_threshold`` (0.5).
        negative_iou: IoU below which a box counts as unmatched, in ``[0, positive_iou]``;
            default ``LabelEncoder``'s ``negative_threshold`` (0.4).
        size_buckets: ``(name, low, high)`` triples on ``sqrt(w * h)`` of the resized box,
            ``low <= side < high``, contiguous from 0 to ``inf``; default COCO's small,
            medium and large (:data:`COCO_SIZE_BUCKETS`), measured where the model sees them.
        num_worst: how many of the lowest-IoU boxes to list.

    Returns:
        :class:`AnchorCoverage`.

    Raises:
        ValueError: naming the argument, for thresholds out of range, an empty data set,
            records that are not dicts, malformed boxes (not ``[n, 4]``, NaN/Inf, inverted),
            bad image sizes, resize options or buckets, or an ``anchor_generator`` whose
            anchors do not lie on a per-level grid.
        FileNotFoundError: for a record whose size must be read from a missing ``path``.
    """
    positive_iou, negative_iou = _check_thresholds(positive_iou, negative_iou)
    buckets = _check_buckets(size_buckets)
    num_worst = _check_count(num_worst, "num_worst")
    image_size = _check_image_size(image_size)
    _check_resize(min_side, max_side, stride, image_size)
    records = _check_records(dataset_or_records)
    anchor_generator = AnchorGenerator() if anchor_generator is None else anchor_generator

    prepared = [
        _prepare_record(rec, i, min_side, max_side, stride, image_size)
        for i, rec in enumerate(records)
    ]
    scored = _score_boxes(prepared, anchor_generator)
    bucket_index = _bucket_index(scored.resized, buckets)
    best = scored.best
    stats = tuple(
        _bucket_stats(name, low, high, best[bucket_index == j], positive_iou, negative_iou)
        for j, (name, low, high) in enumerate(buckets)
    )
    settings = {
        "min_side": _plain_number(min_side),
        "max_side": _plain_number(max_side),
        "stride": _plain_number(stride),
        "image_size": None if image_size is None else list(image_size),
        "anchor_generator": _generator_config(anchor_generator),
    }
    return AnchorCoverage(
        num_images=len(records),
        total=int(len(best)),
        dropped=sum(p.dropped for p in prepared),
        positive_iou=positive_iou,
        negative_iou=negative_iou,
        buckets=stats,
        overall=_bucket_stats("all", 0.0, math.inf, best, positive_iou, negative_iou),
        worst=_worst_boxes(records, scored, [b[0] for b in buckets], bucket_index, num_worst),
        settings=settings,
        best_ious=best,
        box_index=scored.box_index,
        bucket_index=bucket_index,
    )


# --------------------------------------------------------------------------- argument checks
def _check_thresholds(positive_iou, negative_iou):
    positive = _number(positive_iou, "positive_iou")
    negative = _number(negative_iou, "negative_iou")
    if not 0.0 < positive <= 1.0:
        raise ValueError(f"positive_iou must be in (0, 1], got {positive_iou!r}")
    if not 0.0 <= negative <= positive:
        raise ValueError(
            f"negative_iou must be in [0, positive_iou={positive:g}], got {negative_iou!r}"
        )
    return positive, negative


def _number(value, name):
    try:
        if isinstance(value, bool | str | bytes):
            raise TypeError
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if math.isnan(number):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return number


def _check_buckets(size_buckets):
    """``size_buckets`` as a tuple of ``(str, float, float)``, contiguous from 0 to inf."""
    message = (
        "size_buckets must be (name, low, high) triples with low < high, each bucket starting "
        f"where the previous ends, from 0 to inf; got {size_buckets!r}"
    )
    try:
        buckets = tuple((str(n), float(lo), float(hi)) for n, lo, hi in size_buckets)
    except (TypeError, ValueError):
        raise ValueError(message) from None
    if not buckets or buckets[0][1] != 0.0 or buckets[-1][2] != math.inf:
        raise ValueError(message)
    for (_, low, high), following in zip(buckets, (*buckets[1:], None), strict=True):
        if not low < high or (following is not None and following[1] != high):
            raise ValueError(message)
    if len({name for name, _, _ in buckets}) != len(buckets):
        raise ValueError(f"size_buckets names must be unique, got {size_buckets!r}")
    return buckets


def _check_count(value, name):
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _check_image_size(image_size):
    """``None`` or ``(height, width)`` positive ints; an int means a square."""
    if image_size is None:
        return None
    if isinstance(image_size, int | np.integer) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    try:
        height, width = image_size
    except (TypeError, ValueError):
        raise ValueError(
            f"image_size must be None, an int or (height, width), got {image_size!r}"
        ) from None
    for value in (height, width):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
            raise ValueError(f"image_size must hold positive integers, got {image_size!r}")
    return int(height), int(width)


def _check_resize(min_side, max_side, stride, image_size):
    for name, value in (("min_side", min_side), ("max_side", max_side)):
        number = _number(value, name)
        if not (math.isfinite(number) and number > 0):
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    if image_size is None:
        if isinstance(stride, bool) or not isinstance(stride, int | np.integer) or stride <= 0:
            raise ValueError(f"stride must be a positive integer, got {stride!r}")


def _check_records(dataset_or_records):
    records = getattr(dataset_or_records, "records", dataset_or_records)
    try:
        records = list(records)
    except TypeError:
        raise ValueError(
            "dataset_or_records must be a data set with .records or a sequence of record dicts, "
            f"got {type(dataset_or_records).__name__}"
        ) from None
    if not records:
        raise ValueError("dataset_or_records must hold at least one record, got none")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise ValueError(
                f"dataset_or_records: record {i} must be a dict, got {type(rec).__name__}"
            )
    return records


# --------------------------------------------------------------------------- records
@dataclasses.dataclass(frozen=True)
class _Prepared:
    """One record's boxes as training sees them, and its padded network input size."""

    boxes: np.ndarray  # float32 [m, 4], clipped to the original image
    resized: np.ndarray  # float32 [m, 4], in the network input
    rows: np.ndarray  # int64 [m], rows of the kept boxes in the record's ``boxes``
    padded_size: tuple  # (height, width) the anchors are laid on
    dropped: int


def _prepare_record(rec, index, min_side, max_side, stride, image_size):
    """Clip, drop and scale one record's boxes as ``DetectionDataset`` does."""
    boxes = rec.get("boxes")
    boxes = np.zeros((0, 4)) if boxes is None else boxes
    try:
        boxes = check_boxes(boxes, name=f"record {index} 'boxes'")
    except ValueError as e:
        raise ValueError(f"dataset_or_records: {e}") from None
    height, width = _record_size(rec, index)
    # The row numbers ride along as the "classes", so they come out of the same drop.
    kept, rows = clip_boxes_to_image(boxes, np.arange(len(boxes)), height, width)
    ratio = compute_resize_ratio(height, width, min_side=min_side, max_side=max_side)
    if image_size is not None:
        ratio = min(ratio, image_size[0] / height, image_size[1] / width)
        padded = image_size
    else:
        new_h = max(1, int(round(height * ratio)))
        new_w = max(1, int(round(width * ratio)))
        padded = (-(-new_h // stride) * stride, -(-new_w // stride) * stride)
    return _Prepared(
        boxes=kept,
        resized=(kept * np.float32(ratio)).astype("float32"),
        rows=np.asarray(rows, dtype="int64"),
        padded_size=(int(padded[0]), int(padded[1])),
        dropped=int(len(boxes) - len(kept)),
    )


def _record_size(rec, index):
    """``(height, width)`` of a record's original image: its ``height``/``width`` fields,
    else its ``image`` array, else the header of its ``path`` (Pillow, no decoding)."""
    if rec.get("height") is not None and rec.get("width") is not None:
        size = (rec["height"], rec["width"])
    elif rec.get("image") is not None:
        size = tuple(np.shape(rec["image"])[:2])
    elif rec.get("path"):
        size = _header_size(rec["path"], index)
    else:
        raise ValueError(
            f"dataset_or_records: record {index} has no 'height'/'width', 'image' or 'path' "
            "to take the image size from"
        )
    try:
        height, width = (float(v) for v in size)
    except (TypeError, ValueError):
        height = width = math.nan
    if not all(math.isfinite(v) and v >= 1 and v == int(v) for v in (height, width)):
        raise ValueError(
            f"dataset_or_records: record {index} image size must be positive integers "
            f"(height, width), got {size!r}"
        )
    return int(height), int(width)


def _header_size(path, index):
    from PIL import Image

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"dataset_or_records: record {index}: image not found: {path!r}")
    try:
        with Image.open(path) as img:
            width, height = img.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(
            f"dataset_or_records: record {index}: cannot read image {path!r}: {reason}"
        ) from e
    return height, width


def _file_name(rec):
    name = rec.get("file_name") or rec.get("path")
    return None if name is None else str(name)


# --------------------------------------------------------------------------- anchors and IoU
@dataclasses.dataclass(frozen=True)
class _Level:
    """One pyramid level's anchors: centres ``xs [W_l]``, ``ys [H_l]`` and shapes
    ``dims [k, 2]`` (w, h), all float32 as generated."""

    xs: np.ndarray
    ys: np.ndarray
    dims: np.ndarray


def _anchor_levels(anchor_generator, height, width):
    """The generator's anchors for a padded ``height x width`` input, split per level.

    The layout is that of docs/numerics.md, "Anchors" (level-major, ``[H_l, W_l, k]``
    row-major); a generator whose anchors are not a grid there raises ``ValueError``.
    """
    anchors = np.asarray(ops.convert_to_numpy(anchor_generator(height, width)), dtype="float32")
    k = anchor_generator.num_anchors_per_location
    levels, start = [], 0
    for grid_h, grid_w in anchor_generator.grid_sizes(height, width):
        count = grid_h * grid_w * k
        level = anchors[start : start + count].reshape(grid_h, grid_w, k, 4)
        start += count
        xs, ys, dims = level[0, :, 0, 0], level[:, 0, 0, 1], level[0, 0, :, 2:]
        grid = np.concatenate(
            [
                np.broadcast_to(xs[None, :, None, None], (grid_h, grid_w, k, 1)),
                np.broadcast_to(ys[:, None, None, None], (grid_h, grid_w, k, 1)),
                np.broadcast_to(dims[None, None], (grid_h, grid_w, k, 2)),
            ],
            axis=-1,
        )
        if not np.array_equal(grid, level) or np.any(np.diff(xs) <= 0) or np.any(np.diff(ys) <= 0):
            raise ValueError(
                "anchor_generator must lay its anchors on a per-level grid in the order of "
                "docs/numerics.md, 'Anchors'"
            )
        levels.append(_Level(xs, ys, dims))
    if start != len(anchors):
        raise ValueError(
            f"anchor_generator gave {len(anchors)} anchors for {height}x{width}, its grid_sizes "
            f"account for {start}"
        )
    return levels


def _neighbours(values, queries):
    """``[m, 2]`` indices of the sorted ``values`` just below and above each query."""
    above = np.searchsorted(values, queries)
    last = len(values) - 1
    return np.stack([np.clip(above - 1, 0, last), np.clip(above, 0, last)], axis=-1)


def _candidates(levels, boxes):
    """``[m, C, 4]`` float32 ``[cx, cy, w, h]``: per level and anchor shape, the anchors on the
    two grid columns and two grid rows nearest each box centre (``C = 4 * sum_l k_l``)."""
    m = len(boxes)
    centres = (boxes[:, :2].astype("float64") + boxes[:, 2:].astype("float64")) / 2.0
    out = []
    for level in levels:
        k = len(level.dims)
        cx = level.xs[_neighbours(level.xs, centres[:, 0])]  # [m, 2]
        cy = level.ys[_neighbours(level.ys, centres[:, 1])]  # [m, 2]
        shape = (m, 2, 2, k)
        out.append(
            np.stack(
                [
                    np.broadcast_to(cx[:, None, :, None], shape),
                    np.broadcast_to(cy[:, :, None, None], shape),
                    np.broadcast_to(level.dims[:, 0], shape),
                    np.broadcast_to(level.dims[:, 1], shape),
                ],
                axis=-1,
            ).reshape(m, 4 * k, 4)
        )
    return np.concatenate(out, axis=1)


def _areas(boxes):
    """``max(x2 - x1, 0) * max(y2 - y1, 0)`` of ``[..., 4]`` corners."""
    width = np.maximum(boxes[..., 2] - boxes[..., 0], 0)
    return width * np.maximum(boxes[..., 3] - boxes[..., 1], 0)


def _iou(anchors, boxes):
    """IoU ``[m, C]`` of centre-form ``anchors [m, C, 4]`` with corner ``boxes [m, 4]``, in
    float32 with ``pairwise_iou``'s formula (docs/numerics.md, "Conventions")."""
    half = anchors[..., 2:] / np.float32(2.0)
    corners = np.concatenate([anchors[..., :2] - half, anchors[..., :2] + half], axis=-1)
    b = boxes[:, None, :]
    top_left = np.maximum(corners[..., :2], b[..., :2])
    bottom_right = np.minimum(corners[..., 2:], b[..., 2:])
    wh = np.maximum(bottom_right - top_left, np.float32(0.0))
    inter = wh[..., 0] * wh[..., 1]
    union = _areas(corners) + _areas(boxes)[:, None] - inter
    safe = np.where(union > 0, union, np.float32(1.0))
    return np.where(union > 0, inter / safe, np.float32(0.0)).astype("float32")


def _best_anchor(levels, boxes):
    """Best IoU ``[m]`` and best anchor ``[m, 4]`` (cx, cy, w, h) of each box, in chunks."""
    best = np.zeros(len(boxes), dtype="float32")
    anchors = np.zeros((len(boxes), 4), dtype="float32")
    for start in range(0, len(boxes), _CHUNK):
        chunk = boxes[start : start + _CHUNK]
        candidates = _candidates(levels, chunk)
        iou = _iou(candidates, chunk)
        pick = np.argmax(iou, axis=1)
        rows = np.arange(len(chunk))
        best[start : start + len(chunk)] = iou[rows, pick]
        anchors[start : start + len(chunk)] = candidates[rows, pick]
    return best, anchors


@dataclasses.dataclass(frozen=True)
class _Scored:
    """Every kept box of the data set, in record and row order."""

    boxes: np.ndarray  # float32 [N, 4], original image
    resized: np.ndarray  # float32 [N, 4], network input
    box_index: np.ndarray  # int64 [N, 2], (record index, row)
    best: np.ndarray  # float32 [N], best IoU
    anchors: np.ndarray  # float32 [N, 4], best anchor [cx, cy, w, h]


def _score_boxes(prepared, anchor_generator):
    """All records' boxes with their best IoU and anchor, as :class:`_Scored`; boxes are
    grouped by padded size so that each size's anchors are made once."""
    boxes = _concat([p.boxes for p in prepared], (0, 4), "float32")
    resized = _concat([p.resized for p in prepared], (0, 4), "float32")
    box_index = np.stack(
        [
            _concat([np.full(len(p.rows), i, "int64") for i, p in enumerate(prepared)], (0,)),
            _concat([p.rows for p in prepared], (0,)),
        ],
        axis=-1,
    ).astype("int64")
    sizes = _concat(
        [np.tile(np.asarray(p.padded_size, "int64"), (len(p.rows), 1)) for p in prepared],
        (0, 2),
        "int64",
    )
    best = np.zeros(len(boxes), dtype="float32")
    anchors = np.zeros((len(boxes), 4), dtype="float32")
    for size in {p.padded_size for p in prepared if len(p.rows)}:
        where = np.flatnonzero((sizes[:, 0] == size[0]) & (sizes[:, 1] == size[1]))
        levels = _anchor_levels(anchor_generator, *size)
        best[where], anchors[where] = _best_anchor(levels, resized[where])
    return _Scored(boxes, resized, box_index, best, anchors)


def _concat(arrays, empty_shape, dtype="int64"):
    arrays = [a for a in arrays if len(a)]
    return np.concatenate(arrays).astype(dtype) if arrays else np.zeros(empty_shape, dtype)


# --------------------------------------------------------------------------- statistics
def _bucket_index(resized, buckets):
    """``[N]`` bucket of each resized box by ``sqrt(w * h)`` (``low <= side < high``)."""
    sides = np.sqrt(_areas(resized.astype("float64")))
    highs = np.asarray([high for _, _, high in buckets[:-1]], dtype="float64")
    return np.searchsorted(highs, sides, side="right").astype("int64")


def _worst_boxes(records, scored, bucket_names, bucket_index, num_worst):
    """The ``num_worst`` boxes of lowest best IoU (ties in record order) as ``WorstBox``es."""
    worst = []
    for i in np.argsort(scored.best, kind="stable")[:num_worst]:
        record_index, row = (int(v) for v in scored.box_index[i])
        record = records[record_index]
        worst.append(
            WorstBox(
                record_index=record_index,
                row=row,
                image_id=record.get("image_id", record_index),
                file_name=_file_name(record),
                box=tuple(float(v) for v in scored.boxes[i]),
                resized_box=tuple(float(v) for v in scored.resized[i]),
                best_iou=float(scored.best[i]),
                bucket=bucket_names[bucket_index[i]],
                anchor=tuple(float(v) for v in scored.anchors[i]),
            )
        )
    return tuple(worst)


def _bucket_stats(name, low, high, best, positive_iou, negative_iou):
    matched = int(np.count_nonzero(best >= positive_iou))
    unmatched = int(np.count_nonzero(best < negative_iou))
    return BucketStats(
        name=name,
        low=float(low),
        high=float(high),
        count=int(len(best)),
        matched=matched,
        ignored_only=int(len(best)) - matched - unmatched,
        unmatched=unmatched,
        median_best_iou=float(np.median(best)) if len(best) else math.nan,
    )


def _generator_config(anchor_generator):
    get_config = getattr(anchor_generator, "get_config", None)
    return get_config() if callable(get_config) else None


def _plain_number(value):
    """A Python ``int`` or ``float`` for JSON (NumPy scalars are not serialisable)."""
    if isinstance(value, int | np.integer):
        return int(value)
    return float(value)


def _finite_or_none(value):
    return None if value is None or not math.isfinite(value) else float(value)


def _json_id(value):
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value)
    return str(value)


# --------------------------------------------------------------------------- text
def _summary_lines(report):
    settings = report.settings
    if settings["image_size"] is None:
        resize = (
            f"short side {settings['min_side']:g}, long side <= {settings['max_side']:g}, "
            f"padded to a multiple of {settings['stride']}"
        )
    else:
        height, width = settings["image_size"]
        resize = (
            f"short side {settings['min_side']:g}, long side <= {settings['max_side']:g}, "
            f"fitted into {height}x{width}"
        )
    lines = [
        f"Anchor coverage of {report.total} boxes in {report.num_images} images ({resize}).",
        f"matched: best IoU >= {report.positive_iou:g}; ignored only: "
        f"{report.negative_iou:g} <= best IoU < {report.positive_iou:g}; unmatched: "
        f"best IoU < {report.negative_iou:g}. Sizes are sqrt(w * h) in the resized image.",
    ]
    if report.dropped:
        lines.append(f"{report.dropped} boxes without area inside their image were left out.")
    return lines


def _bucket_lines(report):
    header = ("bucket", "size (px)", "boxes", "matched", "ignored", "unmatched", "matched %")
    rows = [header + ("median IoU",)]
    for b in (*report.buckets, report.overall):
        size = "all" if b is report.overall else _size_range(b.low, b.high)
        rows.append(
            (
                b.name,
                size,
                str(b.count),
                str(b.matched),
                str(b.ignored_only),
                str(b.unmatched),
                "-" if not b.count else f"{100.0 * b.fraction_matched:.1f}",
                "-" if not b.count else f"{b.median_best_iou:.3f}",
            )
        )
    return _table(rows, right_from=2)


def _size_range(low, high):
    if low == 0.0:
        return f"< {high:g}"
    if math.isinf(high):
        return f">= {low:g}"
    return f"{low:g}-{high:g}"


def _worst_lines(report):
    if not report.worst:
        return []
    rows = [
        ("best IoU", "bucket", "image", "box (x1, y1, x2, y2)", "resized w x h", "anchor w x h")
    ]
    for w in report.worst:
        x1, y1, x2, y2 = w.resized_box
        rows.append(
            (
                f"{w.best_iou:.3f}",
                w.bucket,
                str(w.file_name if w.file_name is not None else w.image_id),
                ", ".join(f"{v:.1f}" for v in w.box),
                f"{x2 - x1:.1f} x {y2 - y1:.1f}",
                f"{w.anchor[2]:.1f} x {w.anchor[3]:.1f}",
            )
        )
    return ["", f"Lowest best IoU ({len(report.worst)} boxes):", *_table(rows, right_from=None)]


def _table(rows, right_from):
    """Rows of strings as aligned text; columns from ``right_from`` on are right-aligned."""
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(width) if right_from is not None and c >= right_from else cell.ljust(width)
            for c, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines
