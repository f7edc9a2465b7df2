"""Shared fixtures. The backend under test is whatever ``KERAS_BACKEND`` selects."""

import keras
import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _seed_and_policy():
    """Every test starts from the same seed and the float32 policy."""
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def tiny_backbone(channels=(8, 16, 32)):
    """A 3-conv stand-in backbone with outputs at strides 8, 16, 32 (fast model tests)."""
    inputs = keras.Input((None, None, 3))
    c3 = keras.layers.Conv2D(channels[0], 3, strides=8, padding="same")(inputs)
    c4 = keras.layers.Conv2D(channels[1], 3, strides=2, padding="same")(c3)
    c5 = keras.layers.Conv2D(channels[2], 3, strides=2, padding="same")(c4)
    return keras.Model(inputs, [c3, c4, c5], name="tiny_backbone")
