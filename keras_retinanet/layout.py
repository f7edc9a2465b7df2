"""Image layout (``data_format``) helpers shared by the model's layers."""

import keras

DATA_FORMATS = ("channels_last", "channels_first")


def standardize_data_format(data_format):
    """``None`` -> ``keras.config.image_data_format()``; otherwise validated and returned."""
    if data_format is None:
        return keras.config.image_data_format()
    value = str(data_format).lower()
    if value not in DATA_FORMATS:
        raise ValueError(f"data_format must be one of {DATA_FORMATS} or None, got {data_format!r}")
    return value


def spatial_axes(data_format):
    """``(height_axis, width_axis)`` of a 4-D ``[N, H, W, C]`` / ``[N, C, H, W]`` tensor."""
    return (1, 2) if data_format == "channels_last" else (2, 3)


def channel_axis(data_format):
    """Channel axis of a 4-D tensor in ``data_format`` (``-1`` or ``1``)."""
    return -1 if data_format == "channels_last" else 1


def with_channels(shape, channels, data_format):
    """``shape`` (a 4-D map shape) with its channel axis set to ``channels``."""
    shape = list(shape)
    shape[channel_axis(data_format)] = channels
    return tuple(shape)
