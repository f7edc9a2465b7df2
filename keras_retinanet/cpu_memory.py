"""Process memory settings for CPU training: keep freed memory for reuse (glibc malloc).

A CPU train step of RetinaNet-R50 at 512 x 512, batch 2, allocates about 1.9 GB of
activations and gradients and frees them when the step ends. With glibc's default settings
most of it goes back to the kernel at once:

* blocks over the mmap threshold (at most 32 MiB) are ``mmap``-ed and ``munmap``-ed one by one;
* each framework thread allocates from its own arena, and an arena's heap is at most 64 MiB,
  so larger blocks from those threads are ``mmap``-ed whatever the threshold;
* the free top of every heap is trimmed back to the kernel.

The next step then touches all of that memory afresh: about 480 000 minor page faults and
0.9-1.4 s of system time per step on a 2-core machine, on every backend (XLA:CPU, PyTorch and
TensorFlow all take their buffers from ``malloc``). :func:`keep_freed_memory` turns that off:
one arena, no ``mmap`` for large blocks, no trimming. The page faults of a steady training
loop drop to about zero. Measured on that 2-core machine, one process at a time: a JAX train
step went from 5.2 s to 4.6-4.8 s and torchvision's from 4.5-4.8 s to 4.2-4.5 s (system time
0.3-0.5 s -> under 0.1 s); timed interleaved with three other resident workers (as
``benchmarks/model.py`` does), the JAX step went from 7.4 s to 5.5 s and torchvision's from
6.2 s to 4.8 s. The price: the process keeps its peak heap until it exits (the peak itself
does not grow), and all threads share one arena's lock, which did not cost time here.

The settings are glibc's ``mallopt`` options, the same as starting Python with
``MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=18446744073709551615``.
"""

import ctypes
import ctypes.util
import platform

# glibc's <malloc.h> parameter numbers.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

#: ``(parameter, value)`` pairs applied, in order. A trim threshold of -1 disables trimming
#: (``man mallopt``); ``mallopt`` takes an ``int``, so no finite threshold above 2 GiB exists.
SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))

_applied = False


def _glibc():
    """The C library as a ``ctypes`` handle when it is glibc with ``mallopt``, else ``None``."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return libc if hasattr(libc, "mallopt") else None


def keep_freed_memory():
    """Keeps memory that the framework frees inside the process for reuse (glibc only).

    Call it first, before the backend runs its first operation: a thread that has already
    allocated keeps its own arena, whose large blocks still go back to the kernel. Calling it
    right after ``import keras_retinanet`` is early enough (the backends start their compute
    threads on the first operation); ``python -m keras_retinanet train`` and ``demo`` call it
    themselves. Calling it again does nothing.

    Returns:
        ``True`` when the settings are in effect, ``False`` where the C library is not glibc
        (macOS, Windows, musl): there nothing is changed.
    """
    global _applied
    if _applied:
        return True
    libc = _glibc()
    if libc is None:
        return False
    for parameter, value in SETTINGS:
        if libc.mallopt(ctypes.c_int(parameter), ctypes.c_int(value)) != 1:
            raise RuntimeError(f"glibc mallopt({parameter}, {value}) was refused")
    _applied = True
    return True
