"""Running one measurement in a fresh worker process (``benchmarks/export.py``,
``benchmarks/data_pipeline.py``).

A worker is the benchmark script itself, started with a worker flag and a JSON spec, under
the backend it measures; it prints one result line, ``<prefix><JSON>``, on stdout. Its stderr
passes through to the console, so a failed worker's traceback stays visible.
"""

import json
import os
import subprocess
import sys


def run_worker(script, args, backend, result_prefix, timeout, cwd):
    """Runs ``python script *args`` with ``KERAS_BACKEND=backend`` and returns the JSON of the
    last stdout line that starts with ``result_prefix``.

    Returns:
        The worker's result, or ``{"error": ...}`` when it timed out after ``timeout`` seconds
        or exited without a result line.
    """
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    try:
        proc = subprocess.run(
            [sys.executable, os.path.abspath(script), *args],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=cwd,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"worker timed out after {timeout} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(result_prefix):
            return json.loads(line[len(result_prefix) :])
    return {"error": f"worker exited with code {proc.returncode} (see its stderr above)"}
