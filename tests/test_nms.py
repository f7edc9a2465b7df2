"""``combined_non_max_suppression`` on the current Keras backend against the NumPy reference.

Runs with whatever ``KERAS_BACKEND`` selects; TensorFlow is only needed for its own backend.
"""

import math

import keras
import numpy as np
import pytest
from nms_cases import assert_same_detections, edge_cases, generate_cases

from keras_retinanet.nms import combined_non_max_suppression_reference as reference
from keras_retinanet.ops import combined_non_max_suppression

BACKEND = keras.backend.backend()
# Every case compiles a program on JAX (shapes are bucketed, but still): test a subset there;
# the parity session checks JAX on the others against TensorFlow's op.
STRIDE = {"jax": 32, "torch": 4}.get(BACKEND, 2)
ALL_CASES = generate_cases()
CASES = ALL_CASES[::STRIDE]


def run(boxes, scores, *args, **kwargs):
    out = combined_non_max_suppression(
        np.asarray(boxes, np.float32), np.asarray(scores, np.float32), *args, **kwargs
    )
    return [keras.ops.convert_to_numpy(x) for x in out]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"case{c.index}")
def test_generated_case_matches_reference(case):
    expected = reference(case.boxes, case.scores, **case.kwargs())
    assert_same_detections(run(case.boxes, case.scores, **case.kwargs()), expected, case=case)


def test_case_generator_is_seeded_and_large():
    cases = ALL_CASES
    assert len(cases) >= 2000
    again = generate_cases()
    assert all(
        np.array_equal(a.scores, b.scores, equal_nan=True)
        for a, b in zip(cases, again, strict=True)
    )
    n = [c.boxes.shape[1] for c in cases]
    assert min(n) == 0 and max(n) > 4000
    assert {c.boxes.shape[2] == 1 for c in cases} == {True, False}
    assert any(c.ties for c in cases) and any(math.isinf(c.score_threshold) for c in cases)
    assert {0.0, 1.0} <= {c.iou_threshold for c in cases}


# --- hand-made edge cases -----------------------------------------------------------------

SUBNORMAL = [c for c in edge_cases() if c.name.startswith("subnormal")]


@pytest.mark.parametrize("case", SUBNORMAL, ids=lambda c: c.name.replace(" ", "_"))
def test_subnormal_values_are_flushed_to_zero_as_tensorflow_does(case):
    """Rule 6 of the reference (TensorFlow's CPU kernel runs with denormals flushed): on the
    TensorFlow backend this checks the reference against the native op, elsewhere the
    backend's version against the reference; returned scores must be the input values,
    bit for bit."""
    actual = run(case.boxes, case.scores, **case.kwargs())
    expected = reference(case.boxes, case.scores, **case.kwargs())
    assert_same_detections(actual, expected, case=case)
    np.testing.assert_array_equal(actual[1], expected[1])
    np.testing.assert_array_equal(actual[0], expected[0])


def test_subnormal_edge_cases_decide_what_flushing_decides():
    """The subnormal cases are only worth running if flushing changes their outcome: without
    it, every one would keep a different set or order of boxes."""
    expected_counts = {
        "subnormal areas": 2,  # area 1e-40 -> 0: neither suppresses the other
        "subnormal widths": 2,
        "subnormal intersection": 2,  # inter 1e-38 -> 0: IoU 0, not above 0
        "subnormal iou": 3,
        "subnormal score, threshold 0": 1,  # 1e-40 is not above 0
        "subnormal scores tie with 0": 2,
        "subnormal score threshold": 1,  # the threshold is 0: 1e-40 and 3e-40 are not above
        "subnormal coordinates clipped": 1,
    }
    assert {c.name for c in SUBNORMAL} == set(expected_counts)
    for case in SUBNORMAL:
        boxes, scores, _, valid = reference(case.boxes, case.scores, **case.kwargs())
        assert int(valid[0]) == expected_counts[case.name], case
    ties = next(c for c in SUBNORMAL if c.name == "subnormal scores tie with 0")
    boxes, scores, _, _ = reference(ties.boxes, ties.scores, **ties.kwargs())
    # Tied with 0, in box order: box 0 (score 1e-40) first, then box 2 (2e-40).
    np.testing.assert_array_equal(boxes[0, :2], np.clip(ties.boxes[0, [0, 2], 0], 0, 1))
    np.testing.assert_array_equal(scores[0, :2], ties.scores[0, [0, 2], 0])
    clipped = next(c for c in SUBNORMAL if c.name == "subnormal coordinates clipped")
    boxes, _, _, _ = reference(clipped.boxes, clipped.scores, **clipped.kwargs())
    np.testing.assert_array_equal(boxes[0, 0], [0, 0, 1, 1])


