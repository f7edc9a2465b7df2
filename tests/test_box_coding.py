import math

import numpy as np
import pytest
from keras import ops

from keras_retinanet import BoxCoder, center_to_corners, corners_to_center, pairwise_iou


def random_anchors_and_boxes(rng, n=500):
    anchors = np.concatenate([rng.uniform(0, 512, (n, 2)), rng.uniform(8, 300, (n, 2))], 1)
    x1y1 = rng.uniform(-20, 500, (n, 2))
    boxes = np.concatenate([x1y1, x1y1 + rng.uniform(1, 300, (n, 2))], 1)
    return anchors.astype("float32"), boxes.astype("float32")


def test_encode_then_decode_returns_the_boxes(rng):
    anchors, boxes = random_anchors_and_boxes(rng)
    coder = BoxCoder()
    decoded = coder.decode(coder.encode(boxes, anchors), anchors)
    np.testing.assert_allclose(ops.convert_to_numpy(decoded), boxes, rtol=1e-5, atol=1e-3)


def test_encode_matches_spec_formula_with_variance(rng):
    anchors, boxes = random_anchors_and_boxes(rng, 50)
    g = np.concatenate([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], 1)
    expected = np.concatenate(
        [(g[:, :2] - anchors[:, :2]) / anchors[:, 2:], np.log(g[:, 2:] / anchors[:, 2:])], 1
    ) / np.array([0.1, 0.1, 0.2, 0.2])
    got = ops.convert_to_numpy(BoxCoder().encode(boxes, anchors))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_zero_deltas_decode_to_the_anchor():
    anchors = np.array([[50.0, 60.0, 20.0, 10.0]], "float32")
    got = ops.convert_to_numpy(BoxCoder().decode(np.zeros((1, 4), "float32"), anchors))
    np.testing.assert_allclose(got, [[40.0, 55.0, 60.0, 65.0]])


def test_decode_broadcasts_over_batch(rng):
    anchors, boxes = random_anchors_and_boxes(rng, 20)
    coder = BoxCoder()
    deltas = np.stack([ops.convert_to_numpy(coder.encode(boxes, anchors))] * 3)
    got = ops.convert_to_numpy(coder.decode(deltas, anchors))
    assert got.shape == (3, 20, 4)
    np.testing.assert_allclose(got[2], boxes, rtol=1e-5, atol=1e-3)


def test_box_coder_config_round_trip():
    coder = BoxCoder(variance=(1.0, 1.0, 1.0, 1.0))
    assert BoxCoder.from_config(coder.get_config()).variance == (1.0, 1.0, 1.0, 1.0)


@pytest.mark.parametrize("variance", [(0.1, 0.1, 0.2), (0.1, 0.1, 0.2, 0.0)])
def test_invalid_variance_raises(variance):
    with pytest.raises(ValueError, match="variance"):
        BoxCoder(variance=variance)


def test_corner_center_conversions_are_inverse(rng):
    _, boxes = random_anchors_and_boxes(rng, 30)
    back = center_to_corners(corners_to_center(boxes))
    np.testing.assert_allclose(ops.convert_to_numpy(back), boxes, atol=1e-3)


def test_pairwise_iou_hand_cases():
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 5]], "float32")
    b = np.array([[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30]], "float32")
    got = ops.convert_to_numpy(pairwise_iou(a, b))
    np.testing.assert_allclose(got, [[50 / 150, 1.0, 0.0], [0.0, 0.0, 0.0]], atol=1e-6)


def test_max_log_scale_clamps_width_and_height_before_exp():
    coder = BoxCoder(variance=(1.0, 1.0, 1.0, 1.0), max_log_scale=math.log(1000.0 / 16))
    anchors = np.array([[50.0, 50.0, 16.0, 16.0]], "float32")
    deltas = np.array([[[0.0, 0.0, 20.0, 1.0]]], "float32")
    boxes = ops.convert_to_numpy(coder.decode(deltas, anchors))[0, 0]
    np.testing.assert_allclose(boxes[2] - boxes[0], 1000.0, rtol=1e-5)  # exp clamped: 16 * 62.5
    np.testing.assert_allclose(boxes[3] - boxes[1], 16.0 * math.e, rtol=1e-5)  # under the clamp
    assert BoxCoder.from_config(coder.get_config()).max_log_scale == coder.max_log_scale
    with pytest.raises(ValueError, match="max_log_scale"):
        BoxCoder(max_log_scale=float("nan"))
