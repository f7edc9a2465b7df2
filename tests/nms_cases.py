"""Seeded ``combined_non_max_suppression`` cases and the comparison rule of docs/numerics.md (NMS).

``generate_cases()`` returns at least 2000 reproducible cases covering batch 1-4, 0-5000 boxes
(mostly small), 1-90 classes, shared and per-class boxes, IoU thresholds including exactly 0, 1
and an IoU that occurs in the data, score thresholds including ``-inf``, NaN and a value equal
to an existing score, both ``pad_per_class`` and ``clip_boxes``, inverted corners, zero-area
boxes, coordinates below 0 and above 1, pixel-scale coordinates, NaN scores,
``max_total_size`` above ``C * max_output_size_per_class`` and images with no candidate.

Scores are distinct by default, so the result is fully determined; the ``ties`` cases draw
scores from a handful of values and are compared with the tie rule of docs/numerics.md (NMS).

``edge_cases()`` returns the hand-made cases (the edge cases of ``test_nms.py`` plus inputs
built so that the default block size of the JAX and PyTorch versions runs out and continues
into further blocks), for the cross-backend parity test.
"""

import dataclasses

import numpy as np

NUM_CASES = 2000


@dataclasses.dataclass(frozen=True, eq=False)
class Case:
    """One call: ``combined_non_max_suppression(boxes, scores, **case.kwargs())``."""

    index: int
    boxes: np.ndarray  # [B, N, q, 4] float32
    scores: np.ndarray  # [B, N, C] float32
    max_output_size_per_class: int
    max_total_size: int
    iou_threshold: float
    score_threshold: float
    pad_per_class: bool
    clip_boxes: bool
    ties: bool = False
    name: str = ""  # hand-made cases only

    def kwargs(self):
        return dict(
            max_output_size_per_class=self.max_output_size_per_class,
            max_total_size=self.max_total_size,
            iou_threshold=self.iou_threshold,
            score_threshold=self.score_threshold,
            pad_per_class=self.pad_per_class,
            clip_boxes=self.clip_boxes,
        )

    def __repr__(self):
        b, n, q, _ = self.boxes.shape
        label = f"{self.name!r}" if self.name else f"#{self.index}"
        return (
            f"Case({label}, B={b}, N={n}, q={q}, C={self.scores.shape[2]}, "
            f"per_class={self.max_output_size_per_class}, total={self.max_total_size}, "
            f"iou={self.iou_threshold!r}, score={self.score_threshold!r}, "
            f"pad={self.pad_per_class}, clip={self.clip_boxes}, ties={self.ties})"
        )


