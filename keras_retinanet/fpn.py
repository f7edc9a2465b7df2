"""Feature pyramid P3-P7 on top of C3-C5 (docs/numerics.md, "Model layout")."""

import keras
from keras import layers, ops

from keras_retinanet.layout import spatial_axes, standardize_data_format, with_channels


def _upsample_like(x, reference, data_format="channels_last"):
    """Nearest 2x upsampling of ``x`` ``[N, h, w, C]`` (or ``[N, C, h, w]``), then cropped to
    ``reference``'s size.

    Backbones that round sizes up (``ceil(H / s)``) give ``2 * h >= H_ref``, so cropping the
    bottom/right keeps exactly the keras.io nearest-neighbour alignment for inputs that are not
    multiples of 32. Should a backbone round down instead, the map is resized to fit.
    """
    h_axis, w_axis = spatial_axes(data_format)
    up = ops.repeat(ops.repeat(x, 2, axis=h_axis), 2, axis=w_axis)  # [N, 2h, 2w, C]
    up_h, up_w = up.shape[h_axis], up.shape[w_axis]
    ref_h, ref_w = reference.shape[h_axis], reference.shape[w_axis]
    if None not in (up_h, up_w, ref_h, ref_w) and (up_h < ref_h or up_w < ref_w):
        return ops.image.resize(x, (ref_h, ref_w), interpolation="nearest", data_format=data_format)
    ref_shape = ops.shape(reference)
    if data_format == "channels_last":
        return up[:, : ref_shape[1], : ref_shape[2], :]
    return up[:, :, : ref_shape[2], : ref_shape[3]]


