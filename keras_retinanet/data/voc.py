"""Pascal VOC detection annotations (``VOCdevkit/VOC2007`` and ``VOC2012`` layout)::

    root/Annotations/<id>.xml
    root/JPEGImages/<id>.jpg
    root/ImageSets/Main/<split>.txt      # one image id per line

Box convention: VOC ``<bndbox>`` coordinates are 1-based *inclusive* pixel indices (the
top-left pixel is ``(1, 1)``, an object covering columns 1..10 has ``xmin = 1, xmax = 10``).
They are converted the usual way (as fizyr/keras-retinanet and torchvision's references do)
to the library's 0-based pixel-corner boxes ``[x1, y1, x2, y2] = [xmin - 1, ymin - 1, xmax,
ymax]``, so the same object is ``[0, 0, 10, 10]``, 10 pixels wide. :func:`write_voc` applies
the inverse.

Records are those of :mod:`keras_retinanet.data.coco`; ``image_id`` is the position in the
image set plus 1, ``file_name`` is relative to ``JPEGImages``. Class ``i`` is ``classes[i]``;
its COCO category id is ``i + 1`` (as :func:`~keras_retinanet.data.write_coco` numbers them).

``<size>`` and the boxes are taken to be in the displayed (EXIF-oriented) frame of the image,
the frame :func:`~keras_retinanet.data.preprocessing.load_image` returns (LabelImg and CVAT
annotate that frame). ``<size>`` is not compared with the files when loading (that would read
every image); :meth:`VocDataset.verify_images` does it, from the image headers only.
"""

import os
import shutil
import xml.etree.ElementTree as ET

import numpy as np

from keras_retinanet.data.csv_dataset import _write_json, format_number, records_to_coco

#: The 20 Pascal VOC classes in the usual order (class index = position).
VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
VOC_SPLITS = ("trainval", "train", "val", "test")


