import keras
import numpy as np
import pytest
from conftest import tiny_backbone
from keras import ops

from keras_retinanet import get_backbone, register_backbone, resnet50_backbone


def test_resnet50_returns_c3_c4_c5_at_strides_8_16_32():
    backbone = resnet50_backbone()
    c3, c4, c5 = backbone(np.zeros((1, 96, 160, 3), "float32"))
    assert tuple(ops.shape(c3)) == (1, 12, 20, 512)
    assert tuple(ops.shape(c4)) == (1, 6, 10, 1024)
    assert tuple(ops.shape(c5)) == (1, 3, 5, 2048)


def test_resnet50_loads_local_weights_file(tmp_path):
    keras.utils.set_random_seed(1)
    resnet = keras.applications.ResNet50(include_top=False, weights=None)
    path = tmp_path / "resnet50_notop.weights.h5"
    resnet.save_weights(path)
    backbone = resnet50_backbone(weights=path)
    expected = resnet.get_layer("conv5_block3_out").output
    x = np.random.default_rng(0).uniform(-1, 1, (1, 64, 64, 3)).astype("float32")
    want = keras.Model(resnet.inputs, expected)(x)
    np.testing.assert_allclose(
        ops.convert_to_numpy(backbone(x)[2]), ops.convert_to_numpy(want), atol=1e-5
    )


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="weights"):
        resnet50_backbone(weights=tmp_path / "nope.h5")


def test_user_model_must_return_three_maps():
    inputs = keras.Input((None, None, 3))
    two = keras.Model(inputs, [keras.layers.Conv2D(4, 1)(inputs)] * 2)
    with pytest.raises(ValueError, match="3 feature maps"):
        get_backbone(two)
    assert get_backbone(tiny_backbone()).name == "tiny_backbone"


def test_registered_backbone_is_built_by_name():
    register_backbone("tiny_for_test", lambda *, weights, input_shape: tiny_backbone())
    assert get_backbone("tiny_for_test").name == "tiny_backbone"
