"""The input-pipeline benchmark (``benchmarks/data_pipeline.py``) on tiny settings."""

import importlib.util
import os

import keras
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "benchmark_data_pipeline", os.path.join(ROOT, "benchmarks", "data_pipeline.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # imports no framework at module level
    return module


@pytest.fixture(scope="module")
def records(bench, tmp_path_factory):
    from keras_retinanet.data import CocoDataset

    root = tmp_path_factory.mktemp("coco")
    annotations, image_dir, stats = bench.make_coco_folder(
        root, num_images=4, shapes=((48, 64), (64, 48))
    )
    assert stats["images"] == 4 and stats["mean_file_kb"] > 0
    assert bench.MIN_BOXES <= stats["mean_boxes"] <= bench.MAX_BOXES
    return CocoDataset(annotations, image_dir)


def test_the_synthetic_folder_is_seeded_and_coco_readable(bench, records, tmp_path):
    again, _, _ = bench.make_coco_folder(tmp_path, num_images=4, shapes=((48, 64), (64, 48)))
    from keras_retinanet.data import CocoDataset

    for a, b in zip(records, CocoDataset(again, tmp_path / "images"), strict=True):
        np.testing.assert_array_equal(a["boxes"], b["boxes"])
        with open(a["path"], "rb") as fa, open(b["path"], "rb") as fb:
            assert fa.read() == fb.read()
    assert {(r["height"], r["width"]) for r in records} == {(48, 64), (64, 48)}


@pytest.mark.skipif(
    keras.backend.backend() == "jax",
    reason="the benchmark script's plumbing; TF and torch run it (30 s of JAX compiles)",
)
def test_pipeline_stages_encode_and_train_step_give_rates(bench, records):
    configs = [(1, 2, "threads", 1, False), (1, 2, "threads", 2, False)]
    configs.append((1, 2, "processes", 1, True))
    rows = bench.measure_pipeline(records, repeats=1, configs=configs, log=False)
    assert [(r["mode"], r["workers"]) for r in rows] == [(c[2], c[3]) for c in configs]
    for row in rows:
        assert row["images_per_epoch"] == 4 and row["images_per_s"] > 0
        # The recipe pads to multiples of 128 with the short side jittered in 640..1024.
        assert 640**2 <= row["mean_padded_pixels"] <= 1024 * 1408

    stages = bench.stage_breakdown(records, num_batches=1)
    assert stages["images"] == 2
    ms = stages["ms_per_image"]
    assert all(ms[name] > 0 for name, _ in bench.STAGES) and ms["getitem"] > 0

    samples = bench.encode_samples(records, num_batches=1)
    assert samples[0]["shape"][0] % 128 == 0 and samples[0]["boxes"].shape[0] == 2
    assert bench.measure_encode(samples)["images_per_s"] > 0

    train = bench.measure_train((64, 64), steps=1, backbone="compact", fpn_filters=16, head_convs=1)
    assert train["images_per_s"] > 0 and np.isfinite(train["loss"])

    saved = {
        "settings": {
            "images": 4,
            "repeats": 1,
            "train_size": [64, 64],
            "steps": 1,
            "warmup": 1,
            "backbone": "compact",
            "pipeline_backend": "torch",
            "malloc": "keep",
        },
        "data": {"images": 4, "shapes": [[48, 64]], "jpeg_quality": 90},
        "pipeline": rows,
        "stages": stages,
        "encode_numpy": {"images_per_s": 1.0},
        "train": [{"backend": "torch", "encode": {"images_per_s": 2.0}, "train": train}],
    }
    table = bench.markdown(saved)
    assert "| threads 1 | threads 2 | processes 1 |" in table
    assert "limited" in table and "JPEG decode" in table


def _row(devices, mode, workers, rate):
    return {
        "devices": devices,
        "global_batch": 2 * devices,
        "mode": mode,
        "workers": workers,
        "use_multiprocessing": mode == "processes",
        "images_per_s": rate,
        "distinct_shapes": 1,
        "mean_padded_pixels": 1024.0**2,
    }


def test_verdict_needs_n_times_one_device_and_prefetching(bench):
    rows = [
        _row(1, "threads", 1, 10.0),
        _row(1, "threads", 2, 18.0),
        _row(1, "processes", 1, 8.0),
        _row(2, "threads", 1, 10.0),
        _row(2, "threads", 2, 15.0),
        _row(2, "processes", 1, 8.0),
    ]
    one = bench.verdict(rows, 1, 9.0)
    assert one["limited_by"] == "model" and one["needed_images_per_s"] == 9.0
    assert one["fewest_workers"] == {"workers": 2, "mode": "threads"}
    assert one["serial_overhead"] == pytest.approx(0.9)
    # 1 thread (10 img/s) would cover the need but reads in the training thread.
    assert bench.verdict(rows, 1, 5.0)["fewest_workers"] == {"workers": 1, "mode": "processes"}
    two = bench.verdict(rows, 2, 9.0)  # needs 18 img/s at global batch 4: best is 15
    assert two["limited_by"] == "loader" and two["best"] == {"workers": 2, "mode": "threads"}
    assert two["headroom"] == pytest.approx(15.0 / 18.0)
