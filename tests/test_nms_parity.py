"""Every generated case on TensorFlow, JAX and PyTorch against
``tf.image.combined_non_max_suppression`` itself (``pytest -m parity -rP`` prints the counts,
also from pytest-xdist workers).

Each backend's cases are split into ``SHARDS`` interleaved parts, one test each, so that
pytest-xdist workers share the slowest one (JAX compiles about one program per case).

TensorFlow runs in this process; JAX and PyTorch run in a subprocess each (with their own
``KERAS_BACKEND``, calling the per-backend module directly), since TensorFlow and JAX loaded in
one process can crash.
"""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from nms_cases import assert_same_detections, generate_cases

tf = pytest.importorskip("tensorflow")

pytestmark = pytest.mark.parity

CASES = generate_cases()
# NMS_PARITY_STRIDE=k checks every k-th case only (quick local runs); the default is all.
_STRIDE = int(os.environ.get("NMS_PARITY_STRIDE", "1"))
SHARDS = 2


def _to_numpy(outputs):
    return [np.asarray(x.cpu() if hasattr(x, "cpu") else x) for x in outputs]


@pytest.fixture(scope="module")
def tf_results():
    return [
        [x.numpy() for x in tf.image.combined_non_max_suppression(c.boxes, c.scores, **c.kwargs())]
        for c in CASES[::_STRIDE]
    ]


# Runs the cases in order of their power-of-two padded shape: eager JAX calls pad small inputs
# to such shapes, so each compiled program serves one contiguous run of cases and is dropped
# before the next (a process holding hundreds of compiled programs runs out of memory maps).
_RUNNER = """
import importlib, pickle, sys
import numpy as np
sys.path.insert(0, {tests!r})
from nms_cases import generate_cases
module = importlib.import_module("keras_retinanet.nms._{backend}")
cases = generate_cases()[::{stride}][{shard}::{shards}]

def bucket(n):
    return 0 if n <= 0 else 1 << (int(n) - 1).bit_length()

def shape_key(i):
    return (bucket(cases[i].boxes.shape[1]), bucket(cases[i].scores.shape[2]))

out = [None] * len(cases)
previous = None
for i in sorted(range(len(cases)), key=shape_key):
    if "{backend}" == "jax" and previous not in (None, shape_key(i)):
        import jax
        jax.clear_caches()
    previous = shape_key(i)
    case = cases[i]
    result = module.combined_non_max_suppression(case.boxes, case.scores, **case.kwargs())
    out[i] = [np.asarray(x.cpu() if hasattr(x, "cpu") else x) for x in result]
with open({path!r}, "wb") as f:
    pickle.dump(out, f)
"""


def _results(backend, cases, shard, tmp_path):
    if backend == "tensorflow":
        from keras_retinanet.nms import _tensorflow

        return [
            _to_numpy(_tensorflow.combined_non_max_suppression(c.boxes, c.scores, **c.kwargs()))
            for c in cases
        ]
    env = dict(os.environ, KERAS_BACKEND=backend)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tests = os.path.dirname(os.path.abspath(__file__))
    path = str(tmp_path / f"{backend}.pkl")
    code = _RUNNER.format(
        tests=tests, backend=backend, path=path, stride=_STRIDE, shard=shard, shards=SHARDS
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=root)
    with open(path, "rb") as f:
        return pickle.load(f)


@pytest.mark.parametrize("shard", range(SHARDS))
@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_identical_to_tf(backend, shard, tf_results, tmp_path):
    pytest.importorskip(backend)
    failures = []
    cases = CASES[::_STRIDE][shard::SHARDS]
    results = _results(backend, cases, shard, tmp_path)
    expected_results = tf_results[shard::SHARDS]
    for case, expected, actual in zip(cases, expected_results, results, strict=True):
        try:
            assert_same_detections(actual, expected, case=case)
        except AssertionError as error:
            failures.append(f"{case}: {str(error)[:300]}")
    n = len(cases)
    stride = f", every {_STRIDE}th case" if _STRIDE > 1 else ""
    subset = f" (part {shard + 1} of {SHARDS}{stride}, of {len(CASES)} cases)"
    print(
        f"\n{backend}: {n - len(failures)}/{n} cases identical to "
        f"tf.image.combined_non_max_suppression{subset}"
    )
    assert not failures, "\n".join(failures[:5])


def test_tf_leaks_padding_below_minus_one():
    """TensorFlow 2.21 pads its per-class result slots with score -1 and class -1; a kept
    score below -1 sorts after them, so TF returns a padding row as a detection. The library
    follows SPEC §4 (kept boxes only); this test records TF's behaviour."""
    from keras_retinanet.nms.reference import combined_non_max_suppression_reference

    boxes = np.array([[[[0, 0, 1, 1]], [[2, 2, 3, 3]], [[4, 4, 5, 5]], [[6, 6, 7, 7]]]], np.float32)
    scores = np.array([[[0.5], [-2.0], [-5.0], [np.nan]]], np.float32)
    ours = combined_non_max_suppression_reference(boxes, scores, 4, 4, clip_boxes=False)
    theirs = [
        x.numpy()
        for x in tf.image.combined_non_max_suppression(boxes, scores, 4, 4, clip_boxes=False)
    ]
    assert ours[2][0, :3].tolist() == [0, 0, 0]
    assert ours[1][0, :3].tolist() == [0.5, -2.0, -5.0]
    if theirs[2][0, 1] == -1:
        print("\nTensorFlow returns a padding row (class -1, score -1) for kept scores < -1")
