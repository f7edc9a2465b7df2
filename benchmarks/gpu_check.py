"""GPU check: TensorFlow parity and timings of the JAX and PyTorch backends on a lent GPU machine.

The GPU machines lent to a session (one NVIDIA H200, no network, Python 3.12 with CUDA builds
of PyTorch and JAX, torchvision and onnxruntime, but neither Keras nor TensorFlow) cannot
compute TensorFlow's answers or install Keras from an index. So the check has two halves:

``python benchmarks/gpu_check.py prepare`` (here, on the CPU, where TensorFlow and the network
are): writes ``benchmarks/gpu_bundle/`` (ignored by git; 27 MiB: 16 MiB of wheels, the
binary ones for CPython 3.12 and 3.11, 12 MiB ``reference.npz``, 0.2 MiB ``manifest.json``):

* ``wheels/``: Keras (the installed version) and its small dependencies (``pip download``,
  ``--no-deps``; the binary ones for CPython 3.12 and for this interpreter, manylinux x86_64).
* ``reference.npz`` + ``manifest.json``: TensorFlow's answers, computed here on the CPU:
  ``tf.image.combined_non_max_suppression`` on the 2000 seeded cases and the hand-made edge
  cases of ``tests/nms_cases.py`` (the inputs, 150 MiB compressed, do not travel: the run
  regenerates them from ``tests/nms_cases.py`` and checks a SHA-256 of every case's inputs and
  arguments against the manifest), on the ``benchmarks/nms.py`` batch-8 workload, and a
  ``RetinaNet(num_classes=80)`` (ResNet50, weights from :func:`seeded_weights`: NumPy values
  keyed by variable path, identical on every backend, so no weights travel) on a seeded
  2 x 512 x 512 batch: every 8th anchor row of the raw outputs, per-column sums and sums of
  squares over all anchors, and the detections of ``make_detector``. ``--quick`` variants
  (fewer cases, smaller inputs) are stored next to the full ones.

``python benchmarks/gpu_check.py run [--quick] [--expect-gpu]`` (on the GPU machine; on a
machine without one it runs the same code on the CPU): installs the bundle's wheels into
``/tmp/keras_pkgs`` (``pip install --no-index --no-deps --target``, or unzipping where pip is
missing; only the distributions that are missing, so nothing shadows the machine's NumPy;
``--force-install`` installs all but NumPy, ml_dtypes and typing_extensions and checks that
Keras is imported from there), then for each backend
(torch, jax) in its own subprocess with ``KERAS_BACKEND`` set and its own time budget:

1. NMS parity: ``keras_retinanet.ops.combined_non_max_suppression`` on device tensors for
   the cases (PyTorch: all; JAX: the hand-made ones and the sample of generated ones that
   ``tests/test_nms_parity.py`` gives JAX, about 400 cases on 33 compiled programs), compared
   with TensorFlow's answers by ``tests/nms_cases.assert_same_detections`` (identical valid
   counts and classes, boxes and scores within 1e-6; score ties as docs/numerics.md allows);
   the outputs must stay on the device. Runs model parity first, then as many cases as its
   time budget allows (the detail says when some were left out; that alone is no failure).
2. Model parity (float32: cuDNN TF32 off, JAX matmul precision "highest" for this part): raw
   outputs within ``1e-4 * max(1, max |TF|)`` of TensorFlow's on the stored rows; per-column
   sums and sums of squares within ``1e-4`` relative; detections matched row by row (same
   class, score within ``1e-4``, box within ``1e-3 * max(1, |coordinate|)``), rows with a
   score within ``1e-3`` of the confidence threshold or of the last kept score excepted.
   Outputs must be on the device.
3. Timings (default precision, so TF32 where the backend allows it): NMS on the
   ``benchmarks/nms.py`` "batch 8 512x512" workload (8 x 49,104 x 80; JAX under ``jax.jit``),
   the model forward on 8 x 512 x 512 (PyTorch eager under ``no_grad``; JAX ``jax.jit`` of
   ``stateless_call``), and torchvision's ``retinanet_resnet50_fpn`` forward (backbone + head,
   as ``benchmarks/_peers.py``) on the same device, if torchvision imports: medians of
   repeats after warm-up, with ``torch.cuda.synchronize()`` / ``block_until_ready``.

Results: ``$OUT/gpu_check.json`` and ``$OUT/gpu_check.md`` (``benchmarks/results/gpu_check/``
when ``$OUT`` is unset); the exit status is 1 if any parity or device check failed (or a
worker crashed or ran out of time), else 0. On an H200 the whole run should take 3-5 minutes.

The ``run`` tool call (the bundle is ignored by git, so it travels only through ``carry``)::

    command: PYTHONPATH=. timeout 520 python benchmarks/gpu_check.py run --expect-gpu
    carry: ["benchmarks/gpu_bundle"]
    timeout_s: 560

The script stops its workers so as to finish within ``--deadline`` (450 s); ``timeout 520`` is
the last resort. Each backend worker has its own budgets (``BUDGETS``, ``WORKER_TIMEOUT``) and
writes its results after each check, so a worker cut short still reports what it did.

CPU test of the fallback here: ``python benchmarks/gpu_check.py run --quick --deadline 1800``.
"""

import argparse
import glob
import hashlib
import importlib.util
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TESTS = os.path.join(ROOT, "tests")
DEFAULT_BUNDLE = os.path.join(HERE, "gpu_bundle")
DEFAULT_TARGET = "/tmp/keras_pkgs"
DEFAULT_LOCAL_OUT = os.path.join(HERE, "results", "gpu_check")