BOXES = np.array(
    [[[[0, 0, 1, 1]], [[0, 0.1, 1, 1.1]], [[0, 1, 1, 2]], [[2, 2, 3, 3]], [[0.5, 0.5, 0.5, 1]]]],
    np.float32,
)  # [1, 5, 1, 4]: 0/1 overlap (IoU 0.818), 0/2 touch, 4 has zero area


def scores_for(*columns):
    return np.array(columns, np.float32).T[None]  # [1, 5, C]


def check(boxes, scores, *args, **kwargs):
    actual = run(boxes, scores, *args, **kwargs)
    expected = reference(boxes, scores, *args, **kwargs)
    assert_same_detections(actual, expected)
    return actual


def test_basic_suppression_and_merge_order():
    scores = scores_for([0.9, 0.8, 0.7, 0.6, 0.5], [0.1, 0.95, 0.2, 0.3, 0.05])
    boxes_out, scores_out, classes, valid = check(BOXES, scores, 10, 10, 0.5, 0.0, clip_boxes=False)
    # class 0 keeps boxes 0, 2, 3, 4 (1 overlaps 0); class 1 keeps 1, 3, 2, 4 (0 overlaps 1)
    assert valid.tolist() == [8]
    np.testing.assert_allclose(scores_out[0, :8], [0.95, 0.9, 0.7, 0.6, 0.5, 0.3, 0.2, 0.05])
    assert classes[0, :8].tolist() == [1, 0, 0, 0, 0, 1, 1, 1]
    assert scores_out.dtype == np.float32 and classes.dtype == np.float32
    assert valid.dtype == np.int32 and boxes_out.shape == (1, 10, 4)


@pytest.mark.parametrize("iou", [0.0, 1.0, 0.8181818])
def test_iou_threshold_extremes(iou):
    scores = scores_for([0.9, 0.8, 0.7, 0.6, 0.5])
    _, _, _, valid = check(BOXES, scores, 10, 10, iou)
    # 0: every overlap suppresses (touching boxes do not: IoU 0 is not > 0); 1: nothing does.
    assert valid.tolist() == [{0.0: 4, 1.0: 5}.get(iou, 5)]


def test_score_threshold_is_strict():
    scores = scores_for([0.9, 0.8, 0.7, 0.6, 0.5])
    _, out_scores, _, valid = check(BOXES, scores, 10, 10, 1.0, 0.7)
    assert valid.tolist() == [2] and out_scores[0, :2].tolist() == pytest.approx([0.9, 0.8])


def test_nan_scores_are_never_selected():
    scores = scores_for([np.nan, 0.8, np.nan, 0.6, 0.5])
    _, out_scores, _, valid = check(BOXES, scores, 10, 10)
    assert valid.tolist() == [3] and not np.isnan(out_scores).any()


def test_nan_score_threshold_selects_nothing():
    scores = scores_for([0.9, 0.8, 0.7, 0.6, 0.5])
    assert check(BOXES, scores, 10, 10, 0.5, float("nan"))[3].tolist() == [0]


@pytest.mark.parametrize("q", [1, 3])
def test_no_boxes(q):
    out = check(np.zeros((2, 0, q, 4)), np.zeros((2, 0, 3)), 4, 7)
    assert [x.shape for x in out] == [(2, 7, 4), (2, 7), (2, 7), (2,)]
    assert not any(np.any(x) for x in out)


def test_zero_area_boxes_never_suppress_nor_are_suppressed():
    boxes = np.array([[[[0, 0, 0, 1]], [[0, 0, 0, 1]], [[1, 1, 1, 1]]]], np.float32)
    scores = np.array([[[0.9], [0.8], [0.7]]], np.float32)
    assert check(boxes, scores, 5, 5, 0.0)[3].tolist() == [3]


def test_inverted_corners_give_the_same_selection_and_original_coordinates():
    scores = scores_for([0.9, 0.8, 0.7, 0.6, 0.5])
    inverted = BOXES[..., [2, 3, 0, 1]]
    a = check(BOXES, scores, 10, 10, clip_boxes=False)
    b = check(inverted, scores, 10, 10, clip_boxes=False)
    np.testing.assert_array_equal(a[3], b[3])
    np.testing.assert_array_equal(b[0], a[0][..., [2, 3, 0, 1]])


