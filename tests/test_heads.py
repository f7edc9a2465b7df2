import math

import keras
import numpy as np
import pytest
from keras import ops

from keras_retinanet import PredictionHead, prior_bias


def test_prior_bias_gives_initial_probability():
    assert prior_bias(0.01) == pytest.approx(-math.log(99.0))
    assert prior_bias(0.01) == pytest.approx(-4.59512, abs=1e-5)
    assert 1 / (1 + math.exp(-prior_bias(0.2))) == pytest.approx(0.2)


@pytest.mark.parametrize("p", [0.0, 1.0, -0.5, 2.0])
def test_prior_probability_outside_open_unit_interval_raises(p):
    with pytest.raises(ValueError, match="prior_probability"):
        prior_bias(p)


def test_head_initializers_follow_the_paper():
    head = PredictionHead(output_filters=9 * 3, bias_value=prior_bias(0.01), filters=64)
    head.build((None, None, None, 64))
    assert len(head.hidden) == 4
    kernels = np.concatenate(
        [ops.convert_to_numpy(c.kernel).ravel() for c in head.hidden + [head.output_conv]]
    )
    assert abs(kernels.mean()) < 1e-3
    assert kernels.std() == pytest.approx(0.01, rel=0.05)
    np.testing.assert_allclose(
        ops.convert_to_numpy(head.output_conv.bias), -math.log(99.0), rtol=1e-6
    )
    for conv in head.hidden:
        np.testing.assert_array_equal(ops.convert_to_numpy(conv.bias), 0.0)


def test_fresh_class_head_predicts_the_prior_everywhere(rng):
    head = PredictionHead(output_filters=9 * 5, bias_value=prior_bias(0.01), filters=16)
    x = rng.standard_normal((2, 6, 5, 16)).astype("float32")
    probs = ops.convert_to_numpy(ops.sigmoid(head(x)))
    assert probs.shape == (2, 6, 5, 45)
    np.testing.assert_allclose(probs, 0.01, atol=2e-3)


def test_hidden_layers_use_relu(rng):
    head = PredictionHead(output_filters=4, num_convs=1, filters=4)
    x = rng.standard_normal((1, 3, 3, 4)).astype("float32")
    out = ops.convert_to_numpy(head(x))
    hidden = ops.convert_to_numpy(ops.relu(head.hidden[0](x)))
    np.testing.assert_allclose(out, ops.convert_to_numpy(head.output_conv(hidden)), atol=1e-6)


def test_config_round_trip():
    head = PredictionHead(output_filters=36, bias_value=0.5, num_convs=2, filters=32)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(head))
    assert (clone.output_filters, clone.bias_value, clone.num_convs, clone.filters) == (
        36,
        0.5,
        2,
        32,
    )


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="output_filters"):
        PredictionHead(output_filters=0)


def test_group_norm_head_is_conv_then_norm_then_relu(rng):
    head = PredictionHead(
        output_filters=6, num_convs=1, filters=8, norm="group_norm", norm_groups=4
    )
    x = rng.standard_normal((2, 5, 5, 4)).astype("float32")
    head(x)
    assert not head.hidden[0].use_bias and head.norms[0].groups == 4
    hidden = ops.convert_to_numpy(head.hidden[0](x))
    normed = ops.convert_to_numpy(ops.relu(head.norms[0](hidden)))
    expected = ops.convert_to_numpy(head.output_conv(normed))
    np.testing.assert_allclose(ops.convert_to_numpy(head(x)), expected, atol=1e-5)
    clone = PredictionHead.from_config(head.get_config())
    assert (clone.norm, clone.norm_groups, clone.norm_epsilon) == ("group_norm", 4, 1e-5)
    with pytest.raises(ValueError, match="norm must be"):
        PredictionHead(output_filters=6, norm="batch_norm")
    with pytest.raises(ValueError, match="norm_groups"):
        PredictionHead(output_filters=6, filters=8, norm="group_norm", norm_groups=3)
