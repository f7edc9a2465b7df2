import json

import keras
import numpy as np
import pytest

pytest.importorskip("pycocotools")

from keras_retinanet.data import InferenceBatches, load_coco, write_coco  # noqa: E402
from keras_retinanet.evaluation import (  # noqa: E402
    COCO_STAT_NAMES,
    CocoEvaluationCallback,
    detections_to_coco_results,
    evaluate_coco,
)

CATEGORY_IDS = [5, 9]


@pytest.fixture
def ground_truth(tmp_path):
    records = [
        {
            "file_name": "a.png",
            "height": 100,
            "width": 120,
            "boxes": [[10, 10, 50, 60], [60, 20, 110, 90]],
            "classes": [0, 1],
            "image": np.zeros((100, 120, 3), np.uint8),
        },
        {
            "file_name": "b.png",
            "height": 80,
            "width": 80,
            "boxes": [[5, 5, 45, 45]],
            "classes": [1],
            "image": np.zeros((80, 80, 3), np.uint8),
        },
    ]
    path = write_coco(tmp_path / "gt.json", records, ["a", "b"], category_ids=CATEGORY_IDS)
    return path, records


def _perfect(records, ratios):
    """Batched predictions on inputs resized by ``ratios`` that reproduce the ground truth."""
    k = max(len(r["classes"]) for r in records)
    boxes = np.zeros((len(records), k, 4))
    scores = np.zeros((len(records), k))
    classes = np.zeros((len(records), k))
    valid = np.zeros(len(records), "int32")
    for i, rec in enumerate(records):
        n = len(rec["classes"])
        boxes[i, :n] = np.asarray(rec["boxes"]) * ratios[i]
        scores[i, :n] = 0.9
        classes[i, :n] = rec["classes"]
        valid[i] = n
    return boxes, scores, classes, valid


def test_perfect_predictions_score_one(ground_truth):
    path, records = ground_truth
    ratios = np.array([1.5, 0.5])
    boxes, scores, classes, valid = _perfect(records, ratios)
    # Garbage rows past `valid` must be ignored.
    boxes[1, 1:] = [0, 0, 30, 30]
    scores[1, 1:] = 1.0
    results = detections_to_coco_results(
        [1, 2],
        boxes,
        scores,
        classes,
        valid,
        ratios=ratios,
        class_to_category_id={0: 5, 1: 9},
    )
    assert len(results) == 3
    assert results[0] == {
        "image_id": 1,
        "category_id": 5,
        "bbox": pytest.approx([10, 10, 40, 50]),
        "score": 0.9,
    }
    stats = evaluate_coco(path, results)
    assert set(stats) == set(COCO_STAT_NAMES)
    assert stats["AP"] == pytest.approx(1.0)
    assert stats["AP50"] == pytest.approx(1.0)
    assert stats["AP75"] == pytest.approx(1.0)
    assert stats["APs"] == -1.0  # no small objects in the ground truth


def test_shifted_boxes_score_lower(ground_truth):
    path, records = ground_truth
    boxes, scores, classes, valid = _perfect(records, [1.0, 1.0])
    kw = dict(class_to_category_id=CATEGORY_IDS)
    slightly = detections_to_coco_results(
        [1, 2], boxes + [4, 4, 4, 4], scores, classes, valid, **kw
    )
    far = detections_to_coco_results([1, 2], boxes + [15, 0, 15, 0], scores, classes, valid, **kw)
    s_slight, s_far = evaluate_coco(path, slightly), evaluate_coco(path, far)
    assert s_slight["AP50"] == pytest.approx(1.0)
    assert s_slight["AP"] < 1.0
    assert s_far["AP"] < s_slight["AP"] and s_far["AP50"] < 1.0
    wrong_class = detections_to_coco_results(
        [1, 2], boxes, scores, 1 - classes, valid, class_to_category_id=CATEGORY_IDS
    )
    assert evaluate_coco(path, wrong_class)["AP50"] < 0.5


def test_empty_detections_score_zero(ground_truth):
    path, _ = ground_truth
    stats = evaluate_coco(path, [])
    assert stats["AP"] == 0.0 and stats["AP50"] == 0.0 and stats["AP75"] == 0.0
    assert evaluate_coco(path, np.zeros((0, 7)))["AP"] == 0.0
    results = detections_to_coco_results(
        [1, 2], np.zeros((2, 3, 4)), np.zeros((2, 3)), np.zeros((2, 3)), [0, 0]
    )
    assert results == []


def test_array_input_and_subset(ground_truth):
    path, records = ground_truth
    rows = [
        [1, 10, 10, 40, 50, 0.9, 5],
        [1, 60, 20, 50, 70, 0.8, 9],
    ]
    stats = evaluate_coco(path, np.asarray(rows), image_ids=[1])
    assert stats["AP"] == pytest.approx(1.0)
    assert evaluate_coco(path, np.asarray(rows))["AP"] < 1.0  # image 2 missed
    with pytest.raises(ValueError, match="image ids"):
        evaluate_coco(path, [{"image_id": 77, "category_id": 5, "bbox": [0, 0, 1, 1], "score": 1}])
    with pytest.raises(ValueError, match=r"\[N, 7\]"):
        evaluate_coco(path, np.zeros((2, 5)))
    with pytest.raises(FileNotFoundError):
        evaluate_coco(str(path) + ".missing", [])


def test_mapping_back_with_ratio_and_clipping():
    results = detections_to_coco_results(
        np.array([7]),
        np.array([[[20.0, 10.0, 60.0, 250.0]]]),
        np.array([[0.5]]),
        np.array([[2.0]]),
        np.array([1]),
        ratios=np.array([2.0]),
        original_sizes=np.array([[100, 200]]),
        class_to_category_id=[11, 12, 13],
    )
    assert results == [
        {"image_id": 7, "category_id": 13, "bbox": [10.0, 5.0, 20.0, 95.0], "score": 0.5}
    ]
    json.dumps(results)  # plain Python numbers
    with pytest.raises(ValueError, match="boxes"):
        detections_to_coco_results([1], np.zeros((1, 4)), np.zeros((1,)), np.zeros((1,)))


def test_callback_logs_ap(ground_truth):
    path, records = ground_truth
    coco = load_coco(path)
    for rec, src in zip(coco.records, records, strict=True):
        rec["image"] = src["image"]
    batches = InferenceBatches(coco, batch_size=2, min_side=64, max_side=64, stride=32)

    def predict_fn(images):
        assert images.shape[0] == 2
        ratios = [64 / 120, 64 / 80]
        # Backend tensors are accepted as well as NumPy arrays.
        return tuple(keras.ops.convert_to_tensor(a) for a in _perfect(records, ratios))

    callback = CocoEvaluationCallback(predict_fn, batches, path, every_n_epochs=2)
    assert callback.class_to_category_id == {0: 5, 1: 9}
    logs = {}
    callback.on_epoch_end(0, logs)
    assert logs == {}
    callback.on_epoch_end(1, logs)
    assert logs["val_AP"] == pytest.approx(1.0)
    assert logs["val_AP50"] == pytest.approx(1.0) and logs["val_AP75"] == pytest.approx(1.0)
    assert isinstance(callback, keras.callbacks.Callback)

    empty = CocoEvaluationCallback(
        lambda images: (np.zeros((2, 1, 4)), np.zeros((2, 1)), np.zeros((2, 1)), [0, 0]),
        batches,
        path,
    )
    logs = {}
    empty.on_epoch_end(0, logs)
    assert logs["val_AP"] == 0.0
