"""The hand-made and generated cases of ``nms_cases`` on TensorFlow, JAX and PyTorch against
``tf.image.combined_non_max_suppression`` itself (``pytest -m parity -rP`` prints the counts,
what the cases cover and each worker's CPU time, also from pytest-xdist workers).

The expected results come from the native op in this process, which also runs the library's
TensorFlow version. JAX and PyTorch run in one subprocess per test (``parity_worker.py nms``,
with their own ``KERAS_BACKEND``, calling the per-backend module directly), since TensorFlow and
JAX loaded in one process can crash.

TensorFlow and PyTorch check every case. PyTorch runs them in ``TORCH_PARTS`` processes (every
other case each, so the session's two workers finish together) with one intra-op thread: its
many tiny ops ran four times slower with two OpenMP threads fighting over two busy cores.

JAX's time is compiling, not running: a program per padded input shape and kept-buffer size
(one to three CPU seconds each; the 2000 generated cases need 99) plus small eager compiles
for each new output shape (20-60 ms a case), about 300 CPU seconds for everything. So JAX
checks every hand-made case (sized to pad to the common shapes) and a sample of the generated
ones that needs few programs: up to ``JAX_PER_PROGRAM`` cases of each program that at least
``JAX_MIN_SHARED`` generated cases share or a hand-made case compiles anyway, about 370 cases
on 33 programs. ``test_jax_cases_cover_every_code_path`` checks that the sample still has every
feature of the full set. The cases are grouped by padded shape, whole groups dealt to
``JAX_PARTS`` processes (no program is compiled twice) and run group after group (each group's
programs are dropped before the next).
"""

import collections
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from nms_cases import assert_same_detections, edge_cases, generate_cases
from parity_worker import cpu_seconds

tf = pytest.importorskip("tensorflow")

pytestmark = pytest.mark.parity

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "parity_worker.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# NMS_PARITY_STRIDE=k checks every k-th generated case only (quick local runs); the default is
# all. The hand-made cases always run.
_STRIDE = int(os.environ.get("NMS_PARITY_STRIDE", "1"))
GENERATED = generate_cases()
EDGE = edge_cases()
#: JAX checks every hand-made case and, of the generated ones, at most ``JAX_PER_PROGRAM``
#: (the first by index) for each program that at least ``JAX_MIN_SHARED`` generated cases
#: share or that a hand-made case compiles anyway (see the module docstring).
JAX_MIN_SHARED = 20
JAX_PER_PROGRAM = 10
JAX_PARTS = 2
#: PyTorch's share of the cases: every ``TORCH_PARTS``-th case per process.
TORCH_PARTS = 2


def _case(kind, index):
    return (EDGE if kind == "edge" else GENERATED)[index]


def _selected(stride=_STRIDE):
    """``[kind, index]`` of the cases TensorFlow and PyTorch check: all of them."""
    return [["edge", c.index] for c in EDGE] + [["random", c.index] for c in GENERATED[::stride]]


def _bucket(n):
    return 0 if n <= 0 else 1 << (int(n) - 1).bit_length()


def _jax_program(case):
    """``(N, C, kept rows)`` of the program JAX's eager call compiles for ``case`` (its padded
    shape and kept-buffer size, as ``keras_retinanet.nms._jax`` chooses them; ``None`` when it
    compiles none). Only chooses, orders and shares out the cases: a wrong guess would cost
    time, never change a result."""
    batch, n, _, _ = case.boxes.shape
    c = case.scores.shape[2]
    if n == 0 or c == 0:
        return None
    if batch * n * c > 1 << 18:  # not padded
        padded_n, padded_c = n, c
    else:
        padded_n, padded_c = max(_bucket(n), 8), _bucket(c)
    candidates = padded_n * padded_c
    k = case.max_total_size
    if case.pad_per_class:
        k = min(k, case.max_output_size_per_class * c)
    kept = candidates if candidates <= 1 << 14 else min(max(_bucket(k), 256), candidates)
    return padded_n, padded_c, kept


