"""Micro-benchmark: where a JAX convolution's training time goes on this CPU.

Times, for one ``3x3`` convolution (NHWC, ``SAME``) at ``--batch x --size x --size`` with
``--channels`` in and ``--out`` channels out: the forward, XLA's input gradient, XLA's kernel
gradient, and the kernel gradient that ``keras_retinanet.fast._jax_convolution`` computes
instead (one matrix product per kernel tap), plus torch's forward and both gradients when torch is
installed. Not run by ``nox -s bench``; use it to check on a new CPU that the per-tap kernel
gradient is still the faster choice (it was 2.5-4.6x faster than XLA's on a 2-core AVX2 EPYC).

Usage: ``KERAS_BACKEND=jax python benchmarks/_conv_gradients.py [--out 720]``.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _median_ms(fn, repeats):
    fn()  # compile / warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--out", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np

    from keras_retinanet.fast._jax_convolution import _conv, _spatial

    n, s, c, o = args.batch, args.size, args.channels, args.out
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(n, s, s, c)).astype("float32"))
    k = jnp.asarray(rng.normal(0, 0.01, (3, 3, c, o)).astype("float32"))
    dy = jnp.asarray(rng.normal(size=(n, s, s, o)).astype("float32"))
    statics = ((1, 1), "SAME", "channels_last")

    def grads(conv, argnum):
        return jax.jit(lambda x, k: jax.vjp(lambda *a: conv(*a, *statics), x, k)[1](dy)[argnum])

    rows = [
        ("forward (XLA)", jax.jit(lambda x, k: _conv(x, k, *statics))),
        ("input gradient (XLA)", grads(_conv, 0)),
        ("kernel gradient (XLA)", grads(_conv, 1)),
        ("kernel gradient (per-tap products)", grads(_spatial, 1)),
    ]
    print(f"3x3 conv, {n}x{s}x{s}, {c} -> {o} channels, median of {args.repeats}")
    for name, fn in rows:
        ms = _median_ms(lambda fn=fn: jax.block_until_ready(fn(x, k)), args.repeats)
        print(f"  {name:36s} {ms:8.1f} ms")
    try:
        import torch
    except ImportError:
        return
    xt = torch.randn(n, c, s, s, requires_grad=True)
    kt = (0.01 * torch.randn(o, c, 3, 3)).requires_grad_()
    dyt = torch.randn(n, o, s, s)

    def torch_step():
        y = torch.nn.functional.conv2d(xt, kt, padding=1)
        torch.autograd.grad(y, (xt, kt), dyt)

    ms = _median_ms(torch_step, args.repeats)
    print(f"  {'torch forward + both gradients':36s} {ms:8.1f} ms")


if __name__ == "__main__":
    main()
