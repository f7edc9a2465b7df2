"""Batching for training and inference without TensorFlow.

:class:`DetectionDataset` is a ``keras.utils.PyDataset``, so ``model.fit`` consumes it on the
TensorFlow, JAX and PyTorch backends alike, with optional thread or process workers.
:class:`InferenceBatches` yields preprocessed images with what is needed to map predictions
back to the original images.

Records are the dicts of :mod:`keras_retinanet.data.coco`; pixels come from ``record["image"]``
(an in-memory ``[H, W, 3]`` array) when present, else from the file ``record["path"]``.
"""

import keras
import numpy as np

from keras_retinanet.data.preprocessing import (
    as_rgb,
    check_boxes,
    check_normalization,
    check_positive,
    load_image,
    normalize_image,
    preprocess_for_inference,
    preprocess_for_training,
)


def _records_of(dataset):
    records = getattr(dataset, "records", dataset)
    records = list(records)
    if not records:
        raise ValueError("dataset must hold at least one record, got none")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise ValueError(f"record {i} must be a dict, got {type(rec).__name__}")
        if rec.get("image") is None and not rec.get("path"):
            raise ValueError(f"record {i} has neither an 'image' array nor a 'path'")
    return records


def _record_pixels(rec, index):
    """``[h, w, 3]`` pixels of a record; ``ValueError`` / ``FileNotFoundError`` name it."""
    image = rec.get("image")
    try:
        if image is None:
            image = load_image(rec["path"])
        return as_rgb(image)
    except ValueError as e:
        raise ValueError(f"record {index}: {e}") from e
    except FileNotFoundError as e:
        raise FileNotFoundError(f"record {index}: {e}") from e


def _record_targets(rec, index):
    boxes = check_boxes(rec.get("boxes", np.zeros((0, 4))), name=f"record {index} 'boxes'")
    classes = np.asarray(rec.get("classes", np.zeros((0,))))
    if classes.size == 0:
        classes = classes.reshape(0)
    integral = classes.dtype.kind in "iu" or (
        classes.dtype.kind == "f" and np.all(np.isfinite(classes) & (classes == np.round(classes)))
    )
    if classes.ndim != 1 or (classes.size and not integral):
        raise ValueError(
            f"record {index}: 'classes' must be [n] integer class indices, got {classes.dtype} "
            f"{classes.shape}"
        )
    if classes.size and classes.min() < 0:
        raise ValueError(f"record {index}: 'classes' must be >= 0, got {classes.min()}")
    classes = classes.astype("int32")
    if len(boxes) != len(classes):
        raise ValueError(f"record {index}: {len(boxes)} boxes but {len(classes)} classes")
    return boxes, classes


def clip_boxes_to_image(boxes, classes, height, width):
    """Clip ``[n, 4]`` corners to ``[0, width] x [0, height]``; drop boxes left without area.

    Returns:
        ``(boxes [m, 4] float32, classes [m])`` with ``m <= n``.
    """
    boxes = np.asarray(boxes, dtype="float32").reshape(-1, 4)
    limits = np.asarray([width, height, width, height], dtype="float32")
    clipped = np.clip(boxes, 0.0, limits)
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    return clipped[keep], np.asarray(classes)[keep]


def _stack_padded(images):
    """Zero-pad raw ``[h, w, 3]`` images bottom/right to the largest size -> ``[B, H, W, 3]``."""
    height = max(im.shape[0] for im in images)
    width = max(im.shape[1] for im in images)
    batch = np.zeros((len(images), height, width, 3), dtype="float32")
    for i, im in enumerate(images):
        batch[i, : im.shape[0], : im.shape[1]] = im
    return batch


def _check_sizes(min_side, max_side, stride, image_size):
    if image_size is not None:
        if isinstance(image_size, str) or len(image_size) != 2:
            raise ValueError(f"image_size must be (height, width), got {image_size!r}")
        check_positive(image_size[0], "image_size[0]")
        check_positive(image_size[1], "image_size[1]")
        image_size = (int(image_size[0]), int(image_size[1]))
    for name, value in (("min_side", min_side), ("max_side", max_side), ("stride", stride)):
        check_positive(value, name)
    return image_size


def _check_batch_size(batch_size):
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


