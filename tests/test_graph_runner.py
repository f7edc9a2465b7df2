"""``call_releasing``: same outputs as ``Functional.call``, intermediates freed early."""

import gc
import weakref

import keras
import numpy as np
import pytest

from keras_retinanet import RetinaNet
from keras_retinanet.backbone import compact_backbone, resnet50_backbone
from keras_retinanet.fast.graph_runner import DIRECT_CALL_TYPES, call_releasing


def _numpy(tree):
    return [keras.ops.convert_to_numpy(x) for x in keras.tree.flatten(tree)]


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("factory", [compact_backbone, resnet50_backbone])
def test_outputs_equal_functional_call(factory, training):
    keras.utils.set_random_seed(1)
    backbone = factory(input_shape=(64, 64, 3))
    x = np.random.default_rng(0).normal(0, 50, (2, 64, 64, 3)).astype("float32")
    # training=True: BatchNormalization normalises with the batch's own moments.
    expected = _numpy(backbone(x, training=training))
    # A backend tensor: with training=False the layers are called directly (see below).
    got = _numpy(call_releasing(backbone, keras.ops.convert_to_tensor(x), training=training))
    assert len(got) == len(expected) == 3
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape
        np.testing.assert_array_equal(g, e)


def test_training_flag_reaches_batch_normalization():
    keras.utils.set_random_seed(1)
    backbone = compact_backbone(input_shape=(32, 32, 3))
    x = np.random.default_rng(0).normal(0, 50, (2, 32, 32, 3)).astype("float32")
    inference = _numpy(call_releasing(backbone, x, training=False))
    training = _numpy(call_releasing(backbone, x, training=True))
    assert not np.allclose(inference[0], training[0])


class _Probe(keras.layers.Layer):
    """Identity layer that keeps a weak reference to its input."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seen = None

    def call(self, x):
        self.seen = weakref.ref(x)
        return x * 1.0


class _AssertReleased(keras.layers.Layer):
    """Identity layer that records whether the probe's input was still alive when it ran."""

    def __init__(self, probe, **kwargs):
        super().__init__(**kwargs)
        self.probe = probe
        self.alive_when_called = None

    def call(self, x):
        gc.collect()
        self.alive_when_called = self.probe.seen() is not None
        return x + 1.0


def _probe_model():
    inputs = keras.Input((8,))
    first = keras.layers.Dense(8, name="first")(inputs)
    probe = _Probe(name="probe")
    second = probe(first)  # `first` has no consumer after this layer
    third = keras.layers.Dense(8, name="third")(second)
    check = _AssertReleased(probe, name="check")
    return keras.Model(inputs, check(third)), check


def test_intermediate_is_released_after_its_last_consumer():
    if keras.backend.backend() == "tensorflow":
        pytest.skip("weak references to TensorFlow EagerTensors are not supported")
    model, check = _probe_model()
    x = np.ones((2, 8), "float32")
    out = call_releasing(model, x)
    assert check.alive_when_called is False
    np.testing.assert_allclose(_numpy(out)[0], _numpy(model(x))[0], rtol=1e-6)
    model(x)  # Keras' own Functional.call holds every intermediate until the end
    assert check.alive_when_called is True


def test_subclassed_model_falls_back_to_its_call():
    class Doubler(keras.Model):
        def call(self, x, training=None):
            return x * 2.0

    x = np.ones((1, 3), "float32")
    np.testing.assert_array_equal(_numpy(call_releasing(Doubler(), x))[0], 2 * x)


def test_symbolic_inputs_use_the_functional_call():
    backbone = compact_backbone(input_shape=(32, 32, 3))
    outputs = call_releasing(backbone, keras.Input((32, 32, 3)))
    shapes = [tuple(o.shape) for o in outputs]
    assert shapes == [(None, 4, 4, 64), (None, 2, 2, 128), (None, 1, 1, 256)]


