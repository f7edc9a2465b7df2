"""Image preprocessing (docs/numerics.md, "Input preprocessing"), in NumPy (Pillow for resizing
and file reading).

Pipeline for one image: optional horizontal flip -> resize (short side to ``min_side``,
capped so the long side is at most ``max_side``) -> zero padding at the bottom/right up to a
multiple of ``stride`` -> caffe-style normalisation (:func:`normalize_image`).

Boxes are ``[x1, y1, x2, y2]`` pixels throughout; the resize multiplies them by ``ratio`` and
predictions on the network input map back to the original image with ``boxes / ratio``.
Padding only adds pixels at the bottom/right, so it never moves a box.

Models converted from torchvision (:mod:`keras_retinanet.presets`) take torchvision's input
instead: ``normalization="torchvision"`` of :func:`preprocess_for_inference` reproduces its
``GeneralizedRCNNTransform`` (:func:`torchvision_resize`, :func:`normalize_image` with
``"torchvision"``, zero padding after normalising).

Image files (:func:`load_image`, :func:`image_size`) are read in the *displayed* frame: the
EXIF orientation tag (1-8, also read from XMP ``tiff:Orientation``) is applied, so a phone
photo stored landscape with orientation 6 loads portrait. Annotations are taken to refer to
that frame, as they do in practice: annotation tools (CVAT, LabelImg, labelme, ...) show the
transposed image, and COCO's own images carry no rotation. A data set's stored
``width``/``height`` must therefore be the displayed size (``image_size``), which
:func:`keras_retinanet.data.verify.verify_images` checks. Pixel values of every Pillow mode
are scaled to ``[0, 255]`` (see :func:`load_image` for the rules; 16-bit images are scaled,
never clipped).
"""

import math
import os

import numpy as np

#: Per-channel BGR means subtracted by ``keras.applications.resnet.preprocess_input``.
CAFFE_BGR_MEAN = np.asarray([103.939, 116.779, 123.68], dtype="float32")

#: torchvision's ``GeneralizedRCNNTransform`` normalisation of RGB in ``[0, 1]`` (the ImageNet
#: statistics; the same numbers as ``keras_retinanet.variants.TORCHVISION_IMAGE_MEAN``/``_STD``,
#: repeated here so that this module needs only NumPy).
TORCHVISION_RGB_MEAN = np.asarray([0.485, 0.456, 0.406], dtype="float32")
TORCHVISION_RGB_STD = np.asarray([0.229, 0.224, 0.225], dtype="float32")

#: Input conventions of :func:`normalize_image` and :func:`preprocess_for_inference`: the
#: keras.io model's (caffe mode, the default) and torchvision's detection models'.
NORMALIZATIONS = ("caffe", "torchvision")

#: Short-side range sampled when jittering in the keras.io example (``jitter=KERAS_IO_JITTER``).
KERAS_IO_JITTER = (640, 1024)

_PILLOW_HINT = (
    'Pillow is required for image loading and resizing: pip install "keras3-retinanet[data]"'
)


def _pil_image():
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - exercised only without Pillow
        raise ImportError(_PILLOW_HINT) from e
    return Image


#: EXIF orientation -> the transpose that brings the stored pixels to the displayed frame
#: (as ``PIL.ImageOps.exif_transpose``); 5-8 swap width and height.
_EXIF_ORIENTATION_TAG = 0x0112
_ORIENTATION_TRANSPOSE = {
    2: "FLIP_LEFT_RIGHT",
    3: "ROTATE_180",
    4: "FLIP_TOP_BOTTOM",
    5: "TRANSPOSE",
    6: "ROTATE_270",
    7: "TRANSVERSE",
    8: "ROTATE_90",
}

#: Errors Pillow raises for files it cannot identify or decode.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, KeyError, IndexError, EOFError)

_MAX_16BIT = 65535


