"""keep_freed_memory: freed blocks stay in the process (no page faults when they are reused).

Each case runs in its own Python process, because the settings are process-wide and cannot
be undone: a script that imports ``keras_retinanet``, optionally calls ``keep_freed_memory``,
then allocates, fills and frees 96 MiB blocks (larger than glibc's mmap threshold and than a
thread arena's heap, like a framework's activation buffers), from the main thread and from a
worker thread, and prints the minor page faults of the last rounds.
"""

import json
import os
import subprocess
import sys

import pytest

from keras_retinanet import cpu_memory

pytestmark = pytest.mark.skipif(
    cpu_memory._glibc() is None, reason="keep_freed_memory only changes glibc's malloc"
)

SCRIPT = r"""
import ctypes, json, resource, sys, threading
import keras_retinanet

result = {"applied": None}
if sys.argv[1] == "keep":
    result["applied"] = keras_retinanet.keep_freed_memory()
    result["again"] = keras_retinanet.keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
SIZE = 96 << 20

def faults_of_rounds(rounds=4):
    counts = []
    for _ in range(rounds):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = libc.malloc(SIZE)
        ctypes.memset(block, 1, SIZE)
        libc.free(block)
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return counts[1:]  # the first round maps the memory in either way

result["main"] = faults_of_rounds()
box = {}
worker = threading.Thread(target=lambda: box.update(faults=faults_of_rounds()))
worker.start()
worker.join()
result["thread"] = box["faults"]
result["pages"] = SIZE // resource.getpagesize()
print(json.dumps(result))
"""


def _run(mode):
    env = dict(os.environ)
    for name in ("MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_reused_blocks_fault_no_pages_in_main_and_worker_threads():
    default, kept = _run("default"), _run("keep")
    assert kept["applied"] is True and kept["again"] is True
    # With glibc's defaults every round maps the block afresh (one fault per page, or per
    # huge page where transparent huge pages are always on), from either thread.
    for where in ("main", "thread"):
        assert min(default[where]) >= 40, default
        # Kept: the block comes back from the heap with its pages still mapped.
        assert max(kept[where]) * 20 <= min(default[where]), (where, kept, default)
    assert max(kept["main"] + kept["thread"]) < kept["pages"] // 100


def test_keep_freed_memory_is_a_no_op_without_glibc(monkeypatch):
    monkeypatch.setattr(cpu_memory, "_applied", False)
    monkeypatch.setattr(cpu_memory, "_glibc", lambda: None)
    assert cpu_memory.keep_freed_memory() is False
    assert cpu_memory._applied is False


def test_refused_setting_raises(monkeypatch):
    class Refusing:
        @staticmethod
        def mallopt(parameter, value):
            return 0

    monkeypatch.setattr(cpu_memory, "_applied", False)
    monkeypatch.setattr(cpu_memory, "_glibc", lambda: Refusing)
    with pytest.raises(RuntimeError, match="mallopt"):
        cpu_memory.keep_freed_memory()
