"""``combined_non_max_suppression`` in pure JAX (jit/vmap friendly, static output shapes).

Algorithm (exact, no ``N x N`` matrix):

* The per-class greedy NMS of every class only depends on the order of that class's
  candidates, so all ``(box, class)`` candidates of an image are visited in one global order
  (score descending, ties by flat index ``box * C + class``). The kept boxes then come out in
  the merge order of ``tf.image.combined_non_max_suppression`` and the visit stops as soon as
  ``K`` boxes are kept.
* Candidates are visited in blocks of ``block_size``: the best ``block_size`` candidates that
  come after the previous block. A block is found without sorting ``N * C`` scores: the best
  ``block_size`` boxes by their best class score ("box keys") necessarily contain the best
  ``block_size`` candidates, so only ``block_size * C`` scores are gathered and ranked.
* Within a block, a ``lax.while_loop`` jumps from one kept box to the next (``argmax`` of the
  alive mask), suppressing same-class candidates with ``IoU > iou_threshold`` and closing a
  class once it holds ``max_output_size_per_class`` boxes: ``O(K * block_size)`` work.
* If a block runs out before ``K`` boxes are kept and more candidates remain, the next block is
  taken, its candidates first checked against the boxes already kept. Nothing is dropped, so
  the result is exactly the sequential greedy one.
* Off the CPU (:data:`FIXED_TRIP_COUNTS`) the loops within a block have trip counts fixed at
  trace time (``min(k_cap, block_size)`` steps, each masked once nothing is left to keep), so
  XLA:GPU reads no loop condition back to the host. Only the continuation into further blocks
  (rare: a block of 1024 candidates ran out before ``K`` boxes were kept) stays a
  ``while_loop``, one condition read per extra block.

Subnormal values follow TensorFlow's flush-to-zero (rule 6 of ``reference.py``) explicitly,
not by relying on the device's floating-point mode (XLA's CPU runtime flushes, GPUs need not):
ranked scores, coordinates, sides, areas and intersections are flushed, a threshold of ``0``
compares against the largest subnormal, and returned scores are gathered from the input.

The box keys are one masked max-reduction over the scores. The mask (``score > threshold``)
is what keeps NaN scores out: XLA's CPU max-reduction does not reliably propagate a NaN, so a
plain ``max`` followed by a NaN check can miss one and return a wrong key.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from keras_retinanet.nms._subnormal import FLT_MIN as _FLT_MIN
from keras_retinanet.nms._subnormal import SUBNORMAL_MAX as _SUBNORMAL_MAX
from keras_retinanet.nms._validation import output_size, validate_arguments

#: Candidates visited per block (a larger block needs fewer continuation rounds but makes
#: every kept box cost more). Tests lower it to exercise the continuation path.
BLOCK_SIZE = 1024
#: Kept boxes compared at once with a new block.
_KEPT_CHUNK = 128
#: Loops with a trip count fixed at trace time instead of ones that stop on a data-dependent
#: condition. XLA:GPU reads a ``while_loop``'s condition back to the host on every iteration
#: (one stall per kept box); a loop of known trip count runs without reading anything. On the
#: CPU the condition costs nothing and stopping early is faster, so ``None`` (automatic) uses
#: fixed trip counts on every platform but the CPU. Tests set ``True`` to check them here.
FIXED_TRIP_COUNTS = None


def _fixed_trip_counts():
    if FIXED_TRIP_COUNTS is not None:
        return bool(FIXED_TRIP_COUNTS)
    return jax.default_backend() != "cpu"


def _canonical(x):
    """``-0.0`` and subnormals -> ``+0.0``: ordering by bits agrees with ordering by value,
    and subnormals are zeros as in TensorFlow's flush-to-zero arithmetic."""
    return jnp.where(jnp.abs(x) < _FLT_MIN, jnp.zeros_like(x), x)


def _nonnegative(x):
    """``x`` with negative, zero and subnormal values -> ``+0.0`` (a flushed ``max(x, 0)``)."""
    return jnp.where(x > _SUBNORMAL_MAX, x, 0.0)


