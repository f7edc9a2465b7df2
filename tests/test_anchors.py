import math

import numpy as np
import pytest
from keras import ops

from keras_retinanet import AnchorGenerator


def numpy_anchors(height, width):
    """Independent transcription of docs/numerics.md (Anchors) in float64."""
    out = []
    for stride, area in zip(
        (8, 16, 32, 64, 128), (32.0**2, 64.0**2, 128.0**2, 256.0**2, 512.0**2), strict=True
    ):
        gh, gw = math.ceil(height / stride), math.ceil(width / stride)
        for y in range(gh):
            for x in range(gw):
                for ratio in (0.5, 1.0, 2.0):
                    h = math.sqrt(area / ratio)
                    w = area / h
                    for scale in (1.0, 2 ** (1 / 3), 2 ** (2 / 3)):
                        out.append(((x + 0.5) * stride, (y + 0.5) * stride, w * scale, h * scale))
    return np.asarray(out)


@pytest.mark.parametrize("size", [(128, 128), (192, 256), (257, 321), (512, 512), (31, 700)])
def test_anchor_count_is_nine_times_sum_of_ceil_grid_cells(size):
    h, w = size
    expected = 9 * sum(math.ceil(h / s) * math.ceil(w / s) for s in (8, 16, 32, 64, 128))
    gen = AnchorGenerator()
    assert gen.num_anchors(h, w) == expected
    assert tuple(ops.shape(gen(h, w))) == (expected, 4)


@pytest.mark.parametrize("size", [(128, 128), (257, 321), (100, 37)])
def test_anchors_equal_independent_numpy_computation(size):
    got = ops.convert_to_numpy(AnchorGenerator()(*size))
    np.testing.assert_allclose(got, numpy_anchors(*size), rtol=1e-6, atol=1e-4)


def test_512_input_has_49104_anchors():
    assert AnchorGenerator().num_anchors(512, 512) == 49104


def test_anchors_accept_tensor_sizes():
    gen = AnchorGenerator()
    got = gen(ops.convert_to_tensor(129), ops.convert_to_tensor(64))
    np.testing.assert_allclose(ops.convert_to_numpy(got), numpy_anchors(129, 64), atol=1e-4)


@pytest.mark.parametrize("size", [(8, 8), (129, 64), (200, 333), (512, 512)])
def test_static_size_anchors_are_bit_identical_to_tensor_size_anchors(size):
    gen = AnchorGenerator(aspect_ratios=(0.7, 1.3), scales=(1.0, 1.5), strides=(8, 16, 24, 48, 96))
    static = ops.convert_to_numpy(gen(*size))
    traced = ops.convert_to_numpy(gen(*(ops.convert_to_tensor(v) for v in size)))
    assert static.dtype == np.float32 and static.shape == traced.shape
    np.testing.assert_array_equal(static, traced)


def test_anchor_order_within_a_location_is_ratio_major_scale_fastest():
    a = ops.convert_to_numpy(AnchorGenerator()(8, 8))[:9]
    # Same ratio: widths grow by 2^(1/3) with the scale index.
    np.testing.assert_allclose(a[1, 2] / a[0, 2], 2 ** (1 / 3), rtol=1e-6)
    # Ratio index 0 is w/h = 0.5 (tall), index 2 is w/h = 2 (wide).
    np.testing.assert_allclose(a[0, 2] / a[0, 3], 0.5, rtol=1e-6)
    np.testing.assert_allclose(a[6, 2] / a[6, 3], 2.0, rtol=1e-6)
    np.testing.assert_allclose(a[3, 2] * a[3, 3], 32.0**2, rtol=1e-6)


def test_custom_configuration_round_trips_through_config():
    gen = AnchorGenerator(aspect_ratios=(1.0,), scales=(1.0, 2.0), areas=(16.0**2,), strides=(4,))
    clone = AnchorGenerator.from_config(gen.get_config())
    assert clone.num_anchors_per_location == 2
    assert clone.num_anchors(8, 8) == 2 * 4
    np.testing.assert_array_equal(
        ops.convert_to_numpy(clone(8, 8)), ops.convert_to_numpy(gen(8, 8))
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"aspect_ratios": (0.0, 1.0)}, "aspect_ratios"),
        ({"scales": ()}, "scales"),
        ({"areas": (32.0**2,)}, "areas"),
        ({"strides": (8, 16, 32, 64, 0)}, "strides"),
    ],
)
def test_invalid_configuration_raises_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AnchorGenerator(**kwargs)