def _one_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _open_image(path):
    """``(path, opened PIL image)``; ``FileNotFoundError`` / one-line ``ValueError``."""
    Image = _pil_image()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path!r}")
    try:
        return path, Image.open(path)
    except (*_DECODE_ERRORS, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image file {path!r}: {_one_line(e)}") from None


def exif_orientation(img):
    """EXIF orientation (1-8; 1 when absent or invalid) of an opened PIL image, from its
    header only.

    Uses ``PIL.Image.Image.getexif`` of the base class, which reads the EXIF block (JPEG APP1,
    TIFF IFD, WebP/PNG ``eXIf`` chunk before the image data, PNG "Raw profile type exif") and
    falls back to XMP ``tiff:Orientation``, as ``ImageOps.exif_transpose`` does, but never
    decodes pixels (``PngImageFile.getexif`` would, to look for an ``eXIf`` chunk after the
    image data, which the PNG specification does not allow; such a chunk is ignored).
    """
    Image = _pil_image()
    try:
        value = Image.Image.getexif(img).get(_EXIF_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - a corrupt EXIF block: pixels stay as stored
        return 1
    try:
        value = int(value)
    except (TypeError, ValueError):
        return 1
    return value if value in _ORIENTATION_TRANSPOSE else 1


def image_size(path):
    """``(width, height)`` of an image file in the displayed frame, from the header only.

    No pixel is decoded (``PIL.Image.open`` reads the header lazily), so this is cheap enough
    to call on every image of a large data set. Width and height are swapped for EXIF
    orientations 5-8 (see :func:`exif_orientation`), so the result is the shape
    :func:`load_image` returns: ``load_image(path).shape[:2] == image_size(path)[::-1]``.

    Raises:
        FileNotFoundError: when ``path`` is not an existing file.
        ValueError: (one line, naming the path) when the header cannot be read.
    """
    path, img = _open_image(path)
    with img:
        width, height = img.size
        orientation = exif_orientation(img)
    if width < 1 or height < 1:
        raise ValueError(f"image file {path!r} has no pixels (size {width}x{height})")
    if orientation >= 5:
        width, height = height, width
    return int(width), int(height)


def _rescale(values, scale, path, mode):
    """``round(values * scale)`` as uint8 after a range check (no silent clipping)."""
    values = np.asarray(values, dtype="float64")
    if not np.isfinite(values).all():
        raise ValueError(f"image file {path!r} (mode {mode}) contains NaN or Inf pixel values")
    lo, hi = float(values.min()), float(values.max())
    if lo < 0 or hi * scale > 255.0 + 1e-6:
        raise ValueError(
            f"image file {path!r} (mode {mode}) has pixel values in [{lo:g}, {hi:g}], outside "
            "the range load_image can scale to [0, 255]; convert it to 8- or 16-bit first"
        )
    return np.clip(np.rint(values * scale), 0, 255).astype("uint8")


def _to_rgb_array(img, path):
    """Pixels of a decoded PIL image as uint8 RGB ``[H, W, 3]`` (rules in :func:`load_image`)."""
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype="uint8")
    if mode == "L":
        grey = np.asarray(img, dtype="uint8")
    elif mode in ("1", "LA", "La"):
        grey = np.asarray(img.convert("L") if mode == "1" else img.getchannel("L"), dtype="uint8")
    elif mode.startswith("I;16") or mode == "I":
        grey = np.asarray(img)
        if mode != "I;16S" and mode != "I":
            grey = grey.astype("uint16")
        grey = _rescale(grey, 255.0 / _MAX_16BIT, path, mode)
    elif mode == "F":
        grey = np.asarray(img, dtype="float64")
        finite = grey[np.isfinite(grey)]
        scale = 255.0 if finite.size and float(finite.max()) <= 1.0 else 1.0
        grey = _rescale(grey, scale, path, mode)
    elif mode == "P":
        rgba = "transparency" in img.info
        pixels = np.asarray(img.convert("RGBA" if rgba else "RGB"), dtype="uint8")
        return np.ascontiguousarray(pixels[..., :3])
    elif mode in ("PA", "RGBA", "RGBX"):
        pixels = np.asarray(img.convert("RGBA") if mode == "PA" else img, dtype="uint8")
        return np.ascontiguousarray(pixels[..., :3])
    else:  # CMYK, YCbCr, RGBa, LAB, HSV, ...: Pillow's own conversion
        try:
            pixels = np.asarray(img.convert("RGB"), dtype="uint8")
        except ValueError as e:
            raise ValueError(
                f"image file {path!r}: cannot convert mode {mode} to RGB: {_one_line(e)}"
            ) from None
        return pixels
    return np.repeat(grey[:, :, None], 3, axis=-1)


def load_image(path):
    """Read an image file as uint8 RGB ``[H, W, 3]`` in the displayed frame.

    The EXIF orientation is applied (see :func:`exif_orientation`; the module docstring says
    why annotations are taken to be in this frame), so the shape is ``image_size(path)``
    reversed. Pillow modes become ``[0, 255]`` as follows:

    - ``"RGB"``, ``"L"`` (grey, repeated to 3 channels): as stored.
    - ``"1"`` (bilevel): 0 and 255.
    - ``"I;16"``, ``"I;16L"``, ``"I;16B"``, ``"I;16N"`` (16-bit grey, e.g. 16-bit PNG/TIFF)
      and ``"I"`` (32-bit int, which is how some Pillow versions open 16-bit files):
      ``round(v * 255 / 65535)``, the full 16-bit range, never clipped. ``"I"`` or ``"I;16S"``
      with a value below 0 or above 65535 has no defensible range and is a ``ValueError``.
    - ``"F"`` (32-bit float): values in ``[0, 1]`` (max <= 1) are ``round(v * 255)``,
      otherwise they must lie in ``[0, 255]`` and are rounded; anything else (negative,
      above 255, NaN/Inf) is a ``ValueError``. An all-zero image stays black either way.
    - ``"P"`` / ``"PA"`` (palette): through the palette (``convert("RGB")``, or ``"RGBA"``
      when the palette has transparency).
    - ``"LA"``, ``"PA"``, ``"RGBA"``, ``"RGBX"``: the alpha channel is *dropped*, not
      composited: colours under transparent pixels are kept as stored (as :func:`as_rgb`
      does for arrays).
    - ``"CMYK"``, ``"YCbCr"``, ``"RGBa"`` and other modes: ``img.convert("RGB")``.
    - 48/64-bit RGB(A) PNGs: Pillow decodes them to 8-bit ``"RGB"``/``"RGBA"`` by keeping the
      high byte (``v >> 8``), which is within 1 of ``round(v * 255 / 65535)``.

    Raises:
        FileNotFoundError: when ``path`` is not an existing file.
        ValueError: one line naming the path, when the file cannot be decoded as an image
            (corrupt, truncated or not an image at all) or its pixel values are out of the
            range of its mode's rule above.
    """
    Image = _pil_image()
    path, img = _open_image(path)
    with img:
        orientation = exif_orientation(img)
        try:
            img.load()
            if orientation != 1:
                img = img.transpose(getattr(Image.Transpose, _ORIENTATION_TRANSPOSE[orientation]))
            pixels = _to_rgb_array(img, path)
        except (*_DECODE_ERRORS, Image.DecompressionBombError) as e:
            if isinstance(e, ValueError) and str(e).startswith("image file "):
                raise
            # PIL reports undecodable data as UnidentifiedImageError / OSError ("truncated").
            raise ValueError(f"cannot read image file {path!r}: {_one_line(e)}") from None
    if pixels.ndim != 3 or pixels.shape[-1] != 3 or min(pixels.shape[:2]) < 1:
        raise ValueError(f"image file {path!r} has no pixels (shape {pixels.shape})")
    return pixels


def as_rgb(image):
    """Validate an image array and return it as ``[H, W, 3]``.

    Accepts ``[H, W]`` and ``[H, W, 1]`` (grey, repeated to 3 channels) and ``[H, W, 4]``
    (alpha dropped). The dtype is kept.

    Raises:
        ValueError: for another shape, a zero height or width, a non-numeric dtype, or NaN/Inf
            pixel values.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"image must be [H, W, 3] (or grey / RGBA), got shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image has an empty side: shape {image.shape}")
    if image.dtype.kind not in "uif":
        raise ValueError(f"image must have a numeric dtype, got {image.dtype}")
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise ValueError("image contains NaN or Inf pixel values")
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    elif image.shape[-1] == 4:
        image = image[..., :3]
    return image


def check_normalization(normalization):
    """``normalization`` if it is one of :data:`NORMALIZATIONS`, else a ``ValueError``."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    return normalization


def normalize_image(image, normalization="caffe"):
    """Normalises RGB pixels for the network.

    ``"caffe"`` (the default; equal to ``keras.applications.resnet.preprocess_input``): RGB ->
    BGR, then subtract :data:`CAFFE_BGR_MEAN`; no scaling. ResNet50 ImageNet weights were
    trained on this input, so the keras.io model expects it.

    ``"torchvision"``: ``(image / 255 - TORCHVISION_RGB_MEAN) / TORCHVISION_RGB_STD``, RGB
    order kept: what torchvision's detection models take (``ToTensor`` then
    ``GeneralizedRCNNTransform.normalize``).

    Args:
        image: ``[..., H, W, 3]`` RGB pixels in ``[0, 255]`` (any numeric dtype).
        normalization: one of :data:`NORMALIZATIONS`.

    Returns:
        ``[..., H, W, 3]`` float32.
    """
    check_normalization(normalization)
    image = np.asarray(image, dtype="float32")
    if image.shape[-1] != 3:
        raise ValueError(f"expected 3 channels in the last axis, got shape {image.shape}")
    if normalization == "torchvision":
        return (image / np.float32(255.0) - TORCHVISION_RGB_MEAN) / TORCHVISION_RGB_STD
    # One channel at a time: NumPy's broadcast over a reversed 3-long last axis is ~3x slower
    # (this was 40% of a training batch's preprocessing); the result is bit-identical.
    out = np.empty_like(image)
    for c in range(3):
        np.subtract(image[..., 2 - c], CAFFE_BGR_MEAN[c], out=out[..., c])
    return out


def compute_resize_ratio(height, width, *, min_side=800, max_side=1333):
    """Scale factor so the short side becomes ``min_side`` without the long side passing
    ``max_side`` (then the long side becomes ``max_side`` instead).

    Raises:
        ValueError: unless ``height``, ``width``, ``min_side`` and ``max_side`` are positive
            finite numbers.
    """
    _check_sides(height, width, min_side, max_side)
    ratio = float(min_side) / float(min(height, width))
    if ratio * max(height, width) > max_side:
        ratio = float(max_side) / float(max(height, width))
    return ratio


def resize_image(image, size):
    """Bilinear resize of ``[H, W, 3]`` to ``size = (new_h, new_w)``; returns float32.

    uint8 images are resized in Pillow's RGB mode, other dtypes channel by channel in float
    mode, so float inputs keep their precision.
    """
    Image = _pil_image()
    image = as_rgb(image)
    new_h, new_w = int(size[0]), int(size[1])
    if (new_h, new_w) == image.shape[:2]:
        return image.astype("float32")
    if image.dtype == np.uint8:
        out = Image.fromarray(np.ascontiguousarray(image)).resize((new_w, new_h), Image.BILINEAR)
        return np.asarray(out, dtype="float32")
    channels = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(image[..., c], dtype="float32")).resize(
                (new_w, new_h), Image.BILINEAR
            )
        )
        for c in range(3)
    ]
    return np.stack(channels, axis=-1).astype("float32")


