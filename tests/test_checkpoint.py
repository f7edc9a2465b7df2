"""Checkpoints that survive faults: atomic saves, kill-and-resume, stopping on NaN loss."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
from keras import ops

from keras_retinanet import RetinaNet, compact_backbone
from keras_retinanet.checkpoint import (
    MODEL_FILE,
    STATE_FILE,
    TEMP_SUFFIX,
    AtomicModelCheckpoint,
    CheckpointError,
    StopOnNonFiniteLoss,
    resume_state,
    save_model_atomically,
)

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
BATCH = 4
IMAGES = 8  # 2 steps per epoch
EPOCHS = 4


def make_data():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (IMAGES, 64, 64, 3)).astype("float32")
    boxes = np.array([[8, 8, 40, 40], [20, 16, 60, 50], [0, 0, 0, 0]], "float32")
    y = {
        "boxes": np.tile(boxes[None], (IMAGES, 1, 1)),
        "classes": np.tile(np.array([[1, 2, -1]], "int32"), (IMAGES, 1)),
    }
    y["classes"][::3, 1] = 0
    return x, y


def make_model(x, lr=0.01):
    """A small RetinaNet, built, compiled with SGD + momentum (so optimizer state matters)."""
    model = RetinaNet(
        3, backbone=compact_backbone(widths=(8, 16, 32, 32)), fpn_filters=16, head_convs=1
    )
    model(x[:1])
    model.compile(optimizer=keras.optimizers.SGD(lr, momentum=0.9))
    return model


def fit(model, x, y, **kwargs):
    return model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0, **kwargs)


def numpy_weights(variables):
    return [ops.convert_to_numpy(v) for v in variables]


def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([ROOT, TESTS, e.get("PYTHONPATH", "")])
    return e


# -- atomic save --------------------------------------------------------------------------


def test_failed_save_keeps_the_previous_file_and_removes_the_temporary(tmp_path):
    x, _ = make_data()
    model = make_model(x)
    path = tmp_path / MODEL_FILE
    save_model_atomically(model, path)
    good = path.read_bytes()

    real_save = model.save

    def half_then_disk_full(filepath, *args, **kwargs):
        real_save(filepath, *args, **kwargs)
        with open(filepath, "r+b") as f:  # what a full disk leaves: half a file
            f.truncate(len(good) // 2)
        raise OSError(28, "No space left on device")

    model.save = half_then_disk_full
    with pytest.raises(OSError, match=re.escape(repr(str(path)))) as info:
        save_model_atomically(model, path)
    assert "No space left on device" in str(info.value) and "\n" not in str(info.value)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == [MODEL_FILE]  # the temporary file is gone
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(
        ops.convert_to_numpy(restored(x[:2])), ops.convert_to_numpy(model(x[:2])), atol=1e-5
    )


def test_sigkill_during_a_save_keeps_the_previous_file(tmp_path):
    # A real model file, then a process killed while it writes a (never ending) replacement.
    x, _ = make_data()
    model = make_model(x)
    path = tmp_path / MODEL_FILE
    save_model_atomically(model, path)
    good = path.read_bytes()
    script = textwrap.dedent(
        f"""
        import sys, time
        from keras_retinanet.checkpoint import save_model_atomically

        class Writer:
            def save(self, filepath):
                with open(filepath, "wb") as f:
                    f.write(b"PK" + b"x" * 100000)
                    f.flush()
                    print("writing", flush=True)
                    while True:
                        f.write(b"y" * 100000)
                        f.flush()
                        time.sleep(0.01)

        save_model_atomically(Writer(), {str(path)!r})
        """
    )
    # The session's own backend: Keras' numpy backend would need SciPy, which a
    # backend's test environment does not have to install.
    log = tmp_path.parent / f"{tmp_path.name}-child.log"
    with open(log, "w") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-c", script],
            env=env(),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    try:
        assert child.stdout.readline().strip() == "writing", log.read_text()[-3000:]
        time.sleep(0.3)
        temporaries = [n for n in os.listdir(tmp_path) if n.endswith(TEMP_SUFFIX)]
        assert len(temporaries) == 1 and (tmp_path / temporaries[0]).stat().st_size > 100000
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert path.read_bytes() == good
    keras.saving.load_model(path)
    # resume_state tidies up what the killed writer left (it needs a state file to resume).
    (tmp_path / STATE_FILE).write_text(json.dumps({"epoch": 1, "logs": {}}))
    restored, epoch = resume_state(tmp_path)
    assert epoch == 1 and sorted(os.listdir(tmp_path)) == sorted([STATE_FILE, MODEL_FILE])


# -- resume_state on odd folders ----------------------------------------------------------


def test_resume_state_without_a_checkpoint_and_with_corrupt_files(tmp_path):
    assert resume_state(tmp_path / "missing") == (None, 0)
    assert resume_state(tmp_path) == (None, 0)
    (tmp_path / STATE_FILE).write_text(json.dumps({"epoch": 3, "logs": {}}))
    with pytest.raises(CheckpointError, match="model.keras' is missing"):
        resume_state(tmp_path)
    (tmp_path / MODEL_FILE).write_bytes(b"PK\x03\x04 not really a zip file")
    with pytest.raises(CheckpointError, match="corrupted or not a .keras file"):
        resume_state(tmp_path)
    (tmp_path / STATE_FILE).write_text("{")
    with pytest.raises(CheckpointError, match="checkpoint.json' is unreadable"):
        resume_state(tmp_path)
    (tmp_path / STATE_FILE).unlink()
    with pytest.raises(CheckpointError, match="epoch it was saved at is unknown"):
        resume_state(tmp_path)


# -- kill and resume ----------------------------------------------------------------------

TRAINER = """
import json, os, sys, time
import keras
from test_checkpoint import EPOCHS, fit, make_data, make_model
from keras_retinanet.checkpoint import AtomicModelCheckpoint, StopOnNonFiniteLoss

