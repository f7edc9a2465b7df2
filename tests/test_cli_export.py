"""``python -m keras_retinanet export``: a saved model -> an artifact that runs on its own."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_retinanet import RetinaNet, compact_backbone
from keras_retinanet.cli import main

BACKEND = keras.backend.backend()
FORMAT = {"torch": "onnx"}.get(BACKEND, "tf_saved_model")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A small trained-looking model in ``model.keras`` (no run.json: default decoding), and
    images with many overlapping candidates (class bias raised)."""
    keras.utils.set_random_seed(0)
    model = RetinaNet(
        3, backbone=compact_backbone(widths=(8, 16, 32, 32)), fpn_filters=16, head_convs=1
    )
    x = np.random.default_rng(0).uniform(-100, 100, (2, 64, 96, 3)).astype("float32")
    model(x)
    kernel, bias = model.cls_head.output_conv.get_weights()
    rng = np.random.default_rng(1)
    model.cls_head.output_conv.set_weights(
        [rng.normal(0, 0.3, kernel.shape).astype("float32"), bias + 2.0]
    )
    path = tmp_path_factory.mktemp("export") / "model.keras"
    model.save(path)
    return path, model, x


def _run_artifact(path, x):
    if FORMAT == "onnx":
        ort = pytest.importorskip("onnxruntime")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(None, {session.get_inputs()[0].name: x}), strict=True))
    tf = pytest.importorskip("tensorflow")
    loaded = tf.saved_model.load(str(path))
    return {k: v.numpy() for k, v in loaded.serve(tf.constant(x)).items()}


def test_export_command_writes_an_artifact_with_the_detections_of_predict(saved, tmp_path):
    if BACKEND == "jax":
        pytest.importorskip("tensorflow", reason="a SavedModel from JAX is written through TF")
    path, model, x = saved
    output = tmp_path / ("detector.onnx" if FORMAT == "onnx" else "saved_model")
    args = ["export", "--model", str(path), "--format", FORMAT, "--output", str(output)]
    if BACKEND != "tensorflow":
        args += ["--image-size", "64", "96"]
    assert main(args) == 0
    got = _run_artifact(output, x)
    expected = {k: ops.convert_to_numpy(v) for k, v in model.make_detector()(x).items()}
    assert (expected["num_detections"] > 20).all()
    np.testing.assert_array_equal(got["num_detections"], expected["num_detections"])
    for row, n in enumerate(expected["num_detections"]):
        np.testing.assert_array_equal(got["classes"][row, :n], expected["classes"][row, :n])
        np.testing.assert_allclose(got["boxes"][row, :n], expected["boxes"][row, :n], atol=1e-2)
        np.testing.assert_allclose(got["scores"][row, :n], expected["scores"][row, :n], atol=1e-4)


def test_export_command_names_the_formats_of_other_backends(saved, tmp_path, capsys):
    path, _, _ = saved
    other = "tf_saved_model" if FORMAT == "onnx" else "onnx"
    out = tmp_path / ("x.onnx" if other == "onnx" else "x")
    with pytest.raises(SystemExit) as exit_:
        main(["export", "--model", str(path), "--format", other, "--output", str(out)])
    assert exit_.value.code == 2
    assert "cannot be exported from the" in capsys.readouterr().err
