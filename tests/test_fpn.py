import math

import keras
import numpy as np
import pytest
from keras import ops

from keras_retinanet import FeaturePyramid


def features(rng, h, w, channels=(16, 24, 32), batch=2):
    sizes = [(math.ceil(h / s), math.ceil(w / s)) for s in (8, 16, 32)]
    return [
        rng.standard_normal((batch, sh, sw, c)).astype("float32")
        for (sh, sw), c in zip(sizes, channels, strict=True)
    ]


@pytest.mark.parametrize("size", [(128, 128), (257, 321), (200, 72)])
def test_levels_have_ceil_sizes_for_any_input_size(rng, size):
    h, w = size
    outputs = FeaturePyramid(filters=8)(features(rng, h, w))
    got = [tuple(ops.shape(p)) for p in outputs]
    expected = [(2, math.ceil(h / s), math.ceil(w / s), 8) for s in (8, 16, 32, 64, 128)]
    assert got == expected


def test_p6_is_computed_from_c5_and_p7_from_relu_p6(rng):
    # C5 has `filters` channels so that a P6-from-P5 implementation would also build.
    c3, c4, c5 = features(rng, 64, 64, channels=(8, 8, 8))
    fpn = FeaturePyramid(filters=8)
    p3, p4, p5, p6, p7 = fpn([c3, c4, c5])
    from_c5 = ops.convert_to_numpy(fpn.conv_c6_3x3(c5))
    from_p5 = ops.convert_to_numpy(fpn.conv_c6_3x3(p5))
    np.testing.assert_allclose(ops.convert_to_numpy(p6), from_c5, atol=1e-6)
    assert np.abs(ops.convert_to_numpy(p6) - from_p5).max() > 1e-3
    expected_p7 = ops.convert_to_numpy(fpn.conv_c7_3x3(ops.relu(p6)))
    np.testing.assert_allclose(ops.convert_to_numpy(p7), expected_p7, atol=1e-6)


def test_top_down_path_matches_numpy_nearest_upsampling(rng):
    h, w = 72, 104  # C5 is 3x4, C4 6x7 -> upsampled C5 (6x8) must be cropped to 6x7
    c3, c4, c5 = features(rng, h, w)
    fpn = FeaturePyramid(filters=4)
    fpn([c3, c4, c5])

    def conv(layer, x):
        return ops.convert_to_numpy(layer(x))

    def up(x, like):
        x = np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)
        return x[:, : like.shape[1], : like.shape[2]]

    p5 = conv(fpn.conv_c5_1x1, c5)
    p4 = conv(fpn.conv_c4_1x1, c4)
    p4 = p4 + up(p5, p4)
    p3 = conv(fpn.conv_c3_1x1, c3)
    p3 = p3 + up(p4, p3)
    outputs = fpn([c3, c4, c5])
    np.testing.assert_allclose(
        ops.convert_to_numpy(outputs[0]), conv(fpn.conv_c3_3x3, p3), atol=1e-5
    )
    np.testing.assert_allclose(
        ops.convert_to_numpy(outputs[1]), conv(fpn.conv_c4_3x3, p4), atol=1e-5
    )


def test_compute_output_shape_matches_call(rng):
    inputs = features(rng, 257, 321)
    fpn = FeaturePyramid(filters=8)
    predicted = fpn.compute_output_shape([x.shape for x in inputs])
    assert [tuple(p) for p in predicted] == [tuple(ops.shape(o)) for o in fpn(inputs)]


def test_config_round_trip():
    fpn = FeaturePyramid(filters=64, name="pyramid")
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(fpn))
    assert isinstance(clone, FeaturePyramid)
    assert clone.filters == 64 and clone.name == "pyramid"


def test_p6_from_p5_with_symmetric_padding_is_torchvision_v1(rng):
    """torchvision v1: P6 = conv3x3/2 (padding 1 on every side) of the finished P5."""
    c3, c4, c5 = features(rng, 64, 64, channels=(8, 8, 16))
    fpn = FeaturePyramid(filters=8, p6_input="p5", downsample_padding="symmetric")
    p3, p4, p5, p6, p7 = (ops.convert_to_numpy(p) for p in fpn([c3, c4, c5]))
    assert p6.shape == (2, 1, 1, 8) and p7.shape == (2, 1, 1, 8)
    kernel, bias = (ops.convert_to_numpy(w) for w in fpn.conv_c6_3x3.weights)
    padded = np.pad(p5, ((0, 0), (1, 1), (1, 1), (0, 0)))  # [2, 4, 4, 8]
    # The one output cell sees padded rows/columns 0..2: the zero row on top, P5's first two.
    expected = np.einsum("nhwc,hwco->no", padded[:, :3, :3], kernel) + bias
    np.testing.assert_allclose(p6[:, 0, 0], expected, rtol=1e-5, atol=1e-5)
    clone = FeaturePyramid.from_config(fpn.get_config())
    assert (clone.p6_input, clone.downsample_padding) == ("p5", "symmetric")


@pytest.mark.parametrize(
    "kwargs, match",
    [({"p6_input": "c4"}, "p6_input"), ({"downsample_padding": "valid"}, "downsample_padding")],
)
def test_invalid_pyramid_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FeaturePyramid(filters=8, **kwargs)
