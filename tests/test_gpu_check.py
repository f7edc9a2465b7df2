"""The pure-Python pieces of ``benchmarks/gpu_check.py`` (no bundle, no GPU): case digests and
the stored-answer round trip, the comparison rules (a perturbed answer fails), the offline
wheel selection, and ``seeded_weights`` (identical values for two builds)."""

import importlib.util
import io
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "gpu_check", os.path.join(ROOT, "benchmarks", "gpu_check.py")
)
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)


@pytest.fixture(scope="module")
def edge():
    from nms_cases import edge_cases

    return edge_cases()


def _reference(case):
    from keras_retinanet.nms.reference import combined_non_max_suppression_reference

    out = combined_non_max_suppression_reference(case.boxes, case.scores, **case.kwargs())
    return [np.asarray(x) for x in out]


def test_case_digest_is_stable_and_sensitive(edge):
    from nms_cases import edge_cases

    again = edge_cases()
    assert [gpu_check.case_digest(c) for c in edge] == [gpu_check.case_digest(c) for c in again]
    case = edge[0]
    changed = type(case)(**{**case.__dict__, "boxes": case.boxes + np.float32(1e-6)})
    assert gpu_check.case_digest(changed) != gpu_check.case_digest(case)
    other_threshold = type(case)(**{**case.__dict__, "iou_threshold": 0.51})
    assert gpu_check.case_digest(other_threshold) != gpu_check.case_digest(case)


def test_answers_round_trip_through_npz(edge):
    answers = {gpu_check.case_key("edge", c.index): _reference(c) for c in edge[:6]}
    arrays = {}
    gpu_check.save_nms_answers(arrays, answers)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    buffer.seek(0)
    npz = np.load(buffer)
    for case in edge[:6]:
        key = gpu_check.case_key("edge", case.index)
        loaded = gpu_check.load_nms_answer(npz, key)
        for a, b in zip(loaded, answers[key], strict=True):
            assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)
        assert gpu_check.compare_nms(loaded, answers[key], case) is None


def test_compare_nms_rejects_a_perturbed_answer(edge):
    case = next(c for c in edge if c.name == "merge order")
    expected = _reference(case)
    assert gpu_check.compare_nms(expected, expected, case) is None
    for field, delta in ((1, 1e-4), (0, 1e-3)):  # a score, a box coordinate
        wrong = [x.copy() for x in expected]
        wrong[field][0, 0] += delta
        assert gpu_check.compare_nms(wrong, expected, case)
    wrong = [x.copy() for x in expected]
    wrong[2][0, 0] += 1  # a class
    assert "classes" in gpu_check.compare_nms(wrong, expected, case)


def test_compare_raw_and_detections():
    rng = np.random.default_rng(0)
    raw = rng.normal(0, 1, (2, 64, 84)).astype(np.float32)
    rows, stats = gpu_check.raw_summary(raw)
    assert rows.shape == (2, 64 // gpu_check.ROW_STRIDE, 84) and stats.shape == (2, 84, 2)
    assert gpu_check.compare_raw(raw + np.float32(1e-6), rows, stats)[0]
    assert not gpu_check.compare_raw(raw + np.float32(1e-3), rows, stats)[0]

    k = 5
    det = {
        "boxes": np.zeros((1, k, 4), np.float32),
        "scores": np.zeros((1, k), np.float32),
        "classes": np.zeros((1, k), np.int32),
        "num_detections": np.array([4], np.int32),
    }
    det["boxes"][0, :4] = rng.uniform(0, 500, (4, 4))
    det["scores"][0, :4] = [0.9, 0.8, 0.7, 0.5003]
    det["classes"][0, :4] = [3, 1, 3, 2]
    assert gpu_check.compare_detections(det, det, threshold=0.5)[0]
    shifted = {key: v.copy() for key, v in det.items()}
    shifted["boxes"][0, 1, 0] += 2.0  # two pixels
    assert not gpu_check.compare_detections(shifted, det, threshold=0.5)[0]
    # The last row lies within DET_BOUNDARY of the threshold: dropping it is tolerated.
    dropped = {key: v.copy() for key, v in det.items()}
    dropped["num_detections"][0] = 3
    dropped["scores"][0, 3], dropped["boxes"][0, 3], dropped["classes"][0, 3] = 0, 0, 0
    assert gpu_check.compare_detections(dropped, det, threshold=0.5)[0]
    assert not gpu_check.compare_detections(dropped, det, threshold=0.3)[0]


def test_wheel_selection_follows_this_interpreter(monkeypatch):
    import sys

    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    assert gpu_check._compatible("keras-3.15.1-py3-none-any.whl")
    assert gpu_check._compatible(f"h5py-3.14.0-{tag}-{tag}-manylinux_2_17_x86_64.whl") == (
        gpu_check.platform.machine() == "x86_64"
    )
    assert not gpu_check._compatible("h5py-3.14.0-cp39-cp39-manylinux_2_17_x86_64.whl")
    assert gpu_check._normalise("markdown_it_py") == "markdown-it-py"


def test_seeded_weights_identical_for_two_builds():
    from keras_retinanet import RetinaNet, compact_backbone

    values = []
    for _ in range(2):
        backbone = compact_backbone(widths=(16, 8, 8, 8))  # tiny: fast on every backend
        model = RetinaNet(num_classes=2, backbone=backbone, fpn_filters=8, head_convs=1)
        model.build((1, 64, 64, 3))
        layout = gpu_check.seeded_weights(model, 5)
        prefix = model.name + "/"  # differs between the builds (retina_net, retina_net_1)
        values.append({v.path.removeprefix(prefix): np.asarray(v.numpy()) for v in model.weights})
    assert len(layout) == len(values[0])
    assert values[0].keys() == values[1].keys()
    for path, value in values[0].items():
        np.testing.assert_array_equal(value, values[1][path], err_msg=path)
    variances = [v for p, v in values[0].items() if p.endswith("moving_variance")]
    assert variances and all((v > 0).all() for v in variances)
