"""``data_format="channels_first"`` end to end: same weights, same numbers as channels_last."""

import keras
import numpy as np
import pytest

from keras_retinanet import DecodePredictions, FeaturePyramid, PredictionHead, RetinaNet
from keras_retinanet.layout import standardize_data_format

# Convolutions in NCHW and NHWC sum in different orders: float32 round-off only.
RTOL, ATOL = 1e-4, 1e-4


def _nchw(x):
    return np.transpose(x, (0, 3, 1, 2))


def _model(data_format, build=True):
    """A small compact-backbone RetinaNet (the backbone is built from its name, so the layout
    applies to it too)."""
    keras.utils.set_random_seed(7)
    model = RetinaNet(
        num_classes=3, backbone="compact", fpn_filters=16, head_convs=1, data_format=data_format
    )
    if build:
        model.build(
            (None, None, None, 3) if data_format == "channels_last" else (None, 3, None, None)
        )
    return model


def _pair():
    """A channels_last and a channels_first RetinaNet holding the same weights."""
    last, first = _model("channels_last"), _model("channels_first")
    first.set_weights(last.get_weights())
    return last, first


# Non-square images everywhere: a swapped height and width cannot go unnoticed.
def _images(shape=(1, 64, 96, 3), seed=0):
    return np.random.default_rng(seed).normal(0, 50, shape).astype("float32")


def _perturb_heads(model, seed=1):
    """Larger head weights, so that outputs differ clearly between anchors."""
    rng = np.random.default_rng(seed)
    for head in (model.cls_head, model.box_head):
        head.set_weights(
            [w + rng.normal(0, 0.05, w.shape).astype("float32") for w in head.get_weights()]
        )


def test_channels_first_model_matches_channels_last():
    # ResNet50 in both layouts: test_channels_first_backbone_alone_matches_channels_last.
    last, first = _pair()
    _perturb_heads(last)
    first.set_weights(last.get_weights())
    x = _images()
    expected = keras.ops.convert_to_numpy(last(x))
    actual = keras.ops.convert_to_numpy(first(_nchw(x)))
    assert actual.shape == expected.shape == (1, last.anchor_generator.num_anchors(64, 96), 7)
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL)


def test_channels_first_layers_match_channels_last():
    rng = np.random.default_rng(3)
    feats = [
        rng.normal(size=(1, s, s + 2, c)).astype("float32") for s, c in ((8, 4), (4, 6), (2, 8))
    ]
    keras.utils.set_random_seed(0)
    fpn_last = FeaturePyramid(filters=5, data_format="channels_last")
    fpn_first = FeaturePyramid(filters=5, data_format="channels_first")
    out_last = fpn_last(feats)
    fpn_first([_nchw(f) for f in feats])
    fpn_first.set_weights(fpn_last.get_weights())
    out_first = fpn_first([_nchw(f) for f in feats])
    for a, b in zip(out_first, out_last, strict=True):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(a),
            _nchw(keras.ops.convert_to_numpy(b)),
            rtol=RTOL,
            atol=1e-5,
        )
    assert fpn_first.compute_output_shape([_nchw(f).shape for f in feats])[3] == (1, 5, 1, 2)

    head_last = PredictionHead(
        output_filters=6, num_convs=2, filters=4, data_format="channels_last"
    )
    head_first = PredictionHead(
        output_filters=6, num_convs=2, filters=4, data_format="channels_first"
    )
    y_last = keras.ops.convert_to_numpy(head_last(feats[0]))
    head_first(_nchw(feats[0]))
    head_first.set_weights(head_last.get_weights())
    y_first = keras.ops.convert_to_numpy(head_first(_nchw(feats[0])))
    np.testing.assert_allclose(y_first, _nchw(y_last), rtol=RTOL, atol=1e-6)
    assert head_first.compute_output_shape((1, 4, 8, 10)) == (1, 6, 8, 10)


