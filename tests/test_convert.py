"""keras_retinanet.convert: torchvision checkpoints in, the same outputs out.

The comparison with torchvision itself runs here on the PyTorch backend (where torch and
torchvision are installed) and on every backend in the parity session
(``test_torchvision_parity.py``); the rest uses state dicts made by ``to_torchvision``, so it
runs on every backend without torch.
"""

import keras
import numpy as np
import pytest
from keras import ops

from keras_retinanet.convert import from_torchvision, load_state_dict, to_torchvision
from keras_retinanet.variants import torchvision_retinanet

# A size that is a multiple of 32 but not of 128 on both axes, and not square: P6 and P7 have
# 3 x 4 and 2 x 2 cells, 53 x 56 and 80 x 112 pixels apart (not powers of two).
HEIGHT, WIDTH = 160, 224


def _images(batch=2, seed=0):
    return np.random.default_rng(seed).normal(0.0, 1.0, (batch, HEIGHT, WIDTH, 3)).astype("float32")


@pytest.fixture(scope="module")
def v2_state():
    """A v2 model with every norm statistic, affine and bias random, and its state dict."""
    keras.utils.set_random_seed(0)
    model = torchvision_retinanet(version="v2")
    model.build((None, None, None, 3))
    rng = np.random.default_rng(1)
    for variable in model.weights:
        if variable.path.endswith(("moving_variance", "gamma")):
            variable.assign(rng.uniform(0.6, 1.4, variable.shape).astype("float32"))
        elif variable.path.endswith(("moving_mean", "beta", "bias")):
            variable.assign(rng.normal(0.0, 0.1, variable.shape).astype("float32"))
    return model, to_torchvision(model)


def test_state_dict_round_trip_gives_the_same_outputs(v2_state):
    model, state = v2_state
    converted = from_torchvision(state, version="v2")
    x = _images()
    np.testing.assert_array_equal(
        ops.convert_to_numpy(converted(x)), ops.convert_to_numpy(model(x))
    )
    assert converted.num_classes == 91 and converted.fpn.p6_input == "c5"


def test_safetensors_file_needs_no_torch(v2_state, tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    model, state = v2_state
    path = tmp_path / "retinanet_v2.safetensors"
    safetensors_numpy.save_file(state, str(path))
    converted = from_torchvision(path, version="v2")
    x = _images(1)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(converted(x)), ops.convert_to_numpy(model(x))
    )


def test_wrong_version_is_named():
    with pytest.raises(ValueError, match=r"version must be one of \('v1', 'v2'\)"):
        from_torchvision({}, version="v3")


def test_v2_checkpoint_given_as_v1_names_the_keys_and_the_version(v2_state):
    _, state = v2_state
    with pytest.raises(ValueError, match=r"missing: .*unexpected: .*pass version='v2'"):
        from_torchvision(state, version="v1")


def test_missing_and_extra_keys_are_named(v2_state):
    _, state = v2_state
    state = dict(state)
    del state["backbone.body.layer3.2.bn2.running_var"]
    state["head.extra.weight"] = np.zeros(3, "float32")
    with pytest.raises(ValueError) as error:
        from_torchvision(state, version="v2")
    assert "missing: backbone.body.layer3.2.bn2.running_var" in str(error.value)
    assert "unexpected: head.extra.weight" in str(error.value)


def test_shape_mismatch_names_the_tensor_and_both_shapes(v2_state):
    _, state = v2_state
    state = dict(state)
    state["backbone.fpn.layer_blocks.1.0.weight"] = np.zeros((256, 256, 1, 1), "float32")
    with pytest.raises(
        ValueError, match=r"layer_blocks\.1\.0\.weight has shape \(256, 256, 1, 1\)"
    ):
        from_torchvision(state, version="v2")


def test_class_count_comes_from_the_checkpoint(v2_state):
    _, state = v2_state
    state = dict(state)
    state["head.classification_head.cls_logits.weight"] = state[
        "head.classification_head.cls_logits.weight"
    ][: 9 * 3]
    state["head.classification_head.cls_logits.bias"] = state[
        "head.classification_head.cls_logits.bias"
    ][: 9 * 3]
    model = from_torchvision(state, version="v2")
    assert model.num_classes == 3
    assert tuple(model(_images(1)).shape) == (
        1,
        model.anchor_generator.num_anchors(HEIGHT, WIDTH),
        7,
    )


def test_bad_sources_get_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="existing .pth or .safetensors file"):
        load_state_dict(tmp_path / "missing.pth")
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(ValueError, match="must be a .pth or .safetensors file"):
        load_state_dict(tmp_path / "weights.txt")
    with pytest.raises(ValueError, match="mapping of tensor names"):
        load_state_dict([1, 2])
    with pytest.raises(ValueError, match="has no 'head.classification_head.cls_logits.weight'"):
        from_torchvision({"backbone.body.conv1.weight": np.zeros((64, 3, 7, 7))})