def torchvision_scale(height, width, *, min_side=800, max_side=1333):
    """torchvision's resize factor and resized size: ``(scale, (new_h, new_w))``.

    ``GeneralizedRCNNTransform`` takes ``scale = min(min_side / short, max_side / long)`` and
    resizes with ``recompute_scale_factor=True``, so each side becomes
    ``floor(side * scale)``: a 480 x 640 image becomes 800 x 1066 (not 1067, as
    :func:`compute_resize_ratio`'s rounding gives). Predictions map back to the original
    image as ``boxes / scale``.

    Raises:
        ValueError: unless all four arguments are positive finite numbers.
    """
    _check_sides(height, width, min_side, max_side)
    scale = min(
        float(min_side) / float(min(height, width)), float(max_side) / float(max(height, width))
    )
    size = (max(1, math.floor(float(height) * scale)), max(1, math.floor(float(width) * scale)))
    return scale, size


def _torch_bilinear_taps(in_size, out_size):
    """Source indices and weights of PyTorch's ``interpolate(mode="bilinear",
    align_corners=False)`` along one axis, given only the sizes (``recompute_scale_factor``):
    ``src = (dst + 0.5) * step - 0.5`` clamped at 0, with ``step = in / out`` in float32 and
    ``src`` rounded once to float32 (its CPU kernel's fused multiply-add)."""
    step = float(np.float32(in_size) / np.float32(out_size))
    src = (step * (np.arange(out_size, dtype="float64") + 0.5) - 0.5).astype("float32")
    src = np.maximum(src, np.float32(0.0))
    low = np.minimum(src.astype("int64"), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    weight_high = np.clip(src - low.astype("float32"), 0.0, 1.0).astype("float32")
    return low, high, (np.float32(1.0) - weight_high), weight_high


def torchvision_resize(image, *, min_side=800, max_side=1333):
    """Resize as torchvision's ``GeneralizedRCNNTransform`` does, without padding.

    Size and factor are :func:`torchvision_scale`'s; the interpolation is PyTorch's bilinear
    with ``align_corners=False`` and no antialiasing (also when shrinking), computed in
    float32 on the pixel values as given (no uint8 rounding), so it reproduces torchvision's
    resized tensor up to float rounding. This is not :func:`resize_image` (Pillow), whose
    bilinear filter widens when shrinking.

    Args:
        image: ``[H, W, 3]`` pixels (any numeric dtype; torchvision resizes after
            normalising, which this commutes with up to float rounding).
        min_side, max_side: torchvision's ``min_size`` (800) and ``max_size`` (1333).

    Returns:
        ``(resized, scale)``: float32 ``[floor(H * scale), floor(W * scale), 3]`` and the
        scale (a Python float).
    """
    image = as_rgb(image).astype("float32", copy=False)
    height, width = image.shape[:2]
    scale, (new_h, new_w) = torchvision_scale(height, width, min_side=min_side, max_side=max_side)
    y0, y1, wy0, wy1 = _torch_bilinear_taps(height, new_h)
    x0, x1, wx0, wx1 = _torch_bilinear_taps(width, new_w)
    rows = image[y0] * wy0[:, None, None] + image[y1] * wy1[:, None, None]  # [new_h, W, 3]
    resized = rows[:, x0] * wx0[None, :, None] + rows[:, x1] * wx1[None, :, None]
    return resized.astype("float32", copy=False), scale


def _check_sides(height, width, min_side, max_side):
    """``ValueError`` naming the first of the four that is not a positive finite number."""
    for name, value in (
        ("height", height),
        ("width", width),
        ("min_side", min_side),
        ("max_side", max_side),
    ):
        check_positive(value, name)


def check_positive(value, name):
    """``ValueError`` naming ``name`` unless ``value`` is a positive finite number."""
    try:
        ok = not isinstance(value, bool) and math.isfinite(float(value)) and float(value) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def check_boxes(boxes, name="boxes"):
    """``boxes`` as float32 ``[n, 4]`` corners, else ``ValueError`` naming ``name``.

    Accepts an empty list/array for "no boxes". Rejects other shapes (an ``[n, 5]`` array is
    not silently reshaped), NaN/Inf coordinates and inverted boxes (``x2 < x1`` or
    ``y2 < y1``, typically ``[x, y, w, h]`` boxes passed as corners).
    """
    boxes = np.asarray(boxes, dtype="float32")
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must be [n, 4] corners [x1, y1, x2, y2], got {boxes.shape}")
    if not np.isfinite(boxes).all():
        raise ValueError(f"{name} contain NaN or Inf coordinates")
    inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if inverted.any():
        i = int(np.argmax(inverted))
        raise ValueError(
            f"{name}[{i}] = {boxes[i].tolist()} is inverted: corners [x1, y1, x2, y2] need "
            "x1 <= x2 and y1 <= y2 (were [x, y, w, h] boxes passed?)"
        )
    return boxes


def _padded_size(size, stride):
    return int(math.ceil(size / stride) * stride)


def resize_and_pad(
    image,
    *,
    min_side=800,
    max_side=1333,
    jitter=None,
    stride=128,
    image_size=None,
    rng=None,
):
    """Resize keeping the aspect ratio, then zero-pad bottom/right.

    Defaults are those of docs/numerics.md ("Input preprocessing") and the keras.io example:
    short side 800, long side at most 1333, padding to a multiple of 128 (the coarsest pyramid
    stride, so every level's grid covers the image exactly).

    Args:
        image: ``[H, W, 3]`` RGB pixels (uint8 or float).
        min_side: target short side; ignored when ``jitter`` is given.
        max_side: cap on the long side after resizing.
        jitter: ``None`` or ``(lo, hi)``: sample the short side uniformly in ``[lo, hi)``
            (multi-scale training; the keras.io value is :data:`KERAS_IO_JITTER`).
        stride: the padded height and width are multiples of this.
        image_size: optional fixed output ``(H', W')``; the ratio is reduced if needed so the
            resized image fits, and padding fills the rest. Gives every image one static shape.
        rng: ``numpy.random.Generator`` for the jitter draw (a fresh, unseeded one if ``None``).

    Returns:
        ``(padded, ratio)``: float32 ``[H', W', 3]`` with zeros in the padding and the Python
        float scale applied to the image (multiply boxes by it; divide predictions by it).
    """
    image = as_rgb(image)
    height, width = image.shape[:2]
    if image_size is None:
        check_positive(stride, "stride")
    if jitter is not None:
        try:
            lo, hi = (float(v) for v in jitter)
        except (TypeError, ValueError):
            raise ValueError(f"jitter must be (lo, hi) with 0 < lo <= hi, got {jitter!r}") from None
        if not 0 < lo <= hi < math.inf:
            raise ValueError(f"jitter must be (lo, hi) with 0 < lo <= hi, got {jitter!r}")
        rng = np.random.default_rng() if rng is None else rng
        min_side = float(rng.uniform(lo, hi)) if hi > lo else float(lo)
    ratio = compute_resize_ratio(height, width, min_side=min_side, max_side=max_side)
    if image_size is not None:
        if len(image_size) != 2:
            raise ValueError(f"image_size must be (height, width), got {image_size!r}")
        check_positive(image_size[0], "image_size[0]")
        check_positive(image_size[1], "image_size[1]")
        out_h, out_w = int(image_size[0]), int(image_size[1])
        if out_h <= 0 or out_w <= 0:
            raise ValueError(f"image_size must be positive, got {image_size!r}")
        ratio = min(ratio, out_h / height, out_w / width)
    new_h = max(1, int(round(height * ratio)))
    new_w = max(1, int(round(width * ratio)))
    if image_size is not None:
        new_h, new_w = min(new_h, out_h), min(new_w, out_w)
    else:
        out_h, out_w = _padded_size(new_h, stride), _padded_size(new_w, stride)
    resized = resize_image(image, (new_h, new_w))
    padded = np.zeros((out_h, out_w, 3), dtype="float32")
    padded[:new_h, :new_w] = resized
    return padded, ratio


def random_flip_horizontal(image, boxes, rng, *, p=0.5):
    """Mirror the image left-right with probability ``p`` and the boxes with it.

    Args:
        image: ``[H, W, 3]``.
        boxes: ``[n, 4]`` xyxy pixels of ``image``; ``x1' = W - x2``, ``x2' = W - x1``.
        rng: ``numpy.random.Generator``; one draw is made whatever ``p`` is, so the random
            stream stays aligned between runs with different ``p``.

    Returns:
        ``(image, boxes)``, new arrays when flipped, the inputs otherwise.

    Raises:
        ValueError: for ``boxes`` that are not valid ``[n, 4]`` corners (see
            :func:`check_boxes`) or ``p`` outside ``[0, 1]``.
    """
    boxes = check_boxes(boxes)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
    if rng.random() >= p:
        return image, boxes
    width = np.asarray(image).shape[1]
    flipped = np.ascontiguousarray(np.asarray(image)[:, ::-1])
    boxes = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=-1)
    return flipped, boxes.astype("float32")


