"""DistributedDataParallel training (keras_retinanet.distribute._torch), 2 gloo processes on CPU.

Runs only when the test process itself uses the torch backend (``KERAS_BACKEND=torch``).
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import tiny_backbone

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="DDP needs KERAS_BACKEND=torch in the test process"
)

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

# Runs under torchrun: loads the shared initial weights and data, trains 2 SGD steps on the
# global batch of 4 (2 images per rank), saves the weights, then 1 step on a global batch of 3
# (shards of 2 and 1 images: the uneven-shard loss scaling), and saves the weights again.
WORKER = textwrap.dedent(
    """
    import json, os, sys
    os.environ["KERAS_BACKEND"] = "torch"
    sys.path.insert(0, {tests!r})
    import numpy as np, keras, torch
    from conftest import tiny_backbone
    from keras_retinanet import RetinaNet
    from keras_retinanet.distribute._torch import DDPTrainer, init_from_torchrun, shutdown

    work, fast_paths = sys.argv[1], sys.argv[2] == "1"
    rank, world_size, local_rank = init_from_torchrun()
    model = RetinaNet(
        3, backbone=tiny_backbone(), fpn_filters=16, head_convs=1, fast_paths=fast_paths
    )
    model.build((None, 64, 64, 3))
    model.load_weights(os.path.join(work, "init.weights.h5"))
    data = np.load(os.path.join(work, "data.npz"))
    images, y = data["images"], {{"boxes": data["boxes"], "classes": data["classes"]}}
    trainer = DDPTrainer(model, optimizer=lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.0))
    losses = trainer.fit(images, y, epochs=2, global_batch_size=4)
    np.savez(os.path.join(work, f"step2_rank{{rank}}.npz"), *[w.numpy() for w in model.weights])
    three = {{k: v[:3] for k, v in y.items()}}
    losses += trainer.fit(images[:3], three, epochs=1, global_batch_size=3)
    np.savez(os.path.join(work, f"step3_rank{{rank}}.npz"), *[w.numpy() for w in model.weights])
    with open(os.path.join(work, f"losses_rank{{rank}}.json"), "w") as f:
        json.dump({{"losses": losses, "world_size": world_size}}, f)
    shutdown()
    """
).format(tests=str(TESTS))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_logs(log_dir, tail=1500):
    parts = []
    for path in sorted(log_dir.rglob("*.log")):
        text = path.read_text(errors="replace").strip()
        if text:
            parts.append(f"--- {path.relative_to(log_dir)} ---\n{text[-tail:]}\n")
    return "".join(parts)


def _load(path):
    with np.load(path) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


def _model():
    # No batch normalization anywhere (tiny_backbone is 3 plain convolutions, the FPN and the
    # heads use no norm by default): Keras BatchNormalization is not a torch BN module, so
    # under DDP each rank would normalise with its own 2-image shard's statistics (and keep
    # its own moving statistics), which is not the same as single-process training on the
    # global batch of 4. Without BN the two must agree.
    from keras_retinanet import RetinaNet

    model = RetinaNet(3, backbone=tiny_backbone(), fpn_filters=16, head_convs=1, fast_paths=False)
    model.build((None, 64, 64, 3))
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in _walk(model))
    return model


def _walk(layer):
    yield layer
    yield from layer._flatten_layers(include_self=False, recursive=True)


def _compare(name, got, want, moved):
    diffs = [float(np.max(np.abs(g - w))) for g, w in zip(got, want, strict=True)]
    scales = [float(np.max(np.abs(w))) for w in want]
    rel = max(d / s for d, s in zip(diffs, scales, strict=True) if s > 0)
    print(
        f"{name}: max |diff| {max(diffs):.3g}, max |diff| / max |w| per tensor {rel:.3g}, "
        f"largest weight change {moved:.3g}"
    )
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    return max(diffs)


@pytest.mark.parametrize("fast_paths", [False, True], ids=["keras_paths", "fast_paths"])
def test_ddp_two_ranks_matches_single_process_on_the_global_batch(tmp_path, fast_paths):
    import torch.distributed

    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 255, (4, 64, 64, 3)).astype("float32")
    boxes = np.array([[[8, 8, 40, 40], [20, 24, 60, 56]]] * 4, "float32")
    boxes += np.arange(4, dtype="float32")[:, None, None]
    classes = np.array([[0, 2], [1, -1], [2, 0], [0, -1]], "int32")  # -1: padding
    y = {"boxes": boxes, "classes": classes}
    np.savez(tmp_path / "data.npz", images=images, boxes=boxes, classes=classes)

    keras.utils.set_random_seed(0)
    model = _model()
    model.save_weights(tmp_path / "init.weights.h5")
    initial = [w.numpy().copy() for w in model.weights]

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, KERAS_BACKEND="torch", TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
        # Each rank's own stdout/stderr into a file: torchrun's summary of a failed rank says
        # only how it ended, the rank's file says why.
        "--log-dir", str(tmp_path / "logs"), "--redirects", "3",
        str(script), str(tmp_path), "1" if fast_paths else "0",
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=150)
    assert result.returncode == 0, _rank_logs(tmp_path / "logs") + result.stderr[-2000:]

    # Reference: Keras' own fit, one process, SGD(0.01) without momentum, the global batch of
    # 4 for 2 steps and then the batch of 3 for one step.
    #
    # Mean vs sum: RetinaNetLoss divides each image's loss by that image's own positive-anchor
    # count and then averages over the images ("sum_over_batch_size"), so an image's term does
    # not depend on which other images share its batch. Each rank's loss is the mean over its
    # 2 images and DDP averages the gradients over the 2 ranks: the mean over all 4 images,
    # the single-process loss. (A loss normalised by the positives of the whole batch, or
    # summed over images, would need a rescaling by the global count / world size instead.)
    # For the batch of 3 the shards hold 2 and 1 images; the trainer scales each rank's loss
    # by shard_size * world_size / 3, so the averaged gradient is again the mean over 3.
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.0))
    history = model.fit(images, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    step2 = [w.numpy().copy() for w in model.weights]
    three = {k: v[:3] for k, v in y.items()}
    history3 = model.fit(images[:3], three, batch_size=3, epochs=1, shuffle=False, verbose=0)
    step3 = [w.numpy().copy() for w in model.weights]

    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(step2, initial, strict=True))
    assert moved > 1e-3  # the 2 steps change the weights far more than the tolerance
    for rank in (0, 1):
        _compare(
            f"rank {rank} after 2 steps", _load(tmp_path / f"step2_rank{rank}.npz"), step2, moved
        )
        _compare(
            f"rank {rank} after the batch of 3",
            _load(tmp_path / f"step3_rank{rank}.npz"),
            step3,
            moved,
        )  # noqa: E501
        record = json.loads((tmp_path / f"losses_rank{rank}.json").read_text())
        assert record["world_size"] == 2
        want = history.history["loss"] + history3.history["loss"]
        np.testing.assert_allclose(record["losses"], want, rtol=1e-5)


def test_shard_bounds_cover_the_batch_in_rank_order():
    from keras_retinanet.distribute._torch import shard_bounds

    for size, world in ((4, 2), (3, 2), (7, 3), (2, 2)):
        bounds = [shard_bounds(size, r, world) for r in range(world)]
        assert bounds[0][0] == 0 and bounds[-1][1] == size
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
        assert max(b - a for a, b in bounds) - min(b - a for a, b in bounds) <= 1


def test_init_from_torchrun_without_torchrun_env_raises(monkeypatch):
    from keras_retinanet.distribute._torch import init_from_torchrun

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="(?i)launch with torchrun --nproc-per-node N"):
        init_from_torchrun()
