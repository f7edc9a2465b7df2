"""``RetinaNetDetector.export(path, format="tf_saved_model")``: NMS inside, loadable without Keras.

The artifact must give ``detector.predict``'s detections: same ``num_detections`` and classes,
boxes within ``BOX_TOL`` px and scores within ``SCORE_TOL``. The detector is a compact-backbone
RetinaNet(3) with ``prior_probability=0.2``, so that most anchors score above the 0.05
threshold and the NMS sees many overlapping candidates (each image keeps > 20 detections).

TensorFlow writes the SavedModel from both the TensorFlow and the JAX backends, so every test
that writes or reads one needs TensorFlow importable (the JAX-only CI session has none: there
those tests skip, and ``test_exports_from_jax_and_tensorflow_processes_match_predict``, a
``parity`` test, checks the JAX export). Run as a script, this file is that test's worker:
``KERAS_BACKEND=jax python tests/test_export_saved_model.py OUT_DIR``.
"""

import importlib.util
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_retinanet import RetinaNet, compact_backbone
from keras_retinanet.backbone import image_data_format

BACKEND = keras.backend.backend()
SUPPORTED = BACKEND in ("tensorflow", "jax")
#: Non-square network inputs: a swapped height and width cannot go unnoticed.
IMAGE = (96, 160)
BOX_TOL, SCORE_TOL = 1e-2, 1e-4
MIN_DETECTIONS = 20
KEYS = ("boxes", "scores", "classes", "num_detections")


def _detector(data_format="channels_last", seed=0):
    keras.utils.set_random_seed(seed)
    first = data_format == "channels_first"
    with image_data_format(data_format):
        backbone = compact_backbone(
            widths=(8, 16, 32, 32), input_shape=(3, None, None) if first else (None, None, 3)
        )
    model = RetinaNet(
        3,
        backbone=backbone,
        fpn_filters=16,
        head_convs=1,
        prior_probability=0.2,
        data_format=data_format,
        # TensorFlow's CPU convolutions are NHWC only: the fast paths run a channels_first
        # model's convolutions in NHWC, the backbone's too.
        fast_user_backbone=first,
    )
    model.build((None, 3, None, None) if first else (None, None, None, 3))
    return model.make_detector()


def _images(batch, size=IMAGE, data_format="channels_last", seed=0):
    x = np.random.default_rng(seed).normal(0.0, 1.0, (batch, *size, 3)).astype("float32")
    return np.transpose(x, (0, 3, 1, 2)).copy() if data_format == "channels_first" else x


def _predict(detector, x):
    out = detector.predict(x, verbose=0)
    return {key: np.asarray(out[key]) for key in KEYS}


def _serve(path, x):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))  # kept alive: serve only weakly holds its variables
    out = loaded.serve(tf.constant(x))
    return {key: out[key].numpy() for key in out}


def _take(reference, rows):
    return {key: value[rows] for key, value in reference.items()}


def _assert_matches(got, want, label=""):
    """``got`` (the artifact) gives ``want`` (``detector.predict``): see the module docstring.
    Returns the largest box and score differences over the valid rows."""
    assert sorted(got) == sorted(KEYS), f"{label}: outputs {sorted(got)}"
    batch, k = want["scores"].shape
    expected = {"boxes": (batch, k, 4), "scores": (batch, k), "classes": (batch, k)}
    expected["num_detections"] = (batch,)
    for key, dtype in zip(KEYS, ("float32", "float32", "int32", "int32"), strict=True):
        assert got[key].shape == expected[key], f"{label}: {key} {got[key].shape}"
        assert got[key].dtype == np.dtype(dtype), f"{label}: {key} {got[key].dtype}"
    np.testing.assert_array_equal(got["num_detections"], want["num_detections"], err_msg=label)
    box_diff = score_diff = 0.0
    for i, n in enumerate(want["num_detections"]):
        np.testing.assert_array_equal(got["classes"][i, :n], want["classes"][i, :n], label)
        box_diff = max(box_diff, float(np.abs(got["boxes"][i, :n] - want["boxes"][i, :n]).max()))
        score_diff = max(
            score_diff, float(np.abs(got["scores"][i, :n] - want["scores"][i, :n]).max())
        )
    assert box_diff <= BOX_TOL and score_diff <= SCORE_TOL, (label, box_diff, score_diff)
    return box_diff, score_diff


