"""The fast-path switch, ownership and device gating (``keras_retinanet.fast``/``config``)."""

import keras
import numpy as np
import pytest

from keras_retinanet import RetinaNet, config, fast
from keras_retinanet._keras_internals import sublayers

BACKEND = keras.backend.backend()
SHAPE = (1, 64, 96, 3)


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _images(seed=0):
    return np.random.default_rng(seed).normal(0, 40, SHAPE).astype("float32")


def _user_backbone():
    """A small functional backbone of the kinds of layers the fast paths change (convolutions,
    batch normalization, max pooling, ReLU, a residual sum), as a user would write one."""
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same")(x)
    y = keras.layers.Conv2D(8, 3, padding="same")(x)
    x = keras.layers.Add()([x, y])
    c3 = keras.layers.Conv2D(16, 1, strides=2)(x)
    c4 = keras.layers.Conv2D(16, 3, strides=2, padding="same")(c3)
    c5 = keras.layers.Conv2D(32, 3, strides=2, padding="same")(c4)
    return keras.Model(inputs, [c3, c4, c5], name="user_backbone")


def _small(**kwargs):
    return RetinaNet(num_classes=3, fpn_filters=16, head_convs=1, **kwargs)


def _kernel_layout(layer):
    """The memory layout of a convolution kernel: torch strides, else the shape (the other
    backends keep no layout of their own)."""
    value = layer.kernel.value
    return tuple(value.stride()) if BACKEND == "torch" else tuple(value.shape)


def _state(model):
    """Per layer: its instance-level method overrides and kernel layout."""
    return [
        (layer.name, tuple(k for k in ("call", "convolution_op") if k in vars(layer)))
        + ((_kernel_layout(layer),) if isinstance(layer, keras.layers.Conv2D) else ())
        for layer in sublayers(model)
    ]


def test_user_backbone_is_left_exactly_as_given():
    backbone = _user_backbone()
    x = _images()
    before_state = _state(backbone)
    before_outputs = [_numpy(t) for t in backbone(x)]
    model = _small(backbone=backbone)
    model(x)
    model.make_detector().predict(x, verbose=0)
    assert _state(backbone) == before_state
    assert all(state[1] == () for state in before_state)
    assert fast.layers_with_fast_paths(backbone) == []
    for got, expected in zip(backbone(x), before_outputs, strict=True):
        np.testing.assert_array_equal(_numpy(got), expected)
    # The model's own layers still get the fast paths (TensorFlow has none for channels_last
    # pyramids and heads).
    if BACKEND != "tensorflow":
        assert model.fast_paths_applied and fast.layers_with_fast_paths(model.fpn)


def test_fast_user_backbone_opts_the_users_model_in():
    backbone = _user_backbone()
    x = _images()
    expected = [_numpy(t) for t in backbone(x)]
    model = _small(backbone=backbone, fast_user_backbone=True)
    model(x)
    changed = dict(fast.layers_with_fast_paths(backbone))
    assert changed, "the opted-in backbone should carry fast paths"
    for got, want in zip(backbone(x), expected, strict=True):
        np.testing.assert_allclose(_numpy(got), want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("how", ["environment", "set_fast_paths", "argument"])
def test_switched_off_no_layer_has_a_replaced_method_and_outputs_match(monkeypatch, how):
    x = _images(1)
    default = _small(backbone="compact")
    default.build(SHAPE)
    assert fast.layers_with_fast_paths(default)
    kwargs = {}
    if how == "environment":
        monkeypatch.setenv(config.ENV_VAR, "0")
    elif how == "set_fast_paths":
        monkeypatch.setattr(config, "_override", None)
        config.set_fast_paths(False)
    else:
        kwargs["fast_paths"] = False
    plain = _small(backbone="compact", **kwargs)
    plain.build(SHAPE)
    plain.set_weights(default.get_weights())
    assert fast.layers_with_fast_paths(plain) == []
    assert plain.fast_paths_applied == {}
    for layer in sublayers(plain):
        assert "call" not in vars(layer) and "convolution_op" not in vars(layer), layer.name
    np.testing.assert_allclose(_numpy(plain(x)), _numpy(default(x)), rtol=1e-5, atol=1e-4)
    # A train step too (JAX's batch normalization and convolution gradients differ by rounding).
    y = np.zeros((1, default.anchor_generator.num_anchors(*SHAPE[1:3]), 5), "float32")
    y[..., 4] = -1.0
    for model in (default, plain):
        model.compile(optimizer=keras.optimizers.SGD(0.0))
    losses = [float(m.train_on_batch(x, y)) for m in (default, plain)]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)


