"""keras_retinanet.presets: metadata, checksums, the download path (against a local HTTP
server, never the network) and torchvision's input preprocessing.

Two ResNet50 builds per backend: the source of a random checkpoint and its conversion after a
download. State dicts are written with ``safetensors`` (no torch needed); the comparisons with
torchvision itself run where torch and torchvision are installed.
"""

import dataclasses
import functools
import hashlib
import http.server
import os
import socket
import threading

import keras
import numpy as np
import pytest
from keras import ops

import keras_retinanet as kr
from keras_retinanet import presets
from keras_retinanet.convert import to_torchvision
from keras_retinanet.data import InferenceBatches
from keras_retinanet.data.preprocessing import (
    TORCHVISION_RGB_MEAN,
    TORCHVISION_RGB_STD,
    preprocess_for_inference,
    torchvision_scale,
)
from keras_retinanet.decoder import TORCHVISION_DECODING
from keras_retinanet.presets import (
    PRESETS,
    download_weights,
    get_preset,
    list_presets,
    verify_checksum,
)
from keras_retinanet.variants import (
    TORCHVISION_IMAGE_MEAN,
    TORCHVISION_IMAGE_STD,
    torchvision_retinanet,
)

V1, V2 = "retinanet_resnet50_fpn_coco", "retinanet_resnet50_fpn_v2_coco"


# --- metadata -----------------------------------------------------------------------------


def test_the_two_torchvision_presets_and_their_metadata():
    assert list_presets() == [V1, V2] == kr.list_presets()
    assert set(kr.PRESETS) == {V1, V2} and kr.PRESETS is PRESETS
    v1, v2 = PRESETS[V1], PRESETS[V2]
    assert (v1.version, v1.box_ap, v1.batch_norm_epsilon) == ("v1", 36.4, 0.0)
    assert (v2.version, v2.box_ap, v2.batch_norm_epsilon) == ("v2", 41.5, 1e-5)
    assert v1.url == "https://download.pytorch.org/models/retinanet_resnet50_fpn_coco-eeacb38b.pth"
    assert v2.url == (
        "https://download.pytorch.org/models/retinanet_resnet50_fpn_v2_coco-5905b1c5.pth"
    )
    for preset in (v1, v2):
        assert preset.file_name == preset.url.rsplit("/", 1)[1]
        # torchvision's file names carry the first 8 hex digits of the file's SHA-256.
        assert preset.full_checksum and preset.sha256.startswith(preset.file_name[-12:-4])
        assert "val2017" in preset.metric
        assert preset.num_classes == 91 and preset.category_names == presets.COCO_CATEGORY_NAMES
        assert preset.preprocessing() == {
            "normalization": "torchvision",
            "min_side": 800,
            "max_side": 1333,
            "stride": 32,
        }
        assert (preset.image_mean, preset.image_std) == (
            TORCHVISION_IMAGE_MEAN,
            TORCHVISION_IMAGE_STD,
        )
        assert preset.decoding() == TORCHVISION_DECODING
        assert "BSD-3-Clause" in preset.license and "CC BY 4.0" in preset.license
        assert preset.name in repr(preset) and str(preset.box_ap) in repr(preset)
        assert f"| `{preset.name}` |" in presets.presets_table() and preset.url in (
            presets.presets_table()
        )
    with pytest.raises(TypeError):
        PRESETS["mine"] = v1  # read-only


def test_coco_category_names():
    names = presets.COCO_CATEGORY_NAMES
    assert len(names) == 91 and names[0] == "__background__"
    # Index = COCO category id: the ids COCO left unused are "N/A".
    assert (names[1], names[18], names[44], names[90]) == ("person", "dog", "bottle", "toothbrush")
    unused = [12, 26, 29, 30, 45, 66, 68, 69, 71, 83]  # the 10 of 1..90 COCO never used
    assert [i for i, n in enumerate(names) if n == "N/A"] == unused
    assert len(set(names) - {"N/A", "__background__"}) == 80


def test_metadata_matches_torchvision():
    from torchvision_reference import import_torchvision

    _, torchvision = import_torchvision()
    detection = torchvision.models.detection
    for name, weights in (
        (V1, detection.RetinaNet_ResNet50_FPN_Weights.COCO_V1),
        (V2, detection.RetinaNet_ResNet50_FPN_V2_Weights.COCO_V1),
    ):
        preset = PRESETS[name]
        assert preset.url == weights.url
        assert preset.box_ap == weights.meta["_metrics"]["COCO-val2017"]["box_map"]
        assert list(preset.category_names) == list(weights.meta["categories"])
        # torchvision records the size in MiB to 3 decimals.
        assert abs(preset.file_size / 2**20 - weights.meta["_file_size"]) < 0.0005