#: Distributions installed from the bundle: Keras and what ``pip show keras`` requires, with
#: rich's and optree's own requirements. NumPy (and ml_dtypes) come with JAX and PyTorch.
PURE_WHEELS = (
    "keras",
    "absl-py",
    "namex",
    "rich",
    "markdown-it-py",
    "mdurl",
    "pygments",
    "packaging",
    "typing-extensions",
)
BINARY_WHEELS = ("h5py", "optree", "ml-dtypes")
#: Never installed from the bundle over an existing installation (JAX and PyTorch use them).
NEVER_SHADOW = ("numpy", "ml-dtypes", "typing-extensions")
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_27_x86_64", "manylinux_2_28_x86_64")

NMS_SETTINGS = dict(
    max_output_size_per_class=100,
    max_total_size=100,
    iou_threshold=0.5,
    score_threshold=0.05,
    clip_boxes=False,
)
#: Per variant: the model, the parity input, the NMS workload and the timed model input.
VARIANTS = {
    "full": dict(
        backbone="resnet50",
        parity_shape=(2, 512, 512, 3),
        nms_workload=dict(seed=1, batch=8, height=512, width=512),
        timing_shape=(8, 512, 512, 3),
        nms_stride=1,
        repeats=10,
    ),
    "quick": dict(
        backbone="resnet50",
        parity_shape=(1, 128, 128, 3),
        nms_workload=dict(seed=1, batch=2, height=256, width=256),
        timing_shape=(2, 128, 128, 3),
        nms_stride=40,
        repeats=3,
    ),
}
MODEL_SEED = 1234
IMAGE_SEED = 99
ROW_STRIDE = 8  # raw output rows stored: every 8th anchor
RAW_TOLERANCE = 1e-4  # relative to max(1, max |TF output|)
STATS_TOLERANCE = 1e-4  # relative, per-column sums and sums of squares
DET_SCORE_TOL = 1e-4
DET_BOX_TOL = 1e-3  # relative to max(1, |coordinate|)
DET_BOUNDARY = 1e-3  # rows this close to the threshold or the last kept score may differ
CANDIDATES_PER_IMAGE = 1000  # the detection check's confidence threshold keeps about this many
#: Seconds per backend worker for each part (GPU run; ``--quick`` on the CPU gets more).
BUDGETS = dict(nms=100, model=60, timing=60, torchvision=30)
WORKER_TIMEOUT = 200  # hard limit of one backend's subprocess (and ``--deadline`` for all)


# --- shared helpers -------------------------------------------------------------------------


def _tests_path():
    if TESTS not in sys.path:
        sys.path.insert(0, TESTS)


def _bench_path():
    if HERE not in sys.path:
        sys.path.insert(0, HERE)


def case_digest(case):
    """SHA-256 of a ``nms_cases.Case``'s inputs and arguments (detects generator drift)."""
    h = hashlib.sha256()
    for array in (case.boxes, case.scores):
        h.update(str(array.shape).encode())
        h.update(np.ascontiguousarray(array, np.float32).tobytes())
    h.update(json.dumps(case.kwargs(), sort_keys=True, default=repr).encode())
    h.update(repr(case.ties).encode())
    return h.hexdigest()


def all_cases():
    """``{"edge": [...], "random": [...]}`` from ``tests/nms_cases.py``."""
    _tests_path()
    from nms_cases import edge_cases, generate_cases

    return {"edge": edge_cases(), "random": generate_cases()}


def case_key(kind, index):
    return f"{kind}{index}"


def save_nms_answers(arrays, answers):
    """Adds ``{key: (boxes, scores, classes, valid)}`` to the ``arrays`` dict (npz keys)."""
    for key, outputs in answers.items():
        for name, value in zip(("boxes", "scores", "classes", "valid"), outputs, strict=True):
            arrays[f"nms/{key}/{name}"] = np.asarray(value)


def load_nms_answer(npz, key):
    return [npz[f"nms/{key}/{name}"] for name in ("boxes", "scores", "classes", "valid")]


def compare_nms(actual, expected, case):
    """``None`` when ``actual`` agrees with TensorFlow's ``expected`` under the rule of
    ``tests/nms_cases.assert_same_detections``, else a one-line reason."""
    _tests_path()
    from nms_cases import assert_same_detections

    try:
        assert_same_detections(actual, expected, case=case)
    except AssertionError as error:
        return " ".join(str(error).split())[:300]
    return None


def seeded_weights(model, seed):
    """Assigns every variable of the built ``model`` NumPy values drawn from a generator seeded
    by ``(seed, crc32(path))``, ``path`` the variable's path less the model's name: the same
    values on every backend, whatever the order of ``model.weights``. Kernels
    ``N(0, 0.49 / fan_in)`` (std ``0.7 / sqrt(fan_in)``: ResNet50 outputs stay within a few
    units; with ``1 / fan_in`` they reach hundreds); BatchNorm gamma ``U(0.8, 1.2)``, moving
    variance ``U(0.5, 1.5)``; other vectors (biases, beta, moving mean)
    ``N(0, 0.05)``. Returns ``[(path, shape)]`` in path order."""
    layout, prefix = [], model.name + "/"
    for variable in sorted(model.weights, key=lambda v: v.path):
        shape = tuple(int(d) for d in variable.shape)
        path = variable.path[len(prefix) :] if variable.path.startswith(prefix) else variable.path
        rng = np.random.default_rng([seed, zlib.crc32(path.encode())])
        name = variable.path.rsplit("/", 1)[-1]
        if "variance" in name:
            value = rng.uniform(0.5, 1.5, shape)
        elif name == "gamma":
            value = rng.uniform(0.8, 1.2, shape)
        elif len(shape) >= 2:
            fan_in = int(np.prod(shape[:-1]))
            value = rng.standard_normal(shape) * (0.7 / np.sqrt(fan_in))
        else:
            value = rng.normal(0.0, 0.05, shape)
        variable.assign(value.astype(variable.dtype if variable.dtype else "float32"))
        layout.append((path, list(shape)))
    return layout


