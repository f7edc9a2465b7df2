"""Test sessions. ``nox`` runs them all; ``nox -s tests`` / ``parity`` / ``lint`` / ``bench``.

* ``tests(backend=...)``: a venv with only that backend installed (proving the core imports
  without the other two), running everything except the cross-backend ``parity`` tests.
* ``parity``: all three backends together; TensorFlow is the reference.
* ``oldest_keras``: the suite on the oldest Keras that ``pyproject.toml`` accepts (PyTorch),
  less the backend-neutral readers and numerics (``OLDEST_KERAS_LEAVES``).
* ``lint``: ruff.
* ``bench``: the cross-backend benchmarks (not part of the default run).

The CPU build of PyTorch is pinned in ``constraints.txt`` for every session.
"""

import functools
import os
import shutil

import nox

nox.options.sessions = ["lint", "tests", "parity", "oldest_keras"]
nox.options.reuse_venv = "yes"

BACKENDS = ["tensorflow", "jax", "torch"]
CONSTRAINTS = ("-c", "constraints.txt")
# One thread pool size for every backend keeps CPU timings comparable and avoids
# oversubscribing the CI machine.
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONHASHSEED": "0"}
# pytest-xdist workers per session. Much of a test's time is single-threaded tracing and
# compiling (JAX compiles every eager op per shape), so two workers keep both CPU cores of
# the CI machine busy: tests(jax) went from 25 to 18 minutes on a 2-core machine.
#: torchvision's release for the pinned torch: the reference of the converter tests and a peer
#: of the benchmarks, never a dependency of the library.
TORCHVISION = "torchvision==0.28.0"
WORKERS = ("-n", os.environ.get("PYTEST_WORKERS", "2"))


def _discard_venv_in_ci(func):
    """Remove the session's virtualenv when it ends under CI (``CI=true``).

    CI runs on a fresh clone, so a venv is never reused there; the four sessions together hold
    several GB of wheels (TensorFlow, JAX, PyTorch twice), and deleting each one as soon as its
    session is over keeps the peak disk use to the largest single venv.
    """

    @functools.wraps(func)
    def wrapper(session, *args, **kwargs):
        try:
            return func(session, *args, **kwargs)
        finally:
            location = getattr(session.virtualenv, "location", None)
            if os.environ.get("CI", "").lower() in ("1", "true") and location:
                shutil.rmtree(location, ignore_errors=True)

    return wrapper


