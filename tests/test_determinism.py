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
x = rng.uniform(-100, 100, (8, 64, 64, 3)).astype("float32")
y = {"boxes": np.tile(np.array([[[8, 8, 40, 40], [30, 20, 60, 50]]], "float32"), (8, 1, 1)),
     "classes": np.tile(np.array([[0, 1]], "int32"), (8, 1))}
history = model.fit(x, y, batch_size=4, epochs=3, shuffle=False, verbose=0)
print(repr(history.history["loss"]))
"""


def _losses():
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend(), PYTHONHASHSEED="0")
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def test_same_seed_gives_identical_first_losses_in_two_processes():
    first, second = _losses(), _losses()
    assert first == second
    assert first.startswith("[")