def test_setting_is_read_when_the_model_is_built(monkeypatch):
    monkeypatch.setattr(config, "_override", None)
    model = _small(backbone="compact")
    with config.fast_paths(False):
        model.build(SHAPE)
    assert fast.layers_with_fast_paths(model) == []
    assert config.fast_paths_enabled()


def test_unknown_switch_value_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(config.ENV_VAR, "sometimes")
    with pytest.raises(ValueError, match="KERAS_RETINANET_FAST_PATHS"):
        _small(backbone="compact").build(SHAPE)
    with pytest.raises(ValueError, match="enabled"):
        config.set_fast_paths("off")
    with pytest.raises(ValueError, match="fast_paths"):
        _small(backbone="compact", fast_paths="yes")


def test_nothing_is_applied_when_the_variables_are_not_on_the_cpu(monkeypatch):
    monkeypatch.setattr(fast, "variable_device_kinds", lambda variables: {"gpu"})
    model = _small(backbone="compact")
    model.build(SHAPE)
    assert model.fast_paths_applied == {}
    assert fast.layers_with_fast_paths(model) == []


def test_variables_on_this_machine_are_reported_on_the_cpu():
    from keras_retinanet.backends import variable_device_kinds

    layer = keras.layers.Dense(2)
    layer.build((None, 3))
    assert variable_device_kinds(layer.weights) == {"cpu"}


def test_an_unreadable_functional_graph_falls_back_to_keras(monkeypatch):
    from keras_retinanet import _keras_internals

    x = _images(2)
    reference = _small(backbone="compact", fast_paths=False)
    reference.build(SHAPE)
    monkeypatch.setattr(_keras_internals, "functional_graph", lambda model: None)
    model = _small(backbone="compact")
    model.build(SHAPE)
    model.set_weights(reference.get_weights())
    assert "releasing_graph_runner" not in model.fast_paths_applied
    assert "call" not in vars(model.backbone)
    np.testing.assert_allclose(_numpy(model(x)), _numpy(reference(x)), rtol=1e-5, atol=1e-4)


def test_a_loaded_model_owns_its_backbone_and_keeps_its_settings(tmp_path):
    x = _images(3)
    model = _small(backbone=_user_backbone(), positive_threshold=0.6, negative_threshold=0.3)
    expected = _numpy(model(x))
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(_numpy(loaded(x)), expected, rtol=1e-5, atol=1e-4)
    assert fast.layers_with_fast_paths(loaded.backbone)  # deserialized: the model's own
    assert loaded.label_encoder.positive_threshold == 0.6
    assert loaded.label_encoder.negative_threshold == 0.3
    assert loaded.get_config()["fast_paths"] is None


def test_matching_thresholds_reach_the_label_encoder():
    model = _small(backbone="compact", positive_threshold=0.7, negative_threshold=0.2)
    assert (model.label_encoder.positive_threshold, model.label_encoder.negative_threshold) == (
        0.7,
        0.2,
    )
    with pytest.raises(ValueError, match="negative_threshold"):
        _small(backbone="compact", positive_threshold=0.3, negative_threshold=0.5)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's CPU kernels are NHWC only")
def test_channels_first_without_the_nhwc_path_is_a_clear_error_on_tensorflow():
    with pytest.raises(ValueError, match="channels_first"):
        _small(backbone="compact", data_format="channels_first", fast_paths=False).build(
            (1, 3, 64, 64)
        )


@pytest.mark.skipif(BACKEND != "torch", reason="PyTorch module hooks")
def test_torch_forward_hooks_on_the_models_layers_still_fire():
    model = _small(backbone="compact")
    model.build(SHAPE)
    seen = []
    conv = next(layer for layer in sublayers(model.backbone) if "conv" in layer.name)
    handle = conv.register_forward_hook(lambda module, args, output: seen.append(module.name))
    try:
        model(_images())
    finally:
        handle.remove()
    assert seen == [conv.name]
