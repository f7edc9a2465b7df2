"""Turning raw RetinaNet outputs into detections (docs/numerics.md, "Decoding")."""

import math

import keras
import numpy as np
from keras import layers, ops

from keras_retinanet.anchors import AnchorGenerator
from keras_retinanet.box_coding import BoxCoder
from keras_retinanet.device_constants import DeviceConstants, size_key
from keras_retinanet.layout import spatial_axes, standardize_data_format
from keras_retinanet.ops import combined_non_max_suppression
from keras_retinanet.validation import positive_int, static_shape, validate_images

#: ``DecodePredictions`` / ``RetinaNet.make_detector`` arguments that reproduce torchvision's
#: ``RetinaNet.postprocess_detections``: its ``score_thresh=0.05``, ``nms_thresh=0.5``,
#: ``detections_per_img=300`` and ``topk_candidates=1000`` (the defaults of
#: ``retinanet_resnet50_fpn`` and ``_v2``), with the boxes clipped to the image before NMS as
#: torchvision's ``box_ops.clip_boxes_to_image`` does. torchvision has no per-class cap:
#: ``max_detections_per_class = max_detections`` makes the library's cap inert (see
#: ``DecodePredictions``). Use with a torchvision variant's anchors and box coder, e.g.
#: ``keras_retinanet.variants.torchvision_retinanet(...).make_detector(**TORCHVISION_DECODING)``.
TORCHVISION_DECODING = dict(
    confidence_threshold=0.05,
    nms_iou_threshold=0.5,
    max_detections_per_class=300,
    max_detections=300,
    pre_nms_top_k_per_level=1000,
    clip_boxes=True,
)


