import hashlib
import os

import numpy as np
import pytest

from keras_retinanet.data import SHAPE_CLASSES, CocoDataset, generate_shapes_dataset
from keras_retinanet.data.shapes import render_shapes_image


def _digest(root):
    h = hashlib.sha256()
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            path = os.path.join(folder, name)
            h.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return generate_shapes_dataset(root / "a", num_train=40, num_val=10, seed=3)


def test_layout_and_determinism(shapes, tmp_path):
    assert sorted(os.listdir(shapes.train_images))[:2] == ["000000.png", "000001.png"]
    assert len(os.listdir(shapes.train_images)) == 40
    assert len(os.listdir(shapes.val_images)) == 10
    assert os.path.isfile(shapes.train_annotations) and os.path.isfile(shapes.val_annotations)
    again = generate_shapes_dataset(tmp_path / "b", num_train=40, num_val=10, seed=3)
    assert _digest(again.root) == _digest(shapes.root)
    other = generate_shapes_dataset(tmp_path / "c", num_train=40, num_val=10, seed=4)
    assert _digest(other.root) != _digest(shapes.root)


def test_annotations(shapes):
    train = CocoDataset(shapes.train_annotations, shapes.train_images)
    val = CocoDataset(shapes.val_annotations, shapes.val_images)
    assert train.class_names == list(SHAPE_CLASSES)
    assert len(train) == 40 and len(val) == 10
    all_boxes = np.concatenate([r["boxes"] for r in train])
    all_classes = np.concatenate([r["classes"] for r in train])
    counts = np.bincount(all_classes, minlength=3)
    assert counts.sum() >= 40 and np.all(counts >= 10), counts
    for rec in list(train) + list(val):
        assert 1 <= len(rec["classes"]) <= 5
        assert (rec["height"], rec["width"]) == (128, 128)
        b = rec["boxes"]
        assert np.all(b[:, :2] >= 0) and np.all(b[:, 2] <= 128) and np.all(b[:, 3] <= 128)
        assert np.all(b[:, 2:] > b[:, :2])
    sides = np.minimum(all_boxes[:, 2] - all_boxes[:, 0], all_boxes[:, 3] - all_boxes[:, 1])
    assert sides.min() >= 10
    assert np.any(sides <= 16), "expected some small objects"
    assert np.any(sides >= 32), "expected some large objects"
    image = train.load_image(0)
    assert image.shape == (128, 128, 3) and image.dtype == np.uint8


def test_render_in_memory():
    rng = np.random.default_rng(0)
    for _ in range(10):
        pixels, boxes, classes = render_shapes_image(rng, min_objects=2, max_objects=3)
        assert pixels.shape == (128, 128, 3) and pixels.dtype == np.uint8
        assert boxes.dtype == np.float32 and classes.dtype == np.int32
        assert 1 <= len(boxes) == len(classes) <= 3
        assert set(classes.tolist()) <= {0, 1, 2}


def test_custom_size_and_errors(tmp_path):
    paths = generate_shapes_dataset(
        tmp_path, num_train=3, num_val=0, image_size=(64, 96), max_objects=2
    )
    ds = CocoDataset(paths.train_annotations, paths.train_images)
    assert ds.load_image(0).shape == (64, 96, 3)
    assert all(r["boxes"][:, 2].max() <= 96 and r["boxes"][:, 3].max() <= 64 for r in ds)
    with pytest.raises(ValueError, match="image_size"):
        generate_shapes_dataset(tmp_path, image_size=(8, 8))
    with pytest.raises(ValueError, match="min_objects"):
        generate_shapes_dataset(tmp_path, min_objects=3, max_objects=2)