def _compare_threshold(threshold):
    """``t'`` with ``x > t'`` equal to ``flush(x) > flush(t)``: a zero or subnormal threshold
    becomes the largest subnormal (traceable)."""
    threshold = jnp.asarray(threshold, jnp.float32)
    return jnp.where(jnp.abs(threshold) < _FLT_MIN, jnp.float32(_SUBNORMAL_MAX), threshold)


def _normalise(boxes):
    """``[..., 4]`` corners in any order -> ``[..., 5]`` ``(ymin, xmin, ymax, xmax, area)``,
    subnormal coordinates, sides and areas flushed.

    The flush around products also stops the compiler from contracting a product and a
    following add into an FMA, which would round differently from TensorFlow's float32
    arithmetic.
    """
    boxes = _canonical(boxes)
    y_min = jnp.minimum(boxes[..., 0], boxes[..., 2])
    x_min = jnp.minimum(boxes[..., 1], boxes[..., 3])
    y_max = jnp.maximum(boxes[..., 0], boxes[..., 2])
    x_max = jnp.maximum(boxes[..., 1], boxes[..., 3])
    area = _nonnegative(_nonnegative(y_max - y_min) * _nonnegative(x_max - x_min))
    return jnp.stack([y_min, x_min, y_max, x_max, area], axis=-1)


def _suppresses(a, b, iou_threshold):
    """``IoU(a, b) > iou_threshold`` for broadcastable ``[..., 5]`` normalised boxes
    (``iou_threshold`` from :func:`_compare_threshold`: a subnormal IoU never exceeds it)."""
    inter_h = _nonnegative(jnp.minimum(a[..., 2], b[..., 2]) - jnp.maximum(a[..., 0], b[..., 0]))
    inter_w = _nonnegative(jnp.minimum(a[..., 3], b[..., 3]) - jnp.maximum(a[..., 1], b[..., 1]))
    inter = _nonnegative(inter_h * inter_w)
    area_a, area_b = a[..., 4], b[..., 4]
    union = area_a + area_b - inter
    positive = (area_a > 0) & (area_b > 0)
    iou = inter / jnp.where(positive, union, 1.0)
    return positive & (iou > iou_threshold)


def _box_keys(scores, score_threshold, after=None):
    """``[N, C]`` scores -> ``[N]`` best candidate score per box (``-inf`` if none)."""
    ok = scores > score_threshold
    if after is not None:
        ok = ok & after
    return _canonical(jnp.max(jnp.where(ok, scores, -jnp.inf), axis=-1))


def _after(values, flat, prev_score, prev_index):
    """Candidates that come after ``(prev_score, prev_index)`` in the visiting order."""
    return (values < prev_score) | ((values == prev_score) & (flat > prev_index))


def _initial_state(num_classes, k_cap):
    return {
        "kept_box": jnp.zeros((k_cap, 4), jnp.float32),  # original coordinates
        "kept_norm": jnp.zeros((k_cap, 5), jnp.float32),  # normalised, for suppression
        "kept_score": jnp.zeros((k_cap,), jnp.float32),
        "kept_class": jnp.zeros((k_cap,), jnp.int32),
        "counts": jnp.zeros((num_classes,), jnp.int32),  # boxes kept per class
        "num_kept": jnp.int32(0),
        "prev_score": jnp.float32(jnp.inf),  # last candidate visited (block boundary)
        "prev_index": jnp.int32(-1),
        "more": jnp.bool_(True),  # candidates may remain after the boundary
    }


def _select_all(scores, score_threshold):
    """One image's ``[N, C]`` scores -> every candidate in visiting order (single block)."""
    masked = jnp.where(scores > score_threshold, _canonical(scores), -jnp.inf).reshape(-1)
    values, flat = lax.top_k(masked, masked.shape[0])
    return values, flat.astype(jnp.int32), values > -jnp.inf


def _top(values, ids, k, by_sort):
    """The ``k`` largest ``values`` (ties: lower position first) and their ``ids``.

    ``lax.top_k`` is fast on CPU when XLA turns it into its partial-sort kernel, which it does
    not inside loops; there ``by_sort`` uses an explicit stable sort instead.
    """
    if by_sort:
        neg, ids = lax.sort((-values, ids), num_keys=1, is_stable=True)
        return -neg[:k], ids[:k]
    # The barrier keeps later slices of the result from being folded into the sort that XLA
    # expands top_k into, which would stop it from using the partial-sort kernel.
    values, position = lax.optimization_barrier(lax.top_k(values, k))
    return values, ids[position]


