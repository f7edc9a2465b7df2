"""JAX batch normalization with a closed-form gradient: Keras' outputs, moving averages and
(to float rounding) gradients."""

import keras
import numpy as np
import pytest

from keras_retinanet._keras_internals import sublayers

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="the batch-norm rewrite is a JAX concern"
)


def _pair(shape, **kwargs):
    from keras_retinanet.fast._jax_normalization import use_fast_batch_normalization

    keras_bn = keras.layers.BatchNormalization(**kwargs)
    keras_bn.build(shape)
    rng = np.random.default_rng(1)
    for variable in keras_bn.weights:  # statistics and affine terms away from 0 and 1
        variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype("float32"))
    fast = keras.layers.BatchNormalization.from_config(keras_bn.get_config())
    fast.build(shape)
    fast.set_weights(keras_bn.get_weights())
    assert use_fast_batch_normalization(fast) == 1
    return keras_bn, fast


def _train_call(layer, x):
    """Outputs, new moving statistics, and gradients of ``sum(outputs * weights)`` in the
    input and the trainable variables, through ``stateless_call`` as a Keras JAX train step."""
    import jax
    import jax.numpy as jnp

    weights = jnp.asarray(np.random.default_rng(2).normal(size=x.shape).astype("float32"))
    trainable = [v.value for v in layer.trainable_variables]
    non_trainable = [v.value for v in layer.non_trainable_variables]

    def loss(trainable, x):
        outputs, updated = layer.stateless_call(trainable, non_trainable, x, training=True)
        return jnp.sum(outputs * weights), (outputs, updated)

    grads, (outputs, updated) = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))(trainable, x)
    return (
        np.asarray(outputs),
        [np.asarray(v) for v in updated],
        [np.asarray(g) for g in (*grads[0], grads[1])],
    )


@pytest.mark.parametrize(
    "shape,kwargs",
    [
        ((2, 5, 6, 7), {}),
        ((2, 7, 5, 6), {"axis": 1}),
        ((3, 4, 5, 6), {"center": False}),
        ((3, 4, 5, 6), {"scale": False, "momentum": 0.9, "epsilon": 1e-5}),
        ((4, 9), {}),
    ],
)
def test_training_matches_keras(shape, kwargs):
    import jax.numpy as jnp

    keras_bn, fast = _pair(shape, **kwargs)
    rng = np.random.default_rng(sum(shape))
    x = jnp.asarray(rng.normal(3.0, 2.0, shape).astype("float32"))
    expected = _train_call(keras_bn, x)
    got = _train_call(fast, x)
    np.testing.assert_array_equal(got[0], expected[0])  # the same forward computation
    assert len(got[1]) == len(expected[1])
    for new, old in zip(got[1], expected[1], strict=True):
        np.testing.assert_array_equal(new, old)  # the same moving averages
    assert len(got[2]) == len(expected[2])
    for new, old in zip(got[2], expected[2], strict=True):
        scale = np.abs(old).max()
        np.testing.assert_allclose(new, old, rtol=0, atol=2e-6 * scale)


def test_statistics_gradients_and_vmap():
    """Gradients that flow into the returned mean and variance, and batching with vmap."""
    import jax
    import jax.numpy as jnp

    from keras_retinanet.fast._jax_normalization import normalize_batch

    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(1.0, 3.0, (2, 4, 4, 5)).astype("float32"))
    gamma = jnp.asarray(rng.uniform(0.5, 1.5, 5).astype("float32"))
    beta = jnp.asarray(rng.normal(size=5).astype("float32"))

    def reference(x, gamma, beta):
        mean, variance = keras.ops.moments(x, (0, 1, 2))
        outputs = keras.ops.batch_normalization(
            x, mean, variance, 3, offset=beta, scale=gamma, epsilon=1e-3
        )
        return outputs, mean, variance

    cotangents = (
        jnp.asarray(rng.normal(size=x.shape).astype("float32")),
        jnp.asarray(rng.normal(size=5).astype("float32")),
        jnp.asarray(rng.normal(size=5).astype("float32")),
    )
    expected = jax.vjp(reference, x, gamma, beta)[1](cotangents)
    got = jax.vjp(lambda *a: normalize_batch(*a, 3, 1e-3), x, gamma, beta)[1](cotangents)
    for new, old in zip(got, expected, strict=True):
        np.testing.assert_allclose(np.asarray(new), np.asarray(old), rtol=1e-5, atol=1e-5)
    batched = jax.vmap(lambda x: normalize_batch(x, gamma, beta, 3, 1e-3)[0])(jnp.stack([x, 2 * x]))
    np.testing.assert_array_equal(np.asarray(batched[0]), np.asarray(reference(x, gamma, beta)[0]))


def test_inference_and_frozen_layers_use_keras_path():
    import jax.numpy as jnp

    shape = (2, 3, 3, 4)
    keras_bn, fast = _pair(shape)
    x = jnp.asarray(np.random.default_rng(5).normal(size=shape).astype("float32"))
    np.testing.assert_array_equal(np.asarray(fast(x)), np.asarray(keras_bn(x)))
    fast.trainable = keras_bn.trainable = False
    np.testing.assert_array_equal(
        np.asarray(fast(x, training=True)), np.asarray(keras_bn(x, training=True))
    )
    np.testing.assert_array_equal(fast.moving_mean.numpy(), keras_bn.moving_mean.numpy())


def test_mixed_precision_matches_keras():
    import jax.numpy as jnp

    shape = (2, 4, 4, 3)
    keras_bn, fast = _pair(shape, dtype="mixed_float16")
    x = jnp.asarray(np.random.default_rng(6).normal(size=shape).astype("float16"))
    expected, got = keras_bn(x, training=True), fast(x, training=True)
    assert got.dtype == expected.dtype == jnp.float16
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
    np.testing.assert_array_equal(fast.moving_variance.numpy(), keras_bn.moving_variance.numpy())


def test_retinanet_layers_are_replaced_once_and_subclasses_are_left_alone():
    from keras_retinanet import RetinaNet
    from keras_retinanet.fast._jax_normalization import (
        _FastBatchNormalization,
        use_fast_batch_normalization,
    )

    model = RetinaNet(num_classes=3, backbone="resnet50")
    model.build((1, 64, 64, 3))
    norms = [
        layer for layer in sublayers(model) if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert len(norms) == 53
    assert all(isinstance(vars(n).get("call"), _FastBatchNormalization) for n in norms)
    assert use_fast_batch_normalization(model) == 53  # again: a fresh op each, no stacking

    class OwnNorm(keras.layers.BatchNormalization):
        def call(self, inputs, training=None, mask=None):
            return super().call(inputs, training=training, mask=mask)

    assert use_fast_batch_normalization(OwnNorm()) == 0
