"""``combined_non_max_suppression`` in pure PyTorch (vectorised over the batch, device-resident).

Every ``(box, class)`` candidate of an image is visited in one global order (score descending,
ties by ``box * C + class``), the order of the merged output, so the boxes kept by per-class
greedy NMS under both caps are the first ``K`` kept in that order. ``torchvision.ops.batched_nms``
is not used: its IoU arithmetic and tie handling differ from TensorFlow's, and exact agreement is
required.

Host synchronisations: at most :data:`HOST_SYNCS` (3) per call, whatever ``K``, ``B``, ``C`` or
the number of boxes; all go through :func:`_host_read`, each reading a few integers.

1. Read whether a score is NaN and the number of candidates of the fullest image, ``M`` (exact
   up to ``block_size``). Phase A takes the first ``L = min(block_size, M)`` candidates of
   every image in visiting order (fixed-size ``topk``: the best ``L`` boxes by their best
   candidate score hold them) and runs greedy NMS on them in a loop of ``min(K, L,
   per_class * C)`` steps, a count known on the host: each step keeps the first candidate still
   alive of every image (none once all are dropped) and drops the candidates of its class that
   it suppresses, or all of them once the class is full.
2. Only if ``M > block_size`` (or a score is NaN): read whether an image still has free rows
   and unvisited candidates.
3. Only then: read how many candidates of those images, of classes not yet full, are left,
   and how many rows are free. Phase B runs on all of them at once (suppressed first by phase
   A's kept boxes), so nothing more is read.

Typical detector outputs (``K = 100``, a few thousand candidates) need one or two reads. Every
tensor's shape follows from the static shapes and these reads, never from other values; no
boolean-mask indexing, no ``nonzero``, no per-call device constants (scalars are Python numbers).

Subnormal values follow TensorFlow's flush-to-zero (rule 6 of ``reference.py``) without a
pass over the scores: a threshold of ``0`` compares against the largest subnormal instead, the
few values that are ranked are flushed, and so are coordinates, sides, areas and
intersections; returned scores are gathered from the input.

Exactness: IoU is computed with the operations of ``reference.py`` in the same order, each an
eager float32 kernel, so ``area_i + area_j - inter`` is never contracted into a fused
multiply-add with ``inter = h * w``. This holds in eager mode only: ``torch.compile`` (inductor)
may fuse the kernels and contract, which can flip a decision where an IoU equals the threshold.
"""

import numpy as np
import torch

from keras_retinanet.nms._subnormal import FLT_MIN as _FLT_MIN
from keras_retinanet.nms._subnormal import SUBNORMAL_MAX as _SUBNORMAL_MAX
from keras_retinanet.nms._subnormal import compare_threshold
from keras_retinanet.nms._validation import output_size, validate_arguments

#: Candidates per image of phase A (more: a second host read, and phase B if not done).
BLOCK_SIZE = 1024
#: Most host synchronisations of one call.
HOST_SYNCS = 3
_NEG_INF = float("-inf")


def _host_read(tensor):
    """The one way this module reads device values: a small int64 tensor -> list of ints."""
    return tensor.tolist()


def _flush(x):
    """``-0.0`` and subnormals -> ``+0.0`` (NaN, infinities and normals unchanged): ordering
    by bits agrees with ordering by value, and subnormals are zeros as in TensorFlow's
    flush-to-zero arithmetic."""
    return torch.where(x.abs() < _FLT_MIN, 0.0, x)


def _topk_stable(values, k):
    """``torch.topk`` along the last axis with ties to the lower index.

    Args:
        values: ``[B, L]`` float32 without NaN or ``-0.0``.

    Returns:
        ``(values [B, k], indices [B, k])`` in descending order.
    """
    bits = values.contiguous().view(torch.int32).to(torch.int64)
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # monotone in the float value
    length = values.shape[-1]
    position = torch.arange(length - 1, -1, -1, device=values.device, dtype=torch.int64)
    _, index = torch.topk(ordered * (1 << 32) + position, k, dim=-1)
    return values.gather(-1, index), index


