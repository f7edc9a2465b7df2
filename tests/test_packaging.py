"""The core imports and runs with only the active backend importable."""

import os
import subprocess
import sys

import keras

import keras_retinanet

BLOCKER = """
import sys
# A None entry makes `import name` fail and importlib.util.find_spec(name) return None,
# exactly as if the package were not installed.
for name in {blocked!r}:
    sys.modules[name] = None
import numpy as np
import keras_retinanet.data, keras_retinanet.evaluation
import keras_retinanet as kr

model = kr.RetinaNet(num_classes=2, backbone=kr.resnet50_backbone())
print(tuple(model(np.zeros((1, 64, 64, 3), "float32")).shape))
"""


def test_core_imports_without_the_other_backends():
    backend = keras.backend.backend()
    blocked = sorted({"tensorflow", "jax", "torch"} - {backend})
    if backend != "jax":
        blocked.append("jaxlib")
    result = subprocess.run(
        [sys.executable, "-c", BLOCKER.format(blocked=blocked)],
        env=dict(os.environ, KERAS_BACKEND=backend),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("(1, 774, 6)")


def test_public_api_is_reexported():
    for name in ("RetinaNet", "AnchorGenerator", "BoxCoder", "FeaturePyramid", "PredictionHead"):
        assert name in keras_retinanet.__all__ and hasattr(keras_retinanet, name)