class DetectionDataset(keras.utils.PyDataset):
    """Batches of preprocessed images and padded box targets.

    Each item is ``(images, {"boxes": boxes, "classes": classes})`` with

    * ``images``: float32 ``[B, H, W, 3]``, normalised (:func:`normalize_image`) unless
      ``normalize=False``; images are zero-padded bottom/right (before normalising, as in
      the keras.io example) to a common size, or to ``image_size`` when given;
    * ``boxes``: float32 ``[B, M, 4]`` xyxy pixels in the resized image, zeros in padding rows;
    * ``classes``: int32 ``[B, M]`` contiguous class indices, ``-1`` in padding rows.

    Ground truth of each record is checked when the data set is built: ``boxes`` must be
    ``[n, 4]`` finite, non-inverted corners and ``classes`` ``[n]`` non-negative integers
    (``ValueError`` naming the record otherwise). When a batch is made, boxes are clipped to
    their image and boxes left without area (outside the image, or of zero width or height)
    are dropped; an image with no boxes gives only padding rows (all anchors background).
    Unreadable or missing image files raise ``ValueError`` / ``FileNotFoundError`` naming the
    record and the path.

    ``M`` is fixed for the whole data set by default (the most boxes any record has), so a
    compiled train step sees the same shapes every batch and is traced once; with
    ``max_boxes=None`` it is the most boxes in each batch instead.

    Randomness (shuffle order, flips, jitter) is derived from ``(seed, epoch, batch index)``
    only, so results do not depend on the number of workers or the order they finish in.
    ``on_epoch_end`` advances the epoch, which reshuffles.

    Args:
        dataset: a :class:`~keras_retinanet.data.CocoDataset` or a list of records.
        batch_size: images per batch.
        training: enables shuffling and flipping by default.
        min_side, max_side, stride, jitter, image_size: resize options of
            :func:`~keras_retinanet.data.preprocessing.resize_and_pad`. The defaults are
            those of docs/numerics.md, "Input preprocessing" (800 / 1333 / 128, no jitter).
        flip: random horizontal flips with ``flip_probability``; default ``training``.
        shuffle: reshuffle every epoch; default ``training``.
        seed: integer seed of all randomness.
        max_boxes: ``"auto"`` (data set maximum), ``None`` (per batch) or an int; records with
            more boxes than an int raise ``ValueError``.
        drop_remainder: drop the last, smaller batch (keeps the batch dimension static).
        normalize: apply caffe-style normalisation.
        workers, use_multiprocessing, max_queue_size: passed to ``keras.utils.PyDataset``.
    """

    def __init__(
        self,
        dataset,
        *,
        batch_size=2,
        training=True,
        min_side=800,
        max_side=1333,
        stride=128,
        jitter=None,
        image_size=None,
        flip=None,
        flip_probability=0.5,
        shuffle=None,
        seed=0,
        max_boxes="auto",
        drop_remainder=False,
        normalize=True,
        workers=1,
        use_multiprocessing=False,
        max_queue_size=10,
    ):
        super().__init__(
            workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size
        )
        self.records = _records_of(dataset)
        self.batch_size = _check_batch_size(batch_size)
        self.training = bool(training)
        self.image_size = _check_sizes(min_side, max_side, stride, image_size)
        self.min_side, self.max_side, self.stride = min_side, max_side, int(stride)
        self.jitter = None if jitter is None else tuple(jitter)
        self.flip = self.training if flip is None else bool(flip)
        self.flip_probability = float(flip_probability)
        if not 0.0 <= self.flip_probability <= 1.0:
            raise ValueError(f"flip_probability must be in [0, 1], got {flip_probability!r}")
        self.shuffle = self.training if shuffle is None else bool(shuffle)
        self.seed = int(seed)
        self.drop_remainder = bool(drop_remainder)
        self.normalize = bool(normalize)
        self.class_to_category_id = getattr(dataset, "class_to_category_id", None)

        counts = [len(_record_targets(rec, i)[1]) for i, rec in enumerate(self.records)]
        most = max(counts, default=0)
        if max_boxes == "auto":
            self.max_boxes = max(1, most)
        elif max_boxes is None:
            self.max_boxes = None
        else:
            self.max_boxes = int(max_boxes)
            if self.max_boxes <= 0:
                raise ValueError(f"max_boxes must be positive, got {max_boxes}")
            if most > self.max_boxes:
                raise ValueError(
                    f"a record has {most} boxes, more than max_boxes={self.max_boxes}; "
                    "raise max_boxes or use max_boxes='auto'"
                )
        self.epoch = 0
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch):
        n = len(self.records)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch]).permutation(n)

    def __len__(self):
        n = len(self.records)
        if self.drop_remainder:
            return n // self.batch_size
        return -(-n // self.batch_size)

    def on_epoch_end(self):
        self.epoch += 1
        self._order = self._epoch_order(self.epoch)

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"batch index {index} out of range for {len(self)} batches")
        rng = np.random.default_rng([self.seed, self.epoch, index, 1])
        picked = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        images, all_boxes, all_classes = [], [], []
        for i in picked:
            rec = self.records[int(i)]
            pixels = _record_pixels(rec, int(i))
            boxes, classes = _record_targets(rec, int(i))
            boxes, classes = clip_boxes_to_image(boxes, classes, *pixels.shape[:2])
            image, boxes, _ = preprocess_for_training(
                pixels,
                boxes,
                rng=rng,
                min_side=self.min_side,
                max_side=self.max_side,
                jitter=self.jitter,
                stride=self.stride,
                image_size=self.image_size,
                flip=self.flip,
                flip_probability=self.flip_probability,
                normalize=False,
            )
            images.append(image)
            all_boxes.append(boxes)
            all_classes.append(classes)

        batch = _stack_padded(images)
        if self.normalize:
            batch = normalize_image(batch)
        rows = self.max_boxes or max(1, max(len(c) for c in all_classes))
        boxes_out = np.zeros((len(picked), rows, 4), dtype="float32")
        classes_out = np.full((len(picked), rows), -1, dtype="int32")
        for j, (boxes, classes) in enumerate(zip(all_boxes, all_classes, strict=True)):
            boxes_out[j, : len(boxes)] = boxes
            classes_out[j, : len(classes)] = classes
        return batch, {"boxes": boxes_out, "classes": classes_out}


