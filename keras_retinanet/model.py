"""The RetinaNet model: backbone -> feature pyramid -> shared heads.

The layout is in docs/numerics.md, "Model layout"; the fast paths that :mod:`keras_retinanet.fast`
adds to the model's own layers are switched by :mod:`keras_retinanet.config`.
"""

import keras
from keras import ops

from keras_retinanet import fast
from keras_retinanet.anchors import AnchorGenerator
from keras_retinanet.backbone import get_backbone
from keras_retinanet.box_coding import BoxCoder
from keras_retinanet.config import fast_paths_enabled
from keras_retinanet.decoder import DecodePredictions, RetinaNetDetector
from keras_retinanet.fpn import FeaturePyramid
from keras_retinanet.heads import PredictionHead, prior_bias
from keras_retinanet.label_encoder import LabelEncoder
from keras_retinanet.layout import spatial_axes, standardize_data_format, with_channels
from keras_retinanet.losses import RetinaNetLoss
from keras_retinanet.validation import check_image_shape, positive_int, validate_images


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
            Outputs, weights and detections are the same in both.
        positive_threshold, negative_threshold: the label encoder's anchor matching: IoU
            ``>= positive_threshold`` is a positive, ``< negative_threshold`` background, in
            between ignored (0.5 / 0.4, the paper's and keras.io's).
        fast_paths: ``None`` (default) follows :mod:`keras_retinanet.config` (on unless
            ``KERAS_RETINANET_FAST_PATHS=0`` or ``config.set_fast_paths(False)``); ``True`` or
            ``False`` decides for this model. Fast paths (:mod:`keras_retinanet.fast`) give
            the layers this library built faster per-backend methods on the CPU, with the same
            weights and results; off, every layer is plain Keras.
        fpn_p6_input, fpn_downsample_padding: ``FeaturePyramid``'s ``p6_input`` (``"c5"``,
            keras.io; ``"p5"``, torchvision v1) and ``downsample_padding`` (``"same"``,
            keras.io; ``"symmetric"``, PyTorch's).
        head_norm, head_norm_groups: ``PredictionHead``'s ``norm`` (``None``, keras.io;
            ``"group_norm"``, torchvision v2) and ``norm_groups`` (32).
        fast_user_backbone: ``False`` (default) leaves a ``keras.Model`` passed as
            ``backbone`` exactly as it is: no method replaced, no variable re-laid. ``True``
            lets the fast paths change that model's layers too (they then run faster, and
            the change is visible to every other user of those layers).

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
        positive_threshold=0.5,
        negative_threshold=0.4,
        fpn_p6_input="c5",
        fpn_downsample_padding="same",
        head_norm=None,
        head_norm_groups=32,
        fast_paths=None,
        fast_user_backbone=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.data_format = standardize_data_format(data_format)
        self.num_classes = positive_int(num_classes, "num_classes")
        if fast_paths not in (None, True, False) or fast_user_backbone not in (True, False):
            raise ValueError(
                "fast_paths must be None, True or False and fast_user_backbone True or False, "
                f"got {fast_paths!r} and {fast_user_backbone!r}"
            )
        self.fast_paths = fast_paths
        self.fast_user_backbone = bool(fast_user_backbone)
        # A backbone built here (from a name, or by from_config) belongs to the model; one
        # passed in belongs to the user and is never changed without fast_user_backbone.
        self._owns_backbone = isinstance(backbone, str)
        self.backbone = get_backbone(
            backbone, weights=backbone_weights, data_format=self.data_format
        )
        self.anchor_generator = anchor_generator or AnchorGenerator()
        self.fpn_filters = int(fpn_filters)
        self.head_convs = int(head_convs)
        self.prior_probability = float(prior_probability)
        self.box_coder = box_coder or BoxCoder()
        self.label_encoder = LabelEncoder(
            anchor_generator=self.anchor_generator,
            box_coder=self.box_coder,
            positive_threshold=positive_threshold,
            negative_threshold=negative_threshold,
        )
        k = self.anchor_generator.num_anchors_per_location
        self.fpn = FeaturePyramid(
            filters=self.fpn_filters,
            p6_input=fpn_p6_input,
            downsample_padding=fpn_downsample_padding,
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
            norm=head_norm,
            norm_groups=head_norm_groups,
            name="cls_head",
            dtype=self.dtype_policy,
        )
        self.box_head = PredictionHead(
            output_filters=k * 4,
            bias_value=0.0,
            num_convs=self.head_convs,
            filters=self.fpn_filters,
            data_format=self.data_format,
            norm=head_norm,
            norm_groups=head_norm_groups,
            name="box_head",
            dtype=self.dtype_policy,
        )

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        check_image_shape(input_shape, self.data_format)
        feature_shapes = [tuple(s) for s in self.backbone.compute_output_shape(input_shape)]
        self.fpn.build(feature_shapes)
        level_shape = with_channels(
            (input_shape[0], None, None, None), self.fpn_filters, self.data_format
        )
        self.cls_head.build(level_shape)
        self.box_head.build(level_shape)
        self.fast_paths_applied = {}
        if fast_paths_enabled() if self.fast_paths is None else self.fast_paths:
            user_backbone = not (self._owns_backbone or self.fast_user_backbone)
            exclude = (self.backbone,) if user_backbone else ()
            self.fast_paths_applied = fast.apply_fast_paths(self, exclude=exclude)
        self._check_layout_runs()
        self.built = True

    def _check_layout_runs(self):
        """``ValueError`` when channels_first convolutions would reach TensorFlow's CPU kernels,
        which are NHWC only (the NHWC fast path was off or not given to a user's backbone)."""
        if fast.channels_first_needs_fast_paths(self):
            raise ValueError(
                "data_format='channels_first' convolutions cannot run on TensorFlow's CPU "
                "kernels (NHWC only): use data_format='channels_last', or let the fast paths "
                "compute them in NHWC (fast_paths on, and fast_user_backbone=True for a "
                "backbone of your own)"
            )

    def call(self, images, training=False):
        validate_images(images, self.data_format)
        features = self.backbone(images, training=training)
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
        """Restores ``compile()`` arguments from a ``.keras`` file; the optimizer's variables
        are created here so that the file's optimizer state (step count, momenta) loads into
        them. (Keras' own version skips models that override ``compile``, as this one does.)"""
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    def make_detector(self, **decoder_kwargs):
        """A ``RetinaNetDetector`` sharing this model's weights.

        ``decoder_kwargs`` go to ``DecodePredictions`` (``confidence_threshold``,
        ``nms_iou_threshold``, ``max_detections_per_class``, ``max_detections``,
        ``pre_nms_top_k_per_level``, ``clip_boxes``); ``**decoder.TORCHVISION_DECODING`` is
        torchvision's postprocessing.
        """
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
                "positive_threshold": self.label_encoder.positive_threshold,
                "negative_threshold": self.label_encoder.negative_threshold,
                "fpn_p6_input": self.fpn.p6_input,
                "fpn_downsample_padding": self.fpn.downsample_padding,
                "head_norm": self.cls_head.norm,
                "head_norm_groups": self.cls_head.norm_groups,
                "fast_paths": self.fast_paths,
                "fast_user_backbone": self.fast_user_backbone,
            }
        )
        return config

    @classmethod
    def from_preset(cls, preset, *, weights=None, data_format=None, **kwargs):
        """A ``RetinaNet`` holding a published torchvision COCO checkpoint (box AP 36.4 or
        41.5): see :func:`keras_retinanet.presets.from_preset`.

        ``preset`` is a name of ``keras_retinanet.presets.PRESETS``; ``weights`` a local copy
        of its ``.pth`` (or ``.safetensors``), or ``None`` to download it into
        ``$KERAS_HOME/keras_retinanet`` and verify its SHA-256. The model takes
        ``[N, H, W, 3]`` images preprocessed as torchvision does
        (``presets.get_preset(preset).preprocessing()``), and
        ``model.make_detector(**presets.get_preset(preset).decoding())`` gives torchvision's
        detections, labelled with COCO category ids.
        """
        from keras_retinanet.presets import from_preset

        return from_preset(preset, weights=weights, data_format=data_format, **kwargs)

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        for key in ("anchor_generator", "box_coder"):
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        model = cls(**config)
        model._owns_backbone = True  # made by deserialization: no one else holds it
        return model
