import numpy as np
import pytest
from keras import ops

from keras_retinanet import AnchorGenerator, BoxCoder, LabelEncoder


def numpy_targets(image_shape, boxes, classes, pos=0.5, neg=0.4):
    """Independent per-image matching with explicit loops over ground truth."""
    anchors = ops.convert_to_numpy(AnchorGenerator()(*image_shape)).astype("float64")
    a = np.concatenate(
        [anchors[:, :2] - anchors[:, 2:] / 2, anchors[:, :2] + anchors[:, 2:] / 2], 1
    )
    out = []
    for img_boxes, img_classes in zip(boxes, classes, strict=True):
        best = np.full(len(a), -1.0)
        arg = np.zeros(len(a), int)
        for j, (b, c) in enumerate(zip(img_boxes, img_classes, strict=True)):
            if c < 0:
                continue
            iw = np.clip(np.minimum(a[:, 2], b[2]) - np.maximum(a[:, 0], b[0]), 0, None)
            ih = np.clip(np.minimum(a[:, 3], b[3]) - np.maximum(a[:, 1], b[1]), 0, None)
            inter = iw * ih
            union = (
                (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
            )
            iou = inter / union
            better = iou > best
            best[better], arg[better] = iou[better], j
        cls = np.where(best >= pos, img_classes[arg], np.where(best < neg, -1.0, -2.0))
        g = img_boxes[arg].astype("float64")
        gc = np.concatenate([(g[:, :2] + g[:, 2:]) / 2, g[:, 2:] - g[:, :2]], 1)
        deltas = np.concatenate(
            [(gc[:, :2] - anchors[:, :2]) / anchors[:, 2:], np.log(gc[:, 2:] / anchors[:, 2:])], 1
        ) / np.array([0.1, 0.1, 0.2, 0.2])
        deltas[best < pos] = 0.0
        out.append(np.concatenate([deltas, cls[:, None]], 1))
    return np.stack(out)


def test_targets_match_independent_numpy_matching(rng):
    boxes = np.zeros((3, 6, 4), "float32")
    classes = np.full((3, 6), -1, "int32")
    for i, n in enumerate((6, 2, 0)):
        xy = rng.uniform(0, 200, (n, 2))
        boxes[i, :n] = np.concatenate([xy, xy + rng.uniform(20, 120, (n, 2))], 1)
        classes[i, :n] = rng.integers(0, 5, n)
    got = ops.convert_to_numpy(LabelEncoder().encode((256, 320), boxes, classes))
    want = numpy_targets((256, 320), boxes, classes)
    np.testing.assert_array_equal(got[..., 4], want[..., 4])
    np.testing.assert_allclose(got[..., :4], want[..., :4], atol=1e-4)
    assert (got[0, :, 4] >= 0).sum() > 0
    assert (got[2, :, 4] == -1).all()  # only padding rows -> all background


def test_anchor_equal_to_a_box_is_positive_and_has_zero_target():
    anchors = ops.convert_to_numpy(AnchorGenerator()(128, 128))
    cx, cy, w, h = anchors[40]
    box = np.array([[[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]]], "float32")
    got = ops.convert_to_numpy(LabelEncoder().encode((128, 128), box, np.array([[3]])))
    assert got[0, 40, 4] == 3
    np.testing.assert_allclose(got[0, 40, :4], 0.0, atol=1e-5)


def test_ignore_band_between_thresholds():
    # Shifted copies of one 32x32 anchor: IoU 0.56 is positive, IoU 0.45 is ignored.
    anchors = ops.convert_to_numpy(AnchorGenerator()(64, 64))
    idx = 3  # ratio 1.0 (index 1), scale 1 (index 0) at P3 cell (0, 0): 32x32 at (4, 4)
    cx, cy, w, h = anchors[idx]
    shift = 9.0  # IoU = (32-9)*32 / (2*1024 - (32-9)*32) = 736 / 1312 = 0.561 -> positive
    box = np.array([[[cx - w / 2 + shift, cy - h / 2, cx + w / 2 + shift, cy + h / 2]]], "float32")
    got = ops.convert_to_numpy(LabelEncoder().encode((64, 64), box, np.array([[0]])))
    assert got[0, idx, 4] == 0
    shift = 12.0  # IoU = 640 / 1408 = 0.4545 -> ignored
    box = np.array([[[cx - w / 2 + shift, cy - h / 2, cx + w / 2 + shift, cy + h / 2]]], "float32")
    got = ops.convert_to_numpy(LabelEncoder().encode((64, 64), box, np.array([[0]])))
    assert got[0, idx, 4] == -2


def test_empty_ground_truth_axis_gives_all_negatives():
    got = ops.convert_to_numpy(
        LabelEncoder().encode((64, 64), np.zeros((2, 0, 4), "float32"), np.zeros((2, 0), "int32"))
    )
    assert got.shape == (2, AnchorGenerator().num_anchors(64, 64), 5)
    assert (got[..., 4] == -1).all() and (got[..., :4] == 0).all()


def test_targets_are_finite_with_degenerate_padding_rows():
    boxes = np.array([[[10, 10, 60, 60], [0, 0, 0, 0]]], "float32")
    got = ops.convert_to_numpy(LabelEncoder().encode((64, 64), boxes, np.array([[1, -1]])))
    assert np.isfinite(got).all()


def test_config_round_trip():
    enc = LabelEncoder(box_coder=BoxCoder(variance=(1, 1, 1, 1)), positive_threshold=0.6)
    clone = LabelEncoder.from_config(enc.get_config())
    assert clone.positive_threshold == 0.6 and clone.box_coder.variance == (1.0,) * 4


@pytest.mark.parametrize("pos, neg", [(0.4, 0.5), (1.5, 0.4), (0.5, -0.1)])
def test_bad_thresholds_raise(pos, neg):
    with pytest.raises(ValueError, match="threshold"):
        LabelEncoder(positive_threshold=pos, negative_threshold=neg)


def test_bad_ground_truth_rank_raises():
    with pytest.raises(ValueError, match="gt_boxes"):
        LabelEncoder().encode((64, 64), np.zeros((3, 4), "float32"), np.zeros((1, 3)))
