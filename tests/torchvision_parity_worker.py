"""One backend's side of ``test_torchvision_parity.py``: converts the torchvision checkpoints
in a folder and writes the raw outputs, anchors and decoded boxes it gets.

Usage: ``KERAS_BACKEND=<backend> python torchvision_parity_worker.py <folder>``. Reads
``images.npy`` (``[N, 3, H, W]``, already normalised) and the checkpoints named in
:data:`CASES`; writes ``<backend>_<case>.npz``.
"""

import os
import sys

import keras
import numpy as np

#: case -> (checkpoint file, torchvision version, data_format). The .safetensors case reads
#: without torch; the .pth cases go through torch.load(weights_only=True).
CASES = {
    "v1": ("retinanet_v1.pth", "v1", "channels_last"),
    "v2": ("retinanet_v2.safetensors", "v2", "channels_last"),
    "v2_channels_first": ("retinanet_v2.pth", "v2", "channels_first"),
}


def main(folder):
    from keras_retinanet.convert import from_torchvision

    backend = keras.backend.backend()
    images = np.load(os.path.join(folder, "images.npy"))  # [N, 3, H, W]
    height, width = images.shape[2:]
    for case, (file_name, version, data_format) in CASES.items():
        model = from_torchvision(
            os.path.join(folder, file_name), version=version, data_format=data_format
        )
        x = images if data_format == "channels_first" else images.transpose(0, 2, 3, 1)
        raw = keras.ops.convert_to_numpy(model(x))
        anchors = model.anchor_generator(height, width)
        decoded = keras.ops.convert_to_numpy(model.box_coder.decode(raw[..., :4], anchors))
        np.savez(
            os.path.join(folder, f"{backend}_{case}.npz"),
            raw=raw,
            anchors=keras.ops.convert_to_numpy(anchors),
            decoded=decoded,
        )
        print(f"{case}: {file_name} -> {raw.shape}")


if __name__ == "__main__":
    main(sys.argv[1])
