"""PyTorch kernel storage order: same values and outputs, no per-call kernel copy."""

import keras
import numpy as np
import pytest

from keras_retinanet import RetinaNet

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="kernel storage order is a PyTorch concern"
)


def _model(data_format, seed=0):
    keras.utils.set_random_seed(seed)
    model = RetinaNet(num_classes=3, backbone="compact", data_format=data_format)
    shape = (1, 64, 64, 3) if data_format == "channels_last" else (1, 3, 64, 64)
    model.build(shape)
    return model, shape


def _images(shape, seed=0):
    return np.random.default_rng(seed).normal(0, 50, shape).astype("float32")


@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
def test_every_conv_kernel_is_stored_in_torch_order(data_format):
    from keras_retinanet.fast._layers import plain_conv2d_layers as _conv2d_layers
    from keras_retinanet.fast._torch import kernel_is_torch_ordered

    model, _ = _model(data_format)
    layers = list(_conv2d_layers(model))
    assert len(layers) > 20  # backbone, pyramid and both heads
    assert all(kernel_is_torch_ordered(layer) for layer in layers)
    for layer in layers:  # the Keras-visible shape is still [kh, kw, in, out]
        assert tuple(layer.kernel.shape) == tuple(layer.kernel.value.shape)
        assert layer.kernel.shape[-1] == layer.filters


@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
def test_outputs_are_bit_identical_to_hwio_storage(data_format):
    from keras_retinanet.fast._layers import plain_conv2d_layers as _conv2d_layers

    model, shape = _model(data_format)
    x = _images(shape)
    ordered = keras.ops.convert_to_numpy(model(x))
    for layer in _conv2d_layers(model):  # back to plain contiguous [kh, kw, in, out]
        layer.kernel.value.data = layer.kernel.value.data.contiguous()
    plain = keras.ops.convert_to_numpy(model(x))
    np.testing.assert_array_equal(ordered, plain)


def test_values_survive_store_save_load_and_training(tmp_path):
    from keras_retinanet.fast._layers import plain_conv2d_layers as _conv2d_layers
    from keras_retinanet.fast._torch import kernel_is_torch_ordered, store_kernels_for_torch

    model, shape = _model("channels_first")
    before = [keras.ops.convert_to_numpy(w) for w in model.weights]
    assert store_kernels_for_torch(model) > 20  # again: values unchanged
    after = [keras.ops.convert_to_numpy(w) for w in model.weights]
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)

    path = tmp_path / "m.weights.h5"
    model.save_weights(path)
    other, _ = _model("channels_first", seed=5)
    other.load_weights(path)  # assigns in place: values arrive, layout stays
    assert all(kernel_is_torch_ordered(layer) for layer in _conv2d_layers(other))
    x = _images(shape)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(other(x)), keras.ops.convert_to_numpy(model(x))
    )

    model.compile(optimizer=keras.optimizers.SGD(0.01))
    y = {"boxes": np.array([[[4, 4, 40, 40]]], "float32"), "classes": np.array([[1]], "int32")}
    first = model.train_on_batch(x, y)
    second = model.train_on_batch(x, y)
    assert np.isfinite(first) and np.isfinite(second) and second != first
    assert all(kernel_is_torch_ordered(layer) for layer in _conv2d_layers(model))

    saved = tmp_path / "m.keras"
    model.save(saved)
    loaded = keras.saving.load_model(saved)
    assert all(kernel_is_torch_ordered(layer) for layer in _conv2d_layers(loaded))
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x))
    )