def preprocess_for_training(
    image,
    boxes,
    *,
    rng,
    min_side=800,
    max_side=1333,
    jitter=None,
    stride=128,
    image_size=None,
    flip=True,
    flip_probability=0.5,
    normalize=True,
):
    """Flip, resize, pad and normalise one training image with its boxes.

    ``jitter`` defaults to ``None`` (fixed ``min_side``) so small-image configurations work
    unchanged; pass :data:`KERAS_IO_JITTER` for the keras.io multi-scale schedule.

    Args:
        image: ``[H, W, 3]`` RGB pixels.
        boxes: ``[n, 4]`` xyxy pixels of the original image.
        rng: ``numpy.random.Generator`` driving the flip and the jitter.
        normalize: apply :func:`normalize_image` (set ``False`` to inspect raw pixels).

    Returns:
        ``(image, boxes, ratio)``: float32 ``[H', W', 3]``, float32 ``[n, 4]`` boxes in the
        resized image, and the resize ratio. Boxes are scaled as given, not clipped
        (:class:`~keras_retinanet.data.DetectionDataset` clips and drops them per record).

    Raises:
        ValueError: for an invalid ``image`` (see :func:`as_rgb`) or ``boxes`` (see
            :func:`check_boxes`), and for bad resize options.
    """
    image = as_rgb(image)
    boxes = check_boxes(boxes)
    if flip:
        image, boxes = random_flip_horizontal(image, boxes, rng, p=flip_probability)
    padded, ratio = resize_and_pad(
        image,
        min_side=min_side,
        max_side=max_side,
        jitter=jitter,
        stride=stride,
        image_size=image_size,
        rng=rng,
    )
    if normalize:
        padded = normalize_image(padded)
    return padded, (boxes * np.float32(ratio)).astype("float32"), ratio


