"""A few real training steps end to end on the active backend."""

import keras
import numpy as np
from keras import ops

from keras_retinanet import RetinaNet, compact_backbone
from keras_retinanet.data import CocoDataset, DetectionDataset, generate_shapes_dataset


def small_model(num_classes=3):
    return RetinaNet(
        num_classes=num_classes,
        backbone=compact_backbone(widths=(8, 16, 32, 32)),
        fpn_filters=16,
        head_convs=1,
    )


def test_fit_on_padded_ground_truth_lowers_the_loss(tmp_path):
    paths = generate_shapes_dataset(tmp_path / "shapes", num_train=16, num_val=2, seed=3)
    data = DetectionDataset(
        CocoDataset(paths.train_annotations, paths.train_images),
        batch_size=8,
        min_side=128,
        max_side=128,
        stride=128,
        image_size=(128, 128),
        flip=False,
        shuffle=False,
    )
    model = small_model()
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    history = model.fit(data, epochs=6, verbose=0)
    losses = history.history["loss"]
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses
    path = tmp_path / "trained.keras"
    model.save(path)
    images = data[0][0]
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(
        ops.convert_to_numpy(restored(images)), ops.convert_to_numpy(model(images)), atol=1e-5
    )


def test_fit_accepts_pre_encoded_targets_and_batches_without_boxes():
    model = small_model(2)
    images = np.random.default_rng(0).uniform(-100, 100, (4, 64, 64, 3)).astype("float32")
    y = {
        "boxes": np.tile(np.array([[[8, 8, 40, 40], [0, 0, 0, 0]]], "float32"), (4, 1, 1)),
        "classes": np.tile(np.array([[1, -1]], "int32"), (4, 1)),
    }
    y["classes"][3] = -1  # one image with no objects
    encoded = ops.convert_to_numpy(model.encode_targets(images, y))
    model.compile(optimizer="adam")
    first = model.evaluate(images, encoded, verbose=0)
    model.fit(images, encoded, epochs=3, batch_size=4, verbose=0)
    assert np.isfinite(first) and model.evaluate(images, y, batch_size=4, verbose=0) < first
