"""Questions only the backend framework can answer: whether a tensor's values are known now,
and on which kind of device a variable lives.

With ``nms/_*.py`` and the fast paths' ``fast/_*.py``, the only modules that import
TensorFlow, JAX or PyTorch. Each function dispatches on ``keras.backend.backend()`` and imports
the matching private module lazily, so the package imports with any one backend installed.
"""

import importlib

import keras
import numpy as np

_MODULES = {"tensorflow": "_tensorflow", "jax": "_jax", "torch": "_torch"}


def _backend_module():
    name = _MODULES.get(keras.backend.backend())
    return None if name is None else importlib.import_module(f"{__name__}.{name}")


def is_concrete_tensor(x):
    """Whether a backend tensor's values are known now (eager, not traced or symbolic)."""
    module = _backend_module()
    return True if module is None else module.is_concrete_tensor(x)


def variable_device_kinds(variables):
    """The kinds of device (``"cpu"``, ``"gpu"``, ``"tpu"``, ...) holding ``variables``' values,
    as a set; a variable spread over several devices contributes each of them."""
    module = _backend_module()
    kinds = set()
    for variable in variables:
        value = getattr(variable, "value", variable)
        kinds |= {"cpu"} if module is None else set(module.device_kinds(value))
    return kinds


def device_key(x):
    """A hashable name of the device(s) holding the concrete tensor ``x`` (``"host"`` for
    NumPy data), for caches of per-device constants."""
    module = _backend_module()
    if module is None or isinstance(x, (np.ndarray, np.generic, list, tuple, int, float)):
        return "host"
    return module.device_key(x)