def _jax_selected(stride=_STRIDE):
    """``[kind, index]`` of the cases JAX checks."""
    shared = collections.Counter(_jax_program(c) for c in GENERATED)
    compiled_anyway = {_jax_program(c) for c in EDGE}
    taken = collections.Counter()
    selected = [["edge", c.index] for c in EDGE]
    for case in GENERATED[::stride]:
        program = _jax_program(case)
        common = shared[program] >= JAX_MIN_SHARED or program in compiled_anyway
        if common and taken[program] < JAX_PER_PROGRAM:
            taken[program] += 1
            selected.append(["random", case.index])
    return selected


def _jax_group(case):
    """The padded ``NxC`` shape: no compiled program serves two groups."""
    program = _jax_program(case)
    return "empty" if program is None else f"{program[0]}x{program[1]}"


def _jax_cost(cases):
    """Rough CPU seconds of one group: each compiled program and each case."""
    return 2.0 * len({_jax_program(c) for c in cases} - {None}) + 0.05 * len(cases)


def _jax_parts():
    """``JAX_PARTS`` lists of ``[kind, index, group]``: whole groups, one after the other,
    dealt greedily (costliest first) to balance the estimated cost."""
    groups = {}
    for kind, index in _jax_selected():
        groups.setdefault(_jax_group(_case(kind, index)), []).append([kind, index])
    costs = {g: _jax_cost([_case(*entry) for entry in groups[g]]) for g in groups}
    parts, loads = [[] for _ in range(JAX_PARTS)], [0.0] * JAX_PARTS
    for group in sorted(groups, key=lambda g: (-costs[g], g)):
        lightest = loads.index(min(loads))
        parts[lightest] += [[kind, index, group] for kind, index in groups[group]]
        loads[lightest] += costs[group]
    return parts


def _selection(backend, part):
    if backend == "jax":
        return _jax_parts()[part]
    if backend == "torch":
        return [[kind, index, backend] for kind, index in _selected()[part::TORCH_PARTS]]
    return [[kind, index, backend] for kind, index in _selected()]


def _native(case):
    out = tf.image.combined_non_max_suppression(case.boxes, case.scores, **case.kwargs())
    return [x.numpy() for x in out]


def _results(backend, selection, tmp_path):
    if backend == "tensorflow":
        from keras_retinanet.nms import _tensorflow

        out = []
        for kind, index, _ in selection:
            case = _case(kind, index)
            result = _tensorflow.combined_non_max_suppression(
                case.boxes, case.scores, **case.kwargs()
            )
            out.append([x.numpy() for x in result])
        return out
    cases_path, out_path = tmp_path / "cases.json", tmp_path / f"{backend}.pkl"
    cases_path.write_text(json.dumps(selection))
    env = dict(os.environ, KERAS_BACKEND=backend)
    before = cpu_seconds()
    subprocess.run(
        [sys.executable, WORKER, "nms", backend, str(cases_path), str(out_path)],
        check=True,
        env=env,
        cwd=ROOT,
    )
    cpu = cpu_seconds() - before
    print(f"\n{backend} worker process: {cpu:.0f} s of CPU time", end="")
    with open(out_path, "rb") as f:
        return pickle.load(f)


def _coverage(cases):
    """What the cases exercise: ``{feature: number of cases}``."""
    programs = [_jax_program(c) for c in cases]
    return {
        "ties": sum(c.ties for c in cases),
        "q=1": sum(c.boxes.shape[2] == 1 for c in cases),
        "q=C>1": sum(c.boxes.shape[2] > 1 for c in cases),
        "pad_per_class": sum(c.pad_per_class for c in cases),
        "no pad_per_class": sum(not c.pad_per_class for c in cases),
        "clip_boxes": sum(c.clip_boxes for c in cases),
        "no clip_boxes": sum(not c.clip_boxes for c in cases),
        "per-class cap below N": sum(c.max_output_size_per_class < c.boxes.shape[1] for c in cases),
        "NaN scores": sum(bool(np.isnan(c.scores).any()) for c in cases),
        "score threshold -inf": sum(c.score_threshold == -np.inf for c in cases),
        "score threshold NaN": sum(bool(np.isnan(c.score_threshold)) for c in cases),
        "iou 0": sum(c.iou_threshold == 0 for c in cases),
        "iou 1": sum(c.iou_threshold == 1 for c in cases),
        "no boxes": sum(p is None for p in programs),
        "more than one block": sum(p is not None and p[0] * p[1] > 1024 for p in programs),
        "kept buffer below candidates": sum(p is not None and p[2] < p[0] * p[1] for p in programs),
        "unpadded": sum(
            c.boxes.shape[0] * c.boxes.shape[1] * c.scores.shape[2] > 1 << 18 for c in cases
        ),
        "continuation (hand-made)": sum(c.name.startswith("continuation") for c in cases),
    }


