"""PyTorch convolutions on the input as it lies in memory (no copies for channels_last) and
the torch-written eager inference of Conv2D, BatchNormalization and ReLU: bit-identical
outputs and gradients against Keras' own torch path."""

import keras
import numpy as np
import pytest

from keras_retinanet import RetinaNet
from keras_retinanet._keras_internals import sublayers

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="PyTorch's own convolution and inference path"
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


LAYOUTS = ["channels_last", "channels_first"]


def _to_layout(x, data_format):
    """``[N, H, W, C]`` array -> the layer's layout."""
    return x if data_format == "channels_last" else np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _conv(kernel_size, strides, padding, fast, data_format="channels_last"):
    from keras_retinanet.fast._torch import use_torch_convolutions

    keras.utils.set_random_seed(3)
    layer = keras.layers.Conv2D(
        6, kernel_size, strides=strides, padding=padding, data_format=data_format
    )
    layer.build((2, None, None, 5) if data_format == "channels_last" else (2, 5, None, None))
    if fast:
        assert use_torch_convolutions(layer) == 1
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


@pytest.mark.parametrize("data_format", LAYOUTS)
@pytest.mark.parametrize("kernel_size, strides, padding, size", CASES)
def test_outputs_and_gradients_are_bit_identical_to_keras(
    kernel_size, strides, padding, size, data_format
):
    x = np.random.default_rng(0).normal(size=(2, *size, 5)).astype("float32")
    x = _to_layout(x, data_format)
    fast = _conv(kernel_size, strides, padding, True, data_format)
    plain = _conv(kernel_size, strides, padding, False, data_format)
    fast_y, fast_grads = _value_and_grads(fast, x)
    keras_y, keras_grads = _value_and_grads(plain, x)
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


def test_only_plain_undilated_ungrouped_layers_change():
    from keras_retinanet.fast._torch import (
        _Convolution,
        use_torch_convolutions,
    )

    inputs = keras.Input((16, 16, 4))
    plain = keras.layers.Conv2D(4, 3, padding="same")
    dilated = keras.layers.Conv2D(4, 3, padding="same", dilation_rate=2)
    grouped = keras.layers.Conv2D(4, 3, padding="same", groups=2)
    model = keras.Model(inputs, grouped(dilated(plain(inputs))))
    assert use_torch_convolutions(model) == 1
    assert isinstance(vars(plain)["convolution_op"], _Convolution)
    assert "convolution_op" not in vars(dilated) and "convolution_op" not in vars(grouped)
    assert use_torch_convolutions(model) == 1  # again: replaces its own, nothing else

    first = keras.Input((4, 16, 16))
    channels_first = keras.layers.Conv2D(4, 3, padding="same", data_format="channels_first")
    assert use_torch_convolutions(keras.Model(first, channels_first(first))) == 1


def _model(fast, seed=0, data_format="channels_last"):
    from keras_retinanet.fast import _torch

    keras.utils.set_random_seed(seed)
    model = RetinaNet(num_classes=3, backbone="compact", data_format=data_format)
    shape = (2, 64, 64, 3) if data_format == "channels_last" else (2, 3, 64, 64)
    if fast:
        model.build(shape)
    else:  # the same model with Keras' convolution everywhere
        original = _torch.use_torch_convolutions
        _torch.use_torch_convolutions = lambda model: 0
        try:
            model.build(shape)
        finally:
            _torch.use_torch_convolutions = original
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    return model


@pytest.mark.parametrize("data_format", LAYOUTS)
def test_retinanet_outputs_training_and_keras_file_match_keras_convolutions(tmp_path, data_format):
    from keras_retinanet.fast._torch import _Convolution

    fast, plain = _model(True, data_format=data_format), _model(False, data_format=data_format)
    layers = [layer for layer in sublayers(fast) if isinstance(layer, keras.layers.Conv2D)]
    assert len(layers) > 20
    assert all(isinstance(vars(la).get("convolution_op"), _Convolution) for la in layers)
    assert not any("convolution_op" in vars(layer) for layer in sublayers(plain))

    x = _to_layout(np.random.default_rng(2).normal(0, 50, (2, 64, 64, 3)), data_format)
    x = x.astype("float32")
    y = {
        "boxes": np.array([[[4, 4, 40, 40]], [[10, 20, 30, 60]]], "float32"),
        "classes": np.array([[1], [2]], "int32"),
    }
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(fast(x)), keras.ops.convert_to_numpy(plain(x))
    )
    # Training adds the bias inside the convolution (``_conv2d_training``): the same values up
    # to float rounding, where inference above is bit-identical.
    for _ in range(2):
        np.testing.assert_allclose(fast.train_on_batch(x, y), plain.train_on_batch(x, y), rtol=1e-5)
    for a, b in zip(fast.weights, plain.weights, strict=True):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), rtol=1e-5, atol=1e-7
        )

    path = tmp_path / "fast.keras"
    fast.save(path)
    loaded = keras.saving.load_model(path)
    assert any(
        isinstance(vars(layer).get("convolution_op"), _Convolution) for layer in sublayers(loaded)
    )
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(fast(x))
    )


