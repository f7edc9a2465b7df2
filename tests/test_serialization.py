import keras
import numpy as np
from conftest import tiny_backbone
from keras import ops

from keras_retinanet import AnchorGenerator, RetinaNet


def _round_trip(model, tmp_path, x):
    expected = ops.convert_to_numpy(model(x))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, RetinaNet)
    np.testing.assert_allclose(ops.convert_to_numpy(loaded(x)), expected, atol=1e-6)
    return loaded


def test_keras_file_round_trip_with_custom_backbone_and_anchors(tmp_path):
    gen = AnchorGenerator(aspect_ratios=(0.5, 1.0), scales=(1.0,))
    model = RetinaNet(
        num_classes=4, backbone=tiny_backbone(), anchor_generator=gen, fpn_filters=16, head_convs=2
    )
    x = np.random.default_rng(0).normal(size=(2, 80, 48, 3)).astype("float32")
    loaded = _round_trip(model, tmp_path, x)
    assert loaded.num_classes == 4 and loaded.head_convs == 2 and loaded.fpn_filters == 16
    assert loaded.anchor_generator.get_config() == gen.get_config()


def test_keras_file_round_trip_named_backbone(tmp_path):
    # A backbone built from its name (with batch normalisation, and owned by the model).
    model = RetinaNet(num_classes=3, backbone="compact", fpn_filters=16, head_convs=1)
    x = np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype("float32")
    loaded = _round_trip(model, tmp_path, x)
    assert loaded.backbone.name == model.backbone.name == "compact_backbone"


def test_config_rebuilds_an_identical_architecture():
    model = RetinaNet(
        num_classes=2, backbone=tiny_backbone(), fpn_filters=8, prior_probability=0.05
    )
    model(np.zeros((1, 32, 32, 3), "float32"))
    clone = RetinaNet.from_config(model.get_config())
    clone(np.zeros((1, 32, 32, 3), "float32"))
    assert [w.shape for w in clone.weights] == [w.shape for w in model.weights]
    assert clone.prior_probability == 0.05


def test_weights_file_round_trip(tmp_path):
    model = RetinaNet(num_classes=2, backbone=tiny_backbone(), fpn_filters=8)
    x = np.ones((1, 32, 32, 3), "float32")
    expected = ops.convert_to_numpy(model(x))
    model.save_weights(tmp_path / "w.weights.h5")
    keras.utils.set_random_seed(99)
    other = RetinaNet(num_classes=2, backbone=tiny_backbone(), fpn_filters=8)
    other(x)
    other.load_weights(tmp_path / "w.weights.h5")
    np.testing.assert_allclose(ops.convert_to_numpy(other(x)), expected, atol=1e-6)
