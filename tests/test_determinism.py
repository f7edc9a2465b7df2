"""A fixed seed reproduces the first training losses exactly on the active backend."""

import os
import subprocess
import sys

import keras

SCRIPT = """
import keras, numpy as np
from keras_retinanet import RetinaNet, compact_backbone
keras.utils.set_random_seed(7)
model = RetinaNet(num_classes=2, backbone=compact_backbone(widths=(16, 16, 32, 32)),
                  fpn_filters=16, head_convs=1)
model.compile(optimizer=keras.optimizers.SGD(0.01))
rng = np.random.default_rng(0)
x = rng.uniform(-100, 100, (4, 64, 64, 3)).astype("float32")
y = {"boxes": np.tile(np.array([[[8, 8, 40, 40], [30, 20, 60, 50]]], "float32"), (4, 1, 1)),
     "classes": np.tile(np.array([[0, 1]], "int32"), (4, 1))}
history = model.fit(x, y, batch_size=2, epochs=2, shuffle=False, verbose=0)
print(repr(history.history["loss"]))
"""


def _start():
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend(), PYTHONHASHSEED="0")
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _losses(process):
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    return stdout.strip().splitlines()[-1]


def test_same_seed_gives_identical_first_losses_in_two_processes():
    # The two processes run side by side: each spends most of its time importing and compiling.
    processes = [_start(), _start()]
    try:
        first, second = (_losses(p) for p in processes)
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert first == second
    assert first.startswith("[")