def test_retinanet_outputs_unchanged():
    keras.utils.set_random_seed(2)
    model = RetinaNet(num_classes=3, backbone="compact")
    x = np.random.default_rng(0).normal(0, 50, (1, 64, 64, 3)).astype("float32")
    got = _numpy(model(x))[0]
    features = model.backbone(x)  # through Functional.call
    outputs = []
    for feature in model.fpn(features):
        box, cls = model.box_head(feature), model.cls_head(feature)
        outputs.append((keras.ops.reshape(box, (1, -1, 4)), keras.ops.reshape(cls, (1, -1, 3))))
    expected = np.concatenate(
        [
            np.concatenate([_numpy(b)[0] for b, _ in outputs], axis=1),
            np.concatenate([_numpy(c)[0] for _, c in outputs], axis=1),
        ],
        axis=-1,
    )
    np.testing.assert_array_equal(got, expected)


def _raise_if_called(self, *args, **kwargs):
    raise AssertionError(f"Layer.__call__ of {self.name}")


@pytest.mark.parametrize("factory", [compact_backbone, resnet50_backbone])
def test_eager_inference_calls_layers_directly_with_identical_outputs(factory, monkeypatch):
    keras.utils.set_random_seed(1)
    backbone = factory(input_shape=(32, 32, 3))
    x = keras.ops.convert_to_tensor(
        np.random.default_rng(0).normal(0, 50, (2, 32, 32, 3)).astype("float32")
    )
    expected = _numpy(backbone(x, training=False))
    kinds = {type(layer) for layer in backbone.layers} - {keras.layers.InputLayer}
    assert kinds <= set(DIRECT_CALL_TYPES)
    for kind in kinds:
        monkeypatch.setattr(kind, "__call__", _raise_if_called)
    got = _numpy(call_releasing(backbone, x, training=False))
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g, e)
    if keras.backend.backend() == "torch":
        call_releasing(backbone, x, training=True)  # eager training calls them directly too
    else:
        with pytest.raises(AssertionError, match="Layer.__call__"):
            call_releasing(backbone, x, training=True)  # training goes through __call__
    with pytest.raises(AssertionError, match="Layer.__call__"):
        call_releasing(backbone, keras.ops.convert_to_numpy(x), training=False)


def test_mixed_precision_and_other_dtypes_go_through_layer_call(monkeypatch):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((8, 8, 3))
    half = keras.layers.Conv2D(4, 3, dtype="mixed_float16", name="half")
    full = keras.layers.Conv2D(4, 3, name="full")
    model = keras.Model(inputs, full(half(inputs)))  # `full` receives float16 inputs
    x = keras.ops.convert_to_tensor(np.random.default_rng(0).normal(size=(1, 8, 8, 3)), "float32")
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    calls = []
    original_call = keras.layers.Conv2D.__call__

    def recording(self, *args, **kwargs):
        calls.append(self.name)
        return original_call(self, *args, **kwargs)

    monkeypatch.setattr(keras.layers.Conv2D, "__call__", recording)
    got = keras.ops.convert_to_numpy(call_releasing(model, x, training=False))
    # `half` computes in float16 (autocast), `full` must cast its float16 input first.
    assert calls == ["half", "full"]
    np.testing.assert_array_equal(got, expected)


def test_retinanet_direct_inference_matches_layer_calls(monkeypatch):
    from keras_retinanet.fast import graph_runner

    keras.utils.set_random_seed(2)
    model = RetinaNet(num_classes=3, backbone="compact")
    x = keras.ops.convert_to_tensor(
        np.random.default_rng(0).normal(0, 50, (1, 64, 64, 3)).astype("float32")
    )
    direct = _numpy(model(x))[0]
    monkeypatch.setattr(graph_runner, "_eager_mode", lambda inputs, training: None)
    np.testing.assert_array_equal(direct, _numpy(model(x))[0])


# --- eager inference writes into dead intermediates (PyTorch) ---------------------------------


