"""The anchor-coverage report (library and ``anchors`` command): known answers, agreement with
``LabelEncoder`` and a brute-force IoU over every anchor, the pipeline's resize, and bad input."""

import argparse
import inspect
import json
import math
import os

import numpy as np
import pytest
from keras import ops

from keras_retinanet import AnchorGenerator, LabelEncoder
from keras_retinanet.anchor_coverage import (
    COCO_SIZE_BUCKETS,
    NEGATIVE_IOU,
    POSITIVE_IOU,
    AnchorCoverage,
    anchor_coverage,
)
from keras_retinanet.boxes import center_to_corners, pairwise_iou
from keras_retinanet.cli._common import DEMO_ANCHOR_AREAS
from keras_retinanet.cli.anchors import _resize_options, add_anchors_parser, anchors_command
from keras_retinanet.data import DetectionDataset, write_coco, write_csv, write_voc

SMALL = AnchorGenerator(areas=DEMO_ANCHOR_AREAS)


def _record(boxes, height=256, width=256, **extra):
    return {"height": height, "width": width, "boxes": np.asarray(boxes, "float32"), **extra}


def _at_256(records, **kwargs):
    """Coverage with the long side resized to 256 (ratio 1 for the 256 x 256 images of
    :func:`_record`), so every image is padded to 256 x 256: one anchor set, which keeps the
    tests fast on JAX (its eager ops compile once per shape)."""
    return anchor_coverage(records, min_side=256, max_side=256, **kwargs)


def _random_disjoint_boxes(rng, height, width, count):
    """Up to ``count`` boxes, sides log-uniform in 3..250 px (at most 3/4 of the image), no two
    overlapping."""
    largest = min(250, 0.75 * height, 0.75 * width)
    boxes = []
    for _ in range(count * 20):
        w, h = np.exp(rng.uniform(np.log(3), np.log(largest), 2))
        x1, y1 = rng.uniform(0, width - w), rng.uniform(0, height - h)
        box = np.array([x1, y1, x1 + w, y1 + h])
        if all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1] for b in boxes):
            boxes.append(box)
        if len(boxes) == count:
            break
    return np.asarray(boxes, "float32")


def _brute_force_best_iou(generator, padded_size, resized_boxes):
    """Best IoU of each box over *every* anchor, with the library's ``pairwise_iou``."""
    anchors = center_to_corners(generator(*padded_size))
    iou = ops.convert_to_numpy(pairwise_iou(anchors, ops.convert_to_tensor(resized_boxes)))
    return iou.max(axis=0)


# ------------------------------------------------------------------------- known answers
def test_defaults_are_label_encoders():
    encoder = LabelEncoder()
    assert (POSITIVE_IOU, NEGATIVE_IOU) == (encoder.positive_threshold, encoder.negative_threshold)
    params = inspect.signature(anchor_coverage).parameters
    assert params["positive_iou"].default == encoder.positive_threshold
    assert params["negative_iou"].default == encoder.negative_threshold
    assert params["min_side"].default == 800 and params["max_side"].default == 1333
    assert [b[0] for b in COCO_SIZE_BUCKETS] == ["small", "medium", "large"]


