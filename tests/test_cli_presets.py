"""``predict --preset`` and ``convert`` end to end on a real photo, with a random checkpoint
laid out as torchvision's (no download), and their error messages.

The photo is matplotlib's ``grace_hopper.jpg`` (600 high, 512 wide), resized to a 160-pixel
short side (``--min-side``) to keep the ResNet50 cheap.
"""

import importlib.util
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import ops

from keras_retinanet import cli, presets
from keras_retinanet.cli import main
from keras_retinanet.convert import to_torchvision
from keras_retinanet.decoder import TORCHVISION_DECODING
from keras_retinanet.variants import torchvision_retinanet

PRESET = "retinanet_resnet50_fpn_coco"
SIDES = ["--min-side", "160", "--max-side", "200"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def memory_calls(monkeypatch):
    """``keep_freed_memory`` is left alone (these commands never call it anyway)."""
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: True)


@pytest.fixture(scope="module")
def photo():
    cbook = pytest.importorskip("matplotlib.cbook")
    return str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """``(model, path)``: a random v1 model (eps 0, as the preset runs it) whose "person"
    logits (class 1, COCO's id) are biased up, so that every location detects a person, and
    its state dict as ``.safetensors``."""
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    keras.utils.set_random_seed(0)
    model = torchvision_retinanet(version="v1", batch_norm_epsilon=0.0)
    model.build((None, None, None, 3))
    bias = model.cls_head.output_conv.bias
    value = ops.convert_to_numpy(bias).copy()
    value[1::91] = 3.0  # [anchor, class] channels: class 1 of every anchor
    bias.assign(value)
    path = tmp_path_factory.mktemp("checkpoint") / "retinanet_v1.safetensors"
    safetensors_numpy.save_file(to_torchvision(model), str(path))
    return model, str(path)


@pytest.fixture(scope="module")
def converted(checkpoint, tmp_path_factory):
    """``convert --preset ... --weights ...``: the ``.keras`` path."""
    output = tmp_path_factory.mktemp("converted") / "model.keras"
    argv = ["convert", "--preset", PRESET, "--weights", checkpoint[1], "--output", str(output)]
    assert main(argv) == 0
    return str(output)


def _detections(folder):
    with open(os.path.join(folder, "detections.json")) as f:
        return json.load(f)


def test_convert_writes_the_model_and_its_run_file(converted):
    with open(os.path.join(os.path.dirname(converted), "run.json")) as f:
        run = json.load(f)
    assert run["preset"] == PRESET and run["torchvision_version"] == "v1"
    assert run["source"] == "retinanet_v1.safetensors"
    assert (run["normalization"], run["min_side"], run["max_side"], run["stride"]) == (
        "torchvision",
        800,
        1333,
        32,
    )
    assert run["image_size"] is None and run["decoding"] == TORCHVISION_DECODING
    assert run["class_names"] == list(presets.COCO_CATEGORY_NAMES)
    assert run["class_to_category_id"] == list(range(91))


def test_convert_a_checkpoint_of_ones_own(checkpoint, tmp_path):
    output = tmp_path / "own" / "model.keras"
    argv = ["convert", "--version", "v1", "--weights", checkpoint[1], "--output", str(output)]
    assert main(argv) == 0 and output.is_file()
    with open(tmp_path / "own" / "run.json") as f:
        run = json.load(f)
    assert run["preset"] is None and run["torchvision_version"] == "v1"
    # 91 slots: torchvision's COCO layout, so the COCO names.
    assert run["class_names"] == list(presets.COCO_CATEGORY_NAMES)
    assert run["normalization"] == "torchvision" and run["decoding"] == TORCHVISION_DECODING


def test_predict_with_a_preset_and_with_the_converted_model(checkpoint, converted, photo, tmp_path):
    by_preset, by_model = tmp_path / "preset", tmp_path / "model"
    common = ["--images", photo, "--score-threshold", "0.5", *SIDES]
    argv = ["predict", "--preset", PRESET, "--weights", checkpoint[1], "--output", str(by_preset)]
    assert main(argv + common) == 0
    assert main(["predict", "--model", converted, "--output", str(by_model), *common]) == 0
    assert (by_preset / "grace_hopper_detections.png").is_file()
    detections = _detections(by_preset)
    # torchvision's decoding keeps at most 300 per image; the labels are COCO ids, COCO-named.
    assert 100 < len(detections) <= TORCHVISION_DECODING["max_detections"]
    assert {(d["category_id"], d["class_name"]) for d in detections} == {(1, "person")}
    boxes = np.asarray([d["bbox"] for d in detections])  # [x, y, w, h] in the original photo
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] > 0).all()
    assert (boxes[:, 0] + boxes[:, 2] <= 512 + 1e-3).all()  # the photo is 512 wide
    assert (boxes[:, 1] + boxes[:, 3] <= 600 + 1e-3).all()  # and 600 high
    assert (
        boxes[:, 0].max() + boxes[:, 2].max() > 300
    )  # spread over the photo, not the 160 px input
    again = _detections(by_model)
    assert [(d["category_id"], d["image_id"]) for d in again] == [
        (d["category_id"], d["image_id"]) for d in detections
    ]
    np.testing.assert_allclose(
        [d["bbox"] for d in again], [d["bbox"] for d in detections], atol=0.02
    )
    np.testing.assert_allclose(
        [d["score"] for d in again], [d["score"] for d in detections], atol=1e-4
    )


