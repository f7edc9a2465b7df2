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
    format_per_class_table,
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
    assert set(stats) == {*COCO_STAT_NAMES, "per_class"}
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


# ------------------------------------------------------------------------ per-class AP


def _coco_dict(annotations, categories, num_images=3, size=200):
    """A COCO ground-truth dict; ``annotations``: ``(image_id, category_id, xywh, iscrowd)``."""
    return {
        "images": [
            {"id": i, "file_name": f"{i}.png", "height": size, "width": size}
            for i in range(1, num_images + 1)
        ],
        "categories": [{"id": cid, "name": name} for cid, name in categories],
        "annotations": [
            {
                "id": n,
                "image_id": image_id,
                "category_id": cid,
                "bbox": list(map(float, box)),
                "area": float(box[2] * box[3]),
                "iscrowd": int(crowd),
            }
            for n, (image_id, cid, box, crowd) in enumerate(annotations, start=1)
        ],
    }


def _det(image_id, category_id, box, score=0.9):
    return {"image_id": image_id, "category_id": category_id, "bbox": list(box), "score": score}


def _by_id(stats):
    return {row["category_id"]: row for row in stats["per_class"]}


def test_per_class_mean_equals_the_overall_ap():
    """The defining property: the per-class APs average to pycocotools' own AP (random,
    noisy detections of several classes, crowd boxes, a class without ground truth)."""
    rng = np.random.default_rng(3)
    categories = [(2, "cat"), (4, "dog"), (7, "traffic light"), (9, "unseen")]
    num_images = 12
    gt, dets = [], []
    for image_id in range(1, num_images + 1):
        for _ in range(rng.integers(1, 6)):
            cid = int(rng.choice([2, 4, 7]))
            x, y = rng.uniform(0, 150, 2)
            w, h = rng.uniform(4, 60, 2)
            crowd = rng.random() < 0.1
            gt.append((image_id, cid, [x, y, w, h], crowd))
            for _ in range(rng.integers(0, 3)):  # noisy copies, sometimes of the wrong class
                jitter = rng.normal(0, 0.15, 4) * [w, h, w, h]
                box = np.maximum([x, y, w, h] + jitter, [0, 0, 1, 1])
                wrong = rng.random() < 0.2
                dets.append(_det(image_id, 9 if wrong else cid, box, float(rng.random())))
        for _ in range(rng.integers(0, 3)):  # pure false positives
            dets.append(
                _det(
                    image_id,
                    int(rng.choice([2, 4, 7])),
                    [*rng.uniform(0, 150, 2), 20, 20],
                    float(rng.random()),
                )
            )
    truth = _coco_dict(gt, categories, num_images)
    for image_ids in (None, [1, 2, 3, 5, 8]):
        stats = evaluate_coco(truth, dets, image_ids=image_ids)
        per_class = stats["per_class"]
        assert [row["category_id"] for row in per_class] == [2, 4, 7, 9]
        assert [row["name"] for row in per_class] == ["cat", "dog", "traffic light", "unseen"]
        with_gt = [row for row in per_class if row["num_gt"] > 0]
        assert 0.0 < stats["AP"] < 1.0 and len(with_gt) == 3
        for key in ("AP", "AP50", "AP75"):
            assert np.mean([row[key] for row in with_gt]) == pytest.approx(stats[key], abs=1e-9)
        assert _by_id(stats)[9]["AP"] == -1.0 and _by_id(stats)[9]["num_detections"] > 0
        images = set(image_ids or range(1, num_images + 1))
        for row in per_class:
            cid = row["category_id"]
            assert row["num_gt"] == sum(
                1 for i, c, _, crowd in gt if c == cid and i in images and not crowd
            )
            assert row["num_detections"] == sum(
                1 for d in dets if d["category_id"] == cid and d["image_id"] in images
            )
        json.loads(json.dumps(stats))  # plain JSON all through
        last = format_per_class_table(per_class).splitlines()[-1].split()
        assert last[:4] == [
            "all",
            f"{stats['AP']:.4f}",
            f"{stats['AP50']:.4f}",
            f"{stats['AP75']:.4f}",
        ]


