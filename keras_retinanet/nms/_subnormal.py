"""The float32 constants of rule 6 of ``reference.py`` (subnormals are zero, as in
TensorFlow's flush-to-zero CPU kernel), shared by every implementation and the ONNX graph."""

import numpy as np

#: The smallest normal float32; nonzero values of smaller magnitude are subnormal.
FLT_MIN = float(np.finfo(np.float32).tiny)
#: The largest subnormal float32: for every float32 ``x``, ``x > SUBNORMAL_MAX`` is
#: ``flush(x) > 0``.
SUBNORMAL_MAX = float(np.nextafter(np.float32(FLT_MIN), np.float32(0)))


def flush_scalar(value):
    """A threshold as its float32 value, ``0.0`` when subnormal (``-inf``, NaN unchanged)."""
    value = float(np.float32(value))
    return 0.0 if abs(value) < FLT_MIN else value


def compare_threshold(value):
    """``t'`` with ``x > t'`` equal to ``flush(x) > flush(value)`` for every float32 ``x``: a
    zero or subnormal threshold becomes :data:`SUBNORMAL_MAX`."""
    value = flush_scalar(value)
    return SUBNORMAL_MAX if value == 0.0 else value
