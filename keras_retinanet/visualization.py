"""Drawing detections on images (Pillow; no display needed).

Pillow is used rather than matplotlib so the output has exactly the input's pixel size and
drawing works in headless processes without choosing a matplotlib backend.
"""

import colorsys
import os

import numpy as np


def _pil():
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError as e:  # pragma: no cover - exercised only without Pillow
        raise ImportError(
            'drawing detections needs Pillow: pip install "keras3-retinanet[data]"'
        ) from e
    return Image, ImageDraw, ImageFont


def class_color(class_index):
    """A fixed, well-separated RGB colour for a class index (golden-ratio hue steps)."""
    hue = (int(class_index) * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def _to_uint8(image):
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an image of shape [H, W, 3], got {image.shape}")
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    image = image[..., :3]
    if image.dtype != np.uint8:
        image = np.clip(np.round(image.astype("float64")), 0, 255).astype("uint8")
    return np.ascontiguousarray(image)


def draw_detections(
    image,
    boxes,
    classes,
    scores=None,
    *,
    class_names=None,
    score_threshold=0.0,
    valid=None,
    line_width=2,
    path=None,
):
    """Draw boxes with ``"name score"`` labels.

    Args:
        image: ``[H, W, 3]`` RGB pixels; uint8, or floats in ``[0, 255]`` (clipped). Pass the
            original image, not the normalised network input.
        boxes: ``[N, 4]`` xyxy pixels of ``image``.
        classes: ``[N]`` class indices (floats from NMS are rounded).
        scores: ``[N]`` confidences, or ``None`` for ground truth (no score shown, nothing
            filtered).
        class_names: sequence of names indexed by class; indices are shown without it.
        score_threshold: boxes scoring below it are skipped.
        valid: number of leading rows to draw (``valid_detections`` of the NMS output).
        line_width: box outline width in pixels.
        path: write a PNG there when given (parent folders are created).

    Returns:
        uint8 ``[H, W, 3]`` array of the drawn image.
    """
    Image, ImageDraw, ImageFont = _pil()
    canvas = Image.fromarray(_to_uint8(image))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()

    boxes = np.asarray(boxes, dtype="float64").reshape(-1, 4)
    classes = np.asarray(classes).reshape(-1)
    if len(classes) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(classes)} classes")
    if scores is not None:
        scores = np.asarray(scores, dtype="float64").reshape(-1)
        if len(scores) != len(boxes):
            raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
    count = len(boxes) if valid is None else min(int(valid), len(boxes))

    for i in range(count):
        if scores is not None and scores[i] < score_threshold:
            continue
        cls = int(round(float(classes[i])))
        if cls < 0:  # padding rows of a target batch
            continue
        color = class_color(cls)
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        draw.rectangle([x1, y1, x2, y2], outline=color, width=int(line_width))
        name = class_names[cls] if class_names is not None and cls < len(class_names) else cls
        label = f"{name}" if scores is None else f"{name} {scores[i]:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        text_w, text_h = right - left, bottom - top
        ty = y1 - text_h - 2 if y1 - text_h - 2 >= 0 else y1
        draw.rectangle([x1, ty, x1 + text_w + 2, ty + text_h + 2], fill=color)
        draw.text((x1 + 1 - left, ty + 1 - top), label, fill=(0, 0, 0), font=font)

    if path is not None:
        path = os.fspath(path)
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        canvas.save(path, format="PNG")
    return np.asarray(canvas)