def _jax_compilation_cache(session):
    """Environment that shares JAX's compiled programs between the processes of one session.

    JAX compiles every eager op for every new shape, and each pytest-xdist worker and each
    subprocess a test starts (the CLI, two-process and torchrun-style tests) compiled the same
    programs again; that compiling was most of the JAX session's time. With a persistent cache
    (every program, however quick to compile) a program is compiled once per session and read
    back elsewhere. A cached program is the same executable, so no result changes. The cache
    lives in the session's own folder, which CI deletes with the venv.
    """
    return {
        "JAX_COMPILATION_CACHE_DIR": os.path.join(session.create_tmp(), "jax-compilation-cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }


def _ignore(names):
    """pytest arguments that leave out these ``tests/`` files."""
    return [f"--ignore=tests/{name}" for name in names]


def _pytest_args(session, *default):
    return list(session.posargs) or list(default)


@nox.session
@nox.parametrize("backend", BACKENDS)
@_discard_venv_in_ci
def tests(session, backend):
    """Unit and integration tests on one backend, with only that backend installed."""
    session.install(*CONSTRAINTS, f".[{backend},test]")
    if backend == "torch":
        # The converter's reference: torchvision's RetinaNets (a test dependency only).
        session.install(*CONSTRAINTS, TORCHVISION)
    others = [b for b in BACKENDS if b != backend]
    session.run(
        "python",
        "-c",
        "import importlib.util, sys; "
        f"extra = [m for m in {others!r} if importlib.util.find_spec(m)]; "
        "sys.exit(f'other backends installed: {extra}' if extra else 0)",
    )
    session.run(
        "python",
        "-c",
        "import keras, keras_retinanet; print('keras', keras.__version__, "
        "'backend', keras.backend.backend(), 'keras_retinanet', keras_retinanet.__version__)",
        env={**QUIET_ENV, "KERAS_BACKEND": backend},
    )
    env = {**QUIET_ENV, "KERAS_BACKEND": backend}
    leave = []
    if backend == "jax":
        env.update(_jax_compilation_cache(session))
        leave = _ignore(JAX_LEAVES)
    session.run(
        "pytest",
        *_pytest_args(
            session,
            "-m",
            "not parity",
            *leave,
            *WORKERS,
            "--durations=10",
            "-p",
            "no:cacheprovider",
        ),
        env=env,
    )


#: Test files the JAX session leaves to the TensorFlow and PyTorch sessions: backend-neutral
#: code whose JAX side other tests check. The checkpoint converter assigns NumPy arrays to
#: variables by name, and converted models are compared with torchvision on JAX in the parity
#: session (``test_torchvision_parity.py``) and run from presets in ``test_presets.py``; the
#: ``evaluate`` and preset commands are front ends around ``predict`` and COCO evaluation
#: (NumPy and pycocotools). Each JAX test compiles its programs, which made this session the
#: longest; what stays here is what runs differently on JAX.
JAX_LEAVES = ("test_cli_evaluate.py", "test_cli_presets.py", "test_convert.py")


#: The lower end of ``pyproject.toml``'s Keras range (``_keras_internals.TESTED_KERAS``).
OLDEST_KERAS = "3.10.0"
#: Test files the oldest-Keras session leaves to the main sessions: readers, numerics and
#: tools that call only long-stable ``keras.ops`` (or no Keras at all); the checkpoint
#: converter and the preset registry, which assign tensors by name to public layer variables
#: (saving and loading models is ``test_serialization.py``'s, which runs here); the command-line
#: front ends (argument handling and run-time faults around library calls that the model,
#: training, checkpoint and export tests make directly). Everything in the library that builds,
#: saves, trains or exports a model, and the fast paths' Keras internals, runs on both ends of
#: the Keras range; a new test file runs on both unless it is listed here.
OLDEST_KERAS_LEAVES = (
    "test_anchor_coverage.py",
    "test_anchors.py",
    "test_benchmark_data_pipeline.py",
    "test_benchmark_schedule.py",
    "test_box_coding.py",
    "test_cli.py",
    "test_cli_evaluate.py",
    "test_cli_export.py",
    "test_cli_presets.py",
    "test_cli_resume.py",
    "test_cli_train.py",
    "test_convert.py",
    "test_cpu_memory.py",
    "test_data_coco.py",
    "test_data_csv.py",
    "test_data_preprocessing.py",
    "test_data_shapes.py",
    "test_data_voc.py",
    "test_evaluation.py",
    "test_faults.py",
    "test_faults_images.py",
    "test_gpu_check.py",
    "test_label_encoder.py",
    "test_nms.py",
    "test_nms_torch_sync.py",
    "test_packaging.py",
    "test_presets.py",
    "test_properties.py",
    "test_visualization.py",
)


@nox.session
@_discard_venv_in_ci
def oldest_keras(session):
    """The suite on the oldest Keras the package accepts, PyTorch backend (TensorFlow's newer
    releases require a newer Keras; the Keras internals read by the fast paths do not depend on
    the backend)."""
    session.install(*CONSTRAINTS, ".[torch,test]", f"keras=={OLDEST_KERAS}")
    session.run(
        "python",
        "-c",
        f"import keras; assert keras.__version__ == {OLDEST_KERAS!r}, keras.__version__",
        # Keras picks TensorFlow when no backend is set, and this session has no TensorFlow.
        env={**QUIET_ENV, "KERAS_BACKEND": "torch"},
    )
    leave = _ignore(OLDEST_KERAS_LEAVES)
    session.run(
        "pytest",
        *_pytest_args(
            session, "-m", "not parity", *leave, *WORKERS, "-p", "no:cacheprovider", "-q"
        ),
        env={**QUIET_ENV, "KERAS_BACKEND": "torch"},
    )


#: The parity session's longest test files (a minute or more each on 2 CPU cores).
PARITY_FIRST = ("tests/test_backend_parity.py", "tests/test_torchvision_parity.py")


def _test_files(first):
    """Every ``tests/test_*.py``, ``first`` in front, the others in name order."""
    rest = sorted(
        os.path.join("tests", name)
        for name in os.listdir("tests")
        if name.startswith("test_") and name.endswith(".py")
    )
    return [*first, *(path for path in rest if path not in first)]


@nox.session
@_discard_venv_in_ci
def parity(session):
    """Cross-backend checks: one set of weights, three backends, TensorFlow as reference; and
    converted torchvision checkpoints against torchvision on every backend."""
    session.install(*CONSTRAINTS, ".[all,test]", TORCHVISION)
    session.run(
        "pytest",
        # -rP: the workers' captured output (each parity test prints what it compared).
        *_pytest_args(
            session,
            "-m",
            "parity",
            # The longest tests first (pytest collects named files in the order given), so
            # that neither worker is left with one of them at the end.
            *_test_files(first=PARITY_FIRST),
            *WORKERS,
            "-rP",
            "--durations=10",
            "-p",
            "no:cacheprovider",
        ),
        # The JAX subprocesses (weights, export and NMS parity) share compiled programs too.
        env={**QUIET_ENV, "KERAS_BACKEND": "tensorflow", **_jax_compilation_cache(session)},
    )


@nox.session
@_discard_venv_in_ci
def lint(session):
    """Static checks (ruff lint and formatting)."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


#: Benchmark scripts ``bench`` leaves out: ``gpu_check.py`` prepares a bundle here and runs
#: on a lent GPU machine (see its docstring), not on this one.
DEVICE_ONLY = {"gpu_check.py"}


@nox.session
def bench(session):
    """Cross-backend benchmarks; pass ``-- --quick`` for a short run."""
    session.install(*CONSTRAINTS, ".[all]")
    # KerasHub's RetinaNet is a peer. Its declared dependencies include tensorflow-text, which
    # would replace the pinned TensorFlow; it only needs these two to import and run.
    session.install("--no-deps", "keras-hub==0.32.0", "regex", "tokenizers")
    # torchvision's RetinaNet is the reference peer: 0.28.0 is the release for the pinned torch.
    session.install(*CONSTRAINTS, TORCHVISION)
    out = os.path.join("benchmarks", "results")
    for script in sorted(os.listdir("benchmarks")):
        if script.endswith(".py") and not script.startswith("_") and script not in DEVICE_ONLY:
            session.run(
                "python",
                os.path.join("benchmarks", script),
                *session.posargs,
                env={**QUIET_ENV, "BENCHMARK_OUTPUT_DIR": out},
            )
    session.run("python", os.path.join("benchmarks", "_report.py"), out)
