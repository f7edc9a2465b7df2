"""``combined_non_max_suppression`` in pure PyTorch (vectorised over the batch, device-resident).

Same exact algorithm as the JAX version (see ``_jax.py``): every ``(box, class)`` candidate of
an image is visited in one global order (score descending, ties by ``box * C + class``), in
blocks of the best ``block_size`` candidates found through per-box keys; within a block the
loop jumps from kept box to kept box, so the work is ``O(K * block_size)`` and nothing of size
``N x N`` is ever built. ``torchvision.ops.batched_nms`` is not used: its IoU arithmetic and tie
handling differ from TensorFlow's, and exact agreement is required.

Tensors stay on their device; the only host synchronisations are the loop-exit checks (every
iteration on CPU, every few iterations elsewhere) and one NaN check.
"""

import numpy as np
import torch

from keras_retinanet.nms._validation import output_size, validate_arguments

#: Candidates visited per block (see ``_jax.BLOCK_SIZE``).
BLOCK_SIZE = 1024
#: Kept boxes compared at once with a new block.
_KEPT_CHUNK = 128
#: Blocks expected to keep more boxes than this use the fixed-point formulation.
_JUMP_LIMIT = 128
#: Loop-exit checks synchronise with the device; off the CPU they are done this often.
_SYNC_EVERY = 8


def _canonical(x):
    """``-0.0`` -> ``+0.0`` so that ordering by bits agrees with ordering by value."""
    return torch.where(x == 0, torch.zeros_like(x), x)


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


def _normalise(boxes):
    """``[..., 4]`` corners in any order -> ``[..., 5]`` ``(ymin, xmin, ymax, xmax, area)``."""
    y_min = torch.minimum(boxes[..., 0], boxes[..., 2])
    x_min = torch.minimum(boxes[..., 1], boxes[..., 3])
    y_max = torch.maximum(boxes[..., 0], boxes[..., 2])
    x_max = torch.maximum(boxes[..., 1], boxes[..., 3])
    area = (y_max - y_min) * (x_max - x_min)
    return torch.stack([y_min, x_min, y_max, x_max, area], dim=-1)


def _suppresses(a, b, iou_threshold):
    """``IoU(a, b) > iou_threshold`` for broadcastable ``[..., 5]`` normalised boxes (float32
    arithmetic of TensorFlow: ``inter / (area_a + area_b - inter)``, 0 if an area is ``<= 0``)."""
    inter_h = torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])
    inter_w = torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])
    inter = inter_h.clamp_min(0) * inter_w.clamp_min(0)
    area_a, area_b = a[..., 4], b[..., 4]
    positive = (area_a > 0) & (area_b > 0)
    union = torch.where(positive, area_a + area_b - inter, torch.ones_like(inter))
    return positive & (inter / union > iou_threshold)


def _box_keys(scores, score_threshold, ok=None):
    """``[B, N, C]`` -> ``[B, N]`` best candidate score per box (``-inf`` if none)."""
    mask = scores > score_threshold
    if ok is not None:
        mask = mask & ok
    neg_inf = torch.tensor(float("-inf"), device=scores.device)
    return _canonical(torch.where(mask, scores, neg_inf).amax(dim=-1))


def _initial_keys(scores, score_threshold):
    raw = scores.amax(dim=-1)
    if bool(torch.isnan(raw).any()):  # max propagates NaN: recompute exactly
        return _box_keys(scores, score_threshold)
    neg_inf = torch.tensor(float("-inf"), device=scores.device)
    return _canonical(torch.where(raw > score_threshold, raw, neg_inf))


class _Kept:
    """Boxes kept so far for each image, ``k`` rows plus one scratch row."""

    def __init__(self, batch, num_classes, k, device):
        self.k = k
        self.box = torch.zeros((batch, k + 1, 4), device=device)
        self.norm = torch.zeros((batch, k + 1, 5), device=device)
        self.score = torch.zeros((batch, k + 1), device=device)
        self.cls = torch.zeros((batch, k + 1), dtype=torch.int64, device=device)
        self.counts = torch.zeros((batch, num_classes), dtype=torch.int64, device=device)
        self.num = torch.zeros((batch,), dtype=torch.int64, device=device)