def test_run_config_of_a_checkpoint_without_preset():
    run = presets.torchvision_run_config("v2", 3)
    assert run["preset"] is None and run["torchvision_version"] == "v2"
    assert run["class_names"] == ["0", "1", "2"] and run["class_to_category_id"] == [0, 1, 2]
    assert run["decoding"] == TORCHVISION_DECODING
    assert {k: run[k] for k in ("normalization", "min_side", "max_side", "stride")} == (
        PRESETS[V2].preprocessing()
    )
    assert PRESETS[V1].run_config()["preset"] == V1
    with pytest.raises(ValueError, match="version must be one of"):
        presets.torchvision_run_config("v3", 91)


def test_torchvision_normalisation_constants_agree():
    np.testing.assert_array_equal(TORCHVISION_RGB_MEAN, np.float32(TORCHVISION_IMAGE_MEAN))
    np.testing.assert_array_equal(TORCHVISION_RGB_STD, np.float32(TORCHVISION_IMAGE_STD))


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match=f"preset must be one of .*{V1}.*{V2}.*'resnet'"):
        get_preset("resnet")
    with pytest.raises(ValueError, match="preset must be one of"):
        kr.RetinaNet.from_preset("resnet", weights="x.pth")
    assert get_preset(PRESETS[V2]) is PRESETS[V2]


def test_preset_fields_are_checked():
    good = PRESETS[V1]
    with pytest.raises(ValueError, match="sha256 must be 8 to 64 lowercase hex digits"):
        dataclasses.replace(good, sha256="eeacb38")
    with pytest.raises(ValueError, match="sha256 must be"):
        dataclasses.replace(good, sha256="EEACB38B")
    with pytest.raises(ValueError, match="version must be one of"):
        dataclasses.replace(good, version="v3")
    with pytest.raises(ValueError, match="file_name must be a bare file name"):
        dataclasses.replace(good, file_name="models/x.pth")


# --- checksums ----------------------------------------------------------------------------


def test_full_digests_and_prefixes_are_verified(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"checkpoint bytes" * 1000)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert verify_checksum(path, digest) == digest
    assert verify_checksum(path, digest[:8], file_size=16000) == digest  # torch.hub's check
    wrong = ("0" if digest[0] != "0" else "1") + digest[1:]
    with pytest.raises(ValueError, match=f"expected SHA-256: expected {wrong}, got {digest}"):
        verify_checksum(path, wrong)
    with pytest.raises(ValueError, match=r"SHA-256 prefix \(8 hex digits\)"):
        verify_checksum(path, wrong[:8])
    with pytest.raises(ValueError, match="has 16000 bytes, expected 16001"):
        verify_checksum(path, digest, file_size=16001)


def test_a_local_file_with_the_published_name_is_verified(tmp_path):
    path = tmp_path / PRESETS[V1].file_name
    path.write_bytes(b"not the checkpoint")
    with pytest.raises(ValueError, match="has 18 bytes, expected 136595076"):
        kr.RetinaNet.from_preset(V1, weights=path)
    assert path.exists()  # the user's file is reported, never deleted
    with pytest.raises(ValueError, match="weights must be the path of an existing"):
        kr.RetinaNet.from_preset(V1, weights=tmp_path / "missing.pth")


def test_only_the_published_file_name_is_verified(tmp_path, monkeypatch):
    """Other local files are trusted as given: handed to the converter unverified."""
    verified, converted = [], []

    class Converted:
        num_classes = 91

    monkeypatch.setattr(presets, "verify_checksum", lambda path, *a, **k: verified.append(path))
    monkeypatch.setattr(
        "keras_retinanet.convert.from_torchvision",
        lambda path, **kwargs: converted.append((path, kwargs)) or Converted(),
    )
    for name in (PRESETS[V2].file_name, "my_copy.safetensors"):
        (tmp_path / name).write_bytes(b"x")
    model = presets.from_preset(V2, weights=tmp_path / PRESETS[V2].file_name)
    assert model.preset == V2 and len(verified) == 1
    presets.from_preset(V2, weights=str(tmp_path / "my_copy.safetensors"), fast_paths=False)
    assert len(verified) == 1
    assert converted[-1] == (
        str(tmp_path / "my_copy.safetensors"),
        {"version": "v2", "data_format": None, "batch_norm_epsilon": 1e-5, "fast_paths": False},
    )