def test_pad_per_class_output_length():
    scores = scores_for([0.9, 0.8, 0.7, 0.6, 0.5], [0.1, 0.95, 0.2, 0.3, 0.05])
    out = check(BOXES, scores, 3, 100, pad_per_class=True)
    assert out[1].shape == (1, 6)  # min(100, 3 * 2 classes)
    out = check(BOXES, scores, 7, 100, pad_per_class=True)
    assert out[1].shape == (1, 14)  # uses max_output_size_per_class, not min(., N)


def test_clip_boxes():
    boxes = np.array([[[[-1, -2, 3, 0.5]], [[5, 5, 6, 6]]]], np.float32)
    scores = np.array([[[0.9], [0.8]]], np.float32)
    clipped = check(boxes, scores, 2, 2, clip_boxes=True)[0]
    raw = check(boxes, scores, 2, 2, clip_boxes=False)[0]
    np.testing.assert_array_equal(clipped[0], [[0, 0, 1, 0.5], [1, 1, 1, 1]])
    np.testing.assert_array_equal(raw[0], boxes[0, :, 0])


def test_total_size_larger_than_kept_and_per_class_cap():
    scores = scores_for([0.9, 0.8, 0.7, 0.6, 0.5])
    _, out_scores, _, valid = check(BOXES, scores, 2, 50, 1.0)
    assert valid.tolist() == [2] and out_scores.shape == (1, 50)


