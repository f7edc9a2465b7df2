"""Benchmark: the exported detector (NMS inside) against ``detector.predict``, per backend.

Each backend runs in its own worker process (``KERAS_BACKEND`` set), one after the other:

* ``tensorflow``: ``detector.export(path, format="tf_saved_model")``, run with
  ``tf.saved_model.load(path).serve``.
* ``jax``: the same SavedModel format through jax2tf (``image_size`` fixed at export;
  TensorFlow must be importable in the JAX process).
* ``torch``: ``detector.export(path, format="onnx", image_size=...)``, run with onnxruntime's
  ``CPUExecutionProvider``.

A worker builds ``RetinaNet`` (random weights, the class logits spread by
:func:`spread_class_logits` so that NMS has a few thousand candidates), times the export,
loads the artifact, makes one untimed warm-up call of each, then alternates
``detector.predict(x, verbose=0)`` and the artifact on the same batch of 1 image (A/B, the
order swapped every round) and reports the medians; ``artifact / predict`` is the median of
the per-round ratios. The artifact's detections are compared with ``predict``'s: same
``num_detections`` and classes, boxes within 1e-2 px, scores within 1e-4. A backend that
cannot be imported gives a row saying so.

Usage: ``python benchmarks/export.py [--quick] [--size N] [--repeats N] [--only BACKEND ...]
[--confidence-threshold T] [--logit-std S]``; results go to ``$BENCHMARK_OUTPUT_DIR`` (default
``benchmarks/results``) as ``export.json`` and ``export.md``.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import _worker_process  # noqa: E402 - the sibling module, found through HERE

#: ``(backend, format, runtime)``, one worker each.
BACKENDS = [
    ("tensorflow", "tf_saved_model", "SavedModel (tf.saved_model.load)"),
    ("jax", "tf_saved_model", "SavedModel via jax2tf (tf.saved_model.load)"),
    ("torch", "onnx", "ONNX (onnxruntime CPU)"),
]
NUM_CLASSES = 80
#: Tolerances of the detections check.
BOX_ATOL, SCORE_ATOL = 1e-2, 1e-4
#: Prefix of the worker's result line on stdout (export and frameworks may print too).
RESULT = "EXPORT-BENCH-RESULT "


# --- worker -------------------------------------------------------------------------------


def _images(size, seed=0):
    """One caffe-range image (``preprocess_input`` output spans about -124..152)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.uniform(-120.0, 150.0, (1, size, size, 3)).astype("float32")


def spread_class_logits(model, x, logit_std):
    """Builds ``model`` on ``x`` and scales its class head's last kernel so the class logits
    on ``x`` have standard deviation ``logit_std`` around the prior bias: random weights
    otherwise give every score ~0.01, below the 0.05 threshold (no detections, nothing for
    NMS to do). ``0`` keeps the initialisation."""
    import keras

    logits = keras.ops.convert_to_numpy(model(x))[..., 4:]
    if logit_std > 0:
        kernel = model.cls_head.output_conv.kernel
        scale = logit_std / max(float(logits.std()), 1e-12)
        kernel.assign(keras.ops.convert_to_numpy(kernel) * scale)


def _numpy_detections(out):
    import numpy as np

    return {k: np.asarray(out[k]) for k in ("boxes", "scores", "classes", "num_detections")}


def compare(a, b):
    """``(equal, reason)``: ``a`` (artifact) against ``b`` (predict), valid rows only."""
    import numpy as np

    n_a, n_b = a["num_detections"].astype(int), b["num_detections"].astype(int)
    if not np.array_equal(n_a, n_b):
        return False, f"num_detections {n_a.tolist()} vs {n_b.tolist()}"
    worst_box = worst_score = 0.0
    for i, n in enumerate(n_b):
        if not np.array_equal(a["classes"][i, :n].astype(int), b["classes"][i, :n].astype(int)):
            return False, f"classes differ in image {i}"
        if n:
            worst_box = max(worst_box, float(np.abs(a["boxes"][i, :n] - b["boxes"][i, :n]).max()))
            worst_score = max(
                worst_score, float(np.abs(a["scores"][i, :n] - b["scores"][i, :n]).max())
            )
    ok = worst_box <= BOX_ATOL and worst_score <= SCORE_ATOL
    return ok, f"max box diff {worst_box:.2g} px, max score diff {worst_score:.2g}"