@pytest.mark.parametrize("h, w, name", [(0, 8, "image_height"), (8, -1, "image_width")])
def test_non_positive_image_size_raises(h, w, name):
    with pytest.raises(ValueError, match=name):
        AnchorGenerator()(h, w)


def _torchvision_anchors_numpy(height, width):
    """torchvision's AnchorGenerator for its RetinaNets, transcribed in NumPy: xyxy
    ``[A, 4]`` (docs/numerics.md (Anchors), torchvision variants)."""
    f32 = np.float32
    out = []
    for base in (32, 64, 128, 256, 512):
        sizes = np.asarray([base, int(base * 2 ** (1 / 3)), int(base * 2 ** (2 / 3))], f32)
        h_ratios = np.sqrt(np.asarray([0.5, 1.0, 2.0], f32))
        w_ratios = f32(1) / h_ratios
        ws = (w_ratios[:, None] * sizes[None, :]).reshape(-1)
        hs = (h_ratios[:, None] * sizes[None, :]).reshape(-1)
        cell = np.round(np.stack([-ws, -hs, ws, hs], axis=1) / f32(2))
        stride = base // 4
        grid_h, grid_w = -(-height // stride), -(-width // stride)
        sy, sx = height // grid_h, width // grid_w
        ys, xs = np.meshgrid(np.arange(grid_h) * sy, np.arange(grid_w) * sx, indexing="ij")
        shifts = np.stack([xs, ys, xs, ys], axis=-1).reshape(-1, 1, 4).astype(f32)
        out.append((shifts + cell[None]).reshape(-1, 4))
    return np.concatenate(out)


@pytest.mark.parametrize("size", [(160, 224), (800, 1216), (33, 97)])
def test_torchvision_anchors_match_its_arithmetic(size):
    anchors = ops.convert_to_numpy(AnchorGenerator.torchvision()(*size))
    xyxy = np.concatenate(
        [anchors[:, :2] - anchors[:, 2:] / 2, anchors[:, :2] + anchors[:, 2:] / 2], -1
    )
    np.testing.assert_array_equal(xyxy, _torchvision_anchors_numpy(*size))


def test_torchvision_anchor_sizes_hand_values():
    gen = AnchorGenerator.torchvision()
    # P3, the square anchors (middle ratio): 32, 40, 50; P4's 101 rounds to 100 (50.5 -> 50).
    np.testing.assert_array_equal(gen._dims[0][3:6], [[32, 32], [40, 40], [50, 50]])
    np.testing.assert_array_equal(gen._dims[1][3:6], [[64, 64], [80, 80], [100, 100]])
    # w / h = 2 first, as torchvision's h / w = 0.5: 32 / sqrt(0.5) = 45.25 -> 2 * 23 = 46.
    np.testing.assert_array_equal(gen._dims[0][0], [46, 22])
    # A 160 x 224 input: P6 cells 3 x 4, 53 x 56 pixels apart, centred on the cell corner.
    p6 = ops.convert_to_numpy(gen(160, 224))[9 * (20 * 28 + 10 * 14 + 5 * 7) :][: 9 * 12]
    centers = np.unique(p6[:, :2], axis=0)
    assert sorted({float(x) for x in centers[:, 0]}) == [0.0, 56.0, 112.0, 168.0]
    assert sorted({float(y) for y in centers[:, 1]}) == [0.0, 53.0, 106.0]


def test_torchvision_configuration_round_trips_through_config():
    gen = AnchorGenerator.torchvision()
    clone = AnchorGenerator.from_config(gen.get_config())
    np.testing.assert_array_equal(
        ops.convert_to_numpy(clone(96, 160)), ops.convert_to_numpy(gen(96, 160))
    )
    assert clone.get_config() == gen.get_config()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sizes": [(32, 40)] * 4}, "sizes"),
        ({"sizes": [(32, 40)] * 4 + [(64,)]}, "sizes"),
        ({"center_offset": 1.0}, "center_offset"),
        ({"center_offset": "half"}, "center_offset"),
        ({"round_half_extents": 1}, "round_half_extents"),
        ({"strides_from_image_size": "yes"}, "strides_from_image_size"),
    ],
)
def test_invalid_torchvision_options_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AnchorGenerator(**kwargs)
