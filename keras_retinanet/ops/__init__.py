"""Public backend-agnostic operations of ``keras_retinanet``."""

from keras_retinanet.nms import combined_non_max_suppression

__all__ = ["combined_non_max_suppression"]