def build_model(variant):
    """The seeded ``RetinaNet(num_classes=80)`` of ``variant`` and its input images."""
    import keras

    from keras_retinanet import RetinaNet

    spec = VARIANTS[variant]
    shape = spec["parity_shape"]
    keras.backend.clear_session()
    model = RetinaNet(num_classes=80, backbone=spec["backbone"], name="gpu_check_retinanet")
    model.build(shape)
    layout = seeded_weights(model, MODEL_SEED)
    images = np.random.default_rng(IMAGE_SEED).uniform(-120.0, 150.0, shape).astype("float32")
    return model, images, layout


def raw_summary(raw):
    """``(every ROW_STRIDE-th anchor row, per image and column [sum, sum of squares])``."""
    raw = np.asarray(raw, np.float32)
    wide = raw.astype(np.float64)
    stats = np.stack([wide.sum(axis=1), (wide * wide).sum(axis=1)], axis=-1)
    return raw[:, ::ROW_STRIDE], stats


def compare_raw(raw, ref_rows, ref_stats):
    """``(passed, detail)``: raw outputs against TensorFlow's stored rows and statistics."""
    rows, stats = raw_summary(raw)
    if rows.shape != ref_rows.shape:
        return False, f"shape {rows.shape} != {ref_rows.shape}"
    if not np.isfinite(rows).all():
        return False, "non-finite outputs"
    scale = max(1.0, float(np.abs(ref_rows).max()))
    diff = float(np.abs(rows - ref_rows).max())
    stat_scale = np.maximum(1.0, np.abs(ref_stats))
    stat_diff = float((np.abs(stats - ref_stats) / stat_scale).max())
    passed = diff <= RAW_TOLERANCE * scale and stat_diff <= STATS_TOLERANCE
    detail = (
        f"max |diff| {diff:.2e} (limit {RAW_TOLERANCE * scale:.2e}, outputs up to {scale:.1f}); "
        f"column sums rel. diff {stat_diff:.2e} (limit {STATS_TOLERANCE:.0e})"
    )
    return passed, detail


def compare_detections(actual, expected, threshold):
    """``(passed, detail)``: ``{"boxes", "scores", "classes", "num_detections"}`` of two
    detectors. Every row of one must match a row of the other (same class, score within
    ``DET_SCORE_TOL``, box within ``DET_BOX_TOL`` relative), except rows whose score lies within
    ``DET_BOUNDARY`` of the confidence threshold or of the image's last kept score (where an
    output difference below the raw tolerance may legitimately change the set)."""
    a = {k: np.asarray(v) for k, v in actual.items()}
    e = {k: np.asarray(v) for k, v in expected.items()}
    for key in ("boxes", "scores", "classes", "num_detections"):
        if a[key].shape != e[key].shape:
            return False, f"{key}: shape {a[key].shape} != {e[key].shape}"
    unmatched, rows = 0, 0
    for b in range(e["scores"].shape[0]):
        na, ne = int(a["num_detections"][b]), int(e["num_detections"][b])
        rows += ne
        last = min(
            float(a["scores"][b, :na].min(initial=1.0)), float(e["scores"][b, :ne].min(initial=1.0))
        )
        full = max(na, ne) == e["scores"].shape[1]

        def boundary(score, last=last, full=full):
            near_threshold = abs(score - threshold) <= DET_BOUNDARY
            return near_threshold or (full and abs(score - last) <= DET_BOUNDARY)

        for mine, theirs, n_mine, n_theirs in ((a, e, na, ne), (e, a, ne, na)):
            free = list(range(n_theirs))
            for r in range(n_mine):
                box, score, cls = (
                    mine["boxes"][b, r],
                    float(mine["scores"][b, r]),
                    mine["classes"][b, r],
                )
                hit = None
                for j in free:
                    if theirs["classes"][b, j] != cls:
                        continue
                    if abs(float(theirs["scores"][b, j]) - score) > DET_SCORE_TOL:
                        continue
                    scale = np.maximum(1.0, np.abs(box))
                    if np.all(np.abs(theirs["boxes"][b, j] - box) <= DET_BOX_TOL * scale):
                        hit = j
                        break
                if hit is not None:
                    free.remove(hit)
                elif not boundary(score):
                    unmatched += 1
    detail = (
        f"{rows} TF detections over {e['scores'].shape[0]} images (threshold {threshold:.4f}); "
        f"{unmatched} rows unmatched away from the boundaries"
    )
    return unmatched == 0, detail


# --- prepare (TensorFlow, on the CPU) -------------------------------------------------------


def _dist_version(name):
    from importlib import metadata

    return metadata.version(name)


def _download(args, dest):
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", dest, *args]
    subprocess.run(cmd, check=True)


