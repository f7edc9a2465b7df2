"""Data-parallel training on each backend's own engine (``keras_retinanet.distribute``).

The multi-device checks run in a subprocess so that the device flags apply before the framework
initialises: JAX gets 2 host devices from ``XLA_FLAGS``, TensorFlow 2 logical CPUs. Each
backend's check runs only in that backend's test session (the JAX one needs no TensorFlow).
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest

from keras_retinanet.distribute import DataParallel, available_devices, data_parallel

BACKEND = keras.backend.backend()
ROOT = Path(__file__).resolve().parents[1]

# The worker prints one JSON line. It trains the same RetinaNet (same initial weights) for 2
# SGD steps of global batch 4 on 1 device, then on 2 devices (2 images each), and compares.
# The model has no batch normalisation: with per-replica statistics (TensorFlow) the 2-device
# step is a different computation, so only a BN-free model can be expected to match 1 device.
# BN is measured on its own below (a Conv2D + BatchNormalization model, two half batches with
# different means so that per-replica and global statistics differ clearly).
WORKER = r"""
import json, sys, time
backend = sys.argv[1]
if backend == "tensorflow":
    import tensorflow as tf  # before Keras: the logical devices must exist before TF starts
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import numpy as np
from keras_retinanet import RetinaNet
from keras_retinanet.distribute import available_devices, data_parallel

assert keras.backend.backend() == backend
out = {"devices": available_devices()}
try:
    data_parallel(num_devices=3)
except ValueError as error:
    out["too_many"] = str(error)
try:
    data_parallel(num_devices=2, batch_size=3)
except ValueError as error:
    out["indivisible"] = str(error)
if sys.argv[2] == "errors":
    print("RESULT " + json.dumps(out))
    sys.exit(0)


def tiny_backbone():  # tests/conftest.py's: plain convolutions at strides 8, 16, 32
    inputs = keras.Input((None, None, 3))
    c3 = keras.layers.Conv2D(8, 3, strides=8, padding="same")(inputs)
    c4 = keras.layers.Conv2D(16, 3, strides=2, padding="same")(c3)
    c5 = keras.layers.Conv2D(32, 3, strides=2, padding="same")(c4)
    return keras.Model(inputs, [c3, c4, c5], name="tiny_backbone")


rng = np.random.default_rng(0)
images = rng.uniform(-100, 100, (8, 64, 64, 3)).astype("float32")
boxes = np.zeros((8, 3, 4), "float32")
classes = np.full((8, 3), -1, "int32")
for i in range(8):
    for j in range(1 + i % 3):
        x0, y0 = rng.uniform(0, 16, 2)
        w, h = rng.uniform(32, 48, 2)  # large enough to match anchors: every image has positives
        boxes[i, j] = [x0, y0, min(x0 + w, 64), min(y0 + h, 64)]
        classes[i, j] = rng.integers(0, 3)
y = {"boxes": boxes, "classes": classes}


def make_retinanet():
    keras.utils.set_random_seed(0)
    model = RetinaNet(3, backbone=tiny_backbone(), fpn_filters=16, head_convs=1)
    model.build((None, 64, 64, 3))
    return model


class StepLosses(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.losses = []

    def on_train_batch_end(self, batch, logs=None):
        # logs["loss"] is the running mean over the epoch's steps: recover each step's loss.
        mean = float(logs["loss"])
        self.losses.append(mean * (batch + 1) - sum(self.losses))


timings = []


def fit(make, x, y, initial, num_devices, loss=None):
    start = time.perf_counter()
    with data_parallel(num_devices=num_devices, batch_size=4) as dp:
        model = make()
        model.set_weights(initial)
        kwargs = {} if loss is None else {"loss": loss}
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01), **kwargs)
        steps = StepLosses()
        model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=[steps])
        assert dp.num_replicas == num_devices
        weights = [np.asarray(w) for w in model.get_weights()]
    timings.append(round(time.perf_counter() - start, 1))
    return weights, steps.losses