@keras.saving.register_keras_serializable(package="keras_retinanet")
class FeaturePyramid(layers.Layer):
    """Builds P3..P7 from ``[C3, C4, C5]``.

    ``P5 = conv1x1(C5)``, ``P4 = conv1x1(C4) + up2(P5)``, ``P3 = conv1x1(C3) + up2(P4)``, each
    followed by a 3x3 conv; ``P6 = conv3x3/2(C5)`` (from C5, not P5, as in the paper and the
    keras.io example) and ``P7 = conv3x3/2(relu(P6))``. No activation on the outputs.

    Args:
        filters: channels of every pyramid level (256 in the paper).
        p6_input: ``"c5"`` (keras.io, the paper, torchvision's v2) or ``"p5"`` (torchvision's
            v1 ``retinanet_resnet50_fpn``: P6 from the finished P5, after its 3x3 conv).
        downsample_padding: padding of the stride-2 P6 and P7 convs: ``"same"`` (Keras: on an
            even size the one padded row and column go at the bottom and right) or
            ``"symmetric"`` (PyTorch's ``padding=1``: one on every side). The output sizes are
            the same, ``ceil(h / 2)``; the values differ on even sizes.
        data_format: ``"channels_last"`` (``[N, H, W, C]`` maps) or ``"channels_first"``
            (``[N, C, H, W]``); ``None`` takes ``keras.config.image_data_format()``. The
            weights are the same in both layouts.

    Call args:
        inputs: ``[C3 [N, H3, W3, *], C4 [N, H4, W4, *], C5 [N, H5, W5, *]]`` (channels last;
            ``[N, *, H, W]`` each when channels first).

    Returns:
        ``[P3, P4, P5, P6, P7]``, each ``[N, h_l, w_l, filters]`` (``[N, filters, h_l, w_l]``)
        at strides 8..128.
    """

    def __init__(
        self, *, filters=256, p6_input="c5", downsample_padding="same", data_format=None, **kwargs
    ):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.data_format = standardize_data_format(data_format)
        if p6_input not in ("c5", "p5"):
            raise ValueError(f"p6_input must be 'c5' or 'p5', got {p6_input!r}")
        if downsample_padding not in ("same", "symmetric"):
            raise ValueError(
                f"downsample_padding must be 'same' or 'symmetric', got {downsample_padding!r}"
            )
        self.p6_input = p6_input
        self.downsample_padding = downsample_padding
        symmetric = downsample_padding == "symmetric"
        conv = lambda k, s, name: layers.Conv2D(  # noqa: E731
            self.filters,
            k,
            strides=s,
            padding="valid" if symmetric and s == 2 else "same",
            data_format=self.data_format,
            name=name,
            dtype=self.dtype_policy,
        )
        self.conv_c3_1x1 = conv(1, 1, "conv_c3_1x1")
        self.conv_c4_1x1 = conv(1, 1, "conv_c4_1x1")
        self.conv_c5_1x1 = conv(1, 1, "conv_c5_1x1")
        self.conv_c3_3x3 = conv(3, 1, "conv_c3_3x3")
        self.conv_c4_3x3 = conv(3, 1, "conv_c4_3x3")
        self.conv_c5_3x3 = conv(3, 1, "conv_c5_3x3")
        self.conv_c6_3x3 = conv(3, 2, "conv_c6_3x3")
        self.conv_c7_3x3 = conv(3, 2, "conv_c7_3x3")
        # PyTorch's padding=1 of the stride-2 convs, as a layer of its own.
        self.pad = (
            layers.ZeroPadding2D(
                1, data_format=self.data_format, name="pad", dtype=self.dtype_policy
            )
            if symmetric
            else None
        )

    def build(self, input_shape):
        c3_shape, c4_shape, c5_shape = input_shape
        out_shape = lambda s: with_channels(s, self.filters, self.data_format)  # noqa: E731
        self.conv_c3_1x1.build(c3_shape)
        self.conv_c4_1x1.build(c4_shape)
        self.conv_c5_1x1.build(c5_shape)
        self.conv_c3_3x3.build(out_shape(c3_shape))
        self.conv_c4_3x3.build(out_shape(c4_shape))
        self.conv_c5_3x3.build(out_shape(c5_shape))
        # Built for any size: Keras checks a known spatial size against "valid" padding, and
        # the symmetric padding comes in front of these convs only when they are called.
        c5_channels = c5_shape[-1 if self.data_format == "channels_last" else 1]
        p6_channels = c5_channels if self.p6_input == "c5" else self.filters
        any_size = lambda c: with_channels((None, None, None, None), c, self.data_format)  # noqa: E731
        self.conv_c6_3x3.build(any_size(p6_channels))
        self.conv_c7_3x3.build(any_size(self.filters))
        self.built = True

    def call(self, inputs, training=None):
        c3, c4, c5 = inputs
        p5 = self.conv_c5_1x1(c5)
        p4 = self.conv_c4_1x1(c4)
        p4 = p4 + _upsample_like(p5, p4, self.data_format)
        p3 = self.conv_c3_1x1(c3)
        p3 = p3 + _upsample_like(p4, p3, self.data_format)  # uses the already merged P4
        p3, p4, p5 = self.conv_c3_3x3(p3), self.conv_c4_3x3(p4), self.conv_c5_3x3(p5)
        p6 = self._downsample(self.conv_c6_3x3, c5 if self.p6_input == "c5" else p5)
        p7 = self._downsample(self.conv_c7_3x3, ops.relu(p6))
        return [p3, p4, p5, p6, p7]

    def _downsample(self, conv, x):
        return conv(x if self.pad is None else self.pad(x))

    def compute_output_shape(self, input_shape):
        c3, c4, c5 = input_shape
        h_axis, w_axis = spatial_axes(self.data_format)
        half = lambda d: None if d is None else (d + 1) // 2  # noqa: E731

        def halved(shape):
            shape = list(shape)
            shape[h_axis], shape[w_axis] = half(shape[h_axis]), half(shape[w_axis])
            return tuple(shape)

        p6 = halved(with_channels(c5, self.filters, self.data_format))
        p7 = halved(p6)
        return [with_channels(s, self.filters, self.data_format) for s in (c3, c4, c5)] + [p6, p7]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "p6_input": self.p6_input,
                "downsample_padding": self.downsample_padding,
                "data_format": self.data_format,
            }
        )
        return config