def test_checkpoints_of_older_torchvision_releases_are_renamed():
    renamed = load_state_dict(
        {
            "backbone.fpn.inner_blocks.2.weight": np.zeros(1),
            "backbone.fpn.layer_blocks.0.bias": np.zeros(1),
            "head.regression_head.conv.6.weight": np.zeros(1),
            "module.head.classification_head.cls_logits.bias": np.zeros(1),
            "backbone.body.bn1.num_batches_tracked": np.zeros(()),
        }
    )
    assert sorted(renamed) == [
        "backbone.fpn.inner_blocks.2.0.weight",
        "backbone.fpn.layer_blocks.0.0.bias",
        "head.classification_head.cls_logits.bias",
        "head.regression_head.conv.3.0.weight",
    ]


def test_v1_without_batch_norm_counters_runs_with_torchvision_epsilon():
    """torchvision loads its published v1 file (frozen batch norm, no step counters) with
    eps=0; a state dict with counters (BatchNorm2d) keeps 1e-5."""
    model = torchvision_retinanet(version="v1")
    model.build((None, None, None, 3))
    state = to_torchvision(model)
    epsilons = lambda m: {
        layer.epsilon for layer in m.backbone.layers if hasattr(layer, "moving_variance")
    }  # noqa: E731
    assert epsilons(from_torchvision(state, version="v1")) == {0.0}
    state["backbone.body.bn1.num_batches_tracked"] = np.zeros((), "int64")
    assert epsilons(from_torchvision(state, version="v1")) == {1e-5}
    assert epsilons(from_torchvision(state, version="v1", batch_norm_epsilon=0.0)) == {0.0}


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_matches_torchvision_on_the_torch_backend(version, tmp_path):
    if keras.backend.backend() != "torch":
        pytest.skip("torchvision runs next to the PyTorch backend (parity session: all three)")
    import torch
    from torchvision_reference import random_torchvision_retinanet, torchvision_raw_outputs

    reference = random_torchvision_retinanet(version)
    path = tmp_path / f"retinanet_{version}.pth"
    torch.save(reference.state_dict(), path)
    x = _images()
    raw, anchors, decoded = torchvision_raw_outputs(reference, x.transpose(0, 3, 1, 2))
    model = from_torchvision(path, version=version)
    ours = ops.convert_to_numpy(model(x))
    scale = np.abs(raw).max()
    np.testing.assert_allclose(ours, raw, rtol=1e-4, atol=1e-4 * scale)
    ours_anchors = ops.convert_to_numpy(model.anchor_generator(HEIGHT, WIDTH))
    xyxy = np.concatenate(
        [
            ours_anchors[:, :2] - ours_anchors[:, 2:] / 2,
            ours_anchors[:, :2] + ours_anchors[:, 2:] / 2,
        ],
        axis=-1,
    )
    np.testing.assert_array_equal(xyxy, anchors)
    boxes = ops.convert_to_numpy(model.box_coder.decode(ours[..., :4], ours_anchors))
    np.testing.assert_allclose(boxes, decoded, atol=0.05)
    # torchvision's own deltas through our decoding: the same boxes up to float rounding.
    same_input = ops.convert_to_numpy(model.box_coder.decode(raw[..., :4], ours_anchors))
    np.testing.assert_allclose(same_input, decoded, atol=1e-3)
    # Sizes that are not multiples of 32: odd C3/C4/C5 sizes (25, 13, 7 for 200 rows), where
    # torchvision's nearest interpolation to the lateral size must equal our repeat-and-crop.
    odd = np.random.default_rng(3).normal(0.0, 1.0, (1, 3, 200, 232)).astype("float32")
    odd_raw, _, _ = torchvision_raw_outputs(reference, odd)
    odd_ours = ops.convert_to_numpy(model(odd.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(odd_ours, odd_raw, rtol=1e-4, atol=1e-4 * np.abs(odd_raw).max())
    # The inverse loads into torchvision and gives back the checkpoint.
    back = to_torchvision(model)
    result = reference.load_state_dict(
        {k: torch.from_numpy(v) for k, v in back.items()}, strict=False
    )
    assert not result.unexpected_keys
    assert all(k.endswith("num_batches_tracked") for k in result.missing_keys)


def test_converted_model_round_trips_through_a_keras_file(v2_state, tmp_path):
    model, _ = v2_state
    path = tmp_path / "retinanet_v2.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.cls_head.norm == "group_norm" and loaded.anchor_generator.round_half_extents
    x = _images(1)
    np.testing.assert_array_equal(ops.convert_to_numpy(loaded(x)), ops.convert_to_numpy(model(x)))
