import keras
import numpy as np
import pytest

from keras_retinanet.data import (
    CAFFE_BGR_MEAN,
    compute_resize_ratio,
    normalize_image,
    preprocess_for_inference,
    preprocess_for_training,
    random_flip_horizontal,
    resize_and_pad,
)


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("shape", "expected_ratio", "expected_padded"),
    [
        ((480, 640), 800 / 480, (896, 1152)),  # short side -> 800: 800 x 1067
        ((200, 1000), 1333 / 1000, (384, 1408)),  # long side capped at 1333: 267 x 1333
        ((800, 800), 1.0, (896, 896)),
    ],
)
def test_resize_rules_and_padding(shape, expected_ratio, expected_padded):
    padded, ratio = resize_and_pad(_image(*shape))
    assert ratio == pytest.approx(expected_ratio)
    assert padded.shape == (*expected_padded, 3) and padded.dtype == np.float32
    assert padded.shape[0] % 128 == 0 and padded.shape[1] % 128 == 0
    new_h, new_w = round(shape[0] * ratio), round(shape[1] * ratio)
    assert min(new_h, new_w) <= 800 and max(new_h, new_w) <= 1333
    assert np.all(padded[new_h:] == 0) and np.all(padded[:, new_w:] == 0)
    assert padded[:new_h, :new_w].max() > 0


def test_small_sizes_and_stride():
    padded, ratio = resize_and_pad(_image(100, 150), min_side=128, max_side=128, stride=32)
    assert ratio == pytest.approx(128 / 150)
    assert padded.shape == (96, 128, 3)  # 85 x 128 padded to multiples of 32
    assert compute_resize_ratio(100, 150, min_side=128, max_side=1000) == pytest.approx(1.28)


def test_fixed_image_size_fits():
    padded, ratio = resize_and_pad(
        _image(300, 100), min_side=128, max_side=256, image_size=(128, 128)
    )
    assert padded.shape == (128, 128, 3)
    assert ratio == pytest.approx(128 / 300)


def test_jitter_is_seeded_and_in_range():
    image = _image(100, 200)
    ratios = [
        resize_and_pad(
            image, jitter=(64, 96), max_side=1000, stride=32, rng=np.random.default_rng(s)
        )[1]
        for s in range(20)
    ]
    assert all(0.64 <= r < 0.96 for r in ratios)
    assert len(set(ratios)) > 1
    again = resize_and_pad(image, jitter=(64, 96), max_side=1000, rng=np.random.default_rng(0))[1]
    assert again == ratios[0]


def test_ratio_maps_boxes_back():
    image = _image(60, 90)
    boxes = np.array([[10, 5, 40, 50], [0, 0, 90, 60]], dtype="float32")
    rng = np.random.default_rng(0)
    out, scaled, ratio = preprocess_for_training(
        image, boxes, rng=rng, min_side=120, max_side=500, stride=32, flip=False
    )
    assert out.shape == (128, 192, 3)
    np.testing.assert_allclose(scaled, boxes * ratio, rtol=1e-6)
    np.testing.assert_allclose(scaled / ratio, boxes, rtol=1e-5)
    _, inf_ratio = preprocess_for_inference(image, min_side=120, max_side=500, stride=32)
    assert inf_ratio == ratio


def test_flip_flips_boxes():
    image = np.zeros((10, 20, 3), dtype=np.uint8)
    image[2:4, 1:5] = 255  # object at x in [1, 5), y in [2, 4)
    boxes = np.array([[1, 2, 5, 4]], dtype="float32")
    flipped, fboxes = random_flip_horizontal(image, boxes, np.random.default_rng(0), p=1.0)
    np.testing.assert_allclose(fboxes, [[15, 2, 19, 4]])
    ys, xs = np.nonzero(flipped[..., 0])
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (15, 19, 2, 4)
    same, sboxes = random_flip_horizontal(image, boxes, np.random.default_rng(0), p=0.0)
    assert same is image
    np.testing.assert_allclose(sboxes, boxes)
    # Flipping twice is the identity.
    back, bboxes = random_flip_horizontal(flipped, fboxes, np.random.default_rng(0), p=1.0)
    np.testing.assert_array_equal(back, image)
    np.testing.assert_allclose(bboxes, boxes)


def test_flip_probability():
    rng = np.random.default_rng(1)
    image, boxes = np.zeros((4, 8, 3)), np.array([[0, 0, 2, 2]], "float32")
    flips = [random_flip_horizontal(image, boxes, rng)[1][0, 0] != 0 for _ in range(400)]
    assert 0.4 < np.mean(flips) < 0.6


def test_normalize_matches_keras_preprocess_input():
    image = np.random.default_rng(0).uniform(0, 255, size=(2, 5, 7, 3)).astype("float32")
    expected = keras.applications.resnet.preprocess_input(image.copy())
    np.testing.assert_allclose(normalize_image(image), np.asarray(expected), rtol=1e-6, atol=1e-4)
    single = normalize_image(image[0].astype("uint8"))
    assert single.dtype == np.float32
    np.testing.assert_allclose(normalize_image(np.zeros((1, 1, 3)))[0, 0], -CAFFE_BGR_MEAN)


def test_inference_normalizes_and_pads():
    out, ratio = preprocess_for_inference(_image(64, 64), min_side=64, max_side=64, stride=128)
    assert out.shape == (128, 128, 3) and ratio == 1.0
    # Padding is zero before normalisation, i.e. -mean afterwards (as in keras.io).
    np.testing.assert_allclose(out[-1, -1], -CAFFE_BGR_MEAN)


def test_float_and_grey_inputs():
    grey = np.linspace(0, 255, 50 * 40, dtype="float64").reshape(50, 40)
    out, ratio = resize_and_pad(grey, min_side=80, max_side=200, stride=16)
    assert out.shape == (112, 80, 3) and ratio == 2.0
    np.testing.assert_allclose(out[..., 0], out[..., 2])
    with pytest.raises(ValueError, match="shape"):
        resize_and_pad(np.zeros((4, 4, 2)))
    with pytest.raises(ValueError, match="jitter"):
        resize_and_pad(_image(4, 4), jitter=(10, 5))
