import os

import numpy as np
import pytest

from keras_retinanet.data import DetectionDataset
from keras_retinanet.data.voc import VOC_CLASSES, VocDataset, write_voc

CLASSES = ("cat", "dog", "person")


def _records(seed=0):
    rng = np.random.default_rng(seed)

    def image(h, w):
        return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)

    return [
        {
            "file_name": "000001.jpg",
            "image": image(30, 40),
            "boxes": np.asarray([[0, 0, 40, 30], [4, 5, 10.5, 20]], dtype="float32"),
            "classes": np.asarray([0, 2], dtype="int32"),
            "ignore_boxes": np.asarray([[1, 2, 3, 4]], dtype="float32"),
            "ignore_classes": np.asarray([1], dtype="int32"),
        },
        {
            "file_name": "000002.png",
            "image": image(50, 20),
            "boxes": np.asarray([[2, 3, 19, 49]], dtype="float32"),
            "classes": np.asarray([1], dtype="int32"),
        },
        {
            "file_name": "000003.jpg",
            "image": image(16, 16),
            "boxes": np.zeros((0, 4), dtype="float32"),
            "classes": np.zeros((0,), dtype="int32"),
        },
    ]


def test_round_trip_and_box_convention(tmp_path):
    records = _records()
    root = write_voc(tmp_path / "VOC", records, CLASSES, split="train")
    ds = VocDataset(root, split="train", classes=CLASSES)
    assert len(ds) == 3 and ds.num_classes == 3 and ds.class_names == list(CLASSES)
    assert ds.category_ids == [1, 2, 3] and ds.class_to_category_id == {0: 1, 1: 2, 2: 3}
    assert ds.image_ids == ["000001", "000002", "000003"]
    for i, (got, want) in enumerate(zip(ds, records, strict=True)):
        assert got["image_id"] == i + 1
        assert got["file_name"] == want["file_name"]
        assert got["path"] == os.path.join(root, "JPEGImages", want["file_name"])
        assert (got["height"], got["width"]) == want["image"].shape[:2]
        assert got["boxes"].dtype == np.float32 and got["classes"].dtype == np.int32
        np.testing.assert_array_equal(got["boxes"], want["boxes"])
        np.testing.assert_array_equal(got["classes"], want["classes"])
        np.testing.assert_array_equal(
            got["ignore_boxes"], want.get("ignore_boxes", np.zeros((0, 4)))
        )
    assert ds.load_image(1).shape == (50, 20, 3)
    # 1-based inclusive in the XML: [0, 0, 40, 30] is xmin=1, ymin=1, xmax=40, ymax=30.
    xml = open(os.path.join(root, "Annotations", "000001.xml")).read()
    assert "<xmin>1</xmin>" in xml and "<ymin>1</ymin>" in xml
    assert "<xmax>40</xmax>" in xml and "<ymax>30</ymax>" in xml
    assert "<xmin>5</xmin>" in xml and "<xmax>10.5</xmax>" in xml
    # Writing what was read gives the same XML.
    root2 = write_voc(tmp_path / "VOC2", ds.records, CLASSES, split="train")
    for name in ("000001", "000002", "000003"):
        a = open(os.path.join(root, "Annotations", f"{name}.xml")).read()
        b = open(os.path.join(root2, "Annotations", f"{name}.xml")).read()
        assert a.replace("VOC2", "VOC") == b.replace("VOC2", "VOC")
    # An image-set file given by path.
    assert len(VocDataset(root, split=os.path.join(root, "ImageSets", "Main", "train.txt"),
                          classes=CLASSES)) == 3  # fmt: skip


def test_difficult_objects(tmp_path):
    root = write_voc(tmp_path, _records(), CLASSES)
    ds = VocDataset(root, classes=CLASSES, use_difficult=True)
    np.testing.assert_array_equal(ds[0]["boxes"], [[0, 0, 40, 30], [4, 5, 10.5, 20], [1, 2, 3, 4]])
    np.testing.assert_array_equal(ds[0]["classes"], [0, 2, 1])
    np.testing.assert_array_equal(ds[0]["difficult"], [False, False, True])
    # to_coco writes difficult objects as crowd, which COCO evaluation ignores.
    for dataset in (ds, VocDataset(root, classes=CLASSES)):
        coco = dataset.to_coco()
        anns = [a for a in coco["annotations"] if a["image_id"] == 1]
        assert [a["iscrowd"] for a in anns] == [0, 0, 1]
        assert [a["category_id"] for a in anns] == [1, 3, 2]
        assert anns[1]["bbox"] == [4.0, 5.0, 6.5, 15.0]
    plain = VocDataset(root, classes=CLASSES).to_coco(difficult_as_crowd=False)
    assert len(plain["annotations"]) == 3
    assert [c["id"] for c in plain["categories"]] == [1, 2, 3]
    assert plain["images"][1] == {"id": 2, "file_name": "000002.png", "height": 50, "width": 20}


def test_coco_evaluation(tmp_path):
    pytest.importorskip("pycocotools")
    from keras_retinanet.evaluation import evaluate_coco

    ds = VocDataset(write_voc(tmp_path, _records(), CLASSES), classes=CLASSES)
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
    # A detection on the difficult object is ignored, not a false positive.
    detections.append({"image_id": 1, "category_id": 2, "bbox": [1, 2, 2, 2], "score": 0.95})
    stats = evaluate_coco(ds.write_coco_json(tmp_path / "gt.json"), detections)
    assert stats["AP"] == pytest.approx(1.0)


