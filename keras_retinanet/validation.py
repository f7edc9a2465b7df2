"""Input checks shared by the model, the decoder, the label encoder and the loss.

Shapes are checked on static shapes (also while tracing); values (NaN, ranges) only when they
are known in Python (:func:`is_concrete`), so a check never breaks tracing. Every failure is a
``ValueError`` that names the argument and what was expected.
"""

import keras
import numpy as np
from keras import ops

from keras_retinanet.backends import is_concrete_tensor
from keras_retinanet.layout import spatial_axes


def is_concrete(x):
    """Whether the values of ``x`` are known now, so they can be checked in Python.

    True for NumPy data and eager tensors; False inside a traced or compiled function
    (``tf.function``, ``jax.jit``, ``torch.compile``), for symbolic ``keras.KerasTensor``s and
    for PyTorch ``meta`` tensors (Keras' shape inference).
    """
    if isinstance(x, np.ndarray | np.generic | list | tuple | int | float):
        return True
    if isinstance(x, keras.KerasTensor):
        return False
    return is_concrete_tensor(x)


def any_true(mask):
    """``bool(ops.any(mask))`` for a concrete boolean tensor (one scalar host transfer)."""
    return bool(ops.convert_to_numpy(ops.any(mask)))


def static_dims(shape):
    """A shape as a tuple of ``int`` or ``None`` (unknown, or symbolic such as a
    ``jax.export`` dimension); ``None`` when the shape itself is ``None``."""
    if shape is None:
        return None
    dims = []
    for dim in tuple(shape):
        try:
            dims.append(None if dim is None else int(dim))
        except Exception:  # symbolic sizes raise their own exception types
            dims.append(None)
    return tuple(dims)


def static_shape(x):
    """``x.shape`` as :func:`static_dims`, or ``None`` when even the rank is unknown (a
    TensorFlow graph tensor)."""
    try:
        return static_dims(x.shape)
    except (TypeError, ValueError):
        return None


def positive_int(value, name):
    """``value`` as an ``int`` when it is a positive integer (``bool`` excluded), else
    ``ValueError`` naming ``name``."""
    if isinstance(value, bool | np.bool_):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    try:
        as_int = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive integer, got {value!r}") from None
    if as_int != value or as_int < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return as_int


def check_image_shape(shape, data_format="channels_last"):
    """``ValueError`` unless the static ``shape`` can be ``[N >= 1, H >= 1, W >= 1, 3]``
    (``[N, 3, H, W]`` when ``data_format`` is channels_first). Unknown sizes pass."""
    if shape is None:  # unknown rank while tracing: nothing to check
        return
    shape = static_dims(shape)
    last = data_format == "channels_last"
    layout = "[batch, height, width, 3]" if last else "[batch, 3, height, width] (channels_first)"
    if len(shape) != 4:
        raise ValueError(f"images must have rank 4 {layout}, got shape {shape}")
    channels = shape[-1] if last else shape[1]
    if channels is not None and channels != 3:
        raise ValueError(
            f"images must have 3 channels (RGB) in the {'last' if last else 'second'} axis "
            f"for data_format={data_format!r}, got shape {shape}"
        )
    if shape[0] == 0:
        raise ValueError(f"images must hold at least one image, got an empty batch {shape}")
    h_axis, w_axis = spatial_axes(data_format)
    for dim, name in ((shape[h_axis], "height"), (shape[w_axis], "width")):
        if dim is not None and dim < 1:
            raise ValueError(f"images must have a positive {name}, got shape {shape}")


def validate_images(images, data_format="channels_last"):
    """``ValueError`` unless ``images`` can be a ``[N, H, W, 3]`` input of ``RetinaNet``
    (``[N, 3, H, W]`` for ``data_format="channels_first"``).

    The static shape is always checked; the values (NaN/Inf) only when concrete: a NumPy array
    (checked on the host) or an eager tensor, never while tracing.
    """
    check_image_shape(static_shape(images), data_format)
    if isinstance(images, np.ndarray):  # e.g. all of predict(x): stays on the host
        bad = images.dtype.kind in "fc" and not np.isfinite(images).all()
    elif is_concrete(images):
        values = ops.convert_to_tensor(images)
        bad = "float" in str(values.dtype) and any_true(ops.logical_not(ops.isfinite(values)))
    else:
        bad = False
    if bad:
        raise ValueError(
            "images contain NaN or Inf values; RetinaNet expects finite preprocessed pixels "
            "(check the image loading and normalisation)"
        )