def download_wheels(dest, python_versions):
    os.makedirs(dest, exist_ok=True)
    pins = [f"{name}=={_dist_version(name)}" for name in PURE_WHEELS]
    _download(["--only-binary=:all:", *pins], dest)
    for version in python_versions:
        tag = "cp" + version.replace(".", "")
        platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
        pins = [f"{name}=={_dist_version(name)}" for name in BINARY_WHEELS]
        _download(
            [
                "--only-binary=:all:",
                "--python-version",
                version,
                "--implementation",
                "cp",
                "--abi",
                tag,
                *platforms,
                *pins,
            ],
            dest,
        )
    return sorted(os.listdir(dest))


def _jax_selection():
    """``[kind, index]`` of the cases JAX checks in ``tests/test_nms_parity.py``."""
    _tests_path()
    import test_nms_parity

    return [list(entry) for entry in test_nms_parity._jax_selected(stride=1)]


def prepare(args):
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        sys.exit("prepare needs KERAS_BACKEND=tensorflow")
    bundle = args.bundle
    os.makedirs(bundle, exist_ok=True)
    start = time.perf_counter()
    wheels = os.path.join(bundle, "wheels")
    shutil.rmtree(wheels, ignore_errors=True)
    local = f"{sys.version_info.major}.{sys.version_info.minor}"
    versions = sorted({"3.12", local})
    names = download_wheels(wheels, versions)
    print(f"wheels ({time.perf_counter() - start:.0f} s): {', '.join(names)}")

    cases = all_cases()
    jax_cases = _jax_selection()
    arrays, digests, answers = {}, {}, {}
    t = time.perf_counter()
    for kind, pool in cases.items():
        for case in pool:
            key = case_key(kind, case.index)
            digests[key] = case_digest(case)
            out = tf.image.combined_non_max_suppression(case.boxes, case.scores, **case.kwargs())
            answers[key] = [x.numpy() for x in out]
    save_nms_answers(arrays, answers)
    print(f"NMS answers of {len(answers)} cases ({time.perf_counter() - t:.0f} s)")

    _bench_path()
    import nms as nms_bench

    from keras_retinanet import ops as kr_ops

    variants = {}
    for variant, spec in VARIANTS.items():
        t = time.perf_counter()
        boxes, scores = nms_bench.workload(**spec["nms_workload"])
        out = tf.image.combined_non_max_suppression(boxes, scores, **NMS_SETTINGS)
        for name, value in zip(("boxes", "scores", "classes", "valid"), out, strict=True):
            arrays[f"workload/{variant}/{name}"] = value.numpy()
        ours = [
            x.numpy() for x in kr_ops.combined_non_max_suppression(boxes, scores, **NMS_SETTINGS)
        ]
        assert nms_bench.same(ours, [x.numpy() for x in out]), "library TF NMS != native op"

        keras.utils.set_random_seed(0)
        model, images, layout = build_model(variant)
        raw = keras.ops.convert_to_numpy(model(images))
        rows, stats = raw_summary(raw)
        arrays[f"model/{variant}/rows"], arrays[f"model/{variant}/stats"] = rows, stats
        scores_all = 1.0 / (1.0 + np.exp(-raw[0, :, 4:].astype(np.float64)))
        quantile = 1.0 - CANDIDATES_PER_IMAGE / scores_all.size
        threshold = float(np.clip(np.round(np.quantile(scores_all, quantile), 4), 0.05, 0.99))
        detector = model.make_detector(confidence_threshold=threshold)
        detections = detector.predict_on_batch(images)
        for key, value in detections.items():
            arrays[f"model/{variant}/det/{key}"] = keras.ops.convert_to_numpy(value)
        variants[variant] = dict(
            threshold=threshold,
            layout=layout,
            output_shape=list(raw.shape),
            output_max=float(np.abs(raw).max()),
            detections=[int(n) for n in keras.ops.convert_to_numpy(detections["num_detections"])],
            fast_paths=sorted(getattr(model, "fast_paths_applied", {})),
        )
        print(
            f"{variant}: model {spec['backbone']} {spec['parity_shape']} outputs up to "
            f"{variants[variant]['output_max']:.2f}, threshold {threshold}, detections "
            f"{variants[variant]['detections']} ({time.perf_counter() - t:.0f} s)"
        )
        del model, detector

    np.savez_compressed(os.path.join(bundle, "reference.npz"), **arrays)
    manifest = dict(
        created=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        keras=keras.__version__,
        tensorflow=tf.__version__,
        numpy=np.__version__,
        python=platform.python_version(),
        wheels={n: os.path.getsize(os.path.join(wheels, n)) for n in names},
        case_digests=digests,
        jax_cases=jax_cases,
        variants=variants,
    )
    with open(os.path.join(bundle, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    total = sum(
        os.path.getsize(p)
        for p in glob.glob(os.path.join(bundle, "**"), recursive=True)
        if os.path.isfile(p)
    )
    print(f"bundle {bundle}: {total / 2**20:.1f} MiB ({time.perf_counter() - start:.0f} s)")


# --- installing Keras offline ---------------------------------------------------------------


def _normalise(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed(name):
    from importlib import metadata

    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def _compatible(filename):
    parts = filename[: -len(".whl")].split("-")
    python, abi, plat = parts[-3], parts[-2], parts[-1]
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    if plat == "any":
        return python.startswith("py3") or python == tag
    machine = platform.machine()
    return python == tag and abi in (tag, "abi3") and plat.endswith(machine) and "linux" in plat


def install_bundle(bundle, target, force):
    """Installs the bundle's wheels that this interpreter lacks (``force``: all but
    ``NEVER_SHADOW``) into ``target``; returns ``[installed file names]``."""
    wheel_dir = os.path.join(bundle, "wheels")
    chosen = []
    for path in sorted(glob.glob(os.path.join(wheel_dir, "*.whl"))):
        filename = os.path.basename(path)
        dist = _normalise(filename.split("-")[0])
        if not _compatible(filename):
            continue
        if _installed(dist) and not (force and dist not in NEVER_SHADOW):
            continue
        chosen.append(path)
    if force:
        shutil.rmtree(target, ignore_errors=True)
    os.makedirs(target, exist_ok=True)
    if not chosen:
        return []
    if importlib.util.find_spec("pip"):
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
        cmd += ["--upgrade", "--target", target, *chosen]
        subprocess.run(cmd, check=True)
    else:  # a wheel is a zip of its installed files
        for path in chosen:
            with zipfile.ZipFile(path) as archive:
                archive.extractall(target)
    return [os.path.basename(p) for p in chosen]


# --- the backend worker ---------------------------------------------------------------------


class Worker:
    def __init__(self, backend, variant, bundle, result_path, seconds):
        self.deadline = time.perf_counter() + seconds
        self.backend, self.variant, self.result_path = backend, variant, result_path
        self.spec = VARIANTS[variant]
        with open(os.path.join(bundle, "manifest.json")) as f:
            self.manifest = json.load(f)
        self.npz = np.load(os.path.join(bundle, "reference.npz"))
        self.result = dict(backend=backend, checks=[], timings={}, info={})
        self.scale = 1.0 if variant == "full" else 3.0  # the CPU fallback gets more time

    def budget(self, part):
        return BUDGETS[part] * self.scale

    def check(self, name, passed, detail):
        self.result["checks"].append(dict(name=name, passed=bool(passed), detail=detail))
        print(f"[{self.backend}] {'PASS' if passed else 'FAIL'} {name}: {detail}", flush=True)
        self.save()

    def save(self):
        with open(self.result_path, "w") as f:
            json.dump(self.result, f, indent=1)

    # device handling
    def setup(self):
        import keras

        info = self.result["info"]
        info["keras"], info["keras_file"] = keras.__version__, keras.__file__
        if self.backend == "torch":
            import torch

            self.torch = torch
            self.gpu = torch.cuda.is_available()
            info["framework"] = torch.__version__
            info["device"] = torch.cuda.get_device_name(0) if self.gpu else "cpu"
            self.expected_device = "cuda" if self.gpu else "cpu"
        else:
            import jax

            self.jax = jax
            device = jax.devices()[0]
            self.gpu = device.platform == "gpu"
            info["framework"] = jax.__version__
            info["device"] = f"{device.platform}: {getattr(device, 'device_kind', device)}"
            self.expected_device = device
        self.save()

    def precise(self, on):
        """Float32 arithmetic (``on``) or the backend's default (TF32 on recent GPUs)."""
        if self.backend == "torch":
            self.torch.backends.cuda.matmul.allow_tf32 = False  # PyTorch's default too
            self.torch.backends.cudnn.allow_tf32 = not on  # default: True
        else:
            self.jax.config.update("jax_default_matmul_precision", "highest" if on else None)

    def to_device(self, array):
        array = np.ascontiguousarray(array)  # see non_contiguous_probe
        if self.backend == "torch":
            return self.torch.as_tensor(array, device=self.expected_device)
        return self.jax.device_put(array, self.expected_device)

    def non_contiguous_probe(self):
        """Informational: NMS on a transposed (non-contiguous) scores tensor."""
        from keras_retinanet.ops import combined_non_max_suppression

        rng = np.random.default_rng(0)
        boxes = self.to_device(rng.uniform(0, 1, (1, 10, 1, 4)).astype("float32"))
        scores = self.to_device(rng.uniform(0, 1, (1, 3, 10)).astype("float32"))
        scores = scores.transpose(1, 2) if self.backend == "torch" else scores.transpose(0, 2, 1)
        try:
            combined_non_max_suppression(boxes, scores, 5, 5)
            outcome = "ok"
        except Exception as error:
            outcome = f"{type(error).__name__}: {' '.join(str(error).split())[:120]}"
        self.result["info"]["nms on non-contiguous scores"] = outcome

    def on_device(self, tensors):
        for x in tensors:
            if self.backend == "torch":
                if x.device.type != self.expected_device:
                    return False
            elif x.devices() != {self.expected_device}:
                return False
        return True

    def sync(self, value=None):
        if self.backend == "torch":
            if self.gpu:
                self.torch.cuda.synchronize()
        elif value is not None:
            self.jax.block_until_ready(value)
        return value

    def timed(self, fn, repeats, budget):
        """Median seconds of ``fn`` (already warmed up) over ``repeats`` or until ``budget``."""
        samples = []
        deadline = min(time.perf_counter() + budget, self.deadline - 5.0)
        for _ in range(repeats):
            start = time.perf_counter()
            self.sync(fn())
            samples.append(time.perf_counter() - start)
            if time.perf_counter() > deadline:
                break
        return statistics.median(samples), len(samples)

    # parts
    def nms_parity(self):
        from keras_retinanet.ops import combined_non_max_suppression

        self.non_contiguous_probe()
        cases = all_cases()
        if self.backend == "jax":
            selection = [tuple(e) for e in self.manifest["jax_cases"]]
        else:
            selection = [("edge", c.index) for c in cases["edge"]]
            selection += [("random", c.index) for c in cases["random"]]
        if self.spec["nms_stride"] > 1:
            edge = [e for e in selection if e[0] == "edge"]
            selection = (
                edge + [e for e in selection if e[0] == "random"][:: self.spec["nms_stride"]]
            )
        reserve = self.budget("timing") + (
            self.budget("torchvision") if self.backend == "torch" else 0
        )
        left = self.deadline - time.perf_counter() - reserve
        deadline = time.perf_counter() + max(10.0, min(self.budget("nms"), left))
        failures, drift, off_device, done = [], [], 0, 0
        start = time.perf_counter()
        for kind, index in selection:
            if time.perf_counter() > deadline:
                break
            case = cases[kind][index]
            key = case_key(kind, index)
            if case_digest(case) != self.manifest["case_digests"].get(key):
                drift.append(key)
                continue
            try:
                out = combined_non_max_suppression(
                    self.to_device(case.boxes), self.to_device(case.scores), **case.kwargs()
                )
            except Exception as error:
                failures.append(f"{case}: {type(error).__name__}: {str(error)[:200]}")
                done += 1
                continue
            if not self.on_device(out):
                off_device += 1
            actual = [np.asarray(self.numpy(x)) for x in out]
            reason = compare_nms(actual, load_nms_answer(self.npz, key), case)
            if reason:
                failures.append(f"{case}: {reason}")
            done += 1
        seconds = time.perf_counter() - start
        complete = done + len(drift) == len(selection)
        self.check(
            "nms parity with tf.image.combined_non_max_suppression",
            not failures and not drift and done > 0,
            f"{done - len(failures)}/{done} identical of {len(selection)} selected "
            f"({sum(k == 'edge' for k, _ in selection)} hand-made) in {seconds:.0f} s"
            + ("" if complete else " (time budget spent: the rest not run)")
            + (
                f"; {len(drift)} cases differ from the prepared inputs: {drift[:3]}"
                if drift
                else ""
            )
            + (f"; first failure: {failures[0]}" if failures else ""),
        )
        self.check(
            "nms outputs stay on the device",
            off_device == 0 and done > 0,
            f"{off_device} cases off {self.expected_device}",
        )
        self.result["info"]["nms_cases_checked"] = done

    def forward_fn(self, model):
        """``x -> raw outputs`` on the device: PyTorch eager under ``no_grad``; JAX ``jax.jit``
        of ``stateless_call`` (one compiled program, not one per eager op)."""
        if self.backend == "jax":
            trainable = [v.value for v in model.trainable_variables]
            frozen = [v.value for v in model.non_trainable_variables]
            fn = self.jax.jit(lambda t, f, x: model.stateless_call(t, f, x, training=False)[0])
            return lambda x: fn(trainable, frozen, x)

        def forward(x):
            with self.torch.no_grad():
                return model(x, training=False)

        return forward

    def numpy(self, x):
        if self.backend == "torch":
            return x.detach().cpu().numpy()
        return np.asarray(x)

    def model_parity(self):
        import keras

        self.precise(True)
        start = time.perf_counter()
        model, images, layout = build_model(self.variant)
        expected = self.manifest["variants"][self.variant]
        same_layout = [list(x) for x in layout] == [list(x) for x in expected["layout"]]
        self.check(
            "model variables match TensorFlow's (paths and shapes)",
            same_layout,
            f"{len(layout)} variables" + ("" if same_layout else f" vs {len(expected['layout'])}"),
        )
        x = self.to_device(images)
        raw = self.forward_fn(model)(x)
        on_device = self.on_device([raw])
        raw = self.numpy(raw)
        prefix = f"model/{self.variant}"
        passed, detail = compare_raw(raw, self.npz[f"{prefix}/rows"], self.npz[f"{prefix}/stats"])
        shape = "x".join(map(str, self.spec["parity_shape"]))
        self.check(
            f"model raw outputs vs TF ({self.spec['backbone']}, {shape}, float32)", passed, detail
        )
        self.check("model outputs stay on the device", on_device, f"on {self.expected_device}")
        threshold = expected["threshold"]
        detector = model.make_detector(confidence_threshold=threshold)
        detections = detector.predict_on_batch(images)
        detections = {k: keras.ops.convert_to_numpy(v) for k, v in detections.items()}
        reference = {
            k: self.npz[f"{prefix}/det/{k}"]
            for k in ("boxes", "scores", "classes", "num_detections")
        }
        passed, detail = compare_detections(detections, reference, threshold)
        self.check("detections (make_detector().predict_on_batch) vs TF", passed, detail)
        self.precise(False)
        default_raw = self.numpy(self.forward_fn(model)(x))
        scale = max(1.0, float(np.abs(raw).max()))
        self.result["info"]["default_precision_raw_diff"] = (
            float(np.abs(default_raw - raw).max()) / scale
        )
        self.result["info"]["model_parity_s"] = round(time.perf_counter() - start, 1)
        self.save()

    def timings(self):

        from keras_retinanet import RetinaNet
        from keras_retinanet.ops import combined_non_max_suppression

        _bench_path()
        import nms as nms_bench

        self.precise(False)
        repeats, budget = self.spec["repeats"], self.budget("timing") / 2
        timings = self.result["timings"]
        boxes, scores = nms_bench.workload(**self.spec["nms_workload"])
        b, s = self.to_device(boxes), self.to_device(scores)
        label = "nms " + "x".join(map(str, scores.shape))
        if self.backend == "jax":
            fn = self.jax.jit(lambda b, s: combined_non_max_suppression(b, s, **NMS_SETTINGS))
            start = time.perf_counter()
            out = self.sync(fn(b, s))
            timings[f"{label} compile s"] = round(time.perf_counter() - start, 3)
            run = lambda: fn(b, s)  # noqa: E731
        else:

            def run():
                with self.torch.no_grad():
                    return combined_non_max_suppression(b, s, **NMS_SETTINGS)

            out = self.sync(run())
        self.sync(run())
        median, n = self.timed(run, repeats, budget)
        timings[f"{label} ms"] = round(1e3 * median, 3)
        variant = f"workload/{self.variant}"
        expected = [self.npz[f"{variant}/{k}"] for k in ("boxes", "scores", "classes", "valid")]
        same = nms_bench.same([self.numpy(x) for x in out], expected)
        self.check(
            f"{label} (timed workload) identical to TF",
            same,
            f"median {1e3 * median:.2f} ms of {n}",
        )
        self.check(
            f"{label} outputs stay on the device", self.on_device(out), str(self.expected_device)
        )

        shape = self.spec["timing_shape"]
        model = RetinaNet(num_classes=80, backbone=self.spec["backbone"])
        model.build(shape)
        seeded_weights(model, MODEL_SEED)
        x = self.to_device(np.random.default_rng(0).uniform(-120, 150, shape).astype("float32"))
        label = f"model forward {'x'.join(map(str, shape))}"
        forward = self.forward_fn(model)
        start = time.perf_counter()
        self.sync(forward(x))
        timings[f"{label} first call s"] = round(time.perf_counter() - start, 3)

        def run():
            return forward(x)

        self.sync(run())
        median, n = self.timed(run, repeats, budget)
        timings[f"{label} ms"] = round(1e3 * median, 3)
        timings[f"{label} repeats"] = n
        self.result["info"]["fast_paths"] = sorted(getattr(model, "fast_paths_applied", {}))
        self.save()

    def torchvision(self):
        _bench_path()
        import _peers

        shape = self.spec["timing_shape"]
        label = f"torchvision retinanet_resnet50_fpn forward {shape[0]}x3x{shape[1]}x{shape[2]}"
        try:
            model, forward, _ = _peers.torchvision_retinanet(num_classes=91, image_size=shape[1])
        except _peers.PeerUnavailable as error:
            self.result["timings"][label] = f"unavailable: {error}"
            self.save()
            return
        model.to(self.expected_device)
        rng = np.random.default_rng(0)
        x = self.to_device(rng.standard_normal((shape[0], 3, shape[1], shape[2])).astype("float32"))
        forward(x)
        self.sync()
        median, n = self.timed(lambda: forward(x), self.spec["repeats"], self.budget("torchvision"))
        self.result["timings"][f"{label} ms"] = round(1e3 * median, 3)
        self.save()

    def run(self):
        self.setup()
        for part in ("model_parity", "nms_parity", "timings", "torchvision"):
            if part == "torchvision" and self.backend != "torch":
                continue
            start = time.perf_counter()
            try:
                getattr(self, part)()
            except Exception as error:  # one part failing must not hide the others
                import traceback

                traceback.print_exc()
                self.check(f"{part} ran", False, f"{type(error).__name__}: {str(error)[:300]}")
            self.result["info"][f"{part} s"] = round(time.perf_counter() - start, 1)
            self.save()


def worker_main(args):
    Worker(args.backend, args.variant, args.bundle, args.result, args.seconds).run()


# --- run (parent) ---------------------------------------------------------------------------


def run(args):
    start = time.perf_counter()
    out_dir = args.out or os.environ.get("OUT") or DEFAULT_LOCAL_OUT
    os.makedirs(out_dir, exist_ok=True)
    report = dict(
        variant="quick" if args.quick else "full",
        python=platform.python_version(),
        host=platform.node(),
        cpus=os.cpu_count(),
        backends={},
        checks=[],
    )
    manifest_path = os.path.join(args.bundle, "manifest.json")
    if not os.path.exists(manifest_path):
        sys.exit(
            f"no bundle at {args.bundle}: run `prepare` first and pass "
            'carry=["benchmarks/gpu_bundle"] to the run tool'
        )
    with open(manifest_path) as f:
        manifest = json.load(f)
    report["reference"] = {k: manifest[k] for k in ("created", "keras", "tensorflow", "python")}

    need_install = args.force_install or importlib.util.find_spec("keras") is None
    installed = install_bundle(args.bundle, args.target, args.force_install) if need_install else []
    report["installed"] = installed
    env = dict(os.environ)
    paths = ([args.target] if need_install else []) + [ROOT]
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [env.get("PYTHONPATH")] if p])
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    env.pop("KERAS_RETINANET_FAST_PATHS", None)
    print(f"installed from the bundle: {installed or 'nothing'}", flush=True)

    for backend in args.backends.split(","):
        if importlib.util.find_spec(backend) is None:
            report["checks"].append(
                dict(
                    name=f"{backend} importable",
                    passed=False,
                    backend=backend,
                    detail="not installed",
                )
            )
            continue
        env["KERAS_BACKEND"] = backend
        result_path = os.path.join(tempfile.mkdtemp(), f"{backend}.json")
        t = time.perf_counter()
        left = args.deadline - (time.perf_counter() - start) - 10  # time to write the report
        timeout = max(10, min(WORKER_TIMEOUT * (1 if not args.quick else 3), left))
        cmd = [sys.executable, os.path.abspath(__file__), "worker", backend, report["variant"]]
        cmd += ["--bundle", args.bundle, "--result", result_path, "--seconds", str(timeout)]
        try:
            proc = subprocess.run(cmd, env=env, cwd=ROOT, timeout=timeout)
            status = f"exit {proc.returncode}"
            ok = proc.returncode == 0
        except subprocess.TimeoutExpired:
            status, ok = f"killed after {timeout} s", False
        result = {}
        if os.path.exists(result_path):
            with open(result_path) as f:
                result = json.load(f)
        result["seconds"] = round(time.perf_counter() - t, 1)
        result["status"] = status
        report["backends"][backend] = result
        for c in result.get("checks", []):
            report["checks"].append(dict(c, backend=backend))
        report["checks"].append(
            dict(name="worker finished", backend=backend, passed=ok, detail=status)
        )
        if args.force_install and result.get("info", {}).get("keras_file"):
            from_target = result["info"]["keras_file"].startswith(os.path.abspath(args.target))
            report["checks"].append(
                dict(
                    name="keras imported from the bundle install",
                    backend=backend,
                    passed=from_target,
                    detail=result["info"]["keras_file"],
                )
            )
        if args.expect_gpu:
            gpu = result.get("info", {}).get("device", "cpu")
            on_gpu = gpu != "cpu" and not gpu.startswith("cpu")
            report["checks"].append(
                dict(name="runs on the GPU", backend=backend, passed=on_gpu, detail=gpu)
            )

    report["seconds"] = round(time.perf_counter() - start, 1)
    report["passed"] = bool(report["checks"]) and all(c["passed"] for c in report["checks"])
    with open(os.path.join(out_dir, "gpu_check.json"), "w") as f:
        json.dump(report, f, indent=1)
    text = markdown(report)
    with open(os.path.join(out_dir, "gpu_check.md"), "w") as f:
        f.write(text)
    print(text)
    return 0 if report["passed"] else 1


def markdown(report):
    lines = [
        f"# GPU check ({report['variant']}): {'PASS' if report['passed'] else 'FAIL'}",
        "",
        f"Python {report['python']}, {report['cpus']} CPUs, {report['seconds']} s in all; "
        f"references from TensorFlow {report['reference']['tensorflow']} / Keras "
        f"{report['reference']['keras']} ({report['reference']['created']}); installed from "
        f"the bundle: {', '.join(report['installed']) or 'nothing'}.",
        "",
    ]
    for backend, result in report["backends"].items():
        info = result.get("info", {})
        lines.append(
            f"- **{backend}** {info.get('framework', '?')} on {info.get('device', '?')}, Keras "
            f"{info.get('keras', '?')}: {result['seconds']} s, {result['status']}; float32 vs "
            "default-precision raw outputs: "
            f"{info.get('default_precision_raw_diff', float('nan')):.1e} (relative)"
        )
        extra = {k: v for k, v in info.items() if k.endswith(" s") or k.startswith("nms ")}
        extra["fast paths"] = info.get("fast_paths")
        lines.append("  " + "; ".join(f"{k}: {v}" for k, v in extra.items()))
    lines += ["", "| backend | check | result | detail |", "|---|---|---|---|"]
    for c in report["checks"]:
        detail = str(c.get("detail", "")).replace("|", "/")
        verdict = "PASS" if c["passed"] else "**FAIL**"
        lines.append(f"| {c.get('backend', '')} | {c['name']} | {verdict} | {detail} |")
    lines += ["", "| backend | timing | value |", "|---|---|---:|"]
    for backend, result in report["backends"].items():
        for name, value in result.get("timings", {}).items():
            lines.append(f"| {backend} | {name} | {value} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="write the bundle (here, with TensorFlow)")
    p.add_argument("--bundle", default=DEFAULT_BUNDLE)
    r = sub.add_parser("run", help="run the check (GPU machine, or the CPU)")
    r.add_argument("--bundle", default=DEFAULT_BUNDLE)
    r.add_argument("--quick", action="store_true", help="fewer cases, smaller inputs (CPU test)")
    r.add_argument("--out", help="result folder (default: $OUT, else benchmarks/results/gpu_check)")
    r.add_argument("--target", default=DEFAULT_TARGET, help="where the bundle's wheels go")
    r.add_argument(
        "--force-install",
        action="store_true",
        help="install the bundle even if Keras is importable",
    )
    r.add_argument("--expect-gpu", action="store_true", help="fail unless each backend sees a GPU")
    r.add_argument("--backends", default="torch,jax")
    r.add_argument(
        "--deadline", type=float, default=450.0, help="seconds for everything (workers are cut)"
    )
    w = sub.add_parser("worker", help="internal: one backend")
    w.add_argument("backend")
    w.add_argument("variant")
    w.add_argument("--bundle", default=DEFAULT_BUNDLE)
    w.add_argument("--result", required=True)
    w.add_argument("--seconds", type=float, default=WORKER_TIMEOUT, help="the parent's limit")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        return prepare(args)
    if args.command == "worker":
        return worker_main(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