class _Block:
    """One block of candidates per image, ``[B, m]``."""

    def __init__(self, boxes, values, flat, valid, num_classes):
        batch = boxes.shape[0]
        self.values, self.flat, self.valid = values, flat, valid
        self.cls = flat % num_classes
        rows = torch.arange(batch, device=boxes.device)[:, None]
        box_n = flat // num_classes
        self.box = boxes[rows, box_n, self.cls if boxes.shape[2] > 1 else 0]  # [B, m, 4]
        self.norm = _normalise(self.box)


def _select_all(scores, score_threshold):
    """Every candidate, in visiting order: ``(values, flat, valid)`` each ``[B, N * C]``."""
    neg_inf = torch.tensor(float("-inf"), device=scores.device)
    masked = torch.where(scores > score_threshold, _canonical(scores), neg_inf)
    values, flat = _topk_stable(masked.reshape(scores.shape[0], -1), masked[0].numel())
    return values, flat, values > float("-inf")


def _select_block(scores, keys, kept, prev_score, prev_index, per_class, score_threshold, m):
    """The best ``m`` candidates of each image after ``(prev_score, prev_index)``.

    The best ``m`` boxes by ``keys`` hold every one of the best ``m`` candidates.
    """
    batch, num_boxes, num_classes = scores.shape
    _, box_idx = _topk_stable(keys, min(m, num_boxes))
    box_idx, _ = torch.sort(box_idx, dim=-1)  # ascending: equal scores rank by flat index
    gathered = scores.gather(1, box_idx[..., None].expand(-1, -1, num_classes))
    classes = torch.arange(num_classes, device=scores.device)
    flat = box_idx[..., None] * num_classes + classes
    ok = (gathered > score_threshold) & (kept.counts < per_class)[:, None, :]
    ok = ok & _after(gathered, flat, prev_score, prev_index)
    neg_inf = torch.tensor(float("-inf"), device=scores.device)
    masked = torch.where(ok, _canonical(gathered), neg_inf).reshape(batch, -1)
    values, position = _topk_stable(masked, m)
    return values, flat.reshape(batch, -1).gather(1, position), values > float("-inf")


def _after(values, flat, prev_score, prev_index):
    """Candidates after ``(prev_score, prev_index)`` (``[B]`` each) in the visiting order."""
    shape = (-1,) + (1,) * (values.dim() - 1)
    prev_score, prev_index = prev_score.view(shape), prev_index.view(shape)
    return (values < prev_score) | ((values == prev_score) & (flat > prev_index))


def _next_keys(scores, kept, prev_score, prev_index, per_class, score_threshold):
    """``[B, N]`` exact box keys of the candidates not visited yet, of classes not yet full."""
    _, num_boxes, num_classes = scores.shape
    flat = torch.arange(num_boxes * num_classes, device=scores.device).view(num_boxes, -1)
    ok = _after(scores, flat, prev_score, prev_index) & (kept.counts < per_class)[:, None, :]
    return _box_keys(scores, score_threshold, ok)


def _suppressed_by_kept(kept, block, iou_threshold):
    """``[B, m]`` bool: IoU above the threshold with a kept box of the same class."""
    most = int(kept.num.max())
    width = int(kept.counts.max())
    if most == 0:
        return torch.zeros_like(block.valid)
    if width < most:  # compare each candidate with the kept boxes of its class only
        return _suppressed_by_class_table(kept, block, iou_threshold, most, width)
    hit = torch.zeros_like(block.valid)
    for start in range(0, most, _KEPT_CHUNK):
        stop = min(start + _KEPT_CHUNK, most)
        norm = kept.norm[:, start:stop, None, :]
        pair = _suppresses(norm, block.norm[:, None, :, :], iou_threshold)
        pair = pair & (kept.cls[:, start:stop, None] == block.cls[:, None, :])
        rows = torch.arange(start, stop, device=hit.device)
        pair = pair & (rows[None, :] < kept.num[:, None])[..., None]
        hit |= pair.any(dim=1)
    return hit