def _box_keys(scores, score_threshold, exact):
    """``[B, N, C]`` -> ``[B, N]`` best candidate score per box (``-inf`` if none).

    Not ``exact``: one ``amax`` pass, and a box with a NaN score gets NaN (check first).
    """
    if exact:
        return _flush(torch.where(scores > score_threshold, scores, _NEG_INF).amax(dim=-1))
    raw = scores.amax(dim=-1)
    return _flush(torch.where(raw > score_threshold, raw, _NEG_INF)).where(raw == raw, raw)


def _top_boxes(scores, keys, count):
    """Scores ``[B, g, C]`` of the best ``g = min(count, N)`` boxes by ``keys``, in ascending box
    order, and their box indices ``[B, g]`` (``None``: every box, in order).

    The best ``count`` boxes by exact keys hold the best ``count`` candidates: every box ranked
    before a candidate's box has a candidate ranked before it.
    """
    num_boxes, num_classes = scores.shape[1:]
    if count >= num_boxes:
        return scores, None
    _, box_idx = _topk_stable(keys, count)
    box_idx, _ = torch.sort(box_idx, dim=-1)  # ascending: equal scores rank by flat index
    gathered = scores.gather(1, box_idx[..., None].expand(-1, -1, num_classes))
    return gathered, box_idx


def _first(masked, box_idx, num_classes, count):
    """The first ``count`` candidates of every image in visiting order.

    Args:
        masked: ``[B, n]`` scores from :func:`_top_boxes`, ``-inf`` where not a candidate.
        box_idx, num_classes: the boxes of ``masked`` (from :func:`_top_boxes`).

    Returns:
        ``values [B, count]`` (canonical, ``-inf`` past the candidates), ``flat [B, count]``.
    """
    values, position = _topk_stable(_flush(masked), count)
    return values, _flat(position, box_idx, num_classes)


def _all(masked, box_idx, num_classes, count):
    """:func:`_first` when no image has more than ``count`` candidates: a float ``topk`` finds
    them all (in any order, with ``-inf`` fill), then only they are ordered."""
    _, position = torch.topk(masked, count, dim=-1, sorted=False)
    position, _ = torch.sort(position, dim=-1)  # ascending: equal scores rank by flat index
    values, order = _topk_stable(_flush(masked.gather(1, position)), count)
    return values, _flat(position.gather(1, order), box_idx, num_classes)


