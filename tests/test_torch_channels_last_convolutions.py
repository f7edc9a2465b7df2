"""PyTorch channels_last convolutions without Keras' two input copies: bit-identical outputs
and gradients against Keras' own torch convolution."""

import keras
import numpy as np
import pytest

from keras_retinanet import RetinaNet

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="the channels_last copies are a PyTorch concern"
)

# (kernel, strides, padding, input H x W): 1x1 and 3x3 at stride 1 and 2; "same" with even
# (symmetric) and uneven (bottom/right) padding, a 2x2 kernel (always uneven), non-square
# strides and kernels, odd sizes, and "valid".
CASES = [
    ((1, 1), (1, 1), "same", (9, 12)),
    ((1, 1), (2, 2), "valid", (9, 12)),
    ((3, 3), (1, 1), "same", (9, 12)),
    ((3, 3), (2, 2), "same", (16, 16)),
    ((3, 3), (2, 2), "same", (15, 17)),
    ((2, 2), (1, 1), "same", (8, 8)),
    ((3, 5), (1, 2), "same", (10, 11)),
    ((7, 7), (2, 2), "valid", (21, 20)),
    ((3, 3), (2, 1), "valid", (12, 9)),
]


def _conv(kernel_size, strides, padding, fast):
    from keras_retinanet.backends._torch import use_channels_last_convolutions

    keras.utils.set_random_seed(3)
    layer = keras.layers.Conv2D(
        6, kernel_size, strides=strides, padding=padding, data_format="channels_last"
    )
    layer.build((2, None, None, 5))
    if fast:
        assert use_channels_last_convolutions(layer) == 1
    return layer


def _value_and_grads(layer, x):
    import torch

    x = torch.tensor(x, requires_grad=True)
    y = layer(x)
    (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
    kernel = layer.kernel.value
    grads = x.grad.numpy(), kernel.grad.numpy()
    kernel.grad = None
    return y.detach().numpy(), grads


@pytest.mark.parametrize("kernel_size, strides, padding, size", CASES)
def test_outputs_and_gradients_are_bit_identical_to_keras(kernel_size, strides, padding, size):
    x = np.random.default_rng(0).normal(size=(2, *size, 5)).astype("float32")
    fast_y, fast_grads = _value_and_grads(_conv(kernel_size, strides, padding, True), x)
    keras_y, keras_grads = _value_and_grads(_conv(kernel_size, strides, padding, False), x)
    assert fast_y.shape == keras_y.shape
    np.testing.assert_array_equal(fast_y, keras_y)
    for fast, reference in zip(fast_grads, keras_grads, strict=True):
        np.testing.assert_array_equal(fast, reference)


def test_non_contiguous_input_gives_the_same_outputs():
    x = np.random.default_rng(1).normal(size=(2, 5, 11, 9)).astype("float32")
    import torch

    view = torch.tensor(x).permute(0, 2, 3, 1)  # [2, 11, 9, 5], not contiguous
    expected = keras.ops.convert_to_numpy(_conv((3, 3), (2, 2), "same", False)(view))
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(_conv((3, 3), (2, 2), "same", True)(view)), expected
    )


def test_only_plain_channels_last_layers_change():
    from keras_retinanet.backends._torch import (
        _ChannelsLastConvolution,
        use_channels_last_convolutions,
    )

    inputs = keras.Input((16, 16, 4))
    plain = keras.layers.Conv2D(4, 3, padding="same")
    dilated = keras.layers.Conv2D(4, 3, padding="same", dilation_rate=2)
    grouped = keras.layers.Conv2D(4, 3, padding="same", groups=2)
    model = keras.Model(inputs, grouped(dilated(plain(inputs))))
    assert use_channels_last_convolutions(model) == 1
    assert isinstance(vars(plain)["convolution_op"], _ChannelsLastConvolution)
    assert "convolution_op" not in vars(dilated) and "convolution_op" not in vars(grouped)
    assert use_channels_last_convolutions(model) == 1  # again: replaces its own, nothing else

    first = keras.Input((4, 16, 16))
    channels_first = keras.layers.Conv2D(4, 3, padding="same", data_format="channels_first")
    assert use_channels_last_convolutions(keras.Model(first, channels_first(first))) == 0


def _model(fast, seed=0):
    from keras_retinanet.backends import _torch

    keras.utils.set_random_seed(seed)
    model = RetinaNet(num_classes=3, backbone="compact")
    if fast:
        model.build((2, 64, 64, 3))
    else:  # the same model with Keras' convolution everywhere
        original = _torch.use_channels_last_convolutions
        _torch.use_channels_last_convolutions = lambda model: 0
        try:
            model.build((2, 64, 64, 3))
        finally:
            _torch.use_channels_last_convolutions = original
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    return model


def test_retinanet_outputs_training_and_keras_file_match_keras_convolutions(tmp_path):
    from keras_retinanet.backends._torch import _ChannelsLastConvolution

    fast, plain = _model(True), _model(False)
    layers = [layer for layer in fast._flatten_layers() if isinstance(layer, keras.layers.Conv2D)]
    assert len(layers) > 20
    assert all(
        isinstance(vars(la).get("convolution_op"), _ChannelsLastConvolution) for la in layers
    )
    assert not any("convolution_op" in vars(layer) for layer in plain._flatten_layers())

    x = np.random.default_rng(2).normal(0, 50, (2, 64, 64, 3)).astype("float32")
    y = {
        "boxes": np.array([[[4, 4, 40, 40]], [[10, 20, 30, 60]]], "float32"),
        "classes": np.array([[1], [2]], "int32"),
    }
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(fast(x)), keras.ops.convert_to_numpy(plain(x))
    )
    for _ in range(2):
        assert fast.train_on_batch(x, y) == plain.train_on_batch(x, y)
    for a, b in zip(fast.weights, plain.weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))

    path = tmp_path / "fast.keras"
    fast.save(path)
    loaded = keras.saving.load_model(path)
    assert any(
        isinstance(vars(layer).get("convolution_op"), _ChannelsLastConvolution)
        for layer in loaded._flatten_layers()
    )
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(fast(x))
    )
