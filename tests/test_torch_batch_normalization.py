"""Batch normalization trained with torch's own kernel (keras_retinanet.fast._torch), PyTorch."""

import keras
import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="torch's batch normalization: PyTorch"
)


def _pair(axis, center, scale, shape, seed=0, dtype=None):
    """Two built ``BatchNormalization`` layers with the same non-trivial variables; the first
    with the torch training path."""
    from keras_retinanet.fast._torch import use_torch_batch_normalization

    rng = np.random.default_rng(seed)
    layers = []
    for _ in range(2):
        layer = keras.layers.BatchNormalization(
            axis=axis, center=center, scale=scale, momentum=0.9, epsilon=1e-3, dtype=dtype
        )
        layer.build(shape)
        layers.append(layer)
    values = [rng.uniform(0.5, 2.0, v.shape).astype("float32") for v in layers[0].weights]
    for layer in layers:
        layer.set_weights(values)
    assert use_torch_batch_normalization([layers[0]]) == 1
    return layers


def _grads(layer, x, upstream):
    import torch

    x = torch.tensor(x, requires_grad=True)
    out = layer(x, training=True)
    (out * torch.as_tensor(upstream)).sum().backward()
    params = [v.value.grad.numpy().copy() for v in layer.trainable_weights]
    for v in layer.trainable_weights:
        v.value.grad = None
    return out.detach().numpy(), x.grad.numpy(), params


@pytest.mark.parametrize("center,scale", [(True, True), (False, False)])
@pytest.mark.parametrize(
    "axis,shape", [(-1, (3, 5, 6, 8)), (1, (3, 8, 5, 6)), (-1, (7, 4))], ids=["nhwc", "nchw", "2d"]
)
def test_training_matches_keras_outputs_gradients_and_moving_statistics(axis, shape, center, scale):
    fast, plain = _pair(axis, center, scale, shape)
    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 2.0, shape).astype("float32")
    upstream = rng.normal(size=shape).astype("float32")
    got, want = _grads(fast, x, upstream), _grads(plain, x, upstream)
    # Outputs and gradients: the same values summed in another order.
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-4, atol=1e-5)
    assert len(got[2]) == len(want[2]) == (2 if center else 0)
    for g, w in zip(got[2], want[2], strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
    # Keras' moving averages of the batch mean and the *biased* variance.
    for a, b in zip(fast.non_trainable_weights, plain.non_trainable_weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
    assert not np.allclose(fast.moving_mean.numpy(), np.full(fast.moving_mean.shape, 0.0))


def test_inference_and_unusual_calls_run_keras_own_call():
    import torch

    fast, plain = _pair(-1, True, True, (2, 3, 3, 4))
    x = np.random.default_rng(2).normal(size=(2, 3, 3, 4)).astype("float32")
    # Inference: Keras' call, bit-identical.
    np.testing.assert_array_equal(
        fast(x, training=False).detach().numpy(), plain(x, training=False).detach().numpy()
    )
    # One value per channel: torch's kernel refuses it, Keras gives variance 0.
    one = x[:1, :1, :1]
    np.testing.assert_array_equal(
        fast(one, training=True).detach().numpy(), plain(one, training=True).detach().numpy()
    )
    # Mixed precision (float16 compute): Keras' call, which computes in float32 and casts.
    fast16, plain16 = _pair(-1, True, True, (2, 3, 3, 4), dtype="mixed_float16")
    half = torch.tensor(x, dtype=torch.float16)
    np.testing.assert_array_equal(
        fast16(half, training=True).detach().numpy(), plain16(half, training=True).detach().numpy()
    )
    # A frozen layer normalises with its moving statistics even when training.
    fast.trainable = plain.trainable = False
    np.testing.assert_array_equal(
        fast(x, training=True).detach().numpy(), plain(x, training=True).detach().numpy()
    )


def test_retinanet_trains_like_the_keras_paths():
    from keras_retinanet import RetinaNet

    shape = (2, 64, 64, 3)
    models = []
    for fast_paths in (True, False):
        keras.utils.set_random_seed(0)
        model = RetinaNet(
            3, backbone="compact", fpn_filters=16, head_convs=1, fast_paths=fast_paths
        )
        model.build(shape)
        model.compile(optimizer=keras.optimizers.SGD(0.01))
        models.append(model)
    models[1].set_weights(models[0].get_weights())
    assert models[0].fast_paths_applied.get("torch_batch_normalization", 0) > 0
    rng = np.random.default_rng(3)
    x = rng.normal(0, 50, shape).astype("float32")
    y = {
        "boxes": np.array([[[4, 4, 40, 40]], [[10, 20, 30, 60]]], "float32"),
        "classes": np.array([[1], [2]], "int32"),
    }
    for _ in range(2):
        losses = [float(m.train_on_batch(x, y)) for m in models]
        np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
    for a, b in zip(models[0].weights, models[1].weights, strict=True):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), rtol=1e-4, atol=1e-6
        )