class VocDataset:
    """A Pascal VOC data set with the interface of ``CocoDataset``.

    Objects marked ``<difficult>1</difficult>`` are left out of ``boxes`` / ``classes``
    unless ``use_difficult``; they are kept in each record as ``ignore_boxes`` /
    ``ignore_classes`` so that :meth:`to_coco` can write them as ``iscrowd`` annotations that
    COCO evaluation ignores, like the VOC evaluation ignores difficult objects. With
    ``use_difficult`` a record carries ``difficult`` ``[n]`` bool flags instead.

    Every box must lie inside the image size of the XML ``<size>`` element:
    ``1 <= xmin <= xmax <= width`` and ``1 <= ymin <= ymax <= height``; anything else is an
    error. The image file is ``JPEGImages/<filename>`` with the XML ``<filename>`` (or
    ``<id>.jpg`` without one) and must exist; its pixels are not read.

    Raises:
        FileNotFoundError: when ``root`` or the image-set file does not exist.
        ValueError: one line naming the file, for an empty image set, a duplicate or
            missing annotation, malformed XML (not XML, no ``<size>`` with positive integer
            ``<width>`` / ``<height>``, an object without ``<name>`` or a ``<bndbox>`` of four
            numbers, a ``<difficult>`` other than 0/1), ``xmax < xmin`` or ``ymax < ymin``, a
            box outside the image, a class not in ``classes``, and a missing image file.

    Args:
        root: folder holding ``Annotations``, ``JPEGImages`` and ``ImageSets``.
        split: ``"trainval"``, ``"train"``, ``"val"``, ``"test"`` (read from
            ``ImageSets/Main/<split>.txt``), or the path of an image-set file.
        classes: class names, index = class.
        use_difficult: train on difficult objects too.

    Attributes:
        records, class_names, category_ids, class_to_category_id, category_id_to_class: as
        for ``CocoDataset``; ``category_ids`` are ``1..C``.
    """

    def __init__(self, root, *, split="trainval", classes=VOC_CLASSES, use_difficult=False):
        self.root = os.fspath(root)
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"VOC root directory not found: {self.root}")
        split = os.fspath(split)
        if split in VOC_SPLITS:
            self.image_set_file = os.path.join(self.root, "ImageSets", "Main", f"{split}.txt")
        elif os.path.isfile(split):
            self.image_set_file = split
        else:
            raise FileNotFoundError(
                f"VOC split must be one of {VOC_SPLITS} or an image-set file, got {split!r}"
            )
        if not os.path.isfile(self.image_set_file):
            raise FileNotFoundError(f"VOC image-set file not found: {self.image_set_file}")
        self.split = split
        self.use_difficult = bool(use_difficult)
        self.class_names = [str(c) for c in classes]
        if not self.class_names:
            raise ValueError("classes must not be empty")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"classes must be unique, got {self.class_names}")
        self.category_ids = list(range(1, len(self.class_names) + 1))
        self.class_to_category_id = dict(enumerate(self.category_ids))
        self.category_id_to_class = {cid: i for i, cid in enumerate(self.category_ids)}
        self._name_to_class = {name: i for i, name in enumerate(self.class_names)}

        self.image_ids = _read_image_set(self.image_set_file)
        self.records = []
        for position, (line, image_id) in enumerate(self.image_ids):
            xml_path = os.path.join(self.root, "Annotations", f"{image_id}.xml")
            if not os.path.isfile(xml_path):
                raise ValueError(
                    f"{self.image_set_file}:{line}: annotation file not found: {xml_path}"
                )
            rec = self._parse_xml(xml_path, image_id)
            rec["image_id"] = position + 1
            self.records.append(rec)
        self.image_ids = [image_id for _, image_id in self.image_ids]

    def _parse_xml(self, xml_path, image_id):
        where = xml_path
        try:
            tree = ET.parse(xml_path)
        except ET.ParseError as e:
            raise ValueError(f"{where}: malformed XML: {e}") from None
        ann = tree.getroot()
        file_name = _text(ann, "filename") or f"{image_id}.jpg"
        size = ann.find("size")
        if size is None:
            raise ValueError(f"{where}: malformed VOC annotation: no <size> element")
        width = _size(size, "width", where)
        height = _size(size, "height", where)
        path = os.path.join(self.root, "JPEGImages", file_name)
        if not os.path.isfile(path):
            raise ValueError(f"{where}: image file not found: {path}")

        kept, kept_classes, flags, ignored, ignored_classes = [], [], [], [], []
        for k, obj in enumerate(ann.findall("object")):
            what = f"object {k}"
            name = _text(obj, "name")
            if not name:
                raise ValueError(f"{where}: malformed VOC annotation: {what} has no <name>")
            what = f"object {k} ({name!r})"
            difficult_text = _text(obj, "difficult") or "0"
            if difficult_text not in ("0", "1"):
                raise ValueError(
                    f"{where}: malformed VOC annotation: {what} <difficult> must be 0 or 1, "
                    f"got {difficult_text!r}"
                )
            difficult = difficult_text == "1"
            bndbox = obj.find("bndbox")
            if bndbox is None:
                raise ValueError(f"{where}: malformed VOC annotation: {what} has no <bndbox>")
            xmin, ymin, xmax, ymax = (
                _coordinate(bndbox, tag, where, what) for tag in ("xmin", "ymin", "xmax", "ymax")
            )
            if xmax < xmin or ymax < ymin:
                raise ValueError(
                    f"{where}: {what} box has xmax < xmin or ymax < ymin: xmin={xmin:g} "
                    f"ymin={ymin:g} xmax={xmax:g} ymax={ymax:g}"
                )
            if xmin < 1 or ymin < 1 or xmax > width or ymax > height:
                raise ValueError(
                    f"{where}: {what} box xmin={xmin:g} ymin={ymin:g} xmax={xmax:g} "
                    f"ymax={ymax:g} is outside the {width}x{height} image of <size> (VOC boxes "
                    "are 1-based: need 1 <= xmin <= xmax <= width, 1 <= ymin <= ymax <= height)"
                )
            if name not in self._name_to_class:
                raise ValueError(f"{where}: {what} class {name!r} is not in classes")
            box = [xmin - 1.0, ymin - 1.0, xmax, ymax]
            cls = self._name_to_class[name]
            if difficult and not self.use_difficult:
                ignored.append(box)
                ignored_classes.append(cls)
            else:
                kept.append(box)
                kept_classes.append(cls)
                flags.append(difficult)

        rec = {
            "file_name": file_name,
            "path": path,
            "height": height,
            "width": width,
            "boxes": np.asarray(kept, dtype="float32").reshape(-1, 4),
            "classes": np.asarray(kept_classes, dtype="int32").reshape(-1),
            "voc_id": image_id,
        }
        if self.use_difficult:
            rec["difficult"] = np.asarray(flags, dtype=bool).reshape(-1)
        else:
            rec["ignore_boxes"] = np.asarray(ignored, dtype="float32").reshape(-1, 4)
            rec["ignore_classes"] = np.asarray(ignored_classes, dtype="int32").reshape(-1)
        return rec

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

    def verify_images(self, *, raise_errors=True, progress=None):
        """Check every image file against its ``<size>`` (header reads only, EXIF-aware).

        See :func:`keras_retinanet.data.verify.verify_images` for the arguments, the return
        value and the messages; a ``ValueError`` names the first mismatching or unreadable
        image unless ``raise_errors=False``.
        """
        from keras_retinanet.data.verify import verify_images

        return verify_images(
            self.records, what=self.root, raise_errors=raise_errors, progress=progress
        )

    def load_image(self, index):
        """Pixels of record ``index`` as uint8 RGB ``[H, W, 3]``."""
        from keras_retinanet.data.preprocessing import load_image

        return load_image(self.records[index]["path"])

    def to_coco(self, *, difficult_as_crowd=True):
        """The data set as a COCO ``instances`` dict, for :func:`evaluate_coco`.

        With ``difficult_as_crowd`` (default) difficult objects are written with
        ``iscrowd = 1``, so that COCO evaluation ignores them as the VOC evaluation does;
        otherwise only the training boxes are written, as ordinary objects.
        """
        records = []
        for rec in self.records:
            rec = dict(rec)
            if not difficult_as_crowd:
                rec.pop("ignore_boxes", None)
                rec.pop("ignore_classes", None)
            elif "difficult" in rec:
                rec["iscrowd"] = rec["difficult"].astype("int64")
            records.append(rec)
        return records_to_coco(
            records,
            self.class_names,
            self.category_ids,
            description=f"keras_retinanet Pascal VOC annotations {self.image_set_file}",
        )

    def write_coco_json(self, path, *, difficult_as_crowd=True):
        """Write :meth:`to_coco` to ``path`` (parent folders created); returns ``path``."""
        return _write_json(path, self.to_coco(difficult_as_crowd=difficult_as_crowd))

    def __repr__(self):
        return (
            f"VocDataset({self.root!r}, split={self.split!r}, images={len(self)}, "
            f"classes={self.num_classes})"
        )


