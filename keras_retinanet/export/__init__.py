"""Exporting a ``RetinaNetDetector`` (model + decoding + NMS) as one deployable artifact.

=========================  ==============================  ===================================
format                     backends                        runs in
=========================  ==============================  ===================================
``"tf_saved_model"``       TensorFlow, JAX (via jax2tf)    ``tf.saved_model.load(path).serve``
``"onnx"``                 PyTorch                         ``onnxruntime.InferenceSession``
=========================  ==============================  ===================================

Every artifact takes ``[N, H, W, 3]`` float32 images (``[N, 3, H, W]`` for a channels_first
detector) preprocessed as for the model, and returns ``boxes [N, K, 4]`` float32,
``scores [N, K]`` float32, ``classes [N, K]`` int32 and ``num_detections [N]`` int32 with the
padding of ``detector.predict``. The batch size is dynamic; see each format for the image size.
"""

import keras
import numpy as np

#: format -> backends that can write it.
FORMATS = {"tf_saved_model": ("tensorflow", "jax"), "onnx": ("torch",)}
#: Output names of every artifact, in this order.
OUTPUT_NAMES = ("boxes", "scores", "classes", "num_detections")


def check_format(format):
    """``ValueError`` naming what works when ``format`` cannot be written from the current
    backend (before any tracing)."""
    backend = keras.backend.backend()
    if format not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {format!r}")
    if backend not in FORMATS[format]:
        works = [f"{f!r} from {'/'.join(b)}" for f, b in FORMATS.items()]
        raise ValueError(
            f"format={format!r} cannot be exported from the {backend} backend; supported: "
            + ", ".join(works)
        )


def export_detector(detector, filepath, format="tf_saved_model", *, image_size=None, verbose=True):
    """Writes ``detector`` (a ``RetinaNetDetector``) to ``filepath`` in ``format``.

    Args:
        detector: a built ``RetinaNetDetector`` (``model.make_detector(...)``).
        filepath: the SavedModel folder or the ``.onnx`` file to write.
        format: ``"tf_saved_model"`` (TensorFlow and JAX backends) or ``"onnx"`` (PyTorch).
        image_size: ``None`` (any ``H, W`` where the format allows it) or ``(H, W)`` to fix the
            input size at export.
        verbose: print what was written.

    Raises:
        ValueError: for a format the current backend cannot write (naming those that work),
            or a bad ``image_size``.
    """
    check_format(format)
    if image_size is not None:
        try:
            sizes = tuple(image_size)
        except TypeError:
            sizes = ()
        integers = all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in sizes)
        if len(sizes) != 2 or not integers or min(sizes) < 1:
            raise ValueError(
                f"image_size must be None or (height, width) positive integers, got {image_size!r}"
            )
        image_size = tuple(int(s) for s in sizes)
    if format == "tf_saved_model":
        from keras_retinanet.export._saved_model import export_saved_model

        return export_saved_model(detector, filepath, image_size=image_size, verbose=verbose)
    from keras_retinanet.export._onnx import export_onnx

    return export_onnx(detector, filepath, image_size=image_size, verbose=verbose)
