import os
import re

import numpy as np
import pytest

from keras_retinanet.data import CocoDataset, DetectionDataset, InferenceBatches
from keras_retinanet.data.csv_dataset import CsvDataset, read_csv_classes, write_csv

CLASSES = ["circle", "square", "tri,angle"]  # a comma, to exercise CSV quoting


def _save(path, height, width, seed=0):
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(pixels).save(path)


def _records(root):
    """Three images (PNG, JPEG, PNG without objects) under ``root/images``."""
    specs = [
        ("images/a.png", 30, 40, [[0, 0, 40, 30], [2.5, 3.25, 17.125, 20.0]], [0, 2]),
        ("images/sub/b.jpg", 60, 50, [[10, 11, 12, 13], [1, 2, 49, 59], [0.1, 0.2, 0.3, 0.4]],
         [1, 1, 0]),
        ("images/c.png", 20, 25, np.zeros((0, 4)), []),
    ]  # fmt: skip
    records = []
    for i, (name, h, w, boxes, classes) in enumerate(specs):
        _save(os.path.join(root, name), h, w, seed=i)
        records.append(
            {
                "file_name": name,
                "height": h,
                "width": w,
                "boxes": np.asarray(boxes, dtype="float32").reshape(-1, 4),
                "classes": np.asarray(classes, dtype="int32"),
            }
        )
    return records


def _check_same(dataset, records, root):
    assert len(dataset) == len(records)
    for i, (got, want) in enumerate(zip(dataset.records, records, strict=True)):
        assert got["image_id"] == i + 1
        assert got["file_name"] == want["file_name"]
        assert got["path"] == os.path.join(root, want["file_name"])
        assert (got["height"], got["width"]) == (want["height"], want["width"])
        assert got["boxes"].dtype == np.float32 and got["boxes"].shape == want["boxes"].shape
        assert got["classes"].dtype == np.int32
        np.testing.assert_array_equal(got["boxes"], want["boxes"])
        np.testing.assert_array_equal(got["classes"], want["classes"])


def test_round_trip(tmp_path):
    root = str(tmp_path)
    records = _records(root)
    ann, cls = write_csv(tmp_path / "ann.csv", tmp_path / "classes.csv", records, CLASSES)
    ds = CsvDataset(ann, cls)
    _check_same(ds, records, root)
    assert ds.class_names == CLASSES and ds.num_classes == 3
    assert ds.category_ids == [0, 1, 2]
    assert ds.class_to_category_id == {0: 0, 1: 1, 2: 2}
    assert ds.category_id_to_class == {0: 0, 1: 1, 2: 2}
    assert list(ds) == ds.records and ds[1] is ds.records[1]
    assert ds.load_image(1).shape == (60, 50, 3)
    assert "images=3" in repr(ds)
    # Integral coordinates are written as integers (what fizyr's reader expects).
    lines = open(ann).read().splitlines()
    assert lines[0] == "images/a.png,0,0,40,30,circle"
    assert lines[-1] == "images/c.png,,,,,"
    assert open(cls).read() == 'circle,0\nsquare,1\n"tri,angle",2\n'
    # Writing what was read gives the same bytes.
    ann2, cls2 = write_csv(tmp_path / "ann2.csv", tmp_path / "classes2.csv", ds.records, CLASSES)
    assert open(ann2).read() == open(ann).read()
    assert open(cls2).read() == open(cls).read()


def test_base_dir_and_grouping(tmp_path):
    _save(str(tmp_path / "imgs" / "x.png"), 10, 20)
    _save(str(tmp_path / "imgs" / "y.png"), 12, 14)
    (tmp_path / "meta").mkdir()
    ann = tmp_path / "meta" / "ann.csv"
    ann.write_text(
        "x.png,1,1,5,5,b\n\n y.png ,,,,,\nx.png,,,,,\nx.png, 2 ,3,4.5,6,a\n", encoding="utf-8"
    )
    cls = tmp_path / "meta" / "cls.csv"
    cls.write_text("b,1\na,0\n", encoding="utf-8")
    ds = CsvDataset(ann, cls, base_dir=tmp_path / "imgs")
    assert ds.class_names == ["a", "b"]
    assert [r["file_name"] for r in ds] == ["x.png", "y.png"]
    assert ds[0]["path"] == os.path.join(str(tmp_path / "imgs"), "x.png")
    np.testing.assert_array_equal(ds[0]["boxes"], [[1, 1, 5, 5], [2, 3, 4.5, 6]])
    np.testing.assert_array_equal(ds[0]["classes"], [1, 0])
    assert ds[1]["boxes"].shape == (0, 4) and ds[1]["classes"].shape == (0,)
    assert (ds[1]["height"], ds[1]["width"]) == (12, 14)
    # Without base_dir the paths are relative to the annotations file's folder.
    with pytest.raises(ValueError, match=re.escape(f"{ann}:1: image file not found")):
        CsvDataset(ann, cls)