def load_voc(root, *, split="trainval", classes=VOC_CLASSES, use_difficult=False):
    """Shorthand for :class:`VocDataset`."""
    return VocDataset(root, split=split, classes=classes, use_difficult=use_difficult)


def write_voc(root, records, class_names=VOC_CLASSES, *, split="trainval"):
    """Write records as a Pascal VOC tree that :class:`VocDataset` reads back.

    Args:
        root: output folder; ``Annotations``, ``JPEGImages`` and ``ImageSets/Main`` are
            created in it.
        records: iterable of dicts with ``file_name`` (relative to ``JPEGImages``; the image
            id is its stem), ``boxes`` (``[n, 4]`` 0-based xyxy pixels, written as 1-based
            ``xmin = x1 + 1, ymin = y1 + 1, xmax = x2, ymax = y2``), ``classes``, and either
            ``height`` / ``width`` or an ``image`` array. Optional: ``image`` (uint8 pixels,
            saved to ``JPEGImages/file_name`` with Pillow, format from the extension), or
            ``path`` (an existing image copied there unless it already is that file),
            ``difficult`` (``[n]`` flags) and ``ignore_boxes`` / ``ignore_classes`` (written
            as difficult objects).
        class_names: name of each class index.
        split: image-set name; the ids are written to ``ImageSets/Main/<split>.txt``.

    Returns:
        ``root`` as a string.
    """
    root = os.fspath(root)
    for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    class_names = [str(c) for c in class_names]
    ids = []
    for position, rec in enumerate(records):
        for key in ("file_name", "boxes", "classes"):
            if key not in rec:
                raise ValueError(f"record {position} is missing field '{key}'")
        file_name = str(rec["file_name"])
        image_id = os.path.splitext(os.path.basename(file_name))[0]
        if image_id in ids:
            raise ValueError(f"record {position}: duplicate image id {image_id!r}")
        ids.append(image_id)
        target = os.path.join(root, "JPEGImages", file_name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        image = rec.get("image")
        if image is not None:
            from PIL import Image

            image = np.asarray(image, dtype="uint8")
            Image.fromarray(image).save(target)
            height, width = image.shape[:2]
        else:
            source = rec.get("path")
            if source and os.path.abspath(source) != os.path.abspath(target):
                shutil.copyfile(source, target)
            height, width = rec["height"], rec["width"]
        height, width = int(rec.get("height", height)), int(rec.get("width", width))

        boxes = np.asarray(rec["boxes"], dtype="float64").reshape(-1, 4)
        classes = np.asarray(rec["classes"]).reshape(-1).astype("int64")
        if len(boxes) != len(classes):
            raise ValueError(f"record {position}: {len(boxes)} boxes but {len(classes)} classes")
        flags = np.asarray(rec.get("difficult", np.zeros(len(classes))), dtype=bool).reshape(-1)
        if "ignore_boxes" in rec:
            extra = np.asarray(rec["ignore_boxes"], dtype="float64").reshape(-1, 4)
            boxes = np.concatenate([boxes, extra])
            classes = np.concatenate([classes, np.asarray(rec["ignore_classes"]).reshape(-1)])
            flags = np.concatenate([flags, np.ones(len(extra), dtype=bool)])
        if len(classes) and (classes.min() < 0 or classes.max() >= len(class_names)):
            raise ValueError(f"record {position}: class index outside 0..{len(class_names) - 1}")

        ann = ET.Element("annotation")
        ET.SubElement(ann, "folder").text = os.path.basename(os.path.abspath(root))
        ET.SubElement(ann, "filename").text = file_name
        size = ET.SubElement(ann, "size")
        ET.SubElement(size, "width").text = str(width)
        ET.SubElement(size, "height").text = str(height)
        ET.SubElement(size, "depth").text = "3"
        ET.SubElement(ann, "segmented").text = "0"
        for box, cls, difficult in zip(boxes, classes, flags, strict=True):
            obj = ET.SubElement(ann, "object")
            ET.SubElement(obj, "name").text = class_names[int(cls)]
            ET.SubElement(obj, "pose").text = "Unspecified"
            ET.SubElement(obj, "truncated").text = "0"
            ET.SubElement(obj, "difficult").text = "1" if difficult else "0"
            bndbox = ET.SubElement(obj, "bndbox")
            x1, y1, x2, y2 = (float(v) for v in box)
            for tag, value in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
                ET.SubElement(bndbox, tag).text = format_number(value)
        tree = ET.ElementTree(ann)
        ET.indent(tree)
        tree.write(os.path.join(root, "Annotations", f"{image_id}.xml"), encoding="utf-8")

    with open(os.path.join(root, "ImageSets", "Main", f"{split}.txt"), "w", encoding="utf-8") as f:
        f.writelines(f"{i}\n" for i in ids)
    return root


# ---------------------------------------------------------------------- helpers
def _read_image_set(path):
    """``[(line, image_id)]`` of an image-set file (first token of each non-blank line)."""
    entries, seen = [], {}
    with open(path, encoding="utf-8") as f:
        for line, text in enumerate(f, start=1):
            tokens = text.split()
            if not tokens:
                continue
            image_id = tokens[0]
            if image_id in seen:
                raise ValueError(
                    f"{path}:{line}: duplicate image id {image_id!r} (first on line "
                    f"{seen[image_id]})"
                )
            seen[image_id] = line
            entries.append((line, image_id))
    if not entries:
        raise ValueError(f"{path}: empty image set")
    return entries


def _text(element, tag):
    child = element.find(tag)
    if child is None or child.text is None:
        return None
    return child.text.strip()


def _size(size, tag, where):
    text = _text(size, tag)
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = None
    if value is None or not value.is_integer() or value < 1:
        raise ValueError(
            f"{where}: malformed VOC annotation: <size><{tag}> must be a positive integer, "
            f"got {text!r}"
        )
    return int(value)


def _coordinate(bndbox, tag, where, what):
    text = _text(bndbox, tag)
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = None
    if value is None or not np.isfinite(value):
        raise ValueError(
            f"{where}: malformed VOC annotation: {what} <bndbox><{tag}> must be a number, "
            f"got {text!r}"
        )
    return value
