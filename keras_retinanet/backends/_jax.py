"""JAX answers for :mod:`keras_retinanet.backends`."""

import jax


def is_concrete_tensor(x):
    """Not a tracer inside ``jax.jit``/``jax.grad``/``jax.vmap``."""
    return not isinstance(x, jax.core.Tracer)


def device_kinds(value):
    """The platforms (``"cpu"``, ``"gpu"``, ``"tpu"``) of the devices holding ``value``."""
    if isinstance(value, jax.core.Tracer):
        return {jax.default_backend()}
    return {device.platform for device in value.devices()}


def device_key(x):
    """The sorted names of the devices holding ``x`` (one, or a sharding's devices)."""
    return tuple(sorted(str(device) for device in x.devices()))