def _donation_model():
    """Every way a tensor must *not* be overwritten, next to ones that may be."""
    inputs = keras.Input((8, 8, 3))
    bn_of_input = keras.layers.BatchNormalization(name="bn_of_input")(inputs)  # caller's tensor
    conv = keras.layers.Conv2D(4, 3, padding="same", name="conv")(bn_of_input)
    shared = keras.layers.BatchNormalization(name="shared_bn")(conv)  # conv also feeds `add`
    relu = keras.layers.Activation("relu", name="relu")(shared)  # may overwrite `shared`
    dropped = keras.layers.Dropout(0.5, name="dropout")(relu)  # returns its input at inference
    bn_of_dropout = keras.layers.BatchNormalization(name="bn_of_dropout")(dropped)
    add = keras.layers.Add(name="add")([conv, bn_of_dropout])
    relu_out = keras.layers.Activation("relu", name="relu_out")(add)
    exported = keras.layers.Conv2D(4, 1, name="exported")(relu_out)  # a model output...
    after = keras.layers.BatchNormalization(name="after")(exported)  # ...that feeds a layer
    model = keras.Model(inputs, [after, exported, relu])
    for layer in model.layers:  # non-trivial statistics
        if isinstance(layer, keras.layers.BatchNormalization):
            rng = np.random.default_rng(len(layer.name))
            layer.moving_mean.assign(rng.normal(size=layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, size=layer.moving_variance.shape))
    return model


def _donated_flags(model, training=False):
    from keras_retinanet.fast.graph_runner import plan_for

    plan = plan_for(model)
    donate = plan.donate_training if training else plan.donate
    return {
        node.operation.name: flags
        for node, flags in zip(plan.nodes, donate, strict=True)
        if flags is not None
    }


def test_only_fresh_single_use_intermediates_are_donated():
    model = _donation_model()
    # shared_bn: conv feeds add too; bn_of_input: a model input; bn_of_dropout: Dropout's
    # output is its input; add: `conv` has two consumers, `bn_of_dropout` one; after: its
    # input is a model output. relu and relu_out read fresh single-use tensors.
    assert _donated_flags(model) == {"relu": (True,), "add": (False, True), "relu_out": (True,)}


def test_training_donates_only_to_relu_and_add_and_never_a_relu_output():
    model = _donation_model()
    assert _donated_flags(model, training=True) == {
        "relu": (True,),
        "add": (False, True),
        "relu_out": (True,),
    }
    # A ReLU's gradient reads its output: a ReLU after a Conv2D with ReLU activation (or
    # after another ReLU) never overwrites it in training; in inference it may.
    inputs = keras.Input((8, 8, 3))
    conv = keras.layers.Conv2D(4, 3, activation="relu", name="conv_relu")(inputs)
    relu = keras.layers.Activation("relu", name="relu")(conv)
    second = keras.layers.Activation("relu", name="second")(relu)
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1, name="out")(second))
    assert _donated_flags(model) == {"relu": (True,), "second": (True,)}
    assert _donated_flags(model, training=True) == {}


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="in-place training: PyTorch")
def test_torch_training_writes_relu_and_add_in_place_with_the_same_gradients(monkeypatch):
    import torch

    from keras_retinanet.fast import _torch, graph_runner

    keras.utils.set_random_seed(3)
    backbone = resnet50_backbone(input_shape=(32, 32, 3))
    images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    donated = []
    original = _torch._relu_donated_training

    def counting(layer, flags, *args, **kwargs):
        donated.append(flags[0])
        return original(layer, flags, *args, **kwargs)

    monkeypatch.setattr(_torch, "_relu_donated_training", counting)

    def run():
        x = torch.tensor(images, requires_grad=True)
        outputs = call_releasing(backbone, x, training=True)
        sum((o * o).sum() for o in outputs).backward()
        grads = [v.value.grad.numpy().copy() for v in backbone.trainable_weights]
        for v in backbone.trainable_weights:
            v.value.grad = None
        return _numpy([o.detach() for o in outputs]), x.grad.numpy(), grads

    direct = run()
    assert sum(donated) == 49  # every ReLU of ResNet50 reads a batch norm or a residual sum
    monkeypatch.setattr(graph_runner, "_eager_mode", lambda inputs, training: None)
    donated.clear()
    keras_path = run()
    assert donated == []
    for g, e in zip(direct[0], keras_path[0], strict=True):
        np.testing.assert_array_equal(g, e)
    np.testing.assert_allclose(direct[1], keras_path[1], rtol=1e-5, atol=1e-6)
    for g, e in zip(direct[2], keras_path[2], strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5 * float(np.abs(e).max()))


