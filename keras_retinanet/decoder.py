"""Turning raw RetinaNet outputs into detections (docs/numerics.md, "Decoding")."""

import math

import keras
from keras import layers, ops

from keras_retinanet.anchors import AnchorGenerator
from keras_retinanet.box_coding import BoxCoder
from keras_retinanet.layout import spatial_axes, standardize_data_format
from keras_retinanet.ops import combined_non_max_suppression
from keras_retinanet.validation import positive_int, static_shape, validate_images


@keras.saving.register_keras_serializable(package="keras_retinanet")
class DecodePredictions(layers.Layer):
    """Decodes boxes against the anchors, applies sigmoid and per-class NMS.

    Defaults are the keras.io example's (confidence 0.05, IoU 0.5, 100 per class, 100 in all):
    a low confidence threshold keeps recall for COCO-style AP, which integrates over scores.

    On TensorFlow the NMS is ``tf.image.combined_non_max_suppression``, which XLA cannot
    compile: the layer sets ``supports_jit = False`` there so that ``model.predict`` of a
    model containing it runs as a (non-XLA) ``tf.function``. On JAX and PyTorch it is the
    library's own exact implementation and compiles.

    Bad values never become detections: a candidate whose score is NaN (NaN logits) or whose
    decoded box has a NaN or Inf coordinate (NaN/Inf deltas, or ``dw, dh`` overflowing
    ``exp``) is dropped before NMS, so every returned box and score is finite. An empty batch
    (``B = 0``) gives empty outputs.

    Args:
        num_classes: ``C``, the model's class count.
        confidence_threshold: minimum score of a kept box (strictly greater, as TF); in
            ``[0, 1]`` since scores are sigmoid probabilities.
        nms_iou_threshold: a box is suppressed by a higher-scoring one of the same class when
            their IoU is strictly greater than this.
        max_detections_per_class: boxes kept per class and image.
        max_detections: boxes returned per image.
        anchor_generator: the model's ``AnchorGenerator`` (keras.io defaults when ``None``).
        box_coder: the model's ``BoxCoder``.
        data_format: layout of ``images`` (``None``: ``keras.config.image_data_format()``).

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
        self.num_classes = num_classes
        self.confidence_threshold = float(confidence_threshold)
        self.nms_iou_threshold = float(nms_iou_threshold)
        self.max_detections_per_class = int(max_detections_per_class)
        self.max_detections = int(max_detections)
        self.anchor_generator = anchor_generator or AnchorGenerator()
        self.box_coder = box_coder or BoxCoder()
        self.supports_jit = keras.backend.backend() != "tensorflow"

    def call(self, images, predictions):
        predictions = ops.cast(predictions, "float32")
        prediction_shape = static_shape(predictions)
        self._check_shapes(static_shape(images), prediction_shape)
        if prediction_shape is not None and prediction_shape[0] == 0:
            return self._empty_outputs()
        shape = ops.shape(images)
        h_axis, w_axis = spatial_axes(self.data_format)
        anchors = self.anchor_generator(shape[h_axis], shape[w_axis])  # [A, 4]
        boxes = self.box_coder.decode(predictions[..., :4], anchors)  # [B, A, 4]
        # NaN scores and non-finite boxes must never be detections: a score of 0 is never
        # above confidence_threshold (>= 0, strict comparison). Sigmoid outputs lie in
        # [0, 1] or are NaN, so nan_to_num only replaces NaN.
        finite_box = ops.all(ops.isfinite(boxes), axis=-1, keepdims=True)  # [B, A, 1]
        scores = ops.nan_to_num(ops.sigmoid(predictions[..., 4:]), nan=0.0)  # [B, A, C]
        scores = ops.where(finite_box, scores, 0.0)
        boxes = ops.where(finite_box, boxes, 0.0)
        nmsed_boxes, nmsed_scores, nmsed_classes, valid = combined_non_max_suppression(
            boxes[:, :, None, :],  # [B, A, 1, 4]: one box shared by all classes
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


def _is_number(value):
    """A real, non-NaN Python/NumPy number (``bool`` excluded)."""
    try:
        return not isinstance(value, bool) and not math.isnan(float(value))
    except (TypeError, ValueError):
        return False