def _iou32(a, b):
    """float32 IoU of two boxes, TensorFlow's arithmetic."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    lo_a, hi_a = np.minimum(a[:2], a[2:]), np.maximum(a[:2], a[2:])
    lo_b, hi_b = np.minimum(b[:2], b[2:]), np.maximum(b[:2], b[2:])
    area_a = (hi_a[0] - lo_a[0]) * (hi_a[1] - lo_a[1])
    area_b = (hi_b[0] - lo_b[0]) * (hi_b[1] - lo_b[1])
    if area_a <= 0 or area_b <= 0:
        return np.float32(0)
    side = np.maximum(np.minimum(hi_a, hi_b) - np.maximum(lo_a, lo_b), np.float32(0))
    inter = side[0] * side[1]
    return inter / (area_a + area_b - inter)


def _draw_boxes(rng, shape):
    """``[..., 4]`` boxes in one of several styles, with inverted and degenerate ones."""
    style = rng.choice(["unit", "clustered", "pixel", "wide"])
    n_total = int(np.prod(shape[:-1]))
    if style == "pixel":
        centre = rng.uniform(0, 1000, (n_total, 2))
        size = rng.uniform(1, 300, (n_total, 2))
    elif style == "clustered":  # heavy overlaps
        k = max(1, n_total // 20)
        centres = rng.uniform(0, 1, (k, 2))
        centre = centres[rng.integers(k, size=n_total)] + rng.normal(0, 0.03, (n_total, 2))
        size = rng.uniform(0.05, 0.4, (n_total, 2)) * rng.uniform(0.8, 1.2)
    elif style == "wide":  # coordinates well outside [0, 1]
        centre = rng.uniform(-1, 2, (n_total, 2))
        size = rng.uniform(0.1, 2, (n_total, 2))
    else:
        centre = rng.uniform(-0.1, 1.1, (n_total, 2))
        size = rng.uniform(0.01, 0.6, (n_total, 2))
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    invert = rng.random(n_total) < rng.choice([0.0, 0.3])
    boxes[invert] = boxes[invert][:, [2, 3, 0, 1]]
    swap_axes = rng.random(n_total) < rng.choice([0.0, 0.2])
    boxes[swap_axes] = boxes[swap_axes][:, [0, 3, 2, 1]]
    degenerate = rng.random(n_total) < rng.choice([0.0, 0.05, 0.2])
    boxes[degenerate, 2] = boxes[degenerate, 0]  # zero area
    return boxes.reshape(shape).astype(np.float32)


def _draw_case(rng, index):
    batch = int(rng.integers(1, 5))
    r = rng.random()
    if r < 0.05:
        n = 0
    elif r < 0.7:
        n = int(rng.integers(1, 65))
    elif r < 0.93:
        n = int(rng.integers(65, 601))
    else:
        n = int(rng.integers(601, 5001))
    r = rng.random()
    num_classes = int(
        rng.integers(1, 6)
        if r < 0.35
        else rng.integers(6, 31)
        if r < 0.85
        else rng.integers(31, 91)
    )
    if n > 600:  # keep the reference and the parity run fast
        batch, num_classes = min(batch, 2), min(num_classes, 12)
    q = num_classes if rng.random() < 0.5 else 1
    boxes = _draw_boxes(rng, (batch, n, q, 4))

    ties = rng.random() < 0.1
    size = batch * n * num_classes
    if ties:
        levels = rng.choice([2, 3, 5])
        scores = rng.integers(1, levels + 1, size) / np.float32(levels)
    else:  # distinct values
        scores = (rng.permutation(size) + 1) / np.float32(size + 1)
        if rng.random() < 0.2:
            # Negative scores too, but above -1: TensorFlow 2.21 leaks its padding slots
            # (score -1, class -1) into the output when a kept score is below -1.
            scores = scores * 1.8 - 0.9
    scores = scores.reshape(batch, n, num_classes).astype(np.float32)
    if size and rng.random() < 0.05:
        scores[rng.random(scores.shape) < 0.2] = np.nan

    finite = scores[np.isfinite(scores)]
    r = rng.random()
    if r < 0.25 or not finite.size:
        score_threshold = float("-inf")
    elif r < 0.5:
        score_threshold = float(rng.choice(finite))  # equal to an existing score
    elif r < 0.9:
        score_threshold = float(np.quantile(finite, rng.uniform(0, 0.98)))
    elif r < 0.97:
        score_threshold = float(finite.max()) + 1.0  # nothing above the threshold
    else:
        score_threshold = float("nan")
    if n and batch > 1 and rng.random() < 0.15:
        scores[0] = np.minimum(
            scores[0], np.float32(score_threshold) if np.isfinite(score_threshold) else scores[0]
        )  # empty image

    r = rng.random()
    if r < 0.12:
        iou_threshold = 0.0
    elif r < 0.22:
        iou_threshold = 1.0
    elif r < 0.35 and n >= 2:  # an IoU that occurs in the data (boundary of "> threshold")
        i, j = rng.integers(n, size=2)
        iou_threshold = float(_iou32(boxes[0, i, 0], boxes[0, j, 0]))
    else:
        iou_threshold = float(np.float32(rng.uniform(0.05, 0.95)))

    per_class = int(rng.integers(1, max(2, min(n, 150)) + 1))
    if rng.random() < 0.15:
        total = int(rng.integers(per_class * num_classes + 1, per_class * num_classes + 50))
    else:
        total = int(rng.integers(1, max(2, min(per_class * num_classes, 300)) + 1))
    return Case(
        index=index,
        boxes=boxes,
        scores=scores,
        max_output_size_per_class=per_class,
        max_total_size=total,
        iou_threshold=iou_threshold,
        score_threshold=score_threshold,
        pad_per_class=bool(rng.random() < 0.5),
        clip_boxes=bool(rng.random() < 0.5),
        ties=bool(ties),
    )


def generate_cases(count=NUM_CASES, seed=20240611):
    """``count`` reproducible :class:`Case` objects."""
    rng = np.random.default_rng(seed)
    return [_draw_case(rng, i) for i in range(count)]


# --- hand-made cases ----------------------------------------------------------------------
#
# Sizes are chosen so that most of these cases pad (in JAX's eager calls) to the shapes that
# many generated cases share: they add few compiled programs to the parity run.

_FIVE = np.array(
    [[[[0, 0, 1, 1]], [[0, 0.1, 1, 1.1]], [[0, 1, 1, 2]], [[2, 2, 3, 3]], [[0.5, 0.5, 0.5, 1]]]],
    np.float32,
)  # [1, 5, 1, 4]: 0/1 overlap (IoU 0.818), 0/2 touch, 4 has zero area


def _columns(*columns):
    """Score columns (one per class) of the five boxes -> ``[1, 5, C]``."""
    return np.array(columns, np.float32).T[None]


def _disjoint(n, start=0):
    """``[n, 4]`` boxes stacked along ``y`` two units apart: no two overlap."""
    y = (np.arange(n, dtype=np.float32) + start) * 2
    return np.stack([y, np.zeros(n), y + 1, np.ones(n)], -1).astype(np.float32)


def _ranked(order, shape):
    """Distinct float32 scores of the given ``shape``: the flat index ``order[0]`` scores
    highest, ``order[1]`` next, and so on."""
    size = int(np.prod(shape))
    scores = np.empty(size, np.float32)
    scores[order] = np.linspace(0.99, 0.01, size).astype(np.float32)
    assert len(np.unique(scores)) == size
    return scores.reshape(shape)


def _clustered(rng, shape):
    """``[..., 4]`` heavily overlapping boxes around the image centre: most are suppressed."""
    centre = rng.uniform(0.3, 0.7, (*shape[:-1], 2)) + rng.normal(0, 0.01, (*shape[:-1], 2))
    return np.concatenate([centre - 0.2, centre + 0.2], -1).astype(np.float32)


def _permuted(rng, shape):
    """Distinct scores in ``(0, 1)`` in a random order."""
    size = int(np.prod(shape))
    return ((rng.permutation(size) + 1) / np.float32(size + 1)).reshape(shape).astype(np.float32)


def _continuation_late_duplicate(rng):
    """64 boxes x 32 classes (per-class boxes), every pair a candidate, in a random order. The
    best 200 pairs get disjoint boxes (kept rows 0-199); the next 824, the rest of the first
    block of 1024 candidates, copies of a kept box of their class (suppressed); the 1025th a
    copy of kept row 140 (so it must be checked against kept rows past 128); the rest
    disjoint boxes. K = 300: the second block keeps 100."""
    n, classes = 64, 32
    while True:
        order = rng.permutation(n * classes)  # flat index box * classes + class, best first
        if len(set(order[:200] % classes)) == classes:  # every class has a kept box
            break
    later = 1024 + np.flatnonzero(order[1024:] % classes == order[140] % classes)[0]
    order[[1024, later]] = order[[later, 1024]]
    boxes = np.zeros((n * classes, 4), np.float32)
    fresh = iter(_disjoint(n * classes))
    first_kept = {}
    for rank, flat in enumerate(order):
        cls = flat % classes
        if rank < 200 or rank > 1024:
            boxes[flat] = next(fresh)
            first_kept.setdefault(cls, flat)
        elif rank < 1024:
            boxes[flat] = boxes[first_kept[cls]]
        else:
            boxes[flat] = boxes[order[140]]
    return boxes.reshape(1, n, classes, 4), _ranked(order, (1, n, classes))


def _continuation_many_rounds(rng):
    """3000 boxes x 12 classes (shared boxes): 2900 copies of one box and 100 disjoint boxes,
    whose 1200 candidates rank 5000-6199. The first block keeps one copy per class, the next
    three keep nothing, the fifth and sixth keep disjoint boxes up to K = 200."""
    n, classes = 3000, 12
    boxes = np.concatenate([np.repeat(_disjoint(1), 2900, 0), _disjoint(100, start=1)])
    flat = np.arange(n * classes)
    copies = rng.permutation(flat[flat // classes < 2900])
    disjoint = rng.permutation(flat[flat // classes >= 2900])
    order = np.concatenate([copies[:5000], disjoint, copies[5000:]])
    return boxes[None, :, None, :], _ranked(order, (1, n, classes))


def _ties_at_block_boundary(rng):
    """64 clustered boxes x 32 classes with distinct scores except one run of 30 equal scores
    across the first block boundary (candidates 1010-1039)."""
    n, classes = 64, 32
    scores = _ranked(rng.permutation(n * classes), (1, n, classes)).reshape(-1)
    ranked = np.argsort(-scores, kind="stable")
    scores[ranked[1010:1040]] = scores[ranked[1010]]
    return _clustered(rng, (1, n, 1, 4)), scores.reshape(1, n, classes)


def _nan_beside_best(n, classes):
    """Box 5's first and last classes score NaN and its class 3 holds the best score."""
    rng = np.random.default_rng(11)
    scores = rng.uniform(0, 0.9, (1, n, classes)).astype(np.float32)
    scores[0, 5, [0, classes - 1]] = np.nan
    scores[0, 5, 3] = 0.999
    return rng.uniform(0, 1, (1, n, classes, 4)).astype(np.float32), scores


