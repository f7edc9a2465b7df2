"""Image preprocessing (docs/numerics.md, "Input preprocessing"), in NumPy (Pillow for resizing
and file reading).

Pipeline for one image: optional horizontal flip -> resize (short side to ``min_side``,
capped so the long side is at most ``max_side``) -> zero padding at the bottom/right up to a
multiple of ``stride`` -> caffe-style normalisation (:func:`normalize_image`).

Boxes are ``[x1, y1, x2, y2]`` pixels throughout; the resize multiplies them by ``ratio`` and
predictions on the network input map back to the original image with ``boxes / ratio``.
Padding only adds pixels at the bottom/right, so it never moves a box.
"""

import math
import os

import numpy as np

#: Per-channel BGR means subtracted by ``keras.applications.resnet.preprocess_input``.
CAFFE_BGR_MEAN = np.asarray([103.939, 116.779, 123.68], dtype="float32")

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


def load_image(path):
    """Read an image file as uint8 RGB ``[H, W, 3]`` (grey/RGBA/palette files are converted).

    Raises:
        FileNotFoundError: when ``path`` is not an existing file.
        ValueError: when the file cannot be decoded as an image (corrupt, truncated or not an
            image at all); the message names the path.
    """
    Image = _pil_image()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path!r}")
    try:
        with Image.open(path) as img:
            pixels = np.asarray(img.convert("RGB"), dtype="uint8")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        # PIL reports undecodable data as UnidentifiedImageError / OSError ("truncated").
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"cannot read image file {path!r}: {reason}") from e
    if pixels.ndim != 3 or min(pixels.shape[:2]) < 1:
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


def normalize_image(image):
    """Caffe-mode normalisation, equal to ``keras.applications.resnet.preprocess_input``.

    RGB -> BGR, then subtract :data:`CAFFE_BGR_MEAN`; no scaling. ResNet50 ImageNet weights
    were trained on this input, so the model expects it.

    Args:
        image: ``[..., H, W, 3]`` RGB pixels in ``[0, 255]`` (any numeric dtype).

    Returns:
        ``[..., H, W, 3]`` float32 BGR with the means removed.
    """
    image = np.asarray(image, dtype="float32")
    if image.shape[-1] != 3:
        raise ValueError(f"expected 3 channels in the last axis, got shape {image.shape}")
    return image[..., ::-1] - CAFFE_BGR_MEAN


def compute_resize_ratio(height, width, *, min_side=800, max_side=1333):
    """Scale factor so the short side becomes ``min_side`` without the long side passing
    ``max_side`` (then the long side becomes ``max_side`` instead).

    Raises:
        ValueError: unless ``height``, ``width``, ``min_side`` and ``max_side`` are positive
            finite numbers.
    """
    for name, value in (
        ("height", height),
        ("width", width),
        ("min_side", min_side),
        ("max_side", max_side),
    ):
        check_positive(value, name)
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
    image, *, min_side=800, max_side=1333, stride=128, image_size=None, normalize=True
):
    """Resize, pad and normalise one image for prediction.

    Returns:
        ``(image, ratio)``: float32 ``[H', W', 3]`` and the scale; predicted boxes map back
        to the original image as ``boxes / ratio``.
    """
    padded, ratio = resize_and_pad(
        image, min_side=min_side, max_side=max_side, stride=stride, image_size=image_size
    )
    if normalize:
        padded = normalize_image(padded)
    return padded, ratio
