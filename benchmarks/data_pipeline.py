"""Benchmark: the input pipeline alone (decode, augment, encode) next to the train step.

Can the loader keep ``N`` devices busy? The data are a local COCO-format folder of synthetic,
COCO-sized JPEGs (640x480 and 480x640 mixed, quality 90, about COCO's file size, 3-15 random
boxes each; written with Pillow to a temporary folder, seeded, nothing downloaded).

* **Pipeline alone** (one worker process, ``KERAS_BACKEND=numpy`` by default: no framework
  shares the cores): :class:`~keras_retinanet.data.DetectionDataset` with the keras.io recipe
  (``training=True``, flips, ``jitter=KERAS_IO_JITTER`` = short side 640..1024, ``max_side``
  1333, padding to a multiple of 128, caffe normalisation), 2 images per device, so a global
  batch of ``2 N`` for ``N`` devices. One epoch is read the way ``model.fit`` reads it
  (Keras' ``PyDatasetAdapter``: ``workers=1`` without multiprocessing reads in the calling
  thread, otherwise an ordered pool of threads or processes fills a queue of
  ``max_queue_size`` batches), for 1, 2 and 4 workers, threads and processes, repeated in an
  order that rotates every round; images/s is the median over rounds of images / seconds for
  the whole epoch (pool start-up included).
* **Stage breakdown** (one worker, serial, the same batches): JPEG decode (Pillow), flip +
  resize + pad (``preprocess_for_training``), batch stacking, normalisation and label encoding
  (``LabelEncoder.encode`` with the default paper anchors on each padded batch, in NumPy: the
  Keras numpy backend), in ms per image.
* **Train step** (one worker process per backend, one after the other): RetinaNet ResNet50
  (random weights, no download), 80 classes, one fixed input size (:data:`TRAIN_SIZE`,
  512x704 by default: half the sides of the recipe's largest padded batch), batch 2, SGD with
  momentum, ``model.compile``'s defaults (``jit_compile="auto"``), ``train_on_batch``; label
  encoding happens inside the model's train step (``RetinaNet.compute_loss``), so the train
  figure already includes it. images/s = 2 / median step time after warm-up steps. The same
  worker times ``LabelEncoder.encode`` eagerly on the backend, on the pipeline's own batch
  targets and padded shapes (the encode column).

Verdict for ``N`` devices: the loader keeps up when its images/s at global batch ``2 N`` is at
least ``N x`` one device's train images/s (perfect scaling: the optimistic assumption).

Usage: ``python benchmarks/data_pipeline.py [--quick] [--size H W] [--repeats N]
[--only BACKEND ...] [--images N] [--steps N] [--malloc keep|default]``; results go to
``$BENCHMARK_OUTPUT_DIR`` (default ``benchmarks/results``) as ``data_pipeline.json`` and
``data_pipeline.md``.
``--render`` rewrites the table from an existing ``data_pipeline.json``.
"""

import argparse
import importlib.util
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import _worker_process  # noqa: E402 - the sibling module, found through HERE

BACKENDS = ("tensorflow", "jax", "torch")
NUM_CLASSES = 80
#: Images per device; ``DEVICES`` gives the global batches ``2 N`` timed.
PER_DEVICE_BATCH = 2
DEVICES = (1, 2)
WORKER_COUNTS = (1, 2, 4)
#: ``(mode name, use_multiprocessing)``.
MODES = (("threads", False), ("processes", True))
#: The recipe's resize options (keras.io: short side jittered in 640..1024, long side at most
#: 1333, padding to a multiple of 128); ``jitter`` is filled in from KERAS_IO_JITTER.
MAX_SIDE, STRIDE = 1333, 128
#: Largest padded size the recipe gives (short side < 1024, long side <= 1333 -> 1408). A
#: ResNet50 train step at batch 2 took 9.3 GB peak RSS at 640x896 on PyTorch (CPU), so about
#: 20 GB at that size; the default train size halves its sides (same aspect ratio; 3.8, 7.1 and
#: 6.5 GB peak on TensorFlow, JAX and PyTorch). ``--size 1024 1408`` times the full size.
RECIPE_SIZE = (1024, 1408)
TRAIN_SIZE = (512, 704)
QUICK_SIZE = (384, 384)
#: Synthetic images: (height, width) alternated, JPEG quality, boxes per image.
IMAGE_SHAPES = ((480, 640), (640, 480))
JPEG_QUALITY = 90
MIN_BOXES, MAX_BOXES = 3, 15
#: Prefix of a worker's result line on stdout (frameworks may print too).
RESULT = "DATA-PIPELINE-BENCH-RESULT "