def _flat(position, box_idx, num_classes):
    """``box * C + class`` of positions in the ``[B, g * C]`` scores of :func:`_top_boxes`."""
    if box_idx is None:
        return position
    return box_idx.gather(1, position // num_classes) * num_classes + position % num_classes


class _Candidates:
    """Candidates ``[B, m]`` in visiting order, with what greedy NMS needs of them."""

    def __init__(self, boxes, values, flat, num_classes, raw_scores=None):
        batch, num_boxes, q, _ = boxes.shape
        self.values = values
        # Returned scores: the input values (``values`` are flushed) where subnormal
        # candidates are possible, i.e. ``raw_scores`` ``[B, N, C]`` is given.
        self.scores = (
            values if raw_scores is None else raw_scores.reshape(batch, -1).gather(1, flat)
        )
        self.valid = values > _NEG_INF
        self.cls = flat % num_classes
        self.cls32 = self.cls.to(torch.int32)
        row = (flat // num_classes) * q + (self.cls if q > 1 else 0)
        self.box = boxes.reshape(batch, num_boxes * q, 4).gather(
            1, row[..., None].expand(-1, -1, 4)
        )
        b = _flush(self.box)
        self.y_min = torch.minimum(b[..., 0], b[..., 2])
        self.x_min = torch.minimum(b[..., 1], b[..., 3])
        self.y_max = torch.maximum(b[..., 0], b[..., 2])
        self.x_max = torch.maximum(b[..., 1], b[..., 3])
        flat_height = torch.threshold(self.y_max - self.y_min, _SUBNORMAL_MAX, 0.0)
        flat_width = torch.threshold(self.x_max - self.x_min, _SUBNORMAL_MAX, 0.0)
        area = torch.threshold(flat_height * flat_width, _SUBNORMAL_MAX, 0.0)
        # NaN area: every IoU with the box is NaN and never above the threshold, which is the
        # reference's "IoU = 0 when either area is <= 0" for thresholds in [0, 1].
        self.area = torch.where(area > 0, area, float("nan"))
        self.table = torch.stack([self.y_min, self.x_min, self.y_max, self.x_max, self.area], -1)

    def pick(self, index):
        """``[B, 1, 5]`` normalised boxes at ``index [B, 1]``."""
        return self.table.gather(1, index[..., None].expand(-1, -1, 5))

    def suppressed_by(self, one, iou_threshold, out=None):
        """``[B, m]``: ``IoU(one, candidate) > iou_threshold`` for ``one [B, 1, 5]``, with the
        float32 operations of ``reference._iou_one_to_many`` in the same order, each its own
        eager kernel (no fused multiply-add), negative or subnormal sides and intersections
        taken as 0 (``iou_threshold`` from ``_subnormal.compare_threshold``, so a subnormal
        IoU never exceeds it). ``out``: work buffers from :meth:`buffers`."""
        inter, inter_w, union, result = self.buffers() if out is None else out
        torch.minimum(one[..., 2], self.y_max, out=inter)
        torch.threshold_(
            inter.sub_(torch.maximum(one[..., 0], self.y_min, out=union)), _SUBNORMAL_MAX, 0.0
        )
        torch.minimum(one[..., 3], self.x_max, out=inter_w)
        torch.threshold_(
            inter_w.sub_(torch.maximum(one[..., 1], self.x_min, out=union)), _SUBNORMAL_MAX, 0.0
        )
        torch.threshold_(inter.mul_(inter_w), _SUBNORMAL_MAX, 0.0)
        torch.add(one[..., 4], self.area, out=union).sub_(inter)  # (area_i + area_j) - inter
        return torch.gt(inter.div_(union), iou_threshold, out=result)

    def buffers(self):
        """Work buffers for :meth:`suppressed_by` (reused across the steps of a loop)."""
        shape, device = self.area.shape, self.area.device
        floats = [torch.empty(shape, dtype=torch.float32, device=device) for _ in range(3)]
        return floats + [torch.empty(shape, dtype=torch.bool, device=device)]


def _greedy(cand, alive, steps, iou_threshold, counts, per_class, num=None, k=None):
    """Greedy NMS over ``cand`` in ``steps`` loop steps (a host-known count).

    Args:
        alive: ``[B, m]`` uint8, candidates not dropped yet (updated in place).
        counts: ``[B, C]`` int64 kept per class, updated; ``None``: no per-class cap binds.
        num, k: ``[B]`` kept so far and the total cap, or ``None`` when ``steps`` enforces it.

    Returns:
        ``(index [B, steps], kept [B, steps] bool)``, a prefix of each row kept.
    """
    picks, kept = [], []
    work = cand.buffers()
    same = torch.empty_like(work[-1])
    for _ in range(steps):
        # First alive candidate (first maximum). Not ``max(dim=...)``: on the CPU its threads
        # stall for milliseconds on busy cores, where ``argmax`` takes microseconds.
        i = alive.argmax(dim=1, keepdim=True)
        has = alive.gather(1, i).bool()
        if num is not None:
            has &= (num < k)[:, None]
            num += has[:, 0].to(num.dtype)
        picks.append(i)
        kept.append(has)
        drop = cand.suppressed_by(cand.pick(i), iou_threshold, work)
        cls = cand.cls.gather(1, i)
        if counts is not None:
            counts.scatter_add_(1, cls, has.to(counts.dtype))
            drop |= counts.gather(1, cls) >= per_class
        drop &= torch.eq(cand.cls32, cls, out=same)
        alive.masked_fill_(drop, 0)
        alive.scatter_(1, i, 0)
    if not picks:
        empty = torch.zeros_like(alive[:, :0], dtype=torch.int64)
        return empty, empty.bool()
    return torch.cat(picks, dim=1), torch.cat(kept, dim=1)


def _gather_rows(cand, index):
    """Boxes ``[B, t, 4]``, scores and classes ``[B, t]`` of the candidates at ``index``."""
    box = cand.box.gather(1, index[..., None].expand(-1, -1, 4))
    return box, cand.scores.gather(1, index), cand.cls.gather(1, index)


def _after(values, flat, prev_score, prev_index):
    """Candidates after ``(prev_score, prev_index)`` (``[B]`` each) in the visiting order."""
    shape = (-1,) + (1,) * (values.dim() - 1)
    prev_score, prev_index = prev_score.view(shape), prev_index.view(shape)
    return (values < prev_score) | ((values == prev_score) & (flat > prev_index))


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
    """``tf.image.combined_non_max_suppression`` for torch tensors (see ``reference.py``).

    Exact in eager mode (see the module docstring: under ``torch.compile`` a fused
    multiply-add may change an IoU that equals the threshold). At most :data:`HOST_SYNCS`
    host synchronisations per call (see the module docstring).

    Args:
        boxes: ``[B, N, q, 4]`` with ``q`` 1 or ``num_classes``.
        scores: ``[B, N, num_classes]``, on the same device.
        max_output_size_per_class, max_total_size: positive ints.
        iou_threshold, score_threshold, pad_per_class, clip_boxes: as TensorFlow.
        block_size: candidates per image of the first phase (default :data:`BLOCK_SIZE`);
            images with more take a second host read, and a second phase if not done.

    Returns:
        ``nmsed_boxes [B, K, 4]``, ``nmsed_scores [B, K]``, ``nmsed_classes [B, K]`` float32 and
        ``valid_detections [B]`` int32, on the input device.
    """
    boxes = torch.as_tensor(boxes, dtype=torch.float32)
    scores = torch.as_tensor(scores, dtype=torch.float32, device=boxes.device)
    per_class, total, iou_threshold, score_threshold = validate_arguments(
        tuple(boxes.shape),
        tuple(scores.shape),
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


@torch.no_grad()
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
    ``validate_arguments`` (sizes as ``int``, thresholds as ``float`` or traced).

    Not differentiable, as TensorFlow's op: it runs under ``torch.no_grad()`` (its work
    buffers are written in place), so inputs that require grad are accepted and the outputs
    do not require grad."""
    boxes = torch.as_tensor(boxes, dtype=torch.float32)
    scores = torch.as_tensor(scores, dtype=torch.float32, device=boxes.device)
    block = int(BLOCK_SIZE if block_size is None else block_size)
    if block <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    # Thresholds are float32 in TensorFlow: compare against the float32 value, flushed.
    iou_threshold = compare_threshold(iou_threshold)
    # Below zero, zeros and subnormals are candidates: their returned scores are read back
    # from ``scores`` (the ranked values are flushed).
    raw = scores if float(np.float32(score_threshold)) < 0 else None
    score_threshold = compare_threshold(score_threshold)
    batch, num_boxes, _, _ = boxes.shape
    num_classes = scores.shape[2]
    k = output_size(per_class, total, num_classes, pad_per_class)
    device = boxes.device
    out_boxes = torch.zeros((batch, k, 4), dtype=torch.float32, device=device)
    out_scores = torch.zeros((batch, k), dtype=torch.float32, device=device)
    out_classes = torch.zeros((batch, k), dtype=torch.float32, device=device)
    out_valid = torch.zeros((batch,), dtype=torch.int32, device=device)
    if batch == 0 or num_boxes == 0 or num_classes == 0:
        return out_boxes, out_scores, out_classes, out_valid
    per_class = min(per_class, num_boxes)

    # Host read 1: any NaN score (the fast keys are then not exact), and the number of
    # candidates of the fullest image, exact up to ``block`` (``block + 1``: more).
    keys = _box_keys(scores, score_threshold, exact=False)
    gathered, box_idx = _top_boxes(scores, keys, block + 1)
    is_candidate = gathered > score_threshold
    count = is_candidate.reshape(batch, -1).view(torch.uint8).sum(dim=1, dtype=torch.int32)
    has_nan = torch.isnan(keys).any().to(torch.int64)
    has_nan, most = _host_read(torch.stack([has_nan, count.max().to(torch.int64)]))
    if has_nan:
        keys = _box_keys(scores, score_threshold, exact=True)
        gathered, box_idx = _top_boxes(scores, keys, block + 1)
        is_candidate = gathered > score_threshold
        size = min(block, num_boxes * num_classes)
        more = size < num_boxes * num_classes
    elif most == 0:
        return out_boxes, out_scores, out_classes, out_valid
    else:
        size = min(block, most)
        more = most > block

    # Phase A: the first ``size`` candidates of every image.
    masked = torch.where(is_candidate, gathered, _NEG_INF).reshape(batch, -1)
    values, flat = (_first if more else _all)(masked, box_idx, num_classes, size)
    cand = _Candidates(boxes, values, flat, num_classes, raw)
    steps = min(k, size, per_class * num_classes)
    counts = torch.zeros((batch, num_classes), dtype=torch.int64, device=device)
    alive = cand.valid.to(torch.uint8)
    index, kept = _greedy(
        cand, alive, steps, iou_threshold, counts if per_class < steps else None, per_class
    )
    parts = [(_gather_rows(cand, index), kept)]

    if more:  # host read 2: is an image left with rows to fill and candidates to visit?
        num = kept.sum(dim=1)
        open_image = (num < k) & cand.valid[:, -1]
        (any_open,) = _host_read(open_image.any().to(torch.int64).view(1))
    if more and any_open:
        # Host read 3: the candidates left of classes not full, and the rows free.
        if per_class >= steps:  # phase A did not count per class
            counts.scatter_add_(1, cand.cls.gather(1, index), kept.to(torch.int64))
        per_image_class = (scores > score_threshold).sum(dim=1)  # [B, C]
        visited = torch.zeros_like(counts).scatter_add_(1, cand.cls, cand.valid.to(torch.int64))
        open_class = (counts < per_class) & open_image[:, None]
        left = ((per_image_class - visited) * open_class).sum(dim=1)
        total_b = torch.where(open_image, per_image_class.sum(dim=1), 0)
        free = torch.where(open_image, k - num, 0)
        left, size_b, rows = _host_read(torch.stack([left.max(), total_b.max(), free.max()]))
        if left > 0:  # phase B: every candidate of the open images, the first ``size`` done
            gathered, box_idx = _top_boxes(scores, keys, size_b)
            masked = torch.where(gathered > score_threshold, gathered, _NEG_INF)
            values_b, flat_b = _first(masked.reshape(batch, -1), box_idx, num_classes, size_b)
            cand_b = _Candidates(boxes, values_b, flat_b, num_classes, raw)
            position = torch.arange(size_b, device=device)
            alive_b = cand_b.valid & (position >= size) & open_class.gather(1, cand_b.cls)
            for t in range(steps):  # phase A's kept boxes suppress first
                one = cand.pick(index[:, t : t + 1])
                drop = cand_b.suppressed_by(one, iou_threshold)
                drop &= cand_b.cls == cand.cls.gather(1, index[:, t : t + 1])
                alive_b &= ~(drop & kept[:, t : t + 1])
            index_b, kept_b = _greedy(
                cand_b,
                alive_b.to(torch.uint8),
                min(rows, left),
                iou_threshold,
                counts if per_class < k else None,
                per_class,
                num=num,
                k=k,
            )
            parts.append((_gather_rows(cand_b, index_b), kept_b))

    if len(parts) == 1:
        (row_box, row_score, row_cls), kept = parts[0]
        rows_out = kept.shape[1]
        out_boxes[:, :rows_out] = torch.where(kept[..., None], row_box, 0.0)
        out_scores[:, :rows_out] = torch.where(kept, row_score, 0.0)
        out_classes[:, :rows_out] = torch.where(kept, row_cls.to(torch.float32), 0.0)
    else:  # each part keeps a prefix of its rows: move the second part's up
        row_box = torch.cat([p[0][0] for p in parts], dim=1)
        row_score = torch.cat([p[0][1] for p in parts], dim=1)
        row_cls = torch.cat([p[0][2] for p in parts], dim=1).to(torch.float32)
        kept = torch.cat([p[1] for p in parts], dim=1)
        slot = torch.where(kept, kept.cumsum(dim=1) - 1, k)  # row k is scratch
        full_boxes = torch.zeros((batch, k + 1, 4), dtype=torch.float32, device=device)
        full_scores = torch.zeros((batch, k + 1), dtype=torch.float32, device=device)
        full_classes = torch.zeros((batch, k + 1), dtype=torch.float32, device=device)
        full_boxes.scatter_(1, slot[..., None].expand(-1, -1, 4), row_box)
        full_scores.scatter_(1, slot, row_score)
        full_classes.scatter_(1, slot, row_cls)
        out_boxes = full_boxes[:, :k].contiguous()
        out_scores = full_scores[:, :k].contiguous()
        out_classes = full_classes[:, :k].contiguous()
    if clip_boxes:
        out_boxes = _flush(out_boxes).clamp_(0.0, 1.0)
    return out_boxes, out_scores, out_classes, kept.sum(dim=1).to(torch.int32)
