"""``DecodePredictions`` with torchvision's postprocessing (``TORCHVISION_DECODING``).

The reference is torchvision's own ``RetinaNet.postprocess_detections`` run on the same raw
outputs. torchvision's compiled ``nms`` cannot load next to the CPU torch used here (see
``torchvision_reference``), so the tests replace ``torchvision.ops.boxes.nms`` (which
``batched_nms`` calls) with :func:`torchvision_reference.exact_nms`, a transcription of the
greedy loop of torchvision's CPU kernel, through ``monkeypatch.setattr``. Those tests run on
whichever backend imports torch and torchvision (the TensorFlow and JAX sessions of the nox
matrix have no torch and skip them); every backend is also checked against
:func:`numpy_torchvision_postprocess`, a NumPy transcription of the same procedure.
"""

import keras
import numpy as np
import pytest
from conftest import tiny_backbone
from keras import ops

from keras_retinanet import AnchorGenerator, BoxCoder, DecodePredictions, RetinaNet
from keras_retinanet.box_coding import TORCHVISION_MAX_LOG_SCALE
from keras_retinanet.decoder import TORCHVISION_DECODING

C = 91
BACKEND = keras.backend.backend()


def tv_anchors():
    return AnchorGenerator.torchvision()


def tv_box_coder():
    return BoxCoder(variance=(1.0, 1.0, 1.0, 1.0), max_log_scale=TORCHVISION_MAX_LOG_SCALE)


def tv_decoder(num_classes=C, **overrides):
    kwargs = {**TORCHVISION_DECODING, **overrides}
    return DecodePredictions(
        num_classes=num_classes,
        anchor_generator=tv_anchors(),
        box_coder=tv_box_coder(),
        **kwargs,
    )


def level_sizes(h, w):
    per_location = tv_anchors().num_anchors_per_location
    return [gh * gw * per_location for gh, gw in tv_anchors().grid_sizes(h, w)]


def xyxy_anchors(h, w):
    """``[A, 4]`` float32 torchvision anchors ``[x1, y1, x2, y2]`` (exact: integers)."""
    cxcywh = ops.convert_to_numpy(tv_anchors()(h, w)).astype("float64")
    half = cxcywh[:, 2:] / 2
    return np.concatenate([cxcywh[:, :2] - half, cxcywh[:, :2] + half], -1).astype("float32")


def random_predictions(rng, batch, h, w, num_classes=C, logit_mean=-5.5, logit_std=1.2):
    """Raw ``[B, A, 4 + C]`` outputs. With the defaults about 1.7% of the scores exceed 0.05:
    thousands per image, more than 1000 on P3 and P4 (the top-k binds there), and a few hot
    classes hold many candidates so that NMS suppresses a lot and the 300 cut binds."""
    a = sum(level_sizes(h, w))
    deltas = rng.normal(0.0, 0.3, (batch, a, 4))
    logits = rng.normal(logit_mean, logit_std, (batch, a, num_classes))
    if num_classes > 20:
        logits[..., [1, 3, 17]] += 2.0
    return np.concatenate([deltas, logits], -1).astype("float32")


def comparison_predictions(h, w):
    """Two images of raw outputs that exercise every cut of the postprocessing.

    Image 0 (:func:`random_predictions`): thousands of scores above 0.05, more than 1000 on
    P3 and P4, many kept boxes suppressed, more than 300 left after NMS (that cut binds).
    Image 1: only 1100-1200 P3 entries score above 0.05, all of the square 40-pixel anchors
    of two classes with small deltas, so that NMS keeps about one box in four and fewer than
    300 remain; the ~100-200 below P3's top 1000 would add kept boxes, so the per-level top-k
    changes the result (see :func:`test_comparison_data_exercise_every_cut`). With more than
    1000 candidates torchvision's ``batched_nms`` loops over the classes (image 0); with at
    most 1000 it offsets each class's boxes instead (image 1): both paths are compared.
    """
    rng = np.random.default_rng(h * 1000 + w)
    general = random_predictions(rng, 1, h, w)
    a = general.shape[1]
    deltas = rng.normal(0.0, 0.05, (1, a, 4))
    logits = np.full((1, a, C), -10.0)
    hot = np.arange(4, min(level_sizes(h, w)[0], 9 * 600), 9)  # P3 anchor 4 of 600 cells
    for label in (1, 3):
        logits[0, hot, label] = rng.normal(0.0, 1.0, len(hot))
    clustered = np.concatenate([deltas, logits], -1).astype("float32")
    return np.concatenate([general, clustered])


