"""Focal loss for classification plus smooth L1 for boxes (docs/numerics.md, "Loss")."""

import math

import keras
from keras import ops

from keras_retinanet.label_encoder import IGNORE
from keras_retinanet.validation import any_true, is_concrete, positive_int


def _softplus(z):
    """Elementwise ``log(1 + exp(z))``, stable for large ``|z|``."""
    return ops.maximum(z, 0.0) + ops.log1p(ops.exp(-ops.abs(z)))


@keras.saving.register_keras_serializable(package="keras_retinanet")
class RetinaNetLoss(keras.losses.Loss):
    """Per-image focal + smooth-L1 loss over all anchors.

    Classification: sigmoid focal loss ``alpha_t (1 - p_t)^gamma CE`` summed over classes and
    anchors, ignored anchors excluded. Regression: smooth L1 (``delta``) summed over the 4
    terms of positive anchors. Each image's two sums are divided by its positive count; an
    image without positives contributes 0 (never NaN), as in the keras.io example.

    Args:
        num_classes: number of classes ``C``.
        alpha: focal weight of positives (0.25, the paper's best value with gamma 2).
        gamma: focusing exponent (2.0).
        delta: smooth-L1 transition point (1.0).
        box_loss_weight: weight of the box term (1.0).
        reduction: Keras 3 reduction over the batch (``"sum_over_batch_size"``: mean per image).

    Call args:
        y_true: ``[B, A, 5]`` from ``LabelEncoder.encode``.
        y_pred: ``[B, A, 4 + C]`` raw model outputs.

    Returns:
        ``[B]`` per-image losses, reduced by ``reduction``. An image with no objects (all
        anchors negative) gives 0; NaN or Inf in ``y_pred`` gives a NaN loss rather than being
        hidden (``keras.callbacks.TerminateOnNaN`` stops such a run).

    Raises:
        ValueError: for shapes other than the above, ``y_true`` and ``y_pred`` with different
            batch or anchor counts, and (concrete ``y_true`` only) class ids ``>= num_classes``.
    """

    def __init__(
        self,
        num_classes=80,
        *,
        alpha=0.25,
        gamma=2.0,
        delta=1.0,
        box_loss_weight=1.0,
        reduction="sum_over_batch_size",
        name="retinanet_loss",
        **kwargs,
    ):
        super().__init__(reduction=reduction, name=name, **kwargs)
        num_classes = positive_int(num_classes, "num_classes")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
        # Written so that NaN fails every comparison.
        if not (0.0 <= gamma < math.inf and 0.0 < delta < math.inf and 0.0 <= box_loss_weight):
            raise ValueError(
                f"gamma and box_loss_weight must be >= 0 and delta > 0, got gamma={gamma}, "
                f"delta={delta}, box_loss_weight={box_loss_weight}"
            )
        self.num_classes = int(num_classes)
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.delta = float(delta)
        self.box_loss_weight = float(box_loss_weight)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        y_pred = ops.cast(y_pred, "float32")
        self._check_shapes(tuple(y_true.shape), tuple(y_pred.shape))
        if is_concrete(y_true) and any_true(y_true[..., 4] >= float(self.num_classes)):
            raise ValueError(
                f"y_true class ids must be < num_classes={self.num_classes} (or -1 / -2 for "
                "negative / ignored anchors)"
            )
        class_ids = y_true[..., 4]  # [B, A]
        is_positive = class_ids >= 0.0
        positive = ops.cast(is_positive, "float32")
        not_ignored = ops.cast(ops.not_equal(class_ids, IGNORE), "float32")
        # [B, A, C] labels y as booleans: the class of a positive anchor; negatives and
        # ignored anchors get an all-false row.
        ids = ops.cast(ops.maximum(class_ids, 0.0), "int32")
        classes = ops.arange(self.num_classes, dtype="int32")
        is_label = ops.logical_and(ops.equal(ids[..., None], classes), is_positive[..., None])

        # With z = -x where y = 1 and z = x where y = 0 (x the logits, y in {0, 1}), the
        # sigmoid cross-entropy is softplus(z) and 1 - p_t is sigmoid(z) (docs/numerics.md,
        # "Loss"): the same values as the textbook form, in a third of the passes over
        # [B, A, C].
        logits = y_pred[..., 4:]
        signed = ops.where(is_label, -logits, logits)
        alpha_t = ops.where(is_label, self.alpha, 1.0 - self.alpha)
        focal = alpha_t * ops.power(ops.sigmoid(signed), self.gamma) * _softplus(signed)
        cls_loss = ops.sum(ops.sum(focal, axis=-1) * not_ignored, axis=-1)  # [B]

        diff = ops.abs(y_true[..., :4] - y_pred[..., :4])
        smooth_l1 = ops.where(
            diff < self.delta, 0.5 * diff * diff / self.delta, diff - 0.5 * self.delta
        )
        box_loss = ops.sum(ops.sum(smooth_l1, axis=-1) * positive, axis=-1)  # [B]

        num_positive = ops.sum(positive, axis=-1)  # [B]
        total = cls_loss + self.box_loss_weight * box_loss
        return ops.where(num_positive > 0.0, total / ops.maximum(num_positive, 1.0), 0.0)

    def _check_shapes(self, true_shape, pred_shape):
        if len(pred_shape) != 3:
            raise ValueError(
                f"y_pred must be [batch, anchors, 4 + num_classes], got shape {pred_shape}"
            )
        if pred_shape[-1] is not None and pred_shape[-1] != 4 + self.num_classes:
            raise ValueError(
                f"y_pred must have 4 + num_classes = {4 + self.num_classes} values per anchor, "
                f"got shape {pred_shape}"
            )
        if len(true_shape) != 3 or (true_shape[-1] is not None and true_shape[-1] != 5):
            raise ValueError(
                f"y_true must be [batch, anchors, 5] (LabelEncoder.encode), got shape {true_shape}"
            )
        for axis, what in ((0, "batch size"), (1, "anchor count")):
            a, b = true_shape[axis], pred_shape[axis]
            if a is not None and b is not None and a != b:
                raise ValueError(
                    f"y_true and y_pred must have the same {what}, got shapes {true_shape} and "
                    f"{pred_shape}"
                )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "alpha": self.alpha,
                "gamma": self.gamma,
                "delta": self.delta,
                "box_loss_weight": self.box_loss_weight,
            }
        )
        return config