class InferenceBatches:
    """Re-iterable batches for prediction, in record order.

    Iterating yields ``(images, meta)``: ``images`` float32 ``[B, H, W, 3]`` (preprocessed
    like :func:`~keras_retinanet.data.preprocessing.preprocess_for_inference`, padded to a
    common size) and ``meta`` a dict of

    * ``image_id``: int64 ``[B]``;
    * ``ratio``: float32 ``[B]`` resize ratios (original boxes = predicted boxes / ratio);
    * ``original_size``: int32 ``[B, 2]`` original ``(height, width)``.

    Args:
        dataset: a :class:`~keras_retinanet.data.CocoDataset` or a list of records
            (``image_id`` defaults to the record's position).
        batch_size, min_side, max_side, stride, image_size, normalize: as for
            :class:`DetectionDataset`.
        normalization: ``"caffe"`` (the default: the keras.io model's input; the padding is
            normalised with the image, as in keras.io) or ``"torchvision"`` (models converted
            from torchvision: torchvision's resize and normalisation, and zeros in the
            padding, as its ``GeneralizedRCNNTransform``; ``image_size`` must be ``None``
            and ``stride=32`` matches torchvision). See
            :func:`~keras_retinanet.data.preprocessing.preprocess_for_inference`.
    """

    def __init__(
        self,
        dataset,
        *,
        batch_size=1,
        min_side=800,
        max_side=1333,
        stride=128,
        image_size=None,
        normalize=True,
        normalization="caffe",
    ):
        self.records = _records_of(dataset)
        self.batch_size = _check_batch_size(batch_size)
        self.image_size = _check_sizes(min_side, max_side, stride, image_size)
        self.min_side, self.max_side, self.stride = min_side, max_side, int(stride)
        self.normalize = bool(normalize)
        self.normalization = check_normalization(normalization)
        if normalization == "torchvision" and self.image_size is not None:
            raise ValueError(
                "image_size must be None with normalization='torchvision' (torchvision's "
                f"resize sets the size), got {image_size!r}"
            )
        self.class_to_category_id = getattr(dataset, "class_to_category_id", None)

    def __len__(self):
        return -(-len(self.records) // self.batch_size)

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"batch index {index} out of range for {len(self)} batches")
        start = index * self.batch_size
        # caffe: pad raw pixels, then normalise the batch (padding included, as keras.io);
        # torchvision: normalise each image, then pad with zeros (as GeneralizedRCNNTransform).
        per_image = self.normalize and self.normalization == "torchvision"
        images, ids, ratios, sizes = [], [], [], []
        for pos in range(start, min(start + self.batch_size, len(self.records))):
            rec = self.records[pos]
            pixels = _record_pixels(rec, pos)
            image, ratio = preprocess_for_inference(
                pixels,
                min_side=self.min_side,
                max_side=self.max_side,
                stride=self.stride,
                image_size=self.image_size,
                normalize=per_image,
                normalization=self.normalization,
            )
            images.append(image)
            ids.append(int(rec.get("image_id", pos)))
            ratios.append(ratio)
            sizes.append(pixels.shape[:2])
        batch = _stack_padded(images)
        if self.normalize and not per_image:
            batch = normalize_image(batch)
        meta = {
            "image_id": np.asarray(ids, dtype="int64"),
            "ratio": np.asarray(ratios, dtype="float32"),
            "original_size": np.asarray(sizes, dtype="int32").reshape(-1, 2),
        }
        return batch, meta

    def __iter__(self):
        for index in range(len(self)):
            yield self[index]
