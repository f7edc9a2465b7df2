"""TensorFlow-specific helpers (imported only when the TensorFlow backend is active)."""

import tensorflow as tf


def is_concrete_tensor(x):
    """Eager (not traced, not symbolic) TensorFlow value."""
    return tf.executing_eagerly() and hasattr(x, "numpy") and not tf.is_symbolic_tensor(x)
