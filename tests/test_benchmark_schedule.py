"""The benchmark's timing order (``benchmarks/model.py``): paired calls, rotating order."""

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "benchmark_model", os.path.join(ROOT, "benchmarks", "model.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # imports no framework at module level
    return module


def test_every_worker_times_every_measure_once_per_round(bench):
    order = list(bench.schedule(3, repeats=4))
    for measure in bench.MEASURES:
        for worker in range(3):
            rounds = [r for r, w, m in order if m == measure and w == worker]
            assert rounds == list(range(5))


def test_forward_and_predict_are_timed_back_to_back_in_alternating_order(bench):
    order = [(r, w, m) for r, w, m in bench.schedule(3, repeats=4) if m in ("forward1", "predict1")]
    pairs = [order[i : i + 2] for i in range(0, len(order), 2)]
    firsts = {}
    for (r1, w1, m1), (r2, w2, m2) in pairs:
        assert (r1, w1) == (r2, w2) and {m1, m2} == {"forward1", "predict1"}
        firsts.setdefault(w1, []).append(m1)
    for measures in firsts.values():
        assert measures == ["forward1", "predict1"] * 2 + ["forward1"]


def test_worker_order_rotates_every_round(bench):
    order = list(bench.schedule(3, repeats=2))
    leaders = [next(w for r, w, m in order if m == "train2" and r == round_) for round_ in range(3)]
    assert leaders == [0, 1, 2]