# Longest first: pytest-xdist hands each worker two tests to start with.
@pytest.mark.parametrize(
    "backend, part",
    [("torch", p) for p in range(TORCH_PARTS)]
    + [("jax", p) for p in range(JAX_PARTS)]
    + [("tensorflow", 0)],
    ids=lambda value: str(value),
)
def test_identical_to_tf(backend, part, tmp_path):
    pytest.importorskip(backend)
    selection = _selection(backend, part)
    cases = [_case(kind, index) for kind, index, _ in selection]
    results = _results(backend, selection, tmp_path)
    failures = []
    for case, actual in zip(cases, results, strict=True):
        try:
            assert_same_detections(actual, _native(case), case=case)
        except AssertionError as error:
            failures.append(f"{case}: {str(error)[:300]}")
    n = len(cases)
    edge = sum(kind == "edge" for kind, _, _ in selection)
    stride = f"every {_STRIDE}th of " if _STRIDE > 1 else ""
    if backend == "jax":
        programs = len({_jax_program(c) for c in cases} - {None})
        where = f"; JAX part {part + 1} of {JAX_PARTS}, {programs} compiled programs"
    elif backend == "torch":
        where = f"; PyTorch part {part + 1} of {TORCH_PARTS}"
    else:
        where = ""
    coverage = ", ".join(f"{k} {v}" for k, v in _coverage(cases).items())
    print(
        f"\n{backend}: {n - len(failures)}/{n} cases identical to "
        f"tf.image.combined_non_max_suppression ({edge} hand-made, {n - edge} of "
        f"{stride}the {len(GENERATED)} generated{where})\n  {coverage}"
    )
    assert not failures, "\n".join(failures[:5])


def test_jax_parts_hold_every_selected_case_once():
    parts = _jax_parts()
    assert sorted(e[:2] for part in parts for e in part) == sorted(_jax_selected())
    groups = [{group for _, _, group in part} for part in parts]
    assert not set.intersection(*groups), "a padded shape would be compiled twice"


def test_torch_parts_hold_every_case_once():
    parts = [_selection("torch", part) for part in range(TORCH_PARTS)]
    assert sorted(e[:2] for part in parts for e in part) == sorted(_selected())


def test_jax_cases_cover_every_code_path():
    """The cases JAX checks (without NMS_PARITY_STRIDE) exercise every feature that all the
    cases do."""
    everything = _coverage([_case(*entry) for entry in _selected(stride=1)])
    jax_cases = _coverage([_case(*entry) for entry in _jax_selected(stride=1)])
    assert all(everything.values()), everything
    missing = [feature for feature, count in jax_cases.items() if not count]
    assert not missing, f"the JAX cases never have {missing}"
    print(f"\nJAX cases: {jax_cases}\nall cases: {everything}")


def test_tf_leaks_padding_below_minus_one():
    """TensorFlow 2.21 pads its per-class result slots with score -1 and class -1; a kept
    score below -1 sorts after them, so TF returns a padding row as a detection. The library
    follows docs/numerics.md (NMS) (kept boxes only); this test records TF's behaviour."""
    from keras_retinanet.nms.reference import combined_non_max_suppression_reference

    boxes = np.array([[[[0, 0, 1, 1]], [[2, 2, 3, 3]], [[4, 4, 5, 5]], [[6, 6, 7, 7]]]], np.float32)
    scores = np.array([[[0.5], [-2.0], [-5.0], [np.nan]]], np.float32)
    ours = combined_non_max_suppression_reference(boxes, scores, 4, 4, clip_boxes=False)
    theirs = [
        x.numpy()
        for x in tf.image.combined_non_max_suppression(boxes, scores, 4, 4, clip_boxes=False)
    ]
    assert ours[2][0, :3].tolist() == [0, 0, 0]
    assert ours[1][0, :3].tolist() == [0.5, -2.0, -5.0]
    if theirs[2][0, 1] == -1:
        print("\nTensorFlow returns a padding row (class -1, score -1) for kept scores < -1")