def edge_cases():
    """The hand-made :class:`Case` objects (seeded), each with a ``name``."""
    rng = np.random.default_rng(7)
    cases = []

    def add(name, boxes, scores, per_class, total, iou=0.5, score=float("-inf"), **flags):
        cases.append(
            Case(
                index=len(cases),
                boxes=np.asarray(boxes, np.float32),
                scores=np.asarray(scores, np.float32),
                max_output_size_per_class=per_class,
                max_total_size=total,
                iou_threshold=float(iou),
                score_threshold=float(score),
                pad_per_class=flags.get("pad", False),
                clip_boxes=flags.get("clip", True),
                ties=flags.get("ties", False),
                name=name,
            )
        )

    one = _columns([0.9, 0.8, 0.7, 0.6, 0.5])
    two = _columns([0.9, 0.8, 0.7, 0.6, 0.5], [0.1, 0.95, 0.2, 0.3, 0.05])
    # The hand-made cases of test_nms.py.
    add("merge order", _FIVE, two, 10, 10, 0.5, 0.0, clip=False)
    add("iou 0", _FIVE, one, 10, 10, 0.0)
    add("iou 1", _FIVE, one, 10, 10, 1.0)
    add("iou 0.8181818", _FIVE, one, 10, 10, 0.8181818)
    add("iou equal to an iou", _FIVE, one, 10, 10, _iou32(_FIVE[0, 0, 0], _FIVE[0, 1, 0]))
    add("score threshold equal to a score", _FIVE, one, 10, 10, 1.0, 0.7)
    add("nan scores", _FIVE, _columns([np.nan, 0.8, np.nan, 0.6, 0.5]), 10, 10)
    add("nan score threshold", _FIVE, one, 10, 10, 0.5, float("nan"))
    add("no boxes q=1", np.zeros((2, 0, 1, 4)), np.zeros((2, 0, 3)), 4, 7)
    add("no boxes q=C", np.zeros((2, 0, 3, 4)), np.zeros((2, 0, 3)), 4, 7)
    zero_area = np.array([[[[0, 0, 0, 1]], [[0, 0, 0, 1]], [[1, 1, 1, 1]]]], np.float32)
    add("zero area", zero_area, [[[0.9], [0.8], [0.7]]], 5, 5, 0.0)
    add("inverted corners", _FIVE[..., [2, 3, 0, 1]], one, 10, 10, clip=False)
    add("pad_per_class 3", _FIVE, two, 3, 100, pad=True)
    add("pad_per_class 7", _FIVE, two, 7, 100, pad=True)  # K = 14 > N * C
    outside = np.array([[[[-1, -2, 3, 0.5]], [[5, 5, 6, 6]]]], np.float32)
    add("clip_boxes", outside, [[[0.9], [0.8]]], 2, 2, clip=True)
    add("no clip_boxes", outside, [[[0.9], [0.8]]], 2, 2, clip=False)
    add("total above kept, per-class cap", _FIVE, one, 2, 50, 1.0)
    boxes = np.random.default_rng(3).uniform(0, 1, (2, 40, 4, 4))
    scores = np.random.default_rng(3).permutation(320).reshape(2, 40, 4) / 320
    add("per-class boxes", boxes, scores, 5, 12, 0.3, 0.2)
    add("nan beside the best score", *_nan_beside_best(64, 12), 3, 20)
    # More extremes.
    add("per_class 1, total 1", _clustered(rng, (2, 50, 1, 4)), _permuted(rng, (2, 50, 5)), 1, 1)
    add("q = C = 90", rng.random((1, 40, 90, 4)), _permuted(rng, (1, 40, 90)), 2, 100, pad=True)
    add("one class, one box", [[[[0.1, 0.1, 0.4, 0.4]]]], [[[0.3]]], 1, 3)
    add("threshold above every score", _FIVE, two, 10, 10, 0.5, 0.96)
    scores = _permuted(rng, (3, 30, 4))
    scores[1] = np.minimum(scores[1], 0.2)
    add("empty image in a batch", _clustered(rng, (3, 30, 1, 4)), scores, 5, 15, 0.5, 0.2)
    negative = -_permuted(rng, (1, 5, 3))
    add("negative scores above -1", np.repeat(_FIVE, 3, 2), negative, 4, 9, 0.5)
    signed_zero = np.array([[[0.0, -0.0], [-0.0, 0.5], [0.0, 0.0], [-0.25, -0.0], [0.0, 0.1]]])
    add("signed zeros", _FIVE, signed_zero, 5, 10, 0.5, ties=True)
    equal = np.full((1, 20, 3), 0.5)
    add("all scores equal", _clustered(rng, (1, 20, 1, 4)), equal, 5, 10, ties=True)
    # Subnormal values: TensorFlow's CPU kernel flushes them to zero (reference.py, rule 6).
    tiny = np.float32(1e-40)
    pairs = np.array([[0.8], [0.7]])
    small = np.array([[[[0, 0, 1e-20, 1e-20]], [[0, 0, 1e-20, 1e-20]]]])  # area 1e-40
    add("subnormal areas", small, [pairs], 4, 4, 0.5, 0.0, clip=False)
    add("subnormal widths", [[[[0, 0, tiny, 1]], [[0, 0, tiny, 1]]]], [pairs], 4, 4, 0.5, 0.0)
    close = np.array([[[[0, 0, 1e-19, 1e-19]], [[0, 0, 1e-19, 2e-19]]]])  # inter 1e-38
    add("subnormal intersection", close, [pairs], 4, 4, 0.0, clip=False)
    scales = [[[[0, 0, 1e-18, 1e-18]], [[0, 0, 1e-19, 1e-19]], [[0, 0, 1e30, 1e30]],
               [[0, 0, 1e-5, 1e-5]]]]  # fmt: skip
    add("subnormal iou", scales, [[[0.8], [0.7], [0.6], [0.5]]], 4, 4, 0.0, -1.0, clip=False)
    apart = _FIVE[:, :3]
    add("subnormal score, threshold 0", apart, [[[0.8], [tiny], [-tiny]]], 4, 4, 0.5, 0.0)
    add("subnormal scores tie with 0", apart, [[[tiny], [0.0], [2 * tiny]]], 4, 4, 0.5, -1.0)
    add("subnormal score threshold", apart, [[[0.8], [tiny], [3 * tiny]]], 4, 4, 0.5, tiny)
    add("subnormal coordinates clipped", [[[[tiny, -tiny, 1, 1]]]], [[[0.9]]], 1, 1, clip=True)
    # Beyond the default block of 1024 candidates of the JAX and PyTorch versions.
    add("block path, nan beside the best score", *_nan_beside_best(64, 32), 3, 20)
    add("continuation, late duplicate", *_continuation_late_duplicate(rng), 64, 300, clip=False)
    add("continuation, six rounds", *_continuation_many_rounds(rng), 200, 200, clip=False)
    boxes = np.stack([_clustered(rng, (500, 4)), _disjoint(500)])[:, :, None, :]
    add("continuation in one image of two", boxes, _permuted(rng, (2, 500, 6)), 40, 60, 0.1)
    clustered, scores = _clustered(rng, (1, 500, 12, 4)), _permuted(rng, (1, 500, 12))
    add("continuation, per-class boxes", clustered, scores, 50, 150, 0.5)
    add("continuation, shared boxes", clustered[:, :, :1], scores, 50, 150, 0.3, 0.1)
    boxes, scores = _clustered(rng, (1, 500, 1, 4)), _permuted(rng, (1, 500, 60))
    add("continuation to the last candidate", boxes, scores, 5, 250, 0.1)  # K never reached
    ties = _ties_at_block_boundary(rng)
    add("continuation, tie across the boundary", *ties, 100, 100, 0.1, ties=True)
    # 270,000 scores: more than JAX pads (eager calls pad at most 2**18).
    boxes = rng.uniform(0, 1, (1, 2700, 1, 4)).astype(np.float32)
    add("many candidates, unpadded", boxes, _permuted(rng, (1, 2700, 100)), 10, 100, 0.5, 0.5)
    return cases


