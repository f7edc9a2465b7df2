"""A few real training steps end to end on the active backend."""

import keras
import numpy as np
from conftest import tiny_backbone
from keras import ops

from keras_retinanet import RetinaNet, compact_backbone
from keras_retinanet.data import CocoDataset, DetectionDataset, generate_shapes_dataset


def test_fit_on_padded_ground_truth_lowers_the_loss(tmp_path):
    # One batch of 8 shapes images (1-5 objects each, so padded ground truth) seen 8 times: the
    # loss falls steadily to 0.36-0.40 of its first value on every backend.
    paths = generate_shapes_dataset(
        tmp_path / "shapes", num_train=8, num_val=1, image_size=(64, 64), max_object_size=32, seed=3
    )
    data = DetectionDataset(
        CocoDataset(paths.train_annotations, paths.train_images),
        batch_size=8,
        min_side=64,
        max_side=64,
        stride=64,
        image_size=(64, 64),
        flip=False,
        shuffle=False,
    )
    assert (data[0][1]["classes"] == -1).any()  # some images hold fewer objects than others
    # A compact backbone: batch normalisation trains, and its statistics go into the file.
    model = RetinaNet(
        num_classes=3,
        backbone=compact_backbone(widths=(8, 16, 32, 32)),
        fpn_filters=16,
        head_convs=1,
    )
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    history = model.fit(data, epochs=8, verbose=0)
    losses = history.history["loss"]
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0], losses
    path = tmp_path / "trained.keras"
    model.save(path)
    images = data[0][0]
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(
        ops.convert_to_numpy(restored(images)), ops.convert_to_numpy(model(images)), atol=1e-5
    )


def test_fit_accepts_pre_encoded_targets_and_batches_without_boxes():
    # The target format is the subject here, not the backbone: a 3-conv one will do.
    model = RetinaNet(num_classes=2, backbone=tiny_backbone(), fpn_filters=16, head_convs=1)
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