def _inference_layers():
    """``(layer, [N, H, W, C]-ordered input shape)`` for every kind ``inference_function``
    writes with torch ops, built with non-trivial variables."""
    rng = np.random.default_rng(5)
    cases = []
    for data_format in LAYOUTS:
        for kwargs in (
            {"kernel_size": 3, "padding": "same"},
            {"kernel_size": 3, "strides": 2, "padding": "same", "activation": "relu"},
            {"kernel_size": 1, "use_bias": False},
        ):
            cases.append((keras.layers.Conv2D(4, data_format=data_format, **kwargs), data_format))
    for axis, data_format in ((-1, "channels_last"), (1, "channels_first")):
        for center, scale in ((True, True), (False, False)):
            cases.append(
                (
                    keras.layers.BatchNormalization(axis=axis, center=center, scale=scale),
                    data_format,
                )
            )
    cases.append((keras.layers.Activation("relu"), "channels_last"))
    built = []
    for layer, data_format in cases:
        shape = (2, 7, 9, 5) if data_format == "channels_last" else (2, 5, 7, 9)
        layer.build(shape)
        for variable in layer.weights:  # moving statistics and biases away from 0 and 1
            values = rng.uniform(0.5, 1.5, variable.shape).astype("float32")
            variable.assign(values)
        if isinstance(layer, keras.layers.Conv2D):
            from keras_retinanet.fast import apply_fast_paths

            apply_fast_paths(layer)
        built.append((layer, shape))
    return built


def test_inference_functions_are_bit_identical_to_layer_call():
    import torch

    from keras_retinanet.fast._torch import inference_function

    layers = _inference_layers()
    assert len(layers) == 11
    for layer, shape in layers:
        function = inference_function(layer)
        assert function is not None, layer
        x = torch.tensor(np.random.default_rng(6).normal(0, 3, shape).astype("float32"))
        expected = layer(x, training=False)
        with torch.no_grad():
            got = function(layer, x, training=False)
        assert got.shape == expected.shape
        np.testing.assert_array_equal(got.numpy(), expected.detach().numpy(), err_msg=str(layer))


def test_inference_functions_cover_only_what_they_rewrite():
    from keras_retinanet.fast._torch import inference_function, use_torch_convolutions

    keras_conv = keras.layers.Conv2D(4, 3)  # Keras' convolution, not this package's
    keras_conv.build((1, 8, 8, 3))
    sigmoid = keras.layers.Activation("sigmoid")
    assert inference_function(keras_conv) is None
    assert inference_function(sigmoid) is None
    assert inference_function(keras.layers.Add()) is None
    lora = keras.layers.Conv2D(4, 3)  # kernel computed per call once LoRA is on
    lora.build((1, 8, 8, 3))
    use_torch_convolutions(lora)
    assert inference_function(lora) is not None
    lora.enable_lora(2)
    assert inference_function(lora) is None


def test_direct_inference_gradients_match_layer_calls(monkeypatch):
    """``model(x, training=False)`` outside ``torch.no_grad`` (saliency, attacks): the in-place
    bias and normalisation steps keep the outputs identical and autograd's input gradients
    equal up to float rounding (torch's CPU convolution backward is not bit-reproducible from
    one call to the next, whichever path runs)."""
    import torch

    from keras_retinanet.fast import graph_runner

    keras.utils.set_random_seed(4)
    model = RetinaNet(num_classes=3, backbone="resnet50")
    model.build((1, 64, 64, 3))
    x = np.random.default_rng(3).normal(0, 50, (1, 64, 64, 3)).astype("float32")

    def input_gradient():
        images = torch.tensor(x, requires_grad=True)
        outputs = model(images, training=False)
        (outputs * torch.linspace(-1, 1, outputs.numel()).reshape(outputs.shape)).sum().backward()
        return outputs.detach().numpy(), images.grad.numpy()

    direct_y, direct_grad = input_gradient()
    monkeypatch.setattr(graph_runner, "_eager_mode", lambda inputs, training: None)
    plain_y, plain_grad = input_gradient()
    np.testing.assert_array_equal(direct_y, plain_y)
    scale = float(np.abs(plain_grad).max())
    assert scale > 0
    np.testing.assert_allclose(direct_grad, plain_grad, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("data_format", LAYOUTS)
def test_strided_pointwise_training_matches_keras_outputs_and_gradients(data_format, padding):
    import torch

    from keras_retinanet.fast._torch import use_torch_convolutions

    outputs, grads = [], []
    for fast in (True, False):
        keras.utils.set_random_seed(4)
        shape = (33, 32, 6) if data_format == "channels_last" else (6, 33, 32)
        inputs = keras.Input(shape)
        conv = keras.layers.Conv2D(5, 1, strides=2, padding=padding, data_format=data_format)
        model = keras.Model(inputs, conv(inputs))
        if fast:
            assert use_torch_convolutions(model) == 1
        x = torch.tensor(np.random.default_rng(0).normal(size=(2, *shape)), dtype=torch.float32)
        x.requires_grad_(True)
        y = model(x, training=True)
        (y * y).sum().backward()
        outputs.append(y.detach().numpy())
        grads.append([x.grad.numpy()] + [v.value.grad.numpy() for v in model.trainable_weights])
    assert outputs[0].shape == outputs[1].shape
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
    for g, e in zip(grads[0], grads[1], strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-4)