def test_channels_first_targets_and_detections_equal_channels_last():
    # Label encoding needs no weights; the detector builds ``first`` on its first call.
    last, first = _model("channels_last", build=False), _model("channels_first", build=False)
    x = _images()
    y = {
        "boxes": np.array([[[4, 8, 40, 30], [50, 20, 90, 60]]], "float32"),
        "classes": np.array([[0, 2]], "float32"),
    }
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(first.encode_targets(_nchw(x), y)),
        keras.ops.convert_to_numpy(last.encode_targets(x, y)),
    )
    # The decoder only reads the image size: identical predictions give identical detections.
    predictions = np.random.default_rng(4).normal(
        0, 2, (1, last.anchor_generator.num_anchors(64, 96), 7)
    )
    predictions = predictions.astype("float32")
    kwargs = dict(num_classes=3, confidence_threshold=0.5, max_detections=20)
    expected = DecodePredictions(**kwargs, data_format="channels_last")(x, predictions)
    actual = DecodePredictions(**kwargs, data_format="channels_first")(_nchw(x), predictions)
    assert int(keras.ops.convert_to_numpy(expected["num_detections"])[0]) > 0
    for key in expected:
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(actual[key]), keras.ops.convert_to_numpy(expected[key])
        )
    detector = first.make_detector()
    assert detector.decoder.data_format == "channels_first"
    out = detector(_nchw(x))
    assert tuple(out["boxes"].shape) == (1, 100, 4)


def test_weights_move_between_layouts_through_files(tmp_path):
    last = _model("channels_last")
    x = _images()
    path = str(tmp_path / "last.weights.h5")
    last.save_weights(path)
    keras.utils.set_random_seed(99)  # different initial weights, replaced by the file's
    first = RetinaNet(
        num_classes=3,
        backbone="compact",
        fpn_filters=16,
        head_convs=1,
        data_format="channels_first",
    )
    first.build((None, 3, None, None))
    first.load_weights(path)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(first(_nchw(x))),
        keras.ops.convert_to_numpy(last(x)),
        rtol=RTOL,
        atol=ATOL,
    )
    # A .keras file keeps the layout.
    keras_path = str(tmp_path / "first.keras")
    first.save(keras_path)
    restored = keras.saving.load_model(keras_path)
    assert restored.data_format == "channels_first"
    assert restored.get_config()["data_format"] == "channels_first"
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(restored(_nchw(x))),
        keras.ops.convert_to_numpy(first(_nchw(x))),
        rtol=0,
        atol=1e-6,
    )


def test_channels_first_model_trains():
    first = _model("channels_first")
    first.compile(optimizer=keras.optimizers.SGD(0.01))
    x = _nchw(_images((2, 64, 64, 3)))
    y = {
        "boxes": np.array([[[4, 8, 40, 30]], [[10, 10, 50, 50]]], "float32"),
        "classes": np.array([[0], [1]], "float32"),
    }
    losses = [float(first.train_on_batch(x, y)) for _ in range(3)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_bad_data_format_and_layout_mismatch_are_value_errors():
    with pytest.raises(ValueError, match="data_format"):
        RetinaNet(num_classes=2, backbone="compact", data_format="NCHW")
    with pytest.raises(ValueError, match="data_format"):
        standardize_data_format("channels_middle")
    first = _model("channels_first")
    with pytest.raises(ValueError, match="channels_first"):
        first(_images())  # NHWC images given to an NCHW model


@pytest.mark.parametrize("backbone", ["compact", "resnet50"])
def test_channels_first_backbone_alone_matches_channels_last(backbone):
    # A named backbone runs outside RetinaNet too (on TensorFlow without a GPU its NCHW
    # convolutions are computed in NHWC, whose CPU kernels are the only ones TensorFlow has).
    from keras_retinanet.backbone import get_backbone

    last = get_backbone(backbone, data_format="channels_last")
    first = get_backbone(backbone, data_format="channels_first")
    first.set_weights(last.get_weights())
    x = _images()
    for a, b in zip(first(_nchw(x)), last(x), strict=True):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(a),
            _nchw(keras.ops.convert_to_numpy(b)),
            rtol=RTOL,
            atol=ATOL,
        )