def test_donating_inference_leaves_inputs_and_shared_tensors_intact():
    model = _donation_model()
    x = keras.ops.convert_to_tensor(np.random.default_rng(0).normal(size=(2, 8, 8, 3)), "float32")
    before = keras.ops.convert_to_numpy(x).copy()
    expected = _numpy(model(x, training=False))  # Functional.call, no donation
    got = _numpy(call_releasing(model, x, training=False))
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g, e)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(x), before)


def test_resnet50_donates_to_every_batch_norm_relu_and_residual_add():
    backbone = resnet50_backbone(input_shape=(32, 32, 3))
    flags = _donated_flags(backbone)
    kinds = {}
    for name in flags:
        kind = type(backbone.get_layer(name)).__name__
        kinds[kind] = kinds.get(kind, 0) + 1
    # 53 batch norms read convolutions; 49 ReLUs read batch norms or residual sums; the 16
    # residual sums read their branch's batch norm (the 4 projection shortcuts' too; identity
    # shortcuts have two consumers).
    assert kinds == {"BatchNormalization": 53, "Activation": 49, "Add": 16}
    assert sum(sum(f) for f in flags.values()) == 53 + 49 + 16 + 4


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="in-place writes: PyTorch")
def test_torch_inference_writes_in_place_only_without_autograd(monkeypatch):
    import torch

    from keras_retinanet.fast import _torch

    keras.utils.set_random_seed(3)
    backbone = resnet50_backbone(input_shape=(32, 32, 3))
    x = torch.as_tensor(np.random.default_rng(0).normal(size=(1, 32, 32, 3)), dtype=torch.float32)
    expected = _numpy(backbone(x, training=False))
    overwritten = []
    original = _torch._may_overwrite

    def counting(donated, tensor):
        result = original(donated, tensor)
        overwritten.append(result)
        return result

    monkeypatch.setattr(_torch, "_may_overwrite", counting)
    with torch.no_grad():
        got = _numpy(call_releasing(backbone, x, training=False))
    assert sum(overwritten) == 53 + 49 + 16
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g, e)
    # With autograd recording, nothing is overwritten and gradients flow.
    overwritten.clear()
    x.requires_grad_(True)
    outputs = call_releasing(backbone, x, training=False)
    assert overwritten and not any(overwritten)
    sum(o.sum() for o in outputs).backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all())
    for g, e in zip(_numpy([o.detach() for o in outputs]), expected, strict=True):
        np.testing.assert_array_equal(g, e)


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="in-place writes: PyTorch")
def test_torch_in_place_add_keeps_broadcasting_and_summation_order():
    import torch

    from keras_retinanet.fast._torch import _add_donated

    rng = np.random.default_rng(0)
    a, b, c = (torch.as_tensor(rng.normal(size=(2, 3, 4)), dtype=torch.float32) for _ in "abc")
    small = torch.as_tensor(rng.normal(size=(1, 1, 4)), dtype=torch.float32)
    layer = keras.layers.Add()
    expected = ((a + b) + c).numpy()
    got = _add_donated(layer, (False, False, True), [a.clone(), b.clone(), c.clone()])
    np.testing.assert_array_equal(got.numpy(), expected)  # only x0 may take a 3-way sum
    second = b.clone()
    out = _add_donated(layer, (False, True), [a, second])
    assert out.data_ptr() == second.data_ptr()
    np.testing.assert_array_equal(out.numpy(), (a + b).numpy())
    kept = small.clone()
    out = _add_donated(layer, (False, True), [a, kept])  # broadcasting: a new tensor
    np.testing.assert_array_equal(kept.numpy(), small.numpy())
    np.testing.assert_array_equal(out.numpy(), (a + small).numpy())