def test_to_coco_matches_coco_dataset_and_evaluates(tmp_path):
    pytest.importorskip("pycocotools")
    from keras_retinanet.evaluation import evaluate_coco

    root = str(tmp_path)
    records = _records(root)
    ann, cls = write_csv(tmp_path / "ann.csv", tmp_path / "classes.csv", records, CLASSES)
    ds = CsvDataset(ann, cls)
    path = ds.write_coco_json(tmp_path / "coco" / "gt.json")
    coco = CocoDataset(path, root)
    assert coco.class_names == ds.class_names and coco.category_ids == ds.category_ids
    for a, b in zip(coco.records, ds.records, strict=True):
        assert {k: a[k] for k in ("image_id", "file_name", "path", "height", "width")} == {
            k: b[k] for k in ("image_id", "file_name", "path", "height", "width")
        }
        np.testing.assert_allclose(a["boxes"], b["boxes"], atol=1e-5)
        np.testing.assert_array_equal(a["classes"], b["classes"])
    # Perfect detections score AP 1 through pycocotools.
    detections = [
        {
            "image_id": rec["image_id"],
            "category_id": ds.class_to_category_id[int(c)],
            "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
            "score": 0.9,
        }
        for rec in ds
        for (x1, y1, x2, y2), c in zip(rec["boxes"], rec["classes"], strict=True)
    ]
    stats = evaluate_coco(ds.to_coco(), detections)
    assert stats["AP"] == pytest.approx(1.0)


def test_detection_dataset_batches(tmp_path):
    root = str(tmp_path)
    records = _records(root)
    ann, cls = write_csv(tmp_path / "ann.csv", tmp_path / "classes.csv", records, CLASSES)
    ds = CsvDataset(ann, cls)
    batches = DetectionDataset(
        ds, batch_size=2, training=False, min_side=64, max_side=96, stride=32
    )
    assert len(batches) == 2 and batches.max_boxes == 3
    assert batches.class_to_category_id == ds.class_to_category_id
    images, targets = batches[0]
    assert images.dtype == np.float32 and images.shape[0] == 2 and images.shape[-1] == 3
    assert images.shape[1] % 32 == 0 and images.shape[2] % 32 == 0
    assert targets["boxes"].shape == (2, 3, 4) and targets["classes"].shape == (2, 3)
    np.testing.assert_array_equal(targets["classes"][0], [0, 2, -1])
    np.testing.assert_array_equal(targets["classes"][1], [1, 1, 0])
    ratio = min(64 / 30, 96 / 40)
    np.testing.assert_allclose(targets["boxes"][0, :2], records[0]["boxes"] * ratio, rtol=1e-5)
    images, targets = batches[1]
    assert images.shape[0] == 1
    np.testing.assert_array_equal(targets["classes"][0], [-1, -1, -1])
    # Training mode (shuffle + flip) runs too.
    train = DetectionDataset(ds, batch_size=2, min_side=64, max_side=96, stride=32)
    assert train[0][0].shape[0] == 2
    # Inference batches carry the COCO image ids of to_coco().
    _, meta = InferenceBatches(ds, batch_size=2, min_side=64, max_side=96, stride=32)[0]
    np.testing.assert_array_equal(meta["image_id"], [1, 2])


# ---------------------------------------------------------------------- bad inputs
def _bad(tmp_path, annotations, classes="circle,0\nsquare,1\n"):
    _save(str(tmp_path / "a.png"), 30, 40)
    ann = tmp_path / "ann.csv"
    ann.write_text(annotations, encoding="utf-8")
    cls = tmp_path / "classes.csv"
    cls.write_text(classes, encoding="utf-8")
    return ann, cls