def _needs_tensorflow():
    if not SUPPORTED:
        pytest.skip(f"tf_saved_model cannot be written from the {BACKEND} backend")
    pytest.importorskip("tensorflow", reason="writing a SavedModel needs TensorFlow")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One export (dynamic batch; dynamic image size on TensorFlow, ``IMAGE`` on JAX) of a
    never-called detector, and the predictions of that detector."""
    _needs_tensorflow()
    detector = _detector()
    attributes = {name: id(value) for name, value in vars(detector).items()}
    weights = [np.array(w) for w in detector.get_weights()]
    path = tmp_path_factory.mktemp("saved_model") / "detector"
    detector.export(path, format="tf_saved_model", verbose=False, image_size=_export_size())
    after = {name: id(value) for name, value in vars(detector).items()}
    assert after == attributes, "export changed the detector's attributes"
    assert not detector.built and not detector.decoder.built
    for before, now in zip(weights, detector.get_weights(), strict=True):
        np.testing.assert_array_equal(before, np.array(now))
    x = _images(2)
    return detector, path, x, _predict(detector, x)


def _export_size():
    return IMAGE if BACKEND == "jax" else None


def test_round_trip_matches_predict_with_many_detections(exported):
    _, path, x, reference = exported
    assert (reference["num_detections"] > MIN_DETECTIONS).all(), reference["num_detections"]
    diffs = _assert_matches(_serve(path, x), reference, BACKEND)
    print(f"{BACKEND}: max box / score difference {diffs}")


def test_batch_size_is_dynamic(exported):
    _, path, x, reference = exported
    # Detections are per image: a batch of [x1] or [x0, x1, x0] must give those rows.
    _assert_matches(_serve(path, x[1:]), _take(reference, [1]), "batch 1")
    _assert_matches(_serve(path, x[[0, 1, 0]]), _take(reference, [0, 1, 0]), "batch 3")


def test_loads_and_runs_without_keras(exported, tmp_path):
    _, path, x, reference = exported
    np.save(tmp_path / "x.npy", x)
    code = (
        "import sys; sys.modules['keras'] = None; sys.modules['keras_retinanet'] = None\n"
        "import numpy as np, tensorflow as tf\n"
        f"loaded = tf.saved_model.load({str(path)!r})\n"
        f"out = loaded.serve(np.load({str(tmp_path / 'x.npy')!r}))\n"
        "assert 'keras' not in sys.modules or sys.modules['keras'] is None\n"
        f"np.savez({str(tmp_path / 'out.npz')!r}, **{{k: v.numpy() for k, v in out.items()}})\n"
    )
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    got = dict(np.load(tmp_path / "out.npz"))
    _assert_matches(got, reference, "fresh process")


def test_signature_is_named_images(exported):
    import tensorflow as tf

    _, path, _, _ = exported
    signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    ((name, spec),) = signature.structured_input_signature[1].items()
    assert name == "images" and spec.dtype == tf.float32
    expected = [None, *_export_size(), 3] if BACKEND == "jax" else [None, None, None, 3]
    assert spec.shape.as_list() == expected
    assert sorted(signature.structured_outputs) == sorted(KEYS)


def test_fixed_image_size_rejects_other_sizes(exported, tmp_path):
    detector, path, x, reference = exported
    if BACKEND != "jax":  # the shared export is dynamic there
        path = tmp_path / "fixed"
        detector.export(path, format="tf_saved_model", verbose=False, image_size=IMAGE)
        _assert_matches(_serve(path, x), reference, "fixed size")
    with pytest.raises((ValueError, TypeError)):
        _serve(path, _images(1, size=(64, 96)))


def test_image_size_is_dynamic_on_tensorflow(exported):
    if BACKEND != "tensorflow":
        pytest.skip("only the TensorFlow backend exports a dynamic image size")
    detector, path, _, _ = exported
    x = _images(2, size=(64, 96), seed=1)
    _assert_matches(_serve(path, x), _predict(detector, x), "64 x 96")


def test_channels_first_detector_on_tensorflow(tmp_path):
    if BACKEND != "tensorflow":
        pytest.skip("the channels_first export is checked on TensorFlow only")
    _needs_tensorflow()
    detector = _detector("channels_first")
    x = _images(2, data_format="channels_first")
    reference = _predict(detector, x)
    assert (reference["num_detections"] > MIN_DETECTIONS).all()
    detector.export(tmp_path / "nchw", format="tf_saved_model", verbose=False)
    _assert_matches(_serve(tmp_path / "nchw", x), reference, "channels_first")


def test_bad_arguments_raise_before_tracing(tmp_path):
    if not SUPPORTED:
        pytest.skip(f"tf_saved_model cannot be written from the {BACKEND} backend")
    from keras_retinanet.export._saved_model import export_saved_model

    detector = _detector()
    for size in ((96,), (0, 160), (96, 160, 3), "96x160"):
        with pytest.raises(ValueError, match="image_size"):
            detector.export(tmp_path / "x", format="tf_saved_model", image_size=size)
    with pytest.raises(TypeError, match="RetinaNetDetector"):
        export_saved_model(detector.model, tmp_path / "x", image_size=IMAGE)
    with pytest.raises(ValueError, match="unexpected export arguments"):
        detector.export(tmp_path / "x", format="tf_saved_model", input_signature=None)
    unbuilt = RetinaNet(3, backbone=compact_backbone(widths=(8, 16, 32, 32))).make_detector()
    with pytest.raises(ValueError, match="model is not built"):
        export_saved_model(unbuilt, tmp_path / "x", image_size=IMAGE)
    assert not os.path.exists(tmp_path / "x")


def test_jax_needs_a_fixed_image_size(tmp_path):
    if BACKEND != "jax":
        pytest.skip("only the JAX backend needs image_size")
    with pytest.raises(ValueError, match=r"image_size=\(height, width\)"):
        _detector().export(tmp_path / "x", format="tf_saved_model")
    assert not os.path.exists(tmp_path / "x")


def test_torch_cannot_write_a_saved_model(tmp_path):
    if BACKEND != "torch":
        pytest.skip("checks the error of the backend that cannot write a SavedModel")
    detector = _detector()
    with pytest.raises(ValueError, match="'tf_saved_model' from tensorflow/jax") as error:
        detector.export(tmp_path / "x", format="tf_saved_model")
    assert "torch backend" in str(error.value) and "'onnx' from torch" in str(error.value)


# --- cross-backend: JAX and TensorFlow processes export, this process serves both ----------


def _worker(out_dir):
    """Exports the detector of this process's backend to ``out_dir/saved_model`` and saves the
    inputs and ``detector.predict``'s outputs to ``out_dir/predict.npz``."""
    detector = _detector()
    x = _images(2)
    reference = _predict(detector, x)
    detector.export(
        os.path.join(out_dir, "saved_model"),
        format="tf_saved_model",
        verbose=False,
        image_size=_export_size(),
    )
    np.savez(os.path.join(out_dir, "predict.npz"), x=x, **reference)
    print(f"{BACKEND}: num_detections {reference['num_detections'].tolist()}")


