"""Subprocess half of the cross-backend parity test (one backend per process).

``python parity_worker.py save DIR``: builds a seeded ``RetinaNet(80)``, writes its weights,
a ``.keras`` file, the input batch and the outputs to ``DIR``.
``python parity_worker.py load DIR``: loads both under the current ``KERAS_BACKEND`` and writes
``outputs_<backend>_weights.npy`` and ``outputs_<backend>_keras.npy``.
"""

import os
import sys

import keras
import numpy as np
from keras import ops

from keras_retinanet import RetinaNet

SHAPE = (2, 256, 256, 3)


def main(mode, directory):
    backend = keras.backend.backend()
    if mode == "save":
        keras.utils.set_random_seed(0)
        rng = np.random.default_rng(0)
        images = rng.uniform(-120.0, 150.0, SHAPE).astype("float32")  # caffe-mode range
        model = RetinaNet(num_classes=80)
        model(images[:1])
        # Fresh heads output almost constants (std 0.01 kernels, prior bias); perturb them
        # by half that std so the check covers the heads with non-trivial outputs.
        for weight in model.weights:
            value = ops.convert_to_numpy(weight)
            if "head" in weight.path:
                weight.assign(value + rng.normal(0.0, 0.005, value.shape).astype("float32"))
        outputs = ops.convert_to_numpy(model(images))
        model.save_weights(os.path.join(directory, "model.weights.h5"))
        model.save(os.path.join(directory, "model.keras"))
        np.save(os.path.join(directory, "images.npy"), images)
        np.save(os.path.join(directory, f"outputs_{backend}_reference.npy"), outputs)
        return
    images = np.load(os.path.join(directory, "images.npy"))
    model = RetinaNet(num_classes=80)
    model(images[:1])
    model.load_weights(os.path.join(directory, "model.weights.h5"))
    np.save(
        os.path.join(directory, f"outputs_{backend}_weights.npy"),
        ops.convert_to_numpy(model(images)),
    )
    loaded = keras.saving.load_model(os.path.join(directory, "model.keras"))
    np.save(
        os.path.join(directory, f"outputs_{backend}_keras.npy"),
        ops.convert_to_numpy(loaded(images)),
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
