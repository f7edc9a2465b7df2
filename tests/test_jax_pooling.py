"""JAX max pooling as the maximum of strided windows: same outputs and gradients as Keras'."""

import keras
import numpy as np
import pytest

from keras_retinanet._keras_internals import sublayers

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="the pooling rewrite is a JAX concern"
)

# (pool size, strides, padding): ResNet50's stem pool (3/2 valid after zero padding), the
# common non-overlapping 2/2, overlapping same-padded pools, asymmetric ones, and sizes that
# the strides do not divide (windows that end early).
CASES = [
    ((3, 3), (2, 2), "valid"),
    ((3, 3), (2, 2), "same"),
    ((2, 2), (2, 2), "valid"),
    ((2, 2), (1, 1), "same"),
    ((3, 3), (1, 1), "same"),
    ((3, 2), (2, 1), "valid"),
    ((1, 1), (2, 2), "same"),
]


def _pair(pool_size, strides, padding, data_format, shape):
    from keras_retinanet.fast._jax_pooling import use_fast_max_pooling

    keras_pool = keras.layers.MaxPooling2D(
        pool_size, strides=strides, padding=padding, data_format=data_format
    )
    fast = keras.layers.MaxPooling2D.from_config(keras_pool.get_config())
    keras_pool.build(shape)
    fast.build(shape)
    assert use_fast_max_pooling(fast) == 1
    return keras_pool, fast


def _vjp(layer, x, d_out):
    import jax

    outputs, pullback = jax.vjp(layer, x)
    return np.asarray(outputs), np.asarray(pullback(d_out)[0])


def _shape(data_format, channels=4):
    return (2, 11, 10, channels) if data_format == "channels_last" else (2, channels, 11, 10)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("pool_size,strides,padding", CASES)
def test_outputs_and_gradients_match_keras_pooling_on_ties(
    pool_size, strides, padding, data_format
):
    """Small integers: most windows hold tied maxima, so the gradient must reach the same
    element (the first maximum in row-major order) as XLA's ``select_and_scatter``. Integer
    gradients sum exactly in any order, so everything is compared for equality."""
    import jax.numpy as jnp

    shape = _shape(data_format)
    keras_pool, fast = _pair(pool_size, strides, padding, data_format, shape)
    rng = np.random.default_rng(sum(pool_size) * 10 + sum(strides))
    x = jnp.asarray(rng.integers(0, 3, shape).astype("float32"))
    out_shape = np.asarray(keras_pool(x)).shape
    d_out = jnp.asarray(rng.integers(-4, 5, out_shape).astype("float32"))
    expected, expected_grad = _vjp(keras_pool, x, d_out)
    got, got_grad = _vjp(fast, x, d_out)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got_grad, expected_grad)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("pool_size,strides,padding", CASES[:3])
def test_gradients_match_keras_pooling_on_random_floats(pool_size, strides, padding, data_format):
    import jax
    import jax.numpy as jnp

    shape = _shape(data_format, channels=3)
    keras_pool, fast = _pair(pool_size, strides, padding, data_format, shape)
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.normal(size=shape).astype("float32"))
    d_out = jnp.asarray(rng.normal(size=np.asarray(keras_pool(x)).shape).astype("float32"))
    expected, expected_grad = _vjp(keras_pool, x, d_out)
    got, got_grad = _vjp(jax.jit(fast), x, d_out)
    np.testing.assert_array_equal(got, expected)
    # Overlapping windows add an element's contributions in another order.
    np.testing.assert_allclose(got_grad, expected_grad, rtol=1e-6, atol=1e-6)


def test_forward_mode_and_vmap_work():
    import jax
    import jax.numpy as jnp

    shape = (2, 9, 9, 3)
    keras_pool, fast = _pair((3, 3), (2, 2), "valid", "channels_last", shape)
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=shape).astype("float32"))
    tangent = jnp.asarray(rng.normal(size=shape).astype("float32"))
    expected = jax.jvp(keras_pool, (x,), (tangent,))
    got = jax.jvp(fast, (x,), (tangent,))
    np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(expected[0]))
    np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(expected[1]))
    stacked = jnp.stack([x, -x])
    np.testing.assert_array_equal(
        np.asarray(jax.vmap(fast)(stacked)), np.asarray(jax.vmap(keras_pool)(stacked))
    )


def test_nan_propagates_like_keras():
    import jax.numpy as jnp

    shape = (1, 6, 6, 2)
    keras_pool, fast = _pair((3, 3), (2, 2), "same", "channels_last", shape)
    values = np.arange(72, dtype="float32").reshape(shape)
    values[0, 1, 1, 0] = np.nan
    x = jnp.asarray(values)
    expected = np.asarray(keras_pool(x))
    got = np.asarray(fast(x))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_array_equal(got[~np.isnan(got)], expected[~np.isnan(expected)])
    _, grad = _vjp(fast, x, jnp.ones_like(jnp.asarray(got)))
    assert np.all(np.isfinite(grad)) and grad[0, 1, 1, 0] > 0  # the NaN took its windows'


def test_retinanet_pools_are_replaced_once_and_subclasses_are_left_alone():
    from keras_retinanet import RetinaNet
    from keras_retinanet.fast._jax_pooling import _FastMaxPooling, use_fast_max_pooling

    model = RetinaNet(num_classes=3, backbone="resnet50")
    model.build((1, 64, 64, 3))
    pools = [layer for layer in sublayers(model) if isinstance(layer, keras.layers.MaxPooling2D)]
    assert pools and all(isinstance(vars(p).get("call"), _FastMaxPooling) for p in pools)
    assert use_fast_max_pooling(model) == len(pools)  # again: a fresh op each, no stacking

    class OwnPool(keras.layers.MaxPooling2D):
        def call(self, inputs):
            return super().call(inputs) * 2.0

    assert use_fast_max_pooling(OwnPool(2)) == 0
