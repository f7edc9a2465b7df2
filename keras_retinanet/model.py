"""The RetinaNet model: backbone -> feature pyramid -> shared heads (SPEC §1)."""

import keras
import numpy as np
from keras import ops

from keras_retinanet.anchors import AnchorGenerator
from keras_retinanet.backbone import get_backbone
from keras_retinanet.backends import prepare_layers
from keras_retinanet.box_coding import BoxCoder
from keras_retinanet.fpn import FeaturePyramid
from keras_retinanet.graph_runner import call_releasing
from keras_retinanet.heads import PredictionHead, prior_bias
from keras_retinanet.label_encoder import LabelEncoder, any_true, is_concrete
from keras_retinanet.layout import spatial_axes, standardize_data_format
from keras_retinanet.losses import RetinaNetLoss


@keras.saving.register_keras_serializable(package="keras_retinanet")
class RetinaNet(keras.Model):
    """RetinaNet returning raw box deltas and class logits for every anchor.

    Args:
        num_classes: number of object classes (no background class; 80 for COCO).
        backbone: a registered backbone name (``"resnet50"``, the default) or a ``keras.Model``
            mapping ``[N, H, W, 3]`` images to three feature maps at strides 8, 16, 32.
        backbone_weights: for a named backbone: ``None`` (random init, the default since
            downloads are not always possible), a local weights file, or ``"imagenet"``.
        anchor_generator: the ``AnchorGenerator`` whose per-location anchor count sizes the
            heads and that decoding and label encoding use (keras.io defaults when ``None``).
        fpn_filters: channels of the pyramid and of the head convs (256).
        head_convs: hidden convs in each head (4).
        prior_probability: initial class probability (0.01, paper and keras.io).
        box_coder: the ``BoxCoder`` relating box outputs to anchors (variance 0.1, 0.1, 0.2,
            0.2 when ``None``).
        data_format: layout of the input images and of every feature map:
            ``"channels_last"`` (``[N, H, W, 3]``) or ``"channels_first"`` (``[N, 3, H, W]``);
            ``None`` takes ``keras.config.image_data_format()`` (channels_last unless set).
            Outputs, weights and detections are the same in both; channels_first is faster
            with PyTorch, whose convolutions are NCHW natively.

    Training: ``compile()`` defaults the loss to ``RetinaNetLoss(num_classes)``; ``fit`` takes
    ``y = {"boxes": [N, M, 4] xyxy input pixels, "classes": [N, M] (-1 = padding)}``, encoded
    to anchor targets inside the train step (or targets already encoded by ``LabelEncoder``).

    Call args:
        images: ``[N, H, W, 3]`` float RGB images preprocessed as
            ``keras.applications.resnet.preprocess_input`` (caffe mode); any ``H, W``.

    Returns:
        ``[N, A, 4 + num_classes]`` float32: ``[..., :4]`` box deltas (see ``BoxCoder``) and
        ``[..., 4:]`` class logits, for ``A = anchor_generator.num_anchors(H, W)`` anchors in
        ``AnchorGenerator`` order (levels P3 -> P7, each ``[h, w, anchor]``).

    Raises:
        ValueError: before any computation, when ``images`` is not ``[N, H, W, 3]`` with
            ``N, H, W >= 1`` (checked on static shapes, also while tracing), and when concrete
            images (NumPy arrays or eager tensors: ``model(x)``, ``predict(x)`` with an array,
            eager PyTorch training) contain NaN or Inf.

    NaN/Inf policy: values are checked only when they are known in Python, so the check never
    breaks tracing. Inside a compiled function (``tf.function``/XLA, ``jax.jit``, the compiled
    ``fit``/``predict`` steps of TensorFlow and JAX fed from a dataset) no check is made and a
    NaN propagates to the outputs; ``DecodePredictions`` never turns NaN outputs into
    detections. ``predict`` checks a NumPy or tensor ``x`` as a whole before batching.
    """

    def __init__(
        self,
        num_classes=80,
        *,
        backbone="resnet50",
        backbone_weights=None,
        anchor_generator=None,
        fpn_filters=256,
        head_convs=4,
        prior_probability=0.01,
        box_coder=None,
        data_format=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.data_format = standardize_data_format(data_format)
        if int(num_classes) != num_classes or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.backbone = get_backbone(
            backbone, weights=backbone_weights, data_format=self.data_format
        )
        self.anchor_generator = anchor_generator or AnchorGenerator()
        self.fpn_filters = int(fpn_filters)
        self.head_convs = int(head_convs)
        self.prior_probability = float(prior_probability)
        self.box_coder = box_coder or BoxCoder()
        self.label_encoder = LabelEncoder(
            anchor_generator=self.anchor_generator, box_coder=self.box_coder
        )
        k = self.anchor_generator.num_anchors_per_location
        self.fpn = FeaturePyramid(
            filters=self.fpn_filters,
            data_format=self.data_format,
            name="fpn",
            dtype=self.dtype_policy,
        )
        self.cls_head = PredictionHead(
            output_filters=k * self.num_classes,
            bias_value=prior_bias(self.prior_probability),
            num_convs=self.head_convs,
            filters=self.fpn_filters,
            data_format=self.data_format,
            name="cls_head",
            dtype=self.dtype_policy,
        )
        self.box_head = PredictionHead(
            output_filters=k * 4,
            bias_value=0.0,
            num_convs=self.head_convs,
            filters=self.fpn_filters,
            data_format=self.data_format,
            name="box_head",
            dtype=self.dtype_policy,
        )

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        _check_image_shape(input_shape, self.data_format)
        feature_shapes = [tuple(s) for s in self.backbone.compute_output_shape(input_shape)]
        self.fpn.build(feature_shapes)
        level_shape = (input_shape[0], None, None, self.fpn_filters)
        if self.data_format == "channels_first":
            level_shape = (input_shape[0], self.fpn_filters, None, None)
        self.cls_head.build(level_shape)
        self.box_head.build(level_shape)
        prepare_layers(self)  # backend-specific fast paths, same outputs
        self.built = True

    def call(self, images, training=False):
        validate_images(images, self.data_format)
        # Eager backends would otherwise hold every backbone activation until it returns.
        features = call_releasing(self.backbone, images, training=training)
        batch = ops.shape(images)[0]
        box_outputs, cls_outputs = [], []
        for feature in self.fpn(features, training=training):
            box = self.box_head(feature, training=training)
            cls = self.cls_head(feature, training=training)
            if self.data_format == "channels_first":
                # [N, k * 4, h, w] -> [N, h, w, k * 4]: anchors are ordered by location.
                box = ops.transpose(box, (0, 2, 3, 1))
                cls = ops.transpose(cls, (0, 2, 3, 1))
            # [N, h, w, k * 4] -> [N, h * w * k, 4]: anchor-major within a location.
            box_outputs.append(ops.reshape(box, (batch, -1, 4)))
            cls_outputs.append(ops.reshape(cls, (batch, -1, self.num_classes)))
        box_outputs = ops.concatenate(box_outputs, axis=1)  # [N, A, 4]
        cls_outputs = ops.concatenate(cls_outputs, axis=1)  # [N, A, C]
        # Mixed-precision policies compute in float16/bfloat16; outputs stay float32 for
        # numerically safe losses and decoding.
        return ops.cast(ops.concatenate([box_outputs, cls_outputs], axis=-1), "float32")

    def predict(self, x, *args, **kwargs):
        """``keras.Model.predict``; an array or tensor ``x`` is validated as in ``call`` first
        (``ValueError`` instead of a backend error deep inside the compiled step)."""
        if hasattr(x, "shape") and hasattr(x, "dtype"):
            validate_images(x, self.data_format)
        return super().predict(x, *args, **kwargs)

    def compile(self, optimizer="adam", loss=None, **kwargs):
        """``keras.Model.compile`` with ``RetinaNetLoss(num_classes)`` as the default loss."""
        if loss is None:
            loss = RetinaNetLoss(self.num_classes)
        super().compile(optimizer=optimizer, loss=loss, **kwargs)

    def compile_from_config(self, config):
        """Restores ``compile()`` arguments from a ``.keras`` file (optimizer state included)."""
        super().compile_from_config(config)

    def make_detector(self, **decoder_kwargs):
        """A ``RetinaNetDetector`` sharing this model's weights.

        ``decoder_kwargs`` go to ``DecodePredictions`` (``confidence_threshold``,
        ``nms_iou_threshold``, ``max_detections_per_class``, ``max_detections``).
        """
        from keras_retinanet.decoder import DecodePredictions, RetinaNetDetector

        decoder = DecodePredictions(
            num_classes=self.num_classes,
            anchor_generator=self.anchor_generator,
            box_coder=self.box_coder,
            data_format=self.data_format,
            **decoder_kwargs,
        )
        return RetinaNetDetector(self, decoder)

    def encode_targets(self, images, y):
        """``{"boxes", "classes"}`` padded ground truth -> ``[N, A, 5]`` anchor targets."""
        shape = ops.shape(images)
        h_axis, w_axis = spatial_axes(self.data_format)
        return self.label_encoder.encode((shape[h_axis], shape[w_axis]), y["boxes"], y["classes"])

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if isinstance(y, dict):
            y = self.encode_targets(x, y)
        return super().compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training
        )

    def compute_output_shape(self, input_shape):
        h_axis, w_axis = spatial_axes(self.data_format)
        h, w = input_shape[h_axis], input_shape[w_axis]
        anchors = None if h is None or w is None else self.anchor_generator.num_anchors(h, w)
        return (input_shape[0], anchors, 4 + self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "backbone": keras.saving.serialize_keras_object(self.backbone),
                "anchor_generator": keras.saving.serialize_keras_object(self.anchor_generator),
                "fpn_filters": self.fpn_filters,
                "head_convs": self.head_convs,
                "prior_probability": self.prior_probability,
                "box_coder": keras.saving.serialize_keras_object(self.box_coder),
                "data_format": self.data_format,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        for key in ("anchor_generator", "box_coder"):
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


def _check_image_shape(shape, data_format="channels_last"):
    """``ValueError`` unless the static ``shape`` can be ``[N >= 1, H >= 1, W >= 1, 3]``
    (``[N, 3, H, W]`` when ``data_format`` is channels_first)."""
    if shape is None:  # unknown rank while tracing: nothing to check
        return
    # Unknown or symbolic sizes (a jax.export dimension while tracing) are not checked.
    shape = tuple(int(d) if isinstance(d, int | np.integer) else None for d in shape)
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
    try:
        shape = tuple(images.shape)
    except ValueError:  # a TensorFlow shape of unknown rank
        shape = None
    _check_image_shape(shape, data_format)
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
