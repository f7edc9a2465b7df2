"""The only place (with ``nms/_*.py``) that imports TensorFlow, JAX or PyTorch.

Each function dispatches on ``keras.backend.backend()`` and imports the matching private
module lazily, so the package imports with any one backend installed.
"""

import importlib

import keras

_MODULES = {"tensorflow": "_tensorflow", "jax": "_jax", "torch": "_torch"}


def _backend_module():
    name = _MODULES.get(keras.backend.backend())
    return None if name is None else importlib.import_module(f"{__name__}.{name}")


def is_concrete_tensor(x):
    """Whether a backend tensor's values are known now (eager, not traced or symbolic)."""
    module = _backend_module()
    return True if module is None else module.is_concrete_tensor(x)


def prepare_conv_kernels(model):
    """Stores ``model``'s ``Conv2D`` kernels in the order the backend's convolution reads
    (PyTorch only; see ``backends._torch.store_kernels_for_torch``). Returns the count."""
    if keras.backend.backend() != "torch":
        return 0
    return _backend_module().store_kernels_for_torch(model)