@pytest.mark.parity
def test_exports_from_jax_and_tensorflow_processes_match_predict(tmp_path):
    pytest.importorskip("tensorflow", reason="loading a SavedModel needs TensorFlow")
    for backend in ("tensorflow", "jax"):
        if importlib.util.find_spec(backend) is None:
            pytest.fail(f"the parity session needs all backends; {backend} is missing")
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [os.path.dirname(here), env.get("PYTHONPATH")])
    )
    for backend in ("jax", "tensorflow"):
        out = tmp_path / backend
        out.mkdir()
        result = subprocess.run(
            [sys.executable, os.path.abspath(__file__), str(out)],
            env=dict(env, KERAS_BACKEND=backend),
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, f"{backend} export failed:\n{result.stderr[-4000:]}"
        print(result.stdout.strip())
        saved = dict(np.load(out / "predict.npz"))
        x = saved.pop("x")
        assert (saved["num_detections"] > MIN_DETECTIONS).all(), saved["num_detections"]
        diffs = _assert_matches(_serve(out / "saved_model", x), saved, f"{backend} export")
        print(f"{backend} export: max box / score difference {diffs}")
        _assert_matches(_serve(out / "saved_model", x[[1, 0, 1]]), _take(saved, [1, 0, 1]))


if __name__ == "__main__":
    _worker(sys.argv[1])
