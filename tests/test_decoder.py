import keras
import numpy as np
import pytest
from conftest import tiny_backbone
from keras import ops

from keras_retinanet import AnchorGenerator, BoxCoder, DecodePredictions, RetinaNet
from keras_retinanet.nms.reference import combined_non_max_suppression_reference


def numpy_decode(images_shape, predictions, **kw):
    anchors = ops.convert_to_numpy(AnchorGenerator()(*images_shape[1:3]))
    boxes = ops.convert_to_numpy(BoxCoder().decode(predictions[..., :4], anchors))
    scores = 1.0 / (1.0 + np.exp(-predictions[..., 4:].astype("float64")))
    return combined_non_max_suppression_reference(
        boxes[:, :, None, :],
        scores.astype("float32"),
        kw.get("per_class", 100),
        kw.get("total", 100),
        0.5,
        0.05,
        clip_boxes=False,
    )


def random_predictions(rng, batch, h, w, num_classes):
    a = AnchorGenerator().num_anchors(h, w)
    preds = np.concatenate(
        [rng.normal(0, 0.5, (batch, a, 4)), rng.normal(-4.0, 1.5, (batch, a, num_classes))], -1
    )
    return preds.astype("float32")


def test_decoder_matches_numpy_decode_and_reference_nms(rng):
    images = np.zeros((2, 128, 160, 3), "float32")
    preds = random_predictions(rng, 2, 128, 160, 5)
    out = DecodePredictions(num_classes=5)(images, preds)
    boxes, scores, classes, valid = numpy_decode(images.shape, preds)
    np.testing.assert_array_equal(ops.convert_to_numpy(out["num_detections"]), valid)
    assert int(valid.min()) > 0
    np.testing.assert_array_equal(ops.convert_to_numpy(out["classes"]), classes.astype("int32"))
    np.testing.assert_allclose(ops.convert_to_numpy(out["scores"]), scores, atol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(out["boxes"]), boxes, atol=1e-3)


def test_detector_predict_returns_fixed_size_detections():
    model = RetinaNet(num_classes=3, backbone=tiny_backbone(), fpn_filters=8, head_convs=1)
    detector = model.make_detector(confidence_threshold=0.005, max_detections=20)
    # Two batches of one image: predict concatenates the fixed-size outputs of each batch.
    out = detector.predict(np.zeros((2, 64, 96, 3), "float32"), batch_size=1, verbose=0)
    assert out["boxes"].shape == (2, 20, 4) and out["scores"].shape == (2, 20)
    assert out["classes"].dtype == np.int32 and out["num_detections"].shape == (2,)
    # A fresh head predicts the 0.01 prior everywhere: all above 0.005, so 20 kept.
    assert (out["num_detections"] == 20).all()


def test_detector_round_trips_through_keras_file(tmp_path):
    model = RetinaNet(num_classes=2, backbone=tiny_backbone(), fpn_filters=8, head_convs=1)
    detector = model.make_detector(confidence_threshold=0.0, max_detections=7)
    x = np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype("float32")
    expected = {k: ops.convert_to_numpy(v) for k, v in detector(x).items()}
    detector.save(tmp_path / "detector.keras")
    loaded = keras.saving.load_model(tmp_path / "detector.keras")
    got = {k: ops.convert_to_numpy(v) for k, v in loaded(x).items()}
    assert loaded.decoder.max_detections == 7
    assert got["scores"].shape == (1, 7) and int(got["num_detections"][0]) == 7
    np.testing.assert_allclose(got["scores"], expected["scores"], atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"nms_iou_threshold": 1.5}, "nms_iou_threshold"),
        ({"max_detections": 0}, "max_detections"),
        ({"num_classes": 0}, "num_classes"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DecodePredictions(**kwargs)


def test_wrong_prediction_width_raises():
    with pytest.raises(ValueError, match="num_classes"):
        DecodePredictions(num_classes=3)(np.zeros((1, 64, 64, 3)), np.zeros((1, 774, 5)))