def _select_block(scores, keys, state, per_class, score_threshold, m, by_sort=False):
    """The best ``m`` candidates after the state's boundary, in visiting order.

    The best ``m`` boxes by ``keys`` (each box's best remaining candidate score, ties to the
    lower box index) hold every one of the best ``m`` candidates, so only their scores are
    ranked.

    Args:
        scores: ``[N, C]``. keys: ``[N]``.

    Returns:
        ``(values [m], flat [m] = box * C + class, valid [m])``.
    """
    num_boxes, num_classes = scores.shape
    box_ids = jnp.arange(num_boxes, dtype=jnp.int32)
    _, box_idx = _top(keys, box_ids, min(m, num_boxes), by_sort)
    box_idx = jnp.sort(box_idx)  # ascending, so equal scores rank by flat index
    gathered = scores[box_idx]  # [m_boxes, C]
    flat = box_idx[:, None] * num_classes + jnp.arange(num_classes, dtype=jnp.int32)
    ok = (gathered > score_threshold) & (state["counts"] < per_class)[None, :]
    ok = ok & _after(gathered, flat, state["prev_score"], state["prev_index"])
    masked = jnp.where(ok, _canonical(gathered), -jnp.inf).reshape(-1)
    values, flat = _top(masked, flat.reshape(-1), m, by_sort)
    return values, flat, values > -jnp.inf


def _next_keys(scores, state, per_class, score_threshold):
    """``[N]`` exact box keys over the candidates not visited yet, of classes not yet full."""
    num_boxes, num_classes = scores.shape
    flat = jnp.arange(num_boxes, dtype=jnp.int32)[:, None] * num_classes
    flat = flat + jnp.arange(num_classes, dtype=jnp.int32)
    after = _after(scores, flat, state["prev_score"], state["prev_index"])
    return _box_keys(scores, score_threshold, after & (state["counts"] < per_class)[None, :])


