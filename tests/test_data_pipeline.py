import keras
import numpy as np
import pytest

from keras_retinanet.data import (
    CocoDataset,
    DetectionDataset,
    InferenceBatches,
    generate_shapes_dataset,
    normalize_image,
)


def _records(n=5, seed=0):
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        h, w = int(rng.integers(40, 80)), int(rng.integers(40, 80))
        k = i % 4  # 0..3 boxes, so one record has none
        x1 = rng.uniform(0, w / 2, size=k)
        y1 = rng.uniform(0, h / 2, size=k)
        boxes = np.stack([x1, y1, x1 + w / 4, y1 + h / 4], axis=-1).reshape(-1, 4)
        records.append(
            {
                "image_id": 100 + i,
                "image": rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8),
                "height": h,
                "width": w,
                "boxes": boxes.astype("float32"),
                "classes": np.arange(k, dtype="int32") % 2,
            }
        )
    return records


def test_is_a_keras_py_dataset():
    ds = DetectionDataset(_records(), batch_size=2, min_side=64, max_side=96, stride=32)
    assert isinstance(ds, keras.utils.PyDataset)
    assert len(ds) == 3
    assert len(DetectionDataset(_records(), batch_size=2, drop_remainder=True)) == 2


def test_batch_shapes_dtypes_and_padding_rows():
    records = _records()
    ds = DetectionDataset(
        records, batch_size=2, training=False, min_side=64, max_side=96, stride=32
    )
    assert ds.max_boxes == 3
    images, targets = ds[0]
    assert images.dtype == np.float32 and images.ndim == 4 and images.shape[0] == 2
    assert images.shape[1] % 32 == 0 and images.shape[2] % 32 == 0 and images.shape[3] == 3
    assert targets["boxes"].shape == (2, 3, 4) and targets["boxes"].dtype == np.float32
    assert targets["classes"].shape == (2, 3) and targets["classes"].dtype == np.int32
    # Record 0 has no boxes, record 1 has one: the rest are padding rows.
    np.testing.assert_array_equal(targets["classes"][0], [-1, -1, -1])
    np.testing.assert_array_equal(targets["classes"][1, 1:], [-1, -1])
    assert np.all(targets["boxes"][1, 1:] == 0)
    # Without shuffling or flipping the boxes are the record's boxes times the ratio.
    h, w = records[1]["image"].shape[:2]
    ratio = min(64 / min(h, w), 96 / max(h, w))
    np.testing.assert_allclose(targets["boxes"][1, 0], records[1]["boxes"][0] * ratio, rtol=1e-5)
    assert targets["classes"][1, 0] == records[1]["classes"][0]
    last_images, last_targets = ds[2]
    assert last_images.shape[0] == 1 and last_targets["boxes"].shape == (1, 3, 4)
    with pytest.raises(IndexError):
        ds[3]


def test_per_batch_and_fixed_max_boxes():
    per_batch = DetectionDataset(_records(), batch_size=2, training=False, max_boxes=None)
    assert per_batch[0][1]["classes"].shape == (2, 1)
    fixed = DetectionDataset(
        _records(), batch_size=2, training=False, max_boxes=7, min_side=64, max_side=64
    )
    assert all(fixed[i][1]["classes"].shape[1] == 7 for i in range(len(fixed)))
    with pytest.raises(ValueError, match="max_boxes"):
        DetectionDataset(_records(), batch_size=2, max_boxes=2)


def test_fixed_image_size_and_normalisation():
    ds = DetectionDataset(
        _records(),
        batch_size=3,
        training=False,
        min_side=64,
        max_side=64,
        image_size=(64, 64),
        normalize=False,
    )
    raw, _ = ds[0]
    assert raw.shape == (3, 64, 64, 3) and raw.max() > 1.0 and raw.min() >= 0
    norm = DetectionDataset(
        _records(), batch_size=3, training=False, min_side=64, max_side=64, image_size=(64, 64)
    )
    np.testing.assert_allclose(norm[0][0], normalize_image(raw), atol=1e-4)


