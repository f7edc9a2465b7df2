"""Class and box subnets shared across pyramid levels (docs/numerics.md, "Model layout")."""

import math

import keras
from keras import layers

from keras_retinanet.layout import standardize_data_format, with_channels


def prior_bias(prior_probability):
    """Bias ``-log((1 - p) / p)`` making every class start at probability ``p``.

    With ``p = 0.01`` (the paper's choice) the ~100k background anchors do not swamp the focal
    loss in the first iterations.
    """
    p = float(prior_probability)
    if not 0.0 < p < 1.0:
        raise ValueError(f"prior_probability must be in (0, 1), got {prior_probability!r}")
    return -math.log((1.0 - p) / p)


@keras.saving.register_keras_serializable(package="keras_retinanet")
class PredictionHead(layers.Layer):
    """``num_convs`` x [Conv2D(filters, 3) + ReLU] then Conv2D(output_filters, 3).

    The ReLU is each hidden ``Conv2D``'s activation (the same values as ``ops.relu`` after it).
    With ``norm="group_norm"`` (torchvision's v2 heads) each hidden layer is instead
    Conv2D without bias, then ``GroupNormalization(norm_groups)``, then ReLU.

    All kernels use ``RandomNormal(0, 0.01)``, as in the paper and the keras.io example.

    Args:
        output_filters: channels of the last conv, ``anchors_per_location * values``
            (``9 * num_classes`` for the class head, ``9 * 4`` for the box head).
        bias_value: constant initial bias of the last conv (``prior_bias(0.01)`` for the class
            head, ``0.0`` for the box head).
        num_convs: hidden conv layers (4 in the paper).
        filters: channels of the hidden convs (256 in the paper).
        data_format: ``"channels_last"`` or ``"channels_first"`` layout of the level maps;
            ``None`` takes ``keras.config.image_data_format()``.
        norm: ``None`` (keras.io, torchvision v1) or ``"group_norm"`` (torchvision v2).
        norm_groups: groups of the group normalisation (32, torchvision's).
        norm_epsilon: its epsilon (1e-5, PyTorch's ``GroupNorm`` default).

    Call args:
        inputs: ``[N, h, w, C]`` (``[N, C, h, w]`` when channels first) one pyramid level.

    Returns:
        ``[N, h, w, output_filters]`` (``[N, output_filters, h, w]``) raw outputs.
    """

    def __init__(
        self,
        *,
        output_filters,
        bias_value=0.0,
        num_convs=4,
        filters=256,
        data_format=None,
        norm=None,
        norm_groups=32,
        norm_epsilon=1e-5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.data_format = standardize_data_format(data_format)
        self.output_filters = int(output_filters)
        self.bias_value = float(bias_value)
        self.num_convs = int(num_convs)
        self.filters = int(filters)
        if self.output_filters <= 0 or self.num_convs < 0 or self.filters <= 0:
            raise ValueError(
                "output_filters and filters must be positive and num_convs non-negative, got "
                f"{output_filters}, {filters}, {num_convs}"
            )
        if norm not in (None, "group_norm"):
            raise ValueError(f"norm must be None or 'group_norm', got {norm!r}")
        self.norm = norm
        self.norm_groups = int(norm_groups)
        self.norm_epsilon = float(norm_epsilon)
        if norm is not None and (self.norm_groups <= 0 or self.filters % self.norm_groups):
            raise ValueError(
                f"norm_groups must be a positive divisor of filters={self.filters}, "
                f"got {norm_groups!r}"
            )
        kernel_init = lambda: keras.initializers.RandomNormal(0.0, 0.01)  # noqa: E731
        self.hidden = [
            layers.Conv2D(
                self.filters,
                3,
                padding="same",
                activation="relu" if norm is None else None,
                use_bias=norm is None,
                data_format=self.data_format,
                kernel_initializer=kernel_init(),
                name=f"conv_{i}",
                dtype=self.dtype_policy,
            )
            for i in range(self.num_convs)
        ]
        channel_axis = -1 if self.data_format == "channels_last" else 1
        self.norms = [
            layers.GroupNormalization(
                groups=self.norm_groups,
                axis=channel_axis,
                epsilon=self.norm_epsilon,
                name=f"norm_{i}",
                dtype=self.dtype_policy,
            )
            for i in range(self.num_convs if norm is not None else 0)
        ]
        self.output_conv = layers.Conv2D(
            self.output_filters,
            3,
            padding="same",
            data_format=self.data_format,
            kernel_initializer=kernel_init(),
            bias_initializer=keras.initializers.Constant(self.bias_value),
            name="output",
            dtype=self.dtype_policy,
        )

    def build(self, input_shape):
        shape = tuple(input_shape)
        for i, conv in enumerate(self.hidden):
            conv.build(shape)
            shape = with_channels(shape, self.filters, self.data_format)
            if self.norms:
                self.norms[i].build(shape)
        self.output_conv.build(shape)
        self.built = True

    def call(self, inputs, training=None):
        x = inputs
        for i, conv in enumerate(self.hidden):
            x = conv(x)  # Conv2D + ReLU (without norm)
            if self.norms:
                x = keras.ops.relu(self.norms[i](x))
        return self.output_conv(x)

    def compute_output_shape(self, input_shape):
        return with_channels(input_shape, self.output_filters, self.data_format)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "output_filters": self.output_filters,
                "bias_value": self.bias_value,
                "num_convs": self.num_convs,
                "filters": self.filters,
                "data_format": self.data_format,
                "norm": self.norm,
                "norm_groups": self.norm_groups,
                "norm_epsilon": self.norm_epsilon,
            }
        )
        return config