def _suppressed_by_kept(state, cand_norm, cand_class, iou_threshold, chunk, fixed):
    """``[m]`` bool: IoU above the threshold with an already kept box of the same class."""

    rows = state["kept_score"].shape[0]

    def body(carry):
        start, hit = carry
        # dynamic_slice clamps a start past ``rows - chunk``; clamp it here too so that the
        # row mask describes the rows actually read (re-checking a few rows is harmless).
        first = jnp.minimum(start, rows - chunk)
        norm = lax.dynamic_slice_in_dim(state["kept_norm"], first, chunk)
        cls = lax.dynamic_slice_in_dim(state["kept_class"], first, chunk)
        pair = _suppresses(norm[:, None, :], cand_norm[None, :, :], iou_threshold)
        pair = pair & (cls[:, None] == cand_class[None, :])
        pair = pair & ((first + jnp.arange(chunk)) < state["num_kept"])[:, None]
        return start + chunk, hit | jnp.any(pair, axis=0)

    init = (jnp.int32(0), jnp.zeros(cand_class.shape, bool))
    if fixed:  # every chunk of the buffer; rows past num_kept are masked
        return lax.fori_loop(0, -(-rows // chunk), lambda _, carry: body(carry), init)[1]
    return lax.while_loop(lambda carry: carry[0] < state["num_kept"], body, init)[1]


def _greedy(
    boxes, scores, state, values, flat, valid, per_class, k, iou_threshold, *, first, fixed
):
    """Visits one block of candidates of one image, keeping boxes until ``k`` are kept.

    Args:
        boxes: ``[N, q, 4]``. scores: ``[N, C]`` (the returned scores are read from it:
            ``values`` are flushed). values, flat, valid: ``[m]`` block from
            :func:`_select_block`.
        k: ``[]`` int32, the number of boxes to keep.
        first: static, ``True`` when nothing can have been kept before this block.
        fixed: static, loops of fixed trip count (see :data:`FIXED_TRIP_COUNTS`).
    """
    num_classes = state["counts"].shape[0]
    q = boxes.shape[1]
    cand_class = flat % num_classes
    cand_box = boxes[flat // num_classes, cand_class if q > 1 else 0]  # [m, 4]
    cand_norm = _normalise(cand_box)
    cand_score = scores.reshape(-1)[flat]
    alive = valid
    if not first:
        alive = alive & (state["counts"][cand_class] < per_class)
        chunk = min(_KEPT_CHUNK, state["kept_score"].shape[0])
        alive = alive & ~_suppressed_by_kept(
            state, cand_norm, cand_class, iou_threshold, chunk, fixed
        )

    def cond(carry):
        st, alive = carry
        return (st["num_kept"] < k) & jnp.any(alive)

    def body(carry):
        st, alive = carry
        st = dict(st)
        i = jnp.argmax(alive)  # the best candidate neither kept nor suppressed
        cls = cand_class[i]
        slot = st["num_kept"]
        st["kept_box"] = st["kept_box"].at[slot].set(cand_box[i])
        st["kept_norm"] = st["kept_norm"].at[slot].set(cand_norm[i])
        st["kept_score"] = st["kept_score"].at[slot].set(cand_score[i])
        st["kept_class"] = st["kept_class"].at[slot].set(cls)
        st["counts"] = st["counts"].at[cls].add(1)
        st["num_kept"] = slot + 1
        closed = st["counts"][cls] >= per_class
        drop = (cand_class == cls) & (closed | _suppresses(cand_norm[i], cand_norm, iou_threshold))
        return st, (alive & ~drop).at[i].set(False)

    if fixed:
        # At most min(k_cap, m) boxes can be kept from this block: that many steps, each a
        # no-op (every update masked) once the block is exhausted or k boxes are kept.
        def masked_body(_, carry):
            st, alive = carry
            active = cond(carry)
            new_st, new_alive = body(carry)
            keep = functools.partial(jnp.where, active)
            return jax.tree.map(keep, new_st, st), keep(new_alive, alive)

        steps = min(state["kept_score"].shape[0], values.shape[0])
        state, _ = lax.fori_loop(0, steps, masked_body, (state, alive))
    else:
        state, _ = lax.while_loop(cond, body, (state, alive))
    state = dict(state)
    m = values.shape[0]
    state["more"] = valid[m - 1] & (state["num_kept"] < k)
    state["prev_score"] = values[m - 1]
    state["prev_index"] = flat[m - 1]
    return state


@functools.partial(jax.jit, static_argnames=("k_cap", "block", "fixed"))
def _combined_nms(
    boxes,
    scores,
    per_class,
    k,
    iou_threshold,
    score_threshold,
    clip_boxes,
    *,
    k_cap,
    block,
    fixed=False,
):
    """Batched core.

    Args:
        boxes: ``[B, N, q, 4]``. scores: ``[B, N, C]``.
        per_class, k: ``[]`` int32 caps per class and per image (``k <= k_cap``).
        iou_threshold, score_threshold: ``[]`` float32. clip_boxes: ``[]`` bool.
        k_cap: static number of output rows. block: static block size. fixed: static,
            loops of fixed trip count (:data:`FIXED_TRIP_COUNTS`).

    Returns:
        ``(boxes [B, k_cap, 4], scores [B, k_cap], classes [B, k_cap], valid [B])``, rows past
        ``valid`` zero.
    """
    batch, num_boxes, _, _ = boxes.shape
    num_classes = scores.shape[2]
    state = _initial_state(num_classes, k_cap)
    state = jax.tree.map(lambda x: jnp.broadcast_to(x, (batch, *x.shape)), state)
    shared = (None, None, None)  # per_class, k, iou_threshold
    score_threshold = _compare_threshold(score_threshold)
    args = (per_class, k, _compare_threshold(iou_threshold))

    if block >= num_boxes * num_classes:
        # Every candidate fits in one block: no boundary, no continuation.
        values, flat, valid = jax.vmap(_select_all, in_axes=(0, None))(scores, score_threshold)
        greedy = jax.vmap(
            functools.partial(_greedy, first=True, fixed=fixed), in_axes=(0, 0, 0, 0, 0, 0, *shared)
        )
        state = greedy(boxes, scores, state, values, flat, valid, *args)
    else:
        select = jax.vmap(_select_block, in_axes=(0, 0, 0, None, None, None, None))
        step = jax.vmap(
            functools.partial(_greedy, first=False, fixed=fixed),
            in_axes=(0, 0, 0, 0, 0, 0, *shared),
        )
        next_keys = jax.vmap(_next_keys, in_axes=(0, 0, None, None))

        first = jax.vmap(
            functools.partial(_greedy, first=True, fixed=fixed), in_axes=(0, 0, 0, 0, 0, 0, *shared)
        )

        def round_body(state):
            keys = next_keys(scores, state, per_class, score_threshold)
            values, flat, valid = select(
                scores, keys, state, per_class, score_threshold, block, True
            )
            return step(boxes, scores, state, values, flat, valid, *args)

        def continuation(state):
            return lax.while_loop(lambda st: jnp.any(st["more"]), round_body, state)

        keys = jax.vmap(_box_keys, in_axes=(0, None))(scores, score_threshold)
        values, flat, valid = select(scores, keys, state, per_class, score_threshold, block, False)
        state = first(boxes, scores, state, values, flat, valid, *args)
        # The loop (and its full passes over the scores) only runs when a block ran out.
        state = lax.cond(jnp.any(state["more"]), continuation, lambda st: st, state)

    num_kept = state["num_kept"]
    row_valid = jnp.arange(k_cap)[None, :] < num_kept[:, None]
    clipped = jnp.clip(_canonical(state["kept_box"]), 0.0, 1.0)
    kept_box = jnp.where(clip_boxes, clipped, state["kept_box"])
    return (
        jnp.where(row_valid[..., None], kept_box, 0.0),
        jnp.where(row_valid, state["kept_score"], 0.0),
        jnp.where(row_valid, state["kept_class"].astype(jnp.float32), 0.0),
        num_kept,
    )


def _bucket(n):
    """Next power of two (``0`` stays ``0``)."""
    return 0 if n <= 0 else 1 << (int(n) - 1).bit_length()


#: Eager inputs with at most this many scores are padded to power-of-two shapes, so that
#: differently sized small calls share a few compiled programs.
_SMALL = 1 << 18
#: Below this many (padded) boxes x classes, small calls keep room for every candidate.
_SMALL_KEPT = 1 << 14


def _pad_small(boxes, scores, xp):
    """Pads ``B``, ``N``, ``C`` to powers of two (``B >= 4``, ``N >= 8``) and broadcasts
    shared boxes to every class. Padded rows and classes score ``-inf``: never candidates.

    ``xp`` is NumPy for host inputs (no per-shape compilation of the padding ops) or
    ``jax.numpy`` for device arrays (no host round trip)."""
    batch, num_boxes, q, _ = boxes.shape
    num_classes = scores.shape[2]
    b, n, c = max(_bucket(batch), 4), max(_bucket(num_boxes), 8), _bucket(num_classes)
    pad = ((0, b - batch), (0, n - num_boxes), (0, c - num_classes))
    scores = xp.pad(scores, pad, constant_values=-np.inf)
    if q == 1:
        boxes = xp.broadcast_to(boxes, (batch, num_boxes, num_classes, 4))
    boxes = xp.pad(boxes, (*pad, (0, 0)))
    return boxes, scores


def combined_non_max_suppression(
    boxes,
    scores,
    max_output_size_per_class,
    max_total_size,
    iou_threshold=0.5,
    score_threshold=float("-inf"),
    pad_per_class=False,
    clip_boxes=True,
    *,
    block_size=None,
):
    """``tf.image.combined_non_max_suppression`` for JAX arrays (see ``reference.py``).

    Works eagerly and under ``jax.jit`` / ``jax.vmap`` (the sizes, ``pad_per_class`` and
    ``block_size`` are static; the thresholds may be traced).

    Args:
        boxes: ``[B, N, q, 4]`` with ``q`` 1 or ``num_classes``.
        scores: ``[B, N, num_classes]``.
        max_output_size_per_class, max_total_size: positive Python ints.
        iou_threshold, score_threshold: floats or scalar arrays.
        pad_per_class, clip_boxes: Python bools (``clip_boxes`` may be a traced bool).
        block_size: candidates visited per block (default :data:`BLOCK_SIZE`).

    Returns:
        ``nmsed_boxes [B, K, 4]``, ``nmsed_scores [B, K]``, ``nmsed_classes [B, K]`` float32 and
        ``valid_detections [B]`` int32.
    """
    # Eager calls on host data (NumPy, lists) pad and slice with NumPy: each eager jax.numpy
    # op would compile a small program per new shape, costing more than the NMS itself.
    host = not isinstance(boxes, jax.Array) and not isinstance(scores, jax.Array)
    xp = np if host else jnp
    boxes = xp.asarray(boxes, xp.float32)
    scores = xp.asarray(scores, xp.float32)
    per_class, total, iou_threshold, score_threshold = validate_arguments(
        boxes.shape,
        scores.shape,
        max_output_size_per_class,
        max_total_size,
        iou_threshold,
        score_threshold,
    )
    return run(
        boxes,
        scores,
        per_class,
        total,
        iou_threshold,
        score_threshold,
        pad_per_class,
        clip_boxes,
        block_size=block_size,
    )


def run(
    boxes,
    scores,
    per_class,
    total,
    iou_threshold,
    score_threshold,
    pad_per_class,
    clip_boxes,
    *,
    block_size=None,
):
    """:func:`combined_non_max_suppression` on arguments already checked by
    ``validate_arguments`` (sizes as ``int``, thresholds as ``float`` or traced)."""
    host = not isinstance(boxes, jax.Array) and not isinstance(scores, jax.Array)
    xp = np if host else jnp
    boxes = xp.asarray(boxes, xp.float32)
    scores = xp.asarray(scores, xp.float32)
    block = int(BLOCK_SIZE if block_size is None else block_size)
    if block <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    batch, num_boxes, _, _ = boxes.shape
    num_classes = scores.shape[2]
    k = output_size(per_class, total, num_classes, pad_per_class)
    if num_boxes == 0 or num_classes == 0:
        zeros = np.zeros((batch, k), np.float32)
        empty = (np.zeros((batch, k, 4), np.float32), zeros, zeros, np.zeros((batch,), np.int32))
        return tuple(jnp.asarray(x) for x in empty)

    traced = isinstance(boxes, jax.core.Tracer) or isinstance(scores, jax.core.Tracer)
    if not traced and batch * num_boxes * num_classes <= _SMALL:
        boxes, scores = _pad_small(boxes, scores, xp)
    candidates = boxes.shape[1] * scores.shape[2]
    k_cap = min(k, candidates)  # never more kept boxes than candidates
    if not traced:
        # Eager calls round the kept buffer up (``k`` itself stays a traced argument), so that
        # calls differing only in their sizes share a compiled program.
        k_cap = candidates if candidates <= _SMALL_KEPT else min(max(_bucket(k), 256), candidates)
    outputs = _combined_nms(
        boxes,
        scores,
        jnp.int32(min(per_class, num_boxes)),  # the cap never binds above N; fits int32
        jnp.int32(min(k, k_cap)),
        jnp.asarray(iou_threshold, jnp.float32),
        jnp.asarray(score_threshold, jnp.float32),
        jnp.asarray(clip_boxes, bool),
        k_cap=k_cap,
        block=block,
        fixed=_fixed_trip_counts(),
    )
    if host:
        outputs = [np.asarray(x) for x in outputs]
    nmsed_boxes, nmsed_scores, nmsed_classes, valid = (x[:batch] for x in outputs)
    if k_cap != k:
        rows = ((0, 0), (0, max(0, k - k_cap)))
        nmsed_boxes = xp.pad(nmsed_boxes[:, :k], (*rows, (0, 0)))
        nmsed_scores = xp.pad(nmsed_scores[:, :k], rows)
        nmsed_classes = xp.pad(nmsed_classes[:, :k], rows)
    outputs = (nmsed_boxes, nmsed_scores, nmsed_classes, valid)
    return tuple(jnp.asarray(x) for x in outputs) if host else outputs
