"""Benchmark: RetinaNet (ResNet50) forward, predict-with-decoding and train step per backend.

Every configuration (backend x execution mode x data format, plus the peer RetinaNets) runs in
its own worker process, started once; the driver then asks the workers for one timed call at a
time, round-robin in an order that rotates every round, so all configurations see the same
machine state (interleaved A/B). The reported time is the median over rounds; a ratio between
two configurations is the median of the per-round ratios (paired, so slow phases of the
machine cancel out). ``forward b1`` and ``predict b1`` are timed back to back in each round, so
``predict / forward`` is paired call by call. Measured per configuration:

* ``forward b1`` / ``forward b8``: raw model outputs for 1 / 8 images (``size x size``).
* ``predict b1``: forward + ``DecodePredictions`` (anchor decoding, sigmoid, per-class NMS).
* ``train b2``: one optimizer step (SGD) on 2 images with 4 boxes each (label encoding and loss
  inside the step), reported as images per second.
* ``first call``: the first forward call of the process (tracing and compilation included).
* ``peak RSS``: the worker's peak resident memory.
* ``working MiB``: inference working memory, the peak resident memory during the first
  ``forward b1`` call and :data:`WORKING_CALLS` more, minus the resident memory of the built
  model just before them (Linux: the peak is reset through ``/proc/self/clear_refs``). It
  counts what inference needs beyond the weights: activations, workspaces, and where the mode
  compiles (``tf.function``, XLA, ``jax.jit``, ``torch.compile``) the compiler's memory and
  the compiled program.

Every worker, peers included, first calls :func:`keras_retinanet.keep_freed_memory` (glibc
keeps freed blocks for reuse instead of returning them to the kernel each step), the setting
``python -m keras_retinanet train`` uses; ``--malloc default`` times glibc's defaults instead.

Configurations named ``... plain`` run with ``KERAS_RETINANET_FAST_PATHS=0`` (no fast path).

Modes: TensorFlow graph (``tf.function``) and XLA (``jit_compile=True``), JAX ``jax.jit``,
PyTorch eager and ``torch.compile``; layouts channels_last and channels_first where the backend
runs them (TensorFlow's CPU convolutions are NHWC only outside XLA). Peers, when installed:
KerasHub's RetinaNet and torchvision's ``retinanet_resnet50_fpn`` (random weights).

Usage: ``python benchmarks/model.py [--quick] [--size N] [--only SUBSTRING ...]
[--malloc keep|default]``; results go to
``$BENCHMARK_OUTPUT_DIR`` (default ``benchmarks/results``) as ``model.json``, ``model.md`` and
``model.png``.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

#: ``(name, backend, mode, data_format, implementation)``. ``implementation`` is ``ours``,
#: ``keras_hub`` or ``torchvision``.
CONFIGS = [
    ("tf graph NHWC", "tensorflow", "graph", "channels_last", "ours"),
    ("tf xla NHWC", "tensorflow", "xla", "channels_last", "ours"),
    ("jax jit NHWC", "jax", "jit", "channels_last", "ours"),
    ("jax jit NCHW", "jax", "jit", "channels_first", "ours"),
    ("torch eager NHWC", "torch", "eager", "channels_last", "ours"),
    ("torch eager NCHW", "torch", "eager", "channels_first", "ours"),
    ("torch compile NCHW", "torch", "compile", "channels_first", "ours"),
    # The backends' defaults with the fast paths switched off (KERAS_RETINANET_FAST_PATHS=0):
    # what each fast path is worth, measured in the same rounds.
    ("tf graph NHWC plain", "tensorflow", "graph", "channels_last", "ours"),
    ("jax jit NHWC plain", "jax", "jit", "channels_last", "ours"),
    ("torch eager NHWC plain", "torch", "eager", "channels_last", "ours"),
    ("KerasHub jax", "jax", "jit", "channels_last", "keras_hub"),
    ("KerasHub torch", "torch", "eager", "channels_last", "keras_hub"),
    ("torchvision", "torch", "eager", "channels_first", "torchvision"),
]
#: Ratios compare with this configuration when the requested reference cannot run.
FALLBACK_REFERENCE = "torch eager NCHW"
#: Measures timed together in each round, one call right after the other in the same worker
#: (in an order that alternates every round): ``predict / forward`` is then the ratio of two
#: calls made seconds apart, not of two phases of the run minutes apart.
MEASURE_GROUPS = [("forward1", "predict1"), ("forward8",), ("train2",)]
MEASURES = [measure for group in MEASURE_GROUPS for measure in group]
NUM_CLASSES = 80


# --- worker -------------------------------------------------------------------------------


def _sync(value):
    """Waits for every array in ``value`` (asynchronous backends return before computing)."""
    import keras

    for leaf in keras.tree.flatten(value):
        if hasattr(leaf, "block_until_ready"):
            leaf.block_until_ready()
        elif hasattr(leaf, "numpy") and not isinstance(leaf, (int, float)):
            leaf = leaf.cpu() if hasattr(leaf, "cpu") else leaf
            leaf.numpy()
    return value


def _images(batch, size, data_format, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    shape = (batch, size, size, 3) if data_format == "channels_last" else (batch, 3, size, size)
    return rng.normal(0, 50, shape).astype("float32")


def _targets(batch, size, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    corner = rng.uniform(0, size * 0.6, (batch, 4, 2))
    extent = rng.uniform(size * 0.1, size * 0.4, (batch, 4, 2))
    boxes = np.concatenate([corner, corner + extent], -1).astype("float32")
    classes = rng.integers(0, NUM_CLASSES, (batch, 4)).astype("float32")
    return {"boxes": boxes, "classes": classes}


def _compiled_call(fn_model, backend, mode, variables_of=None):
    """``x -> outputs`` of ``fn_model(x, training=False)`` compiled for ``backend``/``mode``."""
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(lambda x: fn_model(x, training=False), jit_compile=mode == "xla")
    if backend == "jax":
        import jax

        model = variables_of or fn_model

        @jax.jit
        def run(trainable, non_trainable, x):
            return model.stateless_call(trainable, non_trainable, x, training=False)[0]

        def call(x):
            return run(
                [v.value for v in model.trainable_variables],
                [v.value for v in model.non_trainable_variables],
                x,
            )

        return call
    import torch

    fn = (lambda x: fn_model(x, training=False)) if mode == "eager" else None
    if mode == "compile":
        fn = torch.compile(lambda x: fn_model(x, training=False))

    def call(x):
        with torch.no_grad():
            return fn(x)

    return call


def _convert(x, backend):
    if backend == "torch":
        import keras

        return keras.ops.convert_to_tensor(x)
    return x


def _build_ours(backend, mode, data_format, size):
    import keras

    from keras_retinanet import RetinaNet

    keras.utils.set_random_seed(0)
    model = RetinaNet(num_classes=NUM_CLASSES, backbone="resnet50", data_format=data_format)
    model.build(_images(1, size, data_format).shape)
    detector = model.make_detector()
    detector(_convert(_images(1, 64, data_format), backend))  # builds it (jax.jit needs that)
    forward = _compiled_call(model, backend, mode)
    if backend == "tensorflow":
        import tensorflow as tf

        # TensorFlow's NMS op has no XLA kernel: the network may be XLA-compiled, the
        # decoder runs in a graph next to it.
        decode = tf.function(lambda x, p: detector.decoder(x, p))
        predict = lambda x: decode(x, forward(x))  # noqa: E731
    elif backend == "jax":
        predict = _compiled_call(detector, backend, mode, variables_of=detector)
    else:
        predict = _compiled_call(detector, backend, "eager" if mode == "compile" else mode)
    # torch.compile of the whole Keras train step takes many minutes on a small CPU; the
    # compile mode times the compiled forward and an eager train step.
    model.compile(optimizer=keras.optimizers.SGD(0.01), jit_compile=mode in ("xla", "jit"))

    def train_step(x, y):
        return model.train_on_batch(x, y)

    return forward, predict, train_step


def _build_keras_hub(backend, mode, size):
    import _peers
    import keras

    keras.utils.set_random_seed(0)
    model, forward_model, make_batch = _peers.keras_hub_retinanet(
        num_classes=NUM_CLASSES, image_size=size
    )
    forward = _compiled_call(forward_model, backend, mode)
    x_train, y_train = make_batch(2, 0)

    def train_step(x, y):
        return model.train_on_batch(x_train, y_train)

    return forward, None, train_step


def _build_torchvision(size):
    import _peers

    model, forward, make_train_step = _peers.torchvision_retinanet(
        num_classes=NUM_CLASSES + 1, image_size=size
    )
    import torch

    def forward_call(x):
        with torch.no_grad():
            return forward(x)

    step = make_train_step(2, 0)
    return forward_call, None, lambda x, y: step()


#: forward b1 calls after the first one in the working-memory measurement.
WORKING_CALLS = 3


def _proc_status_kib(field):
    """``VmRSS`` / ``VmHWM`` (KiB) of this process from ``/proc/self/status``, or ``None``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss():
    """Resets this process's peak resident memory (``VmHWM``) to the current one (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def worker(spec):
    """Serves timing requests for one configuration: one JSON line in, one JSON line out."""
    name, backend, mode, data_format, implementation = spec["config"]
    size = spec["size"]
    sys.path.insert(0, HERE)
    sys.path.insert(0, ROOT)
    if spec.get("malloc", "keep") == "keep":
        # Before the framework's first operation: threads that have allocated keep their arena.
        from keras_retinanet.cpu_memory import keep_freed_memory

        keep_freed_memory()
    reply = {}
    start = time.perf_counter()
    try:
        if implementation == "ours":
            forward, predict, train_step = _build_ours(backend, mode, data_format, size)
        elif implementation == "keras_hub":
            forward, predict, train_step = _build_keras_hub(backend, mode, size)
        else:
            forward, predict, train_step = _build_torchvision(size)
    except Exception as error:  # a peer that cannot run here, or an unsupported mode
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        print(json.dumps({"unavailable": reason[:300]}), flush=True)
        return
    reply["build_s"] = time.perf_counter() - start
    layout = data_format if implementation != "keras_hub" else "channels_last"
    inputs = {
        "forward1": _convert(_images(1, size, layout), backend),
        "forward8": _convert(_images(8, size, layout), backend),
        "predict1": _convert(_images(1, size, layout), backend),
        "train2": (_images(2, size, layout), _targets(2, size)),
    }
    can_reset = _reset_peak_rss()
    built_kib = _proc_status_kib("VmRSS")
    start = time.perf_counter()
    _sync(forward(inputs["forward1"]))
    reply["first_call_s"] = time.perf_counter() - start
    for _ in range(WORKING_CALLS):
        _sync(forward(inputs["forward1"]))
    peak_kib = _proc_status_kib("VmHWM")
    if can_reset and built_kib is not None and peak_kib is not None:
        reply["working_mib"] = (peak_kib - built_kib) / 1024
    print(json.dumps(reply), flush=True)

    calls = {
        "forward1": lambda: _sync(forward(inputs["forward1"])),
        "forward8": lambda: _sync(forward(inputs["forward8"])),
        "predict1": None if predict is None else lambda: _sync(predict(inputs["predict1"])),
        "train2": lambda: _sync(train_step(*inputs["train2"])),
    }
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "quit":
            break
        call = calls.get(request["measure"])
        if call is None:
            print(json.dumps({"seconds": None}), flush=True)
            continue
        try:
            start = time.perf_counter()
            call()
            seconds = time.perf_counter() - start
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB on Linux
            print(json.dumps({"seconds": seconds, "peak_mib": peak}), flush=True)
        except Exception as error:
            calls[request["measure"]] = None
            message = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            print(json.dumps({"seconds": None, "error": message[:300]}), flush=True)


# --- driver -------------------------------------------------------------------------------


class Worker:
    def __init__(self, config, size, malloc="keep"):
        self.config = config
        env = dict(os.environ, KERAS_BACKEND=config[1], TF_CPP_MIN_LOG_LEVEL="2")
        if config[0].endswith(" plain"):
            env["KERAS_RETINANET_FAST_PATHS"] = "0"
        spec = json.dumps({"config": config, "size": size, "malloc": malloc})
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", spec],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        self.ready = self._read()

    def _read(self):
        while True:
            line = self.process.stdout.readline()
            if not line:
                return {"unavailable": "worker exited (see its stderr above)"}
            line = line.strip()
            if line.startswith("{"):
                return json.loads(line)

    def ask(self, measure):
        self.process.stdin.write(json.dumps({"op": "time", "measure": measure}) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self):
        if self.process.poll() is None:
            try:
                self.process.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.process.stdin.flush()
            except BrokenPipeError:
                pass
            self.process.wait(timeout=60)


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def schedule(num_workers, repeats, groups=MEASURE_GROUPS):
    """The timing order: ``(round, worker index, measure)`` triples, round 0 the warm-up.

    For each of ``groups`` (:data:`MEASURE_GROUPS`), ``repeats + 1`` rounds; in each round
    every worker times every measure of the group, its calls back to back. The worker order rotates
    every round (no configuration always runs right after the same neighbour, whose threads
    may still be winding down) and so does the measure order within a group (no measure always
    runs first).
    """
    for group in groups:
        for round_ in range(repeats + 1):
            shift, turn = round_ % max(num_workers, 1), round_ % len(group)
            order = list(range(num_workers))
            for index in order[shift:] + order[:shift]:
                for measure in group[turn:] + group[:turn]:
                    yield round_, index, measure
            print(f"{'+'.join(group)} round {round_} done", file=sys.stderr, flush=True)


def run_group(configs, size, repeats, need_first=False, malloc="keep", groups=MEASURE_GROUPS):
    """Starts one worker per configuration, then times each measure ``repeats`` times in the
    order of :func:`schedule` (after one untimed warm-up round, which also triggers each
    function's compile).
    With ``need_first``, returns at once (only the first row) when the first configuration
    cannot run."""
    results = []
    workers = []
    for index, config in enumerate(configs):
        print(f"starting {config[0]} ...", file=sys.stderr, flush=True)
        worker_ = Worker(config, size, malloc)
        if "unavailable" in worker_.ready:
            print(f"  unavailable: {worker_.ready['unavailable']}", file=sys.stderr)
            results.append({"config": config[0], "unavailable": worker_.ready["unavailable"]})
            worker_.close()
            if index == 0 and need_first:
                return results
            continue
        workers.append(worker_)
    samples = {w.config[0]: {m: [] for m in MEASURES} for w in workers}
    errors = {w.config[0]: {} for w in workers}
    peaks = {w.config[0]: 0.0 for w in workers}
    for round_, index, measure in schedule(len(workers), repeats, groups):
        w = workers[index]
        reply = w.ask(measure)
        if reply.get("error"):
            errors[w.config[0]][measure] = reply["error"]
        if round_ > 0:  # round 0 warms up; a failed call keeps its slot as None
            samples[w.config[0]][measure].append(reply.get("seconds"))
        peaks[w.config[0]] = max(peaks[w.config[0]], reply.get("peak_mib") or 0.0)
    for w in workers:
        name, backend, mode, data_format, implementation = w.config
        med = {m: _median(samples[name][m]) for m in MEASURES}
        results.append(
            {
                "config": name,
                "backend": backend,
                "mode": mode,
                "data_format": data_format,
                "implementation": implementation,
                "build_s": round(w.ready["build_s"], 2),
                "first_call_s": round(w.ready["first_call_s"], 2),
                "forward1_s": med["forward1"],
                "forward8_s": med["forward8"],
                "predict1_s": med["predict1"],
                "train2_img_per_s": None if med["train2"] is None else 2 / med["train2"],
                "peak_rss_mib": round(peaks[name]),
                "working_mib": _round_or_none(w.ready.get("working_mib")),
                "errors": errors[name],
                "repeats": repeats,
                # Seconds per timed round (None where a call failed), for paired ratios.
                "samples": {m: samples[name][m] for m in MEASURES},
            }
        )
        w.close()
    return results


def run(configs, size, repeats, reference, max_workers, malloc="keep", groups=MEASURE_GROUPS):
    """Runs the configurations in groups of at most ``max_workers`` resident workers (memory:
    each holds a ResNet50 and its compiled programs), every group with the ``reference``
    configuration in it, so each ratio compares two configurations timed interleaved.

    Returns ``(rows, reference)``: when the requested reference cannot run, the ratios are
    taken against ``FALLBACK_REFERENCE`` instead and its row says why the first could not.
    """
    ref = [c for c in CONFIGS if c[0] == reference]
    others = [c for c in configs if c[0] != reference]
    step = max(1, max_workers - len(ref))
    results = []
    for start in range(0, max(len(others), 1), step):
        group = run_group(
            ref + others[start : start + step],
            size,
            repeats,
            need_first=True,
            malloc=malloc,
            groups=groups,
        )
        ref_row = next((r for r in group if r["config"] == reference), None)
        if start == 0 and "unavailable" in group[0] and reference != FALLBACK_REFERENCE:
            print(
                f"reference {reference} cannot run; ratios use {FALLBACK_REFERENCE}",
                file=sys.stderr,
                flush=True,
            )
            rows, used = run(others, size, repeats, FALLBACK_REFERENCE, max_workers, malloc, groups)
            return group + rows, used
        for row in group:
            if row["config"] == reference and any(r["config"] == reference for r in results):
                continue  # reported once, from the first group
            keep = (
                "config",
                "forward1_s",
                "forward8_s",
                "train2_img_per_s",
                "working_mib",
                "samples",
            )
            usable = ref_row is not None and "unavailable" not in ref_row
            row["reference"] = {k: ref_row[k] for k in keep} if usable else None
            results.append(row)
    return results, reference


def _round_or_none(value):
    return None if value is None else round(value)


def _seconds(row, measure):
    """Median seconds of ``measure`` (``train2`` is stored as images per second)."""
    if measure == "train2":
        rate = row.get("train2_img_per_s")
        return 2 / rate if rate else None
    return row.get(f"{measure}_s")


def paired_ratio(row, other, measure, other_measure=None):
    """Time ratio ``row / other`` for ``measure`` (``other_measure`` for ``other``, default the
    same): the median over rounds of the per-round ratio when both rows kept their rounds
    (timed in one group, so round ``i`` of each ran back to back and shares the machine's
    state), else the ratio of the medians (results written before rounds were kept)."""
    other_measure = other_measure or measure
    mine = (row.get("samples") or {}).get(measure)
    theirs = (other.get("samples") or {}).get(other_measure)
    if mine and theirs and len(mine) == len(theirs):
        ratios = [a / b for a, b in zip(mine, theirs, strict=True) if a and b]
        if ratios:
            return statistics.median(ratios)
    a, b = _seconds(row, measure), _seconds(other, other_measure)
    return a / b if a and b else None


def _fmt(value, digits=2):
    return "—" if value is None else f"{value:.{digits}f}"


#: How each ``--malloc`` choice reads in the table's heading.
MALLOC_NOTES = {
    "keep": "every worker calls `keep_freed_memory()` (glibc keeps freed blocks for reuse)",
    "default": "glibc's default malloc settings",
}


def markdown(results, size, repeats, reference, malloc="keep"):
    """The results table plus the target ratios of the benchmark issue."""
    ok = [r for r in results if "unavailable" not in r]
    lines = [
        f"RetinaNet ResNet50, {NUM_CLASSES} classes, {size}x{size}; median of {repeats} "
        f"interleaved repeats; {platform.machine()}, {os.cpu_count()} CPUs; "
        f"{MALLOC_NOTES[malloc]}.",
        "",
        "| configuration | forward b1 s | forward b8 s | predict b1 s | predict / forward | "
        "train b2 img/s | first call s | peak RSS MiB | working MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in ok:
        ratio = paired_ratio(r, r, "predict1", "forward1")
        lines.append(
            f"| {r['config']} | {_fmt(r['forward1_s'])} | {_fmt(r['forward8_s'])} | "
            f"{_fmt(r['predict1_s'])} | {_fmt(ratio)} | {_fmt(r['train2_img_per_s'])} | "
            f"{_fmt(r['first_call_s'], 1)} | {r['peak_rss_mib']} | "
            f"{_fmt(r.get('working_mib'), 0)} |"
        )
    for r in results:
        if "unavailable" in r:
            lines.append(f"| {r['config']} | not run: {r['unavailable']} | | | | | | | |")
    errors = [(r["config"], m, e) for r in ok for m, e in r["errors"].items()]
    if errors:
        lines += ["", "Errors:"] + [f"- {c} {m}: {e}" for c, m, e in errors]
    if any(r.get("reference") for r in ok):
        lines += [
            "",
            f"Ratios against **{reference}**, timed in the same group of interleaved workers: "
            "the median over rounds of each round's time ratio (below 1 is faster than the "
            "reference):",
            "",
            "| configuration | forward b1 / ref | forward b8 / ref | train step / ref | "
            "working memory / ref |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in ok:
            ref = r.get("reference")
            if not ref:
                continue
            f1, f8, tr = (paired_ratio(r, ref, m) for m in ("forward1", "forward8", "train2"))
            mine, theirs = r.get("working_mib"), ref.get("working_mib")
            memory = mine / theirs if mine is not None and theirs else None
            lines.append(
                f"| {r['config']} | {_fmt(f1)} | {_fmt(f8)} | {_fmt(tr)} | {_fmt(memory)} |"
            )
    lines += targets(ok, reference)
    return "\n".join(lines) + "\n"


#: The speed targets of the benchmark issue: forward of every backend <= 1.1x torchvision's
#: RetinaNet forward, predict-with-decoding <= 1.1x the same configuration's forward, and the
#: JAX train step <= 1.0x torchvision's.
FORWARD_TARGET, PREDICT_TARGET, JAX_TRAIN_TARGET = 1.1, 1.1, 1.0


def targets(ok, reference):
    """Markdown lines checking each of our configurations against the speed targets (the
    torchvision ratios only when torchvision was the reference, i.e. timed alongside)."""
    lines = [
        "",
        "Targets (ratios as above; predict / forward within one configuration):",
        "",
        "| configuration | forward b1 / torchvision | forward b8 / torchvision | "
        "predict / forward | train / torchvision (JAX) |",
        "|---|---|---|---|---|",
    ]

    def check(value, limit):
        if value is None:
            return "—"
        return f"{value:.2f} {'met' if value <= limit else 'missed'} (≤ {limit})"

    for r in ok:
        if r["implementation"] != "ours":
            continue
        ref = r.get("reference") if reference == "torchvision" else None
        f1 = f8 = train = None
        if ref:
            f1, f8 = paired_ratio(r, ref, "forward1"), paired_ratio(r, ref, "forward8")
            if r["backend"] == "jax":
                train = paired_ratio(r, ref, "train2")
        predict = paired_ratio(r, r, "predict1", "forward1")
        lines.append(
            f"| {r['config']} | {check(f1, FORWARD_TARGET)} | {check(f8, FORWARD_TARGET)} | "
            f"{check(predict, PREDICT_TARGET)} | {check(train, JAX_TRAIN_TARGET)} |"
        )
    if reference != "torchvision":
        lines += [
            "",
            f"torchvision could not run, so its ratios are not shown ({reference} "
            "was the reference).",
        ]
    return lines


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if "unavailable" not in r]
    names = [r["config"] for r in ok]
    fig, axes = plt.subplots(1, 3, figsize=(15, 0.45 * len(names) + 1.5), sharey=True)
    panels = [
        ("forward b1 (s)", "forward1_s"),
        ("predict b1 (s)", "predict1_s"),
        ("train b2 (images/s)", "train2_img_per_s"),
    ]
    for ax, (title, key) in zip(axes, panels, strict=True):
        values = [r[key] or 0.0 for r in ok]
        colours = ["tab:orange" if r["implementation"] != "ours" else "tab:blue" for r in ok]
        ax.barh(names, values, color=colours)
        ax.set_title(title)
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("keras_retinanet (blue) and peers (orange), lower is better except train")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="128 px, one repeat (smoke run)")
    parser.add_argument("--size", type=int, default=None, help="image size (512)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (5)")
    parser.add_argument("--only", nargs="*", help="configurations whose name contains these")
    parser.add_argument(
        "--reference",
        default="torchvision",
        help="configuration the ratios compare with (default: torchvision's RetinaNet, the "
        "peer the speed targets name); when it cannot run, the ratios use 'torch eager NCHW'",
    )
    parser.add_argument(
        "--no-train",
        action="store_true",
        help="time forward and predict only (the train step takes most of a full run)",
    )
    parser.add_argument("--max-workers", type=int, default=4, help="resident workers (memory)")
    parser.add_argument(
        "--malloc",
        choices=sorted(MALLOC_NOTES),
        default="keep",
        help="keep: every worker calls keras_retinanet.keep_freed_memory() first (default); "
        "default: glibc's own settings",
    )
    parser.add_argument(
        "--render",
        action="store_true",
        help="only rewrite model.md and model.png from an existing model.json",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker))
    out = os.environ.get("BENCHMARK_OUTPUT_DIR", os.path.join(HERE, "results"))
    if args.render:
        with open(os.path.join(out, "model.json")) as f:
            saved = json.load(f)
        return _write(
            out,
            saved["results"],
            saved["size"],
            saved["repeats"],
            saved["reference"],
            saved.get("malloc", "default"),
        )
    size = args.size or (128 if args.quick else 512)
    repeats = args.repeats or (1 if args.quick else 5)
    configs = [c for c in CONFIGS if not args.only or any(s in c[0] for s in args.only)]
    if not any(c[0] == args.reference for c in CONFIGS):
        parser.error(f"--reference must name a configuration, got {args.reference!r}")
    groups = [g for g in MEASURE_GROUPS if not (args.no_train and "train2" in g)]
    results, reference = run(
        configs, size, repeats, args.reference, args.max_workers, args.malloc, groups
    )
    return _write(out, results, size, repeats, reference, args.malloc)


def _write(out, results, size, repeats, reference, malloc):
    """Prints the table and writes ``model.json``, ``model.md`` and ``model.png`` to ``out``."""
    table = markdown(results, size, repeats, reference, malloc)
    print(table)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "model.json"), "w") as f:
        json.dump(
            {
                "size": size,
                "repeats": repeats,
                "reference": reference,
                "malloc": malloc,
                "results": results,
            },
            f,
            indent=2,
        )
    with open(os.path.join(out, "model.md"), "w") as f:
        f.write(table)
    plot(results, os.path.join(out, "model.png"))
    print(f"wrote {out}/model.json, model.md, model.png")
    return results


if __name__ == "__main__":
    main()
