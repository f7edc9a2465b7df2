import math

import numpy as np
import pytest
from keras import ops

from keras_retinanet import RetinaNetLoss


def numpy_loss(y_true, y_pred, num_classes, alpha=0.25, gamma=2.0):
    """Direct transcription of docs/numerics.md (Loss) with per-anchor loops."""
    losses = []
    for t_img, p_img in zip(y_true, y_pred, strict=True):
        cls_sum = box_sum = 0.0
        positives = 0
        for t, p in zip(t_img, p_img, strict=True):
            cid = t[4]
            if cid == -2:
                continue
            for c in range(num_classes):
                y = 1.0 if cid == c else 0.0
                prob = 1 / (1 + math.exp(-p[4 + c]))
                pt = prob if y else 1 - prob
                at = alpha if y else 1 - alpha
                cls_sum += -at * (1 - pt) ** gamma * math.log(pt)
            if cid >= 0:
                positives += 1
                for d in np.abs(t[:4] - p[:4]):
                    box_sum += 0.5 * d * d if d < 1 else d - 0.5
        losses.append((cls_sum + box_sum) / positives if positives else 0.0)
    return np.array(losses)


def test_hand_computed_single_anchor_case():
    # One positive anchor of class 1 out of 2, logits 0 -> p = 0.5; box error 0.5 and 2.0.
    y_true = np.array([[[0.0, 0.0, 0.5, 2.0, 1.0]]], "float32")
    y_pred = np.array([[[0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]], "float32")
    cls = 0.75 * 0.25 * math.log(2) + 0.25 * 0.25 * math.log(2)
    box = 0.5 * 0.25 + (2.0 - 0.5)
    loss = RetinaNetLoss(2, reduction=None)(y_true, y_pred)
    np.testing.assert_allclose(ops.convert_to_numpy(loss), [cls + box], rtol=1e-6)


def test_matches_numpy_reference_on_random_targets(rng):
    b, a, c = 3, 40, 4
    y_pred = rng.normal(0, 2, (b, a, 4 + c)).astype("float32")
    y_true = np.zeros((b, a, 5), "float32")
    y_true[..., :4] = rng.normal(0, 1.5, (b, a, 4))
    y_true[..., 4] = rng.choice([-2, -1, -1, -1, 0, 1, 2, 3], (b, a))
    y_true[2, :, 4] = rng.choice([-2, -1], a)  # an image without positives
    got = ops.convert_to_numpy(RetinaNetLoss(c, reduction=None)(y_true, y_pred))
    want = numpy_loss(y_true, y_pred, c)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert got[2] == 0.0
    mean = ops.convert_to_numpy(RetinaNetLoss(c)(y_true, y_pred))
    np.testing.assert_allclose(mean, want.mean(), rtol=1e-5)


def test_zero_positives_is_finite_zero_even_with_extreme_logits():
    y_true = np.full((2, 10, 5), -1.0, "float32")
    y_pred = np.full((2, 10, 7), 80.0, "float32")
    got = ops.convert_to_numpy(RetinaNetLoss(3, reduction=None)(y_true, y_pred))
    assert np.isfinite(got).all() and (got == 0).all()


def test_extreme_logits_stay_finite():
    y_true = np.array([[[0, 0, 0, 0, 0], [0, 0, 0, 0, -1]]], "float32")
    y_pred = np.array([[[0, 0, 0, 0, -200.0], [0, 0, 0, 0, 200.0]]], "float32")
    got = ops.convert_to_numpy(RetinaNetLoss(1, reduction=None)(y_true, y_pred))
    assert np.isfinite(got).all() and got[0] > 100


def test_ignored_anchors_add_nothing(rng):
    y_pred = rng.normal(size=(1, 3, 6)).astype("float32")
    base = np.array([[[0.1, 0.2, 0.3, 0.4, 0], [0, 0, 0, 0, -1], [0, 0, 0, 0, -1]]], "float32")
    ignored = base.copy()
    ignored[0, 2, 4] = -2
    with_neg = ops.convert_to_numpy(RetinaNetLoss(2, reduction=None)(base, y_pred))
    with_ign = ops.convert_to_numpy(RetinaNetLoss(2, reduction=None)(ignored, y_pred))
    assert with_ign[0] < with_neg[0]
    base[0, 2] = 0
    y_pred2 = y_pred[:, :2]
    no_third = ops.convert_to_numpy(RetinaNetLoss(2, reduction=None)(base[:, :2], y_pred2))
    np.testing.assert_allclose(with_ign, no_third, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"num_classes": 0}, "num_classes"), ({"alpha": 1.5}, "alpha"), ({"delta": 0}, "delta")],
)
def test_bad_arguments_raise(kwargs, match):
    kwargs = {"num_classes": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        RetinaNetLoss(**kwargs)


def test_wrong_prediction_width_raises():
    with pytest.raises(ValueError, match="4 \\+ num_classes"):
        RetinaNetLoss(3)(np.zeros((1, 2, 5), "float32"), np.zeros((1, 2, 6), "float32"))


def test_config_round_trip():
    loss = RetinaNetLoss(5, alpha=0.5, gamma=1.0)
    clone = RetinaNetLoss.from_config(loss.get_config())
    assert (clone.num_classes, clone.alpha, clone.gamma) == (5, 0.5, 1.0)