def test_detection_dataset_batches(tmp_path):
    ds = VocDataset(write_voc(tmp_path, _records(), CLASSES), classes=CLASSES)
    batches = DetectionDataset(
        ds, batch_size=2, training=False, min_side=64, max_side=96, stride=32
    )
    assert len(batches) == 2 and batches.max_boxes == 2
    images, targets = batches[0]
    assert images.shape[0] == 2 and targets["boxes"].shape == (2, 2, 4)
    np.testing.assert_array_equal(targets["classes"], [[0, 2], [1, -1]])


def test_default_classes_and_splits(tmp_path):
    assert len(VOC_CLASSES) == 20 and VOC_CLASSES[0] == "aeroplane"
    rec = _records()[1]
    rec["classes"] = np.asarray([VOC_CLASSES.index("tvmonitor")])
    root = write_voc(tmp_path, [rec], VOC_CLASSES, split="val")
    ds = VocDataset(root, split="val")
    assert ds.class_names == list(VOC_CLASSES) and ds[0]["classes"].tolist() == [19]
    assert "split='val'" in repr(ds)
    with pytest.raises(FileNotFoundError, match="image-set file not found"):
        VocDataset(root, split="test")
    with pytest.raises(FileNotFoundError, match="VOC split must be one of"):
        VocDataset(root, split="nonsense")
    with pytest.raises(FileNotFoundError, match="VOC root directory not found"):
        VocDataset(tmp_path / "nope")


# ---------------------------------------------------------------------- bad inputs
GOOD_OBJECT = (
    "<object><name>dog</name><difficult>0</difficult>"
    "<bndbox><xmin>1</xmin><ymin>2</ymin><xmax>40</xmax><ymax>30</ymax></bndbox></object>"
)


def _xml(objects=GOOD_OBJECT, size="<size><width>40</width><height>30</height></size>"):
    return f"<annotation><filename>000001.jpg</filename>{size}{objects}</annotation>"


def _obj(name="dog", box=(1, 2, 40, 30), difficult="0"):
    coords = "".join(
        f"<{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True)
    )
    return f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>{coords}</bndbox></object>"  # noqa: E501


BAD_XML = [
    ("<annotation><size>", "malformed XML"),
    (_xml(size=""), "malformed VOC annotation: no <size> element"),
    (_xml(size="<size><width>0</width><height>30</height></size>"), "<size><width> must be"),
    (_xml(size="<size><width>40</width></size>"), "<size><height> must be a positive integer"),
    (_xml(GOOD_OBJECT + "<object><difficult>0</difficult></object>"), "object 1 has no <name>"),
    (_xml("<object><name>dog</name></object>"), "object 0 ('dog') has no <bndbox>"),
    (_xml(_obj(box=(1, 2, "x", 30))), "object 0 ('dog') <bndbox><xmax> must be a number"),
    (_xml(_obj(difficult="yes")), "<difficult> must be 0 or 1, got 'yes'"),
    (_xml(_obj(box=(5, 2, 4, 30))), "box has xmax < xmin or ymax < ymin"),
    (_xml(_obj(box=(0, 2, 4, 30))), "box xmin=0 ymin=2 xmax=4 ymax=30 is outside the 40x30"),
    (_xml(_obj(box=(1, 2, 41, 30))), "is outside the 40x30 image of <size>"),
    (_xml(_obj(box=(1, 2, 40, 31))), "is outside the 40x30 image"),
    (_xml(GOOD_OBJECT + _obj(name="unicorn")), "object 1 ('unicorn') class 'unicorn' is not in"),
]


@pytest.mark.parametrize("xml,message", BAD_XML)
def test_bad_xml(tmp_path, xml, message):
    root = write_voc(tmp_path, _records()[:1], CLASSES)
    path = os.path.join(root, "Annotations", "000001.xml")
    with open(path, "w") as f:
        f.write(xml)
    with pytest.raises(ValueError) as info:
        VocDataset(root, classes=CLASSES)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"{path}: "), text
    assert message in text


def test_missing_files(tmp_path):
    root = write_voc(tmp_path, _records(), CLASSES)
    os.remove(os.path.join(root, "JPEGImages", "000002.png"))
    xml = os.path.join(root, "Annotations", "000002.xml")
    with pytest.raises(ValueError) as info:
        VocDataset(root, classes=CLASSES)
    assert str(info.value) == (
        f"{xml}: image file not found: {os.path.join(root, 'JPEGImages', '000002.png')}"
    )
    image_set = os.path.join(root, "ImageSets", "Main", "trainval.txt")
    with open(image_set, "w") as f:
        f.write("000001\n\n000009\n")
    with pytest.raises(ValueError) as info:
        VocDataset(root, classes=CLASSES)
    missing = os.path.join(root, "Annotations", "000009.xml")
    assert str(info.value) == f"{image_set}:3: annotation file not found: {missing}"
    with open(image_set, "w") as f:
        f.write("000001\n000001\n")
    with pytest.raises(ValueError, match="trainval.txt:2: duplicate image id '000001'"):
        VocDataset(root, classes=CLASSES)
    with open(image_set, "w") as f:
        f.write("\n")
    with pytest.raises(ValueError, match="trainval.txt: empty image set"):
        VocDataset(root, classes=CLASSES)
