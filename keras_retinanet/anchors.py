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
    ``((x + center_offset) * stride, (y + center_offset) * stride)``. Each cell has
    ``len(aspect_ratios) * len(scales)`` anchors ordered ``ratio_idx * len(scales) + scale_idx``
    (scale fastest). For ratio ``r`` and area ``s``: ``h = sqrt(s / r)``, ``w = s / h``, both
    multiplied by the scale. Levels are flattened ``[H, W, anchors]`` and concatenated P3 -> P7,
    which is the order of the model's outputs.

    Defaults are those of the RetinaNet paper and the keras.io example, so that weights and
    targets are interchangeable with theirs. :meth:`torchvision` gives torchvision's anchors
    (docs/numerics.md, "Anchors", torchvision variant).

    Args:
        aspect_ratios: anchor ``w / h`` ratios (torchvision's ``aspect_ratios`` are ``h / w``:
            its ``(0.5, 1.0, 2.0)`` is ``(2.0, 1.0, 0.5)`` here, in the same anchor order).
        scales: multipliers of each level's base size.
        areas: base anchor area per level, one per stride.
        strides: feature strides of the pyramid levels, in pixels.
        sizes: ``None`` (each level's sizes are ``sqrt(area) * scale``) or, per level, the
            anchor sizes themselves (``len(scales)`` numbers each, replacing ``areas`` and
            ``scales``): torchvision's ``int(s * 2 ** (k / 3))`` are not exact powers.
        center_offset: where in its cell an anchor is centred, in strides (0.5, the cell
            centre, keras.io; torchvision uses 0, the cell's top-left corner).
        round_half_extents: ``False`` (keras.io) keeps exact sizes; ``True`` computes each
            half width and height in float32 and rounds it to an integer, half to even, as
            torchvision's ``AnchorGenerator.generate_anchors`` does.
        strides_from_image_size: ``False`` (keras.io) places a level's anchors ``stride``
            pixels apart; ``True`` uses ``H // grid_h`` and ``W // grid_w`` per level and axis,
            as torchvision does (for P6 and P7 of most input sizes that is not the nominal
            stride: a 160-pixel side has a 3-cell P6 grid 53 pixels apart).
    """

    def __init__(
        self,
        *,
        aspect_ratios=DEFAULT_ASPECT_RATIOS,
        scales=DEFAULT_SCALES,
        areas=DEFAULT_AREAS,
        strides=DEFAULT_STRIDES,
        sizes=None,
        center_offset=0.5,
        round_half_extents=False,
        strides_from_image_size=False,
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
        if sizes is None:
            self.sizes = None
        else:
            self.sizes = tuple(
                _positive_floats(level, "sizes") for level in _as_tuple(sizes, "sizes")
            )
            if len(self.sizes) != len(self.strides) or len({len(s) for s in self.sizes}) != 1:
                raise ValueError(
                    f"sizes must hold one equally long sequence per stride ({len(self.strides)}), "
                    f"got {sizes!r}"
                )
        try:
            self.center_offset = float(center_offset)
        except (TypeError, ValueError):
            self.center_offset = math.nan
        if not 0.0 <= self.center_offset < 1.0:
            raise ValueError(f"center_offset must be in [0, 1), got {center_offset!r}")
        for name, value in (
            ("round_half_extents", round_half_extents),
            ("strides_from_image_size", strides_from_image_size),
        ):
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False, got {value!r}")
        self.round_half_extents = bool(round_half_extents)
        self.strides_from_image_size = bool(strides_from_image_size)
        # [levels, anchors_per_location, 2] anchor (w, h), computed once.
        self._dims = np.stack([self._level_dims(level) for level in range(len(self.strides))])
        self._dims = self._dims.astype("float32")

    @classmethod
    def torchvision(cls):
        """torchvision's RetinaNet anchors (``retinanet_resnet50_fpn`` and ``_v2``).

        Sizes ``(s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3)))`` for ``s`` in 32..512,
        torchvision aspect ratios ``(0.5, 1.0, 2.0)`` (``h / w``), half extents rounded, anchors
        centred on ``i * (image_size // grid_size)``.
        """
        return cls(
            aspect_ratios=(2.0, 1.0, 0.5),
            sizes=[
                (s, int(s * 2 ** (1.0 / 3)), int(s * 2 ** (2.0 / 3)))
                for s in (32, 64, 128, 256, 512)
            ],
            center_offset=0.0,
            round_half_extents=True,
            strides_from_image_size=True,
        )

    @property
    def num_anchors_per_location(self):
        """Anchors per feature-map cell (9 with the defaults)."""
        return len(self.aspect_ratios) * self.num_scales

    @property
    def num_scales(self):
        return len(self.scales) if self.sizes is None else len(self.sizes[0])

    def _level_dims(self, level):
        """``[anchors_per_location, 2]`` anchor ``(w, h)`` of one level."""
        if self.round_half_extents:
            return self._rounded_level_dims(level)
        dims = []
        if self.sizes is None:
            area = self.areas[level]
            for ratio in self.aspect_ratios:
                h = math.sqrt(area / ratio)
                w = area / h
                for scale in self.scales:
                    dims.append((w * scale, h * scale))
        else:
            for ratio in self.aspect_ratios:
                for size in self.sizes[level]:
                    dims.append((size * math.sqrt(ratio), size / math.sqrt(ratio)))
        return np.asarray(dims, dtype="float64")

    def _rounded_level_dims(self, level):
        """torchvision's arithmetic, step by step in float32: ``h_ratio = sqrt(h / w)``,
        ``w_ratio = 1 / h_ratio``, half extents ``round(ratio * size / 2)`` (half to even)."""
        f32 = np.float32
        if self.sizes is None:
            sizes = [math.sqrt(self.areas[level]) * scale for scale in self.scales]
        else:
            sizes = self.sizes[level]
        sizes = np.asarray(sizes, dtype=f32)
        h_ratios = np.sqrt(np.asarray([1.0 / r for r in self.aspect_ratios], dtype=f32))
        w_ratios = f32(1.0) / h_ratios
        half_w = np.round((w_ratios[:, None] * sizes[None, :]).reshape(-1) / f32(2.0))
        half_h = np.round((h_ratios[:, None] * sizes[None, :]).reshape(-1) / f32(2.0))
        return np.stack([half_w * f32(2.0), half_h * f32(2.0)], axis=-1).astype("float64")

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
        if self.strides_from_image_size:
            # torchvision: stride = image_size // grid_size, per axis (integers).
            stride_h = ops.cast(image_height // grid_h, "float32")
            stride_w = ops.cast(image_width // grid_w, "float32")
        else:
            stride_h = stride_w = float(stride)
        offset = self.center_offset
        xs = (ops.arange(grid_w, dtype="float32") + offset) * stride_w
        ys = (ops.arange(grid_h, dtype="float32") + offset) * stride_h
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
            "sizes": None if self.sizes is None else [list(level) for level in self.sizes],
            "center_offset": self.center_offset,
            "round_half_extents": self.round_half_extents,
            "strides_from_image_size": self.strides_from_image_size,
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
