import numpy as np
import pytest

PIL = pytest.importorskip("PIL")

from PIL import Image  # noqa: E402

from keras_retinanet.visualization import class_color, draw_detections  # noqa: E402


def test_writes_png_of_right_size(tmp_path):
    image = np.full((60, 90, 3), 40, dtype=np.uint8)
    boxes = np.array([[10, 10, 40, 50], [50, 5, 85, 30], [0, 0, 5, 5]], dtype="float32")
    out = draw_detections(
        image,
        boxes,
        np.array([0.0, 1.0, 1.0]),
        np.array([0.9, 0.6, 0.01]),
        class_names=["rectangle", "ellipse"],
        score_threshold=0.05,
        path=tmp_path / "sub" / "det.png",
    )
    assert out.shape == (60, 90, 3) and out.dtype == np.uint8
    with Image.open(tmp_path / "sub" / "det.png") as png:
        assert png.format == "PNG" and png.size == (90, 60)
        np.testing.assert_array_equal(np.asarray(png.convert("RGB")), out)
    # Outlines use the class colours; the low-score box is not drawn.
    assert tuple(out[30, 10]) == class_color(0)
    assert tuple(out[20, 85]) == class_color(1)
    assert tuple(out[2, 0]) == (40, 40, 40)
    np.testing.assert_array_equal(image, 40)  # input untouched


def test_float_image_ground_truth_and_valid():
    image = np.random.default_rng(0).uniform(0, 255, size=(32, 48, 3))
    out = draw_detections(image, [[1, 1, 20, 20], [25, 5, 40, 30]], [1, -1], valid=1)
    assert out.shape == (32, 48, 3)
    with pytest.raises(ValueError, match="classes"):
        draw_detections(image, [[1, 1, 2, 2]], [0, 1])
