"""Library-wide settings: the fast-path switch.

Fast paths are the per-backend speed-ups in :mod:`keras_retinanet.fast` (CPU convolutions,
pooling and batch normalisation, kernel storage order, the memory-releasing graph runner).
They never change a model's weights or its results beyond float rounding, and they only ever
touch layers the library built itself. This switch turns all of them off:

* the environment variable ``KERAS_RETINANET_FAST_PATHS`` (``0``/``false``/``off``/``no``
  to disable; ``1``/``true``/``on``/``yes`` or unset to enable), read each time a model is
  built, and
* :func:`set_fast_paths` (``True``/``False``; ``None`` goes back to the environment), which
  takes precedence over the variable, or the :func:`fast_paths` context manager.

A model built with fast paths off has no replaced method on any of its layers and runs every
layer through ``Layer.__call__``: plain Keras. The setting is read when a model is *built*
(its first call or ``build``); changing it later does not alter models already built.
A single model can also choose for itself with ``RetinaNet(fast_paths=...)``.
"""

import contextlib
import os

#: The environment variable read at build time.
ENV_VAR = "KERAS_RETINANET_FAST_PATHS"

_TRUE = ("1", "true", "on", "yes")
_FALSE = ("0", "false", "off", "no")

_override = None


def _from_environment():
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if value in ("",) + _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(
        f"{ENV_VAR} must be one of {_TRUE + _FALSE} (or unset), got {os.environ[ENV_VAR]!r}"
    )


def fast_paths_enabled():
    """Whether models built now get the fast paths (see the module docstring).

    Raises:
        ValueError: when ``KERAS_RETINANET_FAST_PATHS`` holds an unrecognised value.
    """
    return _from_environment() if _override is None else _override


def set_fast_paths(enabled):
    """Turns the fast paths on (``True``) or off (``False``) for models built from now on;
    ``None`` defers to ``KERAS_RETINANET_FAST_PATHS`` again.

    Raises:
        ValueError: when ``enabled`` is not ``True``, ``False`` or ``None``.
    """
    global _override
    if enabled is not None and not isinstance(enabled, bool):
        raise ValueError(f"enabled must be True, False or None, got {enabled!r}")
    _override = enabled


@contextlib.contextmanager
def fast_paths(enabled):
    """``with fast_paths(False): model = RetinaNet(...); model.build(...)``: the setting of
    :func:`set_fast_paths` for the block, restored afterwards."""
    global _override
    previous = _override
    set_fast_paths(enabled)
    try:
        yield
    finally:
        _override = previous
