"""fizyr/keras-retinanet's CSV annotation format.

Two files. The *annotations* file has one object per line::

    path/to/image.jpg,x1,y1,x2,y2,class_name
    path/to/image.jpg,,,,,                      # an image without any object

An image with several objects is listed on several lines; images keep the order in which
they first appear. Coordinates are 0-based pixel corners ``[x1, y1, x2, y2]`` of the original
image (integers as fizyr writes them, or decimals), with ``x1 < x2`` and ``y1 < y2``; for a
photo with an EXIF orientation they are in its displayed (rotated) frame, whose size is read
from the header only by :func:`keras_retinanet.data.preprocessing.image_size`. Image paths are
relative to the annotations file's folder unless ``base_dir`` is given; absolute paths are
used as they are. The *classes* file maps names to contiguous ids::

    class_name,id          # ids 0 .. C - 1, each once

Records are those of :mod:`keras_retinanet.data.coco` (``image_id``, ``file_name``, ``path``,
``height``, ``width``, ``boxes``, ``classes``); ``image_id`` is the position in the file plus 1
(COCO ids start at 1), ``file_name`` the path as written in the annotations file. The class
index *is* the id of the classes file, and the COCO category id of a class is that same id,
so :meth:`CsvDataset.to_coco` gives a ground truth that :func:`keras_retinanet.evaluation
.evaluate_coco` scores detections against.
"""

import csv
import json
import math
import os

import numpy as np

_EMPTY = ("", "", "", "", "")


class CsvDataset:
    """A CSV-annotated data set (fizyr's format) with the interface of ``CocoDataset``.

    Everything is checked when the data set is created, so a bad file fails at once rather
    than in the middle of training. Every image file must exist; its size is read from the file
    header with Pillow (the pixels are not decoded).

    A box must lie inside its image: ``0 <= x1 < x2 <= width`` and ``0 <= y1 < y2 <= height``
    (coordinates are pixel corners, so ``x2 == width`` is the right edge). A box outside the
    image is an error, not silently clipped: it usually means swapped columns or annotations
    made for a resized copy of the image.

    Raises:
        FileNotFoundError: when ``annotations_csv`` or ``classes_csv`` does not exist.
        ValueError: one line, ``"<file>:<line>: <problem>"``, for a row without exactly 6
            (annotations) or 2 (classes) columns, a partly empty row, a coordinate or id that
            is not a finite number / an integer, ``x2 <= x1`` or ``y2 <= y1``, a box outside
            the image, a class missing from the classes file, an empty, duplicate or
            out-of-range (not ``0..C-1``) class name or id, a missing or unreadable image
            file, and an empty classes file.

    Args:
        annotations_csv: the annotations file.
        classes_csv: the classes file.
        base_dir: folder relative image paths are resolved against; default the folder of
            ``annotations_csv``.

    Attributes:
        records: list of record dicts (see the module docstring).
        class_names: class names, index = class id.
        category_ids: category id of each class (``0..C-1``, the classes file's ids).
        class_to_category_id: ``{class_index: category_id}`` (the identity).
        category_id_to_class: ``{category_id: class_index}``.
    """

    def __init__(self, annotations_csv, classes_csv, *, base_dir=None):
        self.annotations_csv = os.fspath(annotations_csv)
        self.classes_csv = os.fspath(classes_csv)
        for what, path in (("annotations", self.annotations_csv), ("classes", self.classes_csv)):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"CSV {what} file not found: {path}")
        if base_dir is None:
            base_dir = os.path.dirname(os.path.abspath(self.annotations_csv))
        self.base_dir = os.fspath(base_dir)

        self.class_names = read_csv_classes(self.classes_csv)
        self.category_ids = list(range(len(self.class_names)))
        self.class_to_category_id = dict(enumerate(self.category_ids))
        self.category_id_to_class = {cid: i for i, cid in enumerate(self.category_ids)}
        self.records = self._read_annotations()

    def _read_annotations(self):
        where = self.annotations_csv
        name_to_class = {name: i for i, name in enumerate(self.class_names)}
        images = {}  # file_name -> record under construction (dicts keep insertion order)
        for line, row in _rows(where):
            if len(row) != 6:
                raise ValueError(
                    f"{where}:{line}: expected 6 columns 'path,x1,y1,x2,y2,class_name', "
                    f"got {len(row)}: {','.join(row)!r}"
                )
            file_name, *coords, class_name = (c.strip() for c in row)
            if not file_name:
                raise ValueError(f"{where}:{line}: empty image path")
            rec = images.get(file_name)
            if rec is None:
                rec = images[file_name] = {
                    "image_id": len(images) + 1,
                    "file_name": file_name,
                    "path": os.path.join(self.base_dir, file_name),
                    "_line": line,
                    "_boxes": [],
                    "_classes": [],
                }
                rec["width"], rec["height"] = _image_size(rec["path"], where, line)
            if (*coords, class_name) == _EMPTY:
                continue  # an image without objects
            if "" in coords or not class_name:
                raise ValueError(
                    f"{where}:{line}: a row must have all of x1,y1,x2,y2,class_name or none, "
                    f"got {','.join(row)!r}"
                )
            x1, y1, x2, y2 = (
                _number(v, n, where, line)
                for v, n in zip(coords, "x1 y1 x2 y2".split(), strict=True)
            )
            if x2 <= x1:
                raise ValueError(f"{where}:{line}: x2 ({x2:g}) must be greater than x1 ({x1:g})")
            if y2 <= y1:
                raise ValueError(f"{where}:{line}: y2 ({y2:g}) must be greater than y1 ({y1:g})")
            width, height = rec["width"], rec["height"]
            if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
                raise ValueError(
                    f"{where}:{line}: box [{x1:g}, {y1:g}, {x2:g}, {y2:g}] is outside image "
                    f"{file_name!r} of {width}x{height} pixels (need 0 <= x1 < x2 <= width, "
                    "0 <= y1 < y2 <= height)"
                )
            if class_name not in name_to_class:
                raise ValueError(
                    f"{where}:{line}: class {class_name!r} is not in the classes file "
                    f"{self.classes_csv}"
                )
            rec["_boxes"].append([x1, y1, x2, y2])
            rec["_classes"].append(name_to_class[class_name])

        records = []
        for rec in images.values():
            del rec["_line"]
            rec["boxes"] = np.asarray(rec.pop("_boxes"), dtype="float32").reshape(-1, 4)
            rec["classes"] = np.asarray(rec.pop("_classes"), dtype="int32").reshape(-1)
            records.append(rec)
        return records

    # ------------------------------------------------------------------ access
    @property
    def num_classes(self):
        """Number of contiguous classes ``C``."""
        return len(self.class_names)

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        return self.records[index]

    def __iter__(self):
        return iter(self.records)

    def load_image(self, index):
        """Pixels of record ``index`` as uint8 RGB ``[H, W, 3]``."""
        from keras_retinanet.data.preprocessing import load_image

        return load_image(self.records[index]["path"])

    def to_coco(self):
        """The data set as a COCO ``instances`` dict (what :func:`write_coco` writes).

        Image ids, file names and category ids are those of :attr:`records` and
        :attr:`category_ids`, so ``evaluate_coco(dataset.to_coco(), detections)`` scores the
        output of ``InferenceBatches(dataset)`` with ``dataset.class_to_category_id``.
        """
        return records_to_coco(
            self.records,
            self.class_names,
            self.category_ids,
            description=f"keras_retinanet CSV annotations {os.path.basename(self.annotations_csv)}",
        )

    def write_coco_json(self, path):
        """Write :meth:`to_coco` to ``path`` (parent folders created); returns ``path``."""
        return _write_json(path, self.to_coco())

    def __repr__(self):
        return (
            f"CsvDataset({self.annotations_csv!r}, {self.classes_csv!r}, images={len(self)}, "
            f"classes={self.num_classes})"
        )


