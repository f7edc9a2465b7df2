"""JAX-specific helpers (imported only when the JAX backend is active)."""

import jax


def is_concrete_tensor(x):
    """Not a tracer inside ``jax.jit``/``jax.grad``/``jax.vmap``."""
    return not isinstance(x, jax.core.Tracer)