def _load_artifact(backend, format, path):
    """``x (numpy) -> numpy detections dict`` running the written artifact."""
    if format == "tf_saved_model":
        import tensorflow as tf

        loaded = tf.saved_model.load(path)

        def run(x):
            # ``loaded`` is closed over: the concrete function needs its object alive.
            out = loaded.serve(tf.constant(x))
            return {k: v.numpy() for k, v in out.items()}

        return run
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    output_names = [o.name for o in session.get_outputs()]

    def run(x):
        return dict(zip(output_names, session.run(None, {input_name: x}), strict=True))

    return run


def worker(spec):
    """Builds, exports, checks and times one backend; prints one result line."""
    backend, format = spec["backend"], spec["format"]
    size, repeats, quick = spec["size"], spec["repeats"], spec["quick"]
    sys.path.insert(0, ROOT)
    result = {}
    workdir = tempfile.mkdtemp(prefix=f"export-bench-{backend}-")
    try:
        try:
            if backend == "jax":
                import tensorflow  # noqa: F401  (jax2tf needs it)
            import keras

            from keras_retinanet import RetinaNet

            if format == "onnx":
                import onnxruntime  # noqa: F401
        except Exception as error:
            result["unavailable"] = f"{type(error).__name__}: {error}".splitlines()[0][:300]
            print(RESULT + json.dumps(result), flush=True)
            return
        keras.utils.set_random_seed(0)
        if quick:
            model = RetinaNet(NUM_CLASSES, backbone="compact", fpn_filters=64, head_convs=2)
        else:
            model = RetinaNet(NUM_CLASSES)
        x = _images(size)
        spread_class_logits(model, x, spec["logit_std"])
        detector = model.make_detector(confidence_threshold=spec["confidence_threshold"])
        path = os.path.join(workdir, "detector.onnx" if format == "onnx" else "saved_model")
        image_size = None if backend == "tensorflow" else (size, size)
        start = time.perf_counter()
        detector.export(path, format=format, image_size=image_size, verbose=False)
        result["export_s"] = time.perf_counter() - start
        artifact = _load_artifact(backend, format, path)

        def predict():
            return _numpy_detections(detector.predict(x, verbose=0))

        expected = predict()  # warm-up (predict's function is traced here)
        got = artifact(x)  # warm-up
        result["num_detections"] = int(expected["num_detections"][0])
        result["artifact_num_detections"] = int(got["num_detections"][0])
        result["same"], result["check"] = compare(got, expected)
        samples = {"predict": [], "artifact": []}
        calls = {"predict": predict, "artifact": lambda: artifact(x)}
        for round_ in range(repeats):
            order = ["predict", "artifact"] if round_ % 2 == 0 else ["artifact", "predict"]
            for name in order:
                start = time.perf_counter()
                calls[name]()
                samples[name].append(time.perf_counter() - start)
        result["samples"] = samples
    except Exception as error:
        message = str(error).splitlines()[0] if str(error) else ""
        result["error"] = f"{type(error).__name__}: {message}"[:300]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(RESULT + json.dumps(result), flush=True)


# --- driver -------------------------------------------------------------------------------


def run_worker(backend, format, size, repeats, quick, confidence_threshold, logit_std, timeout):
    spec = dict(
        backend=backend,
        format=format,
        size=size,
        repeats=repeats,
        quick=quick,
        confidence_threshold=confidence_threshold,
        logit_std=logit_std,
    )
    return _worker_process.run_worker(
        __file__, ["--worker", json.dumps(spec)], backend, RESULT, timeout, ROOT
    )