def test_box_equal_to_an_anchor_tiny_box_and_ignore_band():
    anchors = ops.convert_to_numpy(AnchorGenerator()(256, 256))
    cx, cy, w, h = anchors[9 * (32 * 32) + (3 * 16 + 5) * 9 + 3]  # P4, cell (3, 5), 64 x 64
    assert (w, h) == (64.0, 64.0)
    exact = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
    tiny = [100.0, 100.0, 104.0, 104.0]  # 4 x 4: IoU <= 16 / 1024 with the smallest anchor
    # 22 x 22 centred on a P3 anchor centre (36, 36): 484 / 1024 with the 32 x 32 anchor and
    # with the 22.6 x 45.3 and 45.3 x 22.6 ones (same area); every other anchor is worse.
    band = [25.0, 25.0, 47.0, 47.0]
    report = _at_256([_record([exact, tiny, band], image_id=7, file_name="a.png")])

    np.testing.assert_array_equal(report.best_ious[0], 1.0)
    assert report.best_ious[1] < 16 / 1024 + 1e-7
    np.testing.assert_allclose(report.best_ious[2], 484 / 1024, rtol=1e-6)
    np.testing.assert_array_equal(report.matched, [True, False, False])
    small, medium, large = report.buckets
    assert (small.count, small.matched, small.ignored_only, small.unmatched) == (2, 0, 1, 1)
    assert (medium.count, medium.matched, medium.fraction_matched) == (1, 1, 1.0)
    assert large.count == 0 and math.isnan(large.median_best_iou)
    assert math.isnan(large.fraction_matched)
    assert report.worst[0].bucket == "small" and report.worst[0].box == tuple(tiny)
    assert report.worst[0].image_id == 7 and report.worst[0].file_name == "a.png"
    assert (report.worst[0].record_index, report.worst[0].row) == (0, 1)
    assert [round(w.best_iou, 6) for w in report.worst] == sorted(
        round(float(v), 6) for v in report.best_ious
    )
    assert report.worst[-1].anchor == (float(cx), float(cy), 64.0, 64.0)

    text = report.to_text()
    for word in ("small", "medium", "large", "all", "Lowest best IoU", "a.png"):
        assert word in text
    loaded = json.loads(json.dumps(report.to_dict()))
    assert loaded["total"] == 3 and loaded["buckets"][2]["median_best_iou"] is None
    assert loaded["buckets"][2]["high"] is None and loaded["worst"][0]["image_id"] == 7


def test_thresholds_and_buckets_are_configurable():
    boxes = [[25.0, 25.0, 47.0, 47.0], [100.0, 100.0, 104.0, 104.0]]
    report = _at_256([_record(boxes)], positive_iou=0.45, negative_iou=0.45)
    np.testing.assert_array_equal(report.matched, [True, False])
    assert report.overall.ignored_only == 0
    buckets = (("tiny", 0, 10), ("rest", 10, math.inf))
    report = _at_256([_record(boxes)], size_buckets=buckets, num_worst=1)
    assert [(b.name, b.count) for b in report.buckets] == [("tiny", 1), ("rest", 1)]
    assert len(report.worst) == 1 and report.worst[0].bucket == "tiny"


# ------------------------------------------------------------------------- exactness
@pytest.mark.parametrize(
    "generator",
    [AnchorGenerator(), SMALL, AnchorGenerator.torchvision()],
    ids=["paper", "small", "torchvision"],
)
def test_best_iou_equals_brute_force_over_all_anchors(generator, rng):
    records = []
    # Padded sizes 384 x 512 and 512 x 384 (few sizes: JAX compiles each op per shape).
    for height, width in ((200, 300), (333, 250), (200, 300)):
        xy = rng.uniform(-20, max(height, width), (40, 2))
        boxes = np.concatenate([xy, xy + rng.exponential(50, (40, 2)) + 0.5], axis=1)
        records.append(_record(boxes, height, width))
    report = anchor_coverage(records, anchor_generator=generator, min_side=300, max_side=500)
    for i, rec in enumerate(records):
        c = np.zeros(len(rec["boxes"]), "int32")
        batch, targets = DetectionDataset(
            [{**rec, "image": np.zeros((rec["height"], rec["width"], 3), "uint8"), "classes": c}],
            batch_size=1,
            training=False,
            min_side=300,
            max_side=500,
            max_boxes=None,
        )[0]
        resized = targets["boxes"][0][targets["classes"][0] >= 0]
        ours = report.best_ious[report.box_index[:, 0] == i]
        want = _brute_force_best_iou(generator, batch.shape[1:3], resized)
        np.testing.assert_allclose(ours, want, rtol=0, atol=3e-7)
    assert 0 < report.overall.matched < report.total


def test_matched_agrees_with_label_encoder_positives_on_disjoint_boxes():
    # 384 x 512 with min_side 384, max_side 512: ratio 1, padded size 384 x 512.
    for seed in range(3):
        boxes = _random_disjoint_boxes(np.random.default_rng(seed), 384, 512, 30)
        report = anchor_coverage(
            [_record(boxes, 384, 512)], anchor_generator=SMALL, min_side=384, max_side=512
        )
        classes = np.arange(len(boxes))[None]  # class id = row, to see which box an anchor got
        encoded = LabelEncoder(anchor_generator=SMALL).encode((384, 512), boxes[None], classes)
        anchor_classes = ops.convert_to_numpy(encoded)[0, :, 4]
        has_positive = np.isin(np.arange(len(boxes)), anchor_classes)
        np.testing.assert_array_equal(report.matched, has_positive)
        assert 0 < has_positive.sum() < len(boxes)