# --- NumPy reference ---------------------------------------------------------------------


def _sigmoid32(x):
    with np.errstate(over="ignore", invalid="ignore"):
        return (1.0 / (1.0 + np.exp(-x.astype("float64")))).astype("float32")


def _decode32(deltas, anchors):
    """torchvision's ``BoxCoder.decode_single`` with weights ``(1, 1, 1, 1)``, in float32."""
    f = np.float32
    max_log_scale = f(TORCHVISION_MAX_LOG_SCALE)
    widths = anchors[:, 2] - anchors[:, 0]
    heights = anchors[:, 3] - anchors[:, 1]
    ctr_x = anchors[:, 0] + f(0.5) * widths
    ctr_y = anchors[:, 1] + f(0.5) * heights
    dw = np.minimum(deltas[:, 2], max_log_scale)
    dh = np.minimum(deltas[:, 3], max_log_scale)
    with np.errstate(over="ignore", invalid="ignore"):
        cx = deltas[:, 0] * widths + ctr_x
        cy = deltas[:, 1] * heights + ctr_y
        pw = np.exp(dw) * widths
        ph = np.exp(dh) * heights
        return np.stack(
            [cx - f(0.5) * pw, cy - f(0.5) * ph, cx + f(0.5) * pw, cy + f(0.5) * ph], -1
        ).astype("float32")


