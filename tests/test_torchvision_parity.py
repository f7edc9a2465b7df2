"""Converted torchvision RetinaNets give torchvision's outputs on TensorFlow, JAX and PyTorch.

torchvision's ``retinanet_resnet50_fpn`` (v1) and ``retinanet_resnet50_fpn_v2`` (v2) are built
with random weights (no download here) and every batch-norm statistic, norm affine and bias
drawn at random, so that each converted tensor changes the outputs. Each backend converts the
saved checkpoints in its own process (``torchvision_parity_worker.py``), on a 2 x 160 x 224
input: a multiple of 32 on both axes but of 128 on neither, where P6 and P7 anchors are 53 x 56
and 80 x 112 pixels apart.
"""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
from torchvision_parity_worker import CASES
from torchvision_reference import random_torchvision_retinanet, torchvision_raw_outputs

pytestmark = pytest.mark.parity

BACKENDS = ("tensorflow", "jax", "torch")
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torchvision_parity_worker.py")
#: Raw outputs: relative to the largest output. Decoded boxes: pixels.
RAW_RTOL, BOX_ATOL = 1e-4, 0.05


def test_converted_checkpoints_match_torchvision_on_every_backend(tmp_path):
    for backend in BACKENDS:
        if importlib.util.find_spec(backend) is None:
            pytest.fail(f"the parity session needs all three backends; {backend} is missing")
    import torch
    from safetensors.torch import save_file

    images = np.random.default_rng(0).normal(0.0, 1.0, (2, 3, 160, 224)).astype("float32")
    np.save(tmp_path / "images.npy", images)
    references = {}
    for version in ("v1", "v2"):
        model = random_torchvision_retinanet(version, seed={"v1": 0, "v2": 1}[version])
        state = model.state_dict()
        torch.save(state, tmp_path / f"retinanet_{version}.pth")
        if version == "v2":
            save_file(
                {k: v.contiguous() for k, v in state.items()}, tmp_path / "retinanet_v2.safetensors"
            )
        references[version] = torchvision_raw_outputs(model, images)
    for backend in BACKENDS:
        env = dict(os.environ, KERAS_BACKEND=backend, CUDA_VISIBLE_DEVICES="")
        result = subprocess.run(
            [sys.executable, WORKER, str(tmp_path)], env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, f"{backend} failed:\n{result.stderr[-4000:]}"
    failures = []
    for case, (_, version, data_format) in CASES.items():
        raw, anchors, decoded = references[version]
        scale = float(np.abs(raw).max())
        for backend in BACKENDS:
            got = np.load(tmp_path / f"{backend}_{case}.npz")
            assert got["raw"].shape == raw.shape, (backend, case, got["raw"].shape)
            raw_diff = float(np.abs(got["raw"] - raw).max())
            a = got["anchors"]
            xyxy = np.concatenate([a[:, :2] - a[:, 2:] / 2, a[:, :2] + a[:, 2:] / 2], axis=-1)
            anchor_diff = float(np.abs(xyxy - anchors).max())
            box_diff = float(np.abs(got["decoded"] - decoded).max())
            print(
                f"{backend} {case} ({data_format}): max |raw - torchvision| {raw_diff:.2e} "
                f"({raw_diff / scale:.2e} of {scale:.1f}), anchors {anchor_diff:.1e} px, "
                f"decoded boxes {box_diff:.2e} px"
            )
            if not (raw_diff <= RAW_RTOL * scale and anchor_diff == 0 and box_diff <= BOX_ATOL):
                failures.append(f"{backend}/{case}: {raw_diff:.2e} {anchor_diff} {box_diff:.2e}")
    assert not failures, failures