def load_csv(annotations_csv, classes_csv, *, base_dir=None):
    """Shorthand for :class:`CsvDataset` ``(annotations_csv, classes_csv, base_dir=...)``."""
    return CsvDataset(annotations_csv, classes_csv, base_dir=base_dir)


def read_csv_classes(classes_csv):
    """Class names of a ``class_name,id`` file, index = id; errors name the file and line."""
    where = os.fspath(classes_csv)
    by_id, first_line = {}, {}
    rows = list(_rows(where))
    for line, row in rows:
        if len(row) != 2:
            raise ValueError(
                f"{where}:{line}: expected 2 columns 'class_name,id', got {len(row)}: "
                f"{','.join(row)!r}"
            )
        name, text = row[0].strip(), row[1].strip()
        if not name:
            raise ValueError(f"{where}:{line}: empty class name")
        try:
            class_id = int(text)
        except ValueError:
            raise ValueError(f"{where}:{line}: class id must be an integer, got {text!r}") from None
        if name in first_line:
            raise ValueError(
                f"{where}:{line}: duplicate class name {name!r} (first on line {first_line[name]})"
            )
        if class_id in by_id:
            raise ValueError(
                f"{where}:{line}: duplicate class id {class_id} (first on line "
                f"{first_line[by_id[class_id]]})"
            )
        if not 0 <= class_id < len(rows):
            raise ValueError(
                f"{where}:{line}: class id {class_id} outside 0..{len(rows) - 1} "
                f"(ids must be 0..C-1 for C = {len(rows)} classes)"
            )
        by_id[class_id] = name
        first_line[name] = line
    if not by_id:
        raise ValueError(f"{where}: no classes")
    return [by_id[i] for i in range(len(by_id))]


