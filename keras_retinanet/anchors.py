"""Anchor boxes for every pyramid level (docs/numerics.md, "Anchors")."""

import math

import keras
import numpy as np
from keras import ops

#: Aspect ratios (w / h, the keras.io convention), scales and areas of the original paper.
DEFAULT_ASPECT_RATIOS = (0.5, 1.0, 2.0)
DEFAULT_SCALES = (2.0**0.0, 2.0 ** (1.0 / 3.0), 2.0 ** (2.0 / 3.0))
DEFAULT_AREAS = (32.0**2, 64.0**2, 128.0**2, 256.0**2, 512.0**2)
DEFAULT_STRIDES = (8, 16, 32, 64, 128)


@keras.saving.register_keras_serializable(package="keras_retinanet")
class AnchorGenerator:
    """Generates ``[cx, cy, w, h]`` anchors for an input image size.

    For each level ``l`` (strides 8..128 for P3..P7) the grid is
    ``ceil(H / stride) x ceil(W / stride)``; the anchor centre of cell ``(y, x)`` is
    ``((x + 0.5) * stride, (y + 0.5) * stride)``. Each cell has
    ``len(aspect_ratios) * len(scales)`` anchors ordered ``ratio_idx * len(scales) + scale_idx``
    (scale fastest). For ratio ``r`` and area ``s``: ``h = sqrt(s / r)``, ``w = s / h``, both
    multiplied by the scale. Levels are flattened ``[H, W, anchors]`` and concatenated P3 -> P7,
    which is the order of the model's outputs.

    Defaults are those of the RetinaNet paper and the keras.io example, so that weights and
    targets are interchangeable with theirs.

    Args:
        aspect_ratios: anchor ``w / h`` ratios.
        scales: multipliers of each level's base size.
        areas: base anchor area per level, one per stride.
        strides: feature strides of the pyramid levels, in pixels.
    """

    def __init__(
        self,
        *,
        aspect_ratios=DEFAULT_ASPECT_RATIOS,
        scales=DEFAULT_SCALES,
        areas=DEFAULT_AREAS,
        strides=DEFAULT_STRIDES,
    ):
        self.aspect_ratios = _positive_floats(aspect_ratios, "aspect_ratios")
        self.scales = _positive_floats(scales, "scales")
        self.areas = _positive_floats(areas, "areas")
        self.strides = tuple(_positive_int(s, "strides") for s in _as_tuple(strides, "strides"))
        if len(self.areas) != len(self.strides) or not self.strides:
            raise ValueError(
                f"areas and strides must have the same non-zero length, got {len(self.areas)} "
                f"areas and {len(self.strides)} strides"
            )
        # [levels, anchors_per_location, 2] anchor (w, h), computed once in float64.
        self._dims = np.stack([self._level_dims(area) for area in self.areas]).astype("float32")

    @property
    def num_anchors_per_location(self):
        """Anchors per feature-map cell (9 with the defaults)."""
        return len(self.aspect_ratios) * len(self.scales)

    def _level_dims(self, area):
        dims = []
        for ratio in self.aspect_ratios:
            h = math.sqrt(area / ratio)
            w = area / h
            for scale in self.scales:
                dims.append((w * scale, h * scale))
        return np.asarray(dims, dtype="float64")

    def grid_sizes(self, image_height, image_width):
        """``[(ceil(H / s), ceil(W / s)) for s in strides]`` for static integer sizes."""
        _check_size(image_height, "image_height")
        _check_size(image_width, "image_width")
        return [(-(-int(image_height) // s), -(-int(image_width) // s)) for s in self.strides]

    def num_anchors(self, image_height, image_width):
        """Total anchor count for an input size: ``A = k * sum_l ceil(H/s_l) * ceil(W/s_l)``."""
        cells = sum(h * w for h, w in self.grid_sizes(image_height, image_width))
        return self.num_anchors_per_location * cells

    def __call__(self, image_height, image_width):
        """Anchors for an ``image_height x image_width`` (padded) input.

        ``image_height``/``image_width`` may be Python ints or scalar integer tensors (a graph
        traced with unknown spatial size).

        Returns:
            ``[A, 4]`` float32 tensor of ``[cx, cy, w, h]`` in pixels.

        Raises:
            ValueError: when a size is a number that is not a positive integer (tensors are
                accepted unchecked).
        """
        _check_size(image_height, "image_height")
        _check_size(image_width, "image_width")
        per_level = [
            self._level_anchors(image_height, image_width, stride, self._dims[i])
            for i, stride in enumerate(self.strides)
        ]
        return ops.concatenate(per_level, axis=0)

    def _level_anchors(self, image_height, image_width, stride, dims):
        k = dims.shape[0]
        grid_h = (image_height + stride - 1) // stride
        grid_w = (image_width + stride - 1) // stride
        xs = (ops.arange(grid_w, dtype="float32") + 0.5) * float(stride)
        ys = (ops.arange(grid_h, dtype="float32") + 0.5) * float(stride)
        cx, cy = ops.meshgrid(xs, ys)  # each [grid_h, grid_w] ("xy" indexing)
        centers = ops.stack([cx, cy], axis=-1)[:, :, None, :]  # [grid_h, grid_w, 1, 2]
        centers = ops.tile(centers, [1, 1, k, 1])  # [grid_h, grid_w, k, 2]
        sizes = ops.zeros_like(centers) + ops.convert_to_tensor(dims)  # [grid_h, grid_w, k, 2]
        return ops.reshape(ops.concatenate([centers, sizes], axis=-1), (-1, 4))

    def get_config(self):
        return {
            "aspect_ratios": list(self.aspect_ratios),
            "scales": list(self.scales),
            "areas": list(self.areas),
            "strides": list(self.strides),
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _check_size(value, name):
    """A positive Python/NumPy integer passes; so does a symbolic size (a scalar tensor in a
    graph, a ``torch.SymInt``), left to the traced computation."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        if value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value}")
    elif value is None or isinstance(value, (bool, np.bool_, float, np.floating, str, bytes)):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _as_tuple(values, name):
    try:
        return tuple(values)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of numbers, got {values!r}") from None


def _positive_floats(values, name):
    """``values`` as a non-empty tuple of finite positive floats, else ``ValueError``."""
    try:
        result = tuple(float(v) for v in _as_tuple(values, name))
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be positive finite numbers, got {values!r}") from None
    if not result or not all(math.isfinite(v) and v > 0 for v in result):
        raise ValueError(f"{name} must be positive finite numbers, got {values!r}")
    return result


def _positive_int(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        if not (isinstance(value, (float, np.floating)) and float(value).is_integer()):
            raise ValueError(f"{name} must be positive integers, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be positive integers, got {value!r}")
    return int(value)
