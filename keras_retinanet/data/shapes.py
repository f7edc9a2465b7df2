"""Deterministic synthetic "shapes" detection data set in COCO format.

Small RGB images with filled rectangles, ellipses and triangles in random colours on noisy,
textured backgrounds. It exists so the whole library (data loading, training, decoding,
COCO evaluation) can be exercised end to end in minutes on a CPU, without downloads.

Design choices:

* Classes are the shape kinds; colours are drawn independently of the class, so a detector
  has to learn shape rather than colour.
* Box sides are log-uniform between ``2 * min_object_size`` and ``max_object_size``, except
  for a ``small_fraction`` of objects drawn near ``min_object_size`` (10 px by default).
  With the default anchors (smallest 32 x 32 at stride 8) an object needs a side of roughly
  23 px to reach IoU 0.5 with any anchor, so at 128 x 128 either upscale the input
  (``min_side=256``) or use smaller anchor ``areas`` to learn the small ones.
* Objects may overlap, but a new object is rejected when, together with those drawn before
  it, it would hide more than ``max_occlusion`` of an earlier object's pixels; boxes are the
  tight boxes of the full shapes, occluded or not. Touching objects get different base
  colours so each outline stays visible.
* The output depends only on the arguments: the same ``seed`` gives byte-identical PNG and
  JSON files.
"""

import math
import os
from typing import NamedTuple

import numpy as np

from keras_retinanet.data.coco import write_coco

#: Class names, index = contiguous class; COCO category ids are index + 1.
SHAPE_CLASSES = ("rectangle", "ellipse", "triangle")

#: Saturated base colours (RGB); each object jitters its colour around one of them.
_PALETTE = np.asarray(
    [
        (230, 40, 40),
        (40, 200, 60),
        (50, 90, 240),
        (240, 220, 40),
        (220, 60, 220),
        (40, 220, 230),
        (245, 245, 245),
        (250, 140, 30),
    ],
    dtype="float64",
)


class ShapesDatasetPaths(NamedTuple):
    """Where :func:`generate_shapes_dataset` wrote its files."""

    root: str
    train_images: str
    val_images: str
    train_annotations: str
    val_annotations: str


