"""``DeviceConstants``: constants made once per (key, device) in eager calls, never cached
while tracing; the decoder's anchors and the box coder's variance use it."""

import copy

import keras
import numpy as np
import pytest
from keras import ops

from keras_retinanet.box_coding import BoxCoder
from keras_retinanet.decoder import DecodePredictions
from keras_retinanet.device_constants import DeviceConstants, size_key
from keras_retinanet.label_encoder import LabelEncoder

BACKEND = keras.backend.backend()


class Counter:
    def __init__(self, value=1.0):
        self.calls = 0
        self.value = value

    def __call__(self):
        self.calls += 1
        return ops.convert_to_tensor(np.full((4,), self.value, "float32"))


def test_an_eager_constant_is_made_once_per_key():
    cache, make = DeviceConstants(), Counter()
    like = ops.ones((2,))
    first = cache.get((8, 8), like, make)
    assert cache.get((8, 8), like, make) is first
    cache.get((16, 8), like, make)
    assert make.calls == 2 and len(cache) == 2


def test_a_none_key_or_numpy_like_is_made_every_time_or_cached_as_host():
    cache, make = DeviceConstants(), Counter()
    cache.get(None, ops.ones((2,)), make)
    cache.get(None, ops.ones((2,)), make)
    assert make.calls == 2 and len(cache) == 0
    cache.get("k", np.ones(2), make)
    cache.get("k", np.ones(2), make)
    assert make.calls == 3 and len(cache) == 1


def test_the_least_recently_used_entry_is_dropped():
    cache, make = DeviceConstants(max_entries=2), Counter()
    like = ops.ones((1,))
    for key in ("a", "b", "a", "c"):
        cache.get(key, like, make)
    assert make.calls == 3
    cache.get("a", like, make)  # kept: used after "b"
    assert make.calls == 3
    cache.get("b", like, make)  # dropped
    assert make.calls == 4


def test_copies_start_empty():
    cache = DeviceConstants(max_entries=3)
    cache.get("a", ops.ones((1,)), Counter())
    clone = copy.deepcopy(cache)
    assert len(clone) == 0 and clone.max_entries == 3


def test_nothing_is_cached_while_tracing():
    cache, make = DeviceConstants(), Counter()
    if BACKEND == "jax":
        import jax

        jax.jit(lambda x: x * cache.get("k", x, make))(np.ones(4, "float32"))
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        tf.function(lambda x: x * cache.get("k", x, make))(np.ones(4, "float32"))
    else:
        pytest.skip("torch runs eagerly here (torch.compile is covered by is_concrete)")
    assert len(cache) == 0 and make.calls == 1
    symbolic = keras.KerasTensor((None, 4))
    cache.get("k", symbolic, make)
    assert len(cache) == 0


def test_the_decoder_reuses_its_anchors_and_gives_the_same_detections():
    decoder = DecodePredictions(num_classes=3)
    images = np.zeros((1, 96, 128, 3), "float32")
    anchors = decoder.anchor_generator.num_anchors(96, 128)
    predictions = np.random.default_rng(0).normal(size=(1, anchors, 7)).astype("float32")
    first = decoder(images, predictions)
    cached = decoder._anchors._entries[next(iter(decoder._anchors._entries))]
    second = decoder(images, predictions)
    assert len(decoder._anchors) == 1
    assert decoder._anchors._entries[next(iter(decoder._anchors._entries))] is cached
    np.testing.assert_array_equal(
        ops.convert_to_numpy(cached), ops.convert_to_numpy(decoder.anchor_generator(96, 128))
    )
    for key in first:
        np.testing.assert_array_equal(
            ops.convert_to_numpy(first[key]), ops.convert_to_numpy(second[key])
        )
    decoder(np.zeros((1, 64, 64, 3), "float32"), predictions[:, : decoder.anchor_generator
            .num_anchors(64, 64)])  # fmt: skip
    assert len(decoder._anchors) == 2


def test_the_box_coder_round_trips_with_its_cached_variance():
    coder = BoxCoder()
    anchors = np.array([[10, 10, 8, 8], [20, 30, 16, 32]], "float32")
    boxes = np.array([[6, 7, 15, 14], [12, 14, 30, 45]], "float32")
    for _ in range(2):
        decoded = coder.decode(coder.encode(boxes, anchors), anchors)
        np.testing.assert_allclose(ops.convert_to_numpy(decoded), boxes, rtol=1e-5, atol=1e-4)
    assert len(coder._constants) == 1


def test_the_label_encoder_reuses_its_anchors_per_size_with_the_same_targets():
    encoder = LabelEncoder()
    boxes = np.array([[[8, 8, 40, 48], [30, 20, 90, 60]]], "float32")
    classes = np.array([[1, 2]], "int32")
    first = ops.convert_to_numpy(encoder.encode((96, 128), boxes, classes))
    second = ops.convert_to_numpy(encoder.encode((96, 128), boxes, classes))
    assert len(encoder._anchors) == 1
    np.testing.assert_array_equal(first, second)
    fresh = LabelEncoder().encode((96, 128), boxes, classes)
    np.testing.assert_array_equal(first, ops.convert_to_numpy(fresh))
    encoder.encode((64, 64), boxes, classes)
    assert len(encoder._anchors) == 2


def test_size_key_takes_python_and_numpy_integers_only():
    assert size_key(96, np.int64(128)) == (96, 128)
    assert size_key(96, ops.convert_to_tensor(128)) is None
