import json

import numpy as np
import pytest

from keras_retinanet.data import CocoDataset, load_coco, write_coco


def _write_json(path, data):
    path.write_text(json.dumps(data))
    return path


def _sparse_dataset():
    """Category ids 7, 3, 42 (unsorted, with gaps) and a crowd and a degenerate box."""
    return {
        "images": [
            {"id": 10, "file_name": "a.jpg", "height": 50, "width": 60},
            {"id": 11, "file_name": "b.jpg", "height": 40, "width": 30},
        ],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 42, "bbox": [1, 2, 10, 20], "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 3, "bbox": [5, 5, 4, 4]},
            {"id": 3, "image_id": 10, "category_id": 7, "bbox": [0, 0, 60, 50], "iscrowd": 1},
            {"id": 4, "image_id": 11, "category_id": 7, "bbox": [3, 3, 0, 10], "iscrowd": 0},
            {"id": 5, "image_id": 11, "category_id": 7, "bbox": [3, 3, 5, -1], "iscrowd": 0},
        ],
        "categories": [
            {"id": 7, "name": "seven"},
            {"id": 3, "name": "three"},
            {"id": 42, "name": "forty-two"},
        ],
    }


def test_category_mapping_both_ways(tmp_path):
    ds = CocoDataset(_write_json(tmp_path / "i.json", _sparse_dataset()))
    assert ds.category_ids == [3, 7, 42]
    assert ds.class_names == ["three", "seven", "forty-two"]
    assert ds.class_to_category_id == {0: 3, 1: 7, 2: 42}
    assert ds.category_id_to_class == {3: 0, 7: 1, 42: 2}
    assert ds.num_classes == 3
    for cls, cid in ds.class_to_category_id.items():
        assert ds.category_id_to_class[cid] == cls


def test_boxes_crowd_and_degenerate(tmp_path):
    ds = load_coco(_write_json(tmp_path / "i.json", _sparse_dataset()))
    assert len(ds) == 2
    first, second = ds[0], ds[1]
    assert first["image_id"] == 10 and first["path"] is None
    assert (first["height"], first["width"]) == (50, 60)
    # xywh -> xyxy; the crowd box is skipped.
    np.testing.assert_allclose(first["boxes"], [[1, 2, 11, 22], [5, 5, 9, 9]])
    np.testing.assert_array_equal(first["classes"], [2, 0])
    assert first["boxes"].dtype == np.float32 and first["classes"].dtype == np.int32
    # Both boxes of the second image are degenerate: kept as an empty record.
    assert second["boxes"].shape == (0, 4) and second["classes"].shape == (0,)
    assert len(load_coco(tmp_path / "i.json", skip_empty=True)) == 1


def test_round_trip(tmp_path):
    records = [
        {
            "file_name": "x.png",
            "height": 32,
            "width": 48,
            "boxes": np.array([[1.5, 2.0, 10.0, 12.25], [0, 0, 48, 32]], "float32"),
            "classes": np.array([1, 0]),
        },
        {"file_name": "y.png", "height": 10, "width": 10, "boxes": [], "classes": []},
    ]
    (tmp_path / "img").mkdir()
    path = write_coco(tmp_path / "ann" / "out.json", records, ["cat", "dog"], category_ids=[5, 9])
    ds = CocoDataset(path, tmp_path / "img")
    assert ds.class_names == ["cat", "dog"] and ds.category_ids == [5, 9]
    assert [r["image_id"] for r in ds] == [1, 2]
    assert ds[0]["path"] == str(tmp_path / "img" / "x.png")
    np.testing.assert_allclose(ds[0]["boxes"], records[0]["boxes"])
    np.testing.assert_array_equal(ds[0]["classes"], [1, 0])
    assert len(ds[1]["classes"]) == 0
    data = json.loads((tmp_path / "ann" / "out.json").read_text())
    assert data["annotations"][0]["bbox"] == [1.5, 2.0, 8.5, 10.25]
    assert data["annotations"][0]["category_id"] == 9
    # Deterministic bytes.
    again = write_coco(tmp_path / "again.json", records, ["cat", "dog"], category_ids=[5, 9])
    assert (tmp_path / "again.json").read_bytes() == (tmp_path / "ann" / "out.json").read_bytes()
    assert again.endswith("again.json")


def test_write_defaults_and_crowd_flag(tmp_path):
    records = [
        {
            "file_name": "x.png",
            "height": 8,
            "width": 8,
            "boxes": [[0, 0, 4, 4], [1, 1, 8, 8]],
            "classes": [0, 0],
            "iscrowd": [0, 1],
        }
    ]
    ds = load_coco(write_coco(tmp_path / "a.json", records, ["only"]))
    assert ds.category_ids == [1]
    np.testing.assert_allclose(ds[0]["boxes"], [[0, 0, 4, 4]])


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        CocoDataset(tmp_path / "nope.json")
    path = _write_json(tmp_path / "i.json", _sparse_dataset())
    with pytest.raises(FileNotFoundError, match="no_dir"):
        CocoDataset(path, tmp_path / "no_dir")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("categories"), "'categories'"),
        (lambda d: d["images"][0].pop("height"), "'height'"),
        (lambda d: d["annotations"][0].update(image_id=999), "unknown image_id 999"),
        (lambda d: d["annotations"][0].update(category_id=5), "unknown category_id 5"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "'bbox'"),
        (lambda d: d["images"].append(dict(d["images"][0])), "duplicate image id"),
    ],
)
def test_invalid_content(tmp_path, mutate, message):
    data = _sparse_dataset()
    mutate(data)
    with pytest.raises(ValueError, match=message):
        CocoDataset(_write_json(tmp_path / "bad.json", data))


def test_invalid_json_and_write_errors(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        CocoDataset(tmp_path / "broken.json")
    rec = {"file_name": "x", "height": 1, "width": 1, "boxes": [[0, 0, 1, 1]], "classes": [3]}
    with pytest.raises(ValueError, match="class index"):
        write_coco(tmp_path / "o.json", [rec], ["a"])
    with pytest.raises(ValueError, match="missing field 'width'"):
        write_coco(tmp_path / "o.json", [{"file_name": "x", "height": 1}], ["a"])
    with pytest.raises(ValueError, match="category_ids"):
        write_coco(tmp_path / "o.json", [], ["a", "b"], category_ids=[1])