def generate_shapes_dataset(
    output_dir,
    *,
    num_train=400,
    num_val=100,
    image_size=(128, 128),
    seed=0,
    min_objects=1,
    max_objects=5,
    min_object_size=10,
    max_object_size=64,
    small_fraction=0.15,
    max_occlusion=0.3,
    noise_std=8.0,
):
    """Write ``train/``, ``val/`` PNG folders and ``annotations/instances_{train,val}.json``.

    Defaults (400 + 100 images of 128 x 128, one to five objects each) train a small detector
    to mAP@0.5 well above 0.8 in a few CPU minutes while still containing small and partly
    occluded objects.

    Args:
        output_dir: root folder, created if missing; existing files of the same names are
            overwritten.
        num_train: number of training images.
        num_val: number of validation images.
        image_size: ``(height, width)`` in pixels.
        seed: integer seed; train and val use independent streams derived from it.
        min_objects: fewest objects per image.
        max_objects: most objects per image (fewer when the placement attempts run out).
        min_object_size: smallest box side in pixels.
        max_object_size: largest box side in pixels (clamped to the image size).
        small_fraction: share of objects drawn with sides in ``[min, 1.6 * min]``.
        max_occlusion: largest fraction of an object's pixels later objects may cover.
        noise_std: standard deviation of the per-pixel Gaussian noise added at the end.

    Returns:
        :class:`ShapesDatasetPaths` with absolute paths.
    """
    height, width = int(image_size[0]), int(image_size[1])
    if height < 16 or width < 16:
        raise ValueError(f"image_size must be at least 16 x 16, got {image_size!r}")
    if num_train < 0 or num_val < 0:
        raise ValueError("num_train and num_val must be non-negative")
    if not 1 <= min_objects <= max_objects:
        raise ValueError("need 1 <= min_objects <= max_objects")
    max_object_size = min(int(max_object_size), min(height, width) - 2)
    if not 2 <= min_object_size <= max_object_size:
        raise ValueError(
            f"need 2 <= min_object_size <= max_object_size, got {min_object_size} and "
            f"{max_object_size} (after clamping to the image size)"
        )
    _pil()  # fail early with the install hint

    root = os.path.abspath(os.fspath(output_dir))
    paths = ShapesDatasetPaths(
        root=root,
        train_images=os.path.join(root, "train"),
        val_images=os.path.join(root, "val"),
        train_annotations=os.path.join(root, "annotations", "instances_train.json"),
        val_annotations=os.path.join(root, "annotations", "instances_val.json"),
    )
    options = dict(
        height=height,
        width=width,
        min_objects=int(min_objects),
        max_objects=int(max_objects),
        min_size=int(min_object_size),
        max_size=int(max_object_size),
        small_fraction=float(small_fraction),
        max_occlusion=float(max_occlusion),
        noise_std=float(noise_std),
    )
    train_seq, val_seq = np.random.SeedSequence(int(seed)).spawn(2)
    for count, seq, image_dir, ann_file, split in (
        (num_train, train_seq, paths.train_images, paths.train_annotations, "train"),
        (num_val, val_seq, paths.val_images, paths.val_annotations, "val"),
    ):
        os.makedirs(image_dir, exist_ok=True)
        rng = np.random.default_rng(seq)
        records = []
        for index in range(count):
            pixels, boxes, classes = render_shapes_image(rng, **options)
            file_name = f"{index:06d}.png"
            _pil().fromarray(pixels).save(os.path.join(image_dir, file_name), optimize=False)
            records.append(
                {
                    "image_id": index + 1,
                    "file_name": file_name,
                    "height": height,
                    "width": width,
                    "boxes": boxes,
                    "classes": classes,
                }
            )
        write_coco(
            ann_file,
            records,
            SHAPE_CLASSES,
            description=f"keras_retinanet synthetic shapes, {split} split, seed {seed}",
        )
    return paths


def render_shapes_image(
    rng,
    *,
    height=128,
    width=128,
    min_objects=1,
    max_objects=5,
    min_size=10,
    max_size=64,
    small_fraction=0.15,
    max_occlusion=0.3,
    noise_std=8.0,
):
    """Draw one image in memory.

    Returns:
        ``(pixels, boxes, classes)``: uint8 ``[height, width, 3]``, float32 ``[n, 4]`` xyxy
        pixel boxes (tight around each full shape) and int32 ``[n]`` indices into
        :data:`SHAPE_CLASSES`, in drawing order.
    """
    Image = _pil()
    from PIL import ImageDraw

    canvas = _background(rng, height, width)
    # owner[y, x] = index of the object visible at that pixel, -1 for background.
    owner = np.full((height, width), -1, dtype="int32")
    pixel_counts, color_ids = [], []
    boxes, classes = [], []
    target = int(rng.integers(min_objects, max_objects + 1))
    attempts = 0
    while len(boxes) < target and attempts < 30 * target:
        attempts += 1
        kind = int(rng.integers(len(SHAPE_CLASSES)))
        box_w, box_h = _object_size(rng, min_size, max_size, small_fraction)
        box_w, box_h = min(box_w, width), min(box_h, height)
        x0 = int(rng.integers(0, width - box_w + 1))
        y0 = int(rng.integers(0, height - box_h + 1))
        mask_img = Image.new("L", (width, height), 0)
        _draw_shape(ImageDraw.Draw(mask_img), kind, x0, y0, box_w, box_h, rng)
        mask = np.asarray(mask_img) > 0
        if not mask.any():
            continue
        if pixel_counts:
            hidden = np.bincount(owner[mask & (owner >= 0)], minlength=len(pixel_counts))
            visible = np.bincount(owner[owner >= 0], minlength=len(pixel_counts))
            still_visible = visible - hidden
            if np.any(still_visible < (1.0 - max_occlusion) * np.asarray(pixel_counts)):
                continue
        # Objects that touch get different base colours so their outlines stay visible.
        touched = {color_ids[i] for i in np.unique(owner[_dilate(mask)]) if i >= 0}
        allowed = [c for c in range(len(_PALETTE)) if c not in touched] or list(
            range(len(_PALETTE))
        )
        color_id = allowed[int(rng.integers(len(allowed)))]
        color = _PALETTE[color_id] + rng.uniform(-25, 25, size=3)
        color_ids.append(color_id)
        canvas[mask] = np.clip(color, 0, 255)
        owner[mask] = len(pixel_counts)
        pixel_counts.append(int(mask.sum()))
        ys, xs = np.nonzero(mask)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        classes.append(kind)
    canvas += rng.normal(0.0, noise_std, size=canvas.shape)
    pixels = np.clip(np.round(canvas), 0, 255).astype("uint8")
    return (
        pixels,
        np.asarray(boxes, dtype="float32").reshape(-1, 4),
        np.asarray(classes, dtype="int32"),
    )