def preprocess_for_inference(
    image,
    *,
    min_side=800,
    max_side=1333,
    stride=128,
    image_size=None,
    normalize=True,
    normalization="caffe",
):
    """Resize, pad and normalise one image for prediction.

    ``normalization="caffe"`` (the default, the keras.io model's input): :func:`resize_and_pad`,
    then :func:`normalize_image`, so the zero padding becomes ``-CAFFE_BGR_MEAN`` as in the
    keras.io example.

    ``normalization="torchvision"`` (models converted from torchvision): torchvision's
    ``GeneralizedRCNNTransform``, in its order: :func:`normalize_image` with ``"torchvision"``,
    :func:`torchvision_resize` (``image_size`` is not supported), then zeros at the
    bottom/right up to a multiple of ``stride`` (torchvision pads normalised images with 0
    to a multiple of 32, so pass ``stride=32`` to match it exactly).

    Args:
        image: ``[H, W, 3]`` RGB pixels in ``[0, 255]``.
        min_side, max_side, stride, image_size: resize options (see :func:`resize_and_pad`).
        normalize: normalise (set ``False`` to inspect the resized, padded raw pixels).
        normalization: one of :data:`NORMALIZATIONS`.

    Returns:
        ``(image, ratio)``: float32 ``[H', W', 3]`` and the scale; predicted boxes map back
        to the original image as ``boxes / ratio``.

    Raises:
        ValueError: for an invalid ``image`` (see :func:`as_rgb`), bad resize options, an
            unknown ``normalization``, or ``image_size`` with ``"torchvision"``.
    """
    check_normalization(normalization)
    if normalization == "torchvision":
        if image_size is not None:
            raise ValueError(
                "image_size must be None with normalization='torchvision' (torchvision's "
                f"resize sets the size), got {image_size!r}"
            )
        check_positive(stride, "stride")
        if normalize:  # torchvision normalises, then resizes
            image = normalize_image(as_rgb(image), "torchvision")
        resized, ratio = torchvision_resize(image, min_side=min_side, max_side=max_side)
        new_h, new_w = resized.shape[:2]
        padded = np.zeros((_padded_size(new_h, stride), _padded_size(new_w, stride), 3), "float32")
        padded[:new_h, :new_w] = resized
        return padded, ratio
    padded, ratio = resize_and_pad(
        image, min_side=min_side, max_side=max_side, stride=stride, image_size=image_size
    )
    if normalize:
        padded = normalize_image(padded)
    return padded, ratio
