"""Weights saved once on TensorFlow give the same raw outputs on TensorFlow, JAX and PyTorch."""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.parity

BACKENDS = ("tensorflow", "jax", "torch")
WORKER = os.path.join(os.path.dirname(__file__), "parity_worker.py")
TOLERANCE = 1e-4


def _run(backend, mode, directory):
    env = dict(os.environ, KERAS_BACKEND=backend, CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(
        [sys.executable, WORKER, mode, str(directory)], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, f"{backend} {mode} failed:\n{result.stderr[-4000:]}"


def test_weights_saved_on_tensorflow_give_same_outputs_on_every_backend(tmp_path):
    for backend in BACKENDS:
        if importlib.util.find_spec(backend) is None:
            pytest.fail(f"the parity session needs all three backends; {backend} is missing")
    _run("tensorflow", "save", tmp_path)
    reference = np.load(tmp_path / "outputs_tensorflow_reference.npy")
    assert reference.shape == (2, 12276, 84)
    failures = []
    for backend in BACKENDS:
        _run(backend, "load", tmp_path)
        for kind in ("weights", "keras"):
            got = np.load(tmp_path / f"outputs_{backend}_{kind}.npy")
            diff = float(np.abs(got - reference).max())
            scale = float(np.abs(reference).max())
            print(
                f"max |tf-{backend}| ({kind} file, 2x256x256, RetinaNet(80)): {diff:.3e}"
                f" (outputs up to {scale:.1f})"
            )
            if not diff < TOLERANCE:
                failures.append(f"{backend}/{kind}: {diff:.3e}")
    assert not failures, f"outputs differ by more than {TOLERANCE}: {failures}"
