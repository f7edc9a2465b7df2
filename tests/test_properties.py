"""Property-based tests (hypothesis) of the geometric core and of NMS."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from keras import ops

from keras_retinanet import BoxCoder, pairwise_iou
from keras_retinanet.ops import combined_non_max_suppression

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
#: Fewer examples where each one costs more (eager JAX compiles every op once per shape).
FEWER = settings(SETTINGS, max_examples=25)
coords = st.floats(-500, 500, allow_nan=False, width=32)
sizes = st.floats(1.0, 400.0, allow_nan=False, width=32)


#: Box counts drawn from a few sizes: eager JAX compiles every op once per shape, and 60
#: examples over 1..20 boxes (pairs of them for IoU) spent two minutes compiling. Three sizes
#: (a single box, a few, many) give 9 shape pairs for IoU.
BOX_COUNTS = (1, 5, 20)


@st.composite
def corner_boxes(draw):
    n = draw(st.sampled_from(BOX_COUNTS))
    xy = draw(arrays("float32", (n, 2), elements=coords))
    wh = draw(arrays("float32", (n, 2), elements=sizes))
    return np.concatenate([xy, xy + wh], axis=1)


@SETTINGS
@given(
    boxes=corner_boxes(),
    anchor_xy=arrays("float32", (2,), elements=coords),
    anchor_wh=arrays("float32", (2,), elements=sizes),
)
def test_encode_decode_round_trip(boxes, anchor_xy, anchor_wh):
    anchors = np.tile(np.concatenate([anchor_xy, anchor_wh])[None], (len(boxes), 1))
    coder = BoxCoder()
    decoded = ops.convert_to_numpy(coder.decode(coder.encode(boxes, anchors), anchors))
    scale = np.abs(boxes).max() + 1.0
    np.testing.assert_allclose(decoded, boxes, atol=2e-5 * scale + 1e-3)


@FEWER
@given(a=corner_boxes(), b=corner_boxes())
def test_iou_is_in_unit_interval_and_symmetric(a, b):
    ab = ops.convert_to_numpy(pairwise_iou(a, b))
    ba = ops.convert_to_numpy(pairwise_iou(b, a))
    assert ab.shape == (len(a), len(b))
    assert np.isfinite(ab).all() and (ab >= 0).all() and (ab <= 1 + 1e-6).all()
    np.testing.assert_allclose(ab, ba.T, atol=1e-6)
    self_iou = np.diag(ops.convert_to_numpy(pairwise_iou(a, a)))
    np.testing.assert_allclose(self_iou, 1.0, atol=1e-5)


@st.composite
def nms_inputs(draw):
    n = draw(st.integers(1, 60))
    c = draw(st.integers(1, 4))
    xy = draw(arrays("float32", (n, 2), elements=st.floats(0, 1, width=32)))
    wh = draw(arrays("float32", (n, 2), elements=st.floats(0.015625, 0.5, width=32)))
    boxes = np.concatenate([xy, xy + wh], 1)[None, :, None, :]
    # Distinct scores (no ties), as a random permutation of a grid.
    perm = draw(st.permutations(list(range(n * c))))
    scores = (np.asarray(perm, "float32").reshape(1, n, c) + 1.0) / (n * c + 1.0)
    iou = draw(st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]))
    return boxes, scores, iou


def _iou_np(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@FEWER
@given(inputs=nms_inputs(), seed=st.integers(0, 2**16))
def test_nms_invariants(inputs, seed):
    boxes, scores, iou = inputs
    out = [
        ops.convert_to_numpy(t)
        for t in combined_non_max_suppression(
            boxes, scores, 10, 25, iou_threshold=iou, score_threshold=0.2, clip_boxes=False
        )
    ]
    nb, ns, nc, nv = out[0][0], out[1][0], out[2][0].astype(int), int(out[3][0])
    # Subset of the inputs: every output is an input box with that box's score for its class.
    for box, score, cls in zip(nb[:nv], ns[:nv], nc[:nv], strict=True):
        matches = np.where(np.all(np.isclose(boxes[0, :, 0], box, atol=1e-6), axis=1))[0]
        assert any(np.isclose(scores[0, i, cls], score) for i in matches)
        assert score > 0.2
    assert (np.diff(ns[:nv]) <= 0).all(), "sorted by score"
    assert (nb[nv:] == 0).all() and (ns[nv:] == 0).all() and (nc[nv:] == 0).all()
    for i in range(nv):
        for j in range(i + 1, nv):
            if nc[i] == nc[j]:
                assert _iou_np(nb[i], nb[j]) <= iou + 1e-6
    # Permuting the candidates (no ties) leaves the result unchanged.
    perm = np.random.default_rng(seed).permutation(boxes.shape[1])
    again = [
        ops.convert_to_numpy(t)
        for t in combined_non_max_suppression(
            boxes[:, perm],
            scores[:, perm],
            10,
            25,
            iou_threshold=iou,
            score_threshold=0.2,
            clip_boxes=False,
        )
    ]
    for a, b in zip(out, again, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