def compare(one, two):
    (w1, l1), (w2, l2) = one, two
    weight_diff = max(float(np.max(np.abs(a - b))) for a, b in zip(w1, w2))
    weight_rel = max(
        float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-12)) for a, b in zip(w1, w2)
    )
    loss_rel = max(abs(a - b) / abs(a) for a, b in zip(l1, l2))
    return {"weight_abs": weight_diff, "weight_rel": weight_rel, "loss_rel": loss_rel,
            "losses_1": l1, "losses_2": l2, "steps": len(l1)}


initial = [np.asarray(w) for w in make_retinanet().get_weights()]
one = fit(make_retinanet, images, y, initial, 1)
out["moved"] = max(float(np.max(np.abs(a - b))) for a, b in zip(one[0], initial))
out["retinanet"] = compare(one, fit(make_retinanet, images, y, initial, 2))


def make_bn():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = keras.layers.BatchNormalization(momentum=0.0, name="bn")(x)  # moving stats = last batch
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(1, name="dense")(x))


bn_x = rng.normal(size=(4, 8, 8, 3)).astype("float32")
bn_x[2:] += 3.0  # the second device's half batch has another mean
bn_y = rng.normal(size=(4, 1)).astype("float32")
bn_initial = [np.asarray(w) for w in make_bn().get_weights()]
bn = {}
for n in (1, 2):
    model_weights, _ = fit(make_bn, bn_x, bn_y, bn_initial, n, loss="mse")
    bn[n] = dict(zip([w.path for w in make_bn().weights], model_weights))
conv = bn_initial[0], bn_initial[1]
features = keras.ops.convert_to_numpy(
    keras.ops.conv(bn_x, conv[0], padding="same") + conv[1]
).astype("float64")
halves = features[:2], features[2:]
candidates = {  # moving statistics (momentum 0) each way of computing them would leave
    "global": (features.mean(axis=(0, 1, 2)), features.var(axis=(0, 1, 2))),
    "replica_mean": tuple(
        np.mean([s(axis=(0, 1, 2)) for s in stats], axis=0)
        for stats in ([h.mean for h in halves], [h.var for h in halves])
    ),
    "replica_0": (halves[0].mean(axis=(0, 1, 2)), halves[0].var(axis=(0, 1, 2))),
    "replica_1": (halves[1].mean(axis=(0, 1, 2)), halves[1].var(axis=(0, 1, 2))),
}


def matches(weights):
    moving = weights["bn/moving_mean"], weights["bn/moving_variance"]
    errors = {
        name: max(
            float(np.max(np.abs(got - want) / (np.abs(want) + 1e-3)))
            for got, want in zip(moving, expected)
        )
        for name, expected in candidates.items()
    }
    return {"best": min(errors, key=errors.get), "errors": errors}