def _collect(ds, epochs=2):
    out = []
    for _ in range(epochs):
        out.append([ds[i] for i in range(len(ds))])
        ds.on_epoch_end()
    return out


def test_deterministic_given_seed_and_reshuffles():
    kwargs = dict(batch_size=2, training=True, min_side=64, max_side=96, stride=32, seed=5)
    a = _collect(DetectionDataset(_records(), jitter=(48, 80), **kwargs))
    b = _collect(DetectionDataset(_records(), jitter=(48, 80), **kwargs))
    for epoch_a, epoch_b in zip(a, b, strict=True):
        for (ia, ta), (ib, tb) in zip(epoch_a, epoch_b, strict=True):
            np.testing.assert_array_equal(ia, ib)
            np.testing.assert_array_equal(ta["boxes"], tb["boxes"])
            np.testing.assert_array_equal(ta["classes"], tb["classes"])
    ds = DetectionDataset(_records(n=12), **kwargs)
    first = ds._order.copy()
    ds.on_epoch_end()
    assert sorted(first) == sorted(ds._order) and not np.array_equal(first, ds._order)
    other = DetectionDataset(_records(n=12), **{**kwargs, "seed": 6})
    assert not np.array_equal(first, other._order)


def test_training_boxes_stay_inside_image():
    ds = DetectionDataset(_records(n=8), batch_size=4, min_side=64, max_side=96, stride=32, seed=1)
    for epoch in _collect(ds):
        for images, targets in epoch:
            real = targets["classes"] >= 0
            boxes = targets["boxes"][real]
            assert np.all(boxes >= -1e-4)
            assert np.all(boxes[:, 2] <= images.shape[2] + 1e-3)
            assert np.all(boxes[:, 3] <= images.shape[1] + 1e-3)


def test_from_files_and_inference_batches(tmp_path):
    paths = generate_shapes_dataset(tmp_path, num_train=5, num_val=0, image_size=(64, 80))
    coco = CocoDataset(paths.train_annotations, paths.train_images)
    train = DetectionDataset(coco, batch_size=4, min_side=32, max_side=64, stride=32)
    images, targets = train[0]
    assert images.shape == (4, 32, 64, 3)  # 64 x 80 -> 32 x 40, padded
    assert train.class_to_category_id == {0: 1, 1: 2, 2: 3}

    batches = InferenceBatches(coco, batch_size=2, min_side=32, max_side=64, stride=32)
    assert len(batches) == 3 and batches.class_to_category_id == coco.class_to_category_id
    seen = []
    for images, meta in batches:
        assert images.dtype == np.float32 and images.shape[1:] == (32, 64, 3)
        np.testing.assert_allclose(meta["ratio"], 32 / 64)
        np.testing.assert_array_equal(meta["original_size"], [[64, 80]] * len(images))
        seen.extend(meta["image_id"].tolist())
    assert seen == [1, 2, 3, 4, 5]
    assert len(list(batches)) == 3  # re-iterable


def test_fit_consumes_the_dataset():
    ds = DetectionDataset(
        _records(n=4), batch_size=2, min_side=32, max_side=32, image_size=(32, 32)
    )
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    boxes = keras.layers.Reshape((3, 4))(keras.layers.Dense(12)(x))
    classes = keras.layers.Dense(3)(x)
    model = keras.Model(inputs, {"boxes": boxes, "classes": classes})
    model.compile(optimizer="sgd", loss={"boxes": "mse", "classes": "mse"})
    history = model.fit(ds, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2
    assert ds.epoch >= 1


def test_errors():
    with pytest.raises(ValueError, match="neither"):
        DetectionDataset([{"boxes": [], "classes": []}], batch_size=1)
    with pytest.raises(ValueError, match="batch_size"):
        DetectionDataset(_records(), batch_size=0)
    with pytest.raises(ValueError, match="image_size"):
        InferenceBatches(_records(), image_size=(1, 2, 3))