def test_bucket_counts_sum_to_total(rng):
    records = [
        _record(_random_disjoint_boxes(rng, 384, 512, 25), 384, 512, image_id=i) for i in range(4)
    ]
    report = anchor_coverage(records, min_side=384, max_side=512)
    assert report.total == sum(len(r["boxes"]) for r in records) == len(report.best_ious)
    assert sum(b.count for b in report.buckets) == report.total == report.overall.count
    for b in (*report.buckets, report.overall):
        assert b.matched + b.ignored_only + b.unmatched == b.count
    for field in ("matched", "ignored_only", "unmatched"):
        assert sum(getattr(b, field) for b in report.buckets) == getattr(report.overall, field)
    counts = np.bincount(report.bucket_index, minlength=3)
    np.testing.assert_array_equal(counts, [b.count for b in report.buckets])
    assert len(report.worst) == 20 and report.num_images == 4 and report.dropped == 0


# ------------------------------------------------------------------------- resizing
def test_twice_the_image_size_with_fixed_min_side_gives_the_same_report(rng):
    boxes = _random_disjoint_boxes(rng, 192, 256, 20)
    small = anchor_coverage([_record(boxes, 192, 256)], min_side=384, max_side=512)
    large = anchor_coverage([_record(boxes * 2, 384, 512)], min_side=384, max_side=512)
    np.testing.assert_array_equal(small.best_ious, large.best_ious)
    assert small.buckets == large.buckets and small.overall == large.overall
    for a, b in zip(small.worst, large.worst, strict=True):
        assert a.resized_box == b.resized_box and a.best_iou == b.best_iou
        assert tuple(2 * v for v in a.box) == b.box


@pytest.mark.parametrize(
    "options",
    [
        {"min_side": 256, "max_side": 256},  # ratio 256 / 120, padded to 256 x 256
        {"min_side": 200, "max_side": 300, "image_size": (256, 256)},  # image_size caps the ratio
    ],
)
def test_boxes_are_clipped_dropped_and_scaled_as_the_pipeline_does(options):
    boxes = [[-10, 5, 30, 40], [50, 60, 90, 89.5], [200, 10, 230, 20], [0, 0, 119, 89]]
    image = np.zeros((90, 120, 3), "uint8")
    # The image size comes from the array; the classes are only for DetectionDataset.
    record = {"image": image, "boxes": np.asarray(boxes, "float32"), "classes": np.zeros(4, int)}
    report = anchor_coverage([record], anchor_generator=SMALL, **options)
    _, targets = DetectionDataset([record], batch_size=1, training=False, **options)[0]
    want = targets["boxes"][0][targets["classes"][0] >= 0]
    got = np.asarray([w.resized_box for w in sorted(report.worst, key=lambda w: w.row)])
    np.testing.assert_array_equal(got, want)
    assert report.total == 3 and report.dropped == 1  # [200, 10, 230, 20] is outside
    np.testing.assert_array_equal(report.box_index, [[0, 0], [0, 1], [0, 3]])
    assert report.worst[0].image_id == 0 and report.worst[0].file_name is None


def test_image_size_from_the_file_header(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((90, 120, 3), "uint8")).save(tmp_path / "a.png")
    boxes = np.asarray([[10, 10, 50, 40]], "float32")
    from_file = _at_256([{"path": str(tmp_path / "a.png"), "boxes": boxes}])
    given = _at_256([_record(boxes, 90, 120)])
    np.testing.assert_array_equal(from_file.best_ious, given.best_ious)
    assert from_file.worst[0].file_name == str(tmp_path / "a.png")
    with pytest.raises(FileNotFoundError, match="record 0"):
        _at_256([{"path": str(tmp_path / "missing.png"), "boxes": boxes}])


def test_records_without_boxes():
    report = anchor_coverage([_record(np.zeros((0, 4)))])
    assert report.total == 0 and report.worst == () and report.overall.count == 0
    assert "Anchor coverage of 0 boxes in 1 images" in report.to_text()
    assert json.loads(json.dumps(report.to_dict()))["overall"]["fraction_matched"] is None