OK = "a.png,1,1,5,5,circle\n"

BAD_ANNOTATIONS = [
    (OK + "a.png,1,1,5,circle\n", 2, "expected 6 columns 'path,x1,y1,x2,y2,class_name', got 5"),
    (OK + "a.png,1,1,5,5,circle,x\n", 2, "expected 6 columns"),
    (OK + "\na.png,1,one,5,5,circle\n", 3, "y1 must be a number, got 'one'"),
    (OK + "a.png,1,1,nan,5,circle\n", 2, "x2 must be finite, got 'nan'"),
    (OK + "a.png,1,1,,5,circle\n", 2, "a row must have all of x1,y1,x2,y2,class_name or none"),
    (OK + "a.png,1,1,5,5,\n", 2, "a row must have all of"),
    (OK + "a.png,5,1,5,5,circle\n", 2, "x2 (5) must be greater than x1 (5)"),
    (OK + "a.png,1,6,5,5.5,circle\n", 2, "y2 (5.5) must be greater than y1 (6)"),
    (OK + "a.png,1,1,41,5,circle\n", 2, "box [1, 1, 41, 5] is outside image 'a.png' of 40x30"),
    (OK + "a.png,-1,1,4,5,circle\n", 2, "is outside image"),
    (OK + "a.png,1,1,4,30.5,circle\n", 2, "is outside image"),
    (OK + "a.png,1,1,4,5,triangle\n", 2, "class 'triangle' is not in the classes file"),
    (OK + "missing.png,1,1,4,5,circle\n", 2, "image file not found"),
    ("not_an_image.png,,,,,\n", 1, "cannot read image file"),
    (OK + ",1,1,4,5,circle\n", 2, "empty image path"),
]


@pytest.mark.parametrize("annotations,line,message", BAD_ANNOTATIONS)
def test_bad_annotations(tmp_path, annotations, line, message):
    (tmp_path / "not_an_image.png").write_text("hello")
    ann, cls = _bad(tmp_path, annotations)
    with pytest.raises(ValueError) as info:
        CsvDataset(ann, cls)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"{ann}:{line}: "), text
    assert message in text


BAD_CLASSES = [
    ("circle,0\nsquare\n", 2, "expected 2 columns 'class_name,id', got 1"),
    ("circle,0,x\n", 1, "expected 2 columns"),
    ("circle,0\nsquare,one\n", 2, "class id must be an integer, got 'one'"),
    ("circle,0\nsquare,1\ncircle,2\n", 3, "duplicate class name 'circle' (first on line 1)"),
    ("circle,0\n\nsquare,0\n", 3, "duplicate class id 0 (first on line 1)"),
    ("circle,0\nsquare,2\n", 2, "class id 2 outside 0..1"),
    ("circle,-1\n", 1, "class id -1 outside 0..0"),
    ("circle,0\n,1\n", 2, "empty class name"),
]


@pytest.mark.parametrize("classes,line,message", BAD_CLASSES)
def test_bad_classes(tmp_path, classes, line, message):
    ann, cls = _bad(tmp_path, OK, classes)
    with pytest.raises(ValueError) as info:
        CsvDataset(ann, cls)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"{cls}:{line}: "), text
    assert message in text


def test_empty_classes_and_missing_files(tmp_path):
    ann, cls = _bad(tmp_path, OK, "\n")
    with pytest.raises(ValueError, match=re.escape(f"{cls}: no classes")):
        read_csv_classes(cls)
    with pytest.raises(FileNotFoundError, match="CSV annotations file not found"):
        CsvDataset(tmp_path / "nope.csv", cls)
    with pytest.raises(FileNotFoundError, match="CSV classes file not found"):
        CsvDataset(ann, tmp_path / "nope.csv")


def test_write_csv_rejects_bad_records(tmp_path):
    rec = {"file_name": "a.png", "boxes": np.zeros((1, 4)), "classes": np.asarray([3])}
    with pytest.raises(ValueError, match="class index outside 0..1"):
        write_csv(tmp_path / "a.csv", tmp_path / "c.csv", [rec], ["x", "y"])
    with pytest.raises(ValueError, match="missing field 'boxes'"):
        write_csv(tmp_path / "a.csv", tmp_path / "c.csv", [{"file_name": "a"}], ["x"])