def summarise(backend, runtime, raw, size, repeats):
    row = dict(backend=backend, artifact=runtime, size=size, repeats=repeats, **raw)
    samples = raw.get("samples")
    if samples:
        predict, artifact = samples["predict"], samples["artifact"]
        row["predict_ms"] = 1e3 * statistics.median(predict)
        row["artifact_ms"] = 1e3 * statistics.median(artifact)
        row["ratio"] = statistics.median(a / p for a, p in zip(artifact, predict, strict=True))
    return row


def _fmt(value, digits=2):
    return "—" if value is None else f"{value:.{digits}f}"


def markdown(rows, size, repeats, quick, confidence_threshold, logit_std):
    model = "compact backbone, 64 FPN filters, 2 head convs (--quick)" if quick else "ResNet50"
    lines = [
        f"RetinaNet {model}, {NUM_CLASSES} classes, random weights (class logits spread to "
        f"std {logit_std}), confidence threshold {confidence_threshold}; "
        f"1 image {size}x{size} (uniform caffe-range noise); median of "
        f"{repeats} interleaved repeats (predict / artifact alternating, after one warm-up "
        f"call each); {platform.machine()}, {os.cpu_count()} CPUs. Same detections: equal "
        f"num_detections and classes, boxes within {BOX_ATOL} px, scores within {SCORE_ATOL}.",
        "",
        "| backend | artifact | export s | predict ms | artifact ms | artifact / predict | "
        "detections | same detections |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if "unavailable" in r:
            lines.append(f"| {r['backend']} | not run: {r['unavailable']} | | | | | | |")
            continue
        if "samples" not in r:
            lines.append(f"| {r['backend']} | {r['artifact']} | error: {r['error']} | | | | | |")
            continue
        detections = str(r["num_detections"])
        if r["artifact_num_detections"] != r["num_detections"]:
            detections += f" (artifact {r['artifact_num_detections']})"
        same = "yes" if r["same"] else "no"
        lines.append(
            f"| {r['backend']} | {r['artifact']} | {_fmt(r['export_s'], 1)} | "
            f"{_fmt(r['predict_ms'], 1)} | {_fmt(r['artifact_ms'], 1)} | {_fmt(r['ratio'])} | "
            f"{detections} | {same} ({r['check']}) |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="compact model, 128 px, 3 repeats (smoke run)"
    )
    parser.add_argument("--size", type=int, default=None, help="image size (512)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (7)")
    parser.add_argument("--only", nargs="*", help="backends to run (tensorflow, jax, torch)")
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.05,
        help="the detector's score threshold (keras.io's 0.05; lower it for more detections "
        "from random weights)",
    )
    parser.add_argument(
        "--logit-std",
        type=float,
        default=0.5,
        help="spread of the random class logits (see spread_class_logits; 0.5 gives a few "
        "thousand candidates above 0.05 at 512 px, 0 keeps the initialisation: no detections)",
    )
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per worker")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker))
    size = args.size or (128 if args.quick else 512)
    repeats = args.repeats or (3 if args.quick else 7)
    out = os.environ.get("BENCHMARK_OUTPUT_DIR", os.path.join(HERE, "results"))
    rows = []
    for backend, format, runtime in BACKENDS:
        if args.only and backend not in args.only:
            continue
        print(f"{backend}: exporting and timing ...", file=sys.stderr, flush=True)
        raw = run_worker(
            backend,
            format,
            size,
            repeats,
            args.quick,
            args.confidence_threshold,
            args.logit_std,
            args.timeout,
        )
        rows.append(summarise(backend, runtime, raw, size, repeats))
    table = markdown(rows, size, repeats, args.quick, args.confidence_threshold, args.logit_std)
    print(table)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "export.json"), "w") as f:
        json.dump(
            {
                "size": size,
                "repeats": repeats,
                "quick": args.quick,
                "confidence_threshold": args.confidence_threshold,
                "logit_std": args.logit_std,
                "results": rows,
            },
            f,
            indent=2,
        )
    with open(os.path.join(out, "export.md"), "w") as f:
        f.write(table)
    print(f"wrote {out}/export.json, export.md", file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()