# ------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"positive_iou": 0.0}, "positive_iou"),
        ({"positive_iou": 1.5}, "positive_iou"),
        ({"positive_iou": "0.5"}, "positive_iou"),
        ({"negative_iou": 0.6}, "negative_iou"),
        ({"negative_iou": -0.1}, "negative_iou"),
        ({"size_buckets": (("a", 0, 32), ("b", 40, math.inf))}, "size_buckets"),
        ({"size_buckets": (("a", 0, 32),)}, "size_buckets"),
        ({"size_buckets": (("a", 0, 32), ("a", 32, math.inf))}, "size_buckets"),
        ({"num_worst": -1}, "num_worst"),
        ({"image_size": (128,)}, "image_size"),
        ({"image_size": (0, 128)}, "image_size"),
        ({"min_side": 0}, "min_side"),
        ({"max_side": math.inf}, "max_side"),
        ({"stride": 0}, "stride"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        anchor_coverage([_record([[0, 0, 10, 10]])], **kwargs)


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([], "at least one record"),
        (None, "dataset_or_records"),
        (["a.png"], "record 0 must be a dict"),
        ([_record(np.zeros((2, 5)))], r"record 0 'boxes' must be \[n, 4\]"),
        ([_record([[10, 10, 5, 20]])], "inverted"),
        ([_record([[0, 0, np.nan, 20]])], "NaN"),
        ([{"boxes": np.zeros((0, 4))}], "no 'height'/'width', 'image' or 'path'"),
        ([_record([[0, 0, 1, 1]], height=0)], "image size"),
    ],
)
def test_bad_records(records, message):
    with pytest.raises(ValueError, match=message) as info:
        anchor_coverage(records)
    assert "dataset_or_records" in str(info.value)


# ------------------------------------------------------------------------- command line
def _run(argv):
    parser = argparse.ArgumentParser(prog="keras-retinanet")
    add_anchors_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["anchors", *argv])
    assert args.func is anchors_command
    return args.func(args)


def _write_images(root, specs):
    """PNG files and records for ``specs`` of ``(file_name, height, width, boxes)``."""
    from PIL import Image

    records = []
    for name, height, width, boxes in specs:
        os.makedirs(os.path.dirname(os.path.join(root, name)) or root, exist_ok=True)
        Image.fromarray(np.zeros((height, width, 3), "uint8")).save(os.path.join(root, name))
        boxes = np.asarray(boxes, "float32").reshape(-1, 4)
        classes = np.zeros(len(boxes), "int32")
        records.append(
            {
                "file_name": name,
                "height": height,
                "width": width,
                "boxes": boxes,
                "classes": classes,
            }
        )
    return records


SPECS = [
    ("a.png", 96, 128, [[10, 10, 40, 40], [60, 20, 64, 24], [0, 0, 128, 96]]),
    ("b.png", 128, 80, [[5, 50, 75, 70]]),
    ("c.png", 64, 64, []),
]


def test_cli_csv_and_json(tmp_path, capsys):
    records = _write_images(str(tmp_path), SPECS)
    ann, cls = write_csv(tmp_path / "ann.csv", tmp_path / "classes.csv", records, ["thing"])
    out = tmp_path / "report.json"
    argv = ["--csv", ann, "--classes", cls, "--anchors", "small", "--image-size", "256"]
    assert _run([*argv, "--json", str(out), "--worst", "2"]) == 0
    text = capsys.readouterr().out
    assert "Anchor coverage of 4 boxes in 3 images" in text and "a.png" in text
    data = json.loads(out.read_text())
    want = anchor_coverage(
        records, anchor_generator=SMALL, min_side=256, max_side=256, image_size=256, num_worst=2
    )
    assert data["total"] == 4 and len(data["worst"]) == 2
    assert data["buckets"] == [b.to_dict() for b in want.buckets]
    assert data["settings"]["image_size"] == [256, 256]
    assert data["settings"]["anchor_generator"]["areas"] == list(DEMO_ANCHOR_AREAS)


