import keras
import numpy as np
import pytest
from conftest import tiny_backbone
from keras import ops

from keras_retinanet import AnchorGenerator, RetinaNet


@pytest.fixture(scope="module")
def small_model():
    """A compact-backbone model: the output layout does not depend on the backbone."""
    return RetinaNet(num_classes=3, backbone="compact", fpn_filters=16, head_convs=1)


def _check_output(model, batch, h, w):
    x = np.random.default_rng(0).uniform(-100, 100, (batch, h, w, 3)).astype("float32")
    out = model(x)
    assert tuple(ops.shape(out)) == (batch, AnchorGenerator().num_anchors(h, w), 4 + 3)
    assert str(ops.convert_to_numpy(out).dtype) == "float32"
    assert model.compute_output_shape((batch, h, w, 3)) == tuple(ops.shape(out))


def test_resnet50_output_shape_is_batch_anchors_4_plus_classes():
    # The default model end to end, on a batch of odd, non-square images (ResNet50's padded
    # stride-2 stages must round up like the anchor grid does).
    model = RetinaNet(num_classes=3)
    _check_output(model, 2, 65, 97)


@pytest.mark.parametrize("batch, h, w", [(1, 64, 64), (3, 64, 64), (1, 64, 96), (1, 65, 97)])
def test_output_shape_is_batch_anchors_4_plus_classes(small_model, batch, h, w):
    _check_output(small_model, batch, h, w)


def test_box_outputs_come_first_and_class_logits_start_at_the_prior(small_model):
    out = ops.convert_to_numpy(small_model(np.zeros((1, 64, 64, 3), "float32")))
    # With zero input every ReLU feature is a bias; class logits sit near the prior bias.
    np.testing.assert_allclose(out[..., 4:].mean(), -4.5951, atol=0.05)
    assert np.abs(out[..., :4].mean()) < 0.05


def test_predict_works_with_variable_sizes(small_model):
    out = small_model.predict(np.zeros((2, 96, 160, 3), "float32"), verbose=0)
    assert out.shape == (2, AnchorGenerator().num_anchors(96, 160), 7)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_outputs_are_float32_and_close_to_float32_model(policy):
    x = np.random.default_rng(1).uniform(-50, 50, (1, 64, 64, 3)).astype("float32")
    keras.utils.set_random_seed(3)
    reference = RetinaNet(num_classes=2, backbone="compact", fpn_filters=16, head_convs=1)
    reference(x)
    # Larger head weights than the initial ones, so that the outputs depend on the features.
    rng = np.random.default_rng(2)
    for head in (reference.cls_head, reference.box_head):
        head.set_weights(
            [w + rng.normal(0, 0.1, w.shape).astype("float32") for w in head.get_weights()]
        )
    expected = ops.convert_to_numpy(reference(x))
    assert expected[..., 4:].std() > 0.05 and expected[..., :4].std() > 0.05  # ~0.15
    keras.config.set_dtype_policy(policy)
    model = RetinaNet(num_classes=2, backbone="compact", fpn_filters=16, head_convs=1)
    model(x)
    dtype = policy.split("_")[1]
    assert model.cls_head.compute_dtype == dtype
    model.set_weights(reference.get_weights())
    got = ops.convert_to_numpy(model(x))
    assert got.dtype == np.float32 and np.isfinite(got).all()
    # bfloat16 keeps ~3 significant digits, float16 ~4; outputs are O(1-5) and differ by at
    # most 0.031 (bfloat16) and 0.004 (float16) on every backend.
    np.testing.assert_allclose(got, expected, atol={"float16": 0.02, "bfloat16": 0.08}[dtype])
    assert not np.array_equal(got, expected)  # the model really computed in low precision


def test_custom_backbone_plugs_in():
    model = RetinaNet(num_classes=5, backbone=tiny_backbone(), fpn_filters=16, head_convs=2)
    out = model(np.zeros((2, 64, 64, 3), "float32"))
    assert tuple(ops.shape(out)) == (2, AnchorGenerator().num_anchors(64, 64), 9)


def test_custom_anchor_generator_sizes_the_heads():
    gen = AnchorGenerator(aspect_ratios=(1.0,), scales=(1.0, 1.5))
    model = RetinaNet(num_classes=2, backbone=tiny_backbone(), anchor_generator=gen, fpn_filters=8)
    out = model(np.zeros((1, 64, 64, 3), "float32"))
    assert tuple(ops.shape(out)) == (1, gen.num_anchors(64, 64), 6)


@pytest.mark.parametrize(
    "shape, match",
    [((64, 64, 3), "rank 4"), ((1, 64, 64, 1), "3 channels"), ((1, 64, 64, 4), "3 channels")],
)
def test_bad_image_shapes_raise_value_error(shape, match):
    model = RetinaNet(num_classes=2, backbone=tiny_backbone(), fpn_filters=8)
    with pytest.raises(ValueError, match=match):
        model(np.zeros(shape, "float32"))


@pytest.mark.parametrize("num_classes", [0, -1, 2.5])
def test_bad_num_classes_raise(num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        RetinaNet(num_classes=num_classes, backbone=tiny_backbone())


def test_unknown_backbone_name_raises():
    with pytest.raises(ValueError, match="backbone"):
        RetinaNet(num_classes=2, backbone="vgg1")
