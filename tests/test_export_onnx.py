"""``RetinaNetDetector.export(path, format="onnx")`` (PyTorch backend) and its NMS subgraph.

The NMS subgraph (``keras_retinanet.export._onnx_nms``) is checked alone against the NumPy
reference on the seeded cases of ``nms_cases.py`` with onnxruntime; it needs only ``onnx`` and
``onnxruntime``, so it runs in every backend's session. The end-to-end export tests need the
PyTorch backend.
"""

import keras
import numpy as np
import pytest
from nms_cases import assert_same_detections, edge_cases, generate_cases

from keras_retinanet.nms import combined_non_max_suppression_reference as reference
from keras_retinanet.nms._validation import output_size

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

TORCH_ONLY = pytest.mark.skipif(
    keras.backend.backend() != "torch",
    reason="format='onnx' is written from the PyTorch backend only (the traced torch module)",
)

#: Subnormal cases the ONNX graph cannot match (``_onnx_nms.py``'s docstring): areas and
#: intersections computed inside onnxruntime's ``NonMaxSuppression`` are not flushed.
ONNX_UNFLUSHED = {"subnormal areas", "subnormal intersection", "subnormal iou"}
# Every hand-made case and every third seeded case (703 cases), in 4 groups for xdist.
_CASES = [c for c in edge_cases() if c.name not in ONNX_UNFLUSHED] + generate_cases()[::3]
_GROUPS = 4


def _session(model_or_path):
    options = ort.SessionOptions()
    options.log_severity_level = 3  # no warnings about unused initializers
    source = model_or_path
    if isinstance(model_or_path, onnx.ModelProto):
        source = model_or_path.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _run_nms_subgraph(case):
    from keras_retinanet.export._onnx_nms import nms_model

    _, _, q, _ = case.boxes.shape
    num_classes = case.scores.shape[2]
    k = output_size(
        case.max_output_size_per_class, case.max_total_size, num_classes, case.pad_per_class
    )
    model = nms_model(
        num_classes=num_classes,
        max_output_size_per_class=case.max_output_size_per_class,
        max_total_size=k,
        iou_threshold=case.iou_threshold,
        score_threshold=case.score_threshold,
        per_class_boxes=q > 1,
        clip_boxes=case.clip_boxes,
    )
    onnx.checker.check_model(model, full_check=True)
    boxes = case.boxes if q > 1 else case.boxes[:, :, 0]
    out = _session(model).run(None, {"candidate_boxes": boxes, "candidate_scores": case.scores})
    assert out[2].dtype == np.int32 and out[3].dtype == np.int32
    return out[0], out[1], out[2].astype(np.float32), out[3]


@pytest.mark.parametrize("group", range(_GROUPS))
def test_nms_subgraph_matches_reference(group):
    """ONNX ``NonMaxSuppression`` + the merge == ``tf.image.combined_non_max_suppression``'s
    NumPy reference: strict score and IoU thresholds, zero-area boxes, inverted corners,
    NaN scores, ``-inf``/NaN thresholds, empty images and ``A = 0``, per-class boxes; equal
    scores compared with the tie rule of docs/numerics.md."""
    for case in _CASES[group::_GROUPS]:
        expected = reference(case.boxes, case.scores, **case.kwargs())
        assert_same_detections(_run_nms_subgraph(case), expected, case=case)


def test_nms_subgraph_covers_the_edge_cases():
    names = {case.name for case in _CASES}
    for name in ("iou equal to an iou", "score threshold equal to a score", "zero area"):
        assert name in names
    assert any(case.ties for case in _CASES) and any(case.boxes.shape[1] == 0 for case in _CASES)


@pytest.mark.skipif(keras.backend.backend() == "torch", reason="checks the other backends")
def test_onnx_format_refused_off_torch(tmp_path):
    from keras_retinanet.export import export_detector

    with pytest.raises(ValueError, match="cannot be exported from the"):
        export_detector(None, tmp_path / "m.onnx", format="onnx")


# --- end to end, PyTorch ---------------------------------------------------------------------

HEIGHT, WIDTH = 96, 160


def _images(batch, seed):
    return np.random.default_rng(seed).normal(0, 50, (batch, HEIGHT, WIDTH, 3)).astype("float32")


