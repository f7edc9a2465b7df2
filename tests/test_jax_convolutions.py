"""JAX convolutions rewritten for XLA:CPU: same outputs and gradients as Keras' convolution."""

import keras
import numpy as np
import pytest

from keras_retinanet import RetinaNet
from keras_retinanet._keras_internals import sublayers

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="the convolution rewrite is a JAX concern"
)

# (kernel, strides, padding, in channels, out channels): every kind RetinaNet uses (1x1 and
# strided 1x1 projections, 3x3, the 7x7/2 stem, a wide head output) and valid padding and
# strided 3x3 kernels on sizes that do not divide, whose per-tap windows end early. Kernel
# gradients take one product per kernel row below ROW_AT_ONCE_BELOW_CHANNELS (16) input
# channels and one per tap from there on: both kinds are here.
CASES = [
    (1, 1, "same", 6, 5),
    (1, 2, "valid", 6, 5),
    (1, 2, "same", 5, 7),
    (3, 1, "same", 4, 300),
    (3, 2, "same", 4, 6),
    (3, 2, "valid", 3, 5),
    (7, 2, "same", 3, 8),
    (3, 1, "same", 16, 5),
    (3, 2, "valid", 17, 4),
]


def _layer_pair(kernel, strides, padding, out_channels, data_format, input_shape):
    from keras_retinanet.fast._jax_convolution import use_fast_convolutions

    keras_conv = keras.layers.Conv2D(
        out_channels, kernel, strides=strides, padding=padding, data_format=data_format
    )
    keras_conv.build(input_shape)
    fast = keras.layers.Conv2D.from_config(keras_conv.get_config())
    fast.build(input_shape)
    fast.set_weights(keras_conv.get_weights())
    assert use_fast_convolutions(fast) == 1
    return keras_conv, fast


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("kernel,strides,padding,cin,cout", CASES)
def test_outputs_and_gradients_match_keras_convolution(
    kernel, strides, padding, cin, cout, data_format
):
    import jax
    import jax.numpy as jnp

    shape = (2, 11, 10, cin) if data_format == "channels_last" else (2, cin, 11, 10)
    keras_conv, fast = _layer_pair(kernel, strides, padding, cout, data_format, shape)
    rng = np.random.default_rng(kernel * 10 + strides)
    x = jnp.asarray(rng.normal(size=shape).astype("float32"))
    expected = np.asarray(keras_conv(x))
    got = np.asarray(fast(x))
    assert got.shape == expected.shape
    if kernel == 1:  # a matrix product: the same sums in another order
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    else:  # the same XLA convolution (only its kernel gradient is computed another way)
        np.testing.assert_array_equal(got, expected)

    weights = rng.normal(size=expected.shape).astype("float32")

    def loss(layer):
        def f(kernel_value, inputs):
            return jnp.sum(layer.convolution_op(inputs, kernel_value) * weights)

        return f

    grad_keras = jax.grad(loss(keras_conv), argnums=(0, 1))(keras_conv.kernel.value, x)
    grad_fast = jax.grad(loss(fast), argnums=(0, 1))(fast.kernel.value, x)
    for a, b in zip(grad_fast, grad_keras, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


def test_every_plain_conv_of_retinanet_is_rewritten():
    from keras_retinanet.fast._jax_convolution import _FastConvolution

    keras.utils.set_random_seed(0)
    model = RetinaNet(num_classes=3, backbone="resnet50")
    model.build((1, 64, 64, 3))
    convs = [layer for layer in sublayers(model) if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == 53 + 8 + 10  # ResNet50, pyramid, two heads of 5
    assert all(isinstance(vars(c).get("convolution_op"), _FastConvolution) for c in convs)


def test_dilated_grouped_and_custom_convolutions_are_left_alone():
    from keras_retinanet.fast._jax_convolution import use_fast_convolutions

    class OwnConvolution(keras.layers.Conv2D):
        def convolution_op(self, inputs, kernel):
            return super().convolution_op(inputs, kernel) * 2.0

    inputs = keras.Input((16, 16, 4))
    x = keras.layers.Conv2D(4, 3, dilation_rate=2, padding="same")(inputs)
    x = keras.layers.Conv2D(4, 3, groups=2, padding="same")(x)
    x = OwnConvolution(4, 1)(x)
    x = keras.layers.Conv2D(4, 1)(x)  # the only plain one
    model = keras.Model(inputs, x)
    assert use_fast_convolutions(model) == 1
    own = model.layers[3]
    assert "convolution_op" not in vars(own)
    assert use_fast_convolutions(model) == 1  # again: idempotent


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_model_outputs_and_a_train_step_match_keras_convolution(data_format, tmp_path):
    keras.utils.set_random_seed(0)
    model = RetinaNet(
        num_classes=3, backbone="compact", fpn_filters=32, head_convs=1, data_format=data_format
    )
    shape = (2, 64, 64, 3) if data_format == "channels_last" else (2, 3, 64, 64)
    model.build(shape)
    reference = RetinaNet.from_config(model.get_config())
    reference.build(shape)
    reference.set_weights(model.get_weights())
    for layer in sublayers(reference):
        vars(layer).pop("convolution_op", None)  # back to Keras' convolution

    x = np.random.default_rng(1).normal(0, 50, shape).astype("float32")
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(reference(x)), rtol=1e-4, atol=1e-4)
    y = {
        "boxes": np.array([[[4, 4, 40, 40]], [[10, 12, 60, 50]]], "float32"),
        "classes": np.array([[1], [2]], "int32"),
    }
    for m in (model, reference):
        m.compile(optimizer=keras.optimizers.SGD(0.01))
    losses = [(model.train_on_batch(x, y), reference.train_on_batch(x, y)) for _ in range(2)]
    np.testing.assert_allclose(np.array(losses)[:, 0], np.array(losses)[:, 1], rtol=1e-4)
    for a, b in zip(model.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)

    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert any("convolution_op" in vars(layer) for layer in sublayers(loaded))
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel,cout", [(1, 5), (3, 300)])
def test_forward_mode_autodiff_and_vmap_work(kernel, cout):
    import jax
    import jax.numpy as jnp

    shape = (2, 9, 8, 4)
    keras_conv, fast = _layer_pair(kernel, 1, "same", cout, "channels_last", shape)
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=shape).astype("float32"))
    tangent = jnp.asarray(rng.normal(size=shape).astype("float32"))
    kernel_value = fast.kernel.value
    _, got = jax.jvp(lambda v: fast.convolution_op(v, kernel_value), (x,), (tangent,))
    _, expected = jax.jvp(lambda v: keras_conv.convolution_op(v, kernel_value), (x,), (tangent,))
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-4, atol=1e-4)
    per_image = jax.vmap(lambda v: fast.convolution_op(v[None], kernel_value)[0])(x)
    np.testing.assert_allclose(
        np.asarray(per_image), np.asarray(keras_conv(x)), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("cin,products", [(4, 3), (16, 9)])
def test_kernel_gradient_on_cpu_is_tap_products_not_a_convolution(cin, products):
    # XLA:CPU's kernel-gradient convolution is several times slower than the forward one; the
    # rewrite's kernel gradient has one matrix product per tap (one per kernel row for thin
    # inputs) and no second convolution.
    import jax
    import jax.numpy as jnp

    from keras_retinanet.fast._jax_convolution import ROW_AT_ONCE_BELOW_CHANNELS

    if jax.default_backend() != "cpu":
        pytest.skip("the tap products are used on CPU only")
    assert (cin < ROW_AT_ONCE_BELOW_CHANNELS) == (products == 3)
    shape = (2, 9, 8, cin)
    keras_conv, fast = _layer_pair(3, 1, "same", 6, "channels_last", shape)
    x = jnp.ones(shape, "float32")

    def program(layer):
        loss = lambda k: jnp.sum(layer.convolution_op(x, k) ** 2)  # noqa: E731
        return str(jax.make_jaxpr(jax.grad(loss))(layer.kernel.value))

    assert program(keras_conv).count("conv_general_dilated") == 2  # forward + kernel gradient
    fast_program = program(fast)
    assert fast_program.count("conv_general_dilated") == 1  # the forward only
    # Reverse mode keeps only the transposed products: one per tap (or per row).
    assert fast_program.count("dot_general") == products
