"""Benchmark: ``combined_non_max_suppression`` (JAX, PyTorch) against TensorFlow's native op.

Every implementation gets identical inputs; timings are medians over interleaved repeats
(TF, JAX, PyTorch, TF, JAX, ...). JAX is timed under ``jax.jit`` after compilation (the
compile time is reported separately). Each output is also checked against TensorFlow.

Workloads (keras.io decoder settings: 100 per class, 100 in total, IoU 0.5, score 0.05,
``clip_boxes=False``, shared boxes ``q = 1``):

* ``keras.io 800x1216``: 1 image, 182,403 anchors x 80 classes, a few thousand candidates.
* ``batch 8 512x512``: 8 images, 49,104 anchors x 80 classes.
* ``stress``: 1 image, 182,403 x 80 with about 10^5 candidates above the threshold.

Usage: ``python benchmarks/nms.py [--quick] [--json PATH]``.
"""

import argparse
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

SETTINGS = dict(
    max_output_size_per_class=100,
    max_total_size=100,
    iou_threshold=0.5,
    score_threshold=0.05,
    clip_boxes=False,
)


def anchor_corners(height, width):
    """RetinaNet anchors (strides 8..128, 9 per location) as ``[A, 4]`` pixel corners."""
    levels = []
    for level in range(5):
        stride, area = 8 * 2**level, (32.0 * 2**level) ** 2
        grid_h, grid_w = math.ceil(height / stride), math.ceil(width / stride)
        dims = []
        for ratio in (0.5, 1.0, 2.0):
            h = math.sqrt(area / ratio)
            for scale in (1.0, 2 ** (1 / 3), 2 ** (2 / 3)):
                dims.append((area / h * scale, h * scale))
        ys, xs = np.meshgrid(
            (np.arange(grid_h) + 0.5) * stride, (np.arange(grid_w) + 0.5) * stride, indexing="ij"
        )
        centre = np.stack([xs, ys], -1)[:, :, None, :].repeat(9, axis=2)
        size = np.broadcast_to(np.asarray(dims), (grid_h, grid_w, 9, 2))
        levels.append(np.concatenate([centre - size / 2, centre + size / 2], -1).reshape(-1, 4))
    return np.concatenate(levels).astype(np.float32)


def workload(seed, batch, height, width, num_classes=80, objects=8, background_logit=-7.0):
    """Detector-like outputs: jittered anchors as boxes, sigmoid scores that are tiny except
    around a few objects (high for the object's class, lower for a few confusable ones)."""
    rng = np.random.default_rng(seed)
    anchors = anchor_corners(height, width)
    n = len(anchors)
    boxes = np.empty((batch, n, 1, 4), np.float32)
    scores = np.empty((batch, n, num_classes), np.float32)
    area = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
    for b in range(batch):
        boxes[b, :, 0] = anchors + rng.normal(0.0, 4.0, anchors.shape).astype(np.float32)
        logits = rng.normal(background_logit, 1.0, (n, num_classes)).astype(np.float32)
        s = 1.0 / (1.0 + np.exp(-logits))
        for _ in range(objects):
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            w, h = rng.uniform(30, 400, 2)
            lo = np.maximum(anchors[:, :2], [cx - w / 2, cy - h / 2])
            hi = np.minimum(anchors[:, 2:], [cx + w / 2, cy + h / 2])
            inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
            iou = inter / (area + w * h - inter)
            near = iou > 0.3
            for c, high in [(rng.integers(num_classes), 1.0)] + [
                (c, 0.3) for c in rng.integers(num_classes, size=3)
            ]:
                boost = iou[near] * rng.uniform(high / 2, high, near.sum())
                s[near, c] = np.maximum(s[near, c], boost)
        scores[b] = s
    return boxes, scores


WORKLOADS = {
    "keras.io 800x1216": dict(seed=0, batch=1, height=800, width=1216),
    "batch 8 512x512": dict(seed=1, batch=8, height=512, width=512),
    "stress ~1e5 cand.": dict(seed=2, batch=1, height=800, width=1216, background_logit=-5.4),
}


def _median_ms(samples):
    return 1e3 * statistics.median(samples)