folder, init = sys.argv[1], sys.argv[2]
x, y = make_data()
model = make_model(x)
model.load_weights(init)


class Progress(keras.callbacks.Callback):
    # Reports each finished batch; after the first batch of the third epoch it waits to be
    # killed, in the middle of an epoch, whatever the speed of the machine.
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        print(json.dumps({"epoch": self.epoch, "batch": batch}), flush=True)
        if (self.epoch, batch) == (2, 0):
            time.sleep(600)


stopper = StopOnNonFiniteLoss()
checkpoint = AtomicModelCheckpoint(folder, stopper=stopper)
fit(model, x, y, epochs=EPOCHS, callbacks=[stopper, checkpoint, Progress()])
print("finished", flush=True)
"""


@pytest.mark.skipif(
    keras.backend.backend() == "jax",
    reason="backend-neutral writer and resume; TF and torch run it (JAX recompiles each step "
    "shape in two processes: 50 s of CI); a kill during a save runs on JAX too",
)
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path):
    x, y = make_data()
    steps = IMAGES // BATCH
    reference = make_model(x)
    init = str(tmp_path / "init.weights.h5")
    reference.save_weights(init)
    folder = tmp_path / "run"
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER)
    child = subprocess.Popen(
        [sys.executable, str(script), str(folder), init],
        env=env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        # The uninterrupted run, while the child imports and compiles (2 cores).
        fit(reference, x, y, epochs=EPOCHS)
        assert int(reference.optimizer.iterations) == EPOCHS * steps
        # Kill the child in the third epoch, after its first batch: two epochs are saved.
        for line in child.stdout:
            assert line.strip() != "finished"
            progress = json.loads(line)
            if progress == {"epoch": 2, "batch": 0}:
                break
        else:
            pytest.fail("the trainer exited early")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    state = json.loads((folder / STATE_FILE).read_text())
    assert state["epoch"] == 2 and np.isfinite(state["logs"]["loss"])

    model, initial_epoch = resume_state(folder)
    assert initial_epoch == 2
    # Optimizer state really came back: the step count and non-zero momentum slots.
    assert int(model.optimizer.iterations) == initial_epoch * steps
    slots = [v for v in model.optimizer.variables if "momentum" in v.path]
    assert len(slots) == len(model.trainable_variables)
    assert all(np.abs(ops.convert_to_numpy(s)).max() > 0 for s in slots)
    history = fit(model, x, y, epochs=EPOCHS, initial_epoch=initial_epoch)
    assert len(history.history["loss"]) == EPOCHS - initial_epoch
    assert int(model.optimizer.iterations) == EPOCHS * steps
    # Same data, same initial weights, same optimizer state: the same weights as never killed
    # (up to float32 rounding where XLA compiles the resumed step afresh).
    for got, want in zip(
        numpy_weights(model.weights), numpy_weights(reference.weights), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    for got, want in zip(
        numpy_weights(model.optimizer.variables),
        numpy_weights(reference.optimizer.variables),
        strict=True,
    ):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# -- non-finite loss ----------------------------------------------------------------------


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    x, y = make_data()
    model = make_model(x, lr=1e-3)
    stopper = StopOnNonFiniteLoss()
    checkpoint = AtomicModelCheckpoint(tmp_path, stopper=stopper)
    fit(model, x, y, epochs=1, callbacks=[stopper, checkpoint])
    assert checkpoint.saved_epochs == [1] and not stopper.nonfinite
    good_model = (tmp_path / MODEL_FILE).read_bytes()
    good_state = (tmp_path / STATE_FILE).read_text()

    model.optimizer.learning_rate.assign(1e10)  # the first update blows the weights up
    history = fit(model, x, y, epochs=EPOCHS, initial_epoch=1, callbacks=[checkpoint, stopper])
    assert model.stop_training and stopper.nonfinite and checkpoint.nonfinite
    assert len(history.history["loss"]) == 1  # stopped in the epoch where it happened
    assert stopper.epoch == 1 and stopper.batch is not None
    assert re.fullmatch(
        r"loss became (nan|inf|-inf) at epoch 2, batch \d+; the last good checkpoint is kept",
        stopper.message,
    ), stopper.message
    assert checkpoint.saved_epochs == [1]
    assert (tmp_path / MODEL_FILE).read_bytes() == good_model
    assert (tmp_path / STATE_FILE).read_text() == good_state
    restored, epoch = resume_state(tmp_path)
    assert epoch == 1
    assert all(np.isfinite(w).all() for w in numpy_weights(restored.weights))