out["bn"] = {
    "1": matches(bn[1]),
    "2": matches(bn[2]),
    "dense_2_vs_1": float(np.max(np.abs(bn[2]["dense/kernel"] - bn[1]["dense/kernel"]))),
}
out["timings"] = timings
print("RESULT " + json.dumps(out))
"""


def _run_worker(backend, mode):
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=str(ROOT))
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    env["JAX_PLATFORMS"] = "cpu"
    env["CUDA_VISIBLE_DEVICES"] = ""  # host devices only, on any machine
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, backend, mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-6000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    print(backend, json.dumps(result, indent=1))
    return result


_RESULTS = {}


def _result(backend, mode="train"):
    if (backend, mode) not in _RESULTS:
        _RESULTS[backend, mode] = _run_worker(backend, mode)
    return _RESULTS[backend, mode]


def _needs(backend):
    if BACKEND != backend:
        pytest.skip(f"runs in the {backend} test session (this one is {BACKEND})")
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")


@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_two_devices_train_like_one(backend):
    _needs(backend)
    result = _result(backend)
    assert len(result["devices"]) == 2, result["devices"]
    diff = result["retinanet"]
    assert diff["steps"] == 2
    assert result["moved"] > 1e-4  # the steps did change the weights
    # Same global batch, gradients all-reduced by the backend: equal up to float32 reduction
    # order. Measured on CPU, both backends: weights <= 5e-7 relative to each tensor's largest
    # value (3e-8 absolute), per-step losses identical.
    assert diff["weight_rel"] < 1e-5, diff
    assert diff["loss_rel"] < 1e-5, diff


@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_too_many_devices_and_indivisible_batch_raise(backend):
    _needs(backend)
    result = _result(backend, "errors")  # only the 2 devices, no training
    assert len(result["devices"]) == 2, result["devices"]
    assert "num_devices=3" in result["too_many"] and "only 2" in result["too_many"]
    assert "batch size 3" in result["indivisible"] and "replicas 2" in result["indivisible"]


def test_jax_batch_norm_statistics_are_global():
    _needs("jax")
    bn = _result("jax")["bn"]
    # One sharded computation over the global batch: after a step on 2 devices the moving
    # statistics are the global batch's (measured ~1e-7 relative), as on 1 device, and so is
    # the update of the layers above (the two halves' own statistics differ by > 100 %).
    for n in ("1", "2"):
        assert bn[n]["best"] == "global" and bn[n]["errors"]["global"] < 1e-4, bn
    assert bn["2"]["errors"]["replica_mean"] > 0.1, bn
    assert bn["dense_2_vs_1"] < 1e-5, bn


def test_tensorflow_batch_norm_statistics_are_per_replica():
    _needs("tensorflow")
    bn = _result("tensorflow")["bn"]
    # MirroredStrategy, BatchNormalization(synchronized=False): each replica normalises its 2
    # images with their own statistics and updates its own copy of the moving statistics
    # (aggregation "none": no averaging); get_weights() and saving read replica 0's copy, i.e.
    # replica 0's half batch only (measured ~3e-7 relative; 1.5 off the global statistics).
    assert bn["1"]["best"] == "global" and bn["1"]["errors"]["global"] < 1e-4, bn
    assert bn["2"]["best"] == "replica_0" and bn["2"]["errors"]["replica_0"] < 1e-4, bn
    assert bn["2"]["errors"]["global"] > 0.1, bn
    assert bn["dense_2_vs_1"] > 1e-4, bn  # so training differs from 1 device


def test_in_process_errors():
    if BACKEND == "torch":
        with pytest.raises(ValueError, match="torchrun"):
            data_parallel(num_devices=1)
        # One torchrun process per device: the CUDA devices, else the CPU.
        import torch

        expected = [f"cuda:{i}" for i in range(torch.cuda.device_count())] or ["cpu"]
        assert available_devices() == expected and available_devices("cpu") == ["cpu"]
        with pytest.raises(ValueError, match="device_type"):
            available_devices("tpu")
        return
    existing = available_devices()
    with pytest.raises(ValueError, match=f"num_devices={len(existing) + 1} but only"):
        data_parallel(num_devices=len(existing) + 1)
    with pytest.raises(ValueError, match="at least 1"):
        data_parallel(num_devices=0)
    dp = data_parallel(num_devices=1)
    assert isinstance(dp, DataParallel) and dp.num_replicas == 1
    assert dp.check_batch_size(3) == 3
    with pytest.raises(ValueError, match="positive integer"):
        dp.check_batch_size(0)
    if BACKEND != "tensorflow":
        with pytest.raises(ValueError, match="multi_worker=True is for the TensorFlow backend"):
            data_parallel(multi_worker=True)
    if BACKEND != "jax":
        with pytest.raises(ValueError, match="multi_host=True is for the JAX backend"):
            data_parallel(multi_host=True)


def test_jax_scope_restores_the_previous_distribution():
    _needs("jax")
    previous = keras.distribution.distribution()
    dp = data_parallel(num_devices=1)
    with dp as entered:
        assert entered is dp
        assert keras.distribution.distribution() is dp.engine
    assert keras.distribution.distribution() is previous