def _suppressed_by_class_table(kept, block, iou_threshold, most, width):
    """:func:`_suppressed_by_kept` through a ``[B, C, width, 5]`` table of kept boxes."""
    batch, num_classes = kept.counts.shape
    device = block.valid.device
    cls = kept.cls[:, :most]
    row_valid = torch.arange(most, device=device)[None, :] < kept.num[:, None]
    onehot = torch.nn.functional.one_hot(cls, num_classes) * row_valid[..., None]
    rank = (onehot.cumsum(dim=1) * onehot).sum(-1) - 1
    image = torch.arange(batch, device=device)[:, None].expand(-1, most)
    table = torch.zeros((batch, num_classes, width, 5), device=device)
    filled = torch.zeros((batch, num_classes, width), dtype=torch.bool, device=device)
    where = (image[row_valid], cls[row_valid], rank[row_valid])
    table[where] = kept.norm[:, :most][row_valid]
    filled[where] = True
    rows = torch.arange(batch, device=device)[:, None]
    same_class = table[rows, block.cls]  # [B, m, width, 5]
    pair = _suppresses(same_class, block.norm[:, :, None, :], iou_threshold)
    return (pair & filled[rows, block.cls]).any(dim=-1)


def _greedy(kept, block, per_class, k, iou_threshold, first):
    """Visits one block, keeping boxes until ``k`` are kept per image."""
    alive = block.valid & (kept.num < k)[:, None]
    if not first:
        alive &= kept.counts.gather(1, block.cls) < per_class
        alive &= ~_suppressed_by_kept(kept, block, iou_threshold)
    if k - int(kept.num.min()) > _JUMP_LIMIT:
        _greedy_fixed_point(kept, block, alive, per_class, k, iou_threshold)
    else:
        _greedy_jump(kept, block, alive, per_class, k, iou_threshold)


def _greedy_fixed_point(kept, block, alive, per_class, k, iou_threshold):
    """Greedy NMS of a block as the fixed point of ``keep[j] = alive[j] and no kept i < j of
    the same class suppresses j``. From ``keep = alive``, after ``t`` rounds the first ``t``
    decisions are final, so the loop ends (at the greedy result) within ``m`` rounds; in
    practice after a few. Per-class and per-image caps then cut the kept sequence, which is
    exact because boxes past a cap could only have suppressed boxes that are dropped anyway."""
    m = alive.shape[1]
    earlier = torch.ones((m, m), dtype=torch.bool, device=alive.device).triu(1)
    same = block.cls[:, :, None] == block.cls[:, None, :]
    pair = _suppresses(block.norm[:, :, None, :], block.norm[:, None, :, :], iou_threshold)
    pair &= same & earlier  # [B, i, j]: kept i suppresses j
    keep = alive
    while True:
        new = alive & ~(pair & keep[:, :, None]).any(dim=1)
        if torch.equal(new, keep):
            break
        keep = new
    num_classes = kept.counts.shape[1]
    onehot = torch.nn.functional.one_hot(block.cls, num_classes) * keep[..., None]
    rank = (onehot.cumsum(dim=1) * onehot).sum(-1) - 1 + kept.counts.gather(1, block.cls)
    keep &= rank < per_class
    order = keep.cumsum(dim=1) - 1 + kept.num[:, None]
    keep &= order < k
    slot = torch.where(keep, order, torch.full_like(order, kept.k))  # row k is scratch
    kept.box.scatter_(1, slot[..., None].expand(-1, -1, 4), block.box)
    kept.norm.scatter_(1, slot[..., None].expand(-1, -1, 5), block.norm)
    kept.score.scatter_(1, slot, block.values)
    kept.cls.scatter_(1, slot, block.cls)
    kept.counts += (onehot * keep[..., None]).sum(dim=1)
    kept.num += keep.sum(dim=1)