def _greedy_nms(boxes, scores, iou_threshold):
    """Greedy NMS of one class: indices kept, best first (float32 IoU, strict ``>``)."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
    areas = (x2 - x1) * (y2 - y1)
    suppressed = np.zeros(len(order), bool)
    keep = []
    for position, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = order[position + 1 :]
        w = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0)
        h = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0)
        inter = w * h
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = inter / (areas[i] + areas[rest] - inter)
        suppressed[rest[iou > iou_threshold]] = True
    return np.asarray(keep, dtype=np.int64)


def numpy_torchvision_postprocess(
    predictions,
    h,
    w,
    score_thresh=0.05,
    nms_thresh=0.5,
    detections_per_img=300,
    topk_candidates=1000,
    clip=True,
):
    """torchvision's ``postprocess_detections`` in NumPy, per image ``(boxes, scores, labels)``.

    As the layer (and unlike torchvision), an anchor whose decoded box is not finite is no
    candidate (checked before the top-k and the clipping)."""
    anchors = xyxy_anchors(h, w)
    num_classes = predictions.shape[-1] - 4
    results = []
    for image in predictions:
        all_boxes, all_scores, all_labels = [], [], []
        start = 0
        for size in level_sizes(h, w):
            level = image[start : start + size]
            level_anchors = anchors[start : start + size]
            start += size
            boxes = _decode32(level[:, :4], level_anchors)
            scores = _sigmoid32(level[:, 4:])
            scores[~np.isfinite(boxes).all(-1)] = np.nan  # never above the threshold
            flat = scores.reshape(-1)
            idx = np.flatnonzero(flat > score_thresh)
            idx = idx[np.argsort(-flat[idx], kind="stable")][:topk_candidates]
            anchor, label = idx // num_classes, idx % num_classes
            level_boxes = boxes[anchor]
            if clip:
                level_boxes[:, 0::2] = np.clip(level_boxes[:, 0::2], 0, w)
                level_boxes[:, 1::2] = np.clip(level_boxes[:, 1::2], 0, h)
            all_boxes.append(level_boxes)
            all_scores.append(flat[idx])
            all_labels.append(label)
        boxes = np.concatenate(all_boxes).astype("float32")
        scores = np.concatenate(all_scores).astype("float32")
        labels = np.concatenate(all_labels)
        keep = []
        for label in np.unique(labels):
            members = np.flatnonzero(labels == label)
            keep.extend(members[_greedy_nms(boxes[members], scores[members], nms_thresh)])
        keep = np.asarray(keep, dtype=np.int64)
        keep = keep[np.argsort(-scores[keep], kind="stable")][:detections_per_img]
        results.append((boxes[keep], scores[keep], labels[keep]))
    return results


# --- torchvision ---------------------------------------------------------------------------


def torchvision_postprocess(monkeypatch, predictions, h, w, **params):
    """torchvision's own ``RetinaNet.postprocess_detections`` on raw ``[N, A, 4 + C]``
    ``predictions`` of ``N`` ``h x w`` images, with its own anchors; ``exact_nms`` replaces
    the compiled NMS. Returns per image ``(boxes, scores, labels)`` as NumPy arrays."""
    from torchvision_reference import exact_nms, import_torchvision

    torch, torchvision = import_torchvision()
    from torchvision.models.detection.image_list import ImageList

    monkeypatch.setattr(torchvision.ops.boxes, "nms", exact_nms)
    backbone = torch.nn.Module()
    backbone.out_channels = 4  # only the (unused) head's width
    model = torchvision.models.detection.RetinaNet(
        backbone, num_classes=predictions.shape[-1] - 4, **params
    ).eval()
    n = predictions.shape[0]
    grids = tv_anchors().grid_sizes(h, w)
    features = [torch.zeros(n, 4, gh, gw) for gh, gw in grids]
    images = ImageList(torch.zeros(n, 3, h, w), [(h, w)] * n)
    anchors = model.anchor_generator(images, features)
    sizes = [gh * gw * 9 for gh, gw in grids]
    # torchvision's anchors equal the library's (checked here once more).
    np.testing.assert_array_equal(anchors[0].numpy(), xyxy_anchors(h, w))
    raw = torch.as_tensor(predictions)
    head_outputs = {
        "bbox_regression": list(raw[..., :4].split(sizes, dim=1)),
        "cls_logits": list(raw[..., 4:].split(sizes, dim=1)),
    }
    per_image_anchors = [list(a.split(sizes)) for a in anchors]
    with torch.no_grad():
        detections = model.postprocess_detections(head_outputs, per_image_anchors, [(h, w)] * n)
    return [(d["boxes"].numpy(), d["scores"].numpy(), d["labels"].numpy()) for d in detections]


# --- comparison ----------------------------------------------------------------------------


def to_numpy(out):
    return {key: ops.convert_to_numpy(value) for key, value in out.items()}


def assert_same_detections(out, expected, score_atol=1e-6, box_atol=1e-3):
    """The layer's output ``out`` equals ``expected`` (per image ``(boxes, scores, labels)``,
    best first): same count, labels, scores and boxes in the same order; rows whose scores tie
    (within ``score_atol``) may come in either order. Returns the max differences."""
    max_score, max_box = 0.0, 0.0
    for b, (boxes, scores, labels) in enumerate(expected):
        n = int(out["num_detections"][b])
        assert n == len(scores), (b, n, len(scores))
        got_scores = out["scores"][b, :n]
        np.testing.assert_allclose(got_scores, scores, rtol=0, atol=score_atol)
        got_boxes, got_labels = out["boxes"][b, :n], out["classes"][b, :n]
        # Groups of consecutive rows with (chained) tying scores compare as multisets.
        start = 0
        while start < n:
            stop = start + 1
            while stop < n and abs(float(scores[stop]) - float(scores[stop - 1])) <= score_atol:
                stop += 1
            rows = slice(start, stop)
            ours = sorted(zip(got_labels[rows].tolist(), got_boxes[rows].tolist(), strict=True))
            theirs = sorted(zip(labels[rows].tolist(), boxes[rows].tolist(), strict=True))
            assert [o[0] for o in ours] == [t[0] for t in theirs], (b, start, stop)
            np.testing.assert_allclose(
                np.asarray([o[1] for o in ours]).reshape(-1, 4),
                np.asarray([t[1] for t in theirs]).reshape(-1, 4),
                rtol=0,
                atol=box_atol,
            )
            start = stop
        if n:
            max_score = max(max_score, float(np.abs(got_scores - scores).max()))
            max_box = max(max_box, float(np.abs(got_boxes - boxes).max()))
        assert not out["scores"][b, n:].any() and not out["boxes"][b, n:].any()
        assert not out["classes"][b, n:].any()
    return max_score, max_box


SIZES = [(160, 224), (288, 192)]


@pytest.mark.parametrize("h, w", SIZES)
def test_matches_torchvision_postprocess_detections(monkeypatch, h, w):
    """Exactly torchvision's ``postprocess_detections`` (``exact_nms`` standing in for its
    compiled NMS, see the module docstring): counts, labels, scores, boxes, order."""
    pytest.importorskip("torch", reason="torchvision's reference needs torch (not installed)")
    preds = comparison_predictions(h, w)
    expected = torchvision_postprocess(monkeypatch, preds, h, w)
    out = to_numpy(tv_decoder()(np.zeros((2, h, w, 3), "float32"), preds))
    assert len(expected[0][1]) == 300 and 0 < len(expected[1][1]) < 300
    max_score, max_box = assert_same_detections(out, expected)
    print(f"torchvision {h}x{w}: max |score| diff {max_score:.3g}, max |box| diff {max_box:.3g}")


@pytest.mark.parametrize("h, w", SIZES)
def test_matches_numpy_reference(h, w):
    preds = comparison_predictions(h, w)
    expected = numpy_torchvision_postprocess(preds, h, w)
    out = to_numpy(tv_decoder()(np.zeros((2, h, w, 3), "float32"), preds))
    max_score, max_box = assert_same_detections(out, expected)
    print(f"numpy {h}x{w}: max |score| diff {max_score:.3g}, max |box| diff {max_box:.3g}")


@pytest.mark.parametrize("h, w", SIZES)
def test_comparison_data_exercise_every_cut(h, w):
    """The comparisons above are not vacuous (see :func:`comparison_predictions`)."""
    preds = comparison_predictions(h, w)
    scores = _sigmoid32(preds[..., 4:]) > 0.05
    per_level = np.split(scores, np.cumsum(level_sizes(h, w))[:-1], axis=1)
    above = [level.reshape(2, -1).sum(-1) for level in per_level]
    assert above[0][0] > 1000 and above[1][0] > 1000  # image 0: the top-k cuts P3 and P4
    assert 1000 < above[0][1] and not any(level[1] for level in above[1:])  # image 1: P3 only
    unlimited = dict(detections_per_img=10**9)
    no_nms = numpy_torchvision_postprocess(preds, h, w, nms_thresh=1.0, **unlimited)
    after_nms = numpy_torchvision_postprocess(preds, h, w, **unlimited)
    candidates, kept = len(no_nms[0][1]), len(after_nms[0][1])
    assert candidates > 2000 and 300 < kept < 0.8 * candidates, (candidates, kept)
    candidates, kept = len(no_nms[1][1]), len(after_nms[1][1])
    assert candidates == 1000 and kept < 0.4 * candidates, (candidates, kept)
    no_cut = numpy_torchvision_postprocess(preds, h, w, topk_candidates=10**9)
    assert len(no_cut[1][1]) > len(after_nms[1][1])  # the cut changes image 1's result


def test_level_with_fewer_entries_than_k(monkeypatch):
    """32 x 32: P5, P6 and P7 are single cells with 9 * 91 = 819 < 1000 entries, most of them
    above the threshold here, so every one that passes is a candidate; P3 and P4 are cut to
    1000. Compared with torchvision too when it imports."""
    h = w = 32
    rng = np.random.default_rng(3)
    preds = random_predictions(rng, 2, h, w, logit_mean=0.0, logit_std=2.0)
    assert level_sizes(h, w)[2:] == [9, 9, 9]
    passing = _sigmoid32(preds[..., 4:]) > 0.05
    per_level = np.split(passing, np.cumsum(level_sizes(h, w))[:-1], axis=1)
    counts = np.asarray([level.reshape(2, -1).sum(-1) for level in per_level])
    assert (counts[:2] > 1000).all() and (counts[2:] > 700).all() and (counts[2:] < 819).all()
    out = to_numpy(tv_decoder()(np.zeros((2, h, w, 3), "float32"), preds))
    assert (out["num_detections"] > 0).all()
    assert_same_detections(out, numpy_torchvision_postprocess(preds, h, w))
    if _torchvision_imports():
        expected = torchvision_postprocess(monkeypatch, preds, h, w)
        assert_same_detections(out, expected)


def test_no_score_above_threshold_gives_no_detections():
    h, w = 64, 96
    preds = random_predictions(np.random.default_rng(1), 2, h, w, logit_mean=-12.0, logit_std=1)
    assert _sigmoid32(preds[..., 4:]).max() <= 0.05
    out = to_numpy(tv_decoder()(np.zeros((2, h, w, 3), "float32"), preds))
    np.testing.assert_array_equal(out["num_detections"], [0, 0])
    for key in ("boxes", "scores", "classes"):
        assert not out[key].any()
    assert out["boxes"].shape == (2, 300, 4) and out["classes"].dtype == np.int32


@pytest.mark.parametrize("top_k", [1000, None])
def test_nan_logits_and_inf_deltas_never_become_detections(top_k):
    """NaN logits and NaN/Inf deltas on the best-scoring anchors: those anchors disappear (they
    take no top-k place; an Inf box is not clipped into a finite one), the rest is unchanged."""
    h, w = 64, 96
    preds = random_predictions(np.random.default_rng(2), 2, h, w, num_classes=5, logit_mean=-3)
    a = preds.shape[1]
    bad = np.random.default_rng(4).choice(a, 40, replace=False)
    preds[:, bad, 4:] = 8.0  # would be the best detections
    preds[:, bad[10:20], 0] = np.inf
    preds[:, bad[20:30], 3] = np.nan
    preds[:, bad[30:40], 1] = -np.inf
    preds[:, bad[:10], 4:] = np.nan  # entirely NaN logits
    decoder = tv_decoder(num_classes=5, pre_nms_top_k_per_level=top_k)
    out = to_numpy(decoder(np.zeros((2, h, w, 3), "float32"), preds))
    assert np.isfinite(out["boxes"]).all() and np.isfinite(out["scores"]).all()
    assert (out["scores"] < 0.999).all()  # sigmoid(8) = 0.99966: none of the bad anchors
    clean = preds.copy()
    clean[:, bad, 4:] = -50.0
    expected = to_numpy(decoder(np.zeros((2, h, w, 3), "float32"), clean))
    for key in out:
        np.testing.assert_array_equal(out[key], expected[key])
    if top_k is not None:
        assert_same_detections(out, numpy_torchvision_postprocess(preds, h, w))


@pytest.mark.parametrize("top_k", [1000, None])
def test_boxes_partly_outside_the_image_are_clipped(top_k):
    h, w = 64, 96
    a = sum(level_sizes(h, w))
    preds = np.concatenate([np.zeros((1, a, 4)), np.full((1, a, 3), -20.0)], -1)
    anchors = xyxy_anchors(h, w)
    # Anchor 0 (centred on the top-left corner) and the last anchor (P7, 512 px) stick out.
    preds[0, 0, 4 + 1] = 3.0
    preds[0, a - 1, 4 + 2] = 2.0
    preds[0, 100, :2] = [0.6, 3.0]  # pushed over the right and bottom edges
    preds[0, 100, 4 + 0] = 1.0
    preds = preds.astype("float32")
    images = np.zeros((1, h, w, 3), "float32")
    clipped = to_numpy(tv_decoder(num_classes=3, pre_nms_top_k_per_level=top_k)(images, preds))
    raw = to_numpy(
        tv_decoder(num_classes=3, pre_nms_top_k_per_level=top_k, clip_boxes=False)(images, preds)
    )
    assert int(clipped["num_detections"][0]) == 3 and int(raw["num_detections"][0]) == 3
    decoded = _decode32(preds[0, [0, a - 1, 100], :4], anchors[[0, a - 1, 100]])
    np.testing.assert_allclose(raw["boxes"][0, :3], decoded, atol=1e-4)
    assert (raw["boxes"][0, :2, :2] < 0).all() and (raw["boxes"][0, 2, 2:] > [w, h]).all()
    expected = decoded.copy()
    expected[:, 0::2] = np.clip(expected[:, 0::2], 0, w)
    expected[:, 1::2] = np.clip(expected[:, 1::2], 0, h)
    np.testing.assert_allclose(clipped["boxes"][0, :3], expected, atol=1e-4)
    np.testing.assert_array_equal(clipped["classes"][0, :3], [1, 2, 0])


def test_clipping_happens_before_nms():
    """Two boxes with IoU 0.25 that coincide once clipped: clipped, one is suppressed (as in
    torchvision); unclipped, both are kept."""
    h, w = 64, 96
    a = sum(level_sizes(h, w))
    anchors = ops.convert_to_numpy(tv_anchors()(h, w)).astype("float64")  # cx, cy, w, h
    targets = np.asarray([[-60.0, 4.0, 20.0, 24.0], [0.0, 4.0, 20.0, 24.0]])
    i, j = 4, 13  # P3 anchors of size 40 at cells (0, 0) and (0, 1)
    center = (targets[:, :2] + targets[:, 2:]) / 2
    size = targets[:, 2:] - targets[:, :2]
    deltas = np.concatenate(
        [(center - anchors[[i, j], :2]) / anchors[[i, j], 2:], np.log(size / anchors[[i, j], 2:])],
        -1,
    )
    preds = np.concatenate([np.zeros((1, a, 4)), np.full((1, a, 2), -20.0)], -1)
    preds[0, [i, j], :4] = deltas
    preds[0, [i, j], 4] = [3.0, 2.0]
    preds = preds.astype("float32")
    images = np.zeros((1, h, w, 3), "float32")
    for top_k in (1000, None):
        kept = tv_decoder(num_classes=2, pre_nms_top_k_per_level=top_k)(images, preds)
        assert int(ops.convert_to_numpy(kept["num_detections"])[0]) == 1
        both = tv_decoder(num_classes=2, pre_nms_top_k_per_level=top_k, clip_boxes=False)(
            images, preds
        )
        assert int(ops.convert_to_numpy(both["num_detections"])[0]) == 2


def test_large_top_k_equals_default_candidate_selection(rng):
    """With ``k`` at least every level's ``A_l * C`` every pair above the threshold is a
    candidate, as in the default mode: same detections (ties aside)."""
    h, w = 64, 96
    preds = random_predictions(rng, 2, h, w, num_classes=4, logit_mean=-3.0)
    images = np.zeros((2, h, w, 3), "float32")
    kwargs = dict(num_classes=4, anchor_generator=tv_anchors(), box_coder=tv_box_coder())
    default = to_numpy(DecodePredictions(**kwargs)(images, preds))
    top_k = to_numpy(DecodePredictions(pre_nms_top_k_per_level=10**6, **kwargs)(images, preds))
    assert int(default["num_detections"].min()) == 100
    expected = [
        (default["boxes"][b], default["scores"][b], default["classes"][b]) for b in range(2)
    ]
    assert_same_detections(top_k, expected, score_atol=0.0, box_atol=0.0)


def test_defaults_are_unchanged(rng):
    layer = DecodePredictions(num_classes=5)
    assert layer.pre_nms_top_k_per_level is None and layer.clip_boxes is False
    images = np.zeros((2, 64, 64, 3), "float32")
    a = AnchorGenerator().num_anchors(64, 64)
    preds = np.concatenate([rng.normal(0, 0.5, (2, a, 4)), rng.normal(-3, 1, (2, a, 5))], -1)
    preds = preds.astype("float32")
    explicit = DecodePredictions(num_classes=5, pre_nms_top_k_per_level=None, clip_boxes=False)
    a, b = to_numpy(layer(images, preds)), to_numpy(explicit(images, preds))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_get_config_round_trip():
    layer = tv_decoder(name="tv_decode")
    config = layer.get_config()
    assert config["pre_nms_top_k_per_level"] == 1000 and config["clip_boxes"] is True
    clone = DecodePredictions.from_config(config)
    assert clone.get_config() == config
    assert clone.pre_nms_top_k_per_level == 1000 and clone.clip_boxes is True
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert restored.get_config() == config
    h, w = 64, 96
    preds = random_predictions(np.random.default_rng(5), 1, h, w)
    images = np.zeros((1, h, w, 3), "float32")
    expected, got = to_numpy(layer(images, preds)), to_numpy(restored(images, preds))
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"pre_nms_top_k_per_level": 0}, "pre_nms_top_k_per_level"),
        ({"pre_nms_top_k_per_level": -5}, "pre_nms_top_k_per_level"),
        ({"pre_nms_top_k_per_level": 2.5}, "pre_nms_top_k_per_level"),
        ({"pre_nms_top_k_per_level": "1000"}, "pre_nms_top_k_per_level"),
        ({"pre_nms_top_k_per_level": True}, "pre_nms_top_k_per_level"),
        ({"clip_boxes": "yes"}, "clip_boxes"),
        ({"clip_boxes": 1}, "clip_boxes"),
        ({"clip_boxes": None}, "clip_boxes"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DecodePredictions(**kwargs)


def test_numpy_integer_arguments_are_accepted():
    layer = DecodePredictions(pre_nms_top_k_per_level=np.int64(7), clip_boxes=np.bool_(True))
    assert layer.pre_nms_top_k_per_level == 7 and layer.clip_boxes is True
    assert type(layer.get_config()["pre_nms_top_k_per_level"]) is int


def test_compiled_matches_eager():
    """``jax.jit`` on JAX, ``tf.function`` (static, then unknown ``H, W`` and batch) on
    TensorFlow; PyTorch runs eagerly (``test_detector_predict`` covers its predict path)."""
    h, w = 96, 128
    preds = random_predictions(np.random.default_rng(6), 2, h, w)
    images = np.zeros((2, h, w, 3), "float32")
    layer = tv_decoder()
    eager = to_numpy(layer(images, preds))
    assert int(eager["num_detections"].min()) > 0
    if BACKEND == "jax":
        import jax

        compiled = [jax.jit(lambda i, p: layer(i, p))(images, preds)]
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        static = tf.function(lambda i, p: layer(i, p))
        dynamic = tf.function(
            lambda i, p: layer(i, p),
            input_signature=[
                tf.TensorSpec([None, None, None, 3], tf.float32),
                tf.TensorSpec([None, None, 4 + C], tf.float32),
            ],
        )
        compiled = [static(images, preds), dynamic(images, preds)]
    else:
        pytest.skip(f"no compiled path of a bare layer tested on {BACKEND}")
    for out in compiled:
        assert_same_outputs(out, eager)


def test_functional_model_predict_matches_eager():
    """The layer in a functional model's ``predict`` (jit-compiled on JAX, ``tf.function`` on
    TensorFlow, with unknown ``H, W`` on TensorFlow) gives the eager result."""
    h, w = 96, 128
    a = sum(level_sizes(h, w))
    preds = random_predictions(np.random.default_rng(8), 2, h, w)
    images = np.zeros((2, h, w, 3), "float32")
    layer = tv_decoder()
    eager = to_numpy(layer(images, preds))
    shapes = [((h, w, 3), (a, 4 + C))]
    if BACKEND == "tensorflow":
        shapes.append(((None, None, 3), (None, 4 + C)))
    for image_shape, prediction_shape in shapes:
        inputs = [keras.Input(image_shape), keras.Input(prediction_shape)]
        model = keras.Model(inputs, tv_decoder()(*inputs))
        out = model.predict([images, preds], batch_size=2, verbose=0)
        assert_same_outputs(out, eager)


def test_detector_predict_with_torchvision_decoding():
    """``model.make_detector(**TORCHVISION_DECODING)`` is wired through: the decoder has the
    torchvision options and ``predict`` gives 300 rows per image, with clipped boxes."""
    h, w = 64, 96
    model = RetinaNet(
        num_classes=6,
        backbone=tiny_backbone(),
        fpn_filters=8,
        head_convs=1,
        anchor_generator=tv_anchors(),
        box_coder=tv_box_coder(),
    )
    detector = model.make_detector(**{**TORCHVISION_DECODING, "confidence_threshold": 0.0})
    config = detector.decoder.get_config()
    assert config["pre_nms_top_k_per_level"] == 1000 and config["clip_boxes"] is True
    assert config["max_detections"] == config["max_detections_per_class"] == 300
    x = np.random.default_rng(7).normal(size=(2, h, w, 3)).astype("float32")
    out = detector.predict(x, batch_size=2, verbose=0)
    assert out["boxes"].shape == (2, 300, 4)
    assert (out["num_detections"] > 0).all()
    boxes = out["boxes"]
    assert (boxes >= 0).all() and (boxes[..., 0::2] <= w).all() and (boxes[..., 1::2] <= h).all()


def assert_same_outputs(out, expected):
    """Compiled vs eager: same detections; XLA may fuse the decoding's multiply-adds, so
    coordinates may differ in the last bits (scores too, by the sigmoid)."""
    out = to_numpy(out)
    np.testing.assert_array_equal(out["num_detections"], expected["num_detections"])
    np.testing.assert_array_equal(out["classes"], expected["classes"])
    np.testing.assert_allclose(out["scores"], expected["scores"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(out["boxes"], expected["boxes"], rtol=0, atol=1e-4)


def _torchvision_imports():
    """Whether torch and torchvision import (through ``import_torchvision``)."""
    from torchvision_reference import import_torchvision

    try:
        import_torchvision()
    except pytest.skip.Exception:
        return False
    return True