def test_per_class_boxes():
    rng = np.random.default_rng(3)
    boxes = rng.uniform(0, 1, (2, 40, 4, 4)).astype(np.float32)
    scores = rng.permutation(320).reshape(2, 40, 4).astype(np.float32) / 320
    check(boxes, scores, 5, 12, 0.3, 0.2)


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "boxes_shape, scores_shape, kwargs, name",
    [
        ((1, 5, 4), (1, 5, 2), {}, "boxes"),
        ((1, 5, 1, 3), (1, 5, 2), {}, "boxes"),
        ((1, 5, 1, 4), (1, 5), {}, "scores"),
        ((2, 5, 1, 4), (1, 5, 2), {}, "batch"),
        ((1, 6, 1, 4), (1, 5, 2), {}, "scores"),
        ((1, 5, 3, 4), (1, 5, 2), {}, "q"),
        ((1, 5, 1, 4), (1, 5, 2), {"max_output_size_per_class": 0}, "max_output_size_per_class"),
        ((1, 5, 1, 4), (1, 5, 2), {"max_output_size_per_class": 2.5}, "max_output_size_per_class"),
        ((1, 5, 1, 4), (1, 5, 2), {"max_total_size": -1}, "max_total_size"),
        ((1, 5, 1, 4), (1, 5, 2), {"iou_threshold": 1.5}, "iou_threshold"),
        ((1, 5, 1, 4), (1, 5, 2), {"iou_threshold": -0.1}, "iou_threshold"),
        ((1, 5, 1, 4), (1, 5, 2), {"iou_threshold": float("nan")}, "iou_threshold"),
    ],
)
def test_invalid_arguments_raise_value_error(boxes_shape, scores_shape, kwargs, name):
    args = dict(max_output_size_per_class=3, max_total_size=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        combined_non_max_suppression(
            np.zeros(boxes_shape, np.float32), np.zeros(scores_shape, np.float32), **args
        )
    with pytest.raises(ValueError, match=name):
        reference(np.zeros(boxes_shape, np.float32), np.zeros(scores_shape, np.float32), **args)


# --- JAX specifics ------------------------------------------------------------------------

jax_only = pytest.mark.skipif(BACKEND != "jax", reason="JAX backend only")
torch_only = pytest.mark.skipif(BACKEND != "torch", reason="PyTorch backend only")


def _clustered(seed, batch, n, classes):
    """Heavily overlapping boxes: most candidates are suppressed."""
    rng = np.random.default_rng(seed)
    centre = rng.uniform(0.3, 0.7, (batch, n, 1, 2)) + rng.normal(0, 0.01, (batch, n, 1, 2))
    boxes = np.concatenate([centre - 0.2, centre + 0.2], -1).astype(np.float32)
    scores = rng.permutation(batch * n * classes).reshape(batch, n, classes) / (batch * n * classes)
    return boxes, scores.astype(np.float32)


@jax_only
def test_jax_jit_and_vmap():
    import jax

    from keras_retinanet.nms import _jax

    boxes, scores = _clustered(0, 3, 200, 6)
    expected = reference(boxes, scores, 4, 10, 0.4, 0.1)
    fn = jax.jit(lambda b, s, t: _jax.combined_non_max_suppression(b, s, 4, 10, 0.4, t))
    assert_same_detections(fn(boxes, scores, 0.1), expected)
    per_image = jax.vmap(
        lambda b, s: _jax.combined_non_max_suppression(
            b[None], s[None], 4, 10, 0.4, 0.1, block_size=64
        )
    )(boxes, scores)
    squeezed = [x[:, 0] for x in per_image]
    assert_same_detections(squeezed, expected)


@jax_only
@pytest.mark.parametrize("block_size", [1, 3, 16])
def test_jax_block_continuation_is_exact(block_size):
    from keras_retinanet.nms import _jax

    # Clustered boxes: the first blocks are nearly all suppressed, so later blocks (each
    # checked against the boxes already kept) must supply the remaining detections.
    boxes, scores = _clustered(1, 2, 300, 3)
    kept = []
    for args in [(5, 12, 0.3, 0.0), (50, 40, 0.0, 0.0), (2, 100, 0.7, float("-inf"))]:
        expected = reference(boxes, scores, *args)
        actual = _jax.combined_non_max_suppression(boxes, scores, *args, block_size=block_size)
        assert_same_detections(actual, expected)
        kept.append(int(expected[3].max()))
    assert block_size > 3 or max(kept) > block_size  # more detections than one block holds


@jax_only
def test_jax_large_input_runs_blocked():
    from keras_retinanet.nms import _jax

    boxes, scores = _clustered(2, 1, 6000, 80)  # 480k scores: not padded, several rounds
    expected = reference(boxes, scores, 100, 100, 0.5, 0.99)
    assert_same_detections(
        _jax.combined_non_max_suppression(boxes, scores, 100, 100, 0.5, 0.99, block_size=256),
        expected,
    )


@jax_only
@pytest.mark.parametrize("block_size", [8, None])
def test_jax_nan_beside_the_best_score_of_a_box(block_size):
    """A box whose classes 0 and 11 score NaN and class 3 holds the best score overall: its
    key must be 0.999 (XLA's CPU max-reduction may skip over a NaN instead of returning it,
    so a NaN check on the plain max misses it)."""
    from keras_retinanet.nms import _jax

    rng = np.random.default_rng(11)
    scores = rng.uniform(0, 0.9, (1, 64, 12)).astype(np.float32)
    scores[0, 5, [0, 11]] = np.nan
    scores[0, 5, 3] = 0.999
    boxes = rng.uniform(0, 1, (1, 64, 12, 4)).astype(np.float32)
    args = (3, 20, 0.5, float("-inf"))
    expected = reference(boxes, scores, *args)
    assert expected[1][0, 0] == np.float32(0.999)
    actual = _jax.combined_non_max_suppression(boxes, scores, *args, block_size=block_size)
    assert_same_detections(actual, expected)


def _late_duplicate():
    """180 disjoint boxes, plus a copy of box 140 scored just below box 150: it is visited
    when more than 128 boxes are kept, so it must be checked against kept rows past 128."""
    n = 180
    y = np.arange(n, dtype=np.float32) * 2
    boxes = np.stack([y, np.zeros(n), y + 1, np.ones(n)], -1).astype(np.float32)
    boxes = np.concatenate([boxes, boxes[140:141]])[None, :, None, :]
    ranked = np.linspace(1, 0.5, n)
    scores = np.concatenate([ranked, [ranked[150] - 1e-4]]).astype(np.float32)[None, :, None]
    return boxes, scores


@jax_only
def test_jax_continuation_checks_every_kept_row():
    import jax

    from keras_retinanet.nms import _jax

    boxes, scores = _late_duplicate()
    args = (200, 200, 0.5, 0.0)
    expected = reference(boxes, scores, *args, clip_boxes=False)
    assert int(expected[3][0]) == 180  # the duplicate is suppressed
    # Under jit the kept buffer holds 200 rows, not a multiple of the 128-row chunk.
    fn = jax.jit(
        lambda b, s: _jax.combined_non_max_suppression(b, s, *args, clip_boxes=False, block_size=3)
    )
    assert_same_detections(fn(boxes, scores), expected)


# --- PyTorch specifics --------------------------------------------------------------------


@torch_only
@pytest.mark.parametrize("block_size", [1, 3, 16])
def test_torch_block_continuation_is_exact(block_size):
    from keras_retinanet.nms import _torch

    boxes, scores = _clustered(1, 2, 300, 3)
    for args in [(5, 12, 0.3, 0.0), (50, 40, 0.0, 0.0), (2, 100, 0.7, float("-inf"))]:
        expected = reference(boxes, scores, *args)
        actual = _torch.combined_non_max_suppression(boxes, scores, *args, block_size=block_size)
        assert_same_detections([x.numpy() for x in actual], expected)


@torch_only
def test_torch_continuation_checks_every_kept_row():
    from keras_retinanet.nms import _torch

    boxes, scores = _late_duplicate()
    args = (200, 200, 0.5, 0.0)
    expected = reference(boxes, scores, *args, clip_boxes=False)
    actual = _torch.combined_non_max_suppression(
        boxes, scores, *args, clip_boxes=False, block_size=3
    )
    assert_same_detections([x.numpy() for x in actual], expected)


@torch_only
def test_torch_outputs_stay_on_input_device():
    import torch

    from keras_retinanet.nms import _torch

    boxes, scores = _clustered(3, 2, 50, 3)
    out = _torch.combined_non_max_suppression(
        torch.from_numpy(boxes), torch.from_numpy(scores), 5, 10, 0.5, 0.1
    )
    assert all(x.device.type == "cpu" for x in out)
    assert out[3].dtype == torch.int32 and out[2].dtype == torch.float32


@torch_only
def test_torch_cuda():
    import torch

    from keras_retinanet.nms import _torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    boxes, scores = _clustered(4, 2, 400, 5)
    expected = reference(boxes, scores, 5, 20, 0.5, 0.1)
    out = _torch.combined_non_max_suppression(
        torch.from_numpy(boxes).cuda(),
        torch.from_numpy(scores).cuda(),
        5,
        20,
        0.5,
        0.1,
        block_size=64,
    )
    assert all(x.device.type == "cuda" for x in out)
    assert_same_detections([x.cpu().numpy() for x in out], expected)


@pytest.mark.skipif(BACKEND != "torch", reason="torch autograd")
def test_torch_accepts_inputs_that_require_grad():
    """A detector called outside ``torch.no_grad()`` hands NMS boxes that require grad; NMS
    is not differentiable (as TensorFlow's op) and must not fail on them."""
    import torch

    boxes = torch.tensor(BOXES, requires_grad=True)
    scores = torch.tensor(scores_for([0.9, 0.8, 0.7, 0.6, 0.5]), requires_grad=True)
    out = combined_non_max_suppression(boxes * 1.0, scores * 1.0, 10, 10)
    expected = reference(BOXES, scores_for([0.9, 0.8, 0.7, 0.6, 0.5]), 10, 10)
    assert not any(x.requires_grad for x in out)
    assert_same_detections([x.numpy() for x in out], expected)


@pytest.fixture
def fixed_trip_counts():
    from keras_retinanet.nms import _jax

    previous = _jax.FIXED_TRIP_COUNTS
    _jax.FIXED_TRIP_COUNTS = True
    try:
        yield _jax
    finally:
        _jax.FIXED_TRIP_COUNTS = previous


@jax_only
def test_jax_fixed_trip_count_loops_give_the_same_detections(fixed_trip_counts):
    """The accelerator form of the JAX loops (fixed trip counts, masked steps), run here on the
    CPU: every hand-made case (continuations included) and a sample of the generated ones."""
    cases = [c for c in edge_cases() if not c.ties and c.name.startswith(("continuation", "per"))]
    cases += [c for c in edge_cases() if c.name.startswith(("merge", "subnormal", "nan"))]
    cases += ALL_CASES[::401]
    for case in cases:
        expected = reference(case.boxes, case.scores, **case.kwargs())
        assert_same_detections(run(case.boxes, case.scores, **case.kwargs()), expected, case=case)


@jax_only
def test_jax_fixed_trip_counts_leave_no_data_dependent_loop_in_one_block(fixed_trip_counts):
    """With every candidate in one block, the traced program has no ``while`` (a ``scan``
    only), so XLA:GPU has no loop condition to read back; the CPU form has one."""
    import jax

    boxes = np.random.default_rng(0).uniform(0, 1, (2, 50, 1, 4)).astype(np.float32)
    scores = np.random.default_rng(1).uniform(0, 1, (2, 50, 3)).astype(np.float32)

    def primitives(fixed):
        fixed_trip_counts.FIXED_TRIP_COUNTS = fixed
        jaxpr = jax.make_jaxpr(
            lambda b, s: fixed_trip_counts.combined_non_max_suppression(b, s, 10, 20)
        )(boxes, scores)
        return str(jaxpr)

    assert " while[" not in primitives(True) and "scan[" in primitives(True)
    assert " while[" in primitives(False)