# --- data ---------------------------------------------------------------------------------


def synthetic_image(rng, height, width):
    """uint8 ``[height, width, 3]`` pixels with structure at several scales plus fine noise:
    JPEG-compresses to roughly a COCO photo's size (~140 KB at 640x480, quality 90), where
    plain noise would give files several times larger and slower to decode."""
    import numpy as np
    from PIL import Image

    image = np.zeros((height, width, 3), "float32")
    for cell, amplitude in ((160, 60.0), (40, 35.0), (10, 22.0), (2, 22.0)):
        small = rng.normal(0.0, amplitude, (max(2, height // cell), max(2, width // cell), 3))
        small = small.astype("float32")
        channels = [
            np.asarray(Image.fromarray(small[..., c]).resize((width, height), Image.BICUBIC))
            for c in range(3)
        ]
        image += np.stack(channels, axis=-1)
    image += rng.normal(0.0, 5.0, image.shape).astype("float32")
    image += rng.uniform(60.0, 180.0, 3).astype("float32")
    return np.clip(image, 0, 255).astype("uint8")


def random_boxes(rng, height, width, count):
    """``[count, 4]`` xyxy boxes inside the image, 5%..60% of each side."""
    import numpy as np

    size = rng.uniform(0.05, 0.6, (count, 2)) * [width, height]
    corner = rng.uniform(0.0, 1.0, (count, 2)) * ([width, height] - size)
    return np.concatenate([corner, corner + size], axis=-1).astype("float32")


def make_coco_folder(root, num_images=64, seed=0, shapes=IMAGE_SHAPES, quality=JPEG_QUALITY):
    """Writes ``num_images`` synthetic JPEGs and ``annotations.json`` (COCO format, 80
    categories) under ``root``; returns ``(annotation_file, image_dir, stats)``."""
    import numpy as np
    from PIL import Image

    from keras_retinanet.data import write_coco

    rng = np.random.default_rng(seed)
    image_dir = os.path.join(root, "images")
    os.makedirs(image_dir, exist_ok=True)
    records, sizes, boxes_per_image = [], [], []
    for i in range(num_images):
        height, width = shapes[i % len(shapes)]
        name = f"{i:06d}.jpg"
        path = os.path.join(image_dir, name)
        Image.fromarray(synthetic_image(rng, height, width)).save(path, "JPEG", quality=quality)
        sizes.append(os.path.getsize(path))
        count = int(rng.integers(MIN_BOXES, MAX_BOXES + 1))
        boxes_per_image.append(count)
        records.append(
            {
                "file_name": name,
                "height": height,
                "width": width,
                "boxes": random_boxes(rng, height, width, count),
                "classes": rng.integers(0, NUM_CLASSES, count),
            }
        )
    annotations = write_coco(
        os.path.join(root, "annotations.json"),
        records,
        [f"class_{c}" for c in range(NUM_CLASSES)],
        description=f"data_pipeline benchmark, synthetic, seed {seed}",
    )
    stats = {
        "images": num_images,
        "shapes": [list(s) for s in shapes],
        "jpeg_quality": quality,
        "mean_file_kb": float(np.mean(sizes)) / 1024,
        "mean_boxes": float(np.mean(boxes_per_image)),
    }
    return annotations, image_dir, stats


def recipe_dataset(dataset, batch_size, *, workers=1, use_multiprocessing=False, seed=0):
    """``DetectionDataset`` with the keras.io training recipe (flips, jitter 640..1024, long
    side <= 1333, padding to a multiple of 128, caffe normalisation)."""
    from keras_retinanet.data import KERAS_IO_JITTER, DetectionDataset

    return DetectionDataset(
        dataset,
        batch_size=batch_size,
        training=True,
        seed=seed,
        jitter=KERAS_IO_JITTER,
        max_side=MAX_SIDE,
        stride=STRIDE,
        flip=True,
        workers=workers,
        use_multiprocessing=use_multiprocessing,
    )


# --- pipeline alone -----------------------------------------------------------------------


def _epoch_batches(dataset):
    """An iterator over one epoch of ``dataset``, read as ``model.fit`` reads it (Keras'
    ``PyDatasetAdapter``, whose enqueuer runs the thread or process pool and is stopped when
    the epoch ends); a plain ordered pool where that private class is missing."""
    try:
        from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter
    except ImportError:  # pragma: no cover - another Keras layout
        PyDatasetAdapter = None
    if PyDatasetAdapter is not None:
        adapter = PyDatasetAdapter(dataset, shuffle=False)
        adapter.on_epoch_begin()

        def batches():
            try:
                yield from adapter.get_numpy_iterator()
            finally:
                adapter.on_epoch_end()

        return batches()
    import multiprocessing.pool

    def fallback():
        if dataset.workers <= 1 and not dataset.use_multiprocessing:
            for i in range(len(dataset)):
                yield dataset[i]
            return
        pool_class = multiprocessing.Pool if dataset.use_multiprocessing else None
        pool_class = pool_class or multiprocessing.pool.ThreadPool
        with pool_class(dataset.workers) as pool:
            yield from pool.imap(dataset.__getitem__, range(len(dataset)))

    return fallback()


def time_epoch(dataset):
    """Reads one epoch; returns images, seconds (pool start-up and shut-down included),
    seconds to the first batch and the padded ``(H, W)`` of every batch."""
    start = time.perf_counter()
    first, images, shapes = None, 0, []
    for x, _ in _epoch_batches(dataset):
        if first is None:
            first = time.perf_counter() - start
        images += len(x)
        shapes.append([int(x.shape[1]), int(x.shape[2])])
    seconds = time.perf_counter() - start
    return {"images": images, "seconds": seconds, "first_batch_s": first, "shapes": shapes}


def pipeline_configs(devices=DEVICES, worker_counts=WORKER_COUNTS, modes=MODES):
    """``(devices, global batch, mode, workers, use_multiprocessing)`` of every timed run."""
    return [
        (n, PER_DEVICE_BATCH * n, mode, workers, multi)
        for n in devices
        for mode, multi in modes
        for workers in worker_counts
    ]


def measure_pipeline(records, repeats, configs=None, seed=0, log=True):
    """Times one epoch of every configuration ``repeats`` times, round-robin in an order that
    rotates every round, after one untimed epoch of the first (page cache, imports). Returns
    one row per configuration with the median images/s."""
    configs = configs or pipeline_configs()
    samples = {c: [] for c in configs}
    details = {}
    time_epoch(recipe_dataset(records, configs[0][1], seed=seed))  # warm-up
    for round_ in range(repeats):
        shift = round_ % len(configs)
        for config in configs[shift:] + configs[:shift]:
            devices, batch, mode, workers, multi = config
            data = recipe_dataset(
                records, batch, workers=workers, use_multiprocessing=multi, seed=seed
            )
            run = time_epoch(data)
            samples[config].append(run["images"] / run["seconds"])
            details.setdefault(config, run)
        if log:
            print(f"pipeline round {round_ + 1}/{repeats} done", file=sys.stderr, flush=True)
    rows = []
    for config in configs:
        devices, batch, mode, workers, multi = config
        run = details[config]
        areas = [h * w for h, w in run["shapes"]]
        rows.append(
            {
                "devices": devices,
                "global_batch": batch,
                "mode": mode,
                "workers": workers,
                "use_multiprocessing": multi,
                "images_per_epoch": run["images"],
                "images_per_s": statistics.median(samples[config]),
                "samples": samples[config],
                "first_batch_s": run["first_batch_s"],
                "distinct_shapes": len({tuple(s) for s in run["shapes"]}),
                "mean_padded_pixels": float(sum(areas) / len(areas)),
            }
        )
    return rows


# --- stage breakdown ----------------------------------------------------------------------


STAGES = (
    ("decode", "JPEG decode (Pillow)"),
    ("augment", "flip + resize + pad (per image)"),
    ("stack", "batch padding (stack)"),
    ("normalise", "normalisation (caffe)"),
    ("encode", "label encoding (NumPy, paper anchors)"),
)


def stage_breakdown(records, batch_size=PER_DEVICE_BATCH, num_batches=None, seed=0):
    """Serial per-stage time of the recipe on one worker, in ms per image, on the batches
    ``DetectionDataset`` makes (same order, flips and jitter). ``getitem`` is the whole
    ``dataset[i]`` (all stages but encoding, timed separately); ``other`` what it spends
    outside the listed stages (target checks, clipping, box padding)."""
    import numpy as np

    from keras_retinanet.data import pipeline, preprocessing
    from keras_retinanet.label_encoder import LabelEncoder

    data = recipe_dataset(records, batch_size, seed=seed)
    encoder = LabelEncoder()
    num_batches = min(num_batches or len(data), len(data))
    totals = {name: 0.0 for name, _ in STAGES}
    totals["getitem"] = 0.0
    images = 0
    shapes = []
    clock = time.perf_counter
    # One untimed batch: the first keras.ops call of a process pays for imports.
    x, y = data[0]
    encoder.encode(x.shape[1:3], y["boxes"], y["classes"])
    for index in range(num_batches):
        rng = np.random.default_rng([data.seed, data.epoch, index, 1])
        picked = data._order[index * data.batch_size : (index + 1) * data.batch_size]
        padded = []
        for i in picked:
            rec = data.records[int(i)]
            t0 = clock()
            pixels = preprocessing.load_image(rec["path"])
            t1 = clock()
            image, _, _ = preprocessing.preprocess_for_training(
                pixels,
                rec["boxes"],
                rng=rng,
                max_side=data.max_side,
                jitter=data.jitter,
                stride=data.stride,
                flip=data.flip,
                normalize=False,
            )
            t2 = clock()
            totals["decode"] += t1 - t0
            totals["augment"] += t2 - t1
            padded.append(image)
        t0 = clock()
        batch = pipeline._stack_padded(padded)
        t1 = clock()
        preprocessing.normalize_image(batch)
        t2 = clock()
        x, y = data[index]
        t3 = clock()
        encoder.encode(x.shape[1:3], y["boxes"], y["classes"])
        t4 = clock()
        totals["stack"] += t1 - t0
        totals["normalise"] += t2 - t1
        totals["getitem"] += t3 - t2
        totals["encode"] += t4 - t3
        images += len(picked)
        shapes.append([int(x.shape[1]), int(x.shape[2])])
    per_image = {k: 1e3 * v / images for k, v in totals.items()}
    listed = sum(per_image[name] for name, _ in STAGES if name != "encode")
    per_image["other"] = max(0.0, per_image["getitem"] - listed)
    return {"batch_size": batch_size, "images": images, "ms_per_image": per_image}


def encode_samples(records, batch_size=PER_DEVICE_BATCH, num_batches=8, seed=0):
    """The targets and padded shapes of the first ``num_batches`` recipe batches (what the
    model's train step encodes), as plain arrays for the per-backend encode timing."""
    import numpy as np

    data = recipe_dataset(records, batch_size, seed=seed)
    samples = []
    for index in range(min(num_batches, len(data))):
        x, y = data[index]
        samples.append(
            {
                "shape": [int(x.shape[1]), int(x.shape[2])],
                "boxes": np.asarray(y["boxes"]),
                "classes": np.asarray(y["classes"]),
            }
        )
    return samples


def measure_encode(samples, repeats=1):
    """``LabelEncoder.encode`` (default anchors) on the active backend, eager, on each sample
    batch: one untimed pass (per-shape compilation of eager ops), then ``repeats`` timed
    passes; returns the median images/s over passes."""
    import keras

    from keras_retinanet.label_encoder import LabelEncoder

    encoder = LabelEncoder()

    def one_pass():
        images = 0
        start = time.perf_counter()
        for s in samples:
            out = encoder.encode(tuple(s["shape"]), s["boxes"], s["classes"])
            keras.ops.convert_to_numpy(out[:1, :1])  # waits for asynchronous backends
            images += len(s["boxes"])
        return images / (time.perf_counter() - start)

    one_pass()
    rates = [one_pass() for _ in range(max(1, repeats))]
    return {"images_per_s": statistics.median(rates), "samples": rates}


def pipeline_worker(spec):
    """Writes the data, times the pipeline, the stages and the NumPy encoder; one result line."""
    sys.path.insert(0, ROOT)
    _set_malloc(spec["malloc"])
    import numpy as np

    from keras_retinanet.data import CocoDataset

    annotations, image_dir, stats = make_coco_folder(
        spec["data_dir"], num_images=spec["images"], seed=spec["seed"]
    )
    records = CocoDataset(annotations, image_dir)
    result = {"data": stats}
    print("pipeline: stage breakdown ...", file=sys.stderr, flush=True)
    result["stages"] = stage_breakdown(records, num_batches=spec["stage_batches"])
    samples = encode_samples(records, num_batches=spec["encode_batches"])
    np.savez(
        os.path.join(spec["data_dir"], "encode_samples.npz"),
        **{f"{k}{i}": np.asarray(s[k]) for i, s in enumerate(samples) for k in s},
    )
    result["encode_numpy"] = measure_encode(samples, repeats=spec["encode_repeats"])
    result["pipeline"] = measure_pipeline(records, spec["repeats"])
    print(RESULT + json.dumps(result), flush=True)


def load_encode_samples(path):
    import numpy as np

    with np.load(path) as f:
        count = sum(1 for k in f.files if k.startswith("shape"))
        return [
            {"shape": f[f"shape{i}"].tolist(), "boxes": f[f"boxes{i}"], "classes": f[f"classes{i}"]}
            for i in range(count)
        ]


# --- train step ---------------------------------------------------------------------------


def _train_batch(batch, size, seed=0, boxes=MAX_BOXES):
    """Caffe-range images ``[batch, H, W, 3]`` and padded targets (10 real rows of ``boxes``)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    height, width = size
    x = rng.uniform(-120.0, 150.0, (batch, height, width, 3)).astype("float32")
    real = min(10, boxes)
    out_boxes = np.zeros((batch, boxes, 4), "float32")
    out_classes = np.full((batch, boxes), -1, "int32")
    for i in range(batch):
        out_boxes[i, :real] = random_boxes(rng, height, width, real)
        out_classes[i, :real] = rng.integers(0, NUM_CLASSES, real)
    return x, {"boxes": out_boxes, "classes": out_classes}


def measure_train(size, steps, warmup=1, backbone="resnet50", batch=PER_DEVICE_BATCH, **model_kw):
    """Train-step throughput of RetinaNet on the active backend: ``warmup`` untimed steps
    (the first traces and compiles), then ``steps`` timed ``train_on_batch`` calls."""
    import keras

    from keras_retinanet import RetinaNet

    keras.utils.set_random_seed(0)
    start = time.perf_counter()
    model = RetinaNet(
        NUM_CLASSES,
        backbone=backbone,
        backbone_weights=None,
        data_format="channels_last",
        **model_kw,
    )
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    x, y = _train_batch(batch, size)
    build_s = time.perf_counter() - start
    warmup_s = []
    for _ in range(max(1, warmup)):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        warmup_s.append(time.perf_counter() - start)
    step_s = []
    for _ in range(max(1, steps)):
        start = time.perf_counter()
        loss = model.train_on_batch(x, y)
        step_s.append(time.perf_counter() - start)
    median = statistics.median(step_s)
    return {
        "size": list(size),
        "batch": batch,
        "build_s": build_s,
        "warmup_s": warmup_s,
        "step_s": step_s,
        "images_per_s": batch / median,
        "loss": float(loss if not isinstance(loss, list | tuple) else loss[0]),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def train_worker(spec):
    """Times ``LabelEncoder.encode`` and the train step on one backend; one result line."""
    sys.path.insert(0, ROOT)
    _set_malloc(spec["malloc"])
    result = {}
    try:
        import keras

        result["keras_backend"] = keras.backend.backend()
        samples = load_encode_samples(spec["samples"])
        result["encode"] = measure_encode(samples, repeats=spec["encode_repeats"])
        result["train"] = measure_train(
            tuple(spec["size"]), spec["steps"], spec["warmup"], backbone=spec["backbone"]
        )
    except Exception as error:
        message = str(error).splitlines()[0] if str(error) else ""
        result["error"] = f"{type(error).__name__}: {message}"[:300]
    print(RESULT + json.dumps(result), flush=True)


def _set_malloc(malloc):
    """``keep``: :func:`keras_retinanet.keep_freed_memory`, as ``python -m keras_retinanet
    train`` calls it (its data workers, threads or forked processes, inherit it)."""
    if malloc == "keep":
        from keras_retinanet.cpu_memory import keep_freed_memory

        keep_freed_memory()


# --- driver -------------------------------------------------------------------------------


def run_worker(kind, backend, spec, timeout):
    return _worker_process.run_worker(
        __file__, [f"--{kind}-worker", json.dumps(spec)], backend, RESULT, timeout, ROOT
    )


def _prefetches(row):
    """Whether the configuration reads ahead of the training loop (``workers=1`` threads reads
    in the calling thread)."""
    return row["workers"] > 1 or row["use_multiprocessing"]


def best_pipeline(rows, devices):
    """The fastest prefetching pipeline row at ``devices`` devices (``None`` when none)."""
    mine = [r for r in rows if r["devices"] == devices and _prefetches(r)]
    return max(mine, key=lambda r: r["images_per_s"]) if mine else None


def verdict(rows, devices, train_images_per_s):
    """Loader- or model-limited at ``devices`` devices of ``train_images_per_s`` each.

    The loader keeps up when its images/s at global batch ``2 devices`` reaches
    ``devices x train_images_per_s``. ``workers=1`` threads reads in the training thread
    (no prefetching): its time adds to every step, so it is not counted as keeping up; its
    cost is reported as the fraction it adds to the step time instead.
    """
    need = devices * train_images_per_s
    mine = [r for r in rows if r["devices"] == devices]
    prefetching = [r for r in mine if _prefetches(r)]
    serial = next((r for r in mine if not _prefetches(r)), None)
    keeping_up = [r for r in prefetching if r["images_per_s"] >= need]
    keeping_up.sort(key=lambda r: (r["workers"], r["use_multiprocessing"]))
    best = best_pipeline(rows, devices)
    return {
        "devices": devices,
        "needed_images_per_s": need,
        "limited_by": "model" if keeping_up else "loader",
        "fewest_workers": (
            {"workers": keeping_up[0]["workers"], "mode": keeping_up[0]["mode"]}
            if keeping_up
            else None
        ),
        "headroom": best["images_per_s"] / need if best and need else None,
        "serial_overhead": need / serial["images_per_s"] if serial and need else None,
        "best": {"workers": best["workers"], "mode": best["mode"]} if best else None,
        "best_images_per_s": best["images_per_s"] if best else None,
    }


def _fmt(value, digits=1):
    return "—" if value is None else f"{value:.{digits}f}"


def _workers(count, mode):
    """``2 threads``, ``1 process``."""
    noun = {"threads": "thread", "processes": "process"}.get(mode, mode)
    return f"{count} {noun}" if count == 1 else f"{count} {mode}"


def _rate(rows, devices, mode, workers):
    for r in rows:
        if r["devices"] == devices and r["mode"] == mode and r["workers"] == workers:
            return r["images_per_s"]
    return None


def _verdict_text(v):
    if v["limited_by"] == "model":
        few = v["fewest_workers"]
        return (
            f"model-limited from {_workers(few['workers'], few['mode'])} (best loader "
            f"{v['headroom']:.0f}x the need)"
        )
    best = v["best"]
    return f"loader-limited (best: {_workers(best['workers'], best['mode'])})" if best else "—"


def markdown(saved):
    """The tables of ``data_pipeline.md`` from the saved results."""
    settings, data = saved["settings"], saved.get("data") or {}
    rows = saved.get("pipeline") or []
    worker_counts = sorted({r["workers"] for r in rows}) or list(WORKER_COUNTS)
    modes = [m for m, _ in MODES if any(r["mode"] == m for r in rows)] or [m for m, _ in MODES]
    device_counts = sorted({r["devices"] for r in rows})
    height, width = settings["train_size"]
    shapes = ", ".join(f"{w}x{h}" for h, w in data.get("shapes", []))
    lines = [
        f"Data: {data.get('images', '?')} synthetic COCO-sized JPEGs ({shapes}, quality "
        f"{data.get('jpeg_quality', '?')}, {_fmt(data.get('mean_file_kb'), 0)} KB and "
        f"{_fmt(data.get('mean_boxes'))} boxes per image on average). Pipeline: "
        "`DetectionDataset` with the keras.io recipe (flips, short side jittered in 640..1024, "
        f"long side <= {MAX_SIDE}, padded to a multiple of {STRIDE}, caffe normalisation), "
        f"{PER_DEVICE_BATCH} images per device; one epoch read as `model.fit` reads it, in a "
        f"process with `KERAS_BACKEND={settings['pipeline_backend']}`; median of "
        f"{settings['repeats']} interleaved rounds, pool start-up included. Train step: "
        f"RetinaNet {settings['backbone']} (random weights), {NUM_CLASSES} classes, batch "
        f"{PER_DEVICE_BATCH} at {height}x{width} (the recipe's padded batches average the size "
        "below; the model's time grows with the pixels), SGD, `compile()` defaults, label "
        f"encoding inside the step; median of {settings['steps']} steps after "
        f"{settings['warmup']} warm-up. {platform.machine()}, {os.cpu_count()} CPUs"
        + (
            f", 1-minute load average {saved['load_average_before']:.1f} before the run and "
            f"{saved['load_average_after']:.1f} after (above 0 before: other work shared the "
            "cores)"
            if "load_average_after" in saved
            else ""
        )
        + f"; {MALLOC_NOTES.get(settings.get('malloc'), settings.get('malloc'))}.",
    ]
    if "error" in saved:
        lines += ["", f"Pipeline worker failed: {saved['error']}"]
    if rows:
        lines += [
            "",
            "Pipeline alone, images/s by worker count (`threads 1` reads in the training "
            "thread: no prefetching):",
            "",
            "| devices N | global batch | "
            + " | ".join(f"{m} {w}" for m in modes for w in worker_counts)
            + " | batch shapes | mean padded size |",
            "|---|---:|" + "---:|" * (len(modes) * len(worker_counts)) + "---:|---|",
        ]
        for devices in device_counts:
            first = next(r for r in rows if r["devices"] == devices)
            rates = [_fmt(_rate(rows, devices, m, w)) for m in modes for w in worker_counts]
            side = first["mean_padded_pixels"] ** 0.5
            lines.append(
                f"| {devices} | {first['global_batch']} | {' | '.join(rates)} | "
                f"{first['distinct_shapes']} distinct | ~{side:.0f}² px |"
            )
    stages = (saved.get("stages") or {}).get("ms_per_image")
    if stages:
        total = sum(stages[name] for name, _ in STAGES) + stages["other"]
        lines += [
            "",
            f"Where one worker's time goes (serial, batches of {saved['stages']['batch_size']}, "
            f"{saved['stages']['images']} images). Label encoding runs in the model's train "
            "step, not in the loader; it is shown for scale, in NumPy as a loader would run it:",
            "",
            "| stage | ms / image | share |",
            "|---|---:|---:|",
        ]
        for name, title in STAGES:
            lines.append(f"| {title} | {_fmt(stages[name])} | {stages[name] / total:.0%} |")
        lines += [
            f"| other (target checks, clipping, box padding) | {_fmt(stages['other'])} | "
            f"{stages['other'] / total:.0%} |",
            f"| whole `dataset[i]` (all but encoding; timed on its own) | "
            f"{_fmt(stages['getitem'])} | {stages['getitem'] / total:.0%} |",
        ]
    lines += [
        "",
        "Train step and verdict. The loader keeps N devices busy when its images/s at global "
        f"batch {PER_DEVICE_BATCH}N reaches N x one device's train images/s (**assumption**: "
        "N devices train N times as fast as one, perfect scaling, the optimistic case for the "
        "model). `threads 1` loads in the training thread, so it never counts as keeping up; "
        "`serial +` is the share it adds to each step's time. On this CPU-only machine the "
        "'devices' and the loader share the same cores, so `serial +` is also about the share "
        "of compute the loader takes from the model with any worker count. `encode` is "
        "`LabelEncoder.encode` run eagerly on the backend on the recipe's batches (inside the "
        "train step it is compiled with the model on TensorFlow and JAX).",
        "",
        "| backend | encode img/s | train img/s (1 device) | N | needed img/s | "
        "best prefetching loader img/s | verdict | serial + |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for t in saved.get("train") or []:
        if "error" in t or "train" not in t:
            lines.append(f"| {t['backend']} | not run: {t.get('error', '?')} | | | | | | |")
            continue
        rate = t["train"]["images_per_s"]
        encode = (t.get("encode") or {}).get("images_per_s")
        for devices in device_counts or [1]:
            v = verdict(rows, devices, rate)
            overhead = v["serial_overhead"]
            lines.append(
                f"| {t['backend']} | {_fmt(encode)} | {_fmt(rate, 3)} | {devices} | "
                f"{_fmt(v['needed_images_per_s'], 3)} | {_fmt(v['best_images_per_s'])} | "
                f"{_verdict_text(v) if rows else '—'} | "
                f"{'—' if overhead is None else f'{overhead:.1%}'} |"
            )
    numpy_encode = (saved.get("encode_numpy") or {}).get("images_per_s")
    if numpy_encode is not None:
        lines += [
            "",
            f"Label encoding in NumPy (Keras numpy backend, as a loader would run it): "
            f"{_fmt(numpy_encode)} images/s on the recipe's batches.",
        ]
    best = [(d, best_pipeline(rows, d)) for d in device_counts]
    if best:
        lines += [
            "",
            "The best loader here keeps up with devices of up to "
            + ", ".join(f"{b['images_per_s'] / d:.1f} images/s each at N = {d}" for d, b in best)
            + f" ({os.cpu_count()} CPUs): the figure to hold against an accelerator's train "
            "throughput at the recipe's sizes.",
        ]
    return "\n".join(lines) + "\n"


def _write(out, saved):
    table = markdown(saved)
    print(table)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "data_pipeline.json"), "w") as f:
        json.dump(saved, f, indent=2)
    with open(os.path.join(out, "data_pipeline.md"), "w") as f:
        f.write(table)
    print(f"wrote {out}/data_pipeline.json, data_pipeline.md", file=sys.stderr)
    return saved


#: How each ``--malloc`` choice reads in the table's heading.
MALLOC_NOTES = {
    "keep": "workers call `keep_freed_memory()`, as `python -m keras_retinanet train` does",
    "default": "glibc's default malloc settings",
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="32 images, 1 round, train step at 384x384 (1 warm-up, 2 steps): a smoke run",
    )
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help=f"train-step input size (default {TRAIN_SIZE[0]} {TRAIN_SIZE[1]}; the recipe's "
        f"largest padded size is {RECIPE_SIZE[0]} {RECIPE_SIZE[1]}, ~20 GB on a CPU backend)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="pipeline rounds (3)")
    parser.add_argument("--images", type=int, default=None, help="synthetic JPEGs (64)")
    parser.add_argument("--steps", type=int, default=2, help="timed train steps (2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed train steps (1)")
    parser.add_argument("--only", nargs="*", help="backends to train (tensorflow, jax, torch)")
    parser.add_argument(
        "--backbone", default="resnet50", help="RetinaNet backbone of the train step (resnet50)"
    )
    parser.add_argument(
        "--pipeline-backend",
        default="numpy",
        help="KERAS_BACKEND of the pipeline worker (numpy: no framework threads; the "
        "pipeline itself uses NumPy and Pillow only)",
    )
    parser.add_argument(
        "--malloc",
        choices=sorted(MALLOC_NOTES),
        default="keep",
        help="keep: workers call keras_retinanet.keep_freed_memory() first, as the train "
        "command does (default); default: glibc's own settings",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per worker")
    parser.add_argument("--render", action="store_true", help="rewrite the .md from the .json")
    parser.add_argument("--pipeline-worker", help=argparse.SUPPRESS)
    parser.add_argument("--train-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.pipeline_worker:
        return pipeline_worker(json.loads(args.pipeline_worker))
    if args.train_worker:
        return train_worker(json.loads(args.train_worker))
    out = os.environ.get("BENCHMARK_OUTPUT_DIR", os.path.join(HERE, "results"))
    if args.render:
        with open(os.path.join(out, "data_pipeline.json")) as f:
            return _write(out, json.load(f))
    if args.only and not set(args.only) <= set(BACKENDS):
        parser.error(f"--only takes backends of {BACKENDS}, got {args.only}")
    size = tuple(args.size or (QUICK_SIZE if args.quick else TRAIN_SIZE))
    backends = [b for b in BACKENDS if not args.only or b in args.only]
    pipeline_backend = args.pipeline_backend
    if pipeline_backend == "numpy" and importlib.util.find_spec("scipy") is None:
        pipeline_backend = backends[0] if backends else "torch"  # Keras' numpy backend needs it
        print(f"SciPy is missing: the pipeline runs under {pipeline_backend}", file=sys.stderr)
    settings = {
        "quick": args.quick,
        "images": args.images or (32 if args.quick else 64),
        "repeats": args.repeats or (1 if args.quick else 3),
        "train_size": list(size),
        "steps": args.steps,
        "warmup": args.warmup,
        "backbone": args.backbone,
        "pipeline_backend": pipeline_backend,
        "malloc": args.malloc,
        "seed": args.seed,
    }
    saved = run(settings, backends, args.timeout)
    return _write(out, saved)


def run(settings, backends, timeout=1800):
    """The pipeline worker, then one train worker per backend; returns the results dict."""
    started = time.perf_counter()

    def log(message):
        print(f"[{time.perf_counter() - started:6.0f} s] {message}", file=sys.stderr, flush=True)

    quick = settings["quick"]
    saved = {"settings": settings, "load_average_before": os.getloadavg()[0]}
    data_dir = tempfile.mkdtemp(prefix="data-pipeline-bench-")
    try:
        spec = {
            "data_dir": data_dir,
            "images": settings["images"],
            "seed": settings["seed"],
            "repeats": settings["repeats"],
            "malloc": settings["malloc"],
            "stage_batches": 2 if quick else None,
            "encode_batches": 2 if quick else 8,
            "encode_repeats": 1 if quick else 3,
        }
        log(f"pipeline ({settings['pipeline_backend']} backend): data, stages, epochs ...")
        saved.update(run_worker("pipeline", settings["pipeline_backend"], spec, timeout))
        train = []
        samples = os.path.join(data_dir, "encode_samples.npz")
        for backend in backends:
            log(f"{backend}: encode and train step ...")
            if not os.path.exists(samples):
                train.append({"backend": backend, "error": "the pipeline worker failed"})
                continue
            tspec = {
                "samples": samples,
                "size": settings["train_size"],
                "steps": settings["steps"],
                "warmup": settings["warmup"],
                "backbone": settings["backbone"],
                "encode_repeats": spec["encode_repeats"],
                "malloc": settings["malloc"],
            }
            train.append({"backend": backend, **run_worker("train", backend, tspec, timeout)})
        saved["train"] = train
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    saved["total_s"] = time.perf_counter() - started
    saved["load_average_after"] = os.getloadavg()[0]
    log("done")
    return saved


if __name__ == "__main__":
    main()