def _dilate(mask):
    """``mask`` grown by one pixel in each of the four directions."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def _object_size(rng, min_size, max_size, small_fraction):
    if rng.random() < small_fraction:
        hi = min(max_size, max(min_size, int(round(1.6 * min_size))))
        side = float(rng.uniform(min_size, hi))
    else:
        side = math.exp(rng.uniform(math.log(min(2.0 * min_size, max_size)), math.log(max_size)))
        side = min(side, max_size)
    aspect = math.exp(rng.uniform(math.log(0.6), math.log(1.6)))
    w = int(round(side * math.sqrt(aspect)))
    h = int(round(side / math.sqrt(aspect)))
    return (
        int(np.clip(w, min_size, max_size)),
        int(np.clip(h, min_size, max_size)),
    )


def _draw_shape(draw, kind, x0, y0, w, h, rng):
    """Fill shape ``kind`` whose tight box is pixels ``[x0, x0 + w) x [y0, y0 + h)``."""
    x1, y1 = x0 + w - 1, y0 + h - 1
    if SHAPE_CLASSES[kind] == "rectangle":
        draw.rectangle([x0, y0, x1, y1], fill=255)
    elif SHAPE_CLASSES[kind] == "ellipse":
        draw.ellipse([x0, y0, x1, y1], fill=255)
    else:
        # Base along one side of the box, apex somewhere on the opposite side.
        t = float(rng.uniform(0.2, 0.8))
        side = int(rng.integers(4))
        if side == 0:  # apex up
            pts = [(x0, y1), (x1, y1), (x0 + t * (w - 1), y0)]
        elif side == 1:  # apex down
            pts = [(x0, y0), (x1, y0), (x0 + t * (w - 1), y1)]
        elif side == 2:  # apex left
            pts = [(x1, y0), (x1, y1), (x0, y0 + t * (h - 1))]
        else:  # apex right
            pts = [(x0, y0), (x0, y1), (x1, y0 + t * (h - 1))]
        draw.polygon([(round(px), round(py)) for px, py in pts], fill=255)


def _background(rng, height, width):
    """Dull base colour + linear gradient + low-contrast sinusoidal texture, float64."""
    base = rng.uniform(30, 120, size=3)
    yy, xx = np.mgrid[0:height, 0:width].astype("float64")
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (np.cos(angle) * xx / width + np.sin(angle) * yy / height)[..., None]
    gradient = ramp * rng.uniform(-30, 30, size=3)
    freq = rng.uniform(0.05, 0.3, size=2)
    phase = rng.uniform(0, 2 * math.pi, size=2)
    texture = np.sin(freq[0] * xx + phase[0]) * np.sin(freq[1] * yy + phase[1])
    texture = texture[..., None] * rng.uniform(4, 14, size=3)
    return np.clip(base + gradient + texture, 0, 255)


def _pil():
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - exercised only without Pillow
        raise ImportError(
            "Pillow is required to generate the shapes data set: "
            'pip install "keras3-retinanet[data]"'
        ) from e
    return Image