def write_csv(annotations_csv, classes_csv, records, class_names):
    """Write records and class names in the CSV format :class:`CsvDataset` reads.

    Args:
        annotations_csv: output annotations file; parent folders are created.
        classes_csv: output classes file (``class_name,id`` with ids ``0..C-1``).
        records: iterable of dicts with ``file_name`` (the path column, normally relative to
            the folder of ``annotations_csv``), ``boxes`` (``[n, 4]`` xyxy pixels) and
            ``classes`` (``[n]`` indices into ``class_names``). A record without boxes is
            written as ``path,,,,,``.
        class_names: name of each class.

    Coordinates are written as integers when integral, else with ``repr`` precision, so a
    float32 box reads back bit for bit.

    Returns:
        ``(annotations_csv, classes_csv)`` as strings.
    """
    annotations_csv, classes_csv = os.fspath(annotations_csv), os.fspath(classes_csv)
    class_names = [str(n) for n in class_names]
    if len(set(class_names)) != len(class_names):
        raise ValueError("class_names must be unique")
    rows = []
    for position, rec in enumerate(records):
        for key in ("file_name", "boxes", "classes"):
            if key not in rec:
                raise ValueError(f"record {position} is missing field '{key}'")
        boxes = np.asarray(rec["boxes"]).reshape(-1, 4)
        classes = np.asarray(rec["classes"]).reshape(-1).astype("int64")
        if len(boxes) != len(classes):
            raise ValueError(f"record {position}: {len(boxes)} boxes but {len(classes)} classes")
        if len(classes) and (classes.min() < 0 or classes.max() >= len(class_names)):
            raise ValueError(f"record {position}: class index outside 0..{len(class_names) - 1}")
        file_name = str(rec["file_name"])
        if not len(boxes):
            rows.append([file_name, "", "", "", "", ""])
        for box, cls in zip(boxes, classes, strict=True):
            rows.append([file_name, *(format_number(v) for v in box), class_names[int(cls)]])
    _write_rows(annotations_csv, rows)
    _write_rows(classes_csv, [[name, str(i)] for i, name in enumerate(class_names)])
    return annotations_csv, classes_csv


def records_to_coco(records, class_names, category_ids, *, description=None):
    """COCO ``instances`` dict of records (the same layout :func:`write_coco` writes).

    Records need ``image_id``, ``file_name``, ``height``, ``width``, ``boxes`` and ``classes``;
    an optional ``iscrowd`` ``[n]`` flag array and optional ``ignore_boxes`` /
    ``ignore_classes`` (extra boxes written with ``iscrowd = 1``, which COCO evaluation
    ignores: detections matching them count neither as true nor as false positives) are
    honoured.
    """
    images, annotations = [], []
    for rec in records:
        image_id = int(rec["image_id"])
        images.append(
            {
                "id": image_id,
                "file_name": str(rec["file_name"]),
                "height": int(rec["height"]),
                "width": int(rec["width"]),
            }
        )
        boxes = np.asarray(rec["boxes"], dtype="float64").reshape(-1, 4)
        classes = np.asarray(rec["classes"]).reshape(-1)
        crowd = np.asarray(rec.get("iscrowd", np.zeros(len(classes))), dtype="int64").reshape(-1)
        if "ignore_boxes" in rec:
            extra = np.asarray(rec["ignore_boxes"], dtype="float64").reshape(-1, 4)
            boxes = np.concatenate([boxes, extra])
            classes = np.concatenate([classes, np.asarray(rec["ignore_classes"]).reshape(-1)])
            crowd = np.concatenate([crowd, np.ones(len(extra), dtype="int64")])
        for box, cls, is_crowd in zip(boxes, classes, crowd, strict=True):
            x1, y1, x2, y2 = (float(v) for v in box)
            w, h = x2 - x1, y2 - y1
            annotations.append(
                {
                    "id": len(annotations) + 1,  # pycocotools treats id 0 as "no match"
                    "image_id": image_id,
                    "category_id": int(category_ids[int(cls)]),
                    "bbox": [x1, y1, w, h],
                    "area": w * h,
                    "iscrowd": int(is_crowd),
                }
            )
    return {
        "info": {"description": description or "keras_retinanet COCO-format annotations"},
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": int(cid), "name": str(name), "supercategory": "object"}
            for cid, name in zip(category_ids, class_names, strict=True)
        ],
    }


def format_number(value):
    """A coordinate as text: an integer when integral, else ``repr`` (round-trips exactly)."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


# ---------------------------------------------------------------------- helpers
def _rows(path):
    """``(line_number, row)`` of a CSV file, blank lines skipped; errors name the file."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            start = 1
            for row in reader:
                if row and (len(row) > 1 or row[0].strip()):
                    yield start, row
                start = reader.line_num + 1
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text: {e}") from e
    except csv.Error as e:
        raise ValueError(f"{path}:{reader.line_num}: malformed CSV: {e}") from e


def _number(text, name, where, line):
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}:{line}: {name} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}:{line}: {name} must be finite, got {text!r}")
    return value


def _image_size(path, where, line):
    """``(width, height)`` from the image header in the displayed (EXIF-oriented) frame, the
    frame the boxes refer to; errors name the CSV file and line."""
    from keras_retinanet.data.preprocessing import image_size

    try:
        return image_size(path)
    except FileNotFoundError:
        raise ValueError(f"{where}:{line}: image file not found: {path}") from None
    except ValueError as e:
        raise ValueError(f"{where}:{line}: {e}") from None


def _write_rows(path, rows):
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)


def _write_json(path, data):
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    return path