# --- downloads from a local server --------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``(folder, base_url)``: an HTTP server on 127.0.0.1 serving ``folder``."""
    folder = tmp_path_factory.mktemp("served")
    handler = functools.partial(_QuietHandler, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    """A fresh ``KERAS_HOME``, and no proxy between the test and its local server."""
    home = tmp_path / "keras_home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    return home


def _served_preset(server, name, content, **changes):
    folder, url = server
    (folder / name).write_bytes(content)
    fields = {
        "url": f"{url}/{name}",
        "file_name": name,
        "sha256": hashlib.sha256(content).hexdigest(),
        "file_size": len(content),
        **changes,
    }
    return dataclasses.replace(PRESETS[V1], name=f"test_{name}", **fields)


@pytest.mark.parametrize("digits", [64, 8])
def test_download_is_verified_and_cached(server, keras_home, digits):
    content = os.urandom(5000)
    name = f"good_{digits}.pth"
    preset = _served_preset(server, name, content)
    preset = dataclasses.replace(preset, sha256=preset.sha256[:digits])
    path = download_weights(preset)
    assert path == str(keras_home / "keras_retinanet" / name)
    with open(path, "rb") as f:
        assert f.read() == content
    (server[0] / name).unlink()  # a second call uses the cached file
    assert download_weights(preset) == path


def test_a_corrupt_download_is_removed(server, keras_home):
    preset = _served_preset(
        server, "corrupt.pth", b"tampered", sha256=hashlib.sha256(b"x").hexdigest()
    )
    preset = dataclasses.replace(preset, file_size=None)
    with pytest.raises(ValueError, match="corrupt and was removed from the cache.*weights=PATH"):
        download_weights(preset)
    assert not (keras_home / "keras_retinanet" / "corrupt.pth").exists()
    # A truncated file is reported by its size.
    preset = _served_preset(server, "short.pth", b"abc", file_size=4)
    with pytest.raises(ValueError, match="has 3 bytes, expected 4"):
        download_weights(preset)
    assert not (keras_home / "keras_retinanet" / "short.pth").exists()


def test_an_unreachable_url_says_to_pass_weights(keras_home):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    preset = dataclasses.replace(PRESETS[V2], url=f"http://127.0.0.1:{port}/x.pth")
    with pytest.raises(OSError, match=r"could not download .* weights=PATH .*--weights PATH"):
        kr.RetinaNet.from_preset(preset)
    assert not (keras_home / "keras_retinanet" / PRESETS[V2].file_name).exists()


@pytest.fixture(scope="module")
def v1_checkpoint():
    """A v1 model as torchvision runs the COCO weights (eps 0) with random norm statistics and
    biases, and its state dict as ``.safetensors`` bytes."""
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    keras.utils.set_random_seed(0)
    model = torchvision_retinanet(version="v1", batch_norm_epsilon=0.0)
    model.build((None, None, None, 3))
    rng = np.random.default_rng(1)
    for variable in model.weights:
        if variable.path.endswith("moving_variance"):
            variable.assign(rng.uniform(0.6, 1.4, variable.shape).astype("float32"))
        elif variable.path.endswith(("moving_mean", "beta", "bias")):
            variable.assign(rng.normal(0.0, 0.1, variable.shape).astype("float32"))
    return model, safetensors_numpy.save(to_torchvision(model))


def test_a_downloaded_checkpoint_converts_and_runs(server, keras_home, v1_checkpoint):
    source, content = v1_checkpoint
    preset = _served_preset(server, "v1.safetensors", content)
    model = kr.RetinaNet.from_preset(preset)
    assert model.preset == preset.name and model.built and model.num_classes == 91
    assert (keras_home / "keras_retinanet" / "v1.safetensors").is_file()
    epsilons = {layer.epsilon for layer in model.backbone.layers if hasattr(layer, "epsilon")}
    assert epsilons == {0.0}  # torchvision runs the v1 COCO weights with eps=0
    x = np.random.default_rng(0).normal(size=(1, 96, 128, 3)).astype("float32")
    np.testing.assert_array_equal(ops.convert_to_numpy(model(x)), ops.convert_to_numpy(source(x)))
    detections = model.make_detector(**preset.decoding()).predict(x, verbose=0)
    assert ops.convert_to_numpy(detections["boxes"]).shape == (1, 300, 4)


# --- torchvision's preprocessing ----------------------------------------------------------


@pytest.mark.parametrize(
    "size, resized",
    [
        ((480, 640), (800, 1066)),  # floor, as torchvision (rounding would give 1067)
        ((512, 600), (800, 937)),
        ((3024, 4032), (800, 1066)),
        ((500, 2000), (333, 1333)),  # the long side caps the scale
    ],
)
def test_torchvision_resize_sizes(size, resized):
    scale, new_size = torchvision_scale(*size)
    assert new_size == resized
    assert scale == min(800 / min(size), 1333 / max(size))


def test_torchvision_preprocessing_normalises_then_pads_with_zeros():
    image = np.full((30, 50, 3), (255, 0, 128), dtype="uint8")
    out, ratio = preprocess_for_inference(
        image, min_side=60, max_side=200, stride=32, normalization="torchvision"
    )
    assert out.shape == (64, 128, 3) and ratio == 2.0
    expected = (np.float32([1.0, 0.0, 128 / 255]) - TORCHVISION_RGB_MEAN) / TORCHVISION_RGB_STD
    np.testing.assert_allclose(out[:60, :100], np.broadcast_to(expected, (60, 100, 3)), atol=1e-6)
    assert not out[60:].any() and not out[:, 100:].any()  # zeros after normalising
    raw, _ = preprocess_for_inference(
        image, min_side=60, max_side=200, stride=32, normalize=False, normalization="torchvision"
    )
    np.testing.assert_allclose(raw[:60, :100], np.broadcast_to([255, 0, 128], (60, 100, 3)))
    with pytest.raises(ValueError, match="normalization must be one of .*'tf'"):
        preprocess_for_inference(image, normalization="tf")
    with pytest.raises(ValueError, match="image_size must be None with normalization"):
        preprocess_for_inference(image, image_size=(64, 64), normalization="torchvision")
    with pytest.raises(ValueError, match="image_size must be None with normalization"):
        InferenceBatches([{"image": image}], image_size=(64, 64), normalization="torchvision")


def test_torchvision_inference_batches():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, shape, dtype="uint8") for shape in ((30, 50, 3), (40, 20, 3))]
    batches = InferenceBatches(
        [{"image": im} for im in images],
        batch_size=2,
        min_side=40,
        max_side=100,
        stride=32,
        normalization="torchvision",
    )
    batch, meta = batches[0]
    assert batch.shape == (2, 96, 96, 3)  # 40 x 66 and 80 x 40, padded to a common x32 size
    np.testing.assert_allclose(meta["ratio"], [40 / 30, 2.0])
    for i, image in enumerate(images):
        alone, _ = preprocess_for_inference(
            image, min_side=40, max_side=100, stride=32, normalization="torchvision"
        )
        np.testing.assert_array_equal(batch[i, : alone.shape[0], : alone.shape[1]], alone)
        assert not batch[i, alone.shape[0] :].any() and not batch[i, :, alone.shape[1] :].any()