def test_cli_coco_with_and_without_images(tmp_path, capsys):
    records = _write_images(str(tmp_path / "images"), SPECS)
    ann = write_coco(tmp_path / "instances.json", records, ["thing"])
    sides = ["--min-side", "256", "--max-side", "256"]  # every image padded to 256 x 256
    assert _run(["--annotations", ann, *sides]) == 0
    without = capsys.readouterr().out
    assert _run(["--annotations", ann, "--images", str(tmp_path / "images"), *sides]) == 0
    with_images = capsys.readouterr().out
    assert "short side 256, long side <= 256" in without and with_images == without
    want = _at_256(records).to_text()
    assert with_images.strip() == want.strip()
    os.remove(tmp_path / "images" / "b.png")
    with pytest.raises(SystemExit) as exc:
        _run(["--annotations", ann, "--images", str(tmp_path / "images")])
    assert exc.value.code == 2
    assert "missing from" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "want"),
    [
        ([], (800, 1333, None)),
        (["--image-size", "128"], (128, 128, (128, 128))),
        (["--image-size", "128", "--max-side", "200"], (128, 200, (128, 128))),
        (["--min-side", "600"], (600, 1333, None)),
    ],
)
def test_cli_resize_options(argv, want):
    parser = argparse.ArgumentParser()
    add_anchors_parser(parser.add_subparsers())
    args = parser.parse_args(["anchors", "--annotations", "x.json", *argv])
    assert _resize_options(args) == want
    assert args.anchors == "paper"


def test_cli_voc(tmp_path, capsys):
    records = _write_images(str(tmp_path / "src"), SPECS)
    for rec in records:
        rec["path"] = str(tmp_path / "src" / rec["file_name"])
    write_voc(tmp_path / "voc", records, ["thing"], split="val")
    with pytest.raises(SystemExit) as exc:  # no trainval.txt, and VOC's class names differ
        _run(["--voc", str(tmp_path / "voc")])
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith("keras-retinanet: error: --voc:")
    write_voc(tmp_path / "voc2", records, split="val")
    # VOC boxes are written 1-based and read back with x1 = xmin - 1: the same boxes.
    sides = ["--min-side", "256", "--max-side", "256"]  # every image padded to 256 x 256
    assert _run(["--voc", str(tmp_path / "voc2"), "--voc-split", "val", *sides]) == 0
    assert "Anchor coverage of 4 boxes in 3 images" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--csv", "{tmp}/missing.csv", "--classes", "{tmp}/classes.csv"], "--csv"),
        (["--csv", "{tmp}/ann.csv"], "--csv needs --classes"),
        (["--csv", "{tmp}/bad.csv", "--classes", "{tmp}/classes.csv"], "bad.csv:1:"),
        (["--annotations", "{tmp}/ann.csv"], "--annotations: "),
        (["--annotations", "{tmp}/missing.json"], "--annotations"),
        (["--annotations", "{tmp}/coco.json", "--images", "{tmp}/nowhere"], "--images"),
        (["--csv", "{tmp}/ann.csv", "--classes", "{tmp}/classes.csv", "--images", "x"], "--images"),
        (["--voc", "{tmp}/nowhere"], "--voc"),
        (["--annotations", "{tmp}/coco.json", "--voc-split", "val"], "--voc-split"),
        (["--annotations", "{tmp}/coco.json", "--worst", "-1"], "--worst"),
        (["--annotations", "{tmp}/empty.json"], "lists no images"),
        (
            [
                "--annotations",
                "{tmp}/coco.json",
                "--json",
                "{tmp}/no/such/dir/r.json",
                "--max-side",
                "256",
            ],
            "--json",
        ),
    ],
)
def test_cli_bad_input_exits_2(tmp_path, capsys, argv, message):
    records = _write_images(str(tmp_path), SPECS[:1])
    write_csv(tmp_path / "ann.csv", tmp_path / "classes.csv", records, ["thing"])
    (tmp_path / "bad.csv").write_text("a.png,1,2,3\n")
    write_coco(tmp_path / "coco.json", records, ["thing"])
    write_coco(tmp_path / "empty.json", [], ["thing"])
    with pytest.raises(SystemExit) as exc:
        _run([a.format(tmp=tmp_path) for a in argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("keras-retinanet: error: ") and len(err.splitlines()) == 1
    assert message in err


def test_cli_sources_are_mutually_exclusive(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        _run(["--annotations", "a.json", "--csv", "b.csv"])
    assert exc.value.code == 2 and "not allowed with" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        _run([])
    assert exc.value.code == 2


def test_result_type():
    report = _at_256([_record([[0, 0, 40, 40]])])
    assert isinstance(report, AnchorCoverage) and str(report) == report.to_text()