def test_per_class_hand_made_cases():
    """A perfect class (AP 1), a missed class (AP 0), a class without ground truth and a
    class whose only ground truth is a crowd box (both -1, shown as n/a)."""
    categories = [(1, "found"), (2, "missed"), (3, "absent"), (4, "crowd only")]
    truth = _coco_dict(
        [
            (1, 1, [10, 10, 40, 40], False),
            (2, 1, [50, 60, 30, 20], False),
            (1, 2, [100, 100, 50, 50], False),
            (3, 4, [0, 0, 120, 120], True),
        ],
        categories,
    )
    dets = [
        _det(1, 1, [10, 10, 40, 40]),
        _det(2, 1, [50, 60, 30, 20], 0.8),
        _det(2, 3, [0, 0, 10, 10]),  # a class without ground truth: not scored anywhere
        _det(3, 4, [0, 0, 120, 120]),  # matches the crowd box, which is ignored
    ]
    stats = evaluate_coco(truth, dets)
    rows = _by_id(stats)
    assert rows[1] == {
        "category_id": 1,
        "name": "found",
        "AP": pytest.approx(1.0),
        "AP50": pytest.approx(1.0),
        "AP75": pytest.approx(1.0),
        "num_gt": 2,
        "num_detections": 2,
    }
    assert (rows[2]["AP"], rows[2]["AP50"], rows[2]["AP75"]) == (0.0, 0.0, 0.0)
    assert (rows[2]["num_gt"], rows[2]["num_detections"]) == (1, 0)
    for cid in (3, 4):
        assert (rows[cid]["AP"], rows[cid]["AP50"], rows[cid]["AP75"]) == (-1.0, -1.0, -1.0)
        assert rows[cid]["num_gt"] == 0 and rows[cid]["num_detections"] == 1
    assert stats["AP"] == pytest.approx(0.5) and stats["AP50"] == pytest.approx(0.5)

    table = format_per_class_table(stats["per_class"])
    lines = table.splitlines()
    assert lines[0].split() == ["id", "category", "AP", "AP50", "AP75", "#gt", "#det"]
    assert len({len(line) for line in lines}) == 1  # aligned columns
    body = {line.split()[0]: line for line in lines[2:-2]}
    assert body["1"].split() == ["1", "found", "1.0000", "1.0000", "1.0000", "2", "2"]
    assert body["2"].split() == ["2", "missed", "0.0000", "0.0000", "0.0000", "1", "0"]
    assert body["3"].split()[2:] == ["n/a", "n/a", "n/a", "0", "1"]
    assert body["4"].split() == ["4", "crowd", "only", "n/a", "n/a", "n/a", "0", "1"]
    assert lines[-1].split() == ["all", "0.5000", "0.5000", "0.5000", "3", "4"]
    # The same table from the list read back from JSON.
    assert format_per_class_table(json.loads(json.dumps(stats["per_class"]))) == table


def test_per_class_without_detections_or_ground_truth():
    truth = _coco_dict([(1, 1, [10, 10, 40, 40], False)], [(1, "a"), (2, "b")])
    stats = evaluate_coco(truth, [])
    assert [(r["AP"], r["num_gt"], r["num_detections"]) for r in stats["per_class"]] == [
        (0.0, 1, 0),
        (-1.0, 0, 0),
    ]
    # No ground truth at all: every AP is n/a, the overall one included.
    empty = evaluate_coco(_coco_dict([], [(1, "a")]), [_det(1, 1, [0, 0, 5, 5])])
    assert empty["AP"] == -1.0 and empty["per_class"][0]["AP"] == -1.0
    assert format_per_class_table(empty["per_class"]).splitlines()[-1].split() == [
        "all",
        "n/a",
        "n/a",
        "n/a",
        "0",
        "1",
    ]


def test_callback_per_class_logs(ground_truth):
    path, records = ground_truth
    coco = load_coco(path)
    for rec, src in zip(coco.records, records, strict=True):
        rec["image"] = src["image"]
    batches = InferenceBatches(coco, batch_size=2, min_side=64, max_side=64, stride=32)
    boxes, scores, classes, valid = _perfect(records, [64 / 120, 64 / 80])
    valid = np.array([1, 1])  # image a keeps only its class-0 box: class 1 loses one of two

    callback = CocoEvaluationCallback(
        lambda images: (boxes, scores, classes, valid), batches, path, per_class_logs=True
    )
    logs = {}
    callback.on_epoch_end(0, logs)
    assert logs["val_AP50/a"] == pytest.approx(1.0)
    # Recall 0.5 at precision 1: 51 of the 101 recall points.
    assert logs["val_AP50/b"] == pytest.approx(51 / 101)
    assert logs["val_AP50"] == pytest.approx((1 + 51 / 101) / 2)
    assert callback.last_results["per_class"][1]["num_gt"] == 2

    plain = CocoEvaluationCallback(lambda images: (boxes, scores, classes, valid), batches, path)
    logs = {}
    plain.on_epoch_end(0, logs)
    assert set(logs) == {"val_AP", "val_AP50", "val_AP75"}