@keras.saving.register_keras_serializable(package="keras_retinanet")
class DecodePredictions(layers.Layer):
    """Decodes boxes against the anchors, applies sigmoid and per-class NMS.

    Defaults are the keras.io example's (confidence 0.05, IoU 0.5, 100 per class, 100 in all,
    every anchor a candidate, boxes not clipped): a low confidence threshold keeps recall for
    COCO-style AP, which integrates over scores. With these defaults every ``(anchor, class)``
    pair scoring above the threshold is an NMS candidate, exactly as the keras.io example's
    ``tf.image.combined_non_max_suppression`` call.

    :data:`TORCHVISION_DECODING` (``confidence_threshold=0.05``, ``nms_iou_threshold=0.5``,
    ``max_detections_per_class=max_detections=300``, ``pre_nms_top_k_per_level=1000``,
    ``clip_boxes=True``) reproduces torchvision's ``RetinaNet.postprocess_detections`` given
    the same raw outputs, anchors (``AnchorGenerator.torchvision()``) and box coder
    (``variance=(1, 1, 1, 1)``, ``max_log_scale=log(1000 / 16)``):

    1. per pyramid level ``l`` (``A_l = grid_h * grid_w * anchors_per_location`` anchors, the
       levels concatenated P3 -> P7 in ``predictions``), the level's ``[A_l * C]`` sigmoid
       scores flattened anchor-major (class fastest), those ``> confidence_threshold`` kept
       and the best ``min(k, count)`` of them taken (``k = pre_nms_top_k_per_level``);
       each kept ``(anchor, class)`` pair is one candidate, its box decoded from its anchor;
    2. ``clip_boxes``: x clipped to ``[0, W]`` and y to ``[0, H]`` (``W, H`` of ``images``);
    3. per-class greedy NMS over the candidates of all levels together (``IoU >
       nms_iou_threshold`` suppresses), and the best ``max_detections`` by score.

    The returned boxes are in network-input pixels: torchvision's ``GeneralizedRCNNTransform``
    afterwards rescales them to the original image sizes, and clips to each image's size
    before its batch padding, which is ``H x W`` whenever the input was not padded.

    On TensorFlow the NMS is ``tf.image.combined_non_max_suppression``, which XLA cannot
    compile: the layer sets ``supports_jit = False`` there so that ``model.predict`` of a
    model containing it runs as a (non-XLA) ``tf.function``. On JAX and PyTorch it is the
    library's own exact implementation and compiles.

    Bad values never become detections: a candidate whose score is NaN (NaN logits) or whose
    decoded box has a NaN or Inf coordinate (NaN/Inf deltas, or ``dw, dh`` overflowing
    ``exp``) is dropped before NMS (before the per-level top-k and before clipping, so such a
    box neither takes a top-k place nor becomes finite by clipping; torchvision would keep
    it), so every returned box and score is finite. An empty batch (``B = 0``) gives empty
    outputs.

    Args:
        num_classes: ``C``, the model's class count.
        confidence_threshold: minimum score of a kept box (strictly greater, as TF); in
            ``[0, 1]`` since scores are sigmoid probabilities.
        nms_iou_threshold: a box is suppressed by a higher-scoring one of the same class when
            their IoU is strictly greater than this.
        max_detections_per_class: boxes kept per class and image. torchvision has no such
            cap; ``max_detections_per_class >= max_detections`` makes it inert.
        max_detections: boxes returned per image.
        anchor_generator: the model's ``AnchorGenerator`` (keras.io defaults when ``None``).
        box_coder: the model's ``BoxCoder``.
        data_format: layout of ``images`` (``None``: ``keras.config.image_data_format()``).
        pre_nms_top_k_per_level: ``None`` (every anchor of every level is a candidate for
            every class) or a positive int ``k``: per level, only the best ``k`` ``(anchor,
            class)`` pairs scoring above ``confidence_threshold`` are NMS candidates
            (torchvision's ``topk_candidates``). The NMS then sees at most
            ``sum_l min(k, A_l * C)`` candidates instead of ``A * C``.
        clip_boxes: ``False`` (keras.io) or ``True``: decoded boxes are clipped to the input
            image, x to ``[0, W]`` and y to ``[0, H]``, before NMS (so IoUs are those of the
            clipped boxes, as in torchvision).

    Call args:
        images: ``[B, H, W, 3]`` (``[B, 3, H, W]`` with ``data_format="channels_first"``)
            network input; only its static or dynamic ``H, W`` are used (the anchors of the
            padded input size).
        predictions: ``[B, A, 4 + C]`` raw model outputs.

    Returns:
        dict of ``boxes [B, K, 4]`` float32 ``[x1, y1, x2, y2]`` in input pixels,
        ``scores [B, K]`` float32, ``classes [B, K]`` int32 and ``num_detections [B]`` int32,
        with ``K = max_detections``; rows past ``num_detections`` are zeros.

    Raises:
        ValueError: for bad constructor arguments, and in ``call`` when ``images`` is not
            ``[B, H, W, C]``, ``predictions`` not ``[B, A, 4 + C]``, their batch sizes differ,
            or (static ``H, W``) ``A`` is not the anchor count of an ``H x W`` input.
    """

    def __init__(
        self,
        *,
        num_classes=80,
        confidence_threshold=0.05,
        nms_iou_threshold=0.5,
        max_detections_per_class=100,
        max_detections=100,
        anchor_generator=None,
        box_coder=None,
        data_format=None,
        pre_nms_top_k_per_level=None,
        clip_boxes=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.data_format = standardize_data_format(data_format)
        num_classes = positive_int(num_classes, "num_classes")
        if not _is_number(nms_iou_threshold) or not 0.0 <= nms_iou_threshold <= 1.0:
            raise ValueError(f"nms_iou_threshold must be in [0, 1], got {nms_iou_threshold!r}")
        if not _is_number(confidence_threshold) or not 0.0 <= confidence_threshold <= 1.0:
            raise ValueError(
                f"confidence_threshold must be in [0, 1], got {confidence_threshold!r}"
            )
        max_detections_per_class = positive_int(
            max_detections_per_class, "max_detections_per_class"
        )
        max_detections = positive_int(max_detections, "max_detections")
        if pre_nms_top_k_per_level is not None:
            pre_nms_top_k_per_level = positive_int(
                pre_nms_top_k_per_level, "pre_nms_top_k_per_level"
            )
        if clip_boxes is not True and clip_boxes is not False:
            if not isinstance(clip_boxes, np.bool_):
                raise ValueError(f"clip_boxes must be True or False, got {clip_boxes!r}")
            clip_boxes = bool(clip_boxes)
        self.num_classes = num_classes
        self.confidence_threshold = float(confidence_threshold)
        self.nms_iou_threshold = float(nms_iou_threshold)
        self.max_detections_per_class = int(max_detections_per_class)
        self.max_detections = int(max_detections)
        self.pre_nms_top_k_per_level = pre_nms_top_k_per_level
        self.clip_boxes = clip_boxes
        self.anchor_generator = anchor_generator or AnchorGenerator()
        self.box_coder = box_coder or BoxCoder()
        self.supports_jit = keras.backend.backend() != "tensorflow"
        # Anchors per (input size, device) for eager calls (see device_constants.py).
        self._anchors = DeviceConstants()

    def call(self, images, predictions):
        predictions = ops.cast(predictions, "float32")
        prediction_shape = static_shape(predictions)
        self._check_shapes(static_shape(images), prediction_shape)
        if prediction_shape is not None and prediction_shape[0] == 0:
            return self._empty_outputs()
        shape = ops.shape(images)
        h_axis, w_axis = spatial_axes(self.data_format)
        height, width = shape[h_axis], shape[w_axis]
        anchors = self._anchors.get(  # [A, 4]
            size_key(height, width), predictions, lambda: self.anchor_generator(height, width)
        )
        boxes = self.box_coder.decode(predictions[..., :4], anchors)  # [B, A, 4]
        # NaN scores and non-finite boxes must never be detections: a score of 0 is never
        # above confidence_threshold (>= 0, strict comparison). Sigmoid outputs lie in
        # [0, 1] or are NaN, so nan_to_num only replaces NaN. Checked before clipping, which
        # would turn an infinite coordinate into a finite one.
        finite_box = ops.all(ops.isfinite(boxes), axis=-1, keepdims=True)  # [B, A, 1]
        scores = ops.nan_to_num(ops.sigmoid(predictions[..., 4:]), nan=0.0)  # [B, A, C]
        scores = ops.where(finite_box, scores, 0.0)
        boxes = ops.where(finite_box, boxes, 0.0)
        if self.clip_boxes:
            boxes = _clip_to_image(boxes, height, width)
        if self.pre_nms_top_k_per_level is None:
            boxes = boxes[:, :, None, :]  # [B, A, 1, 4]: one box shared by all classes
        else:
            boxes, scores = self._top_k_per_level(boxes, scores, height, width)
        nmsed_boxes, nmsed_scores, nmsed_classes, valid = combined_non_max_suppression(
            boxes,
            scores,
            self.max_detections_per_class,
            self.max_detections,
            iou_threshold=self.nms_iou_threshold,
            score_threshold=self.confidence_threshold,
            clip_boxes=False,
        )
        return {
            "boxes": nmsed_boxes,
            "scores": nmsed_scores,
            "classes": ops.cast(nmsed_classes, "int32"),
            "num_detections": ops.cast(valid, "int32"),
        }

    def _top_k_per_level(self, boxes, scores, height, width):
        """torchvision's candidate selection, as NMS inputs for ``combined_non_max_suppression``.

        Args:
            boxes: ``[B, A, 4]`` decoded (and clipped) boxes, finite.
            scores: ``[B, A, C]`` sigmoid scores, 0 for NaN logits and non-finite boxes.
            height, width: the input size, ints or scalar tensors (traced unknown size).

        Returns:
            ``(boxes [B, K, 1, 4], scores [B, K, C])``, ``K = sum_l k_l`` candidates, level
            by level, each level's by descending score; a candidate's score is in its class's
            column and every other column is 0. ``k_l = min(k, A_l * C)`` for a static level
            size; for a traced one the level's flattened scores are padded with ``k`` values
            of ``-1`` (never above the threshold, which is ``>= 0``) and ``k_l = k``.

        Why ``combined_non_max_suppression`` on these inputs is torchvision's ``batched_nms``
        followed by ``[:detections_per_img]``: class ``c``'s candidates in the NMS are the
        rows whose column ``c`` is above the threshold, i.e. exactly the selected candidates
        of label ``c`` (the zeros of the other columns never pass a threshold ``>= 0``, and a
        slot that is not a selected candidate, below the threshold or padding, is 0 in every
        column). Within a class both run the same greedy NMS in descending score with the
        same float32 IoU ``inter / (area_a + area_b - inter) > iou_threshold`` on the same
        (clipped) boxes, and both merge the classes' kept boxes by descending score. Capping
        a class at ``max_detections_per_class`` only truncates that class's kept list (the
        greedy visit is in score order), and the best ``max_detections`` of the merge hold at
        most ``max_detections`` of one class, so with ``max_detections_per_class >=
        max_detections`` the cap never changes the output. Only the order of exactly equal
        scores can differ (torchvision leaves it unspecified), and, when torchvision's
        ``batched_nms`` takes its coordinate-offset path (at most 1000 candidates on CPU),
        an IoU within float32 rounding of the threshold: that path shifts each class's boxes
        by ``label * (max_coordinate + 1)`` and computes IoUs on the shifted coordinates.
        """
        k = self.pre_nms_top_k_per_level
        num_classes = self.num_classes
        threshold = self.confidence_threshold
        per_location = self.anchor_generator.num_anchors_per_location
        static_h, static_w = _static_int(height), _static_int(width)
        if static_h is not None and static_w is not None:
            grids = self.anchor_generator.grid_sizes(static_h, static_w)
            sizes = [gh * gw * per_location for gh, gw in grids]
        else:  # traced unknown size: the anchor generator's grid formula, on tensors
            sizes = [
                ((height + s - 1) // s) * ((width + s - 1) // s) * per_location
                for s in self.anchor_generator.strides
            ]
        batch = ops.shape(scores)[0]
        level_boxes, level_scores, level_classes = [], [], []
        start = 0
        for size in sizes:
            stop = start + size
            flat = ops.reshape(scores[:, start:stop, :], (batch, size * num_classes))
            # -1 marks what torchvision filters out before its top-k: it never reaches the
            # threshold (>= 0), so the top min(k, count) values are its kept candidates.
            flat = ops.where(flat > threshold, flat, -1.0)
            static_size = _static_int(size)
            if static_size is None:
                flat = ops.concatenate([flat, ops.full((batch, k), -1.0, flat.dtype)], axis=1)
                k_level = k
            else:
                k_level = min(k, static_size * num_classes)
            values, index = ops.top_k(flat, k_level)  # [B, k_l], descending
            index = ops.cast(index, "int32")
            anchor = index // num_classes
            if static_size is None:  # a padding slot (score 0 below) gathers the last anchor
                anchor = ops.minimum(anchor, size - 1)
            level_classes.append(index % num_classes)
            level_scores.append(ops.where(values > threshold, values, 0.0))
            gather = ops.tile(anchor[:, :, None], (1, 1, 4))
            level_boxes.append(ops.take_along_axis(boxes[:, start:stop, :], gather, axis=1))
            start = stop
        boxes = ops.concatenate(level_boxes, axis=1)  # [B, K, 4]
        cand_scores = ops.concatenate(level_scores, axis=1)  # [B, K]
        classes = ops.concatenate(level_classes, axis=1)  # [B, K]
        columns = ops.arange(num_classes, dtype="int32")
        scores = ops.where(ops.equal(classes[:, :, None], columns), cand_scores[:, :, None], 0.0)
        return boxes[:, :, None, :], scores

    def _check_shapes(self, image_shape, prediction_shape):
        """Checks the static shapes (``None``: unknown rank while tracing, not checked)."""
        if image_shape is not None and len(image_shape) != 4:
            raise ValueError(f"images must be [batch, height, width, channels], got {image_shape}")
        if prediction_shape is not None and (
            len(prediction_shape) != 3 or prediction_shape[-1] not in (None, 4 + self.num_classes)
        ):
            raise ValueError(
                f"predictions must be [batch, anchors, 4 + num_classes={4 + self.num_classes}], "
                f"got shape {prediction_shape}"
            )
        if image_shape is None or prediction_shape is None:
            return
        if None not in (image_shape[0], prediction_shape[0]) and (
            image_shape[0] != prediction_shape[0]
        ):
            raise ValueError(
                f"images and predictions must have the same batch size, got shapes {image_shape} "
                f"and {prediction_shape}"
            )
        h_axis, w_axis = spatial_axes(self.data_format)
        height, width, anchors = image_shape[h_axis], image_shape[w_axis], prediction_shape[1]
        if None not in (height, width, anchors):
            if height < 1 or width < 1:
                raise ValueError(f"images must have a positive height and width, got {image_shape}")
            expected = self.anchor_generator.num_anchors(height, width)
            if anchors != expected:
                raise ValueError(
                    f"predictions has {anchors} anchors but an input of {height} x {width} has "
                    f"{expected}; pass the images the predictions were made on"
                )

    def _empty_outputs(self):
        k = self.max_detections
        return {
            "boxes": ops.zeros((0, k, 4), "float32"),
            "scores": ops.zeros((0, k), "float32"),
            "classes": ops.zeros((0, k), "int32"),
            "num_detections": ops.zeros((0,), "int32"),
        }

    def compute_output_spec(self, images, predictions):
        batch = predictions.shape[0]
        k = self.max_detections
        return {
            "boxes": keras.KerasTensor((batch, k, 4), "float32"),
            "scores": keras.KerasTensor((batch, k), "float32"),
            "classes": keras.KerasTensor((batch, k), "int32"),
            "num_detections": keras.KerasTensor((batch,), "int32"),
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "confidence_threshold": self.confidence_threshold,
                "nms_iou_threshold": self.nms_iou_threshold,
                "max_detections_per_class": self.max_detections_per_class,
                "max_detections": self.max_detections,
                "anchor_generator": keras.saving.serialize_keras_object(self.anchor_generator),
                "box_coder": keras.saving.serialize_keras_object(self.box_coder),
                "data_format": self.data_format,
                "pre_nms_top_k_per_level": self.pre_nms_top_k_per_level,
                "clip_boxes": self.clip_boxes,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("anchor_generator", "box_coder"):
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_retinanet")
class RetinaNetDetector(keras.Model):
    """A ``RetinaNet`` followed by ``DecodePredictions``: ``predict(images)`` gives detections.

    Build one with ``RetinaNet.make_detector(...)``; it shares the trained model's weights.

    Call args:
        images: ``[B, H, W, 3]`` preprocessed images (see ``RetinaNet``).

    Returns:
        the ``DecodePredictions`` dict (``boxes``, ``scores``, ``classes``, ``num_detections``).
    """

    def __init__(self, model, decoder=None, **kwargs):
        super().__init__(**kwargs)
        self.model = model
        self.decoder = decoder or DecodePredictions(
            num_classes=model.num_classes,
            anchor_generator=model.anchor_generator,
            box_coder=model.box_coder,
            data_format=model.data_format,
        )

    def call(self, images, training=False):
        return self.decoder(images, self.model(images, training=False))

    def predict(self, x, *args, **kwargs):
        """``keras.Model.predict``; an array or tensor ``x`` is first validated as by
        ``RetinaNet.predict`` (shape, and NaN/Inf values -> ``ValueError``)."""
        if hasattr(x, "shape") and hasattr(x, "dtype"):
            validate_images(x, self.model.data_format)
        return super().predict(x, *args, **kwargs)

    def export(self, filepath, format="tf_saved_model", verbose=True, *, image_size=None, **kwargs):
        """Writes the detector, NMS included, as one artifact (``keras.Model.export``'s
        signature): ``"tf_saved_model"`` from TensorFlow or JAX, ``"onnx"`` from PyTorch. See
        :func:`keras_retinanet.export.export_detector`."""
        from keras_retinanet.export import export_detector

        if kwargs:
            raise ValueError(f"unexpected export arguments: {sorted(kwargs)}")
        return export_detector(self, filepath, format, image_size=image_size, verbose=verbose)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "model": keras.saving.serialize_keras_object(self.model),
                "decoder": keras.saving.serialize_keras_object(self.decoder),
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["model"] = keras.saving.deserialize_keras_object(config["model"])
        config["decoder"] = keras.saving.deserialize_keras_object(config["decoder"])
        return cls(**config)


def _clip_to_image(boxes, height, width):
    """``[..., 4]`` corners with x clamped to ``[0, width]`` and y to ``[0, height]``
    (torchvision's ``clip_boxes_to_image``: ``clamp(min=0, max=size)``)."""
    height = ops.cast(height, "float32")
    width = ops.cast(width, "float32")
    upper = ops.stack([width, height, width, height])
    return ops.minimum(ops.maximum(boxes, 0.0), upper)


def _static_int(value):
    """``value`` as a Python ``int`` when it is a concrete integer, else ``None``."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    return None


def _is_number(value):
    """A real, non-NaN Python/NumPy number (``bool`` excluded)."""
    try:
        return not isinstance(value, bool) and not math.isnan(float(value))
    except (TypeError, ValueError):
        return False
