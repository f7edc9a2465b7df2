"""PyTorch answers for :mod:`keras_retinanet.backends`."""

import torch


def is_concrete_tensor(x):
    """False while ``torch.compile`` traces and for ``meta`` tensors (Keras shape inference)."""
    if torch.compiler.is_compiling():
        return False
    return not (isinstance(x, torch.Tensor) and x.device.type == "meta")


def device_kinds(value):
    """``{"cpu"}``, ``{"cuda"}``, ... from the tensor's device."""
    return {value.device.type}


def device_key(x):
    """``"cuda:0"``, ``"cpu"``, ..."""
    return str(x.device)
