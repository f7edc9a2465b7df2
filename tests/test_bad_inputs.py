"""Bad input to every public entry point: one table of named cases.

Each case either expects an exception whose message names the offending argument (``error``
and ``match``), or a documented behaviour checked on the result (``check``): NaN scores never
become detections, ground truth outside the image is clipped or matches nothing, an image
without objects trains with a finite loss, value checks are skipped inside compiled graphs.
"""

import functools
import json
import types
from typing import Any, NamedTuple

import keras
import numpy as np
import pytest
from conftest import tiny_backbone
from keras import ops

from keras_retinanet import (
    AnchorGenerator,
    BoxCoder,
    DecodePredictions,
    LabelEncoder,
    RetinaNet,
    RetinaNetLoss,
)
from keras_retinanet.cli import main as cli_main
from keras_retinanet.data import (
    DetectionDataset,
    InferenceBatches,
    load_coco,
    load_image,
    preprocess_for_inference,
    preprocess_for_training,
    resize_and_pad,
)
from keras_retinanet.ops import combined_non_max_suppression

BACKEND = keras.backend.backend()
NAN, INF = float("nan"), float("inf")
A64 = AnchorGenerator().num_anchors(64, 64)  # anchors of a 64 x 64 input


class Case(NamedTuple):
    id: str
    run: Any  # run(ctx) -> result; ctx has tmp_path and capsys
    error: Any = None  # expected exception type ...
    match: str = None  # ... whose message matches this
    check: Any = None  # or check(result) of the documented behaviour
    marks: tuple = ()


# ----------------------------------------------------------------------------- helpers


@functools.cache
def _model():
    """A tiny model, built (variables created) but never run: bad input must be rejected
    before any computation, so most cases cost no forward pass."""
    keras.utils.set_random_seed(1)
    model = RetinaNet(num_classes=2, backbone=tiny_backbone(), fpn_filters=8, head_convs=1)
    model.build((None, 64, 64, 3))
    return model