@pytest.fixture(scope="module")
def model():
    """A tiny RetinaNet whose heads give many overlapping candidates above 0.05."""
    from keras_retinanet import RetinaNet, compact_backbone

    keras.utils.set_random_seed(0)
    net = RetinaNet(
        3, backbone=compact_backbone(widths=(8, 16, 32, 32)), fpn_filters=16, head_convs=1
    )
    net(_images(1, 0))
    rng = np.random.default_rng(1)
    cls_kernel, cls_bias = net.cls_head.weights[-2:]
    cls_kernel.assign(rng.normal(0, 0.3, cls_kernel.shape).astype("float32"))
    cls_bias.assign(np.full(cls_bias.shape, -2.5, "float32"))  # sigmoid ~0.08 +- spread
    box_kernel = net.box_head.weights[-2]
    box_kernel.assign(rng.normal(0, 0.05, box_kernel.shape).astype("float32"))
    return net


def _assert_matches(got, want, *, min_detections=1):
    """onnxruntime outputs (list) vs ``detector.predict`` (dict)."""
    names = ("boxes", "scores", "classes", "num_detections")
    got = dict(zip(names, got, strict=True))
    want = {name: np.asarray(want[name]) for name in names}
    for name in names:
        assert got[name].shape == want[name].shape, name
        assert got[name].dtype == want[name].dtype, name
    assert np.all(want["num_detections"] >= min_detections), want["num_detections"]
    np.testing.assert_array_equal(got["num_detections"], want["num_detections"])
    np.testing.assert_array_equal(got["classes"], want["classes"])
    np.testing.assert_allclose(got["boxes"], want["boxes"], rtol=0, atol=1e-2)
    np.testing.assert_allclose(got["scores"], want["scores"], rtol=0, atol=1e-4)
    return {
        "boxes": float(np.abs(got["boxes"] - want["boxes"]).max()),
        "scores": float(np.abs(got["scores"] - want["scores"]).max()),
    }


@TORCH_ONLY
def test_export_matches_predict(model, tmp_path):
    detector = model.make_detector()
    x = _images(2, 3)
    before = detector.predict(x, verbose=0)
    fast_before = dict(model.fast_paths_applied)
    path = tmp_path / "detector.onnx"
    detector.export(path, format="onnx", image_size=(HEIGHT, WIDTH), verbose=False)

    # The user's detector is untouched: same fast paths, same outputs.
    assert model.fast_paths_applied == fast_before
    after = detector.predict(x, verbose=0)
    for name in before:
        np.testing.assert_array_equal(np.asarray(after[name]), np.asarray(before[name]))

    session = _session(str(path))
    assert [o.name for o in session.get_outputs()] == [
        "boxes",
        "scores",
        "classes",
        "num_detections",
    ]
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"NonMaxSuppression", "TopK", "Sigmoid", "Conv"} <= ops
    _assert_matches(session.run(None, {"images": x}), before, min_detections=21)
    for batch, seed in ((1, 4), (3, 5)):  # one export serves any batch size
        images = _images(batch, seed)
        want = detector.predict(images, verbose=0)
        _assert_matches(session.run(None, {"images": images}), want, min_detections=21)


@TORCH_ONLY
def test_export_with_torchvision_decoding(model, tmp_path):
    """``TORCHVISION_DECODING`` (per-level top-k before NMS, boxes clipped) exports too."""
    from keras_retinanet.decoder import TORCHVISION_DECODING

    options = dict(TORCHVISION_DECODING, pre_nms_top_k_per_level=200)  # < A_l * C for P3
    for decoding in (TORCHVISION_DECODING, options):
        detector = model.make_detector(**decoding)
        path = tmp_path / "torchvision.onnx"
        detector.export(path, format="onnx", image_size=(HEIGHT, WIDTH), verbose=False)
        session = _session(str(path))
        for batch, seed in ((2, 6), (1, 7)):
            images = _images(batch, seed)
            want = detector.predict(images, verbose=0)
            _assert_matches(session.run(None, {"images": images}), want, min_detections=21)


@TORCH_ONLY
def test_export_needs_a_fixed_image_size(model, tmp_path):
    detector = model.make_detector()
    with pytest.raises(ValueError, match="fixed image_size"):
        detector.export(tmp_path / "a.onnx", format="onnx")
    with pytest.raises(ValueError, match="image_size"):
        detector.export(tmp_path / "b.onnx", format="onnx", image_size=(0, 64))
    assert not (tmp_path / "a.onnx").exists() and not (tmp_path / "b.onnx").exists()

    path = tmp_path / "fixed.onnx"
    detector.export(path, format="onnx", image_size=(HEIGHT, WIDTH), verbose=False)
    other = np.zeros((1, HEIGHT + 32, WIDTH, 3), "float32")
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        _session(str(path)).run(None, {"images": other})