def _greedy_jump(kept, block, alive, per_class, k, iou_threshold):
    """Greedy NMS of a block by jumping from one kept box to the next: ``O(kept * m)``."""
    batch = block.values.shape[0]
    rows = torch.arange(batch, device=block.values.device)
    check_every = 1 if alive.device.type == "cpu" else _SYNC_EVERY
    for step in range(k):
        if step % check_every == 0 and not bool(alive.any()):
            break
        has = alive.any(dim=1)
        i = alive.to(torch.uint8).argmax(dim=1)  # first alive candidate (all-false: 0, unused)
        slot = torch.where(has, kept.num, kept.k)  # row k is scratch
        cls = block.cls[rows, i]
        kept.box[rows, slot] = block.box[rows, i]
        norm_i = block.norm[rows, i]
        kept.norm[rows, slot] = norm_i
        kept.score[rows, slot] = block.values[rows, i]
        kept.cls[rows, slot] = cls
        kept.counts[rows, cls] += has.to(torch.int64)
        kept.num += has.to(torch.int64)
        full = (kept.counts[rows, cls] >= per_class)[:, None]
        drop = _suppresses(norm_i[:, None, :], block.norm, iou_threshold) | full
        drop = (block.cls == cls[:, None]) & drop
        alive &= ~drop & (kept.num < k)[:, None]
        alive[rows, i] = False


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

    Args:
        boxes: ``[B, N, q, 4]`` with ``q`` 1 or ``num_classes``.
        scores: ``[B, N, num_classes]``, on the same device.
        max_output_size_per_class, max_total_size: positive ints.
        iou_threshold, score_threshold, pad_per_class, clip_boxes: as TensorFlow.
        block_size: candidates visited per block (default :data:`BLOCK_SIZE`).

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
    boxes = torch.as_tensor(boxes, dtype=torch.float32)
    scores = torch.as_tensor(scores, dtype=torch.float32, device=boxes.device)
    block = int(BLOCK_SIZE if block_size is None else block_size)
    if block <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    # Thresholds are float32 in TensorFlow: compare against the float32 value.
    iou_threshold = float(np.float32(iou_threshold))
    score_threshold = float(np.float32(score_threshold))
    batch, num_boxes, _, _ = boxes.shape
    num_classes = scores.shape[2]
    k = output_size(per_class, total, num_classes, pad_per_class)
    device = boxes.device
    out_boxes = torch.zeros((batch, k, 4), device=device)
    out_scores = torch.zeros((batch, k), device=device)
    out_classes = torch.zeros((batch, k), device=device)
    if batch == 0 or num_boxes == 0 or num_classes == 0:
        return (
            out_boxes,
            out_scores,
            out_classes,
            torch.zeros((batch,), dtype=torch.int32, device=device),
        )

    kept_rows = min(k, num_boxes * num_classes)
    kept = _Kept(batch, num_classes, kept_rows, device)
    per_class = min(per_class, num_boxes)
    if block >= num_boxes * num_classes:
        values, flat, valid = _select_all(scores, score_threshold)
        block_ = _Block(boxes, values, flat, valid, num_classes)
        _greedy(kept, block_, per_class, kept_rows, iou_threshold, first=True)
    else:
        keys = _initial_keys(scores, score_threshold)
        prev_score = torch.full((batch,), float("inf"), device=device)
        prev_index = torch.full((batch,), -1, dtype=torch.int64, device=device)
        first = True
        while True:
            values, flat, valid = _select_block(
                scores, keys, kept, prev_score, prev_index, per_class, score_threshold, block
            )
            block_ = _Block(boxes, values, flat, valid, num_classes)
            _greedy(kept, block_, per_class, kept_rows, iou_threshold, first=first)
            first = False
            more = valid[:, -1] & (kept.num < kept_rows)
            if not bool(more.any()):
                break
            prev_score, prev_index = values[:, -1], flat[:, -1]
            keys = _next_keys(scores, kept, prev_score, prev_index, per_class, score_threshold)
            neg_inf = torch.tensor(float("-inf"), device=device)
            keys = torch.where(more[:, None], keys, neg_inf)  # finished images stay finished

    rows = torch.arange(kept_rows, device=device)[None, :] < kept.num[:, None]
    kept_box = kept.box[:, :kept_rows]
    if clip_boxes:
        kept_box = kept_box.clamp(0.0, 1.0)
    out_boxes[:, :kept_rows] = torch.where(rows[..., None], kept_box, 0.0)
    out_scores[:, :kept_rows] = torch.where(rows, kept.score[:, :kept_rows], 0.0)
    out_classes[:, :kept_rows] = torch.where(rows, kept.cls[:, :kept_rows].float(), 0.0)
    return out_boxes, out_scores, out_classes, kept.num.to(torch.int32)