def _as_numpy(outputs):
    return [np.asarray(x) for x in outputs]


def _row_keys(boxes, scores, classes, valid):
    """Multiset of ``(class, score, box)`` rows of one image."""
    return sorted(
        (int(classes[r]), float(scores[r]), tuple(np.round(boxes[r].astype(np.float64), 4)))
        for r in range(int(valid))
    )


def assert_same_detections(actual, expected, *, case=None, atol=1e-6):
    """Asserts that two ``(boxes, scores, classes, valid)`` results agree (docs/numerics.md (NMS)).

    Shapes and dtypes must match. Without ties (``case.ties`` false), valid counts and classes
    must be equal and boxes and scores within ``atol`` (relative for coordinates beyond 1).
    With ties, rows past ``valid_detections`` must still be zero, the rows must be sorted by
    score, and the kept ``(class, box)`` pairs may differ only among candidates whose score is
    shared with another candidate of the image.
    """
    actual, expected = _as_numpy(actual), _as_numpy(expected)
    names = ("nmsed_boxes", "nmsed_scores", "nmsed_classes", "valid_detections")
    for name, a, e in zip(names, actual, expected, strict=True):
        assert a.shape == e.shape, f"{name}: shape {a.shape} != {e.shape} ({case})"
    assert actual[3].dtype == np.int32, f"valid_detections dtype {actual[3].dtype}"
    for name, a in zip(names[:3], actual[:3], strict=False):
        assert a.dtype == np.float32, f"{name} dtype {a.dtype}"
    a_boxes, a_scores, a_classes, a_valid = actual
    e_boxes, e_scores, e_classes, e_valid = expected
    k = a_scores.shape[1]
    past = np.arange(k)[None, :] >= a_valid[:, None]
    assert not np.any(a_scores[past]) and not np.any(a_classes[past]), f"padding not zero {case}"
    assert not np.any(a_boxes[past]), f"padded boxes not zero ({case})"

    if case is None or not case.ties:
        np.testing.assert_array_equal(a_valid, e_valid, err_msg=f"valid_detections {case}")
        np.testing.assert_array_equal(a_classes, e_classes, err_msg=f"classes {case}")
        np.testing.assert_allclose(a_scores, e_scores, rtol=0, atol=atol, err_msg=f"{case}")
        scale = np.maximum(1.0, np.abs(e_boxes))
        np.testing.assert_array_less(
            np.abs(a_boxes - e_boxes), atol * scale + 1e-30, err_msg=f"boxes {case}"
        )
        return

    for b in range(a_scores.shape[0]):
        valid = int(a_valid[b])
        assert np.all(np.diff(a_scores[b, :valid]) <= 0), f"image {b} not sorted ({case})"
        candidates = case.scores[b][case.scores[b] > np.float32(case.score_threshold)]
        values, counts = np.unique(candidates, return_counts=True)
        tied = set(values[counts > 1].tolist())
        got = _row_keys(a_boxes[b], a_scores[b], a_classes[b], a_valid[b])
        want = _row_keys(e_boxes[b], e_scores[b], e_classes[b], e_valid[b])
        extra = _multiset_difference(got, want) + _multiset_difference(want, got)
        untied = [row for row in extra if row[1] not in tied]
        assert not untied, f"image {b}: rows differ beyond tied scores {untied[:3]} ({case})"


def _multiset_difference(a, b):
    rest = list(b)
    out = []
    for item in a:
        if item in rest:
            rest.remove(item)
        else:
            out.append(item)
    return out
