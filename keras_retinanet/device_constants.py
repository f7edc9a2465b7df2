"""Constant tensors (anchors, box-coding variances) made once per device, not on every call.

An eager call that builds a constant from Python or NumPy values (``ops.arange`` and friends
for the anchors, ``convert_to_tensor`` for a variance) launches small kernels and, on an
accelerator, copies host memory to the device each time. :class:`DeviceConstants` keeps the
result keyed by what determines it (an input size, say) and by the device of the tensor it is
used with, so a model moved to another device, or two models on two devices, never share one.
While a function is traced or compiled (``tf.function``, ``jax.jit``, ``torch.compile``,
Keras' symbolic shape inference) nothing is cached: a traced value must not outlive its trace,
and a compiled program embeds its constants anyway.
"""

import collections
import threading

import numpy as np

from keras_retinanet.backends import device_key
from keras_retinanet.validation import is_concrete


def size_key(height, width):
    """``(height, width)`` as ints, the cache key of a per-input-size constant, or ``None``
    (never cached) when either is a tensor (a dynamic size inside a traced function)."""
    if isinstance(height, (int, np.integer)) and isinstance(width, (int, np.integer)):
        return (int(height), int(width))
    return None


class DeviceConstants:
    """A small least-recently-used cache of constant tensors per ``(key, device)``.

    Args:
        max_entries: entries kept (input sizes x devices); the least recently used one is
            dropped beyond it. 16 covers the few sizes an inference service sees (a fixed
            size, or a handful of padded buckets) on one or two devices.
    """

    def __init__(self, max_entries=16):
        self.max_entries = int(max_entries)
        self._entries = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, like, make):
        """``make()``, cached under ``(key, device of like)`` when ``like`` is concrete.

        Args:
            key: hashable description of the constant (e.g. ``(height, width)``); ``None``
                never caches.
            like: the tensor the constant is used with; its device is part of the key, and
                when it is traced or symbolic ``make()`` is called and nothing is stored.
            make: zero-argument callable building the constant.
        """
        if key is None or not is_concrete(like):
            return make()
        full_key = (key, device_key(like))
        with self._lock:
            value = self._entries.get(full_key)
            if value is not None:
                self._entries.move_to_end(full_key)
                return value
        value = make()
        if not is_concrete(value):  # e.g. made under an outer trace
            return value
        with self._lock:
            self._entries[full_key] = value
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return value

    def clear(self):
        with self._lock:
            self._entries.clear()

    def __len__(self):
        return len(self._entries)

    # Copies and pickles (``copy.deepcopy`` of a model, a ``.keras`` save) start empty:
    # tensors of one device are no constants of another process.
    def __deepcopy__(self, memo):
        return DeviceConstants(self.max_entries)

    def __getstate__(self):
        return {"max_entries": self.max_entries}

    def __setstate__(self, state):
        self.__init__(state["max_entries"])
