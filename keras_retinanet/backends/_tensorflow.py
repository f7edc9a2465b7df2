"""TensorFlow answers for :mod:`keras_retinanet.backends`."""

import tensorflow as tf


def is_concrete_tensor(x):
    """Eager (not traced, not symbolic) TensorFlow value."""
    return tf.executing_eagerly() and hasattr(x, "numpy") and not tf.is_symbolic_tensor(x)


def device_kinds(value):
    """``{"cpu"}`` / ``{"gpu"}`` / ... from the placement of a variable's value (a distributed
    variable: each of its components)."""
    values = getattr(value, "values", None)
    devices = [v.device for v in values] if values is not None else [value.device]
    return {tf.DeviceSpec.from_string(d).device_type.lower() if d else "cpu" for d in devices}


def device_key(x):
    """The tensor's device string (``/job:localhost/replica:0/task:0/device:CPU:0``)."""
    return x.device