def _images(n=1, h=64, w=64, c=3, fill=0.0, bad=None):
    x = np.full((n, h, w, c), fill, "float32")
    if bad is not None and x.size:
        x[0, h // 2, w // 2, 0] = bad
    return x


def _np(x):
    return ops.convert_to_numpy(x)


def _compiled(fn):
    """``fn`` traced as a graph: ``tf.function``, ``jax.jit`` or ``torch.compile``."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(fn)
    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    import torch

    return torch.compile(fn, backend="eager")


def _model_in_compiled_graph(images):
    if BACKEND == "torch":
        pytest.skip("torch.compile of the model takes ~15 s; the LabelEncoder case covers it")
    return _np(_compiled(lambda x: _model()(x))(ops.convert_to_tensor(images)))


def _decode(predictions, **kwargs):
    out = DecodePredictions(num_classes=2, **kwargs)(_images(len(predictions)), predictions)
    return {k: _np(v) for k, v in out.items()}


def _logits(value=-10.0, n=1):
    """``[n, A64, 6]`` zero deltas and constant class logits."""
    pred = np.zeros((n, A64, 6), "float32")
    pred[..., 4:] = value
    return pred


def _nms(boxes=None, scores=None, per_class=5, total=10, **kwargs):
    if boxes is None:
        xy = np.arange(8, dtype="float32")[:, None] * 0.1
        boxes = np.concatenate([xy, xy, xy + 0.05, xy + 0.05], 1)[None, :, None, :]
    if scores is None:
        scores = np.linspace(0.9, 0.2, 16, dtype="float32").reshape(1, 8, 2)
    return [_np(t) for t in combined_non_max_suppression(boxes, scores, per_class, total, **kwargs)]


def _encode(boxes, classes, image_shape=(64, 64)):
    classes = np.asarray(classes, "int32")
    boxes = np.asarray(boxes, "float32").reshape(*classes.shape, 4)
    return _np(LabelEncoder().encode(image_shape, boxes, classes))


def _loss_of(boxes, classes):
    """Per-image loss of constant predictions through ``LabelEncoder`` + ``RetinaNetLoss``."""
    y_true = _encode(boxes, classes)
    y_pred = np.zeros((len(classes), A64, 6), "float32")
    y_pred[..., 4:] = -2.0
    return _np(RetinaNetLoss(2, reduction=None)(y_true, y_pred))


def _loss(y_true=None, y_pred=None):
    y_true = np.zeros((1, A64, 5), "float32") if y_true is None else y_true
    y_pred = np.zeros((1, A64, 6), "float32") if y_pred is None else y_pred
    return _np(RetinaNetLoss(2)(y_true, y_pred))


def _coco(tmp_path, mutate=None):
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 40, "width": 50}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [5, 5, 10, 10]}],
        "categories": [{"id": 3, "name": "thing"}],
    }
    if mutate is not None:
        mutate(data)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))  # json writes NaN as NaN, as Python reads it back
    return path


def _set_bbox_x(data, value):
    data["annotations"][0]["bbox"][0] = value


def _add_annotations(data, *bboxes):
    for i, bbox in enumerate(bboxes, start=2):
        data["annotations"].append({"id": i, "image_id": 1, "category_id": 3, "bbox": bbox})


def _text_file(path, text):
    path.write_text(text)
    return path


def _truncated_png(tmp_path):
    path = tmp_path / "cut.png"
    path.write_bytes(_write_png(tmp_path / "ok.png").read_bytes()[:80])
    return path


def _write_png(path, h=40, w=50):
    from PIL import Image

    Image.fromarray(np.full((h, w, 3), 128, "uint8")).save(path)
    return path


def _corrupt(path):
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 512, dtype="uint8").tobytes())
    return path


def _record(**kwargs):
    record = {"image": np.full((40, 50, 3), 100, "uint8"), "boxes": [[5, 5, 20, 20]]}
    record["classes"] = [0]
    record.update(kwargs)
    return record


def _batch(records, **kwargs):
    """The one batch of ``records`` at their own size (40 x 50)."""
    kwargs = {"min_side": 40, "max_side": 50, "stride": 1, **kwargs}
    return DetectionDataset(records, batch_size=len(records), training=False, **kwargs)[0]


def _cli(ctx, argv):
    """Runs the CLI; returns ``(exit code, stderr)``."""
    try:
        code = cli_main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    return code, ctx.capsys.readouterr().err


def _cli_error(flag):
    def check(result):
        code, err = result
        assert code == 2, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert err.startswith("keras-retinanet: error:") or "usage:" in err
        assert flag in err, err

    return check


def _cli_argparse_error(flag):
    def check(result):
        code, err = result
        assert code == 2 and "Traceback" not in err, err
        assert err.strip().splitlines()[-1].startswith("keras-retinanet") and flag in err, err

    return check


def _cli_train(ctx, annotations):
    (ctx.tmp_path / "images").mkdir(exist_ok=True)
    argv = ["train", "--train-annotations", annotations, "--train-images"]
    return _cli(ctx, [*argv, ctx.tmp_path / "images", "--output", ctx.tmp_path / "out"])


# ------------------------------------------------------------------------------ checks


def _raises_nothing_and_has_shape(shape):
    def check(result):
        assert tuple(np.shape(result)) == shape

    return check


def _no_detections(out):
    assert (out["num_detections"] == 0).all()
    assert (out["scores"] == 0).all() and (out["boxes"] == 0).all()


def _only_finite_detections(expected):
    def check(out):
        n = int(out["num_detections"][0])
        assert n == expected
        assert np.isfinite(out["boxes"][0, :n]).all() and np.isfinite(out["scores"][0]).all()

    return check


def _no_positive_anchor_and_finite(targets):
    assert np.isfinite(targets).all()
    assert not (targets[..., 4] >= 0).any()


def _some_positive_anchor_and_finite(targets):
    assert np.isfinite(targets).all()
    assert (targets[..., 4] >= 0).sum() > 0


def _finite_zero_loss(loss):
    assert np.isfinite(loss).all() and (loss == 0).all()


def _finite_loss_first_zero(loss):
    assert np.isfinite(loss).all() and loss[0] == 0 and loss[1] > 0


# ------------------------------------------------------------------------------- cases

CASES = [
    # --- RetinaNet call / predict
    Case("model-rank-3", lambda c: _model()(np.zeros((64, 64, 3))), ValueError, "images .*rank 4"),
    Case(
        "model-predict-rank-5",
        lambda c: _model().predict(np.zeros((1, 1, 64, 64, 3)), verbose=0),
        ValueError,
        "images .*rank 4",
    ),
    Case("model-1-channel", lambda c: _model()(_images(c=1)), ValueError, "images .*3 channels"),
    Case(
        "model-predict-4-channels",
        lambda c: _model().predict(_images(c=4), verbose=0),
        ValueError,
        "images .*3 channels",
    ),
    Case("model-empty-batch", lambda c: _model()(_images(n=0)), ValueError, "images .*empty batch"),
    Case(
        "model-predict-empty-batch",
        lambda c: _model().predict(_images(n=0), verbose=0),
        ValueError,
        "images .*empty batch",
    ),
    Case("model-zero-height", lambda c: _model()(_images(h=0)), ValueError, "images .*height"),
    Case(
        "model-predict-zero-width",
        lambda c: _model().predict(_images(w=0), verbose=0),
        ValueError,
        "images .*width",
    ),
    Case("model-nan-image", lambda c: _model()(_images(bad=NAN)), ValueError, "images contain NaN"),
    Case("model-inf-image", lambda c: _model()(_images(bad=-INF)), ValueError, "images contain"),
    Case(
        "model-nan-eager-tensor",
        lambda c: _model()(ops.convert_to_tensor(_images(bad=NAN))),
        ValueError,
        "images contain NaN",
    ),
    Case(
        "model-predict-nan-image",
        lambda c: _model().predict(_images(n=3, bad=NAN), verbose=0),
        ValueError,
        "images contain NaN",
    ),
    Case(
        "detector-predict-inf-image",
        lambda c: _model().make_detector().predict(_images(bad=INF), verbose=0),
        ValueError,
        "images contain NaN",
    ),
    Case(
        "model-nan-image-in-compiled-graph-is-not-checked",
        lambda c: _model_in_compiled_graph(_images(bad=NAN)),
        check=_raises_nothing_and_has_shape((1, A64, 6)),
    ),
    # --- DecodePredictions
    Case("decoder-all-nan-scores", lambda c: _decode(_logits(NAN)), check=_no_detections),
    Case(
        "decoder-some-nan-scores",
        lambda c: _decode(
            np.where(np.arange(A64)[None, :, None] < 3, 5.0, _logits(NAN)), nms_iou_threshold=1.0
        ),
        check=_only_finite_detections(2 * 3),  # the 3 finite anchors x 2 classes
    ),
    Case(
        "decoder-inf-box-deltas",
        lambda c: _decode(np.concatenate([np.full((1, A64, 4), INF), _logits(5.0)[..., 4:]], -1)),
        check=_no_detections,
    ),
    Case(
        "decoder-nan-box-deltas",
        lambda c: _decode(np.where(np.arange(6) < 4, NAN, _logits(5.0))),
        check=_no_detections,
    ),
    Case(
        "decoder-empty-batch",
        lambda c: _decode(_logits(n=0), max_detections=7),
        check=lambda out: [
            out["boxes"].shape == (0, 7, 4) or pytest.fail(str(out["boxes"].shape)),
            out["num_detections"].shape == (0,) or pytest.fail("num_detections"),
        ],
    ),
    Case(
        "decoder-nan-confidence-threshold",
        lambda c: DecodePredictions(confidence_threshold=NAN),
        ValueError,
        "confidence_threshold",
    ),
    Case(
        "decoder-confidence-threshold-above-1",
        lambda c: DecodePredictions(confidence_threshold=1.5),
        ValueError,
        "confidence_threshold",
    ),
    Case(
        "decoder-negative-iou-threshold",
        lambda c: DecodePredictions(nms_iou_threshold=-0.1),
        ValueError,
        "nms_iou_threshold",
    ),
    Case(
        "decoder-predictions-rank-2",
        lambda c: DecodePredictions(num_classes=2)(_images(), _logits()[0]),
        ValueError,
        "predictions must be",
    ),
    Case(
        "decoder-anchor-count-mismatch",
        lambda c: DecodePredictions(num_classes=2)(_images(h=128), _logits()),
        ValueError,
        f"predictions has {A64} anchors",
    ),
    Case(
        "decoder-batch-mismatch",
        lambda c: DecodePredictions(num_classes=2)(_images(n=2), _logits()),
        ValueError,
        "same batch size",
    ),
    # --- AnchorGenerator
    Case(
        "anchors-negative-height", lambda c: AnchorGenerator()(-64, 64), ValueError, "image_height"
    ),
    Case("anchors-zero-width", lambda c: AnchorGenerator()(64, 0), ValueError, "image_width"),
    Case("anchors-float-size", lambda c: AnchorGenerator()(64.5, 64), ValueError, "image_height"),
    Case(
        "anchors-count-negative-size",
        lambda c: AnchorGenerator().num_anchors(64, -8),
        ValueError,
        "image_width",
    ),
    Case(
        "anchors-nan-aspect-ratio",
        lambda c: AnchorGenerator(aspect_ratios=(1.0, NAN)),
        ValueError,
        "aspect_ratios",
    ),
    Case("anchors-negative-scale", lambda c: AnchorGenerator(scales=(-1.0,)), ValueError, "scales"),
    Case(
        "anchors-inf-area",
        lambda c: AnchorGenerator(areas=(INF, 1, 2, 3, 4)),
        ValueError,
        "areas",
    ),
    Case(
        "anchors-zero-stride",
        lambda c: AnchorGenerator(strides=(0, 16, 32, 64, 128)),
        ValueError,
        "strides",
    ),
    # --- BoxCoder
    Case(
        "boxcoder-encode-3-coordinates",
        lambda c: BoxCoder().encode(np.zeros((5, 3)), np.ones((5, 4))),
        ValueError,
        "boxes must be",
    ),
    Case(
        "boxcoder-decode-5-deltas",
        lambda c: BoxCoder().decode(np.zeros((5, 5)), np.ones((5, 4))),
        ValueError,
        "deltas must be",
    ),
    Case(
        "boxcoder-decode-anchors-rank-0",
        lambda c: BoxCoder().decode(np.zeros((5, 4)), np.float32(1.0)),
        ValueError,
        "anchors must be",
    ),
    Case(
        "boxcoder-nan-variance",
        lambda c: BoxCoder(variance=(0.1, NAN, 0.2, 0.2)),
        ValueError,
        "variance",
    ),
    Case(
        "boxcoder-negative-variance",
        lambda c: BoxCoder(variance=(0.1, 0.1, -0.2, 0.2)),
        ValueError,
        "variance",
    ),
    # --- combined_non_max_suppression
    Case("nms-negative-iou", lambda c: _nms(iou_threshold=-0.1), ValueError, "iou_threshold"),
    Case("nms-iou-above-1", lambda c: _nms(iou_threshold=1.5), ValueError, "iou_threshold"),
    Case("nms-nan-iou", lambda c: _nms(iou_threshold=NAN), ValueError, "iou_threshold"),
    Case(
        "nms-nan-score-threshold-selects-nothing",
        lambda c: _nms(score_threshold=NAN),
        check=lambda out: (out[3] == 0).all() or pytest.fail(f"valid {out[3]}"),
    ),
    Case(
        "nms-nan-scores-never-selected",
        lambda c: _nms(scores=np.where(np.arange(16).reshape(1, 8, 2) % 3 == 0, NAN, 0.5)),
        check=lambda out: [
            np.isfinite(out[1]).all() or pytest.fail(f"scores {out[1]}"),
            int(out[3][0]) == 10 or pytest.fail(f"valid {out[3]}"),  # 10 of 16 are finite
        ],
    ),
    Case("nms-boxes-rank-3", lambda c: _nms(boxes=np.zeros((1, 8, 4))), ValueError, "boxes must"),
    Case(
        "nms-scores-rank-2",
        lambda c: _nms(scores=np.zeros((8, 2))),
        ValueError,
        "scores must be 3-D",
    ),
    Case(
        "nms-5-coordinates",
        lambda c: _nms(boxes=np.zeros((1, 8, 1, 5))),
        ValueError,
        "4 coordinates",
    ),
    Case("nms-zero-total", lambda c: _nms(total=0), ValueError, "max_total_size"),
    Case("nms-negative-per-class", lambda c: _nms(per_class=-1), ValueError, "max_output_size"),
    Case(
        "nms-empty-batch",
        lambda c: _nms(boxes=np.zeros((0, 8, 1, 4)), scores=np.zeros((0, 8, 2))),
        check=lambda out: out[0].shape == (0, 10, 4) or pytest.fail(str(out[0].shape)),
    ),
    # --- LabelEncoder
    Case(
        "encoder-gt-boxes-rank-2",
        lambda c: LabelEncoder().encode((64, 64), np.zeros((3, 4)), np.zeros((1, 3))),
        ValueError,
        "gt_boxes must be",
    ),
    Case(
        "encoder-gt-classes-rank-3",
        lambda c: LabelEncoder().encode((64, 64), np.zeros((1, 3, 4)), np.zeros((1, 3, 1))),
        ValueError,
        "gt_classes must be",
    ),
    Case(
        "encoder-gt-count-mismatch",
        lambda c: LabelEncoder().encode((64, 64), np.zeros((1, 3, 4)), np.zeros((1, 2))),
        ValueError,
        "gt_classes must be",
    ),
    Case(
        "encoder-image-shape-one-value",
        lambda c: LabelEncoder().encode((64,), np.zeros((1, 1, 4)), np.zeros((1, 1))),
        ValueError,
        "image_shape",
    ),
    Case(
        "encoder-zero-image-height",
        lambda c: _encode([[5, 5, 20, 20]], [[0]], image_shape=(0, 64)),
        ValueError,
        "image_height",
    ),
    Case(
        "encoder-nan-gt-box",
        lambda c: _encode([[5, NAN, 20, 20]], [[0]]),
        ValueError,
        r"gt_boxes\[0, 0\] has a NaN",
    ),
    Case(
        "encoder-inf-gt-box",
        lambda c: _encode([[5, 5, INF, 20]], [[0]]),
        ValueError,
        r"gt_boxes\[0, 0\] has a NaN or Inf",
    ),
    Case(
        "encoder-inverted-gt-box",
        lambda c: _encode([[10, 10, 40, 40], [40, 40, 20, 20]], [[0, 1]]),
        ValueError,
        r"gt_boxes\[0, 1\] .* inverted",
    ),
    Case(
        "encoder-nan-padding-row-is-ignored",
        lambda c: _encode([[10, 10, 40, 40], [NAN, NAN, NAN, NAN]], [[0, -1]]),
        check=_some_positive_anchor_and_finite,
    ),
    Case(
        "encoder-nan-gt-box-in-compiled-graph-is-padding",
        lambda c: _np(
            _compiled(lambda b, k: LabelEncoder().encode((64, 64), b, k))(
                ops.convert_to_tensor(np.array([[[NAN, 1, 2, 3], [10, 10, 40, 40]]], "float32")),
                ops.convert_to_tensor(np.array([[0, 1]], "int32")),
            )
        ),
        check=lambda t: [
            np.isfinite(t).all() or pytest.fail("non-finite targets"),
            ((t[..., 4] == 1).sum() > 0 and (t[..., 4] == 0).sum() == 0) or pytest.fail("match"),
        ],
    ),
    Case(
        "encoder-empty-batch",
        lambda c: _encode(np.zeros((0, 2, 4)), np.zeros((0, 2))),
        check=lambda t: t.shape == (0, A64, 5) or pytest.fail(str(t.shape)),
    ),
    Case(
        "encoder-gt-box-outside-image-matches-nothing",
        lambda c: _encode([[200, 200, 260, 260]], [[0]]),
        check=_no_positive_anchor_and_finite,
    ),
    Case(
        "encoder-gt-box-partly-outside-image-still-matches",
        lambda c: _encode([[-10, -10, 30, 30]], [[0]]),
        check=_some_positive_anchor_and_finite,
    ),
    Case(
        "encoder-zero-area-gt-box-matches-nothing",
        lambda c: _encode([[20, 20, 20, 50]], [[0]]),
        check=_no_positive_anchor_and_finite,
    ),
    Case(
        "encoder-negative-threshold",
        lambda c: LabelEncoder(negative_threshold=-0.1),
        ValueError,
        "negative_threshold",
    ),
    Case(
        "encoder-nan-threshold",
        lambda c: LabelEncoder(positive_threshold=NAN),
        ValueError,
        "positive_threshold",
    ),
    # --- RetinaNetLoss (and images without objects through LabelEncoder)
    Case(
        "loss-image-without-objects-padding-rows",
        lambda c: _loss_of([[0, 0, 0, 0]], [[-1]]),
        check=_finite_zero_loss,
    ),
    Case(
        "loss-batch-without-any-box",
        lambda c: _loss_of(np.zeros((2, 0, 4)), np.zeros((2, 0))),
        check=_finite_zero_loss,
    ),
    Case(
        "loss-one-image-without-objects-one-with",
        lambda c: _loss_of([[[0, 0, 0, 0]], [[8, 8, 40, 40]]], [[-1], [1]]),
        check=_finite_loss_first_zero,
    ),
    Case(
        "loss-y-true-4-values",
        lambda c: _loss(y_true=np.zeros((1, A64, 4))),
        ValueError,
        r"y_true must be \[batch, anchors, 5\]",
    ),
    Case("loss-y-pred-rank-2", lambda c: _loss(y_pred=np.zeros((A64, 6))), ValueError, "y_pred"),
    Case(
        "loss-anchor-count-mismatch",
        lambda c: _loss(y_pred=np.zeros((1, A64 + 9, 6))),
        ValueError,
        "anchor count",
    ),
    Case(
        "loss-class-id-out-of-range",
        lambda c: _loss(
            y_true=np.concatenate([np.zeros((1, A64, 4)), np.full((1, A64, 1), 2)], -1)
        ),
        ValueError,
        "class ids must be < num_classes=2",
    ),
    Case(
        "loss-nan-prediction-gives-nan-loss",
        lambda c: _loss(
            y_true=_encode([[8, 8, 40, 40]], [[0]]), y_pred=np.full((1, A64, 6), NAN, "float32")
        ),
        check=lambda loss: np.isnan(loss) or pytest.fail(f"loss {loss}"),
    ),
    Case("loss-nan-gamma", lambda c: RetinaNetLoss(2, gamma=NAN), ValueError, "gamma"),
    Case("loss-nan-alpha", lambda c: RetinaNetLoss(2, alpha=NAN), ValueError, "alpha"),
    # --- COCO loading
    Case(
        "coco-no-images-field",
        lambda c: load_coco(_coco(c.tmp_path, lambda d: d.pop("images"))),
        ValueError,
        "missing required field 'images'",
    ),
    Case(
        "coco-annotation-without-bbox",
        lambda c: load_coco(_coco(c.tmp_path, lambda d: d["annotations"][0].pop("bbox"))),
        ValueError,
        "annotation 1 is missing field 'bbox'",
    ),
    Case(
        "coco-image-without-file-name",
        lambda c: load_coco(_coco(c.tmp_path, lambda d: d["images"][0].pop("file_name"))),
        ValueError,
        "image 1 is missing field 'file_name'",
    ),
    Case(
        "coco-unknown-category-id",
        lambda c: load_coco(_coco(c.tmp_path, lambda d: d["annotations"][0].update(category_id=9))),
        ValueError,
        "unknown category_id 9",
    ),
    Case(
        "coco-nan-bbox",
        lambda c: load_coco(_coco(c.tmp_path, lambda d: _set_bbox_x(d, NAN))),
        ValueError,
        "field 'bbox' must be",
    ),
    Case(
        "coco-negative-image-height",
        lambda c: load_coco(_coco(c.tmp_path, lambda d: d["images"][0].update(height=-40))),
        ValueError,
        "field 'height' must be a positive integer",
    ),
    Case(
        "coco-zero-image-width",
        lambda c: load_coco(_coco(c.tmp_path, lambda d: d["images"][0].update(width=0))),
        ValueError,
        "field 'width' must be a positive integer",
    ),
    Case(
        "coco-boxes-outside-image-are-clipped-or-dropped",
        # Image 50 x 40: one box is clipped, two lie outside and are dropped.
        lambda c: load_coco(
            _coco(
                c.tmp_path,
                lambda d: _add_annotations(d, [40, 30, 20, 20], [60, 5, 5, 5], [-5, -5, 5, 5]),
            )
        )[0]["boxes"],
        check=lambda boxes: np.testing.assert_allclose(boxes, [[5, 5, 15, 15], [40, 30, 50, 40]]),
    ),
    Case(
        "coco-image-without-objects-is-kept",
        lambda c: load_coco(_coco(c.tmp_path, lambda d: d["annotations"].clear()))[0],
        check=lambda rec: rec["boxes"].shape == (0, 4) or pytest.fail(str(rec["boxes"].shape)),
    ),
    Case(
        "coco-invalid-json",
        lambda c: load_coco(_text_file(c.tmp_path / "broken.json", "{")),
        ValueError,
        "broken.json is not valid JSON",
    ),
    Case(
        "coco-missing-file",
        lambda c: load_coco(c.tmp_path / "nope.json"),
        FileNotFoundError,
        "nope.json",
    ),
    # --- image files and preprocessing
    Case(
        "load-corrupt-jpg",
        lambda c: load_image(_corrupt(c.tmp_path / "bad.jpg")),
        ValueError,
        "cannot read image file .*bad.jpg",
    ),
    Case(
        "load-corrupt-png",
        lambda c: load_image(_corrupt(c.tmp_path / "bad.png")),
        ValueError,
        "cannot read image file .*bad.png",
    ),
    Case(
        "load-truncated-png",
        lambda c: load_image(_truncated_png(c.tmp_path)),
        ValueError,
        "cannot read image file .*cut.png",
    ),
    Case(
        "load-missing-file",
        lambda c: load_image(c.tmp_path / "missing.png"),
        FileNotFoundError,
        "image file not found: .*missing.png",
    ),
    Case(
        "preprocess-zero-height-image",
        lambda c: preprocess_for_inference(np.zeros((0, 50, 3), "uint8")),
        ValueError,
        "image has an empty side",
    ),
    Case(
        "preprocess-2-channels",
        lambda c: preprocess_for_inference(np.zeros((40, 50, 2), "uint8")),
        ValueError,
        r"image must be \[H, W, 3\]",
    ),
    Case(
        "preprocess-nan-image",
        lambda c: preprocess_for_inference(_images(h=40, w=50, bad=NAN)[0]),
        ValueError,
        "image contains NaN",
    ),
    Case(
        "preprocess-negative-min-side",
        lambda c: resize_and_pad(np.zeros((40, 50, 3)), min_side=-8),
        ValueError,
        "min_side",
    ),
    Case(
        "preprocess-nan-max-side",
        lambda c: resize_and_pad(np.zeros((40, 50, 3)), max_side=NAN),
        ValueError,
        "max_side",
    ),
    Case(
        "preprocess-zero-stride",
        lambda c: resize_and_pad(np.zeros((40, 50, 3)), stride=0),
        ValueError,
        "stride",
    ),
    Case(
        "preprocess-negative-image-size",
        lambda c: resize_and_pad(np.zeros((40, 50, 3)), image_size=(64, -64)),
        ValueError,
        r"image_size\[1\]",
    ),
    Case(
        "preprocess-jitter-zero",
        lambda c: resize_and_pad(np.zeros((40, 50, 3)), jitter=(0, 10)),
        ValueError,
        "jitter",
    ),
    Case(
        "preprocess-boxes-5-columns",
        lambda c: preprocess_for_training(
            np.zeros((40, 50, 3)), np.zeros((4, 5)), rng=np.random.default_rng(0)
        ),
        ValueError,
        r"boxes must be \[n, 4\]",
    ),
    Case(
        "preprocess-nan-boxes",
        lambda c: preprocess_for_training(
            np.zeros((40, 50, 3)), [[1, 1, NAN, 5]], rng=np.random.default_rng(0)
        ),
        ValueError,
        "boxes contain NaN",
    ),
    Case(
        "preprocess-inverted-boxes",
        lambda c: preprocess_for_training(
            np.zeros((40, 50, 3)), [[1, 1, 5, 5], [30, 20, 10, 8]], rng=np.random.default_rng(0)
        ),
        ValueError,
        r"boxes\[1\] .* inverted",
    ),
    # --- DetectionDataset / InferenceBatches
    Case("dataset-no-records", lambda c: DetectionDataset([]), ValueError, "at least one record"),
    Case(
        "dataset-zero-batch-size",
        lambda c: DetectionDataset([_record()], batch_size=0),
        ValueError,
        "batch_size",
    ),
    Case(
        "dataset-nan-min-side",
        lambda c: InferenceBatches([_record()], min_side=NAN),
        ValueError,
        "min_side",
    ),
    Case(
        "dataset-zero-image-size",
        lambda c: DetectionDataset([_record()], image_size=(0, 64)),
        ValueError,
        r"image_size\[0\]",
    ),
    Case(
        "dataset-flip-probability-above-1",
        lambda c: DetectionDataset([_record()], flip_probability=2.0),
        ValueError,
        "flip_probability",
    ),
    Case(
        "dataset-inverted-boxes",
        lambda c: DetectionDataset([_record(), _record(boxes=[[20, 20, 5, 5]])]),
        ValueError,
        r"record 1 'boxes'\[0\] .* inverted",
    ),
    Case(
        "dataset-nan-boxes",
        lambda c: DetectionDataset([_record(boxes=[[NAN, 2, 5, 5]])]),
        ValueError,
        "record 0 'boxes' contain NaN",
    ),
    Case(
        "dataset-negative-class",
        lambda c: DetectionDataset([_record(classes=[-3])]),
        ValueError,
        "record 0: 'classes' must be >= 0",
    ),
    Case(
        "dataset-fractional-class",
        lambda c: DetectionDataset([_record(classes=[0.5])]),
        ValueError,
        r"record 0: 'classes' must be \[n\] integer",
    ),
    Case(
        "dataset-boxes-and-classes-differ",
        lambda c: DetectionDataset([_record(classes=[0, 1])]),
        ValueError,
        "record 0: 1 boxes but 2 classes",
    ),
    Case(
        "dataset-corrupt-image-file",
        lambda c: _batch(
            [{"path": str(_corrupt(c.tmp_path / "x.jpg")), "boxes": [], "classes": []}]
        ),
        ValueError,
        "record 0: cannot read image file .*x.jpg",
    ),
    Case(
        "dataset-missing-image-file",
        lambda c: _batch([{"path": str(c.tmp_path / "gone.png"), "boxes": [], "classes": []}]),
        FileNotFoundError,
        "record 0: image file not found",
    ),
    Case(
        "dataset-nan-pixels",
        lambda c: _batch([_record(image=_images(h=40, w=50, bad=NAN)[0])]),
        ValueError,
        "record 0: image contains NaN",
    ),
    Case(
        "inference-zero-width-image",
        lambda c: InferenceBatches([_record(image=np.zeros((40, 0, 3), "uint8"))])[0],
        ValueError,
        "record 0: image has an empty side",
    ),
    Case(
        "dataset-boxes-outside-image-are-clipped-or-dropped",
        # Image 50 x 40: the first box is clipped; the others are outside or have no width.
        lambda c: _batch(
            [_record(boxes=[[-10, 30, 20, 60], [60, 0, 70, 10], [5, 5, 5, 30]], classes=[1, 0, 0])]
        )[1],
        check=lambda y: [
            np.testing.assert_allclose(
                y["boxes"][0], [[0, 30, 20, 40], [0, 0, 0, 0], [0, 0, 0, 0]]
            ),
            np.testing.assert_array_equal(y["classes"][0], [1, -1, -1]),
        ],
    ),
    Case(
        "dataset-image-without-objects-gives-padding-rows",
        lambda c: _batch([_record(), _record(boxes=[], classes=[])])[1],
        check=lambda y: np.testing.assert_array_equal(y["classes"][:, 0], [0, -1]),
    ),
    # --- command line: exit status 2 and one line on stderr
    Case(
        "cli-train-coco-without-images",
        lambda c: _cli_train(c, _coco(c.tmp_path, lambda d: d.pop("images"))),
        check=_cli_error("--train-annotations"),
    ),
    Case(
        "cli-train-coco-annotation-without-bbox",
        lambda c: _cli_train(c, _coco(c.tmp_path, lambda d: d["annotations"][0].pop("bbox"))),
        check=_cli_error("'bbox'"),
    ),
    Case(
        "cli-train-image-file-missing",
        lambda c: _cli_train(c, _coco(c.tmp_path)),
        check=_cli_error("missing from"),
    ),
    Case(
        "cli-evaluate-unknown-category",
        lambda c: _cli(
            c,
            [
                "evaluate",
                "--model",
                _corrupt(c.tmp_path / "m.keras"),
                "--annotations",
                _coco(c.tmp_path, lambda d: d["annotations"][0].update(category_id=5)),
                "--images",
                c.tmp_path,
            ],
        ),
        check=_cli_error("unknown category_id 5"),
    ),
    Case(
        "cli-predict-corrupt-image",
        lambda c: _cli(
            c,
            [
                "predict",
                "--model",
                _corrupt(c.tmp_path / "m.keras"),
                "--images",
                _corrupt(c.tmp_path / "photo.jpg"),
                "--output",
                c.tmp_path / "out",
            ],
        ),
        check=_cli_error("cannot read image file"),
    ),
    Case(
        "cli-predict-corrupt-model-file",
        lambda c: _cli(
            c,
            [
                "predict",
                "--model",
                _corrupt(c.tmp_path / "m.keras"),
                "--images",
                _write_png(c.tmp_path / "photo.png"),
                "--output",
                c.tmp_path / "out",
            ],
        ),
        check=_cli_error("--model"),
    ),
    Case(
        "cli-negative-image-size",
        lambda c: _cli(
            c, ["train", "--train-annotations", "a", "--train-images", ".", "--image-size", "-5"]
        ),
        check=_cli_argparse_error("--image-size"),
    ),
    Case(
        "cli-nan-score-threshold",
        lambda c: _cli(c, ["predict", "--model", "m", "--images", ".", "--score-threshold", "nan"]),
        check=_cli_argparse_error("--score-threshold"),
    ),
]


assert len({case.id for case in CASES}) == len(CASES), "case ids must be unique"
assert all((case.error is None) != (case.check is None) for case in CASES)


@pytest.mark.parametrize(
    "case",
    [pytest.param(case, marks=case.marks) for case in CASES],
    ids=[case.id for case in CASES],
)
def test_bad_input(case, tmp_path, capsys):
    ctx = types.SimpleNamespace(tmp_path=tmp_path, capsys=capsys)
    if case.error is not None:
        with pytest.raises(case.error, match=case.match):
            case.run(ctx)
    else:
        case.check(case.run(ctx))
