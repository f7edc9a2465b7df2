"""Host synchronisations of the PyTorch ``combined_non_max_suppression`` (``nms/_torch.py``).

On the CPU every way a tensor's value can reach Python is counted for one call (``item``,
``bool``/``int``/``float``/``index`` conversions, ``tolist``, ``numpy``, ``cpu``, ``nonzero``,
``torch.equal``, ``masked_select`` and indexing with a boolean mask, which must read the mask
to size its result): the count must be the same small constant for every ``K``, batch size and
class count. On CUDA the call runs under ``torch.cuda.set_sync_debug_mode("error")``, with
only the module's own reads (``_host_read``) allowed, and counted.
"""

import contextlib

import keras
import numpy as np
import pytest
from nms_cases import assert_same_detections

from keras_retinanet.nms import combined_non_max_suppression_reference as reference

pytestmark = pytest.mark.skipif(keras.backend.backend() != "torch", reason="torch backend only")

torch = pytest.importorskip("torch")

#: ``Tensor`` methods that hand a value to the host.
_READS = (
    "item",
    "tolist",
    "numpy",
    "cpu",
    "nonzero",
    "masked_select",
    "__bool__",
    "__int__",
    "__float__",
    "__index__",
    "__array__",
)
_FUNCTIONS = ("equal", "nonzero", "masked_select", "is_nonzero")


def _is_mask(index):
    if isinstance(index, tuple):
        return any(_is_mask(i) for i in index)
    return isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8)


@contextlib.contextmanager
def count_host_reads(monkeypatch):
    """Counts the host reads made inside the block; yields a list holding the count."""
    count = [0]
    depth = [0]

    def counting(original, test=None):
        def wrapper(*args, **kwargs):
            if depth[0] == 0 and (test is None or test(*args)):
                count[0] += 1
            depth[0] += 1
            try:
                return original(*args, **kwargs)
            finally:
                depth[0] -= 1

        return wrapper

    with monkeypatch.context() as patch:
        for name in _READS:
            patch.setattr(torch.Tensor, name, counting(getattr(torch.Tensor, name)))
        for name in _FUNCTIONS:
            patch.setattr(torch, name, counting(getattr(torch, name)))
        getitem = torch.Tensor.__getitem__
        patch.setattr(
            torch.Tensor, "__getitem__", counting(getitem, lambda self, index: _is_mask(index))
        )
        yield count


def _inputs(batch, num_classes, num_boxes=300, seed=0):
    """Clustered boxes (much suppression) with distinct scores."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0.1, 0.9, (batch, 12, 2))
    pick = rng.integers(0, 12, (batch, num_boxes))
    centre = np.take_along_axis(centres, pick[..., None], axis=1)
    centre = centre + rng.normal(0, 0.02, centre.shape)
    size = rng.uniform(0.05, 0.2, (batch, num_boxes, 2))
    boxes = np.concatenate([centre - size / 2, centre + size / 2], -1)[:, :, None, :]
    scores = (rng.permutation(batch * num_boxes * num_classes) + 1) / (
        batch * num_boxes * num_classes + 1
    )
    return boxes.astype(np.float32), scores.reshape(batch, num_boxes, num_classes).astype(
        np.float32
    )


def _reads(monkeypatch, boxes, scores, args, **kwargs):
    from keras_retinanet.nms import _torch

    b, s = torch.from_numpy(boxes), torch.from_numpy(scores)
    with count_host_reads(monkeypatch) as count:
        out = _torch.combined_non_max_suppression(b, s, *args, **kwargs)
    return count[0], [x.numpy() for x in out]


def test_counter_sees_the_usual_reads(monkeypatch):
    x = torch.arange(6.0)
    with count_host_reads(monkeypatch) as count:
        bool(x.any())
        int(x.max())
        x[x > 2].sum()
        x.tolist()
        x.sum().item()
        x[1:3]  # a slice is no read
        x[torch.tensor([0, 2])]  # nor an integer index
    assert count[0] == 5


# block_size large: every image in phase A (one read); 7: phase B always runs (three reads).
@pytest.mark.parametrize(("block_size", "expected"), [(1 << 20, 1), (7, 3)])
def test_host_reads_are_a_constant(monkeypatch, block_size, expected):
    from keras_retinanet.nms import _torch

    assert expected <= _torch.HOST_SYNCS
    counts = {}
    for k in (10, 100, 300):
        for batch in (1, 4):
            for num_classes in (1, 20):
                boxes, scores = _inputs(batch, num_classes, seed=k + batch + num_classes)
                args = (min(k, 40), k, 0.5, 0.1)
                reads, out = _reads(monkeypatch, boxes, scores, args, block_size=block_size)
                counts[(k, batch, num_classes)] = reads
                assert_same_detections(out, reference(boxes, scores, *args))
    assert set(counts.values()) == {expected}, counts


def test_done_in_phase_a_costs_two_reads(monkeypatch):
    """More candidates than the block, but every image has its ``K`` rows after it."""
    boxes, scores = _inputs(4, 20, num_boxes=600)
    args = (10, 10, 0.5, 0.0)
    reads, out = _reads(monkeypatch, boxes, scores, args, block_size=500)
    assert reads == 2 and out[3].tolist() == [10] * 4
    assert_same_detections(out, reference(boxes, scores, *args))


@pytest.mark.parametrize("nan", [False, True])
def test_default_block_stays_within_the_bound(monkeypatch, nan):
    from keras_retinanet.nms import _torch

    for k in (10, 100, 300):
        boxes, scores = _inputs(2, 20, num_boxes=400, seed=k)
        if nan:
            scores[:, ::7, 3] = np.nan
        args = (40, k, 0.5, 0.05)
        reads, out = _reads(monkeypatch, boxes, scores, args)
        assert 1 <= reads <= _torch.HOST_SYNCS
        assert_same_detections(out, reference(boxes, scores, *args))


def test_no_candidate_costs_one_read(monkeypatch):
    boxes, scores = _inputs(2, 3)
    reads, out = _reads(monkeypatch, boxes, scores, (5, 10, 0.5, 2.0))
    assert reads == 1 and out[3].tolist() == [0, 0]


def test_empty_input_reads_nothing(monkeypatch):
    boxes, scores = np.zeros((2, 0, 1, 4), np.float32), np.zeros((2, 0, 3), np.float32)
    reads, out = _reads(monkeypatch, boxes, scores, (5, 10))
    assert reads == 0 and out[0].shape == (2, 10, 4)


@pytest.mark.parametrize("block_size", [None, 7])
def test_cuda_runs_without_other_synchronisations(monkeypatch, block_size):
    """Skipped without CUDA. Every synchronising CUDA call raises, except the module's own
    ``_host_read`` (counted)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from keras_retinanet.nms import _torch

    boxes, scores = _inputs(4, 20)
    args = (40, 100, 0.5, 0.1)
    b, s = torch.from_numpy(boxes).cuda(), torch.from_numpy(scores).cuda()
    _torch.combined_non_max_suppression(b, s, *args, block_size=block_size)  # warm-up
    torch.cuda.synchronize()
    reads = [0]
    read = _torch._host_read

    def allowed_read(tensor):
        reads[0] += 1
        torch.cuda.set_sync_debug_mode(0)
        try:
            return read(tensor)
        finally:
            torch.cuda.set_sync_debug_mode("error")

    monkeypatch.setattr(_torch, "_host_read", allowed_read)
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = _torch.combined_non_max_suppression(b, s, *args, block_size=block_size)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert reads[0] <= _torch.HOST_SYNCS
    assert_same_detections([x.cpu().numpy() for x in out], reference(boxes, scores, *args))