@pytest.mark.parametrize(
    "size, sides",
    [((48, 64), (80, 133)), ((37, 91), (50, 100)), ((200, 150), (64, 100)), ((480, 640), None)],
)
def test_torchvision_preprocessing_matches_generalized_rcnn_transform(size, sides):
    """Enlarging and shrinking, both limits, and the 800 / 1333 default."""
    from torchvision_reference import import_torchvision

    torch, _ = import_torchvision()
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    min_side, max_side = sides or (800, 1333)
    transform = GeneralizedRCNNTransform(
        min_side, max_side, list(TORCHVISION_IMAGE_MEAN), list(TORCHVISION_IMAGE_STD)
    ).eval()
    image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype="uint8")
    with torch.no_grad():
        batch, _ = transform([torch.from_numpy(image).permute(2, 0, 1).float() / 255])
    expected = batch.tensors[0].permute(1, 2, 0).numpy()
    out, ratio = preprocess_for_inference(
        image, min_side=min_side, max_side=max_side, stride=32, normalization="torchvision"
    )
    assert out.shape == expected.shape
    assert torchvision_scale(*size, min_side=min_side, max_side=max_side)[1] == tuple(
        batch.image_sizes[0]
    )
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_the_readme_table_is_the_presets_table():
    readme = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
    with open(readme, encoding="utf-8") as f:
        assert presets.presets_table() in f.read()
