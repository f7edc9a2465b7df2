"""Weights saved once on TensorFlow give the same raw outputs on TensorFlow, JAX and PyTorch.

Every model is built with the library's default ``fast_paths`` setting on each backend (the
workers run without ``KERAS_RETINANET_FAST_PATHS``). The models are ``parity_worker.MODELS``:
a compact-backbone RetinaNet(80) on 2x256x256 inputs through both the weights file and the
``.keras`` file, and a ResNet50 RetinaNet(80) on one 64x64 input through the weights file.
"""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
from parity_worker import MODELS, cpu_seconds

pytestmark = pytest.mark.parity

BACKENDS = ("tensorflow", "jax", "torch")
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "parity_worker.py")
TOLERANCE = 1e-4
#: Anchors of an input (9 per location of the levels P3-P7).
ANCHORS = {(256, 256): 12276, (64, 64): 774}


def _run(backend, mode, directory):
    env = dict(os.environ, KERAS_BACKEND=backend, CUDA_VISIBLE_DEVICES="")
    env.pop("KERAS_RETINANET_FAST_PATHS", None)  # the library's default setting
    before = cpu_seconds()
    result = subprocess.run(
        [sys.executable, WORKER, mode, str(directory)], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, f"{backend} {mode} failed:\n{result.stderr[-4000:]}"
    for line in result.stdout.splitlines():
        print(f"{backend}: {line}")
    cpu = cpu_seconds() - before
    print(f"{backend}: {mode} worker process: {cpu:.0f} s of CPU time")


def test_weights_saved_on_tensorflow_give_same_outputs_on_every_backend(tmp_path):
    for backend in BACKENDS:
        if importlib.util.find_spec(backend) is None:
            pytest.fail(f"the parity session needs all three backends; {backend} is missing")
    _run("tensorflow", "save", tmp_path)  # also loads both files back on TensorFlow
    for backend in BACKENDS[1:]:
        _run(backend, "load", tmp_path)
    failures = []
    for name, (kwargs, shape, keras_file) in MODELS.items():
        reference = np.load(tmp_path / f"outputs_tensorflow_{name}_reference.npy")
        expected_shape = (shape[0], ANCHORS[shape[1:3]], 4 + kwargs["num_classes"])
        assert reference.shape == expected_shape
        assert np.isfinite(reference).all()
        scale = float(np.abs(reference).max())
        for backend in BACKENDS:
            for kind in ("weights", "keras") if keras_file else ("weights",):
                got = np.load(tmp_path / f"outputs_{backend}_{name}_{kind}.npy")
                assert got.shape == reference.shape, f"{backend}/{name}/{kind}: {got.shape}"
                diff = float(np.abs(got - reference).max())
                print(
                    f"max |tf-{backend}| ({kind} file, {name}, "
                    f"{'x'.join(map(str, shape[:3]))}, RetinaNet(80)): {diff:.3e}"
                    f" (outputs up to {scale:.1f})"
                )
                if not diff < TOLERANCE:
                    failures.append(f"{backend}/{name}/{kind}: {diff:.3e}")
    assert not failures, f"outputs differ by more than {TOLERANCE}: {failures}"
