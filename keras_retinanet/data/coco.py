"""Reading and writing COCO-format ``instances_*.json`` detection annotations.

Loading uses the standard library ``json`` only, so training on a COCO-format data set does
not need ``pycocotools`` (evaluation does, see :mod:`keras_retinanet.evaluation`).

A *record* is one image and its training targets::

    {
        "image_id": int,            # COCO image id
        "file_name": str,           # relative to the image directory
        "path": str | None,         # image_dir / file_name, or None without an image_dir
        "height": int, "width": int,
        "boxes": float32 [n, 4],    # [x1, y1, x2, y2] in pixels of the original image
        "classes": int32 [n],       # contiguous class indices 0 .. C - 1
    }

COCO category ids are often sparse (1..90 with gaps for COCO 2017); the model's class head
needs contiguous indices, so categories are sorted by id and numbered 0..C-1.
``class_to_category_id`` maps predictions back for evaluation.
"""

import json
import math
import os

import numpy as np

_REQUIRED_TOP_LEVEL = ("images", "annotations", "categories")


class CocoDataset:
    """COCO instances annotations as a list of records with contiguous class indices.

    Crowd annotations (``iscrowd == 1``) describe a group of objects with one box; they are
    left out of the training targets, as in the reference implementations (the COCO evaluator
    reads them from the JSON file itself). Boxes are clipped to the image
    (``[0, width] x [0, height]``); boxes with a non-positive width or height, before or after
    clipping (for example entirely outside the image), are dropped. Images without any
    remaining annotation are kept unless ``skip_empty`` is set: they are useful negatives.

    ``width``/``height`` of an image entry are those of the displayed (EXIF-oriented) image
    (see :mod:`keras_retinanet.data.preprocessing`); they are not compared with the files
    here (that would read every file): call :meth:`verify_images` for that.

    Raises:
        FileNotFoundError: when ``annotation_file`` or ``image_dir`` does not exist.
        ValueError: naming the file and the offending entry, for invalid JSON, a missing
            ``images`` / ``annotations`` / ``categories`` list, an image without ``id``,
            ``file_name``, or a positive integer ``height`` / ``width``, an annotation without
            ``image_id``, ``category_id`` or a ``bbox`` of 4 finite numbers, references to
            unknown image or category ids, and duplicate ids.

    Args:
        annotation_file: path to an ``instances_*.json`` file.
        image_dir: folder the ``file_name`` fields are relative to, or ``None`` when only the
            annotations are needed.
        skip_empty: drop images that have no usable box.

    Attributes:
        records: list of record dicts (see the module docstring), in the file's image order.
        class_names: category names, index = contiguous class.
        category_ids: COCO category id of each class, sorted ascending.
        class_to_category_id: ``{class_index: category_id}``.
        category_id_to_class: ``{category_id: class_index}``.
    """

    def __init__(self, annotation_file, image_dir=None, *, skip_empty=False):
        self.annotation_file = os.fspath(annotation_file)
        self.image_dir = None if image_dir is None else os.fspath(image_dir)
        if not os.path.isfile(self.annotation_file):
            raise FileNotFoundError(f"COCO annotation file not found: {self.annotation_file}")
        if self.image_dir is not None and not os.path.isdir(self.image_dir):
            raise FileNotFoundError(f"COCO image directory not found: {self.image_dir}")
        with open(self.annotation_file, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{self.annotation_file} is not valid JSON: {e}") from e
        self._parse(data, skip_empty=skip_empty)

    # ------------------------------------------------------------------ parsing
    def _parse(self, data, *, skip_empty):
        where = self.annotation_file
        if not isinstance(data, dict):
            raise ValueError(f"{where}: top level must be a JSON object")
        for key in _REQUIRED_TOP_LEVEL:
            if key not in data:
                raise ValueError(f"{where}: missing required field '{key}'")
            if not isinstance(data[key], list):
                raise ValueError(f"{where}: field '{key}' must be a list")

        categories = sorted(data["categories"], key=lambda c: _field(c, "id", where, "category"))
        self.category_ids = [int(c["id"]) for c in categories]
        if len(set(self.category_ids)) != len(self.category_ids):
            raise ValueError(f"{where}: duplicate category ids in 'categories'")
        self.class_names = [str(c.get("name", c["id"])) for c in categories]
        self.class_to_category_id = dict(enumerate(self.category_ids))
        self.category_id_to_class = {cid: i for i, cid in enumerate(self.category_ids)}

        images = {}
        order = []
        for img in data["images"]:
            image_id = int(_field(img, "id", where, "image"))
            if image_id in images:
                raise ValueError(f"{where}: duplicate image id {image_id} in 'images'")
            file_name = _field(img, "file_name", where, f"image {image_id}")
            if not isinstance(file_name, str) or not file_name:
                raise ValueError(
                    f"{where}: image {image_id} field 'file_name' must be a non-empty string"
                )
            images[image_id] = {
                "image_id": image_id,
                "file_name": file_name,
                "path": None if self.image_dir is None else os.path.join(self.image_dir, file_name),
                "height": _positive_int(img, "height", where, f"image {image_id}"),
                "width": _positive_int(img, "width", where, f"image {image_id}"),
                "_boxes": [],
                "_classes": [],
            }
            order.append(image_id)

        for ann in data["annotations"]:
            ann_id = ann.get("id", "?") if isinstance(ann, dict) else "?"
            what = f"annotation {ann_id}"
            image_id = int(_field(ann, "image_id", where, what))
            category_id = int(_field(ann, "category_id", where, what))
            if image_id not in images:
                raise ValueError(f"{where}: {what} refers to unknown image_id {image_id}")
            if category_id not in self.category_id_to_class:
                raise ValueError(f"{where}: {what} refers to unknown category_id {category_id}")
            if ann.get("iscrowd", 0):
                continue
            bbox = _field(ann, "bbox", where, what)
            if (
                not isinstance(bbox, list | tuple)
                or len(bbox) != 4
                or not all(_is_finite_number(v) for v in bbox)
            ):
                raise ValueError(
                    f"{where}: {what} field 'bbox' must be [x, y, w, h] finite numbers, "
                    f"got {bbox!r}"
                )
            x, y, w, h = (float(v) for v in bbox)
            if not (w > 0 and h > 0):
                continue
            img = images[image_id]
            width, height = float(img["width"]), float(img["height"])
            x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
            x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
            if not (x2 > x1 and y2 > y1):
                continue  # entirely outside the image
            img["_boxes"].append([x1, y1, x2, y2])
            img["_classes"].append(self.category_id_to_class[category_id])

        self.records = []
        for image_id in order:
            rec = images[image_id]
            boxes = np.asarray(rec.pop("_boxes"), dtype="float32").reshape(-1, 4)
            classes = np.asarray(rec.pop("_classes"), dtype="int32").reshape(-1)
            if skip_empty and len(classes) == 0:
                continue
            rec["boxes"] = boxes
            rec["classes"] = classes
            self.records.append(rec)

    # ------------------------------------------------------------------ access
    @property
    def num_classes(self):
        """Number of contiguous classes ``C``."""
        return len(self.category_ids)

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        return self.records[index]

    def __iter__(self):
        return iter(self.records)

    def verify_images(self, *, raise_errors=True, progress=None):
        """Check every image file against its ``width``/``height`` entry (header reads only).

        Not done by the constructor, which reads only the JSON so that large data sets open
        fast: a mismatching entry would otherwise silently clip or drop boxes, since boxes
        are clipped to the JSON size. Sizes are compared in the displayed (EXIF-oriented)
        frame; see :func:`keras_retinanet.data.verify.verify_images` for the arguments, the
        return value and the messages (which name the file, the JSON size, the file's size,
        and whether one is the other swapped, i.e. an EXIF rotation mismatch). Unreadable
        or missing files are reported the same way.

        Raises:
            ValueError: without ``image_dir``, or (with ``raise_errors``) at the first
                problem.
        """
        from keras_retinanet.data.verify import verify_images

        if self.image_dir is None:
            raise ValueError("CocoDataset was created without image_dir; cannot check images")
        return verify_images(
            self.records,
            what=self.annotation_file,
            raise_errors=raise_errors,
            progress=progress,
        )

    #: Alias of :meth:`verify_images`.
    check_image_sizes = verify_images

    def load_image(self, index):
        """Pixels of record ``index`` as uint8 RGB ``[H, W, 3]`` (needs ``image_dir``)."""
        from keras_retinanet.data.preprocessing import load_image

        rec = self.records[index]
        if rec["path"] is None:
            raise ValueError("CocoDataset was created without image_dir; cannot load pixels")
        return load_image(rec["path"])

    def __repr__(self):
        return (
            f"CocoDataset({self.annotation_file!r}, images={len(self)}, classes={self.num_classes})"
        )


def load_coco(annotation_file, image_dir=None, *, skip_empty=False):
    """Shorthand for :class:`CocoDataset` ``(annotation_file, image_dir, skip_empty=...)``."""
    return CocoDataset(annotation_file, image_dir, skip_empty=skip_empty)


def write_coco(path, records, class_names, *, category_ids=None, description=None):
    """Write records as a COCO ``instances`` JSON file.

    Args:
        path: output file; parent folders are created.
        records: iterable of dicts with ``file_name``, ``height``, ``width``, ``boxes``
            (``[n, 4]`` xyxy pixels) and ``classes`` (``[n]`` contiguous indices); optional
            ``image_id`` (default: position + 1, since COCO ids start at 1) and ``iscrowd``
            (``[n]`` flags, default 0).
        class_names: name of each contiguous class.
        category_ids: COCO id of each class; default ``1..C`` as in COCO itself.
        description: optional ``info.description`` text.

    Returns:
        ``path`` as a string. The output depends only on the inputs (no timestamps), so the
        same records always give the same bytes.
    """
    path = os.fspath(path)
    class_names = [str(n) for n in class_names]
    if category_ids is None:
        category_ids = list(range(1, len(class_names) + 1))
    category_ids = [int(c) for c in category_ids]
    if len(category_ids) != len(class_names):
        raise ValueError(
            f"category_ids has {len(category_ids)} entries but class_names has {len(class_names)}"
        )
    if len(set(category_ids)) != len(category_ids):
        raise ValueError("category_ids must be unique")

    images, annotations = [], []
    seen_ids = set()
    for position, rec in enumerate(records):
        for key in ("file_name", "height", "width", "boxes", "classes"):
            if key not in rec:
                raise ValueError(f"record {position} is missing field '{key}'")
        image_id = int(rec.get("image_id", position + 1))
        if image_id in seen_ids:
            raise ValueError(f"record {position}: duplicate image_id {image_id}")
        seen_ids.add(image_id)
        boxes = np.asarray(rec["boxes"], dtype="float64").reshape(-1, 4)
        classes = np.asarray(rec["classes"]).reshape(-1).astype("int64")
        if len(boxes) != len(classes):
            raise ValueError(f"record {position}: {len(boxes)} boxes but {len(classes)} classes")
        if len(classes) and (classes.min() < 0 or classes.max() >= len(class_names)):
            raise ValueError(f"record {position}: class index outside 0..{len(class_names) - 1}")
        crowd = np.asarray(rec.get("iscrowd", np.zeros(len(classes))), dtype="int64").reshape(-1)
        images.append(
            {
                "id": image_id,
                "file_name": str(rec["file_name"]),
                "height": int(rec["height"]),
                "width": int(rec["width"]),
            }
        )
        for box, cls, is_crowd in zip(boxes, classes, crowd, strict=True):
            x1, y1, x2, y2 = (float(v) for v in box)
            w, h = x2 - x1, y2 - y1
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_ids[int(cls)],
                    "bbox": [x1, y1, w, h],
                    "area": w * h,
                    "iscrowd": int(is_crowd),
                }
            )

    data = {
        "info": {"description": description or "keras_retinanet COCO-format annotations"},
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": cid, "name": name, "supercategory": "object"}
            for cid, name in zip(category_ids, class_names, strict=True)
        ],
    }
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    return path


def _is_finite_number(value):
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive_int(obj, key, where, what):
    value = _field(obj, key, where, what)
    if not _is_finite_number(value) or value != int(value) or value < 1:
        raise ValueError(f"{where}: {what} field '{key}' must be a positive integer, got {value!r}")
    return int(value)


def _field(obj, key, where, what):
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: {what} must be a JSON object")
    if key not in obj:
        raise ValueError(f"{where}: {what} is missing field '{key}'")
    return obj[key]