def make_runners(boxes, scores):
    """``{name: (setup_seconds, run)}``: ``run()`` returns NumPy outputs, device-synchronised."""
    runners = {}
    if importlib.util.find_spec("tensorflow"):
        import tensorflow as tf

        from keras_retinanet.nms import _tensorflow

        tb, ts = tf.constant(boxes), tf.constant(scores)

        def run_tf():
            out = _tensorflow.combined_non_max_suppression(tb, ts, **SETTINGS)
            return [x.numpy() for x in out]

        runners["tensorflow"] = (0.0, run_tf)
    if importlib.util.find_spec("jax"):
        import jax

        from keras_retinanet.nms import _jax

        jb, js = jax.device_put(boxes), jax.device_put(scores)
        fn = jax.jit(lambda b, s: _jax.combined_non_max_suppression(b, s, **SETTINGS))
        start = time.perf_counter()
        jax.block_until_ready(fn(jb, js))
        compile_s = time.perf_counter() - start

        def run_jax():
            return [np.asarray(x) for x in jax.block_until_ready(fn(jb, js))]

        runners["jax"] = (compile_s, run_jax)
    if importlib.util.find_spec("torch"):
        import torch

        from keras_retinanet.nms import _torch

        pb, ps = torch.from_numpy(boxes), torch.from_numpy(scores)

        def run_torch():
            with torch.no_grad():
                return [x.numpy() for x in _torch.combined_non_max_suppression(pb, ps, **SETTINGS)]

        runners["torch"] = (0.0, run_torch)
    return runners


def same(a, b):
    return (
        np.array_equal(a[3], b[3])
        and np.array_equal(a[2], b[2])
        and np.allclose(a[0], b[0], rtol=0, atol=1e-6 * max(1.0, np.abs(b[0]).max()))
        and np.allclose(a[1], b[1], rtol=0, atol=1e-6)
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else 9
    results = []
    for name, spec in WORKLOADS.items():
        boxes, scores = workload(**spec)
        candidates = int((scores > SETTINGS["score_threshold"]).sum()) / len(scores)
        runners = make_runners(boxes, scores)
        if "tensorflow" not in runners:
            sys.exit("TensorFlow is required as the baseline")
        outputs = {impl: run() for impl, (_, run) in runners.items()}  # warm-up
        samples = {impl: [] for impl in runners}
        for _ in range(repeats):
            for impl, (_, run) in runners.items():
                start = time.perf_counter()
                run()
                samples[impl].append(time.perf_counter() - start)
        tf_ms = _median_ms(samples["tensorflow"])
        for impl, (setup_s, _) in runners.items():
            ms = _median_ms(samples[impl])
            results.append(
                dict(
                    workload=name,
                    shape=list(scores.shape),
                    candidates_per_image=candidates,
                    implementation=impl,
                    median_ms=round(ms, 3),
                    ratio_to_tf=round(ms / tf_ms, 3),
                    compile_s=round(setup_s, 3) if impl == "jax" else None,
                    identical_to_tf=same(outputs[impl], outputs["tensorflow"]),
                    repeats=repeats,
                )
            )
    header = (
        f"{'workload':<20} {'B x N x C':<16} {'cand/img':>9} {'impl':<11} {'median ms':>10} "
        f"{'x TF':>6} {'compile s':>10} {'same as TF':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        compile_s = "" if r["compile_s"] is None else f"{r['compile_s']:.2f}"
        shape = "x".join(str(d) for d in r["shape"])
        print(
            f"{r['workload']:<20} {shape:<16} {r['candidates_per_image']:>9.0f} "
            f"{r['implementation']:<11} {r['median_ms']:>10.2f} {r['ratio_to_tf']:>6.2f} "
            f"{compile_s:>10} {str(r['identical_to_tf']):>10}"
        )
    print(
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{repeats} interleaved repeats)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    out = os.environ.get("BENCHMARK_OUTPUT_DIR")
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "nms.json"), "w") as f:
            json.dump(results, f, indent=2)
        with open(os.path.join(out, "nms.md"), "w") as f:
            f.write(markdown(results, repeats))
    return results


def markdown(results, repeats):
    """The results as a Markdown table (for BENCHMARKS.md)."""
    lines = [
        f"Median of {repeats} interleaved repeats; {platform.machine()}, {os.cpu_count()} CPUs.",
        "",
        "| workload | B x N x C | candidates / image | implementation | median ms | x TF | "
        "compile s | same as TF |",
        "|---|---|---:|---|---:|---:|---:|---|",
    ]
    for r in results:
        compile_s = "" if r["compile_s"] is None else f"{r['compile_s']:.2f}"
        shape = "x".join(str(d) for d in r["shape"])
        lines.append(
            f"| {r['workload']} | {shape} | {r['candidates_per_image']:.0f} | "
            f"{r['implementation']} | {r['median_ms']:.2f} | {r['ratio_to_tf']:.2f} | "
            f"{compile_s} | {r['identical_to_tf']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