def _other_backend():
    current = keras.backend.backend()
    for name in ("jax", "torch", "tensorflow"):
        if name != current and importlib.util.find_spec(name) is not None:
            return name
    return None


RELOAD = """
import sys
import numpy as np
import keras
import keras_retinanet  # noqa: F401  (registers the classes)
model = keras.saving.load_model(sys.argv[1])
out = model(np.load(sys.argv[2]))
np.save(sys.argv[3], keras.ops.convert_to_numpy(out))
"""


def test_the_converted_model_loads_on_another_backend(checkpoint, converted, tmp_path):
    """Saved on this backend; reloaded here and, when one is installed, on another backend in
    a subprocess, with the source model's outputs."""
    source, _ = checkpoint
    x = np.random.default_rng(0).normal(size=(1, 96, 128, 3)).astype("float32")
    expected = ops.convert_to_numpy(source(x))
    reloaded = keras.saving.load_model(converted)
    epsilons = {layer.epsilon for layer in reloaded.backbone.layers if hasattr(layer, "epsilon")}
    assert epsilons == {0.0}
    np.testing.assert_allclose(ops.convert_to_numpy(reloaded(x)), expected, atol=1e-5)
    other = _other_backend()
    if other is None:
        return
    np.save(tmp_path / "x.npy", x)
    env = dict(os.environ, KERAS_BACKEND=other, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", RELOAD, converted, str(tmp_path / "x.npy"), str(tmp_path / "y")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, atol=1e-4)


def _one_line_error(capsys, *fragments):
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("keras-retinanet: error: "), err
    for fragment in fragments:
        assert fragment in err, err


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["predict", "--images", "x.jpg"], ["one of the arguments --model --preset is required"]),
        (
            ["predict", "--model", "m.keras", "--preset", PRESET, "--images", "x.jpg"],
            ["not allowed with argument"],
        ),
        (["predict", "--preset", "yolo", "--images", "x.jpg"], ["invalid choice: 'yolo'"]),
        (["convert", "--output", "m.keras"], ["one of the arguments --preset --version"]),
        (["convert", "--version", "v3", "--output", "m.keras"], ["invalid choice: 'v3'"]),
    ],
)
def test_argument_errors(argv, fragments, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert all(fragment in err for fragment in fragments), err


def test_command_errors_exit_2_with_one_line(tmp_path, monkeypatch, capsys, photo):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.keras").write_bytes(b"x")
    for argv, fragments in [
        (
            ["predict", "--model", "model.keras", "--weights", "w.pth", "--images", photo],
            ["--weights goes with --preset"],
        ),
        (
            ["predict", "--preset", PRESET, "--weights", "missing.pth", "--images", photo],
            ["--weights 'missing.pth' is not an existing file"],
        ),
        (
            ["convert", "--version", "v1", "--output", "out.keras"],
            ["--version needs --weights"],
        ),
        (
            ["convert", "--preset", PRESET, "--output", "out.h5"],
            ["--output must be a path ending in .keras"],
        ),
        (
            ["convert", "--preset", PRESET, "--output", "model.keras"],
            ["'model.keras' already exists", "--overwrite"],
        ),
    ]:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        _one_line_error(capsys, *fragments)


def test_a_corrupt_published_file_and_a_failed_download_are_reported(
    tmp_path, monkeypatch, capsys, photo
):
    """Neither reaches the network nor builds a model."""
    monkeypatch.chdir(tmp_path)
    preset = presets.PRESETS[PRESET]
    (tmp_path / preset.file_name).write_bytes(b"truncated")
    argv = ["predict", "--preset", PRESET, "--images", photo, "--output", "out"]
    with pytest.raises(SystemExit):
        main(argv + ["--weights", preset.file_name])
    _one_line_error(capsys, f"--preset {PRESET}:", "has 9 bytes, expected 136595076")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    unreachable = "http://127.0.0.1:9/" + preset.file_name  # the discard port: refused
    monkeypatch.setitem(
        presets._PRESETS, PRESET, presets.dataclasses.replace(preset, url=unreachable)
    )
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit):
        main(["convert", "--preset", PRESET, "--output", "model2.keras"])
    _one_line_error(capsys, "could not download", unreachable, "--weights PATH")
